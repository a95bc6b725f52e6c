//! The CLI's HTTP layer: plain HTTP or HTTPS (rustls with the webpki roots), a timeout
//! per attempt, retries, redirects and credentials.
//!
//! - Retries: connection errors, 5xx (but 501, 505 and 507, which a retry cannot mend)
//!   and 429 are retried up to [`Retry::retries`] times with exponential backoff and full
//!   jitter; a `Retry-After` is waited out exactly, unless it is longer than
//!   [`Retry::max_retry_after`], in which case the answer is returned at once. 4xx other
//!   than 429 is never retried.
//! - Redirects (301, 302, 303, 307, 308) are followed up to 5 times. Invariant: the
//!   `Authorization` header is only ever sent to the registry's own origin (scheme, host,
//!   port); a redirect elsewhere (blob storage, a CDN) goes without it.
//! - Credentials: Basic and Bearer are sent as they are; `OAuth2` gets a token with the
//!   client-credentials grant from the registry's `/token` (with the scope of a 401's
//!   `Bearer` challenge when there is one). A `Bearer` challenge to Basic credentials is
//!   answered the same way, by `GET /token` — only when the realm is on the registry's
//!   own origin. Tokens are kept per scope until 10 s before `expires_in`, and the last
//!   challenge's token is sent first on the next requests.
//! - [`Client::execute`] reads the answer; [`Client::open`] leaves its body to stream.
//! - Errors start with the seed's words: "failed to connect to registry", "authentication
//!   failed", "image not found in registry", "rate limit exceeded", "insufficient storage
//!   space" ([`Client::status_error`]).

use anyhow::{anyhow, Context};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a request authenticates with.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    /// An API token or an identity token.
    Bearer(String),
    OAuth2 {
        client_id: String,
        client_secret: String,
    },
    /// A whole `Authorization` header value (server-side admin calls).
    Header(String),
}

impl Credentials {
    /// The header for Basic, Bearer and raw credentials; OAuth2 needs a token first.
    fn header(&self) -> Option<String> {
        match self {
            Credentials::None | Credentials::OAuth2 { .. } => None,
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::Bearer(t) => Some(format!("Bearer {t}")),
            Credentials::Header(h) => Some(h.clone()),
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Credentials::None)
    }
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    /// The first backoff; each further one doubles, up to `max_delay`.
    pub base: Duration,
    pub max_delay: Duration,
    /// A longer `Retry-After` is not waited for: the 429 or 503 is the answer.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            retries: 3,
            base: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The wait before retry number `n` (0-based): `base * 2^n` capped, with full
    /// jitter in its upper half.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = exp / 2;
        half + exp.saturating_sub(half).mul_f64(rand::random::<f64>())
    }
}

pub struct Client {
    base: String,
    origin: String,
    timeout: Duration,
    credentials: Credentials,
    /// Where the credentials came from, for error messages.
    source: String,
    retry: Retry,
    /// Bearer tokens from `/token` by scope ("" for none), until 10 s before they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The token of the last answered challenge: sent first on the next requests (most
    /// go to the same repository), so they need no 401 round trip.
    last: Mutex<Option<(String, Instant)>>,
    inner: HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// From the first attempt to the end of the last.
    pub elapsed: Duration,
    /// Requests sent (redirects not counted).
    pub attempts: u32,
}

/// An answer whose body is still to be read ([`Client::open`]).
pub struct Streamed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: hyper::body::Incoming,
    /// Requests sent (redirects not counted).
    pub attempts: u32,
}

enum RawBody {
    Full(Bytes),
    Stream(hyper::body::Incoming),
}

/// An attempt's answer, its body read or not.
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    body: RawBody,
    elapsed: Duration,
    attempts: u32,
}

impl Raw {
    fn attempts(mut self, n: u32) -> Raw {
        self.attempts = n;
        self
    }

    /// Whether a 401 says the credentials were checked and refused (this server's
    /// "authentication failed"), rather than asked for.
    fn refused(&self) -> bool {
        match &self.body {
            RawBody::Full(b) => oci_error(b).1.starts_with("authentication failed"),
            RawBody::Stream(_) => false,
        }
    }

