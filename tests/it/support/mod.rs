//! Test support: the in-process server, an HTTP client, generated images, external tools.

#![allow(dead_code)]

pub mod agent;
pub mod distribution;
pub mod fake_upstream;
pub mod http;
pub mod image;
pub mod server;
pub mod tools;

/// `len` pseudo-random bytes, the same for the same seed.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
