//! Per-client request rate limits (`[limits]`): which requests count against which
//! quota, who the client is behind trusted proxies, and the keyed limiters themselves;
//! and [`ConnCounts`], the per-address cap on open connections.
//!
//! Memory: a keyed limiter keeps one small state per client it has seen. A state that
//! has refilled to a full bucket is indistinguishable from a new one, and
//! `retain_recent` drops it; that happens at most `burst / per_second` seconds after a
//! client's last request (4 s with the defaults). A sweep runs every 60 s, and once a
//! second while more than [`SWEEP_ABOVE`] clients are tracked, so the state holds
//! about the clients seen in the last minute (fewer under a flood of new addresses),
//! some 100 bytes each.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;

use crate::config::{LimitsConfig, Rate};
use crate::error::Error;
use crate::web::route::Route;

/// Sweep every second, not every minute, while more clients than this are tracked.
pub const SWEEP_ABOVE: usize = 100_000;
const SWEEP_EVERY_MS: u64 = 60_000;
const TICK_MS: u64 = 1_000;

/// Who a quota belongs to. Only `Ip` is produced today; `Identity` is for
/// authenticated users once access control exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    Ip(IpAddr),
    Identity(String),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Ip(ip) => write!(f, "client {ip}"),
            Client::Identity(user) => write!(f, "user {user}"),
        }
    }
}

/// The quota a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Manifests (any method), tag lists, referrers, the catalog.
    Manifests,
    /// Blobs and uploads.
    Blobs,
}

impl Class {
    /// The quota of `route`; `None` for routes never limited: health, metrics, the
    /// `/v2/` version check, unknown paths.
    pub fn of(route: &Route<'_>) -> Option<Class> {
        match route {
            Route::Manifest(..)
            | Route::Tags(_)
            | Route::Referrers(..)
            | Route::Catalog
            | Route::Search
            | Route::Token
            | Route::Admin(_) => Some(Class::Manifests),
            Route::Blob(..) | Route::UploadStart(_) | Route::Upload(..) => Some(Class::Blobs),
            Route::Base
            | Route::Healthz
            | Route::Readyz
            | Route::Health
            | Route::Metrics
            | Route::NotFound => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Manifests => "manifest",
            Class::Blobs => "blob",
        }
    }
}

/// The rate limiters of one server.
pub struct Limits {
    config: LimitsConfig,
    manifests: DefaultKeyedRateLimiter<Client>,
    blobs: DefaultKeyedRateLimiter<Client>,
    start: Instant,
    /// Milliseconds since `start` of the last housekeeping look and the last sweep.
    last_tick: AtomicU64,
    last_sweep: AtomicU64,
}

