//! Credentials for one upstream: a static token, basic auth, or the registry token flow
//! (401 challenge -> token from the realm -> retry with `Bearer`). Tokens are cached per
//! scope until shortly before they expire and fetched single-flight: concurrent requests
//! for one scope wait for one fetch. Nothing here logs or formats a secret.

use super::challenge::{self, Challenge};
use super::error::UpstreamError;
use crate::config::{Secret, UpstreamConfig};
use http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What the token service granted.
pub(crate) struct Granted {
    pub token: String,
    pub expires_in: Duration,
}

/// Where and for what to ask for a token, from a Bearer challenge.
pub(crate) struct TokenRequest {
    pub realm: String,
    pub service: Option<String>,
    pub scope: String,
}

/// What to do about a 401.
pub(crate) enum Answer {
    /// Retry with this `Authorization`.
    Retry(HeaderValue),
    /// Fetch a token (through [`Auth::bearer`]) and retry with it.
    Token(TokenRequest),
}

pub(crate) struct Auth {
    upstream: String,
    basic: Option<HeaderValue>,
    static_token: Option<HeaderValue>,
    /// Set once the upstream answered with a Basic challenge: send credentials up front.
    basic_learned: AtomicBool,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    fetches: AtomicU64,
}

/// One scope's cached token and the lock that makes its fetch single-flight.
#[derive(Default)]
struct Slot {
    cached: Mutex<Option<Cached>>,
    /// Bumped (under `fetch`) after every fetch.
    generation: AtomicU64,
    /// Holds the outcome of the last fetch when it failed, for the requests that queued
    /// behind it (they share the failure instead of fetching again one after another).
    fetch: tokio::sync::Mutex<Option<UpstreamError>>,
}

#[derive(Clone)]
struct Cached {
    token: String,
    valid_until: Instant,
}

