//! The disk tier: which proxied objects (blobs and manifests under `blobs/`) are cached,
//! their sizes, recency and references, capped at `cache.max_size` bytes.
//!
//! The index lives in memory (an [`Order`] plus maps) and in SQLite (`cache_objects`,
//! `cache_refs`), loaded at start so the cache comes back with its contents and recency.
//! Room is reserved before bytes are committed, so committed + reserved bytes never
//! exceed the cap; only temp files of fills in progress come on top.
//!
//! Eviction is reference-aware: only roots are in the eviction order, that is manifests
//! not referenced by a cached index and blobs no cached manifest references, each
//! weighted by the bytes its eviction frees (a manifest counts its blobs). A blob or
//! child manifest referenced by a cached manifest is never chosen; when a manifest goes,
//! what only it referenced goes with it (or, if a reader holds it, becomes a root and
//! goes after). Objects pinned by a reader or a fill are passed over. Before a file is deleted the hosted
//! tables are checked under `Storage::write_lock`: pushed content is never evicted.

use super::index::{Counters, Index, Obj};
use super::memory::MemoryTier;
use super::origins::Origins;
use super::policy::Order;
use super::write_state::WriteState;
use crate::config::CacheConfig;
use crate::oci::Digest;
use crate::storage::{MetaError, Storage};
use rusqlite::params;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cache_objects (
    digest TEXT PRIMARY KEY, kind INTEGER NOT NULL, size INTEGER NOT NULL,
    atime_ms INTEGER NOT NULL, freq INTEGER NOT NULL, blake3 TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cache_refs (
    manifest TEXT NOT NULL, target TEXT NOT NULL, PRIMARY KEY (manifest, target)
) WITHOUT ROWID;
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjKind {
    Blob,
    Manifest,
}

impl ObjKind {
    fn code(self) -> i64 {
        match self {
            ObjKind::Blob => 0,
            ObjKind::Manifest => 1,
        }
    }
}

/// Cache statistics (also the admin endpoint's JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub enabled: bool,
    pub policy: &'static str,
    pub max_bytes: u64,
    pub bytes: u64,
    pub entries: u64,
    pub manifests: u64,
    pub reserved_bytes: u64,
    pub pinned: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub write_disabled: bool,
    pub memory_entries: u64,
    pub memory_bytes: u64,
    pub memory_max_bytes: u64,
}

pub struct DiskTier {
    storage: Arc<Storage>,
    memory: MemoryTier,
    cfg: CacheConfig,
    inner: Mutex<Index>,
    pub write: WriteState,
    /// Which upstreams are known to have which digests (mirrored routes serve only those).
    pub origins: Origins,
}

/// Keeps a digest from eviction while held (a reader or a fill).
pub struct Pin {
    tier: Arc<DiskTier>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut idx = self.tier.lock();
        if let Some(n) = idx.pins.get_mut(&self.digest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                idx.pins.remove(&self.digest);
            }
        }
    }
}

/// Room set aside for a fill before its bytes are committed; released on drop.
pub struct Reservation {
    tier: Arc<DiskTier>,
    size: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut idx = self.tier.lock();
        idx.reserved = idx.reserved.saturating_sub(self.size);
    }
}

/// Room for a fill: its share of the cap and of the filesystem's free space.
pub struct Room {
    pub reservation: Reservation,
    space: Space,
}

impl Room {
    /// `n` bytes of the object were written: the filesystem's free space counts them
    /// now, so they no longer need holding.
    pub fn landed(&mut self, n: u64) {
        let n = n.min(self.space.size);
        self.space.size -= n;
        self.space.tier.write.release(n);
    }
}

/// Bytes of the filesystem's free space held for a fill in flight; released on drop.
struct Space {
    tier: Arc<DiskTier>,
    size: u64,
}

impl Drop for Space {
    fn drop(&mut self) {
        self.tier.write.release(self.size);
    }
}

/// Why an object gets no room in the cache (it streams through instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// Larger than `cache.max_size`, or everything evictable is in use.
    Cap,
    /// The filesystem has not that much free, even after evicting what may go.
    Disk,
}

