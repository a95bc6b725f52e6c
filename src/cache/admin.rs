//! Cache and garbage-collection operations behind the admin endpoint and the CLI:
//! statistics, purge by repository or digest, verification of stored objects (rehash,
//! quarantine), a collection run, and the maintenance task of a running server
//! (reconcile after start, flush access times, scheduled collection).

use super::memory::MemoryTier;
use super::DiskTier;
use crate::config::CacheConfig;
use crate::oci::Digest;
use crate::storage::gc::{GcOptions, GcReport};
use crate::storage::{FsBlobs, Meta, Storage, StorageError};
use rusqlite::params;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What the cache operations work on: hosted storage, the disk and memory tiers and
/// `[cache]`.
#[derive(Clone)]
pub struct Tiers {
    pub storage: Arc<Storage>,
    pub disk: Arc<DiskTier>,
    pub memory: MemoryTier,
    pub config: CacheConfig,
}

/// How often access times are written to SQLite.
const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// What a purge removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PurgeReport {
    /// Cached objects removed (digests).
    pub removed: Vec<String>,
    /// Tag mappings forgotten.
    pub tags: u64,
}

/// Purges a digest, or a proxied repository (`library/alpine` for every upstream, or
/// `docker.io/library/alpine` for one): its tag mappings, lists, the manifests they
/// point at and the blobs only those manifests referenced.
pub async fn purge(c: &Tiers, target: &str) -> Result<PurgeReport, StorageError> {
    let mut report = PurgeReport::default();
    let digests: Vec<Digest> = match target.parse::<Digest>() {
        Ok(d) => vec![d],
        Err(_) => {
            let t = target.to_string();
            let (digests, tags) = c
                .storage
                .meta
                .with(move |c| {
                    let tx = c.transaction()?;
                    let which = "FROM mirror_tags WHERE repo = ?1 OR upstream || '/' || repo = ?1";
                    let digests: Vec<String> = tx
                        .prepare(&format!("SELECT digest {which}"))?
                        .query_map(params![t], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    let tags = tx.execute(&format!("DELETE {which}"), params![t])? as u64;
                    tx.execute(
                        "DELETE FROM mirror_lists WHERE repo = ?1 OR upstream || '/' || repo = ?1",
                        params![t],
                    )?;
                    tx.commit()?;
                    Ok((digests, tags))
                })
                .await?;
            report.tags = tags;
            digests.iter().filter_map(|d| d.parse().ok()).collect()
        }
    };
    for d in digests {
        let removed = c.disk.purge_digest(&d).await;
        report
            .removed
            .extend(removed.iter().map(ToString::to_string));
    }
    // Tag rows and lists have no index by repository in memory: start it afresh.
    c.memory.clear();
    Ok(report)
}

/// Runs garbage collection of hosted repositories with the configured policies.
pub async fn gc(c: &Tiers, dry_run: bool) -> Result<GcReport, StorageError> {
    let cfg = &c.config;
    let opts = GcOptions {
        grace: cfg.gc.grace,
        keep_last_tags: cfg.cleanup.keep_last_tags,
        delete_untagged_after: cfg.cleanup.delete_untagged_after,
        dry_run,
    };
    let cache = c.disk.clone();
    let report = crate::storage::gc::run(&c.storage, &move |d| cache.holds(d), opts).await?;
    crate::metrics::gc_run(dry_run, report.freed_bytes);
    tracing::info!(
        dry_run,
        tags = report.tags_deleted,
        manifests = report.manifests_deleted,
        links = report.links_deleted,
        blobs = report.blobs_deleted,
        freed_bytes = report.freed_bytes,
        elapsed_ms = report.elapsed_ms,
        "garbage collection finished"
    );
    Ok(report)
}

/// What `cache verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Objects whose bytes no longer match, moved to `quarantine/`.
    pub quarantined: Vec<String>,
}

/// Rehashes every object under `data_dir/blobs` (blake3 where the cache recorded one,
/// else the digest's own algorithm) and moves any that no longer match to
/// `data_dir/quarantine/`, dropping their cache rows. Safe while the server runs: it
/// touches nothing else, and a server that misses a quarantined object fetches it again.
pub async fn verify(data_dir: &Path) -> Result<VerifyReport, StorageError> {
    let blobs = FsBlobs::at(data_dir);
    let meta = Meta::open(&data_dir.join("meta.db"))?;
    let sums: HashMap<String, String> = meta
        .with(|c| {
            let Ok(mut stmt) =
                c.prepare("SELECT digest, blake3 FROM cache_objects WHERE blake3 IS NOT NULL")
            else {
                return Ok(HashMap::new()); // no cache table yet
            };
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await?;
    let quarantine = data_dir.join("quarantine");
    let mut report = VerifyReport::default();
    for (d, size) in blobs.list().await? {
        let path = blobs.path(&d);
        let ok = match sums.get(&d.to_string()) {
            Some(sum) => blake3_file(&path).await.map(|s| &s == sum),
            None => crate::storage::blobs::hash_file(&path, d.algorithm())
                .await
                .map(|a| a == d),
        };
        let ok = match ok {
            Ok(ok) => ok,
            // Vanished meanwhile (evicted, collected): nothing to check.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        report.checked += 1;
        report.bytes += size;
        if ok {
            continue;
        }
        tokio::fs::create_dir_all(&quarantine).await?;
        let dest = quarantine.join(format!("{}-{}", d.algorithm().as_str(), d.hex()));
        tokio::fs::rename(&path, &dest).await?;
        let key = d.to_string();
        meta.with(move |c| {
            c.execute("DELETE FROM cache_objects WHERE digest = ?1", params![key])?;
            c.execute("DELETE FROM cache_refs WHERE manifest = ?1", params![key])?;
            c.execute(
                "DELETE FROM mirror_manifests WHERE digest = ?1",
                params![key],
            )?;
            Ok(())
        })
        .await
        .or_else(|e| match e.to_string().contains("no such table") {
            true => Ok(()),
            false => Err(e),
        })?;
        tracing::error!(digest = %d, to = %dest.display(), "stored object does not match its digest: quarantined");
        report.quarantined.push(d.to_string());
    }
    Ok(report)
}

async fn blake3_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(path)?)?;
        Ok(h.finalize().to_hex().to_string())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The cache's upkeep in a running server: reconcile the index with the files once,
/// then flush access times every 30 s and collect garbage on the configured schedule.
pub async fn maintain(c: Tiers) {
    match c.disk.reconcile().await {
        Ok((adopted, gone)) if adopted + gone > 0 => {
            tracing::info!(adopted, gone, "disk cache index reconciled with the files")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "disk cache reconcile failed"),
    }
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let gc_every = c.config.gc.interval;
    let mut gc = gc_every.map(|e| tokio::time::interval_at(tokio::time::Instant::now() + e, e));
    loop {
        tokio::select! {
            _ = flush.tick() => c.disk.flush().await,
            _ = async {
                match &mut gc {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Err(e) = self::gc(&c, false).await {
                    tracing::error!(error = %e, "scheduled garbage collection failed");
                }
            }
        }
    }
}
