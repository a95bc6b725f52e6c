//! The memory tier: small, hot, immutable-or-revalidated objects held in RAM so warm
//! manifest requests touch neither SQLite nor the disk. One moka cache weighted by bytes
//! (W-TinyLFU admission, so a scan of one-off manifests does not flush the hot set),
//! capped at `max_bytes`.
//!
//! What lives here: manifests by digest (bytes + media type; immutable, never stale),
//! the mirror's tag -> digest rows and referrers answers (each carries its fetch time;
//! freshness is decided by the caller exactly as for the SQLite copy, which stays the
//! source of truth), and proxied blobs up to `cache.memory.blob_threshold`. Upstream
//! tokens are not here: `upstream/token.rs` keeps them per scope with their expiry.

use crate::oci::Digest;
use crate::storage::mirror_meta::TagRow;
use bytes::Bytes;
use std::sync::Arc;

#[derive(Clone, Hash, PartialEq, Eq)]
enum Key {
    Manifest(Digest),
    Blob(Digest),
    Tag(Arc<str>),
    List(Arc<str>),
}

#[derive(Clone)]
enum Value {
    Manifest(Arc<Manifest>),
    Blob(Bytes),
    Tag(Arc<TagRow>),
    List(Arc<(Bytes, i64)>),
}

/// A manifest's bytes with the media type it is served with.
pub struct Manifest {
    pub media_type: String,
    pub bytes: Bytes,
}

#[derive(Clone)]
pub struct MemoryTier {
    cache: moka::sync::Cache<Key, Value>,
}

/// Bookkeeping per entry beyond its payload (key, map slot, Arc headers).
const OVERHEAD: u32 = 160;

fn tag_key(upstream: &str, repo: &str, tag: &str) -> Key {
    Key::Tag(format!("{upstream}\0{repo}\0{tag}").into())
}

impl MemoryTier {
    pub fn new(max_bytes: u64) -> MemoryTier {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, v: &Value| {
                let key = match k {
                    Key::Manifest(_) | Key::Blob(_) => 0,
                    Key::Tag(s) | Key::List(s) => s.len(),
                };
                let val = match v {
                    Value::Manifest(m) => m.bytes.len() + m.media_type.len(),
                    Value::Blob(b) => b.len(),
                    Value::Tag(t) => t.digest.len() + t.media_type.len(),
                    Value::List(l) => l.0.len(),
                };
                u32::try_from(key + val)
                    .unwrap_or(u32::MAX)
                    .saturating_add(OVERHEAD)
            })
            .build();
        MemoryTier { cache }
    }

    pub fn manifest(&self, d: &Digest) -> Option<Arc<Manifest>> {
        match self.cache.get(&Key::Manifest(d.clone())) {
            Some(Value::Manifest(m)) => Some(m),
            _ => None,
        }
    }

    /// Keeps verified manifest bytes under their digest.
    pub fn put_manifest(&self, d: &Digest, media_type: &str, bytes: Bytes) {
        let m = Manifest {
            media_type: media_type.to_string(),
            bytes,
        };
        self.cache
            .insert(Key::Manifest(d.clone()), Value::Manifest(Arc::new(m)));
    }

    pub fn remove_manifest(&self, d: &Digest) {
        self.cache.invalidate(&Key::Manifest(d.clone()));
    }

    /// A small proxied blob (verified before it was put here).
    pub fn blob(&self, d: &Digest) -> Option<Bytes> {
        match self.cache.get(&Key::Blob(d.clone())) {
            Some(Value::Blob(b)) => Some(b),
            _ => None,
        }
    }

    pub fn put_blob(&self, d: &Digest, bytes: Bytes) {
        self.cache.insert(Key::Blob(d.clone()), Value::Blob(bytes));
    }

    pub fn remove_blob(&self, d: &Digest) {
        self.cache.invalidate(&Key::Blob(d.clone()));
    }

    /// A list answer (referrers) with the time it was fetched.
    pub fn list(&self, key: &str) -> Option<Arc<(Bytes, i64)>> {
        match self.cache.get(&Key::List(key.into())) {
            Some(Value::List(l)) => Some(l),
            _ => None,
        }
    }

    pub fn put_list(&self, key: &str, body: Bytes, fetched_ms: i64) {
        self.cache.insert(
            Key::List(key.into()),
            Value::List(Arc::new((body, fetched_ms))),
        );
    }

    /// Drops everything (after a purge).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    pub fn tag(&self, upstream: &str, repo: &str, tag: &str) -> Option<Arc<TagRow>> {
        match self.cache.get(&tag_key(upstream, repo, tag)) {
            Some(Value::Tag(t)) => Some(t),
            _ => None,
        }
    }

    pub fn put_tag(&self, upstream: &str, repo: &str, tag: &str, row: TagRow) {
        self.cache
            .insert(tag_key(upstream, repo, tag), Value::Tag(Arc::new(row)));
    }

    pub fn remove_tag(&self, upstream: &str, repo: &str, tag: &str) {
        self.cache.invalidate(&tag_key(upstream, repo, tag));
    }

    /// Entries and weighted bytes (approximate until moka's pending work runs).
    pub fn stats(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_manifests_and_tags_within_the_cap() {
        let tier = MemoryTier::new(64 * 1024);
        let d = Digest::sha256_of(b"m");
        tier.put_manifest(&d, "application/x", Bytes::from_static(b"m"));
        assert_eq!(
            tier.manifest(&d).map(|m| m.bytes.clone()),
            Some(Bytes::from_static(b"m"))
        );
        let row = TagRow {
            digest: d.to_string(),
            media_type: "application/x".into(),
            size: 1,
            fetched_ms: 5,
        };
        tier.put_tag("u", "r", "t", row.clone());
        assert_eq!(tier.tag("u", "r", "t").as_deref(), Some(&row));
        assert!(tier.tag("u", "r", "other").is_none());
        tier.remove_tag("u", "r", "t");
        assert!(tier.tag("u", "r", "t").is_none());
        // Far more than the cap goes in; the weighted size stays under it.
        for i in 0..200u32 {
            let b = Bytes::from(vec![0u8; 4096]);
            tier.put_manifest(&Digest::sha256_of(&i.to_le_bytes()), "x", b);
        }
        let (_, bytes) = tier.stats();
        assert!(bytes <= 64 * 1024, "{bytes} over the cap");
    }
}