impl Auth {
    pub fn new(cfg: &UpstreamConfig) -> Auth {
        let basic = match (&cfg.username, &cfg.password) {
            (Some(user), Some(pass)) => Some(basic_header(user, pass)),
            _ => None,
        };
        Auth {
            upstream: cfg.name.clone(),
            basic,
            static_token: cfg.token.as_ref().and_then(|t| bearer_header(t.expose())),
            basic_learned: AtomicBool::new(false),
            slots: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
        }
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Basic credentials for the token service, if configured.
    pub fn basic(&self) -> Option<&HeaderValue> {
        self.basic.as_ref()
    }

    /// The `Authorization` to send before any challenge: the static token, basic
    /// credentials once the upstream asked for them, or a cached token for `scope`.
    pub fn up_front(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(t) = &self.static_token {
            return Some(t.clone());
        }
        if self.basic_learned.load(Ordering::Relaxed) {
            return self.basic.clone();
        }
        let slot = self.slots.lock().ok()?.get(scope).cloned()?;
        let cached = slot.cached.lock().ok()?.clone()?;
        (cached.valid_until > Instant::now())
            .then(|| bearer_header(&cached.token))
            .flatten()
    }

    /// Decides how to answer a 401 whose headers are `headers`, given the `Authorization`
    /// that was `sent` with it.
    pub fn on_challenge(
        &self,
        headers: &HeaderMap,
        scope: &str,
        sent: Option<&HeaderValue>,
        what: &str,
    ) -> Result<Answer, UpstreamError> {
        // The upstream's own 401 stands behind all of these.
        let fail = |problem: &str| self.refused(what, problem);
        if self.static_token.is_some() {
            return Err(fail("the configured token was refused (401)"));
        }
        let challenges: Vec<Challenge> = headers
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(challenge::parse)
            .collect();
        let bearer = challenges
            .iter()
            .find(|c| c.scheme == "bearer" && c.param("realm").is_some());
        if let Some(c) = bearer {
            let scope = match scope {
                "" => c.param("scope").unwrap_or_default().to_string(),
                s => s.to_string(),
            };
            return Ok(Answer::Token(TokenRequest {
                realm: c.param("realm").unwrap_or_default().to_string(),
                service: c.param("service").map(str::to_string),
                scope,
            }));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(basic) = &self.basic else {
                return Err(fail(
                    "the upstream asks for basic credentials and none are configured",
                ));
            };
            if sent == Some(basic) {
                return Err(fail("the configured username and password were refused"));
            }
            self.basic_learned.store(true, Ordering::Relaxed);
            return Ok(Answer::Retry(basic.clone()));
        }
        match challenges.first() {
            Some(c) => Err(fail(&format!(
                "unsupported challenge scheme {:?}",
                c.scheme
            ))),
            None => Err(fail("401 without a usable WWW-Authenticate challenge")),
        }
    }

    /// A bearer token for `scope`: the cached one unless it is `rejected` (the upstream
    /// just refused it), else one fetched by `fetch`. Concurrent callers for one scope
    /// share a single fetch.
    pub async fn bearer<F, Fut>(
        &self,
        scope: &str,
        rejected: Option<&HeaderValue>,
        fetch: F,
    ) -> Result<HeaderValue, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Granted, UpstreamError>>,
    {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(scope.to_string()).or_default().clone()
        };
        let seen = slot.generation.load(Ordering::Acquire);
        let mut last_failure = slot.fetch.lock().await;
        let cached = slot
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // A fetch finished while we waited: take its outcome even if the token's life
        // is already over (a very short expires_in must not turn into a fetch per waiter).
        let fetched_meanwhile = slot.generation.load(Ordering::Acquire) != seen;
        if let Some(c) = cached.filter(|c| fetched_meanwhile || c.valid_until > Instant::now()) {
            match bearer_header(&c.token) {
                Some(header) if Some(&header) != rejected => return Ok(header),
                _ => {}
            }
        }
        if fetched_meanwhile {
            if let Some(e) = last_failure.as_ref() {
                return Err(e.clone());
            }
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = fetch().await.and_then(|g| {
            let header = bearer_header(&g.token).ok_or_else(|| {
                self.failed(
                    &format!("token for {scope}"),
                    "the token service sent a token that is not a valid header value",
                )
            })?;
            Ok((g, header))
        });
        slot.generation.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok((granted, header)) => {
                let valid_until = started + lifetime(granted.expires_in);
                *slot.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
                    token: granted.token,
                    valid_until,
                });
                *last_failure = None;
                Ok(header)
            }
            Err(e) => {
                *slot.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *last_failure = Some(e.clone());
                Err(e)
            }
        }
    }

    fn failed(&self, what: &str, problem: &str) -> UpstreamError {
        self.auth_error(what, problem, None)
    }

    /// Like `failed`, for when the upstream itself answered 401.
    fn refused(&self, what: &str, problem: &str) -> UpstreamError {
        self.auth_error(what, problem, Some(http::StatusCode::UNAUTHORIZED))
    }

    fn auth_error(
        &self,
        what: &str,
        problem: &str,
        status: Option<http::StatusCode>,
    ) -> UpstreamError {
        UpstreamError::Auth {
            upstream: self.upstream.clone(),
            what: what.to_string(),
            problem: problem.to_string(),
            status,
            code: None,
        }
    }
}

/// How long a token is used: until shortly before it expires (a fifth of its life, at
/// most 10 s, early), so a request never goes out with a token about to lapse.
fn lifetime(expires_in: Duration) -> Duration {
    let margin = (expires_in / 5).min(Duration::from_secs(10));
    expires_in.saturating_sub(margin)
}

