//! Replays a pull trace through the disk tier's eviction orders (`cache::policy`) with the
//! tier's reference-aware rules (manifests are the roots and carry their layers; shared
//! layers stay while any cached manifest uses them) and prints hit ratios per policy and
//! cache size. `cargo bench --bench cache_trace`.
//!
//! The trace is synthetic and seeded (no production trace is public): a CI farm whose
//! ephemeral runners pull whole images. 70% of pulls go to 60 popular images (Zipf,
//! s = 1.0), 30% to images pulled once (each build's unique tag); every image sits on one
//! of 8 shared base images (3 layers, 20-80 MB each) plus 2-4 own layers (5-150 MB).

use agent_registry::cache::policy::{Kind, Order};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

type Key = u64;

struct Image {
    manifest: Key,
    layers: Vec<(Key, u64)>,
}

struct Sim {
    cap: u64,
    used: u64,
    order: Order<Key>,
    sizes: HashMap<Key, u64>,
    refs: HashMap<Key, u32>,
    children: HashMap<Key, Vec<Key>>,
}

impl Sim {
    fn new(kind: Kind, cap: u64) -> Sim {
        Sim {
            cap,
            used: 0,
            order: Order::new(kind, cap),
            sizes: HashMap::new(),
            refs: HashMap::new(),
            children: HashMap::new(),
        }
    }

    fn evict_one(&mut self) -> bool {
        let refs = &self.refs;
        let Some(v) = self
            .order
            .evict(&|k| refs.get(k).copied().unwrap_or(0) == 0)
        else {
            return false;
        };
        self.remove(v);
        true
    }

    fn remove(&mut self, k: Key) {
        if let Some(s) = self.sizes.remove(&k) {
            self.used -= s;
        }
        for c in self.children.remove(&k).unwrap_or_default() {
            let n = self.refs.entry(c).or_insert(1);
            *n -= 1;
            if *n == 0 {
                self.refs.remove(&c);
                if self.sizes.contains_key(&c) {
                    self.remove(c);
                }
            }
        }
    }

    fn admit(&mut self, k: Key, size: u64) -> bool {
        if size > self.cap {
            return false;
        }
        while self.used + size > self.cap {
            if !self.evict_one() {
                return false;
            }
        }
        self.used += size;
        self.sizes.insert(k, size);
        true
    }

    /// One whole-image pull; returns (bytes hit, bytes total, objects hit, objects).
    fn pull(&mut self, img: &Image) -> (u64, u64, u64, u64) {
        let (mut hb, mut tb, mut ho, mut to) = (0, 0, 0, 0);
        let msize = 2_000;
        let m_hit = self.sizes.contains_key(&img.manifest);
        if m_hit {
            self.order.touch(&img.manifest);
            hb += msize;
            ho += 1;
        } else if self.admit(img.manifest, msize) {
            let ks: Vec<Key> = img.layers.iter().map(|l| l.0).collect();
            for c in &ks {
                *self.refs.entry(*c).or_insert(0) += 1;
                if self.refs[c] == 1 && self.sizes.contains_key(c) {
                    self.order.remove(c);
                }
            }
            self.children.insert(img.manifest, ks);
            self.order.insert(img.manifest, msize, 0);
        }
        tb += msize;
        to += 1;
        let mut weight = msize;
        for &(k, size) in &img.layers {
            tb += size;
            to += 1;
            if self.sizes.contains_key(&k) {
                hb += size;
                ho += 1;
                self.order.touch(&k);
            } else if self.admit(k, size) && self.refs.get(&k).copied().unwrap_or(0) == 0 {
                self.order.insert(k, size, 0);
            }
            weight += size;
        }
        if self.sizes.contains_key(&img.manifest) {
            self.order.resize(&img.manifest, weight);
        }
        (hb, tb, ho, to)
    }
}

fn trace(seed: u64, pulls: usize) -> (Vec<Image>, Vec<usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next: Key = 0;
    let mut key = || {
        next += 1;
        next
    };
    let bases: Vec<Vec<(Key, u64)>> = (0..8)
        .map(|_| {
            (0..3)
                .map(|_| (key(), rng.gen_range(20..80) * 1_000_000))
                .collect()
        })
        .collect();
    let mut new_image = |rng: &mut rand::rngs::StdRng| {
        let mut layers = bases[rng.gen_range(0..bases.len())].clone();
        for _ in 0..rng.gen_range(2..=4) {
            layers.push((key(), rng.gen_range(5..150) * 1_000_000));
        }
        Image {
            manifest: key(),
            layers,
        }
    };
    let mut images: Vec<Image> = (0..60).map(|_| new_image(&mut rng)).collect();
    // Zipf(1.0) weights over the popular images.
    let weights: Vec<f64> = (1..=60).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut seq = Vec::with_capacity(pulls);
    for _ in 0..pulls {
        if rng.gen_bool(0.3) {
            images.push(new_image(&mut rng));
            seq.push(images.len() - 1);
        } else {
            let mut x = rng.gen::<f64>() * total;
            let mut pick = 0;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            seq.push(pick);
        }
    }
    (images, seq)
}

fn main() {
    let (images, seq) = trace(7, 20_000);
    let unique: u64 = {
        let mut seen = HashMap::new();
        for &i in &seq {
            for &(k, s) in &images[i].layers {
                seen.insert(k, s);
            }
        }
        seen.values().sum()
    };
    println!(
        "trace: {} pulls of {} images, {:.0} GB of distinct layers",
        seq.len(),
        images.len(),
        unique as f64 / 1e9
    );
    println!("| cache size | policy | byte hit ratio | object hit ratio |");
    println!("|---|---|---|---|");
    for cap_gb in [5u64, 10, 20, 40] {
        for kind in [Kind::Lru, Kind::S3Fifo] {
            let mut sim = Sim::new(kind, cap_gb * 1_000_000_000);
            let (mut hb, mut tb, mut ho, mut to) = (0, 0, 0, 0);
            for &i in &seq {
                let (a, b, c, d) = sim.pull(&images[i]);
                hb += a;
                tb += b;
                ho += c;
                to += d;
                assert!(sim.used <= sim.cap, "over the cap");
            }
            println!(
                "| {cap_gb} GB | {} | {:.1}% | {:.1}% |",
                kind.as_str(),
                100.0 * hb as f64 / tb as f64,
                100.0 * ho as f64 / to as f64
            );
        }
    }
}