impl NoRoom {
    pub fn as_str(self) -> &'static str {
        match self {
            NoRoom::Cap => "larger than the room in the cache cap",
            NoRoom::Disk => "larger than the free disk space",
        }
    }
}

type Loaded = (
    Vec<(Digest, Obj, u8)>,
    Vec<(Digest, Digest)>,
    Vec<(Digest, String)>,
);

impl DiskTier {
    /// Opens the index of `storage`, loading what a previous run cached.
    pub fn open(
        storage: Arc<Storage>,
        memory: MemoryTier,
        cfg: &CacheConfig,
    ) -> Result<Arc<DiskTier>, MetaError> {
        let started = std::time::Instant::now();
        let (rows, refs, origins): Loaded = storage.meta.with_sync(|c| {
            c.execute_batch(SCHEMA)?;
            c.execute_batch(super::origins::SCHEMA)?;
            let mut stmt = c.prepare(
                // Each object with its upstreams (one index probe per row, no second
                // pass over 100,000 digests).
                "SELECT digest, kind, size, atime_ms, freq, blake3,
                    (SELECT group_concat(upstream, char(10)) FROM cache_origins g WHERE g.digest = o.digest)
                 FROM cache_objects o ORDER BY atime_ms",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            let mut objs = Vec::new();
            let mut origins = Vec::new();
            for row in rows {
                let (d, kind, size, atime_ms, freq, blake3, ups) = row?;
                let Ok(d) = d.parse::<Digest>() else { continue };
                if let Some(ups) = ups {
                    origins.push((d.clone(), ups));
                }
                let kind = if kind == 1 { ObjKind::Manifest } else { ObjKind::Blob };
                let obj = Obj {
                    size: size.max(0) as u64,
                    kind,
                    atime_ms,
                    blake3,
                };
                objs.push((d, obj, freq.clamp(0, 3) as u8));
            }
            let mut stmt = c.prepare("SELECT manifest, target FROM cache_refs")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut refs = Vec::new();
            for row in rows {
                let (m, t) = row?;
                if let (Ok(m), Ok(t)) = (m.parse(), t.parse()) {
                    refs.push((m, t));
                }
            }
            Ok((objs, refs, origins))
        })?;
        let mut idx = Index {
            order: Order::new(cfg.policy, cfg.max_size),
            objs: HashMap::with_capacity(rows.len()),
            refs: HashMap::new(),
            children: HashMap::new(),
            parents: HashMap::new(),
            pins: HashMap::new(),
            used: 0,
            reserved: 0,
            dirty: HashSet::new(),
            counters: Counters::default(),
        };
        let mut freqs = Vec::with_capacity(rows.len());
        for (d, obj, freq) in rows {
            idx.used += obj.size;
            idx.objs.insert(d.clone(), obj);
            freqs.push((d, freq));
        }
        let mut by_manifest: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for (m, t) in refs {
            if idx.objs.contains_key(&m) {
                by_manifest.entry(m).or_default().push(t);
            }
        }
        for (m, ts) in by_manifest {
            idx.link(&m, &ts);
        }
        // Roots enter the order oldest first, so recency survives the restart.
        for (d, freq) in freqs {
            if !idx.referenced(&d) {
                let w = idx.weight(&d);
                idx.order.insert(d, w, freq);
            }
        }
        let known = Origins::default();
        known.load(origins);
        let n = idx.objs.len();
        let write = WriteState::new(&storage);
        tracing::info!(
            entries = n,
            bytes = idx.used,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "disk cache index loaded"
        );
        Ok(Arc::new(DiskTier {
            storage,
            memory,
            cfg: cfg.clone(),
            inner: Mutex::new(idx),
            write,
            origins: known,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.lock().objs.contains_key(d)
    }

    /// Whether the cache holds `d` or a reader or fill has it pinned (garbage collection
    /// leaves such files alone).
    pub fn holds(&self, d: &Digest) -> bool {
        let idx = self.lock();
        idx.objs.contains_key(d) || idx.pins.contains_key(d)
    }

    pub fn pin(self: &Arc<Self>, d: &Digest) -> Pin {
        *self.lock().pins.entry(d.clone()).or_insert(0) += 1;
        Pin {
            tier: self.clone(),
            digest: d.clone(),
        }
    }

    /// Records a read of `d` (recency, frequency).
    pub fn touch(&self, d: &Digest) {
        let mut idx = self.lock();
        if let Some(o) = idx.objs.get_mut(d) {
            o.atime_ms = crate::storage::mirror_meta::now_ms();
            idx.order.touch(d);
            idx.dirty.insert(d.clone());
        }
    }

    /// Sets aside `size` bytes, evicting as needed. None: caching is off, the object is
    /// larger than the cap, or everything evictable is in use.
    pub async fn reserve(self: &Arc<Self>, size: u64) -> Option<Reservation> {
        if size > self.cfg.max_size {
            return None;
        }
        let mut victims = Vec::new();
        let ok = {
            let mut idx = self.lock();
            let ok = idx.make_room(self.cfg.max_size, size, &mut victims);
            if ok {
                idx.reserved += size;
            }
            ok
        };
        self.delete(victims).await;
        ok.then(|| Reservation {
            tier: self.clone(),
            size,
        })
    }

    /// Room for an object of `size` bytes: reserved under the cap (evicting as needed)
    /// and against the filesystem's free space (minus what other fills reserved), where
    /// cached objects are evicted too when the disk is short. Refused: this object does
    /// not fit; caching stays on for everything else.
    pub async fn reserve_room(self: &Arc<Self>, size: u64) -> Result<Room, NoRoom> {
        let reservation = self.reserve(size).await.ok_or(NoRoom::Cap)?;
        for _ in 0..3 {
            let short = match self.write.claim(size) {
                Ok(()) => {
                    return Ok(Room {
                        reservation,
                        space: Space {
                            tier: self.clone(),
                            size,
                        },
                    })
                }
                Err(short) => short,
            };
            // The disk is shorter than the cap: make room on it from the cache.
            let mut victims = Vec::new();
            let freed = self.lock().evict_bytes(short, &mut victims);
            self.delete(victims).await;
            if freed == 0 {
                break;
            }
        }
        Err(NoRoom::Disk)
    }

    /// Records a committed object (in the reservation made for it). `refs`: what a
    /// manifest references; `origin`: the upstream it was fetched from (None: unknown,
    /// as for files adopted after a crash).
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        self: &Arc<Self>,
        d: &Digest,
        size: u64,
        kind: ObjKind,
        refs: Vec<Digest>,
        blake3: Option<String>,
        reservation: Reservation,
        origin: Option<&str>,
    ) {
        let now = crate::storage::mirror_meta::now_ms();
        if let Some(up) = origin {
            self.origins.note(up, d);
        }
        let origin = origin.map(str::to_string);
        let mut reservation = reservation;
        {
            let mut idx = self.lock();
            // The reservation becomes the object's bytes (it drops after the lock).
            idx.reserved = idx.reserved.saturating_sub(reservation.size);
            reservation.size = 0;
            let known = idx.objs.get(d).map(|o| o.size);
            if let Some(old) = known {
                idx.used = idx.used.saturating_sub(old);
            }
            idx.used += size;
            idx.objs.insert(
                d.clone(),
                Obj {
                    size,
                    kind,
                    atime_ms: now,
                    blake3: blake3.clone(),
                },
            );
            if kind == ObjKind::Manifest {
                idx.link(d, &refs);
            }
            if known.is_none() {
                idx.place(d, 0);
            }
        }
        let key = d.to_string();
        let refs: Vec<String> = refs.iter().map(ToString::to_string).collect();
        let r = self
            .storage
            .meta
            .with_relaxed(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "INSERT INTO cache_objects(digest, kind, size, atime_ms, freq, blake3) VALUES (?1, ?2, ?3, ?4, 0, ?5)
                     ON CONFLICT(digest) DO UPDATE SET size = excluded.size, atime_ms = excluded.atime_ms, blake3 = excluded.blake3",
                    params![key, kind.code(), size as i64, now, blake3],
                )?;
                for t in refs {
                    tx.execute(
                        "INSERT OR IGNORE INTO cache_refs(manifest, target) VALUES (?1, ?2)",
                        params![key, t],
                    )?;
                }
                if let Some(up) = origin {
                    tx.execute(
                        "INSERT OR IGNORE INTO cache_origins(digest, upstream) VALUES (?1, ?2)",
                        params![key, up],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(digest = %d, error = %e, "cache index row not persisted");
        }
    }

    /// Records that `upstream` has `d` (it confirmed so for bytes already held here);
    /// persisted for cached objects (whose rows eviction removes), in memory only for
    /// the rest (hosted bytes: confirmed again after a restart).
    pub async fn record_origin(&self, upstream: &str, d: &Digest) {
        if !self.origins.note(upstream, d) || !self.contains(d) {
            return;
        }
        let (key, up) = (d.to_string(), upstream.to_string());
        let r = self
            .storage
            .meta
            .with_relaxed(move |c| {
                c.execute(
                    "INSERT OR IGNORE INTO cache_origins(digest, upstream) VALUES (?1, ?2)",
                    params![key, up],
                )?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(digest = %d, upstream, error = %e, "cache provenance row not persisted");
        }
    }

    /// Forgets an object whose file is gone (e.g. quarantined by `cache verify`).
    pub async fn forget(self: &Arc<Self>, d: &Digest) {
        let mut out = Vec::new();
        self.lock().remove_cascade(d, &mut out);
        self.delete(out).await;
    }

    /// Removes objects from disk (unless hosted), from the index tables and from memory.
    async fn delete(&self, victims: Vec<(Digest, ObjKind)>) {
        if victims.is_empty() {
            return;
        }
        for (d, _) in &victims {
            self.memory.remove_manifest(d);
            self.memory.remove_blob(d);
            self.origins.remove(d);
        }
        let keys: Vec<(String, ObjKind)> =
            victims.iter().map(|(d, k)| (d.to_string(), *k)).collect();
        let _write = self.storage.write_lock.write().await;
        let hosted = self
            .storage
            .meta
            .with(move |c| {
                let tx = c.transaction()?;
                let mut hosted = HashSet::new();
                for (d, kind) in &keys {
                    tx.execute("DELETE FROM cache_objects WHERE digest = ?1", params![d])?;
                    tx.execute("DELETE FROM cache_refs WHERE manifest = ?1", params![d])?;
                    tx.execute("DELETE FROM cache_origins WHERE digest = ?1", params![d])?;
                    if *kind == ObjKind::Manifest {
                        tx.execute("DELETE FROM mirror_manifests WHERE digest = ?1", params![d])?;
                    }
                    let is_hosted = tx
                        .prepare_cached(
                            "SELECT 1 FROM repo_blobs WHERE digest = ?1 UNION ALL SELECT 1 FROM manifests WHERE digest = ?1",
                        )?
                        .exists(params![d])?;
                    if is_hosted {
                        hosted.insert(d.clone());
                    }
                }
                tx.commit()?;
                Ok(hosted)
            })
            .await;
        let hosted = match hosted {
            Ok(h) => h,
            Err(e) => {
                // Without knowing what is hosted nothing is deleted; the files stay
                // (uncounted) until the next reconcile.
                tracing::error!(error = %e, "cache eviction: metadata failed, files kept");
                return;
            }
        };
        for (d, _) in victims {
            if hosted.contains(&d.to_string()) {
                continue;
            }
            if let Err(e) = self.storage.blobs.remove(&d).await {
                tracing::warn!(digest = %d, error = %e, "cache eviction: cannot remove file");
            }
        }
    }

    /// Writes access times and counts changed since the last flush.
    pub async fn flush(&self) {
        let rows: Vec<(String, i64, u8)> = {
            let mut idx = self.lock();
            let dirty: Vec<Digest> = idx.dirty.drain().collect();
            dirty
                .into_iter()
                .filter_map(|d| {
                    let o = idx.objs.get(&d)?;
                    Some((d.to_string(), o.atime_ms, idx.order.freq(&d)))
                })
                .collect()
        };
        if rows.is_empty() {
            return;
        }
        let r = self
            .storage
            .meta
            .with_relaxed(move |c| {
                let tx = c.transaction()?;
                for (d, at, f) in rows {
                    tx.execute(
                        "UPDATE cache_objects SET atime_ms = ?2, freq = ?3 WHERE digest = ?1",
                        params![d, at, f],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "cache access times not persisted");
        }
    }

    /// Purges `d` (and the cached manifests that reference it, and what only they
    /// referenced). Returns the digests removed.
    pub async fn purge_digest(self: &Arc<Self>, d: &Digest) -> Vec<Digest> {
        let mut out = Vec::new();
        {
            let mut idx = self.lock();
            let mut stack = vec![d.clone()];
            let mut seen = HashSet::new();
            // Manifests referencing it go first, so no cached manifest loses a layer.
            while let Some(x) = stack.pop() {
                if !seen.insert(x.clone()) {
                    continue;
                }
                let parents: Vec<Digest> = idx
                    .children
                    .iter()
                    .filter(|(_, c)| c.contains(&x))
                    .map(|(m, _)| m.clone())
                    .collect();
                stack.extend(parents);
            }
            for x in seen {
                idx.remove_cascade(&x, &mut out);
            }
        }
        let removed = out.iter().map(|(d, _)| d.clone()).collect();
        self.delete(out).await;
        removed
    }

    /// Everything cached, for verification: (digest, size, blake3).
    pub fn objects(&self) -> Vec<(Digest, u64, Option<String>)> {
        self.lock()
            .objs
            .iter()
            .map(|(d, o)| (d.clone(), o.size, o.blake3.clone()))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let (mem_entries, mem_bytes) = self.memory.stats();
        let idx = self.lock();
        Stats {
            enabled: self.cfg.enabled,
            policy: self.cfg.policy.as_str(),
            max_bytes: self.cfg.max_size,
            bytes: idx.used,
            entries: idx.objs.len() as u64,
            manifests: idx
                .objs
                .values()
                .filter(|o| o.kind == ObjKind::Manifest)
                .count() as u64,
            reserved_bytes: idx.reserved,
            pinned: idx.pins.len() as u64,
            evictions: idx.counters.evictions,
            evicted_bytes: idx.counters.evicted_bytes,
            write_disabled: self.write.disabled(),
            memory_entries: mem_entries,
            memory_bytes: mem_bytes,
            memory_max_bytes: self.cfg.memory.max_size,
        }
    }

    /// Brings the index in line with the files after a crash: files under `blobs/` that
    /// are neither indexed nor hosted are adopted (they were verified before their
    /// rename), index rows without a file are dropped, and the cap is enforced.
    pub async fn reconcile(
        self: &Arc<Self>,
    ) -> Result<(usize, usize), crate::storage::StorageError> {
        let files = self.storage.blobs.list().await?;
        let (hosted, manifests) = self
            .storage
            .meta
            .with(|c| {
                let mut hosted = HashSet::new();
                let mut stmt =
                    c.prepare("SELECT digest FROM repo_blobs UNION SELECT digest FROM manifests")?;
                for d in stmt.query_map([], |r| r.get::<_, String>(0))? {
                    hosted.insert(d?);
                }
                let mut manifests = HashSet::new();
                let mut stmt = c.prepare("SELECT digest FROM mirror_manifests")?;
                for d in stmt.query_map([], |r| r.get::<_, String>(0))? {
                    manifests.insert(d?);
                }
                Ok((hosted, manifests))
            })
            .await?;
        let on_disk: HashSet<&Digest> = files.iter().map(|(d, _)| d).collect();
        let gone: Vec<Digest> = {
            let idx = self.lock();
            idx.objs
                .keys()
                .filter(|d| !on_disk.contains(d))
                .cloned()
                .collect()
        };
        for d in &gone {
            // Committed after the walk (a fill since the start) is not gone.
            if !self.storage.blobs.path(d).exists() {
                self.forget(d).await;
            }
        }
        let mut adopted = 0;
        for (d, size) in files {
            let key = d.to_string();
            if hosted.contains(&key) || self.contains(&d) {
                continue;
            }
            let kind = match manifests.contains(&key) {
                true => ObjKind::Manifest,
                false => ObjKind::Blob,
            };
            // Adopted objects were counted nowhere: reserve (evicting if needed), else
            // the file goes.
            match self.reserve(size).await {
                Some(r) => {
                    // A manifest's references come from its bytes, so its image stays
                    // whole under eviction as if it had been admitted by a pull.
                    let refs = match kind {
                        ObjKind::Manifest => tokio::fs::read(self.storage.blobs.path(&d))
                            .await
                            .ok()
                            .and_then(|b| crate::oci::manifest::parse(&b, "").ok())
                            .map(|i| i.blobs.into_iter().chain(i.children).collect())
                            .unwrap_or_default(),
                        ObjKind::Blob => Vec::new(),
                    };
                    // Adopted without provenance: a mirrored route confirms with its
                    // upstream before serving it.
                    self.admit(&d, size, kind, refs, None, r, None).await;
                    adopted += 1;
                }
                None => {
                    let _ = self.storage.blobs.remove(&d).await;
                }
            }
        }
        // The cap may have been lowered since the last run: enforce it now.
        drop(self.reserve(0).await);
        Ok((adopted, gone.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    async fn setup(cap: u64, policy: Policy) -> (tempfile::TempDir, Arc<Storage>, Arc<DiskTier>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        let cfg = CacheConfig {
            max_size: cap,
            policy,
            ..CacheConfig::default()
        };
        let tier = DiskTier::open(storage.clone(), MemoryTier::new(1 << 20), &cfg).unwrap();
        (dir, storage, tier)
    }

    /// Stores `bytes` and admits them; returns the digest.
    async fn put(
        t: &Arc<DiskTier>,
        s: &Storage,
        bytes: &[u8],
        kind: ObjKind,
        refs: Vec<Digest>,
    ) -> Digest {
        let d = Digest::sha256_of(bytes);
        let r = t.reserve(bytes.len() as u64).await.expect("room");
        s.blobs.put_bytes(&d, bytes).await.unwrap();
        t.admit(&d, bytes.len() as u64, kind, refs, None, r, Some("up"))
            .await;
        d
    }

    fn exists(s: &Storage, d: &Digest) -> bool {
        s.blobs.path(d).exists()
    }

    #[tokio::test]
    async fn manifests_take_their_blobs_and_pinned_blobs_go_after() {
        for policy in [Policy::Lru, Policy::S3Fifo] {
            let (_dir, s, t) = setup(1000, policy).await;
            let b1 = Digest::sha256_of(&[1u8; 300]);
            let b2 = Digest::sha256_of(&[2u8; 300]);
            let m = put(
                &t,
                &s,
                b"manifest",
                ObjKind::Manifest,
                vec![b1.clone(), b2.clone()],
            )
            .await;
            put(&t, &s, &[1u8; 300], ObjKind::Blob, vec![]).await;
            put(&t, &s, &[2u8; 300], ObjKind::Blob, vec![]).await;
            let pin = t.pin(&b1);
            // 400 more bytes do not fit: the image is the only root; its unpinned blob
            // goes with the manifest, the pinned one stays.
            let r = t.reserve(400).await.expect("room after evicting the image");
            assert!(!exists(&s, &m) && !exists(&s, &b2), "{policy:?}");
            assert!(exists(&s, &b1), "a blob being read stays");
            assert!(t.stats().bytes + 400 <= 1000);
            drop(r);
            // Everything left is pinned: no room for more than what is free.
            assert!(t.reserve(800).await.is_none());
            drop(pin);
            assert!(t.reserve(800).await.is_some());
            assert!(!exists(&s, &b1), "{policy:?}: goes once its reader is done");
            assert_eq!(t.stats().entries, 0);
        }
    }

    #[tokio::test]
    async fn reconcile_adopts_unindexed_files_whole_and_forgets_missing_ones() {
        let (_dir, s, t) = setup(10_000, Policy::Lru).await;
        // As a crash between rename and index row leaves them: a blob and the manifest
        // that references it, files only (plus the mirror's media type row).
        let blob = [5u8; 500];
        let b = Digest::sha256_of(&blob);
        s.blobs.put_bytes(&b, &blob).await.unwrap();
        let m_bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{b}","size":500}},"layers":[]}}"#
        );
        let m = Digest::sha256_of(m_bytes.as_bytes());
        s.blobs.put_bytes(&m, m_bytes.as_bytes()).await.unwrap();
        s.meta
            .put_mirror_manifest(
                &m.to_string(),
                "application/vnd.oci.image.manifest.v1+json",
                m_bytes.len() as u64,
            )
            .await
            .unwrap();
        // And an index row whose file is gone.
        let gone = put(&t, &s, b"gone", ObjKind::Blob, vec![]).await;
        std::fs::remove_file(s.blobs.path(&gone)).unwrap();
        assert_eq!(t.reconcile().await.unwrap(), (2, 1));
        let st = t.stats();
        assert_eq!((st.entries, st.manifests), (2, 1));
        assert_eq!(st.bytes, 500 + m_bytes.len() as u64);
        // The adopted manifest carries its blob: the manifest is the only root, so
        // freeing a single byte evicts the whole image.
        assert!(t.reserve(10_000 - st.bytes + 1).await.is_some());
        assert!(!exists(&s, &m) && !exists(&s, &b));
    }

    #[tokio::test]
    async fn hosted_content_is_never_deleted_and_index_survives_reopen() {
        let (dir, s, t) = setup(1000, Policy::S3Fifo).await;
        let hosted = put(&t, &s, &[7u8; 600], ObjKind::Blob, vec![]).await;
        s.meta
            .link_blob("team/app", &hosted.to_string(), 600)
            .await
            .unwrap();
        let other = put(&t, &s, &[8u8; 300], ObjKind::Blob, vec![]).await;
        t.touch(&other);
        t.flush().await;
        // Reopen: contents come back.
        let cfg = CacheConfig {
            max_size: 1000,
            ..CacheConfig::default()
        };
        let t2 = DiskTier::open(s.clone(), MemoryTier::new(1 << 20), &cfg).unwrap();
        assert_eq!(t2.stats().entries, 2);
        assert_eq!(t2.stats().bytes, 900);
        drop(t);
        assert!(t2.reserve(1000).await.is_some());
        assert!(exists(&s, &hosted), "hosted bytes are never evicted");
        assert!(!exists(&s, &other));
        drop(dir);
    }

    #[tokio::test]
    async fn provenance_survives_reopen_and_goes_with_the_object() {
        let (dir, s, t) = setup(1000, Policy::Lru).await;
        let a = put(&t, &s, &[1u8; 400], ObjKind::Blob, vec![]).await;
        assert!(t.origins.has("up", &a) && !t.origins.has("other", &a));
        let b = Digest::sha256_of(b"hosted elsewhere");
        t.record_origin("other", &b).await;
        let cfg = CacheConfig {
            max_size: 1000,
            policy: Policy::Lru,
            ..CacheConfig::default()
        };
        // A cached object's confirmation is persisted; one for bytes not in the cache
        // (hosted) is kept in memory only.
        t.record_origin("other", &a).await;
        assert!(t.origins.has("other", &b));
        let t2 = DiskTier::open(s.clone(), MemoryTier::new(1 << 20), &cfg).unwrap();
        assert!(t2.origins.has("up", &a) && t2.origins.has("other", &a));
        assert!(!t2.origins.has("other", &b));
        drop(t);
        // Evicting the object drops its provenance, in memory and in SQLite.
        assert!(t2.reserve(1000).await.is_some());
        assert!(!t2.origins.has("up", &a));
        let t3 = DiskTier::open(s.clone(), MemoryTier::new(1 << 20), &cfg).unwrap();
        assert!(!t3.origins.has("up", &a) && !t3.origins.has("other", &a));
        drop(dir);
    }
}
