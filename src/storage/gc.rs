//! Garbage collection of hosted repositories: online mark and sweep with a grace period,
//! after the cleanup policies (keep the last N tags, delete untagged manifests).
//!
//! Mark: every manifest row, everything a manifest references, every repository link
//! younger than the grace period, every proxied object the cache holds. Sweep: files
//! under `blobs/` outside that set and older than the grace period. Links (`repo_blobs`)
//! that no manifest of their repository references and that are older than the grace
//! period are dropped first (layers uploaded but never used).
//!
//! The walk of `blobs/` runs without locks; the deletions run under
//! `Storage::write_lock` held exclusively, after marking again: a manifest push holds the
//! lock shared from its blob check to its commit, so it either finished before (its
//! references are marked) or starts after (and finds its blobs gone, 400
//! MANIFEST_BLOB_UNKNOWN, never a manifest with missing blobs).

use super::meta::now;
use super::{Storage, StorageError};
use crate::oci::Digest;
use rusqlite::params;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    pub grace: Duration,
    pub keep_last_tags: Option<u64>,
    pub delete_untagged_after: Option<Duration>,
    pub dry_run: bool,
}

/// What a collection did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub tags_deleted: u64,
    pub manifests_deleted: u64,
    pub links_deleted: u64,
    pub blobs_deleted: u64,
    pub freed_bytes: u64,
    pub elapsed_ms: u64,
    /// The digests deleted (at most 1000 listed).
    pub deleted: Vec<String>,
}

const LISTED: usize = 1000;

