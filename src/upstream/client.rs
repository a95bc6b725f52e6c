//! `Upstream::send`: one GET or HEAD with everything around it. The upstream's health
//! (`health.rs`) admits the request first: while rate-limited or down it fails at once
//! without sending anything. The first-byte timeout and the concurrency permit cover each
//! attempt's head; every attempt's outcome is recorded in the health; a connect failure or
//! 502/503/504 is retried once, and only when it was the upstream's first failure in a row
//! (so N requests against a failing upstream cost about N upstream requests, then none
//! while the circuit is open); a short 429 `Retry-After` is waited out once; a 401 is
//! answered once with fresh credentials; redirects are followed (credentials stay with the
//! upstream's own origin).

use super::auth::Answer;
use super::body::{read_small, Sent};
use super::error::{TimeoutPhase, UpstreamError};
use super::health::{Outcome, Ticket};
use super::wire::{causes, chain, location, origin, retry_after};
use super::{challenge, Upstream};
use crate::oci::errors::ErrorBody;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use rand::Rng;
use std::error::Error as StdError;
use std::time::{Duration, Instant};

/// Attempts per request for connect failures and 502/503/504 (the second only when the
/// health allows it: the first failure in a row).
const MAX_ATTEMPTS: u32 = 2;
/// The first backoff; doubled per attempt, with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_REDIRECTS: usize = 5;
/// A 429 asking for at most this long is waited out once; longer ones fail at once.
const SHORT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// Largest error body read (to parse its OCI error code and reuse the connection).
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Longest wait for an error body: it is only a courtesy.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(2);

const USER_AGENT: &str = concat!("agent-registry/", env!("CARGO_PKG_VERSION"));

