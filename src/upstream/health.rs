//! Per-upstream health: what `Upstream::send` consults before it sends anything.
//!
//! - **healthy**: requests go out. A failed request (connect, TLS, a broken connection, a
//!   5xx) is retried once only when it was the upstream's first failure in a row.
//! - **rate-limited** until T: the upstream answered 429. Nothing is sent before T (the
//!   `Retry-After`, else a backoff of 1 s doubling to 60 s); requests fail at once with
//!   the time left. With `rate_limit_scope = "repository"` the wait applies to the
//!   repository that got the 429 and the upstream itself stays healthy.
//! - **open** (down) until T: [`FAILURES_TO_OPEN`] failures in a row, or one timeout (a
//!   black hole costs `first_byte_timeout` per request). Requests fail at once until T,
//!   a backoff of 1 s doubling to 60 s with jitter.
//! - **half-open**: T passed; the first request is the probe, sent alone while every
//!   other request still fails at once. Its success closes the circuit, its failure
//!   opens it again for twice as long.
//!
//! The warm path (healthy, no failure since the last success, no repository waiting) is
//! two relaxed atomic loads; the mutex is taken only around failures and state changes.
//! Each state change is logged once: down and rate-limited at warn, recovery at info.

use super::error::{TimeoutPhase, UpstreamError};
pub use crate::config::RateLimitScope;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Consecutive failures that open the circuit (a timeout opens it at once).
pub const FAILURES_TO_OPEN: u32 = 3;
/// The first wait of an open circuit or a 429 without `Retry-After`; doubled per failed
/// probe (or repeated 429), up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between probes: an upstream that came back is used again within
/// this long, at the cost of one probe request per this long while it is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Most repositories remembered as rate-limited (scope = repository); the oldest go first.
const MAX_LIMITED_REPOS: usize = 10_000;

/// An upstream's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy = 0,
    RateLimited = 1,
    Open = 2,
    HalfOpen = 3,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::RateLimited => "rate_limited",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::RateLimited,
            2 => State::Open,
            3 => State::HalfOpen,
            _ => State::Healthy,
        }
    }
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `RateLimited` (a 429 wait) or `Open`/`HalfOpen` (down).
    pub state: State,
    /// When the client may try again (at least 1 s when sent).
    pub retry_after: Duration,
    /// The failure behind the state, as the upstream client reported it.
    pub cause: String,
}

/// A snapshot for `/health?detailed=1` and metrics.
#[derive(Debug, Clone)]
pub struct Report {
    pub state: State,
    pub since: SystemTime,
    /// When requests go out again (rate-limited) or the next probe may go (open).
    pub retry_at: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Repositories waiting out their own 429 (scope = repository).
    pub limited_repositories: usize,
}

struct Inner {
    since: SystemTime,
    until: Option<Instant>,
    /// The current backoff: doubled per failed probe or repeated 429.
    backoff: Duration,
    last_error: Option<String>,
    /// Repository -> (until, cause) for scope = repository.
    repos: HashMap<String, (Instant, String)>,
}

pub struct Health {
    upstream: String,
    scope: RateLimitScope,
    state: AtomicU8,
    failures: AtomicU32,
    /// `inner.repos.len()`, readable without the lock.
    limited_repos: AtomicUsize,
    inner: Mutex<Inner>,
}

/// One `send`'s admission. A probe not resolved when it is dropped (the client went
/// away) hands the probe back: the circuit is open again with its time already passed.
pub struct Ticket<'a> {
    health: &'a Health,
    probe: bool,
    repo: String,
}

