//! Caching machinery that knows nothing about HTTP: single-flight blob fills that
//! stream to every waiting reader while they commit to storage.

pub mod fill;
pub mod memory;

pub use fill::{Fill, FillError, FillErrorKind, Fills, Opened, Progress, Source};