    fn into_reply(self) -> Reply {
        Reply {
            status: self.status,
            headers: self.headers,
            body: match self.body {
                RawBody::Full(b) => b,
                RawBody::Stream(_) => Bytes::new(),
            },
            elapsed: self.elapsed,
            attempts: self.attempts,
        }
    }
}

/// The OCI error body's first code and message ("" when there is none).
fn oci_error(body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let e = &v["errors"][0];
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(s) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

impl Reply {
    /// The OCI error body's first code and message, if there is one.
    pub fn oci_error(&self) -> (String, String) {
        oci_error(&self.body)
    }

    /// `Retry-After` in seconds or as an HTTP date.
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }
}

/// `scheme://host:port` with the default port filled in.
fn origin_of(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!(
        "{scheme}://{}:{port}",
        uri.host().unwrap_or_default().to_ascii_lowercase()
    )
}

/// Whether a status is worth another attempt.
fn retryable(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || (s.is_server_error()
            && !matches!(
                s,
                StatusCode::NOT_IMPLEMENTED
                    | StatusCode::HTTP_VERSION_NOT_SUPPORTED
                    | StatusCode::INSUFFICIENT_STORAGE
            ))
}

/// `key="value"` pairs of a `Bearer` challenge.
fn challenge(headers: &HeaderMap) -> Option<HashMap<String, String>> {
    let v = headers.get(http::header::WWW_AUTHENTICATE)?.to_str().ok()?;
    let rest = v
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| v.trim().strip_prefix("bearer "))?;
    let mut out = HashMap::new();
    let mut s = rest;
    while let Some((k, after)) = s.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            },
            None => match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            },
        };
        out.insert(k, value.to_string());
        s = next;
    }
    Some(out)
}

/// The chain of an error's causes on one line.
fn causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    msg
}

