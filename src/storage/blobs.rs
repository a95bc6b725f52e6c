//! Content-addressed blob files on the local filesystem.
//!
//! Layout under the data directory: `blobs/<alg>/<2 hex>/<hex>` for committed objects,
//! `tmp/` for writes in progress. A file reaches `blobs/` only by `rename` after its
//! bytes were hashed, matched the expected digest and were fsynced, so a crash at any
//! point leaves either nothing or a complete, verified object. `tmp/` is emptied at start.

use crate::oci::{Digest, Hasher};
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct FsBlobs {
    root: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
}

/// Outcome of committing a temp file under an expected digest.
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    Stored { size: u64 },
    Mismatch { actual: Digest },
}

impl FsBlobs {
    /// Opens (creating) the store and removes leftovers of interrupted writes.
    pub fn open(data_dir: &Path) -> io::Result<FsBlobs> {
        let root = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let uploads = data_dir.join("uploads");
        std::fs::create_dir_all(&uploads)?;
        Ok(FsBlobs { root, tmp, uploads })
    }

    /// The store under `data_dir` as it is: nothing created or removed (for tools that
    /// run beside a server).
    pub fn at(data_dir: &Path) -> FsBlobs {
        FsBlobs {
            root: data_dir.join("blobs"),
            tmp: data_dir.join("tmp"),
            uploads: data_dir.join("uploads"),
        }
    }

