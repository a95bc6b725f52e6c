//! Integration tests: one binary, one module per area (see tests/it/support for helpers).

mod support;

mod access;
mod api;
mod auth;
mod cache;
mod cache_restart;
mod cli;
mod conformance;
mod crash;
mod files;
mod fill_faults;
mod garbage;
mod gc;
mod images;
mod interop;
mod interop_auth;
mod interop_docker;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod mirror;
mod mirror_faults;
mod policy;
mod profiles;
mod pushpull;
mod registry_cli;
mod scanning;
mod search;
mod seed;
mod sendfile;
mod signing;
mod tls;
mod upstream;
mod upstream_health;
