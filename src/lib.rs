//! agent-registry: an OCI registry for AI agents, built first as a pull-through caching
//! mirror.
//!
//! Layers, top to bottom (ARCHITECTURE.md "Layers"; `tests/tidy.rs` keeps imports downward):
//!
//! - entry: `server` (listener, TLS, connections), `cli` (the `agent` commands); the
//!   binaries in `main.rs` and `bin/`
//! - `dispatch`: route -> authenticate -> limit -> authorize -> handler -> access log
//! - `handlers`: one module per resource, hosted and mirrored (`handlers::mirror`),
//!   admin, token, search, health
//! - `app`: `App`, the shared state
//! - services: `mirror` (routing, policy, revalidation), `cache` (tiers, fills),
//!   `storage` (content-addressed blobs, SQLite metadata), `auth`, `upstream` (the
//!   outbound client), `limits` (rate limits), `client` (the agent's local image store),
//!   `sign` (image signatures in cosign's format: payload, ECDSA P-256, keys, the `.sig`
//!   manifest; pure format code over `oci`),
//!   `scan` (vulnerability reports in SARIF, CycloneDX, Trivy JSON read into one summary),
//!   `cluster` (peer nodes, digest owners, peer requests)
//! - foundations: `oci` (pure types and parsers), `config`, `error`, `metrics` (every
//!   metric name, once), `web` (bodies, response builders, ranges, routes, query
//!   strings), `io` (file reads, sendfile), `logging` and `logring` (the log writer, the
//!   ring behind `GET /admin/logs`)
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod handlers;
pub mod io;
pub mod limits;
pub mod logging;
pub mod logring;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod policy;
pub mod scan;
pub mod server;
pub mod sign;
pub mod storage;
pub mod upstream;
pub mod web;