    /// The final path of a digest. Safe: a parsed digest is `alg:lowercase-hex` only.
    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    pub async fn stat(&self, d: &Digest) -> io::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(d)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn open_file(&self, d: &Digest) -> io::Result<Option<(tokio::fs::File, u64)>> {
        match tokio::fs::File::open(self.path(d)).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory of writes in progress.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Every committed object with its size (a walk of `blobs/`; names that are not a
    /// digest are skipped).
    pub async fn list(&self) -> io::Result<Vec<(Digest, u64)>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for alg in read_dir_or_empty(&root)? {
                let alg = alg?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                for prefix in read_dir_or_empty(&alg.path())? {
                    for f in read_dir_or_empty(&prefix?.path())? {
                        let f = f?;
                        let name = format!("{alg_name}:{}", f.file_name().to_string_lossy());
                        if let Ok(d) = name.parse::<Digest>() {
                            out.push((d, f.metadata()?.len()));
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// A new temp file for a write in progress.
    pub async fn temp(&self) -> io::Result<TempBlob> {
        let path = self.tmp.join(uuid::Uuid::new_v4().to_string());
        let file = tokio::fs::File::create(&path).await?.into_std().await;
        Ok(TempBlob {
            path,
            file: Some(Arc::new(file)),
            len: 0,
            remove_on_drop: true,
        })
    }

    /// Opens the data file of an upload session for appending at `offset`, truncating
    /// anything past it (bytes of a chunk that was never acknowledged). Kept on drop.
    pub async fn upload_file(&self, uuid: &uuid::Uuid, offset: u64) -> io::Result<TempBlob> {
        let path = self.uploads.join(uuid.to_string());
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .await?;
        file.set_len(offset).await?;
        // Writes are positioned (at `len`), so no seek.
        Ok(TempBlob {
            path,
            file: Some(Arc::new(file.into_std().await)),
            len: offset,
            remove_on_drop: false,
        })
    }

    /// Removes an upload session's data file.
    pub async fn remove_upload(&self, uuid: &uuid::Uuid) -> io::Result<()> {
        match tokio::fs::remove_file(self.uploads.join(uuid.to_string())).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Upload data files present on disk (for removing those without a session).
    pub fn upload_ids(&self) -> io::Result<Vec<uuid::Uuid>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.uploads)? {
            let e = e?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Writes small bytes (a manifest) under their digest, verifying first.
    pub async fn put_bytes(&self, expected: &Digest, bytes: &[u8]) -> io::Result<Commit> {
        if !expected.matches(bytes) {
            let mut h = expected.algorithm().hasher();
            h.update(bytes);
            return Ok(Commit::Mismatch { actual: h.finish() });
        }
        if self.stat(expected).await?.is_some() {
            return Ok(Commit::Stored {
                size: bytes.len() as u64,
            });
        }
        let mut t = self.temp().await?;
        t.write(Bytes::copy_from_slice(bytes)).await?;
        self.commit_file(t, expected, None).await
    }

    /// Verifies `temp` against `expected` (hashing the file if no hasher is given),
    /// fsyncs it and renames it into place. On mismatch nothing is stored; a temp file
    /// is removed when `temp` drops, an upload file stays for its session to decide.
    pub async fn commit_file(
        &self,
        mut temp: TempBlob,
        expected: &Digest,
        hasher: Option<Hasher>,
    ) -> io::Result<Commit> {
        if let Some(f) = temp.file.take() {
            tokio::task::spawn_blocking(move || f.sync_all())
                .await
                .map_err(io::Error::other)??;
        }
        let actual = match hasher {
            Some(h) if h_alg(&h) == expected.algorithm() => h.finish(),
            _ => hash_file(&temp.path, expected.algorithm()).await?,
        };
        if actual != *expected {
            return Ok(Commit::Mismatch { actual });
        }
        let dest = self.path(expected);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        tokio::fs::create_dir_all(&dir).await?;
        let size = tokio::fs::metadata(&temp.path).await?.len();
        tokio::fs::rename(&temp.path, &dest).await?;
        temp.path = PathBuf::new();
        sync_dir(dir).await?;
        Ok(Commit::Stored { size })
    }

    /// Removes a committed blob (used by garbage collection and tests).
    pub async fn remove(&self, d: &Digest) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(d)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_dir_or_empty(p: &Path) -> io::Result<Vec<io::Result<std::fs::DirEntry>>> {
    match std::fs::read_dir(p) {
        Ok(rd) => Ok(rd.collect()),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

fn h_alg(h: &Hasher) -> crate::oci::Algorithm {
    match h {
        Hasher::Sha256(_) => crate::oci::Algorithm::Sha256,
        Hasher::Sha512(_) => crate::oci::Algorithm::Sha512,
    }
}

/// Hashes a whole file with `alg` off the async runtime.
pub async fn hash_file(path: &Path, alg: crate::oci::Algorithm) -> io::Result<Digest> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut h = alg.hasher();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish())
    })
    .await
    .map_err(io::Error::other)?
}

async fn sync_dir(dir: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

/// A file being written: a temp file (removed on drop unless committed) or an upload
/// session's data file (kept on drop, so the session can resume).
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    file: Option<Arc<std::fs::File>>,
    len: u64,
    remove_on_drop: bool,
}

impl TempBlob {
    /// Appends `bytes`. Once it returns they are in the file for concurrent readers.
    pub async fn write(&mut self, bytes: Bytes) -> io::Result<()> {
        self.write_chunks(vec![bytes]).await
    }

    /// Appends `chunks` with positioned vectored writes on the blocking pool (never
    /// copied on this side). Once it returns they are in the file for concurrent readers.
    pub async fn write_chunks(&mut self, chunks: Vec<Bytes>) -> io::Result<()> {
        let file = self
            .file
            .clone()
            .ok_or_else(|| io::Error::other("temp blob already closed"))?;
        let at = self.len;
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        tokio::task::spawn_blocking(move || pwrite_all(&file, &chunks, at))
            .await
            .map_err(io::Error::other)??;
        self.len += len;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Writes all of `chunks` at `at`, in as few `pwritev` calls as the kernel allows.
fn pwrite_all(file: &std::fs::File, chunks: &[Bytes], mut at: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    // Drops leading empty slices, so an empty `rest` means everything was written.
    io::IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        let n = match rustix::io::pwritev(file, &rest[..rest.len().min(IOV_MAX)], at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += n as u64;
        io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

/// Slices per `pwritev` call (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

impl Drop for TempBlob {
    fn drop(&mut self) {
        if self.remove_on_drop && !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commit_only_on_match() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobs::open(dir.path()).unwrap();
        let good = Digest::sha256_of(b"hello");
        let mut t = s.temp().await.unwrap();
        t.write(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(
            s.commit_file(t, &good, None).await.unwrap(),
            Commit::Stored { size: 5 }
        );
        assert_eq!(s.stat(&good).await.unwrap(), Some(5));

        let other = Digest::sha256_of(b"other");
        let mut t = s.temp().await.unwrap();
        t.write(Bytes::from_static(b"not other")).await.unwrap();
        assert!(matches!(
            s.commit_file(t, &other, None).await.unwrap(),
            Commit::Mismatch { .. }
        ));
        assert_eq!(s.stat(&other).await.unwrap(), None);
        // Nothing is left behind in tmp/.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn chunk_writes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobs::open(dir.path()).unwrap();
        let mut t = s.temp().await.unwrap();
        // More slices than one pwritev takes, empty ones among them, then a second batch.
        let chunks: Vec<Bytes> = (0..IOV_MAX + 300)
            .map(|i| Bytes::from(vec![(i % 251) as u8; i % 7]))
            .collect();
        let want: Vec<u8> = chunks.concat();
        t.write_chunks(chunks).await.unwrap();
        assert_eq!(t.len(), want.len() as u64);
        t.write(Bytes::from_static(b"tail")).await.unwrap();
        assert_eq!(t.len(), want.len() as u64 + 4);
        let got = std::fs::read(t.path()).unwrap();
        assert_eq!(&got[..want.len()], &want[..]);
        assert_eq!(&got[want.len()..], b"tail");
    }

    #[tokio::test]
    async fn leftovers_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsBlobs::open(dir.path()).unwrap();
        let t = s.temp().await.unwrap();
        std::mem::forget(t);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1
        );
        FsBlobs::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
