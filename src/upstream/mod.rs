//! The only module that opens outbound connections: one [`Upstream`] per configured
//! registry, with pooled HTTP/1.1 + h2 connections over rustls, a concurrency limit,
//! token auth, retries and timeouts.
//!
//! - `client`: `send` (retries, 429, redirects, 401 handling) and the first-byte timeout
//! - `health`: healthy / rate-limited / open circuit / half-open, consulted before sending
//! - `auth` + `challenge`: credentials, `WWW-Authenticate` parsing, the token cache
//! - `token`: fetching a token from a realm
//! - `body`: response bodies as streams with the idle timeout
//! - `tls`: the connector (roots, `ca_file`, `insecure_skip_verify`)
//! - `error`: [`UpstreamError`]
//! - `wire`: Retry-After, redirect targets, error chains

mod auth;
mod body;
pub mod challenge;
mod client;
mod error;
pub mod health;
mod tls;
mod token;
mod wire;

pub use body::{Bandwidth, UpstreamBody};
pub use error::{TimeoutPhase, UpstreamError};

use crate::config::UpstreamConfig;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// `ratelimit_remaining` when no response carried the header yet.
const NO_RATELIMIT: u64 = u64::MAX;

pub struct Upstream {
    cfg: UpstreamConfig,
    client: Client<tls::Connector, Empty<Bytes>>,
    /// Held while a request's head is pending (not while its body streams).
    permits: Semaphore,
    auth: auth::Auth,
    ratelimit_remaining: AtomicU64,
    /// `url` is https: credentials are never sent to a plain-http token realm.
    https: bool,
    /// `max_bandwidth`, shared by every body read from this upstream.
    bandwidth: Option<std::sync::Arc<Bandwidth>>,
    /// Rate limits and the circuit breaker, consulted before each request.
    health: health::Health,
    /// `mirror.parent`: requests go there (with `?ns=<name>`) instead of `url`.
    parent: Option<Parent>,
}

/// A parent mirror in front of an upstream: an [`Upstream`] of its own (connections,
/// health, token flow), shared by every upstream it stands for.
struct Parent {
    upstream: std::sync::Arc<Upstream>,
    /// Ask `url` itself when the parent is unreachable.
    fallback: bool,
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let uri: http::Uri = cfg.url.parse().map_err(|e| UpstreamError::Config {
            upstream: cfg.name.clone(),
            problem: format!("invalid url {:?}: {e}", cfg.url),
        })?;
        let https = match (uri.scheme_str(), uri.host()) {
            (Some("https"), Some(_)) => true,
            (Some("http"), Some(_)) => false,
            _ => {
                return Err(UpstreamError::Config {
                    upstream: cfg.name.clone(),
                    problem: format!(
                        "invalid url {:?}: expected http://host[:port] or https://host[:port]",
                        cfg.url
                    ),
                })
            }
        };
        let connector = tls::connector(&cfg)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let permits = cfg.max_concurrency.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Upstream {
            auth: auth::Auth::new(&cfg),
            health: health::Health::new(&cfg.name, cfg.rate_limit_scope),
            permits: Semaphore::new(permits),
            client,
            ratelimit_remaining: AtomicU64::new(NO_RATELIMIT),
            https,
            bandwidth: cfg
                .max_bandwidth
                .map(|b| std::sync::Arc::new(Bandwidth::new(b))),
            cfg,
            parent: None,
        })
    }

    /// This upstream reached through `parent` (`mirror.parent`): every request goes to
    /// the parent as `<path>?ns=<name>`; with `fallback`, one the parent cannot answer
    /// (unreachable, timed out, 5xx, known down) goes to this upstream's own `url`.
    pub fn behind(mut self, parent: std::sync::Arc<Upstream>, fallback: bool) -> Upstream {
        self.parent = Some(Parent {
            upstream: parent,
            fallback,
        });
        self
    }

    /// The parent mirror this upstream is reached through, if any.
    pub fn parent(&self) -> Option<&std::sync::Arc<Upstream>> {
        self.parent.as_ref().map(|p| &p.upstream)
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Docker Hub's `ratelimit-remaining` from the last response that had it.
    pub fn ratelimit_remaining(&self) -> Option<u64> {
        match self.ratelimit_remaining.load(Ordering::Relaxed) {
            NO_RATELIMIT => None,
            n => Some(n),
        }
    }

    /// The upstream's health: its state, and when it may be asked again.
    pub fn health(&self) -> &health::Health {
        &self.health
    }

    /// Token fetches so far (for tests and metrics).
    pub fn token_fetches(&self) -> u64 {
        self.auth.fetches()
    }

    /// The body of a response from [`Upstream::send`] as a stream of chunks, failing with
    /// a `Timeout { phase: Idle }` when no chunk arrives within `idle_timeout`.
    pub fn body(&self, resp: http::Response<hyper::body::Incoming>) -> UpstreamBody {
        UpstreamBody::new(
            resp,
            &self.cfg.name,
            self.cfg.idle_timeout,
            self.bandwidth.clone(),
        )
    }

    fn record_ratelimit(&self, headers: &http::HeaderMap) {
        if let Some(n) = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_ratelimit)
        {
            self.ratelimit_remaining.store(n, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.cfg.name)
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

/// `100;w=21600` (Docker Hub) or a bare `100`.
fn parse_ratelimit(value: &str) -> Option<u64> {
    let n = value.split(';').next()?.trim().parse::<u64>().ok()?;
    (n != NO_RATELIMIT).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_header_values() {
        assert_eq!(parse_ratelimit("100;w=21600"), Some(100));
        assert_eq!(parse_ratelimit(" 7 "), Some(7));
        assert_eq!(parse_ratelimit("0;w=60"), Some(0));
        assert_eq!(parse_ratelimit("lots"), None);
        assert_eq!(parse_ratelimit(""), None);
    }

    #[test]
    fn futures_and_bodies_are_send() {
        fn send<T: Send + 'static>(_: &T) {}
        let up = std::sync::Arc::new(
            Upstream::new(UpstreamConfig::new("u", "http://127.0.0.1:9")).expect("upstream"),
        );
        let fut = async move {
            let resp = up
                .send(http::Method::GET, "/v2/", "", http::HeaderMap::new())
                .await;
            resp.map(|r| up.body(r))
        };
        send(&fut);
        fn stream<S: futures_util::Stream + Send + Unpin + 'static>() {}
        stream::<UpstreamBody>();
    }

    #[test]
    fn urls_are_checked() {
        for bad in ["registry-1.docker.io", "ftp://x", "https://"] {
            let e = Upstream::new(UpstreamConfig::new("bad", bad)).err();
            let msg = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.starts_with("upstream bad: invalid url"), "{bad}: {msg}");
        }
    }
}
