//! Repository metadata in SQLite: tags, manifests, repository-to-blob links, upload sessions.
//!
//! One connection behind a mutex; every call runs on the blocking pool. WAL mode with
//! `synchronous=FULL`, so an acknowledged push survives a crash of the process or the host.
//! The mirror's cache bookkeeping commits with `synchronous=NORMAL` ([`Meta::with_relaxed`]):
//! a host crash may lose its last rows, which the next start reconciles from the files.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS repo_blobs (
    repo TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS repo_blobs_digest ON repo_blobs(digest);
CREATE TABLE IF NOT EXISTS manifests (
    repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT NOT NULL, size INTEGER NOT NULL,
    artifact_type TEXT, subject TEXT, annotations TEXT, created INTEGER NOT NULL,
    PRIMARY KEY (repo, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifests_subject ON manifests(repo, subject);
CREATE TABLE IF NOT EXISTS manifest_refs (
    repo TEXT NOT NULL, manifest TEXT NOT NULL, target TEXT NOT NULL,
    PRIMARY KEY (repo, manifest, target)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL, updated INTEGER NOT NULL,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror_tags (
    upstream TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL,
    media_type TEXT NOT NULL, size INTEGER NOT NULL, fetched_ms INTEGER NOT NULL,
    PRIMARY KEY (upstream, repo, tag)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror_manifests (
    digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, size INTEGER NOT NULL, fetched_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror_lists (
    upstream TEXT NOT NULL, repo TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    body BLOB NOT NULL, fetched_ms INTEGER NOT NULL,
    PRIMARY KEY (upstream, repo, kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hosted_repos (
    repo TEXT PRIMARY KEY, created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, repo TEXT NOT NULL, offset INTEGER NOT NULL,
    started INTEGER NOT NULL, updated INTEGER NOT NULL
) WITHOUT ROWID;
"#;

#[derive(Debug, thiserror::Error)]
#[error("metadata store: {message}")]
pub struct MetaError {
    message: String,
    /// SQLite could not grow its files: the disk (or the quota) is full.
    full: bool,
}

impl MetaError {
    pub fn new(message: impl Into<String>) -> MetaError {
        MetaError {
            message: message.into(),
            full: false,
        }
    }

    /// The write failed because the disk is full (`SQLITE_FULL`).
    pub fn is_out_of_space(&self) -> bool {
        self.full
    }
}

impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> Self {
        MetaError {
            full: e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            message: e.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, MetaError>;

/// A manifest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// What a manifest push records, in one transaction.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub repo: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub subject: Option<String>,
    pub annotations: Option<String>,
    /// Blobs and child manifests it references.
    pub refs: Vec<String>,
    pub tags: Vec<String>,
}

/// An upload session row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRow {
    pub id: String,
    pub repo: String,
    pub offset: u64,
    pub updated: i64,
}

#[derive(Clone)]
pub struct Meta {
    conn: Arc<Mutex<Connection>>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Meta {
    pub fn open(path: &Path) -> Result<Meta> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Meta {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn
                .lock()
                .map_err(|_| MetaError::new("connection mutex poisoned"))?;
            f(&mut c)
        })
        .await
        .map_err(|e| MetaError::new(format!("blocking task failed: {e}")))?
    }

    /// Like [`Meta::with`], for the mirror's cache bookkeeping (cache index rows, tag
    /// mappings, cached answers): the commit does not wait for an fsync of the WAL
    /// (`synchronous=NORMAL` for this call only). Still atomic and consistent; only a
    /// power loss or host crash can lose such writes, and the next start reconciles the
    /// index with the files (a lost mapping is fetched again). The next `FULL` commit
    /// makes them durable with it.
    pub(crate) async fn with_relaxed<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.with(move |c| {
            c.pragma_update(None, "synchronous", "NORMAL")?;
            let r = f(c);
            c.pragma_update(None, "synchronous", "FULL")?;
            r
        })
        .await
    }

    /// Runs `f` with the connection on this thread (start-up and CLI paths only).
    pub(crate) fn with_sync<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| MetaError::new("connection mutex poisoned"))?;
        f(&mut c)
    }

    /// Records that `repo` is hosted here (created by a push).
    pub async fn add_hosted(&self, repo: &str) -> Result<()> {
        let repo = repo.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO hosted_repos(repo, created) VALUES (?1, ?2)",
                params![repo, now()],
            )?;
            Ok(())
        })
        .await
    }

    /// Every repository created by a push (and every one holding hosted content).
    pub fn hosted_repos_sync(&self) -> Result<Vec<String>> {
        let c = self
            .conn
            .lock()
            .map_err(|_| MetaError::new("connection mutex poisoned"))?;
        let mut stmt = c.prepare(
            "SELECT repo FROM hosted_repos UNION SELECT repo FROM manifests UNION SELECT repo FROM repo_blobs",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<std::result::Result<Vec<String>, _>>()?)
    }

    pub async fn link_blob(&self, repo: &str, digest: &str, size: u64) -> Result<()> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO repo_blobs(repo, digest, size, created) VALUES (?1, ?2, ?3, ?4)",
                params![repo, digest, size as i64, now()],
            )?;
            Ok(())
        })
        .await
    }

    /// The blob's size if it is linked into `repo`.
    pub async fn blob_in_repo(&self, repo: &str, digest: &str) -> Result<Option<u64>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT size FROM repo_blobs WHERE repo = ?1 AND digest = ?2",
                params![repo, digest],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map(|s| s as u64))
        })
        .await
    }

    pub async fn unlink_blob(&self, repo: &str, digest: &str) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM repo_blobs WHERE repo = ?1 AND digest = ?2",
                params![repo, digest],
            )? > 0)
        })
        .await
    }

    /// Of `digests`, those not linked into `repo` as blobs (`as_manifests`: as manifests).
    /// Of `refs` (digest, declared size), those that are not in `repo` (as blobs, or as
    /// manifests with `as_manifests`) or are there with another size: (digest, the
    /// declared size, the stored size if any).
    pub async fn unmatched(
        &self,
        repo: &str,
        refs: Vec<(String, u64)>,
        as_manifests: bool,
    ) -> Result<Vec<(String, u64, Option<u64>)>> {
        let repo = repo.to_string();
        self.with(move |c| {
            let sql = if as_manifests {
                "SELECT size FROM manifests WHERE repo = ?1 AND digest = ?2"
            } else {
                "SELECT size FROM repo_blobs WHERE repo = ?1 AND digest = ?2"
            };
            let mut stmt = c.prepare_cached(sql)?;
            let mut out = Vec::new();
            for (d, declared) in refs {
                let stored = stmt
                    .query_row(params![repo, d], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map(|s| s as u64);
                if stored != Some(declared) {
                    out.push((d, declared, stored));
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn put_manifest(&self, m: NewManifest) -> Result<()> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let t = now();
            tx.execute(
                "INSERT INTO manifests(repo, digest, media_type, size, artifact_type, subject, annotations, created)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(repo, digest) DO UPDATE SET media_type = excluded.media_type",
                params![m.repo, m.digest, m.media_type, m.size as i64, m.artifact_type, m.subject, m.annotations, t],
            )?;
            for r in &m.refs {
                tx.execute(
                    "INSERT OR IGNORE INTO manifest_refs(repo, manifest, target) VALUES (?1, ?2, ?3)",
                    params![m.repo, m.digest, r],
                )?;
            }
            for tag in &m.tags {
                tx.execute(
                    "INSERT INTO tags(repo, tag, digest, updated) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(repo, tag) DO UPDATE SET digest = excluded.digest, updated = excluded.updated",
                    params![m.repo, tag, m.digest, t],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn manifest(&self, repo: &str, digest: &str) -> Result<Option<ManifestRow>> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT digest, media_type, size, artifact_type, annotations FROM manifests WHERE repo = ?1 AND digest = ?2",
                params![repo, digest],
                row_to_manifest,
            )
            .optional()?)
        })
        .await
    }

    pub async fn tag(&self, repo: &str, tag: &str) -> Result<Option<String>> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT digest FROM tags WHERE repo = ?1 AND tag = ?2",
                params![repo, tag],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Deletes a manifest, the tags that point at it and its reference rows.
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<bool> {
        let (repo, digest) = (repo.to_string(), digest.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM manifests WHERE repo = ?1 AND digest = ?2",
                params![repo, digest],
            )?;
            tx.execute(
                "DELETE FROM tags WHERE repo = ?1 AND digest = ?2",
                params![repo, digest],
            )?;
            tx.execute(
                "DELETE FROM manifest_refs WHERE repo = ?1 AND manifest = ?2",
                params![repo, digest],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        let (repo, tag) = (repo.to_string(), tag.to_string());
        self.with(move |c| {
            Ok(c.execute(
                "DELETE FROM tags WHERE repo = ?1 AND tag = ?2",
                params![repo, tag],
            )? > 0)
        })
        .await
    }

    /// Up to `n` tags of `repo` after `last`, sorted; None if the repository is unknown.
    /// A repository whose manifests were all deleted but that still holds blobs is known
    /// and lists no tags (the conformance suite expects 200 after a manifest delete).
    pub async fn tags(
        &self,
        repo: &str,
        last: Option<String>,
        n: u64,
    ) -> Result<Option<Vec<String>>> {
        let repo = repo.to_string();
        self.with(move |c| {
            let known = c
                .prepare_cached("SELECT 1 FROM manifests WHERE repo = ?1 LIMIT 1")?
                .exists(params![repo])?
                || c.prepare_cached("SELECT 1 FROM tags WHERE repo = ?1 LIMIT 1")?
                    .exists(params![repo])?
                || c.prepare_cached("SELECT 1 FROM repo_blobs WHERE repo = ?1 LIMIT 1")?
                    .exists(params![repo])?;
            if !known {
                return Ok(None);
            }
            let mut stmt = c.prepare_cached(
                "SELECT tag FROM tags WHERE repo = ?1 AND tag > ?2 ORDER BY tag LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    repo,
                    last.unwrap_or_default(),
                    n.min(i64::MAX as u64) as i64
                ],
                |r| r.get(0),
            )?;
            Ok(Some(rows.collect::<std::result::Result<Vec<String>, _>>()?))
        })
        .await
    }

    /// Up to `n` repository names (having manifests) after `last`, sorted.
    pub async fn repositories(&self, last: Option<String>, n: u64) -> Result<Vec<String>> {
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT repo FROM manifests WHERE repo > ?1 ORDER BY repo LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                params![last.unwrap_or_default(), n.min(i64::MAX as u64) as i64],
                |r| r.get(0),
            )?;
            Ok(rows.collect::<std::result::Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Manifests in `repo` whose subject is `subject`, sorted by digest.
    pub async fn referrers(&self, repo: &str, subject: &str) -> Result<Vec<ManifestRow>> {
        let (repo, subject) = (repo.to_string(), subject.to_string());
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
                 WHERE repo = ?1 AND subject = ?2 ORDER BY digest",
            )?;
            let rows = stmt.query_map(params![repo, subject], row_to_manifest)?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn put_upload(&self, u: UploadRow) -> Result<()> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO uploads(id, repo, offset, started, updated) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(id) DO UPDATE SET offset = excluded.offset, updated = excluded.updated",
                params![u.id, u.repo, u.offset as i64, u.updated],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>> {
        let id = id.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id, repo, offset, updated FROM uploads WHERE id = ?1",
                params![id],
                |r| {
                    Ok(UploadRow {
                        id: r.get(0)?,
                        repo: r.get(1)?,
                        offset: r.get::<_, i64>(2)? as u64,
                        updated: r.get(3)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM uploads WHERE id = ?1", params![id])?;
            Ok(())
        })
        .await
    }

    /// Ids of all sessions, and of those last touched before `cutoff` (unix seconds).
    pub async fn upload_ids(&self, cutoff: i64) -> Result<(Vec<String>, Vec<String>)> {
        self.with(move |c| {
            let mut stmt = c.prepare("SELECT id, updated FROM uploads")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let (mut all, mut old) = (Vec::new(), Vec::new());
            for row in rows {
                let (id, updated) = row?;
                if updated < cutoff {
                    old.push(id.clone());
                }
                all.push(id);
            }
            Ok((all, old))
        })
        .await
    }
}

fn row_to_manifest(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManifestRow> {
    Ok(ManifestRow {
        digest: r.get(0)?,
        media_type: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        artifact_type: r.get(3)?,
        annotations: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(c: &Connection) -> i64 {
        c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn relaxed_writes_skip_the_fsync_and_leave_full_behind() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
        // 2 = FULL, 1 = NORMAL.
        assert_eq!(meta.with(|c| Ok(synchronous(c))).await.unwrap(), 2);
        let inside = meta.with_relaxed(|c| Ok(synchronous(c))).await.unwrap();
        assert_eq!(inside, 1);
        assert_eq!(meta.with(|c| Ok(synchronous(c))).await.unwrap(), 2);
        // A failed relaxed write leaves FULL behind too.
        let failed = meta
            .with_relaxed(|c| {
                c.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(meta.with(|c| Ok(synchronous(c))).await.unwrap(), 2);
    }
}
