//! Eviction order for the disk tier, byte-weighted and pure (no I/O): LRU, and S3-FIFO
//! (Yang et al., SOSP '23): a small probationary FIFO (10% of the bytes) in front of a
//! main FIFO, with a ghost list of recently evicted keys. An object read once passes
//! through the small queue and leaves; one read again moves to the main queue, where a
//! 2-bit frequency buys it further rounds. One-off pulls (a CI job's unique image) thus
//! never push out the base layers every job shares.
//!
//! `evict` takes a predicate: objects it refuses (being read, referenced by a cached
//! manifest) are passed over and keep their place (LRU) or go round again (S3-FIFO).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;

pub use crate::config::Policy as Kind;

/// The eviction order over keys `K` with byte sizes.
pub enum Order<K> {
    Lru(Lru<K>),
    S3Fifo(S3Fifo<K>),
}

impl<K: Clone + Eq + Hash> Order<K> {
    pub fn new(kind: Kind, cap: u64) -> Order<K> {
        match kind {
            Kind::Lru => Order::Lru(Lru::default()),
            Kind::S3Fifo => Order::S3Fifo(S3Fifo::new(cap)),
        }
    }

    /// Adds `k` (a new object, or one restored after a restart with its access count).
    pub fn insert(&mut self, k: K, size: u64, freq: u8) {
        match self {
            Order::Lru(l) => l.insert(k),
            Order::S3Fifo(s) => s.insert(k, size, freq),
        }
    }

    pub fn touch(&mut self, k: &K) {
        match self {
            Order::Lru(l) => l.touch(k),
            Order::S3Fifo(s) => s.touch(k),
        }
    }

    /// Changes the weight of `k` (LRU does not weigh).
    pub fn resize(&mut self, k: &K, size: u64) {
        if let Order::S3Fifo(s) = self {
            s.resize(k, size);
        }
    }

    pub fn remove(&mut self, k: &K) {
        match self {
            Order::Lru(l) => l.remove(k),
            Order::S3Fifo(s) => s.remove(k),
        }
    }

    /// The next object to evict among those `ok` accepts, removed from the order.
    pub fn evict(&mut self, ok: &dyn Fn(&K) -> bool) -> Option<K> {
        match self {
            Order::Lru(l) => l.evict(ok),
            Order::S3Fifo(s) => s.evict(ok),
        }
    }

    /// The access count kept across restarts (0..=3; LRU keeps none).
    pub fn freq(&self, k: &K) -> u8 {
        match self {
            Order::Lru(_) => 0,
            Order::S3Fifo(s) => s.entries.get(k).map_or(0, |e| e.freq),
        }
    }
}

/// Least recently used first.
pub struct Lru<K> {
    tick: u64,
    by_tick: BTreeMap<u64, K>,
    ticks: HashMap<K, u64>,
}