impl Upstream {
    /// Sends GET or HEAD to `<url><path>` (path like `/v2/library/alpine/manifests/3`);
    /// `repo` is the upstream repository for the token scope (`repository:<repo>:pull`).
    /// Extra headers such as Accept and Range are passed on (Authorization is not).
    /// Returns once the response head arrived with a 2xx or 304 status; every other
    /// outcome is an [`UpstreamError`]. Each call is counted once in the upstream metrics.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if let Some(parent) = &self.parent {
            let sep = if path.contains('?') { '&' } else { '?' };
            let via = format!("{path}{sep}ns={}", self.cfg.name);
            let answer = parent
                .upstream
                .send_direct(method.clone(), &via, repo, headers.clone())
                .await;
            match answer {
                Err(e) if parent.fallback && parent_unreachable(&e) => {
                    tracing::debug!(upstream = %self.cfg.name, parent = %parent.upstream.name(), error = %e, "parent unreachable, asking the origin");
                    crate::metrics::parent_fallback(&self.cfg.name);
                }
                answer => return answer,
            }
        }
        self.send_direct(method, path, repo, headers).await
    }

    /// [`Upstream::send`] to this upstream's own `url`.
    async fn send_direct(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut ticket = match self.health.admit(repo) {
            Ok(t) => t,
            Err(refusal) => {
                let reason = match refusal.state {
                    super::health::State::RateLimited => "rate_limited",
                    _ => "down",
                };
                crate::metrics::upstream_refused(&self.cfg.name, reason);
                return Err(UpstreamError::Refused {
                    upstream: self.cfg.name.clone(),
                    what: format!("{method} {path}"),
                    state: refusal.state,
                    retry_after: refusal.retry_after,
                    cause: refusal.cause,
                });
            }
        };
        let start = Instant::now();
        let result = self
            .send_unmetered(method, path, repo, headers, &mut ticket)
            .await;
        crate::metrics::upstream_request(
            &self.cfg.name,
            super::error::outcome(&result),
            start.elapsed(),
        );
        result
    }

    async fn send_unmetered(
        &self,
        method: Method,
        path: &str,
        repo: &str,
        headers: HeaderMap,
        ticket: &mut Ticket<'_>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let what = format!("{method} {path}");
        if method != Method::GET && method != Method::HEAD {
            return Err(self.invalid(&what, "only GET and HEAD are sent upstream"));
        }
        if !path.starts_with('/') {
            return Err(self.invalid(&what, "the path must start with /"));
        }
        let scope = match repo {
            "" => String::new(),
            r => format!("repository:{r}:pull"),
        };
        let home = origin(&self.cfg.url);
        let mut url = format!("{}{path}", self.cfg.url);
        let mut authz = self.auth.up_front(&scope);
        let (mut attempt, mut redirects) = (1, 0);
        // What the retry after a 401 carried (None: no retry yet).
        let mut reauthed: Option<&'static str> = None;
        let mut waited = false;
        loop {
            let ours = origin(&url) == home;
            let sent = authz.clone().filter(|_| ours);
            let resp = match self
                .attempt(&method, &url, &headers, sent.as_ref(), &what)
                .await
            {
                Ok(r) => r,
                Err(e) if counts_against(&e) => {
                    let may_retry = self.health.record(ticket, Outcome::Failed(&e));
                    let retryable = matches!(
                        e,
                        UpstreamError::Connect { .. } | UpstreamError::Request { .. }
                    );
                    if may_retry && retryable && attempt < MAX_ATTEMPTS {
                        tracing::debug!(upstream = %self.cfg.name, request = %what, attempt, error = %e, "retrying");
                        backoff(attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            self.record_ratelimit(resp.headers());
            let status = resp.status();
            if status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error() {
                self.health.record(ticket, Outcome::Answered);
            }
            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                let mut resp = resp;
                resp.extensions_mut().insert(Sent(what));
                return Ok(resp);
            }
            if status.is_redirection() && redirects < MAX_REDIRECTS {
                if let Some(next) = location(&url, resp.headers()) {
                    self.drain(resp, &what).await;
                    url = next;
                    redirects += 1;
                    continue;
                }
            }
            match status {
                StatusCode::UNAUTHORIZED if ours && reauthed.is_none() => {
                    let (parts, body) = resp.into_parts();
                    self.drain(Response::new(body), &what).await;
                    let answer =
                        self.auth
                            .on_challenge(&parts.headers, &scope, sent.as_ref(), &what)?;
                    authz = Some(match answer {
                        Answer::Retry(h) => {
                            reauthed = Some("the configured username and password");
                            h
                        }
                        Answer::Token(req) => {
                            reauthed = Some("a fresh token");
                            let fetch = || self.fetch_token(&req);
                            self.auth.bearer(&req.scope, sent.as_ref(), fetch).await?
                        }
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let retry_after = retry_after(resp.headers());
                    self.drain(resp, &what).await;
                    let cause = UpstreamError::TooManyRequests {
                        upstream: self.cfg.name.clone(),
                        what: what.clone(),
                        retry_after,
                    }
                    .to_string();
                    self.health
                        .record(ticket, Outcome::TooMany(retry_after, &cause));
                    match retry_after {
                        Some(d) if d <= SHORT_RETRY_AFTER && !waited => {
                            tracing::debug!(upstream = %self.cfg.name, request = %what, wait = ?d, "429, waiting");
                            waited = true;
                            tokio::time::sleep(d).await;
                        }
                        _ => {
                            // Without a Retry-After the health chose the wait.
                            let retry_after = retry_after.or_else(|| self.health.retry_after(repo));
                            return Err(UpstreamError::TooManyRequests {
                                upstream: self.cfg.name.clone(),
                                what,
                                retry_after,
                            });
                        }
                    }
                }
                s if s.is_server_error() => {
                    let e = self.status_error(resp, what.clone(), None).await;
                    let may_retry = self.health.record(ticket, Outcome::Failed(&e));
                    let transient = matches!(
                        s,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if !(transient && may_retry && attempt < MAX_ATTEMPTS) {
                        return Err(e);
                    }
                    tracing::debug!(upstream = %self.cfg.name, request = %what, attempt, %status, "retrying");
                    backoff(attempt).await;
                    attempt += 1;
                }
                _ => {
                    let retried_with = reauthed.filter(|_| ours);
                    return Err(self.status_error(resp, what, retried_with).await);
                }
            }
        }
    }

    /// One attempt: a concurrency permit while the head is pending.
    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        authz: Option<&HeaderValue>,
        what: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| UpstreamError::Request {
                upstream: self.cfg.name.clone(),
                what: what.to_string(),
                message: "the upstream client is shutting down".into(),
            })?;
        self.exchange(method, url, headers, authz, what).await
    }

    /// Sends one request and waits (at most `first_byte_timeout`) for the response head.
    pub(super) async fn exchange(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        authz: Option<&HeaderValue>,
        what: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url)
            .body(Empty::new())
            .map_err(|e| self.invalid(what, &e.to_string()))?;
        let h = req.headers_mut();
        for (name, value) in headers {
            if name != header::AUTHORIZATION && name != header::HOST {
                h.append(name, value.clone());
            }
        }
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Some(a) = authz {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        let after = self.cfg.first_byte_timeout;
        match tokio::time::timeout(after, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.classify(&e, what)),
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.cfg.name.clone(),
                what: what.to_string(),
                phase: TimeoutPhase::FirstByte,
                after,
            }),
        }
    }

    fn classify(&self, e: &hyper_util::client::legacy::Error, what: &str) -> UpstreamError {
        let (upstream, what) = (self.cfg.name.clone(), what.to_string());
        let message = match e.source() {
            Some(inner) => chain(inner),
            None => chain(e),
        };
        let causes = || causes(e);
        if causes().any(|c| c.is::<rustls::Error>()) {
            return UpstreamError::Tls {
                upstream,
                what,
                message,
            };
        }
        let timed_out = causes().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        });
        match (e.is_connect(), timed_out) {
            (true, true) => UpstreamError::Timeout {
                upstream,
                what,
                phase: TimeoutPhase::Connect,
                after: self.cfg.connect_timeout,
            },
            (true, false) => UpstreamError::Connect {
                upstream,
                what,
                message,
            },
            (false, _) => UpstreamError::Request {
                upstream,
                what,
                message,
            },
        }
    }

    /// The error for a final non-success answer, with the OCI code from its body.
    async fn status_error(
        &self,
        resp: Response<Incoming>,
        what: String,
        retried_with: Option<&str>,
    ) -> UpstreamError {
        let status = resp.status();
        let insufficient = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(challenge::parse)
            .find_map(|c| c.param("error").map(str::to_string));
        let body = read_small(
            resp.into_body(),
            ERROR_BODY_LIMIT,
            &self.cfg.name,
            &what,
            ERROR_BODY_WAIT,
        )
        .await;
        let first = body
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok())
            .and_then(|b| b.errors.into_iter().next());
        let code = first.as_ref().map(|e| e.code);
        let message = first.map(|e| e.message).filter(|m| !m.is_empty());
        if let (StatusCode::UNAUTHORIZED, Some(with)) = (status, retried_with) {
            let mut problem = format!("still 401 with {with}");
            for extra in [insufficient, message].into_iter().flatten() {
                problem.push_str(&format!(": {extra}"));
            }
            return UpstreamError::Auth {
                upstream: self.cfg.name.clone(),
                what,
                problem,
                status: Some(status),
                code,
            };
        }
        UpstreamError::Status {
            upstream: self.cfg.name.clone(),
            what,
            status,
            code,
            message,
        }
    }

    /// Reads and drops a short body so the connection can be reused.
    async fn drain(&self, resp: Response<Incoming>, what: &str) {
        let body = resp.into_body();
        let _ = read_small(
            body,
            ERROR_BODY_LIMIT,
            &self.cfg.name,
            what,
            ERROR_BODY_WAIT,
        )
        .await;
    }

    fn invalid(&self, what: &str, problem: &str) -> UpstreamError {
        UpstreamError::InvalidRequest {
            upstream: self.cfg.name.clone(),
            what: what.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// Failures of an attempt that say the upstream is unwell (recorded in its health). Only
/// `Connect` and `Request` (a refused or broken connection) are worth a retry; a TLS
/// failure or a timeout would fail the same way again.
fn counts_against(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Connect { .. }
            | UpstreamError::Request { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::Timeout { .. }
    )
}

/// Sleeps 100 ms, 200 ms, 400 ms... for attempts 1, 2, 3..., each with +-25 % jitter.
async fn backoff(attempt: u32) {
    let base = FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
    let jitter: f64 = rand::thread_rng().gen_range(0.75..1.25);
    tokio::time::sleep(base.mul_f64(jitter)).await;
}

/// Whether a parent's failure sends the request to the origin (`parent_fallback`): no
/// connection, a timeout, a broken exchange, a 5xx, or a parent known to be down. A 4xx
/// (a 404 above all) is the parent's answer, and a 429 is a limit, not an outage.
fn parent_unreachable(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Connect { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Request { .. }
        | UpstreamError::Timeout { .. } => true,
        UpstreamError::Status { status, .. } => status.is_server_error(),
        UpstreamError::Refused { state, .. } => *state != super::health::State::RateLimited,
        _ => false,
    }
}
