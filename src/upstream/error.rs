//! `UpstreamError`: what went wrong talking to an upstream, and which of those failures
//! let a caller serve stale content (`is_unavailable`) or pass the upstream's 4xx on.
//! Messages name the upstream and the request and never carry credentials or tokens.

use super::health::State;
use crate::oci::ErrorCode;
use http::StatusCode;
use std::time::Duration;

/// Which wait ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Opening the TCP connection.
    Connect,
    /// Waiting for the response head.
    FirstByte,
    /// Waiting for the next chunk of a body.
    Idle,
}

impl TimeoutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first byte",
            TimeoutPhase::Idle => "idle",
        }
    }

    fn waiting_for(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "to connect",
            TimeoutPhase::FirstByte => "waiting for the first byte",
            TimeoutPhase::Idle => "waiting for the next chunk of the body",
        }
    }
}

/// `upstream` is the configured name; `what` is the request, e.g.
/// `GET /v2/library/alpine/manifests/3` or `token GET https://auth.docker.io/token`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream's configuration cannot be used (URL, CA file).
    #[error("upstream {upstream}: {problem}")]
    Config { upstream: String, problem: String },
    /// The request could not be built (a path with characters a URI cannot hold).
    #[error("upstream {upstream}: {what}: invalid request: {problem}")]
    InvalidRequest {
        upstream: String,
        what: String,
        problem: String,
    },
    /// No connection: refused, DNS, unreachable.
    #[error("upstream {upstream}: {what}: cannot connect: {message}")]
    Connect {
        upstream: String,
        what: String,
        message: String,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
    #[error("upstream {upstream}: {what}: tls: {message}")]
    Tls {
        upstream: String,
        what: String,
        message: String,
    },
    /// The connection broke before the response head arrived.
    #[error("upstream {upstream}: {what}: connection failed: {message}")]
    Request {
        upstream: String,
        what: String,
        message: String,
    },
    #[error("upstream {upstream}: {what}: timed out {} after {after:?}", phase.waiting_for())]
    Timeout {
        upstream: String,
        what: String,
        phase: TimeoutPhase,
        after: Duration,
    },
    /// The upstream answered with an error status (after retries for 5xx). `code` and
    /// `message` come from its OCI error body when it had one.
    #[error("upstream {upstream}: {what}: {status}{}", describe(*code, message))]
    Status {
        upstream: String,
        what: String,
        status: StatusCode,
        code: Option<ErrorCode>,
        message: Option<String>,
    },
    /// 429 with a `Retry-After` too long to wait for (or none).
    #[error("upstream {upstream}: {what}: too many requests{}", retry_hint(*retry_after))]
    TooManyRequests {
        upstream: String,
        what: String,
        retry_after: Option<Duration>,
    },
    /// Authentication failed: the token service refused, answered nonsense, or the
    /// upstream still said 401 with fresh credentials.
    #[error("upstream {upstream}: {what}: authentication failed: {problem}")]
    Auth {
        upstream: String,
        what: String,
        problem: String,
        /// The upstream's own final status when it was the one refusing (401/403).
        status: Option<StatusCode>,
        code: Option<ErrorCode>,
    },
    /// Not sent: the upstream (or, with `rate_limit_scope = "repository"`, the
    /// repository) is rate-limited, or the upstream is down (its circuit is open).
    #[error("upstream {upstream}: {what}: not sent: {}{}", refused(*state, *retry_after), last_error(cause))]
    Refused {
        upstream: String,
        what: String,
        state: State,
        retry_after: Duration,
        /// The failure that put the upstream in this state.
        cause: String,
    },
    /// A body stopped before its end (connection closed, reset, bad framing).
    #[error("upstream {upstream}: {what}: body broke off: {message}")]
    Body {
        upstream: String,
        what: String,
        message: String,
    },
}

fn describe(code: Option<ErrorCode>, message: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(code) = code {
        out.push_str(&format!(" {}", code.as_str()));
    }
    if let Some(m) = message.as_deref().filter(|m| !m.is_empty()) {
        out.push_str(&format!(": {m}"));
    }
    out
}

fn retry_hint(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {d:?}"),
        None => String::new(),
    }
}

fn refused(state: State, retry_after: Duration) -> String {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    match state {
        State::RateLimited => format!("rate-limited for another {}s", secs.max(1)),
        State::HalfOpen => "down, a probe is in flight".to_string(),
        State::Open | State::Healthy => {
            format!("down, next probe in {}s", secs.max(1))
        }
    }
}

fn last_error(cause: &str) -> String {
    match cause {
        "" => String::new(),
        c => format!(" (last error: {c})"),
    }
}

impl UpstreamError {
    /// True when the upstream is unreachable, timed out, answered 5xx or 429, or a body
    /// broke off: callers may serve stale content.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::Request { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::TooManyRequests { .. }
            | UpstreamError::Refused { .. }
            | UpstreamError::Body { .. } => true,
            UpstreamError::Status { status, .. } => status.is_server_error(),
            UpstreamError::Config { .. }
            | UpstreamError::InvalidRequest { .. }
            | UpstreamError::Auth { .. } => false,
        }
    }

    /// The upstream's own answer when it was a 4xx (404 etc.), for passing through.
    /// 429 is not one of them: see `TooManyRequests`.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            UpstreamError::Status { status, .. } if status.is_client_error() => Some(*status),
            UpstreamError::Auth { status, .. } => *status,
            _ => None,
        }
    }

    /// The OCI error code from the upstream's error body, if it sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            UpstreamError::Status { code, .. } | UpstreamError::Auth { code, .. } => *code,
            UpstreamError::TooManyRequests { .. } => Some(ErrorCode::Toomanyrequests),
            UpstreamError::Refused {
                state: State::RateLimited,
                ..
            } => Some(ErrorCode::Toomanyrequests),
            _ => None,
        }
    }

    /// When the client may ask again: a 429's `Retry-After`, or the time left of a
    /// rate-limit wait or an open circuit this request was refused by.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::TooManyRequests { retry_after, .. } => *retry_after,
            UpstreamError::Refused { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A 429 from the upstream, or a request refused while it is rate-limited.
    pub fn is_rate_limited(&self) -> bool {
        matches!(
            self,
            UpstreamError::TooManyRequests { .. }
                | UpstreamError::Refused {
                    state: State::RateLimited,
                    ..
                }
        )
    }
}

