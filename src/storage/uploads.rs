//! Upload sessions: chunked and resumable blob uploads.
//!
//! The session row (repository, offset) lives in SQLite; the bytes in `uploads/<id>`;
//! a running hash of the acknowledged bytes is kept in memory so finishing a large
//! upload does not reread it. After a restart (or a broken chunk) the hash is rebuilt
//! from the file when the upload finishes. Bytes past the acknowledged offset are
//! truncated before the next write, so a chunk that broke off is never half-kept.

use super::{Commit, IngestError, Storage};
use crate::oci::{Algorithm, Digest, Hasher};
use crate::storage::meta::{now, UploadRow};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Default)]
struct Slot {
    /// sha256 of bytes [0, offset), when known.
    hasher: Option<(u64, Hasher)>,
}

/// In-memory state of sessions, one async lock per session so chunks of one upload
/// are applied one at a time.
#[derive(Default)]
pub struct Uploads {
    slots: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload {0} unknown")]
    Unknown(Uuid),
    #[error("chunk starts at {got}, upload is at {offset}")]
    OutOfOrder { offset: u64, got: u64 },
    #[error("chunk claims {declared} bytes, body does not match")]
    RangeMismatch { declared: u64 },
    #[error("digest mismatch: upload has {actual}")]
    Mismatch { actual: Digest },
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl UploadError {
    /// The upload's data did not fit on the disk.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, UploadError::Ingest(i) if i.is_out_of_space())
    }
}

impl Uploads {
    fn slot(&self, id: Uuid) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id).or_default().clone()
    }

    fn forget(&self, id: Uuid) {
        let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&id);
    }
}

fn meta_err(e: super::MetaError) -> UploadError {
    UploadError::Ingest(e.into())
}

impl Storage {
    pub async fn upload_start(&self, repo: &str) -> Result<Uuid, UploadError> {
        let id = Uuid::new_v4();
        self.blobs
            .upload_file(&id, 0)
            .await
            .map_err(IngestError::from)?;
        self.meta
            .put_upload(UploadRow {
                id: id.to_string(),
                repo: repo.to_string(),
                offset: 0,
                updated: now(),
            })
            .await
            .map_err(meta_err)?;
        Ok(id)
    }

    async fn session(&self, repo: &str, id: Uuid) -> Result<UploadRow, UploadError> {
        match self.meta.upload(&id.to_string()).await.map_err(meta_err)? {
            Some(row) if row.repo == repo => Ok(row),
            _ => Err(UploadError::Unknown(id)),
        }
    }

    /// The number of bytes received so far.
    pub async fn upload_offset(&self, repo: &str, id: Uuid) -> Result<u64, UploadError> {
        Ok(self.session(repo, id).await?.offset)
    }

    /// Appends `body` at the current offset; with a `range` (first and last byte, as the
    /// chunk's Content-Range claims) it must start there and be exactly that long, or
    /// nothing of it counts. Returns the new offset.
    pub async fn upload_append<S, E>(
        &self,
        repo: &str,
        id: Uuid,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Only known sessions get a slot: ids made up by a client must not grow the map.
        self.session(repo, id).await?;
        let slot = self.uploads.slot(id);
        let mut slot = slot.lock().await;
        let row = self.session(repo, id).await?;
        self.append_locked(&mut slot, row, range, body).await
    }

    async fn append_locked<S, E>(
        &self,
        slot: &mut Slot,
        row: UploadRow,
        range: Option<(u64, u64)>,
        mut body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let id: Uuid = row.id.parse().map_err(|_| {
            UploadError::Ingest(IngestError::Body(format!("bad upload id {}", row.id)))
        })?;
        if let Some((got, _)) = range {
            if got != row.offset {
                return Err(UploadError::OutOfOrder {
                    offset: row.offset,
                    got,
                });
            }
        }
        // One past the last byte the chunk claims; a body that overshoots or falls short
        // is refused and its bytes are truncated away by the next write.
        let limit = range.map(|(start, end)| {
            let past = end.saturating_add(1);
            (past.saturating_sub(start), past)
        });
        let mut file = self
            .blobs
            .upload_file(&id, row.offset)
            .await
            .map_err(IngestError::from)?;
        let mut hasher = match slot.hasher.take() {
            Some((off, h)) if off == row.offset => Some(h),
            _ if row.offset == 0 => Some(Algorithm::Sha256.hasher()),
            _ => None,
        };
        let mut wrote = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
            if let Some((declared, end)) = limit {
                if file.len() + chunk.len() as u64 > end {
                    return Err(UploadError::RangeMismatch { declared });
                }
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            file.write(chunk).await.map_err(IngestError::from)?;
            wrote = true;
        }
        let offset = file.len();
        if let Some((declared, end)) = limit {
            if offset != end {
                return Err(UploadError::RangeMismatch { declared });
            }
        }
        if wrote {
            drop(file);
            self.meta
                .put_upload(UploadRow {
                    offset,
                    updated: now(),
                    ..row
                })
                .await
                .map_err(meta_err)?;
        }
        slot.hasher = hasher.map(|h| (offset, h));
        Ok(offset)
    }

