//! Storage: content-addressed blobs plus repository metadata, behind one facade.
//!
//! The HTTP handlers only call `Storage`; today it is the local filesystem and SQLite.
//! An S3-compatible backend would replace `FsBlobs` (temp object + verify + copy/rename
//! becomes multipart upload + verify + complete) without touching the handlers.

pub mod blobs;
pub mod gc;
pub mod meta;
pub mod mirror_meta;
pub mod uploads;

pub use blobs::{Commit, FsBlobs, TempBlob};
pub use meta::{ManifestRow, Meta, MetaError, NewManifest};
pub use uploads::{UploadError, Uploads};

use crate::error::Error;
use crate::oci::{Digest, ErrorCode};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::StatusCode;
use std::io;
use std::path::Path;

/// Errors from storage: the store itself failed (never the client's fault).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage i/o: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

pub use crate::error::is_out_of_space;

impl StorageError {
    /// The write failed because the disk is full (not the store's fault, nor the client's).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StorageError::Io(e) => is_out_of_space(e),
            StorageError::Meta(m) => m.is_out_of_space(),
        }
    }
}

pub struct Storage {
    pub blobs: FsBlobs,
    pub meta: Meta,
    pub uploads: Uploads,
    /// Names of hosted repositories, kept in memory: routing asks on every request.
    hosted: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Held shared by every hosted write that commits a blob, links it or records a
    /// manifest; held exclusively while garbage collection or cache eviction deletes
    /// files. So a deletion never races a push of the same digest: a push either
    /// completed before (and its references are seen) or starts after.
    pub write_lock: tokio::sync::RwLock<()>,
}

/// Result of streaming a request body into the store under an expected digest.
#[derive(Debug)]
pub enum Ingest {
    Stored { size: u64 },
    Mismatch { actual: Digest },
}

impl Storage {
    /// Opens the store under `data_dir`, removing temp files left by a crash.
    ///
    /// The data is for the server alone: the directory is created with mode 0700 and the
    /// process's umask becomes 0077, so every file made from here on (blobs, uploads,
    /// SQLite databases with their WAL files, keys) is 0600 whatever umask it started
    /// with. An existing directory that others may enter is left as it is, with a warning.
    pub fn open(data_dir: &Path) -> Result<Storage, StorageError> {
        private_dir(data_dir)?;
        let blobs = FsBlobs::open(data_dir)?;
        let meta = Meta::open(&data_dir.join("meta.db"))?;
        let hosted = meta.hosted_repos_sync()?.into_iter().collect();
        Ok(Storage {
            blobs,
            meta,
            uploads: Uploads::default(),
            hosted: std::sync::RwLock::new(hosted),
            write_lock: tokio::sync::RwLock::new(()),
        })
    }

    /// Whether `repo` is a repository hosted here.
    pub fn is_hosted(&self, repo: &str) -> bool {
        self.hosted
            .read()
            .map(|h| h.contains(repo))
            .unwrap_or(false)
    }

    /// Records `repo` as hosted (after a successful push).
    pub async fn mark_hosted(&self, repo: &str) -> Result<(), StorageError> {
        if self.is_hosted(repo) {
            return Ok(());
        }
        self.meta.add_hosted(repo).await?;
        if let Ok(mut h) = self.hosted.write() {
            h.insert(repo.to_string());
        }
        Ok(())
    }

    /// Streams `body` into a temp file while hashing it, and commits it under `expected`
    /// if the digest matches (linking it into `link`, a repository, in the same hosted
    /// write). Nothing is stored otherwise.
    pub async fn ingest<S, E>(
        &self,
        expected: &Digest,
        body: S,
        link: Option<&str>,
    ) -> Result<Ingest, IngestError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut temp = self.blobs.temp().await?;
        let mut hasher = expected.algorithm().hasher();
        let mut body = body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
            hasher.update(&chunk);
            temp.write(chunk).await?;
        }
        let _write = self.write_lock.read().await;
        match self.blobs.commit_file(temp, expected, Some(hasher)).await? {
            Commit::Stored { size } => {
                if let Some(repo) = link {
                    self.meta
                        .link_blob(repo, &expected.to_string(), size)
                        .await?;
                }
                Ok(Ingest::Stored { size })
            }
            Commit::Mismatch { actual } => Ok(Ingest::Mismatch { actual }),
        }
    }
}

/// Failure while taking in a request body.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The client's body broke off or was malformed.
    #[error("request body: {0}")]
    Body(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl IngestError {
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, IngestError::Storage(s) if s.is_out_of_space())
    }
}

impl From<io::Error> for IngestError {
    fn from(e: io::Error) -> Self {
        IngestError::Storage(StorageError::Io(e))
    }
}

impl From<MetaError> for IngestError {
    fn from(e: MetaError) -> Self {
        IngestError::Storage(StorageError::Meta(e))
    }
}

/// Makes `dir` (and missing parents) with mode 0700, and sets the umask to 0077.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:o}"),
            "the data directory is open to other users; `chmod 700` it (new files are 0600)"
        );
    }
    Ok(())
}

// How storage failures answer a request: a full disk is 507, a broken request body or
// upload a client error with its OCI code, anything else this server's fault.

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e.is_out_of_space() {
            true => Error::insufficient_storage(&e),
            false => Error::Internal(e.to_string()),
        }
    }
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Self {
        match e.is_out_of_space() {
            true => Error::insufficient_storage(&e),
            false => Error::Internal(e.to_string()),
        }
    }
}

impl From<IngestError> for Error {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Body(m) => Error::bad_request(
                ErrorCode::BlobUploadInvalid,
                format!("request body broke off: {m}"),
            ),
            IngestError::Storage(s) => s.into(),
        }
    }
}

impl From<UploadError> for Error {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Unknown(id) => {
                Error::not_found(ErrorCode::BlobUploadUnknown, format!("upload {id} unknown"))
            }
            UploadError::OutOfOrder { .. } | UploadError::RangeMismatch { .. } => Error::client(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
                e.to_string(),
            ),
            UploadError::Mismatch { actual } => Error::bad_request(
                ErrorCode::DigestInvalid,
                format!("digest mismatch: uploaded content has digest {actual}"),
            ),
            UploadError::Ingest(i) => i.into(),
        }
    }
}