impl<K> Default for Lru<K> {
    fn default() -> Self {
        Lru {
            tick: 0,
            by_tick: BTreeMap::new(),
            ticks: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash> Lru<K> {
    fn insert(&mut self, k: K) {
        self.touch_or_insert(k);
    }

    fn touch(&mut self, k: &K) {
        if self.ticks.contains_key(k) {
            self.touch_or_insert(k.clone());
        }
    }

    fn touch_or_insert(&mut self, k: K) {
        self.tick += 1;
        if let Some(old) = self.ticks.insert(k.clone(), self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, k);
    }

    fn remove(&mut self, k: &K) {
        if let Some(t) = self.ticks.remove(k) {
            self.by_tick.remove(&t);
        }
    }

    fn evict(&mut self, ok: &dyn Fn(&K) -> bool) -> Option<K> {
        let (t, k) = self
            .by_tick
            .iter()
            .find(|(_, k)| ok(k))
            .map(|(t, k)| (*t, k.clone()))?;
        self.by_tick.remove(&t);
        self.ticks.remove(&k);
        Some(k)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Entry {
    size: u64,
    freq: u8,
    queue: Queue,
}

/// S3-FIFO, weighted by bytes.
pub struct S3Fifo<K> {
    small_cap: u64,
    small: VecDeque<K>,
    main: VecDeque<K>,
    small_bytes: u64,
    entries: HashMap<K, Entry>,
    ghost: VecDeque<K>,
    ghost_set: HashSet<K>,
}

impl<K: Clone + Eq + Hash> S3Fifo<K> {
    pub fn new(cap: u64) -> S3Fifo<K> {
        S3Fifo {
            small_cap: cap / 10,
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_bytes: 0,
            entries: HashMap::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::new(),
        }
    }

    fn insert(&mut self, k: K, size: u64, freq: u8) {
        if self.entries.contains_key(&k) {
            self.touch(&k);
            return;
        }
        // Seen recently (in the ghost list) or restored with accesses: straight to main.
        let queue = if self.ghost_set.remove(&k) || freq > 0 {
            self.main.push_back(k.clone());
            Queue::Main
        } else {
            self.small.push_back(k.clone());
            self.small_bytes += size;
            Queue::Small
        };
        let freq = freq.min(3);
        self.entries.insert(k, Entry { size, freq, queue });
    }

    fn touch(&mut self, k: &K) {
        if let Some(e) = self.entries.get_mut(k) {
            e.freq = (e.freq + 1).min(3);
        }
    }

    fn resize(&mut self, k: &K, size: u64) {
        if let Some(e) = self.entries.get_mut(k) {
            if e.queue == Queue::Small {
                self.small_bytes = self.small_bytes.saturating_sub(e.size) + size;
            }
            e.size = size;
        }
    }

    fn remove(&mut self, k: &K) {
        if let Some(e) = self.entries.remove(k) {
            // Lazily dropped from the queues when they reach the head.
            if e.queue == Queue::Small {
                self.small_bytes = self.small_bytes.saturating_sub(e.size);
            }
        }
    }

    fn remember(&mut self, k: K) {
        // The ghost list remembers about as many keys as the main queue holds.
        let limit = self.main.len().max(64);
        if self.ghost_set.insert(k.clone()) {
            self.ghost.push_back(k);
        }
        while self.ghost.len() > limit {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }

    fn evict(&mut self, ok: &dyn Fn(&K) -> bool) -> Option<K> {
        // Each object may be passed over a few times (frequency, refusals) before the
        // queues have gone round completely.
        let mut budget = 4 * (self.small.len() + self.main.len()) + 8;
        while budget > 0 {
            budget -= 1;
            let from_small = self.small_bytes > self.small_cap || self.main.is_empty();
            let k = match from_small {
                true => self.small.pop_front(),
                false => self.main.pop_front(),
            };
            let Some(k) = k else {
                if self.small.is_empty() && self.main.is_empty() {
                    return None;
                }
                continue;
            };
            let Some(e) = self.entries.get_mut(&k) else {
                continue; // removed earlier
            };
            let want = matches!(
                (from_small, e.queue),
                (true, Queue::Small) | (false, Queue::Main)
            );
            if !want {
                continue; // stale queue slot
            }
            let refused = !ok(&k);
            if from_small {
                if e.freq > 0 || refused {
                    // Read again while on probation (or in use): promote.
                    e.queue = Queue::Main;
                    e.freq = 0;
                    self.small_bytes = self.small_bytes.saturating_sub(e.size);
                    self.main.push_back(k);
                    continue;
                }
                self.small_bytes = self.small_bytes.saturating_sub(e.size);
                self.entries.remove(&k);
                self.remember(k.clone());
                return Some(k);
            }
            if e.freq > 0 || refused {
                e.freq = e.freq.saturating_sub(1);
                self.main.push_back(k);
                continue;
            }
            self.entries.remove(&k);
            return Some(k);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &mut Order<u32>, ok: &dyn Fn(&u32) -> bool) -> Vec<u32> {
        std::iter::from_fn(|| o.evict(ok)).collect()
    }

    #[test]
    fn lru_evicts_least_recent_and_skips_refused() {
        let mut o = Order::new(Kind::Lru, 100);
        for k in 1..=4 {
            o.insert(k, 10, 0);
        }
        o.touch(&1);
        assert_eq!(drain(&mut o, &|k| *k != 3), vec![2, 4, 1]);
        assert_eq!(drain(&mut o, &|_| true), vec![3]);
    }

    #[test]
    fn s3fifo_keeps_what_is_read_again_over_one_offs() {
        let mut o = Order::new(Kind::S3Fifo, 1000);
        // A hot object read twice, then a scan of one-off objects.
        o.insert(0, 10, 0);
        o.touch(&0);
        for k in 1..=50 {
            o.insert(k, 10, 0);
        }
        let first: Vec<u32> = (0..10).filter_map(|_| o.evict(&|_| true)).collect();
        assert!(!first.contains(&0), "{first:?}");
        assert_eq!(first, (1..=10).collect::<Vec<_>>());
        // Removed keys never come back out.
        o.remove(&11);
        let rest = drain(&mut o, &|_| true);
        assert!(!rest.contains(&11));
        assert_eq!(rest.len(), 40);
        // A key evicted from small is a ghost: inserted again, it goes to main, while a
        // new key starts on probation.
        o.insert(12, 10, 0);
        o.insert(99, 10, 0);
        match &o {
            Order::S3Fifo(s) => {
                assert!(s.entries.get(&12).is_some_and(|e| e.queue == Queue::Main));
                assert!(s.entries.get(&99).is_some_and(|e| e.queue == Queue::Small));
            }
            Order::Lru(_) => panic!("s3-fifo expected"),
        }
    }

    #[test]
    fn refused_objects_are_never_returned() {
        for kind in [Kind::Lru, Kind::S3Fifo] {
            let mut o = Order::new(kind, 100);
            for k in 0..20 {
                o.insert(k, 10, 0);
            }
            let got = drain(&mut o, &|k| k % 2 == 0);
            assert_eq!(got.len(), 10);
            assert!(got.iter().all(|k| k % 2 == 0));
            assert!(o.evict(&|k| k % 2 == 0).is_none());
            assert_eq!(drain(&mut o, &|_| true).len(), 10);
        }
    }
}
