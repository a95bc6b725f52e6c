//! Caching machinery that knows nothing about HTTP: single-flight blob fills that
//! stream to every waiting reader while they commit to storage, the memory tier, the
//! disk tier with its eviction order, the cache's write state, and admin operations.

pub mod admin;
pub mod disk;
pub mod fill;
mod index;
pub mod memory;
pub mod origins;
pub mod policy;
pub mod write_state;

pub use disk::{DiskTier, ObjKind, Pin, Reservation, Stats};
pub use fill::{Fill, FillError, FillErrorKind, FillOpts, Fills, Opened, Progress, Source};