/// `cached`: whether the cache holds a digest (checked again under the lock).
pub async fn run(
    storage: &Storage,
    cached: &(dyn Fn(&Digest) -> bool + Sync),
    opts: GcOptions,
) -> Result<GcReport, StorageError> {
    let started = std::time::Instant::now();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    cleanup(storage, &opts, &mut report).await?;
    let cutoff = now() - opts.grace.as_secs() as i64;
    // Mark without locks, then list candidates.
    let marked = mark(storage, cutoff, false).await?;
    let files = storage.blobs.list().await?;
    let old = SystemTime::now()
        .checked_sub(opts.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut candidates = Vec::new();
    for (d, size) in files {
        if marked.live.contains(&d.to_string()) || cached(&d) {
            continue;
        }
        if is_older(storage, &d, old).await {
            candidates.push((d, size));
        }
    }
    if opts.dry_run {
        report.links_deleted = marked.orphan_links;
        for (d, size) in candidates {
            report.blobs_deleted += 1;
            report.freed_bytes += size;
            if report.deleted.len() < LISTED {
                report.deleted.push(d.to_string());
            }
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    // Sweep: no hosted write runs meanwhile; mark again, dropping orphan links.
    let _write = storage.write_lock.write().await;
    let marked = mark(storage, cutoff, true).await?;
    report.links_deleted = marked.orphan_links;
    for (d, size) in candidates {
        if marked.live.contains(&d.to_string()) || cached(&d) || !is_older(storage, &d, old).await {
            continue;
        }
        storage.blobs.remove(&d).await?;
        report.blobs_deleted += 1;
        report.freed_bytes += size;
        if report.deleted.len() < LISTED {
            report.deleted.push(d.to_string());
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn is_older(storage: &Storage, d: &Digest, than: SystemTime) -> bool {
    match tokio::fs::metadata(storage.blobs.path(d)).await {
        Ok(m) => m.modified().map(|t| t <= than).unwrap_or(false),
        Err(_) => false,
    }
}

struct Marked {
    live: HashSet<String>,
    orphan_links: u64,
}

/// Digests in use. Links older than `cutoff` (unix seconds) that no manifest of their
/// repository references are not marked; with `drop_orphans` they are deleted.
async fn mark(storage: &Storage, cutoff: i64, drop_orphans: bool) -> Result<Marked, StorageError> {
    Ok(storage
        .meta
        .with(move |c| {
            let tx = c.transaction()?;
            let orphan = "FROM repo_blobs WHERE repo_blobs.created < ?1
                 AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = repo_blobs.repo AND r.target = repo_blobs.digest)
                 AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = repo_blobs.repo AND m.digest = repo_blobs.digest)";
            let orphan_links = match drop_orphans {
                true => tx.execute(&format!("DELETE {orphan}"), params![cutoff])? as u64,
                false => tx.query_row(&format!("SELECT COUNT(*) {orphan}"), params![cutoff], |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            };
            let mut live = HashSet::new();
            let mut stmt = tx.prepare(
                "SELECT digest FROM manifests UNION SELECT target FROM manifest_refs
                 UNION SELECT digest FROM mirror_manifests
                 UNION SELECT digest FROM repo_blobs b WHERE NOT (b.created < ?1
                   AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = b.repo AND r.target = b.digest)
                   AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repo = b.repo AND m.digest = b.digest))",
            )?;
            for d in stmt.query_map(params![cutoff], |r| r.get::<_, String>(0))? {
                live.insert(d?);
            }
            let cached = tx
                .prepare("SELECT digest FROM cache_objects")
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()
                });
            // The table exists once the cache opened; without it nothing is cached.
            live.extend(cached.unwrap_or_default());
            drop(stmt);
            tx.commit()?;
            Ok(Marked { live, orphan_links })
        })
        .await?)
}

/// The cleanup policies: tags beyond the newest N per repository, then untagged
/// manifests older than the limit (not a child of an index nor the referrer of a
/// manifest still present).
async fn cleanup(
    storage: &Storage,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<(), StorageError> {
    if opts.keep_last_tags.is_none() && opts.delete_untagged_after.is_none() {
        return Ok(());
    }
    let (keep, untagged, dry) = (
        opts.keep_last_tags,
        opts.delete_untagged_after,
        opts.dry_run,
    );
    let (tags, manifests) = storage
        .meta
        .with(move |c| {
            let tx = c.transaction()?;
            let mut tags = 0u64;
            if let Some(n) = keep {
                let sel = "FROM tags t WHERE (SELECT COUNT(*) FROM tags t2 WHERE t2.repo = t.repo
                     AND (t2.updated > t.updated OR (t2.updated = t.updated AND t2.tag > t.tag))) >= ?1";
                let old: Vec<(String, String)> = tx
                    .prepare(&format!("SELECT repo, tag {sel}"))?
                    .query_map(params![n as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                tags = old.len() as u64;
                if !dry {
                    for (repo, tag) in old {
                        tx.execute("DELETE FROM tags WHERE repo = ?1 AND tag = ?2", params![repo, tag])?;
                    }
                }
            }
            let mut manifests = 0u64;
            if let Some(age) = untagged {
                let cutoff = now() - age.as_secs() as i64;
                let gone: Vec<(String, String)> = tx
                    .prepare(
                        "SELECT repo, digest FROM manifests m WHERE m.created < ?1
                         AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo = m.repo AND t.digest = m.digest)
                         AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.repo = m.repo AND r.target = m.digest)
                         AND NOT (m.subject IS NOT NULL AND EXISTS
                             (SELECT 1 FROM manifests s WHERE s.repo = m.repo AND s.digest = m.subject))",
                    )?
                    .query_map(params![cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                manifests = gone.len() as u64;
                if !dry {
                    for (repo, d) in gone {
                        tx.execute("DELETE FROM manifests WHERE repo = ?1 AND digest = ?2", params![repo, d])?;
                        tx.execute("DELETE FROM manifest_refs WHERE repo = ?1 AND manifest = ?2", params![repo, d])?;
                    }
                }
            }
            tx.commit()?;
            Ok((tags, manifests))
        })
        .await?;
    report.tags_deleted = tags;
    report.manifests_deleted = manifests;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collects_an_unlinked_file_and_keeps_a_linked_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let kept = Digest::sha256_of(b"kept");
        let gone = Digest::sha256_of(b"gone");
        s.blobs.put_bytes(&kept, b"kept").await.unwrap();
        s.blobs.put_bytes(&gone, b"gone").await.unwrap();
        s.meta.link_blob("r", &kept.to_string(), 4).await.unwrap();
        let opts = GcOptions {
            grace: Duration::from_secs(3600),
            ..GcOptions::default()
        };
        let r = run(&s, &|_| false, opts).await.unwrap();
        assert_eq!(r.blobs_deleted, 0, "younger than the grace");
        let opts = GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        };
        let r = run(&s, &|_| false, opts).await.unwrap();
        assert_eq!(r.blobs_deleted, 1);
        assert_eq!(r.deleted, vec![gone.to_string()]);
        assert!(s.blobs.stat(&kept).await.unwrap().is_some());
        assert!(s.blobs.stat(&gone).await.unwrap().is_none());
    }
}
