//! Handlers: one module per resource. Hosted repositories (`blobs`, `manifests`,
//! `listing`, `uploads`), mirrored ones (`mirror/`), the admin API, the token endpoint,
//! search and health. A handler gets the shared state, the already-authorized request
//! and its [`Ctx`], and returns a response or an [`crate::error::Error`]; it calls down
//! into the services and `web`/`io`, never back up into dispatch.

pub mod admin;
pub mod admin_cache;
pub mod blobs;
pub mod health;
pub mod listing;
pub mod manifests;
pub mod mirror;
pub mod policy;
pub mod preheat;
pub mod search;
pub mod token;
pub mod uploads;

use std::net::SocketAddr;

/// How a request was served with respect to the cache; `as_str` feeds logs, metrics
/// and the `X-Cache` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Coalesced,
    Stale,
    Revalidated,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// What one request did, for the access log line written once at the end.
pub struct Ctx {
    pub route: &'static str,
    pub repo: Option<String>,
    pub peer: SocketAddr,
    /// The client: the peer, or behind a trusted proxy the address `X-Forwarded-For`
    /// names. Logs, audit records, login limits and the loopback rule use it.
    pub client: std::net::IpAddr,
    pub cache: CacheStatus,
    pub upstream: Option<String>,
    pub ns: Option<String>,
    /// The authenticated user; `None` when anonymous.
    pub identity: Option<String>,
    /// Set by a handler that knows better than `cache` where the body came from (the
    /// memory tier); feeds `agent_registry_served_bytes_total{source}`.
    pub served_from: Option<crate::metrics::Source>,
}
