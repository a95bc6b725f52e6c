//! Provenance of the mirror's objects: which upstreams are known to have a digest.
//!
//! Blob files are shared by digest between hosted repositories and every upstream, so
//! "the file exists" says nothing about whether an upstream has it. A mirrored route
//! serves bytes held here (memory tier, disk, a fill in progress) only when this map says
//! its upstream has the digest: the mirror fetched it from that upstream (a fill that
//! committed, a manifest fetch), or the upstream confirmed it with a HEAD when asked for
//! bytes that were already here. Anything else is a miss for that upstream, so the
//! upstream's own answer decides the status, and hosted content never shows through a
//! proxied route.
//!
//! In memory a map from digest to upstream names (interned), one lock and one lookup on
//! the warm path. For cached objects it is persisted in `cache_origins` (digest,
//! upstream) with the cache's relaxed bookkeeping commits, loaded at start with the
//! objects, dropped with the object on eviction; a confirmation of bytes that are not a
//! cached object (hosted content) is kept in memory only. Rows lost in a crash, and
//! caches from before provenance was recorded, only cost one confirmation with the
//! upstream per (upstream, digest).

use crate::oci::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cache_origins (
    digest TEXT NOT NULL, upstream TEXT NOT NULL, PRIMARY KEY (digest, upstream)
) WITHOUT ROWID;
"#;

#[derive(Default)]
struct Inner {
    by_digest: HashMap<Digest, Vec<Arc<str>>>,
    /// Upstream names, one allocation each however many digests they have.
    names: HashSet<Arc<str>>,
}

/// Which upstreams have which digests (see the module docs).
#[derive(Default)]
pub struct Origins {
    inner: RwLock<Inner>,
}

impl Origins {
    /// Whether `upstream` is known to have `d`.
    pub fn has(&self, upstream: &str, d: &Digest) -> bool {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner
            .by_digest
            .get(d)
            .is_some_and(|ups| ups.iter().any(|u| &**u == upstream))
    }

    /// Records in memory that `upstream` has `d`; returns whether that is news.
    pub fn note(&self, upstream: &str, d: &Digest) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let name = match inner.names.get(upstream) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = upstream.into();
                inner.names.insert(n.clone());
                n
            }
        };
        let ups = inner.by_digest.entry(d.clone()).or_default();
        if ups.iter().any(|u| **u == *name) {
            return false;
        }
        ups.push(name);
        true
    }

    /// Loads what a previous run recorded: digests with their upstreams, one name a line.
    pub fn load(&self, rows: Vec<(Digest, String)>) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.by_digest.reserve(rows.len());
        let mut last: Option<Arc<str>> = None;
        for (d, names) in rows {
            let mut ups = Vec::with_capacity(1);
            for n in names.split('\n').filter(|n| !n.is_empty()) {
                // Consecutive rows mostly name the same upstream: intern without a lookup.
                let name = match &last {
                    Some(l) if **l == *n => l.clone(),
                    _ => {
                        let i = match inner.names.get(n) {
                            Some(i) => i.clone(),
                            None => {
                                let i: Arc<str> = n.into();
                                inner.names.insert(i.clone());
                                i
                            }
                        };
                        last = Some(i.clone());
                        i
                    }
                };
                ups.push(name);
            }
            inner.by_digest.insert(d, ups);
        }
    }

    /// Forgets every upstream of `d` (its cached object is gone).
    pub fn remove(&self, d: &Digest) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.by_digest.remove(d);
    }

    /// Digests with at least one known upstream.
    pub fn len(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_has_only_what_was_noted_for_it() {
        let o = Origins::default();
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        assert!(!o.has("docker.io", &a));
        assert!(o.note("docker.io", &a));
        assert!(!o.note("docker.io", &a), "noted once");
        assert!(o.has("docker.io", &a));
        assert!(!o.has("ghcr.io", &a), "another upstream did not fetch it");
        assert!(!o.has("docker.io", &b));
        assert!(o.note("ghcr.io", &a));
        assert!(o.has("ghcr.io", &a) && o.has("docker.io", &a));
        assert_eq!(o.len(), 1);
        o.remove(&a);
        assert!(!o.has("docker.io", &a) && !o.has("ghcr.io", &a));
        assert!(o.is_empty());
        o.load(vec![
            (a.clone(), "docker.io\nghcr.io".into()),
            (b.clone(), "docker.io".into()),
        ]);
        assert!(o.has("docker.io", &a) && o.has("ghcr.io", &a) && o.has("docker.io", &b));
        assert!(!o.has("ghcr.io", &b));
    }
}
