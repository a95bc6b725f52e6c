//! A cluster of mirror nodes with digest affinity. Every blob digest has one owner
//! among the live members (rendezvous hashing over `[cluster]`'s `self` and peers); a
//! node that misses a blob it does not own asks the owner for it with a peer request
//! (the blob's GET path, `?ns=<upstream>`, and an `X-Agent-Registry-Peer` header signed
//! with the shared secret), so the owner's single-flight fill serves the whole cluster
//! with one upstream GET. A peer that fails, refuses or is slow to answer is marked
//! down for a while and left out of the member set: the caller fetches from the
//! upstream itself. A service: it knows peers and HTTP, not the cache (the handler
//! turns a [`PeerBody`] into a fill's source) nor the server.

pub mod sign;

use crate::config::{ClusterConfig, Secret};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The header of a peer request: `v1:<unix seconds>:<hmac-sha256 hex>` (see [`sign`]).
/// Dispatch verifies it before any handler runs and refuses the request when it does
/// not verify, so a handler that sees it may trust it.
pub const PEER_HEADER: &str = "x-agent-registry-peer";
/// How long a peer that failed is left out of the member set.
pub const DOWN_FOR: Duration = Duration::from_secs(10);
/// How often `peers_dns` is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// Why a peer did not serve a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The owner answered 404: its upstream does not have the blob.
    NotFound(String),
    /// Down, refused, slow or broken: fetch from the upstream instead.
    Failed(String),
}

/// A peer's answer: the blob's length (when asked from offset 0 and known) and its bytes
/// from the offset asked for.
pub struct PeerBody {
    pub total: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, String>>,
}

type PeerClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct Cluster {
    self_url: String,
    secret: Secret,
    peer_timeout: Duration,
    /// The other members (never `self_url`), sorted.
    peers: RwLock<Vec<String>>,
    /// Peers that failed, and until when they are left out.
    down: Mutex<HashMap<String, Instant>>,
    client: PeerClient,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cluster {
    /// The cluster of `cfg`, or `None` when it has no peers. With `peers_dns` the
    /// members are resolved in the background (from the current tokio runtime).
    pub fn new(cfg: &ClusterConfig) -> Result<Option<Arc<Cluster>>, String> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let self_url = cfg
            .self_url
            .clone()
            .ok_or("cluster.self is required when peers are set")?;
        let secret = cfg
            .secret
            .clone()
            .ok_or("cluster.secret is required when peers are set")?;
        let cluster = Arc::new(Cluster {
            peers: RwLock::new(others(&self_url, cfg.peers.iter().cloned())),
            self_url,
            secret,
            peer_timeout: cfg.peer_timeout,
            down: Mutex::new(HashMap::new()),
            client: client(cfg.peer_timeout)?,
        });
        if let Some((name, port)) = cfg.peers_dns.clone() {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| "cluster.peers_dns needs a running tokio runtime".to_string())?;
            handle.spawn(resolve_loop(Arc::downgrade(&cluster), name, port));
        }
        Ok(Some(cluster))
    }

    /// This node's URL.
    pub fn self_url(&self) -> &str {
        &self.self_url
    }

    /// Every member this node knows of, itself included (sorted).
    pub fn members(&self) -> Vec<String> {
        let mut m = self.peers.read().unwrap_or_else(|p| p.into_inner()).clone();
        m.push(self.self_url.clone());
        m.sort();
        m
    }

    /// The peer that owns `key` among the live members, or `None` when this node does
    /// (or every other member is down).
    pub fn owner(&self, key: &str) -> Option<String> {
        let members = self.members();
        let now = Instant::now();
        let live = {
            let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
            down.retain(|_, until| *until > now);
            members
                .iter()
                .filter(|m| !down.contains_key(*m))
                .map(String::as_str)
                .collect::<Vec<_>>()
        };
        match sign::owner(live, key) {
            Some(o) if o != self.self_url => Some(o.to_string()),
            _ => None,
        }
    }

    /// Leaves `peer` out of the member set for [`DOWN_FOR`].
    pub fn mark_down(&self, peer: &str, why: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down
            .insert(peer.to_string(), Instant::now() + DOWN_FOR)
            .is_none()
        {
            tracing::warn!(
                peer,
                reason = why,
                "cluster peer marked down for {}s: {why}",
                DOWN_FOR.as_secs()
            );
        }
    }

    /// Whether `value` of [`PEER_HEADER`] authenticates a request for `target` (path
    /// and query) made with `method`.
    pub fn verify(&self, value: &str, method: &Method, target: &str) -> bool {
        sign::verify(
            self.secret.expose().as_bytes(),
            value,
            now_secs(),
            method.as_str(),
            target,
        )
    }

    /// Asks `peer` for `target` (a blob's path and `?ns=`) from `offset`. The response
    /// head must come within `peer_timeout`; after that, a gap of `idle` between two
    /// chunks breaks the body (and marks the peer down), so the caller's fill resumes
    /// elsewhere.
    pub async fn fetch(
        self: &Arc<Self>,
        peer: &str,
        target: &str,
        offset: u64,
        idle: Duration,
    ) -> Result<PeerBody, PeerError> {
        let r = self.open(peer, target, offset, idle).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(PeerError::NotFound(_)) => "not_found",
            Err(PeerError::Failed(m)) if m.contains("refused the peer request") => "refused",
            Err(PeerError::Failed(_)) => "error",
        };
        crate::metrics::peer_fetch(outcome);
        if let Err(PeerError::Failed(m)) = &r {
            self.mark_down(peer, m);
        }
        r
    }

    async fn open(
        self: &Arc<Self>,
        peer: &str,
        target: &str,
        offset: u64,
        idle: Duration,
    ) -> Result<PeerBody, PeerError> {
        let failed = |m: String| PeerError::Failed(format!("cluster peer {peer}: {m}"));
        let signature = sign::sign(self.secret.expose().as_bytes(), now_secs(), "GET", target);
        let mut req = Request::get(format!("{peer}{target}")).header(PEER_HEADER, signature);
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| failed(format!("bad request: {e}")))?;
        let resp = match tokio::time::timeout(self.peer_timeout, self.client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(failed(format!("{e}"))),
            Err(_) => {
                return Err(failed(format!(
                    "no response within {} ms",
                    self.peer_timeout.as_millis()
                )))
            }
        };
        let status = resp.status();
        match status {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
            StatusCode::NOT_FOUND => {
                return Err(PeerError::NotFound(format!(
                    "cluster peer {peer}: blob unknown"
                )))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(failed(format!(
                "{status}: it refused the peer request (is cluster.secret the same on every node?)"
            )))
            }
            s => return Err(failed(format!("answered {s}"))),
        }
        let h = resp.headers();
        let len = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let range_start = h
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        let skip = match (offset, status == StatusCode::PARTIAL_CONTENT) {
            (0, false) => 0,
            (o, true) if range_start == Some(o) => 0,
            (_, true) => return Err(failed("answered a different range".into())),
            (o, false) => o,
        };
        let total = if offset == 0 { len } else { None };
        let (me, peer) = (Arc::downgrade(self), peer.to_string());
        let body = resp.into_body().into_data_stream();
        let stream =
            futures_util::stream::unfold((body, skip, false), move |(mut body, mut skip, done)| {
                let (me, peer) = (me.clone(), peer.clone());
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        let broke = match tokio::time::timeout(idle, body.next()).await {
                            Ok(None) => return None,
                            Ok(Some(Ok(b))) if skip >= b.len() as u64 => {
                                skip -= b.len() as u64;
                                continue;
                            }
                            Ok(Some(Ok(b))) => {
                                let b = b.slice(skip as usize..);
                                return Some((Ok(b), (body, 0, false)));
                            }
                            Ok(Some(Err(e))) => format!("body broke off: {e}"),
                            Err(_) => format!("no bytes for {} ms", idle.as_millis()),
                        };
                        let m = format!("cluster peer {peer}: {broke}");
                        crate::metrics::peer_fetch("error");
                        if let Some(me) = me.upgrade() {
                            me.mark_down(&peer, &m);
                        }
                        return Some((Err(m), (body, 0, true)));
                    }
                }
            });
        Ok(PeerBody {
            total,
            stream: stream.boxed(),
        })
    }
}