impl Limits {
    pub fn new(config: &LimitsConfig) -> Limits {
        let quota = |r: Rate| Quota::per_second(r.per_second).allow_burst(r.burst);
        Limits {
            config: config.clone(),
            manifests: RateLimiter::dashmap(quota(config.manifests)),
            blobs: RateLimiter::dashmap(quota(config.blobs)),
            start: Instant::now(),
            last_tick: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// The `[limits]` these were built from.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// The cap on `peer`'s open connections, if it has one: none when the cap is off
    /// or the peer is allow-listed or a trusted proxy (whose connections carry many
    /// clients; who they are is only known from a request's `X-Forwarded-For`).
    pub fn connection_cap(&self, peer: IpAddr) -> Option<usize> {
        let (cap, ip) = (self.config.max_connections_per_client, peer.to_canonical());
        let listed = |nets: &[crate::config::IpNet]| nets.iter().any(|n| n.contains(ip));
        match cap == 0 || listed(&self.config.allow) || listed(&self.config.trusted_proxies) {
            true => None,
            false => Some(cap),
        }
    }

    /// Charges one request on `route` from `peer` to its client's quota. Over the
    /// quota: `Error::TooManyRequests` saying when to come back.
    pub fn check(
        &self,
        route: &Route<'_>,
        peer: SocketAddr,
        headers: &HeaderMap,
        identity: Option<&str>,
    ) -> Result<(), Error> {
        let Some(class) = Class::of(route).filter(|_| self.config.enabled) else {
            return Ok(());
        };
        let ip = self.client_ip(peer.ip(), headers);
        if self.config.allow.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        let client = match identity {
            Some(user) => Client::Identity(user.to_string()),
            None => Client::Ip(ip),
        };
        let result = self.check_client(class, &client);
        self.housekeeping();
        let retry_after = match result {
            Ok(()) => return Ok(()),
            Err(wait) => wait,
        };
        crate::metrics::rate_limited();
        let rate = match class {
            Class::Manifests => self.config.manifests,
            Class::Blobs => self.config.blobs,
        };
        let secs = crate::web::body::retry_after_secs(retry_after);
        Err(Error::TooManyRequests {
            retry_after,
            message: format!(
                "{client}: too many {} requests (limit {}/s, burst {}); retry after {secs}s",
                class.as_str(),
                rate.per_second,
                rate.burst
            ),
        })
    }

    /// One request of `class` from `client`: `Err(wait)` when over its quota.
    pub fn check_client(&self, class: Class, client: &Client) -> Result<(), Duration> {
        let limiter = match class {
            Class::Manifests => &self.manifests,
            Class::Blobs => &self.blobs,
        };
        limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the
    /// rightmost `X-Forwarded-For` hop that is not a trusted proxy. An unparsable hop
    /// stops the walk at the last trusted one (the header left of it is not believed).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        let trusted = |ip: IpAddr| self.config.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let mut client = peer;
        for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !trusted(ip) {
                return ip;
            }
        }
        client
    }

    /// Clients currently holding limiter state (both quotas).
    pub fn tracked(&self) -> usize {
        self.manifests.len() + self.blobs.len()
    }

    /// Drops the state of every client whose bucket has refilled.
    pub fn sweep(&self) {
        for limiter in [&self.manifests, &self.blobs] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Once a second at most, one request looks whether a sweep is due.
    fn housekeeping(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_tick.load(Ordering::Relaxed);
        if now.saturating_sub(last) < TICK_MS
            || self
                .last_tick
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let due = now.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) >= SWEEP_EVERY_MS;
        if due || self.tracked() > SWEEP_ABOVE {
            self.last_sweep.store(now, Ordering::Relaxed);
            self.sweep();
        }
    }
}

/// Open connections per client address, for `limits.max_connections_per_client`.
/// Holds one entry per address with a connection open (an address's entry goes with
/// its last connection).
#[derive(Default)]
pub struct ConnCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; closing it (dropping this) frees its place.
pub struct ConnSlot {
    counts: Arc<ConnCounts>,
    ip: IpAddr,
}

impl ConnCounts {
    /// Takes a place for a connection from `ip`, or `None` when it already holds `cap`.
    pub fn open(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ConnSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            counts: self.clone(),
            ip,
        })
    }

    /// Connections `ip` holds open.
    pub fn of(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    /// Addresses with a connection open.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNet;
    use http::HeaderValue;

    fn limits(trusted: &[&str]) -> Limits {
        let config = LimitsConfig {
            trusted_proxies: trusted.iter().map(|s| IpNet::parse(s).unwrap()).collect(),
            allow: Vec::new(),
            manifests: Rate::new(1, 2),
            ..LimitsConfig::default()
        };
        Limits::new(&config)
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_and_only_from_trusted_peers() {
        let l = limits(&["10.0.0.0/8"]);
        let h = xff(&["6.6.6.6, 1.2.3.4, 10.0.0.2"]);
        assert_eq!(l.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        assert_eq!(l.client_ip(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        assert_eq!(l.client_ip(ip("::ffff:10.0.0.1"), &h), ip("1.2.3.4"));
        // Several header lines are one list, in order.
        let h = xff(&["6.6.6.6", "1.2.3.4:5678"]);
        assert_eq!(l.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        let h = xff(&["[2001:db8::7]:80"]);
        assert_eq!(l.client_ip(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        // Garbage stops the walk at the last trusted hop; no header means the peer.
        let h = xff(&["1.2.3.4, garbage, 10.0.0.9"]);
        assert_eq!(l.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.9"));
        assert_eq!(
            l.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn quotas_are_per_client_and_per_class() {
        let l = limits(&[]);
        let (a, b) = (Client::Ip(ip("192.0.2.1")), Client::Ip(ip("192.0.2.2")));
        assert!(l.check_client(Class::Manifests, &a).is_ok());
        assert!(l.check_client(Class::Manifests, &a).is_ok());
        let wait = l.check_client(Class::Manifests, &a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(l.check_client(Class::Manifests, &b).is_ok());
        assert!(l.check_client(Class::Blobs, &a).is_ok());
        let id = Client::Identity("alice".into());
        assert!(l.check_client(Class::Manifests, &id).is_ok());
        assert_eq!(l.tracked(), 4);
    }

    #[test]
    fn sweeping_forgets_refilled_clients() {
        let l = limits(&[]);
        for i in 0..100u8 {
            let c = Client::Ip(IpAddr::from([192, 0, 2, i]));
            assert!(l.check_client(Class::Blobs, &c).is_ok());
        }
        assert_eq!(l.tracked(), 100);
        // Blobs refill at 100/s: one token back takes 10 ms.
        std::thread::sleep(Duration::from_millis(30));
        l.sweep();
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn connection_places_are_per_address_and_freed_on_close() {
        let counts = Arc::new(ConnCounts::default());
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let first = counts.open(a, 2).expect("first");
        let second = counts.open(ip("::ffff:192.0.2.1"), 2).expect("second");
        assert!(counts.open(a, 2).is_none(), "a third beyond the cap");
        let other = counts.open(b, 2).expect("another address");
        assert_eq!((counts.of(a), counts.of(b), counts.addresses()), (2, 1, 2));
        drop(first);
        let again = counts.open(a, 2).expect("a freed place is taken again");
        drop((second, again, other));
        assert_eq!(counts.addresses(), 0, "closed addresses leave no entry");
        assert!(counts.open(a, 0).is_none());
        assert_eq!(counts.addresses(), 0);
    }

    #[test]
    fn allow_listed_and_proxy_peers_have_no_connection_cap() {
        let config = LimitsConfig {
            trusted_proxies: vec![IpNet::parse("10.0.0.0/8").unwrap()],
            allow: vec![IpNet::parse("192.0.2.0/24").unwrap()],
            max_connections_per_client: 5,
            ..LimitsConfig::default()
        };
        let l = Limits::new(&config);
        assert_eq!(l.connection_cap(ip("198.51.100.1")), Some(5));
        assert_eq!(l.connection_cap(ip("::ffff:10.1.2.3")), None);
        assert_eq!(l.connection_cap(ip("192.0.2.9")), None);
        let off = Limits::new(&LimitsConfig {
            max_connections_per_client: 0,
            ..config
        });
        assert_eq!(off.connection_cap(ip("198.51.100.1")), None);
    }

    #[test]
    fn health_and_version_check_are_never_limited() {
        for r in [
            Route::Base,
            Route::Healthz,
            Route::Readyz,
            Route::Health,
            Route::Metrics,
        ] {
            assert_eq!(Class::of(&r), None);
        }
        assert_eq!(Class::of(&Route::Catalog), Some(Class::Manifests));
        assert_eq!(Class::of(&Route::UploadStart("a")), Some(Class::Blobs));
    }
}
