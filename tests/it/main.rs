//! Integration tests: one binary, one module per area (see tests/it/support for helpers).

mod support;

mod api;
mod auth;
mod cli;
mod conformance;
mod crash;
mod garbage;
mod interop;
mod interop_auth;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod mirror;
mod mirror_faults;
mod search;
mod tls;
mod upstream;