impl Client {
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .with_context(|| format!("invalid registry URL {base:?}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(anyhow!(
                "invalid registry URL {base:?}: expected http://host[:port] or https://host[:port]"
            ))
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Client {
            origin: origin_of(&uri),
            base,
            timeout,
            credentials: Credentials::None,
            source: "none".into(),
            retry: Retry::default(),
            tokens: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
            inner: HyperClient::builder(TokioExecutor::new()).build(https),
        })
    }

    /// A client for `ep` with the credentials [`super::creds::resolve`] finds for it.
    pub fn for_endpoint(
        ep: &super::profile::Endpoint,
        timeout: Duration,
        retry: Retry,
    ) -> anyhow::Result<Client> {
        let r = super::creds::resolve(ep)?;
        let c = Client::new(&ep.url, timeout)?
            .with_credentials(r.credentials)
            .with_retry(retry);
        Ok(c.with_source(r.source))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `authorization` (a whole header value) with every request to the registry.
    pub fn with_authorization(self, authorization: Option<String>) -> Client {
        match authorization {
            Some(h) => self.with_credentials(Credentials::Header(h)),
            None => self.with_credentials(Credentials::None),
        }
    }

    pub fn with_credentials(mut self, c: Credentials) -> Client {
        self.source = match c {
            Credentials::None => "none".into(),
            _ => "given to this command".into(),
        };
        self.credentials = c;
        self
    }

    /// Says where the credentials came from in errors ("from profile ci", "of user ann").
    pub fn with_source(mut self, source: String) -> Client {
        self.source = source;
        self
    }

    pub fn with_retry(mut self, r: Retry) -> Client {
        self.retry = r;
        self
    }

    /// Where the credentials in use came from ("none" without any).
    pub fn credentials_source(&self) -> &str {
        &self.source
    }

    /// GETs `path`; connection failures and timeouts become "failed to connect to registry".
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// Sends `method` to `path` without a body.
    pub async fn send(&self, method: Method, path: &str) -> anyhow::Result<Reply> {
        self.request(method, path, None).await
    }

    /// Sends `method` to `path` with an optional JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let mut headers = HeaderMap::new();
        if json.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
        }
        self.execute(method, path, headers, Bytes::from(json.unwrap_or_default()))
            .await
    }

    /// Sends a request to `path` (on the registry) with retries, redirects and
    /// credentials, and reads the answer; a 401 with a `Bearer` challenge is answered
    /// once with a token.
    pub async fn execute(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        Ok(self
            .run(&method, path, &headers, &body, true)
            .await?
            .into_reply())
    }

    /// As [`Client::execute`], but the answer's body is left to the caller, to stream
    /// (a blob download). Retries and the timeout cover the answer's head only; a body
    /// that breaks off is the caller's to resume (with `Range`).
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> anyhow::Result<Streamed> {
        let raw = self.run(&method, path, &headers, &body, false).await?;
        let body = match raw.body {
            RawBody::Stream(b) => b,
            RawBody::Full(_) => return Err(anyhow!("{path}: the answer was read already")),
        };
        Ok(Streamed {
            status: raw.status,
            headers: raw.headers,
            body,
            attempts: raw.attempts,
        })
    }

    async fn run(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
        collect: bool,
    ) -> anyhow::Result<Raw> {
        let start = Instant::now();
        let last = self
            .last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(_, until)| *until > Instant::now());
        let auth = match &last {
            Some((t, _)) => Some(format!("Bearer {t}")),
            None => self.authorization("").await?,
        };
        let mut r = self
            .retried(method, path, headers, body, auth.as_deref(), collect)
            .await?;
        if r.status == StatusCode::UNAUTHORIZED {
            // Basic credentials the registry checked and refused are not tried again at
            // its token endpoint (that would count a second failed login); nor are
            // those the token endpoint refuses: the 401 is the answer.
            let basic = matches!(self.credentials, Credentials::Basic { .. });
            let refused = basic && last.is_none() && r.refused();
            let answered = match refused {
                true => None,
                false => match self.answer_challenge(&r.headers).await {
                    Err(_) if basic => None,
                    other => other?,
                },
            };
            if let Some(token) = answered {
                let attempts = r.attempts;
                let auth = format!("Bearer {token}");
                let until = self
                    .lock_tokens()
                    .values()
                    .find(|(t, _)| *t == token)
                    .map(|(_, until)| *until)
                    .unwrap_or_else(Instant::now);
                *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, until));
                r = self
                    .retried(method, path, headers, body, Some(&auth), collect)
                    .await?;
                r.attempts += attempts;
            }
        }
        r.elapsed = start.elapsed();
        Ok(r)
    }

    /// The `Authorization` for a request; OAuth2 credentials fetch a token for `scope`.
    async fn authorization(&self, scope: &str) -> anyhow::Result<Option<String>> {
        match &self.credentials {
            Credentials::OAuth2 { .. } => {
                Ok(Some(format!("Bearer {}", self.token(scope, None).await?)))
            }
            c => Ok(c.header()),
        }
    }

    /// A token for a 401's `Bearer` challenge, if the credentials can get one.
    async fn answer_challenge(&self, headers: &HeaderMap) -> anyhow::Result<Option<String>> {
        let Some(c) = challenge(headers) else {
            return Ok(None);
        };
        let scope = c.get("scope").cloned().unwrap_or_default();
        match &self.credentials {
            Credentials::OAuth2 { .. } if !scope.is_empty() => self
                .token(&scope, c.get("service").map(String::as_str))
                .await
                .map(Some),
            Credentials::Basic { .. } => {
                let Some(realm) = c.get("realm") else {
                    return Ok(None);
                };
                // Credentials go to the registry's own origin only.
                let same = realm
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.host().is_some() && origin_of(&u) == self.origin);
                if !same {
                    return Ok(None);
                }
                self.token(&scope, c.get("service").map(String::as_str))
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A bearer token from the registry's `/token` (cached per scope): the
    /// client-credentials grant for OAuth2, a Basic-authenticated GET otherwise.
    async fn token(&self, scope: &str, service: Option<&str>) -> anyhow::Result<String> {
        if let Some((t, until)) = self.lock_tokens().get(scope) {
            if *until > Instant::now() {
                return Ok(t.clone());
            }
        }
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let mut params = Vec::new();
        if let Some(s) = service {
            params.push(format!("service={}", enc(s)));
        }
        if !scope.is_empty() {
            params.push(format!("scope={}", enc(scope)));
        }
        let r = match &self.credentials {
            Credentials::OAuth2 {
                client_id,
                client_secret,
            } => {
                params.push("grant_type=client_credentials".into());
                params.push(format!("client_id={}", enc(client_id)));
                params.push(format!("client_secret={}", enc(client_secret)));
                let mut h = HeaderMap::new();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                self.with_retries(
                    &Method::POST,
                    "/token",
                    &h,
                    &Bytes::from(params.join("&")),
                    None,
                )
                .await?
            }
            c => {
                let path = format!("/token?{}", params.join("&"));
                self.with_retries(
                    &Method::GET,
                    &path,
                    &HeaderMap::new(),
                    &Bytes::new(),
                    c.header().as_deref(),
                )
                .await?
            }
        };
        if !r.status.is_success() {
            return Err(self.status_error(&r, "token"));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| anyhow!("token: the registry's answer is not JSON: {e}"))?;
        let t = v["access_token"]
            .as_str()
            .or_else(|| v["token"].as_str())
            .ok_or_else(|| anyhow!("token: the registry's answer has no access_token"))?
            .to_string();
        // Docker's token spec: 60 s when the answer does not say.
        let ttl = v["expires_in"]
            .as_u64()
            .unwrap_or(60)
            .saturating_sub(10)
            .max(1);
        let until = Instant::now() + Duration::from_secs(ttl);
        self.lock_tokens()
            .insert(scope.to_string(), (t.clone(), until));
        Ok(t)
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One request with its body read, retried as the policy says.
    async fn with_retries(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
        auth: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let raw = self
            .retried(method, path, headers, body, auth, true)
            .await?;
        Ok(raw.into_reply())
    }

    /// One request, retried as the policy says; with `collect` the body is read within
    /// each attempt (so a reply that breaks off is retried too), else the body is left
    /// to the caller.
    async fn retried(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
        auth: Option<&str>,
        collect: bool,
    ) -> anyhow::Result<Raw> {
        let mut n = 0u32;
        loop {
            let result = self
                .attempt(method, path, headers, body, auth, collect)
                .await;
            let wait = match &result {
                Err(_) => self.retry.backoff(n),
                Ok(r) if retryable(r.status) => match retry_after(&r.headers) {
                    Some(w) if w > self.retry.max_retry_after => {
                        return result.map(|r| r.attempts(n + 1))
                    }
                    Some(w) => w,
                    None => self.retry.backoff(n),
                },
                Ok(_) => return result.map(|r| r.attempts(n + 1)),
            };
            if n >= self.retry.retries {
                return match result {
                    Ok(r) => Ok(r.attempts(n + 1)),
                    Err(e) if n > 0 => Err(anyhow!("{e} (after {} attempts)", n + 1)),
                    Err(e) => Err(e),
                };
            }
            drop(result);
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }

    /// One attempt within the timeout: redirects followed (`Authorization` only on the
    /// registry's origin), and with `collect` the body read.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
        auth: Option<&str>,
        collect: bool,
    ) -> anyhow::Result<Raw> {
        let start = Instant::now();
        let fut = async {
            let resp = self.follow(method, path, headers, body, auth).await?;
            let (parts, incoming) = resp.into_parts();
            let body = match collect {
                true => RawBody::Full(
                    incoming
                        .collect()
                        .await
                        .map_err(|e| {
                            anyhow!(
                                "failed to connect to registry {}: the reply broke off: {}",
                                self.base,
                                causes(&e)
                            )
                        })?
                        .to_bytes(),
                ),
                false => RawBody::Stream(incoming),
            };
            Ok::<_, anyhow::Error>(Raw {
                status: parts.status,
                headers: parts.headers,
                body,
                elapsed: Duration::ZERO,
                attempts: 1,
            })
        };
        let mut raw = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                anyhow!(
                    "failed to connect to registry {}: no answer within {:?}",
                    self.base,
                    self.timeout
                )
            })??;
        raw.elapsed = start.elapsed();
        Ok(raw)
    }

    /// One request to `url`: the user agent, the caller's headers, and `auth` only when
    /// `url` is on the registry's own origin (never on a redirect elsewhere).
    fn build(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        auth: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
        let same_origin = origin_of(&uri) == self.origin;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("user-agent", concat!("agent/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(a) = auth.filter(|_| same_origin) {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        req.body(Full::new(body))
            .with_context(|| format!("invalid URL {url}"))
    }

    /// Sends the request and follows redirects; the answer's body is not read.
    async fn follow(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
        auth: Option<&str>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let mut url = format!("{}{}", self.base, path);
        let mut method = method.clone();
        let mut body = body.clone();
        for _ in 0..=5 {
            let req = self.build(&method, &url, headers, auth, body.clone())?;
            let uri = req.uri().clone();
            let resp = self.inner.request(req).await.map_err(|e| {
                anyhow!(
                    "failed to connect to registry {}: {}",
                    self.base,
                    causes(&e)
                )
            })?;
            let status = resp.status();
            let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string);
            let (true, Some(location)) = (redirect, location) else {
                return Ok(resp);
            };
            url = resolve(&uri, &location);
            if status == StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == Method::POST)
            {
                method = Method::GET;
                body = Bytes::new();
            }
        }
        Err(anyhow!("{}{path}: too many redirects", self.base))
    }

    /// The one-line error for a failed reply to `what`, starting with the seed's words
    /// where one fits.
    pub fn status_error(&self, r: &Reply, what: &str) -> anyhow::Error {
        let (code, msg) = r.oci_error();
        let msg = match msg.is_empty() {
            true => String::from_utf8_lossy(&r.body)
                .trim()
                .chars()
                .take(200)
                .collect(),
            false => msg,
        };
        let base = &self.base;
        match r.status.as_u16() {
            401 => {
                let who = match self.credentials.is_none() {
                    true => "no credentials were sent (log in with `agent login`, set AGENT_REGISTRY_TOKEN or use a profile with auth)".to_string(),
                    false => format!("registry {base} refused the credentials ({})", self.source),
                };
                anyhow!("authentication failed: {what}: {who}: {msg}")
            }
            403 => anyhow!("permission denied: {what}: {msg}"),
            404 if matches!(
                code.as_str(),
                "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UNKNOWN" | "TAG_INVALID"
            ) =>
            {
                anyhow!("image not found in registry: {what}: {msg}")
            }
            429 => {
                let after = r
                    .retry_after()
                    .map(|d| format!(" (retry after {}s)", d.as_secs()))
                    .unwrap_or_default();
                anyhow!("rate limit exceeded: {what}: {msg}{after}")
            }
            507 => anyhow!("insufficient storage space: {what}: {msg}"),
            s => anyhow!("{what}: registry {base} answered HTTP {s}: {msg}"),
        }
    }
}