/// What became of one attempt, for the health record.
pub enum Outcome<'e> {
    /// The upstream answered (any status but 5xx and 429).
    Answered,
    /// A 429, with its `Retry-After`.
    TooMany(Option<Duration>, &'e str),
    /// Connect/TLS/connection failures, timeouts, 5xx.
    Failed(&'e UpstreamError),
}

impl Health {
    pub fn new(upstream: &str, scope: RateLimitScope) -> Health {
        Health {
            upstream: upstream.to_string(),
            scope,
            state: AtomicU8::new(State::Healthy as u8),
            failures: AtomicU32::new(0),
            limited_repos: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                since: SystemTime::now(),
                until: None,
                backoff: FIRST_BACKOFF,
                last_error: None,
                repos: HashMap::new(),
            }),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, inner: &mut Inner, to: State) {
        if self.state() != to {
            inner.since = SystemTime::now();
        }
        self.state.store(to as u8, Ordering::Release);
    }

    /// May a request for `repo` ("" for none) go out now?
    pub fn admit(&self, repo: &str) -> Result<Ticket<'_>, Refusal> {
        let healthy = self.state.load(Ordering::Acquire) == State::Healthy as u8;
        if healthy && self.limited_repos.load(Ordering::Relaxed) == 0 {
            return Ok(self.ticket(false, repo));
        }
        self.admit_slow(repo)
    }

    fn ticket(&self, probe: bool, repo: &str) -> Ticket<'_> {
        Ticket {
            health: self,
            probe,
            repo: match self.scope {
                RateLimitScope::Repository => repo.to_string(),
                RateLimitScope::Upstream => String::new(),
            },
        }
    }

    fn admit_slow(&self, repo: &str) -> Result<Ticket<'_>, Refusal> {
        let mut inner = self.lock();
        let now = Instant::now();
        if !repo.is_empty() {
            if let Some((until, cause)) = inner.repos.get(repo) {
                if *until > now {
                    return Err(Refusal {
                        state: State::RateLimited,
                        retry_after: *until - now,
                        cause: cause.clone(),
                    });
                }
                inner.repos.remove(repo);
                self.limited_repos
                    .store(inner.repos.len(), Ordering::Relaxed);
            }
        }
        let cause = || inner.last_error.clone().unwrap_or_default();
        match self.state() {
            State::Healthy => Ok(self.ticket(false, repo)),
            State::RateLimited => match inner.until.filter(|u| *u > now) {
                Some(u) => Err(Refusal {
                    state: State::RateLimited,
                    retry_after: u - now,
                    cause: cause(),
                }),
                // The wait is over: requests go out; the first answer ends the state.
                None => Ok(self.ticket(false, repo)),
            },
            State::Open => match inner.until.filter(|u| *u > now) {
                Some(u) => Err(Refusal {
                    state: State::Open,
                    retry_after: u - now,
                    cause: cause(),
                }),
                None => {
                    self.set(&mut inner, State::HalfOpen);
                    tracing::debug!(upstream = %self.upstream, "circuit half-open: sending one probe");
                    Ok(self.ticket(true, repo))
                }
            },
            State::HalfOpen => Err(Refusal {
                state: State::HalfOpen,
                retry_after: FIRST_BACKOFF,
                cause: cause(),
            }),
        }
    }

    /// The time left before `repo` may be asked again, when the upstream (or that
    /// repository) is rate-limited or down.
    pub fn retry_after(&self, repo: &str) -> Option<Duration> {
        let healthy = self.state.load(Ordering::Acquire) == State::Healthy as u8;
        if healthy && self.limited_repos.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let inner = self.lock();
        let now = Instant::now();
        let left = |u: Option<Instant>| u.map(|u| u.saturating_duration_since(now));
        if let Some((until, _)) = inner.repos.get(repo).filter(|(u, _)| *u > now) {
            return Some(*until - now);
        }
        match self.state() {
            State::Healthy => None,
            State::RateLimited => left(inner.until).filter(|d| !d.is_zero()),
            State::Open => Some(left(inner.until).unwrap_or(FIRST_BACKOFF)),
            State::HalfOpen => Some(FIRST_BACKOFF),
        }
    }

    pub fn report(&self) -> Report {
        let inner = self.lock();
        let state = self.state();
        let now = Instant::now();
        let retry_at = match state {
            State::RateLimited | State::Open => inner
                .until
                .map(|u| SystemTime::now() + u.saturating_duration_since(now)),
            State::Healthy | State::HalfOpen => None,
        };
        Report {
            state,
            since: inner.since,
            retry_at,
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            last_error: inner.last_error.clone(),
            limited_repositories: inner.repos.values().filter(|(u, _)| *u > now).count(),
        }
    }

    /// Records one attempt's outcome. Returns true when a failed attempt may be retried
    /// once: it was the first failure in a row and the circuit is still closed.
    pub fn record(&self, ticket: &mut Ticket<'_>, outcome: Outcome<'_>) -> bool {
        let probe = std::mem::replace(&mut ticket.probe, false);
        match outcome {
            Outcome::Answered => {
                let healthy = self.state.load(Ordering::Acquire) == State::Healthy as u8;
                if healthy && self.failures.load(Ordering::Relaxed) == 0 && !probe {
                    return false;
                }
                self.succeeded(probe);
                false
            }
            Outcome::TooMany(after, cause) => {
                self.rate_limited(&ticket.repo, after, cause);
                false
            }
            Outcome::Failed(e) => self.failed(probe, e),
        }
    }

    fn succeeded(&self, probe: bool) {
        let mut inner = self.lock();
        match self.state() {
            State::Healthy => {}
            State::RateLimited => {
                if inner.until.is_some_and(|u| u > Instant::now()) {
                    // An answer to a request admitted before the 429: the wait stands.
                    return;
                }
                tracing::info!(upstream = %self.upstream, "upstream no longer rate-limited");
            }
            State::Open | State::HalfOpen => {
                if !probe {
                    // An answer to a request sent before the circuit opened: the probe decides.
                    return;
                }
                tracing::info!(upstream = %self.upstream, "upstream recovered: circuit closed");
            }
        }
        self.failures.store(0, Ordering::Relaxed);
        inner.until = None;
        inner.backoff = FIRST_BACKOFF;
        self.set(&mut inner, State::Healthy);
    }

    fn rate_limited(&self, repo: &str, after: Option<Duration>, cause: &str) {
        let mut inner = self.lock();
        let now = Instant::now();
        let wait = match after {
            Some(d) => d,
            None => {
                let d = inner.backoff;
                inner.backoff = (d * 2).min(MAX_BACKOFF);
                d
            }
        };
        crate::metrics::upstream_rate_limited(&self.upstream);
        if !repo.is_empty() {
            if inner.repos.len() >= MAX_LIMITED_REPOS {
                inner.repos.retain(|_, (u, _)| *u > now);
            }
            if inner.repos.len() < MAX_LIMITED_REPOS {
                if !inner.repos.contains_key(repo) {
                    tracing::warn!(upstream = %self.upstream, repo, retry_after = ?wait, cause, "upstream rate limit for a repository: no requests for it until the wait is over");
                }
                inner
                    .repos
                    .insert(repo.to_string(), (now + wait, cause.to_string()));
                self.limited_repos
                    .store(inner.repos.len(), Ordering::Relaxed);
            }
            return;
        }
        inner.last_error = Some(cause.to_string());
        let until = now + wait;
        match self.state() {
            State::RateLimited => {
                tracing::debug!(upstream = %self.upstream, retry_after = ?wait, "upstream still rate-limited");
            }
            // A 429 is an answer: an open circuit's probe that gets one closes the
            // circuit into the rate limit.
            _ => {
                tracing::warn!(upstream = %self.upstream, retry_after = ?wait, cause, "upstream rate limit: no requests until the wait is over");
            }
        }
        self.failures.store(0, Ordering::Relaxed);
        inner.until = Some(inner.until.map_or(until, |u| u.max(until)));
        if self.state() != State::RateLimited {
            self.set(&mut inner, State::RateLimited);
        }
    }

    fn failed(&self, probe: bool, e: &UpstreamError) -> bool {
        let mut inner = self.lock();
        let before = self.failures.fetch_add(1, Ordering::Relaxed);
        let failures = before + 1;
        let cause = e.to_string();
        inner.last_error = Some(cause.clone());
        let timeout = matches!(
            e,
            UpstreamError::Timeout {
                phase: TimeoutPhase::Connect | TimeoutPhase::FirstByte,
                ..
            }
        );
        let state = self.state();
        let open = match state {
            State::HalfOpen => probe,
            State::Open => false,
            State::Healthy | State::RateLimited => timeout || failures >= FAILURES_TO_OPEN,
        };
        if !open {
            return before == 0 && matches!(state, State::Healthy);
        }
        let wait = match state {
            State::HalfOpen => {
                inner.backoff = (inner.backoff * 2).min(MAX_BACKOFF);
                tracing::debug!(upstream = %self.upstream, failures, next_probe_in = ?inner.backoff, error = %cause, "probe failed: circuit open again");
                inner.backoff
            }
            _ => {
                inner.backoff = FIRST_BACKOFF;
                tracing::warn!(upstream = %self.upstream, failures, next_probe_in = ?inner.backoff, error = %cause, "upstream down: circuit open, requests fail fast until a probe succeeds");
                crate::metrics::upstream_circuit_opened(&self.upstream);
                inner.backoff
            }
        };
        let jitter: f64 = rand::thread_rng().gen_range(0.8..1.2);
        inner.until = Some(Instant::now() + wait.mul_f64(jitter));
        self.set(&mut inner, State::Open);
        false
    }

    /// A probe that ended without an outcome: the next request may probe.
    fn release_probe(&self) {
        let mut inner = self.lock();
        if self.state() == State::HalfOpen {
            inner.until = Some(Instant::now());
            self.set(&mut inner, State::Open);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.health.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> UpstreamError {
        UpstreamError::Status {
            upstream: "u".into(),
            what: "GET /v2/".into(),
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            code: None,
            message: None,
        }
    }

    fn fail(h: &Health) -> bool {
        let mut t = h.admit("r").expect("admitted");
        let e = unavailable();
        h.record(&mut t, Outcome::Failed(&e))
    }

    #[test]
    fn failures_open_the_circuit_and_a_probe_closes_it() {
        let h = Health::new("u", RateLimitScope::Upstream);
        assert!(fail(&h), "the first failure in a row may be retried");
        assert!(!fail(&h), "the second may not");
        assert_eq!(h.state(), State::Healthy);
        assert!(!fail(&h));
        assert_eq!(h.state(), State::Open);
        let refused = h.admit("r").err().expect("refused while open");
        assert_eq!(refused.state, State::Open);
        assert!(refused.retry_after <= FIRST_BACKOFF.mul_f64(1.2));
        assert!(refused.cause.contains("503"), "{}", refused.cause);
        assert!(h.retry_after("r").is_some());
        // The backoff passes: one probe, everyone else still refused.
        h.lock().until = Some(Instant::now());
        let mut probe = h.admit("r").expect("the probe");
        assert_eq!(h.state(), State::HalfOpen);
        assert_eq!(h.admit("r").err().map(|r| r.state), Some(State::HalfOpen));
        h.record(&mut probe, Outcome::Answered);
        assert_eq!(h.state(), State::Healthy);
        assert_eq!(h.report().consecutive_failures, 0);
        assert!(h.admit("r").is_ok());
        assert_eq!(h.retry_after("r"), None);
    }

    #[test]
    fn a_failed_probe_doubles_the_wait_and_a_dropped_one_is_handed_back() {
        let h = Health::new("u", RateLimitScope::Upstream);
        for _ in 0..FAILURES_TO_OPEN {
            fail(&h);
        }
        h.lock().until = Some(Instant::now());
        let probe = h.admit("r").expect("probe");
        drop(probe);
        assert_eq!(h.state(), State::Open);
        let mut probe = h.admit("r").expect("the probe is available again");
        let e = unavailable();
        assert!(!h.record(&mut probe, Outcome::Failed(&e)));
        assert_eq!(h.state(), State::Open);
        assert_eq!(h.lock().backoff, FIRST_BACKOFF * 2);
        let left = h
            .admit("r")
            .err()
            .map(|r| r.retry_after)
            .unwrap_or_default();
        assert!(left > FIRST_BACKOFF, "{left:?}");
    }

    #[test]
    fn one_timeout_opens_the_circuit() {
        let h = Health::new("u", RateLimitScope::Upstream);
        let mut t = h.admit("").expect("admitted");
        let e = UpstreamError::Timeout {
            upstream: "u".into(),
            what: "HEAD /v2/a/manifests/1".into(),
            phase: TimeoutPhase::FirstByte,
            after: Duration::from_secs(30),
        };
        assert!(!h.record(&mut t, Outcome::Failed(&e)));
        assert_eq!(h.state(), State::Open);
        let r = h.report();
        assert!(r.retry_at.is_some());
        assert!(r.last_error.is_some_and(|e| e.contains("first byte")));
    }

    #[test]
    fn a_429_holds_every_request_until_retry_after() {
        let h = Health::new("u", RateLimitScope::Upstream);
        let mut t = h.admit("a").expect("admitted");
        h.record(
            &mut t,
            Outcome::TooMany(Some(Duration::from_secs(30)), "too many"),
        );
        assert_eq!(h.state(), State::RateLimited);
        let r = h.admit("b").err().expect("refused");
        assert_eq!(r.state, State::RateLimited);
        assert!(r.retry_after > Duration::from_secs(28), "{r:?}");
        h.lock().until = Some(Instant::now());
        let mut t = h.admit("b").expect("the wait is over");
        h.record(&mut t, Outcome::Answered);
        assert_eq!(h.state(), State::Healthy);
    }

    #[test]
    fn repository_scope_limits_only_that_repository() {
        let h = Health::new("u", RateLimitScope::Repository);
        let mut t = h.admit("a").expect("admitted");
        h.record(
            &mut t,
            Outcome::TooMany(Some(Duration::from_secs(30)), "too many"),
        );
        assert_eq!(h.state(), State::Healthy);
        assert!(h.admit("a").is_err());
        assert!(h.admit("b").is_ok());
        assert!(h.retry_after("a").is_some());
        assert_eq!(h.retry_after("b"), None);
        assert_eq!(h.report().limited_repositories, 1);
    }

    #[test]
    fn a_429_without_retry_after_backs_off() {
        let h = Health::new("u", RateLimitScope::Upstream);
        let mut t = h.admit("").expect("admitted");
        h.record(&mut t, Outcome::TooMany(None, "too many"));
        let left = h.retry_after("").unwrap_or_default();
        assert!(left > Duration::ZERO && left <= FIRST_BACKOFF, "{left:?}");
    }
}
