//! Measures the memory tier (moka, byte-weighted): resident memory per weighted byte
//! when full of 2 KiB manifests, and warm lookup cost from two threads.
//! `cargo bench --bench memory_tier` (or `cargo test --bench memory_tier` unoptimized).

use agent_registry::cache::memory::MemoryTier;
use agent_registry::oci::Digest;
use bytes::Bytes;
use std::time::Instant;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let cap = 256_000_000;
    let tier = MemoryTier::new(cap);
    let n = 100_000u32;
    let digests: Vec<Digest> = (0..n)
        .map(|i| Digest::sha256_of(&i.to_le_bytes()))
        .collect();
    let before = rss_bytes();
    let t = Instant::now();
    for (i, d) in digests.iter().enumerate() {
        let body = Bytes::from(vec![(i % 251) as u8; 2048]);
        tier.put_manifest(d, "application/vnd.oci.image.manifest.v1+json", body);
    }
    let insert = t.elapsed();
    let (entries, weighted) = tier.stats();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "insert: {n} manifests of 2 KiB in {insert:?} ({:.0} ns each)",
        insert.as_nanos() as f64 / f64::from(n)
    );
    println!(
        "held: {entries} entries, {weighted} weighted bytes, RSS grew {grown} bytes ({:.2} RSS bytes per weighted byte)",
        grown as f64 / weighted.max(1) as f64
    );
    let hot: Vec<Digest> = digests[..10_000].to_vec();
    let per_thread = 1_000_000usize;
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..2 {
            let (tier, hot) = (&tier, &hot);
            s.spawn(move || {
                let mut found = 0usize;
                for i in 0..per_thread {
                    if tier.manifest(&hot[(i * 7 + k) % hot.len()]).is_some() {
                        found += 1;
                    }
                }
                assert!(found > per_thread / 2);
            });
        }
    });
    let took = t.elapsed();
    println!(
        "lookups: {} warm gets from 2 threads in {took:?} ({:.0} ns per get, {:.1} M gets/s)",
        2 * per_thread,
        took.as_nanos() as f64 / (2 * per_thread) as f64,
        (2 * per_thread) as f64 / took.as_secs_f64() / 1e6
    );
}