/// `location` resolved against `uri`.
fn resolve(uri: &http::Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
    format!("{scheme}://{authority}{dir}/{location}")
}

/// A reply whose body is still on the wire (blob downloads stream it to disk).
pub struct StreamReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: hyper::body::Incoming,
}

impl Client {
    /// Sends `method` to `path` with `headers` and streams the reply's body: retries,
    /// redirects (without `Authorization` off-origin) and a 401's `Bearer` challenge as
    /// [`Client::execute`]; only the response head is waited for (within the timeout),
    /// the body is the caller's to read (and to resume with `Range` when it breaks off).
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> anyhow::Result<StreamReply> {
        let mut auth = self.authorization("").await?;
        let mut challenged = false;
        let mut n = 0u32;
        loop {
            let result = self
                .follow_stream(&method, path, &headers, auth.as_deref())
                .await;
            let wait = match &result {
                Ok(r) if r.status == StatusCode::UNAUTHORIZED && !challenged => {
                    challenged = true;
                    match self.answer_challenge(&r.headers).await? {
                        Some(token) => {
                            auth = Some(format!("Bearer {token}"));
                            continue;
                        }
                        None => return result,
                    }
                }
                Err(_) => self.retry.backoff(n),
                Ok(r) if retryable(r.status) => match retry_after(&r.headers) {
                    Some(w) if w > self.retry.max_retry_after => return result,
                    Some(w) => w,
                    None => self.retry.backoff(n),
                },
                Ok(_) => return result,
            };
            if n >= self.retry.retries {
                return match result {
                    Err(e) if n > 0 => Err(anyhow!("{e} (after {} attempts)", n + 1)),
                    r => r,
                };
            }
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }

    async fn follow_stream(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        auth: Option<&str>,
    ) -> anyhow::Result<StreamReply> {
        let mut url = format!("{}{}", self.base, path);
        for _ in 0..=5 {
            let req = self.build(method, &url, headers, auth, Bytes::new())?;
            let uri = req.uri().clone();
            let resp = tokio::time::timeout(self.timeout, self.inner.request(req))
                .await
                .map_err(|_| {
                    anyhow!(
                        "failed to connect to registry {}: no answer within {:?}",
                        self.base,
                        self.timeout
                    )
                })?
                .map_err(|e| {
                    anyhow!(
                        "failed to connect to registry {}: {}",
                        self.base,
                        causes(&e)
                    )
                })?;
            let (parts, body) = resp.into_parts();
            let redirect = matches!(parts.status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = parts
                .headers
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok());
            let (true, Some(location)) = (redirect, location) else {
                return Ok(StreamReply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                });
            };
            url = resolve(&uri, location);
        }
        Err(anyhow!("{}{path}: too many redirects", self.base))
    }

