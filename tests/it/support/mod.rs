//! Test support: the in-process server, an HTTP client, generated images, external tools.

#![allow(dead_code)]

pub mod distribution;
pub mod fake_upstream;
pub mod http;
pub mod image;
pub mod server;
pub mod tools;
