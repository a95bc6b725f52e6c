//! The disk tier's index in memory: objects, sizes, the eviction order over roots,
//! manifest references, pins and reservations. Pure bookkeeping under the tier's mutex;
//! `disk.rs` does the I/O.

use super::disk::ObjKind;
use super::policy::Order;
use crate::oci::Digest;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
pub(super) struct Obj {
    pub(super) size: u64,
    pub(super) kind: ObjKind,
    pub(super) atime_ms: i64,
    pub(super) blake3: Option<String>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) evictions: u64,
    pub(super) evicted_bytes: u64,
}

pub(super) struct Index {
    pub(super) order: Order<Digest>,
    pub(super) objs: HashMap<Digest, Obj>,
    /// How many cached manifests reference a digest.
    pub(super) refs: HashMap<Digest, u32>,
    /// What each cached manifest references.
    pub(super) children: HashMap<Digest, Vec<Digest>>,
    /// The cached manifests referencing a digest.
    pub(super) parents: HashMap<Digest, Vec<Digest>>,
    /// Readers and fills holding a digest.
    pub(super) pins: HashMap<Digest, u32>,
    pub(super) used: u64,
    pub(super) reserved: u64,
    pub(super) dirty: HashSet<Digest>,
    pub(super) counters: Counters,
}

impl Index {
    pub(super) fn evictable(&self, d: &Digest) -> bool {
        self.pins.get(d).copied().unwrap_or(0) == 0 && self.refs.get(d).copied().unwrap_or(0) == 0
    }

    pub(super) fn referenced(&self, d: &Digest) -> bool {
        self.refs.get(d).copied().unwrap_or(0) > 0
    }

    /// The bytes evicting `d` frees: its own and those of the cached objects it references.
    pub(super) fn weight(&self, d: &Digest) -> u64 {
        let own = self.objs.get(d).map_or(0, |o| o.size);
        let children = self.children.get(d).map_or(0, |cs| {
            cs.iter()
                .filter_map(|c| self.objs.get(c))
                .map(|o| o.size)
                .sum()
        });
        own + children
    }

    /// Records that manifest `m` references `refs`; referenced objects leave the order.
    pub(super) fn link(&mut self, m: &Digest, refs: &[Digest]) {
        if self.children.contains_key(m) {
            return;
        }
        for c in refs {
            let n = self.refs.entry(c.clone()).or_insert(0);
            *n += 1;
            self.parents.entry(c.clone()).or_default().push(m.clone());
            if *n == 1 && self.objs.contains_key(c) {
                self.order.remove(c);
            }
        }
        self.children.insert(m.clone(), refs.to_vec());
    }

    /// Adds a new object to the order if it is a root, else re-weighs its parents.
    pub(super) fn place(&mut self, d: &Digest, freq: u8) {
        if self.referenced(d) {
            for p in self.parents.get(d).cloned().unwrap_or_default() {
                if self.objs.contains_key(&p) && !self.referenced(&p) {
                    let w = self.weight(&p);
                    self.order.resize(&p, w);
                }
            }
        } else {
            let w = self.weight(d);
            self.order.insert(d.clone(), w, freq);
        }
    }

    /// Removes `d` and, if it is a manifest, what only it referenced (not pinned).
    pub(super) fn remove_cascade(&mut self, d: &Digest, out: &mut Vec<(Digest, ObjKind)>) {
        let Some(obj) = self.objs.remove(d) else {
            return;
        };
        self.order.remove(d);
        self.dirty.remove(d);
        self.used = self.used.saturating_sub(obj.size);
        self.counters.evictions += 1;
        self.counters.evicted_bytes += obj.size;
        out.push((d.clone(), obj.kind));
        for c in self.children.remove(d).unwrap_or_default() {
            if let Some(ps) = self.parents.get_mut(&c) {
                ps.retain(|p| p != d);
                if ps.is_empty() {
                    self.parents.remove(&c);
                }
            }
            let left = match self.refs.get_mut(&c) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n
                }
                None => 0,
            };
            if left == 0 {
                self.refs.remove(&c);
                if self.objs.contains_key(&c) {
                    if self.evictable(&c) {
                        self.remove_cascade(&c, out);
                    } else {
                        // Being read: it goes later, as a root of its own.
                        self.place(&c, 0);
                    }
                }
            }
        }
    }

    /// Evicts until `need` more bytes fit under `cap`; false if they cannot.
    pub(super) fn make_room(
        &mut self,
        cap: u64,
        need: u64,
        out: &mut Vec<(Digest, ObjKind)>,
    ) -> bool {
        while self.used + self.reserved + need > cap {
            let victim = {
                let (pins, refs) = (&self.pins, &self.refs);
                let ok = |d: &Digest| {
                    pins.get(d).copied().unwrap_or(0) == 0 && refs.get(d).copied().unwrap_or(0) == 0
                };
                self.order.evict(&ok)
            };
            match victim {
                // The order already dropped it; remove_cascade removes it again harmlessly.
                Some(v) => self.remove_cascade(&v, out),
                None => return false,
            }
        }
        true
    }

    /// Evicts roots in policy order until they freed at least `bytes` (files of other
    /// filesystems' users cannot be counted: the caller measures the free space again).
    /// Returns the bytes the victims weighed.
    pub(super) fn evict_bytes(&mut self, bytes: u64, out: &mut Vec<(Digest, ObjKind)>) -> u64 {
        let before = self.used;
        while before.saturating_sub(self.used) < bytes {
            let victim = {
                let (pins, refs) = (&self.pins, &self.refs);
                let ok = |d: &Digest| {
                    pins.get(d).copied().unwrap_or(0) == 0 && refs.get(d).copied().unwrap_or(0) == 0
                };
                self.order.evict(&ok)
            };
            match victim {
                Some(v) => self.remove_cascade(&v, out),
                None => break,
            }
        }
        before.saturating_sub(self.used)
    }
}