/// The outcome label of an upstream request (`agent_registry_upstream_requests_total`).
pub fn outcome<T>(r: &Result<T, UpstreamError>) -> &'static str {
    let e = match r {
        Ok(_) => return "ok",
        Err(e) => e,
    };
    match e {
        UpstreamError::Status { status, .. } => match *status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "auth_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            s if s.is_server_error() => "server_error",
            _ => "client_error",
        },
        UpstreamError::TooManyRequests { .. } => "rate_limited",
        // Refused requests are not sent: counted in UPSTREAM_REFUSED_TOTAL instead.
        UpstreamError::Refused { .. } => "connect_error",
        UpstreamError::Auth { .. } => "auth_error",
        UpstreamError::Timeout { .. } => "timeout",
        UpstreamError::Connect { .. }
        | UpstreamError::Tls { .. }
        | UpstreamError::Request { .. }
        | UpstreamError::Body { .. } => "connect_error",
        UpstreamError::Config { .. } | UpstreamError::InvalidRequest { .. } => "client_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_upstream_and_request() {
        let e = UpstreamError::Timeout {
            upstream: "docker.io".into(),
            what: "GET /v2/library/alpine/manifests/3".into(),
            phase: TimeoutPhase::FirstByte,
            after: Duration::from_secs(30),
        };
        assert_eq!(
            e.to_string(),
            "upstream docker.io: GET /v2/library/alpine/manifests/3: timed out waiting for the first byte after 30s"
        );
        assert!(e.is_unavailable());
        assert_eq!(e.status(), None);

        let e = UpstreamError::Status {
            upstream: "ghcr.io".into(),
            what: "GET /v2/a/manifests/1".into(),
            status: StatusCode::NOT_FOUND,
            code: Some(ErrorCode::ManifestUnknown),
            message: Some("manifest unknown".into()),
        };
        assert_eq!(
            e.to_string(),
            "upstream ghcr.io: GET /v2/a/manifests/1: 404 Not Found MANIFEST_UNKNOWN: manifest unknown"
        );
        assert!(!e.is_unavailable());
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));

        let e = UpstreamError::TooManyRequests {
            upstream: "docker.io".into(),
            what: "GET /v2/a/manifests/1".into(),
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(
            e.to_string(),
            "upstream docker.io: GET /v2/a/manifests/1: too many requests, retry after 120s"
        );
        assert!(e.is_unavailable());
        assert_eq!(e.status(), None);
    }

    #[test]
    fn refusals_say_why_and_when() {
        let e = UpstreamError::Refused {
            upstream: "docker.io".into(),
            what: "GET /v2/a/manifests/1".into(),
            state: State::Open,
            retry_after: Duration::from_millis(1500),
            cause: "upstream docker.io: GET /v2/b/manifests/2: cannot connect: connection refused"
                .into(),
        };
        assert_eq!(
            e.to_string(),
            "upstream docker.io: GET /v2/a/manifests/1: not sent: down, next probe in 2s (last error: upstream docker.io: GET /v2/b/manifests/2: cannot connect: connection refused)"
        );
        assert!(e.is_unavailable());
        assert!(!e.is_rate_limited());
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        let e = UpstreamError::Refused {
            upstream: "docker.io".into(),
            what: "GET /v2/a/manifests/1".into(),
            state: State::RateLimited,
            retry_after: Duration::from_secs(30),
            cause: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "upstream docker.io: GET /v2/a/manifests/1: not sent: rate-limited for another 30s"
        );
        assert!(e.is_rate_limited());
        assert_eq!(e.code(), Some(ErrorCode::Toomanyrequests));
    }

    #[test]
    fn server_errors_are_unavailable_not_passed_through() {
        let e = UpstreamError::Status {
            upstream: "quay.io".into(),
            what: "HEAD /v2/a/blobs/sha256:00".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: None,
            message: None,
        };
        assert!(e.is_unavailable());
        assert_eq!(e.status(), None);
        assert_eq!(
            e.to_string(),
            "upstream quay.io: HEAD /v2/a/blobs/sha256:00: 503 Service Unavailable"
        );
    }

    #[test]
    fn upstream_outcomes() {
        let status = |s: u16| -> Result<(), UpstreamError> {
            Err(UpstreamError::Status {
                upstream: "u".into(),
                what: "GET /v2/".into(),
                status: StatusCode::from_u16(s).unwrap_or(StatusCode::IM_A_TEAPOT),
                code: None,
                message: None,
            })
        };
        assert_eq!(outcome::<()>(&Ok(())), "ok");
        assert_eq!(outcome(&status(404)), "not_found");
        assert_eq!(outcome(&status(401)), "auth_error");
        assert_eq!(outcome(&status(400)), "client_error");
        assert_eq!(outcome(&status(503)), "server_error");
        let timeout: Result<(), _> = Err(UpstreamError::Timeout {
            upstream: "u".into(),
            what: "GET /v2/".into(),
            phase: TimeoutPhase::FirstByte,
            after: Duration::from_secs(1),
        });
        assert_eq!(outcome(&timeout), "timeout");
    }
}
