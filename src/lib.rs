//! agent-registry: an OCI registry for AI agents, built first as a pull-through caching
//! mirror. Module map:
//!
//! - `config`: TOML file -> validated `Config` (embedded default, env overrides)
//! - `oci`: pure types and parsers (digests, names, manifests, error codes)
//! - `storage`: content-addressed blobs and SQLite metadata; verify-then-rename writes
//! - `server`: listener, routing, one module per resource
//! - `app`: `App`, the shared state, and `App::handle`, the one request entry point
//! - `error`: the request-path error type
//! - `cli`: the `agent` client commands
//! - `client`: the client's local image store (an OCI layout), build, load/save, listing
//! - `upstream`: the outbound HTTP client of the mirror (token auth, retries, timeouts)
//! - `logging`, `logring`: the buffered stderr log writer; the ring of recent records
//!   behind `GET /admin/logs`
//! - `metrics`: every metric name, once; the Prometheus recorder behind `GET /metrics`
//! - `scan`: vulnerability reports (SARIF, CycloneDX, Trivy JSON, in-toto wrapped) -> one summary
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod logging;
pub mod logring;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod scan;
pub mod server;
pub mod storage;
pub mod upstream;
