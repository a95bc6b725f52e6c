//! What the mirror remembers in SQLite: tag -> digest mappings with the time they were
//! fetched, the media type of every cached manifest, and the last upstream answer of tag
//! lists and referrers (served when the upstream is down).

use crate::storage::meta::{Meta, MetaError};
use rusqlite::{params, OptionalExtension};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A cached tag mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub fetched_ms: i64,
}

type Result<T> = std::result::Result<T, MetaError>;

impl Meta {
    pub async fn mirror_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
    ) -> Result<Option<TagRow>> {
        let (u, r, t) = (upstream.to_string(), repo.to_string(), tag.to_string());
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT digest, media_type, size, fetched_ms FROM mirror_tags WHERE upstream = ?1 AND repo = ?2 AND tag = ?3",
            )?
            .query_row(params![u, r, t], |row| {
                Ok(TagRow {
                    digest: row.get(0)?,
                    media_type: row.get(1)?,
                    size: row.get::<_, i64>(2)? as u64,
                    fetched_ms: row.get(3)?,
                })
            })
            .optional()?)
        })
        .await
    }

    pub async fn put_mirror_tag(
        &self,
        upstream: &str,
        repo: &str,
        tag: &str,
        row: TagRow,
    ) -> Result<()> {
        let (u, r, t) = (upstream.to_string(), repo.to_string(), tag.to_string());
        self.with_relaxed(move |c| {
            c.prepare_cached(
                "INSERT INTO mirror_tags(upstream, repo, tag, digest, media_type, size, fetched_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(upstream, repo, tag) DO UPDATE SET digest = excluded.digest, media_type = excluded.media_type,
                 size = excluded.size, fetched_ms = excluded.fetched_ms
                 WHERE excluded.fetched_ms >= mirror_tags.fetched_ms",
            )?
            .execute(params![u, r, t, row.digest, row.media_type, row.size as i64, row.fetched_ms])?;
            Ok(())
        })
        .await
    }

    pub async fn delete_mirror_tag(&self, upstream: &str, repo: &str, tag: &str) -> Result<()> {
        let (u, r, t) = (upstream.to_string(), repo.to_string(), tag.to_string());
        self.with_relaxed(move |c| {
            c.execute(
                "DELETE FROM mirror_tags WHERE upstream = ?1 AND repo = ?2 AND tag = ?3",
                params![u, r, t],
            )?;
            Ok(())
        })
        .await
    }

    /// Media type and size of a cached manifest.
    pub async fn mirror_manifest(&self, digest: &str) -> Result<Option<(String, u64)>> {
        let d = digest.to_string();
        self.with(move |c| {
            Ok(
                c.prepare_cached(
                    "SELECT media_type, size FROM mirror_manifests WHERE digest = ?1",
                )?
                .query_row(params![d], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
                .optional()?,
            )
        })
        .await
    }

    pub async fn put_mirror_manifest(
        &self,
        digest: &str,
        media_type: &str,
        size: u64,
    ) -> Result<()> {
        let (d, m) = (digest.to_string(), media_type.to_string());
        self.with_relaxed(move |c| {
            c.prepare_cached(
                "INSERT INTO mirror_manifests(digest, media_type, size, fetched_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(digest) DO UPDATE SET media_type = excluded.media_type, fetched_ms = excluded.fetched_ms",
            )?
            .execute(params![d, m, size as i64, now_ms()])?;
            Ok(())
        })
        .await
    }

    /// The last upstream answer for a list (`kind` "tags" or "referrers", `key` the query).
    pub async fn mirror_list(
        &self,
        upstream: &str,
        repo: &str,
        kind: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let (u, r, k, key) = (
            upstream.to_string(),
            repo.to_string(),
            kind.to_string(),
            key.to_string(),
        );
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT body, fetched_ms FROM mirror_lists WHERE upstream = ?1 AND repo = ?2 AND kind = ?3 AND key = ?4",
            )?
            .query_row(params![u, r, k, key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
        })
        .await
    }

    pub async fn put_mirror_list(
        &self,
        upstream: &str,
        repo: &str,
        kind: &str,
        key: &str,
        body: Vec<u8>,
    ) -> Result<()> {
        let (u, r, k, key) = (
            upstream.to_string(),
            repo.to_string(),
            kind.to_string(),
            key.to_string(),
        );
        self.with_relaxed(move |c| {
            c.prepare_cached(
                "INSERT INTO mirror_lists(upstream, repo, kind, key, body, fetched_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(upstream, repo, kind, key) DO UPDATE SET body = excluded.body, fetched_ms = excluded.fetched_ms",
            )?
            .execute(params![u, r, k, key, body, now_ms()])?;
            Ok(())
        })
        .await
    }

    /// Tags cached for a proxied repository, sorted (the tag list when the upstream is down).
    pub async fn mirror_tags(&self, upstream: &str, repo: &str) -> Result<Vec<String>> {
        let (u, r) = (upstream.to_string(), repo.to_string());
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT tag FROM mirror_tags WHERE upstream = ?1 AND repo = ?2 ORDER BY tag",
            )?;
            let rows = stmt.query_map(params![u, r], |row| row.get(0))?;
            Ok(rows.collect::<std::result::Result<Vec<String>, _>>()?)
        })
        .await
    }

    /// Proxied repositories with cached tags, as `<upstream>/<repo>`.
    pub async fn mirror_repositories(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT DISTINCT upstream || '/' || repo FROM mirror_tags ORDER BY 1")?;
            let rows = stmt.query_map([], |row| row.get(0))?;
            Ok(rows.collect::<std::result::Result<Vec<String>, _>>()?)
        })
        .await
    }
}