/// `Bearer <token>`, marked sensitive (never indexed by HPACK, hidden in Debug).
fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// `Basic base64(user:password)`, marked sensitive.
pub(crate) fn basic_header(user: &str, password: &Secret) -> HeaderValue {
    let encoded = base64(format!("{user}:{}", password.expose()).as_bytes());
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// Standard base64 with padding (RFC 4648), for the one header that needs it.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("alice:s3cret", "YWxpY2U6czNjcmV0"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn token_lifetime_leaves_a_margin() {
        assert_eq!(lifetime(Duration::from_secs(300)), Duration::from_secs(290));
        assert_eq!(lifetime(Duration::from_secs(60)), Duration::from_secs(50));
        assert_eq!(lifetime(Duration::from_secs(5)), Duration::from_secs(4));
        assert_eq!(lifetime(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn auth_headers_are_sensitive_and_hidden() {
        let h = basic_header("alice", &Secret::new("s3cret"));
        assert!(h.is_sensitive());
        assert!(!format!("{h:?}").contains("YWxp"));
        assert_eq!(h.to_str().ok(), Some("Basic YWxpY2U6czNjcmV0"));
    }

    /// Ten concurrent callers, a fetch that takes 50 ms and returns `outcome`.
    async fn ten_callers(
        auth: &Arc<Auth>,
        rejected: Option<HeaderValue>,
        outcome: Result<&'static str, &'static str>,
    ) -> Vec<Result<HeaderValue, UpstreamError>> {
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (auth, rejected) = (auth.clone(), rejected.clone());
                tokio::spawn(async move {
                    let failer = auth.clone();
                    let fetch = || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        match outcome {
                            Ok(token) => Ok(Granted {
                                token: token.into(),
                                expires_in: Duration::ZERO,
                            }),
                            Err(problem) => Err(failer.failed("token GET https://t", problem)),
                        }
                    };
                    auth.bearer("repository:a:pull", rejected.as_ref(), fetch)
                        .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join"));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let auth = Arc::new(Auth::new(&UpstreamConfig::new("r", "https://r")));
        // Even a token with no life left is shared by the callers that waited for it.
        let got = ten_callers(&auth, None, Ok("t1")).await;
        assert!(got
            .iter()
            .all(|r| r.as_ref().ok() == bearer_header("t1").as_ref()));
        assert_eq!(auth.fetches(), 1);
        // A failure is shared too, instead of ten fetches in a row.
        let got = ten_callers(&auth, None, Err("refused")).await;
        assert!(got.iter().all(|r| r.is_err()));
        assert_eq!(auth.fetches(), 2);
        // A token the upstream refused is replaced, once.
        let ok = ten_callers(&auth, bearer_header("t1"), Ok("t2")).await;
        assert!(ok
            .iter()
            .all(|r| r.as_ref().ok() == bearer_header("t2").as_ref()));
        assert_eq!(auth.fetches(), 3);
    }

    fn challenge(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn answers_to_challenges() {
        let mut cfg = UpstreamConfig::new("r", "https://r");
        let anon = Auth::new(&cfg);
        let bearer = challenge(r#"Bearer realm="https://t/token",service="r",scope="x""#);
        match anon.on_challenge(&bearer, "repository:a:pull", None, "GET /") {
            Ok(Answer::Token(t)) => {
                assert_eq!(
                    (t.realm.as_str(), t.service.as_deref(), t.scope.as_str()),
                    ("https://t/token", Some("r"), "repository:a:pull")
                );
            }
            _ => panic!("expected a token request"),
        }
        let basic = challenge(r#"Basic realm="r""#);
        assert!(anon.on_challenge(&basic, "s", None, "GET /").is_err());

        cfg.username = Some("alice".into());
        cfg.password = Some(Secret::new("s3cret"));
        let creds = Auth::new(&cfg);
        assert!(creds.up_front("s").is_none());
        let Ok(Answer::Retry(h)) = creds.on_challenge(&basic, "s", None, "GET /") else {
            panic!("expected basic credentials");
        };
        assert_eq!(creds.up_front("s"), Some(h.clone()));
        let refused = creds.on_challenge(&basic, "s", Some(&h), "GET /");
        let msg = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("refused") && !msg.contains("s3cret"), "{msg}");

        cfg.username = None;
        cfg.password = None;
        cfg.token = Some(Secret::new("tok"));
        let fixed = Auth::new(&cfg);
        assert_eq!(
            fixed
                .up_front("s")
                .and_then(|h| h.to_str().ok().map(String::from)),
            Some("Bearer tok".to_string())
        );
        assert!(fixed.on_challenge(&bearer, "s", None, "GET /").is_err());
    }
}