    /// Appends the final `body` (may be empty), verifies the whole upload against
    /// `digest`, commits it and links it into `repo`. Returns the blob size.
    pub async fn upload_finish<S, E>(
        &self,
        repo: &str,
        id: Uuid,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.session(repo, id).await?;
        let slot = self.uploads.slot(id);
        let mut slot = slot.lock().await;
        let row = self.session(repo, id).await?;
        let offset = self.append_locked(&mut slot, row, range, body).await?;
        let hasher = match slot.hasher.take() {
            Some((off, h)) if off == offset && digest.algorithm() == Algorithm::Sha256 => Some(h),
            _ => None,
        };
        let file = self
            .blobs
            .upload_file(&id, offset)
            .await
            .map_err(IngestError::from)?;
        // Commit and link as one hosted write: no deletion runs in between.
        let _write = self.write_lock.read().await;
        let result = self
            .blobs
            .commit_file(file, digest, hasher)
            .await
            .map_err(IngestError::from)?;
        // The session ends either way: a mismatch means the client sent other bytes.
        self.upload_cancel_locked(id).await?;
        match result {
            Commit::Stored { size } => {
                self.meta
                    .link_blob(repo, &digest.to_string(), size)
                    .await
                    .map_err(meta_err)?;
                Ok(size)
            }
            Commit::Mismatch { actual } => Err(UploadError::Mismatch { actual }),
        }
    }

    pub async fn upload_cancel(&self, repo: &str, id: Uuid) -> Result<(), UploadError> {
        self.session(repo, id).await?;
        let slot = self.uploads.slot(id);
        let _slot = slot.lock().await;
        self.session(repo, id).await?;
        self.upload_cancel_locked(id).await
    }

    /// Ends a session whose data no longer fits on a full disk: the data file goes
    /// first (SQLite itself needs room to delete the row), then the row. Should the row
    /// stay, the session only reports an offset whose bytes are gone; its digest check
    /// refuses anything finished on top of them.
    pub async fn upload_abandon(&self, repo: &str, id: Uuid) -> Result<(), UploadError> {
        let slot = self.uploads.slot(id);
        let _slot = slot.lock().await;
        self.session(repo, id).await?;
        self.blobs
            .remove_upload(&id)
            .await
            .map_err(IngestError::from)?;
        self.upload_cancel_locked(id).await
    }

    async fn upload_cancel_locked(&self, id: Uuid) -> Result<(), UploadError> {
        self.meta
            .delete_upload(&id.to_string())
            .await
            .map_err(meta_err)?;
        self.blobs
            .remove_upload(&id)
            .await
            .map_err(IngestError::from)?;
        self.uploads.forget(id);
        Ok(())
    }

    /// Removes sessions idle for longer than `expiry`, and data files without a session.
    /// Returns how many were removed.
    pub async fn purge_uploads(&self, expiry: std::time::Duration) -> Result<usize, UploadError> {
        let cutoff = now() - expiry.as_secs() as i64;
        let (all, old) = self.meta.upload_ids(cutoff).await.map_err(meta_err)?;
        let mut removed = 0;
        for id in old.iter().filter_map(|s| s.parse::<Uuid>().ok()) {
            let slot = self.uploads.slot(id);
            let _g = slot.lock().await;
            self.upload_cancel_locked(id).await?;
            removed += 1;
        }
        let known: std::collections::HashSet<String> = all.into_iter().collect();
        for id in self.blobs.upload_ids().map_err(IngestError::from)? {
            if !known.contains(&id.to_string()) {
                self.blobs
                    .remove_upload(&id)
                    .await
                    .map_err(IngestError::from)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(s: &Storage) -> usize {
        s.uploads.slots.lock().map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn unknown_or_foreign_ids_leave_no_slot_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let live = s.upload_start("a").await.unwrap();
        let empty =
            futures_util::stream::iter(Vec::<Result<Bytes, std::convert::Infallible>>::new());
        let d = Digest::sha256_of(b"");
        for (repo, id) in [("a", Uuid::new_v4()), ("b", live)] {
            let e = s.upload_append(repo, id, None, empty.clone()).await;
            assert!(matches!(e, Err(UploadError::Unknown(_))));
            let e = s.upload_finish(repo, id, &d, None, empty.clone()).await;
            assert!(matches!(e, Err(UploadError::Unknown(_))));
            assert!(matches!(
                s.upload_cancel(repo, id).await,
                Err(UploadError::Unknown(_))
            ));
        }
        assert_eq!(slots(&s), 0);
        assert_eq!(s.upload_append("a", live, None, empty).await.unwrap(), 0);
        assert_eq!(slots(&s), 1);
        s.upload_cancel("a", live).await.unwrap();
        assert_eq!(slots(&s), 0);
    }
}