    /// The registry's origin (`scheme://host:port`), to tell its own URLs from others.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Turns a `Location` the registry sent (absolute or not) into a path on it, or `None`
    /// when it points at another origin.
    pub fn path_of(&self, location: &str) -> Option<String> {
        if !location.contains("://") {
            return Some(match location.starts_with('/') {
                true => location.to_string(),
                false => format!("/{location}"),
            });
        }
        let uri: http::Uri = location.parse().ok()?;
        if origin_of(&uri) != self.origin {
            return None;
        }
        let base_path = self
            .base
            .parse::<http::Uri>()
            .ok()
            .map(|b| b.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Some(pq.strip_prefix(&base_path).unwrap_or(pq).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let r = Retry {
            retries: 5,
            base: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(1),
        };
        for (n, lo, hi) in [
            (0, 50, 100),
            (1, 100, 200),
            (2, 200, 400),
            (3, 250, 500),
            (30, 250, 500),
        ] {
            let d = r.backoff(n).as_millis();
            assert!((lo..=hi).contains(&d), "retry {n}: {d} ms");
        }
    }

    #[test]
    fn what_is_retried() {
        for s in [429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 301, 400, 401, 403, 404, 409, 416, 501, 507] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn origins_and_redirect_targets() {
        let u: http::Uri = "http://Reg.example/v2/x/blobs/sha256:1".parse().unwrap();
        assert_eq!(origin_of(&u), "http://reg.example:80");
        let s: http::Uri = "https://reg.example:443/".parse().unwrap();
        assert_eq!(origin_of(&s), "https://reg.example:443");
        assert_eq!(resolve(&u, "/a?b=1"), "http://Reg.example/a?b=1");
        assert_eq!(resolve(&u, "c"), "http://Reg.example/v2/x/blobs/c");
        assert_eq!(
            resolve(&u, "https://cdn.example/x"),
            "https://cdn.example/x"
        );
        assert_eq!(resolve(&u, "//cdn.example/x"), "http://cdn.example/x");
    }

    #[test]
    fn bearer_challenges_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(
                r#"Bearer realm="http://r.example/token",service="r.example",scope="repository:a/b:pull,push""#,
            ),
        );
        let c = challenge(&h).unwrap();
        assert_eq!(c["realm"], "http://r.example/token");
        assert_eq!(c["service"], "r.example");
        assert_eq!(c["scope"], "repository:a/b:pull,push");
    }
}
