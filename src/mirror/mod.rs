//! The pull-through mirror: which upstream serves a request, and the proxied manifest,
//! blob, tag-list and referrers handlers. Hosted repositories never come here.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod route;

use crate::config::Config;
use crate::error::Error;
use crate::upstream::{Upstream, UpstreamError};
use http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;

pub use route::{Proxy, Target};

/// Every configured upstream and the names and aliases they answer to. Replaced whole
/// on reload; fills in flight live in `App::fills` and outlive it.
pub struct Mirror {
    pub upstreams: Vec<Arc<Upstream>>,
    by_name: HashMap<String, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
    hosted_prefixes: Vec<String>,
    route_by_host: bool,
    /// `mirror.hosted_on_push`.
    pub hosted_on_push: bool,
}

impl Mirror {
    pub fn new(config: &Config) -> Result<Mirror, UpstreamError> {
        Mirror::reusing(config, None)
    }

    /// Like [`Mirror::new`], keeping the [`Upstream`]s of `previous` whose settings did
    /// not change (their pooled connections, tokens and bandwidth buckets survive a reload).
    pub fn reusing(config: &Config, previous: Option<&Mirror>) -> Result<Mirror, UpstreamError> {
        let mut upstreams = Vec::new();
        let mut by_name = HashMap::new();
        for u in &config.upstreams {
            let kept = previous
                .and_then(|p| p.upstreams.iter().find(|x| x.config() == u))
                .cloned();
            let up = match kept {
                Some(up) => up,
                None => Arc::new(Upstream::new(u.clone())?),
            };
            by_name.insert(u.name.clone(), up.clone());
            for a in &u.aliases {
                by_name.insert(a.clone(), up.clone());
            }
            upstreams.push(up);
        }
        let default = config
            .mirror
            .default_upstream
            .as_ref()
            .and_then(|n| by_name.get(n).cloned());
        Ok(Mirror {
            upstreams,
            by_name,
            default,
            hosted_prefixes: config.mirror.hosted_prefixes.clone(),
            route_by_host: config.mirror.route_by_host,
            hosted_on_push: config.mirror.hosted_on_push,
        })
    }
}

/// Maps an upstream failure to the response side: the upstream's own 4xx is passed on
/// by the caller; unreachable or failing upstreams are 502/504, never 500.
pub fn upstream_error(e: &UpstreamError) -> Error {
    if e.status() == Some(StatusCode::UNAUTHORIZED) {
        // Docker Hub answers 401 insufficient_scope for repositories that do not exist.
        return Error::not_found(
            crate::oci::ErrorCode::NameUnknown,
            format!("repository unknown upstream or access denied: {e}"),
        );
    }
    let (status, code) = match e {
        UpstreamError::Timeout { .. } => {
            (StatusCode::GATEWAY_TIMEOUT, crate::oci::ErrorCode::Unknown)
        }
        UpstreamError::TooManyRequests { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            crate::oci::ErrorCode::Toomanyrequests,
        ),
        _ => (StatusCode::BAD_GATEWAY, crate::oci::ErrorCode::Unknown),
    };
    // The error names the upstream and the request itself.
    Error::client(status, code, e.to_string())
}
