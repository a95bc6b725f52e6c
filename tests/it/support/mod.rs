//! Test support: the in-process server, an HTTP client, generated images, external tools.

#![allow(dead_code)]

pub mod http;
pub mod image;
pub mod server;
pub mod tools;
