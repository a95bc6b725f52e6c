//! The pull-through mirror's routing and policy: which upstream serves a request
//! (`route.rs`), how upstream failures map to registry errors, and the background
//! revalidation of stale tags (`revalidate.rs`). The proxied manifest, blob, tag-list
//! and referrers handlers are `handlers/mirror/`. Hosted repositories never come here.

pub mod revalidate;
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
    /// Stale tags being revalidated in the background, one HEAD per tag.
    pub revalidations: revalidate::Revalidations,
    /// `mirror.parent`, as configured (an upstream is reused on reload only when this
    /// did not change either).
    parent: Option<crate::config::ParentConfig>,
    /// `mirror.prefetch_layers`.
    pub prefetch_layers: bool,
    /// Permits for prefetch fills (`mirror.prefetch_concurrency`), kept across reloads
    /// while the number is unchanged.
    pub prefetch: Arc<tokio::sync::Semaphore>,
    prefetch_concurrency: usize,
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
        let parent_cfg = config.mirror.parent.clone();
        // Reused only together with an unchanged parent (which they hold).
        let same_parent = previous.filter(|p| p.parent == parent_cfg);
        let parent = match &parent_cfg {
            Some(p) => {
                let kept = same_parent
                    .and_then(|m| m.upstreams.first())
                    .and_then(|u| u.parent().cloned());
                Some(match kept {
                    Some(up) => up,
                    None => Arc::new(Upstream::new(p.upstream())?),
                })
            }
            None => None,
        };
        for u in &config.upstreams {
            let kept = same_parent
                .and_then(|p| p.upstreams.iter().find(|x| x.config() == u))
                .cloned();
            let up = match (kept, &parent, &parent_cfg) {
                (Some(up), _, _) => up,
                (None, Some(parent), Some(pc)) => {
                    Arc::new(Upstream::new(u.clone())?.behind(parent.clone(), pc.fallback))
                }
                _ => Arc::new(Upstream::new(u.clone())?),
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
            revalidations: Default::default(),
            parent: parent_cfg,
            prefetch_layers: config.mirror.prefetch_layers,
            prefetch: previous
                .filter(|p| p.prefetch_concurrency == config.mirror.prefetch_concurrency)
                .map(|p| p.prefetch.clone())
                .unwrap_or_else(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        config.mirror.prefetch_concurrency,
                    ))
                }),
            prefetch_concurrency: config.mirror.prefetch_concurrency,
        })
    }
}

/// Maps an upstream failure to the response side: the upstream's own 4xx is passed on
/// by the caller; unreachable or failing upstreams are 502/504, never 500, with the
/// cause in the message (it names the upstream and the request, never credentials). A
/// 429, or a request refused while the upstream is rate-limited, is 429 with
/// `Retry-After`; one refused while the upstream is down is 503 with `Retry-After`.
pub fn upstream_error(e: &UpstreamError) -> Error {
    if e.status() == Some(StatusCode::UNAUTHORIZED) {
        // Docker Hub answers 401 insufficient_scope for repositories that do not exist.
        return Error::not_found(
            crate::oci::ErrorCode::NameUnknown,
            format!("repository unknown upstream or access denied: {e}"),
        );
    }
    if e.is_rate_limited() {
        return Error::TooManyRequests {
            retry_after: e.retry_after().unwrap_or(UNKNOWN_RETRY_AFTER),
            message: e.to_string(),
        };
    }
    let (status, code) = match e {
        UpstreamError::Refused { retry_after, .. } => {
            return Error::Unavailable {
                retry_after: *retry_after,
                message: e.to_string(),
            }
        }
        UpstreamError::Timeout { .. } => {
            (StatusCode::GATEWAY_TIMEOUT, crate::oci::ErrorCode::Unknown)
        }
        _ => (StatusCode::BAD_GATEWAY, crate::oci::ErrorCode::Unknown),
    };
    // The error names the upstream and the request itself.
    Error::client(status, code, e.to_string())
}

/// A blob has no stale stand-in and clients retry a 503 where some give up on a 429: a
/// rate-limited upstream is 503 with `Retry-After` for blobs.
pub fn upstream_blob_error(e: &UpstreamError) -> Error {
    match upstream_error(e) {
        Error::TooManyRequests {
            retry_after,
            message,
        } => Error::Unavailable {
            retry_after,
            message,
        },
        other => other,
    }
}

/// `Retry-After` sent for a 429 whose upstream gave none.
const UNKNOWN_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
