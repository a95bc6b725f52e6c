//! Integration tests: one binary, one module per area (see tests/it/support for helpers).

mod support;

mod api;
mod cli;
mod crash;
mod interop;