/// `peers` without `self_url`, sorted and deduplicated.
fn others(self_url: &str, peers: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = peers.filter(|p| p != self_url).collect();
    v.sort();
    v.dedup();
    v
}

fn client(connect_timeout: Duration) -> Result<PeerClient, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cluster tls setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

/// Resolves `name` every [`RESOLVE_EVERY`] while the cluster lives; the members are
/// every address as `<scheme of self>://ADDR:PORT`. A failed lookup keeps the last set.
async fn resolve_loop(cluster: Weak<Cluster>, name: String, port: u16) {
    loop {
        let found = tokio::net::lookup_host((name.as_str(), port)).await;
        let Some(c) = cluster.upgrade() else { return };
        match found {
            Ok(addrs) => {
                let scheme = c.self_url.split("://").next().unwrap_or("http").to_string();
                let urls = addrs.map(|a| format!("{scheme}://{a}"));
                let peers = others(&c.self_url, urls);
                let mut cur = c.peers.write().unwrap_or_else(|p| p.into_inner());
                if *cur != peers {
                    tracing::info!(peers = ?peers, "cluster members from {name}:{port}");
                    *cur = peers;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster.peers_dns {name}:{port}: cannot resolve; keeping the last members")
            }
        }
        drop(c);
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(peers: &[&str]) -> ClusterConfig {
        ClusterConfig {
            self_url: Some("http://a:1".into()),
            peers: peers.iter().map(|p| p.to_string()).collect(),
            secret: Some(Secret::new("s")),
            ..ClusterConfig::default()
        }
    }

    #[tokio::test]
    async fn peers_dns_makes_every_address_a_member() {
        let c = Cluster::new(&ClusterConfig {
            self_url: Some("http://10.255.255.1:5000".into()),
            peers_dns: Some(("localhost".into(), 5000)),
            secret: Some(Secret::new("s")),
            ..ClusterConfig::default()
        })
        .unwrap()
        .unwrap();
        for _ in 0..200 {
            if c.members().len() > 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let m = c.members();
        assert!(m.iter().any(|u| u == "http://127.0.0.1:5000"), "{m:?}");
        assert!(m.iter().any(|u| u == "http://10.255.255.1:5000"), "{m:?}");
    }

    #[test]
    fn no_peers_no_cluster() {
        assert!(Cluster::new(&ClusterConfig::default()).unwrap().is_none());
    }

    #[test]
    fn a_peer_marked_down_owns_nothing_until_it_is_back() {
        let c = Cluster::new(&cfg(&["http://a:1", "http://b:1"]))
            .unwrap()
            .unwrap();
        assert_eq!(c.members(), ["http://a:1", "http://b:1"]);
        let key = (0..)
            .map(|i| format!("sha256:{i:064x}"))
            .find(|k| c.owner(k).is_some())
            .unwrap();
        assert_eq!(c.owner(&key).as_deref(), Some("http://b:1"));
        c.mark_down("http://b:1", "test");
        assert_eq!(c.owner(&key), None);
    }
}
