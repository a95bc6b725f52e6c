//! `FakeUpstream`: a fault-injecting OCI registry on 127.0.0.1:0 for what a real one will
//! not do on demand (wrong bytes, truncated or stalled bodies, 429/5xx bursts, 401
//! challenges, ignored ranges, a black hole), with hit counters. It runs on its own runtime thread, so
//! sync and async tests can both use it, and stops when dropped.

use agent_registry::oci::Digest;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// How the fake wants to be authenticated.
#[derive(Debug, Clone, Default)]
pub enum AuthMode {
    #[default]
    Anonymous,
    /// The token flow: 401 with a Bearer challenge whose realm is this fake's `/token`.
    Bearer {
        /// `expires_in` of issued tokens; `None` leaves the field out.
        expires_in: Option<u64>,
        /// Basic credentials the token endpoint demands; `None` = anonymous tokens.
        credentials: Option<(String, String)>,
        /// Refuse every token, even fresh ones (an upstream that never lets us in).
        reject_tokens: bool,
    },
    /// `Authorization: Basic` with these credentials.
    Basic(String, String),
    /// `Authorization: Bearer <this>`, as a static token.
    StaticToken(String),
}

impl AuthMode {
    pub fn bearer(expires_in: u64) -> AuthMode {
        AuthMode::Bearer {
            expires_in: Some(expires_in),
            credentials: None,
            reject_tokens: false,
        }
    }
}

/// Runtime switches. One-shot counters (`too_many`, `server_errors`) count down per request.
#[derive(Debug, Clone, Default)]
pub struct Switches {
    pub auth: AuthMode,
    /// Flip one byte in the middle of blob bodies.
    pub corrupt: bool,
    /// Close the connection after this many body bytes.
    pub truncate_after: Option<usize>,
    /// Pause `.1` after `.0` body bytes (once per response).
    pub stall_after: Option<(usize, Duration)>,
    /// Pause before sending the response head.
    pub stall_head: Option<Duration>,
    /// Answer the next K requests with 429 and `retry_after` (if set).
    pub too_many: u32,
    pub retry_after: Option<String>,
    /// Answer the next K requests with `server_error_status` (503 when unset).
    pub server_errors: u32,
    pub server_error_status: Option<StatusCode>,
    /// Answer 200 with the whole body instead of 206.
    pub ignore_range: bool,
    /// Send bodies at this many bytes per millisecond.
    pub pace: Option<usize>,
    /// Sent as `ratelimit-remaining` on every response.
    pub ratelimit_remaining: Option<String>,
    /// A black hole: read each request (counted in the hits) and never answer.
    pub black_hole: bool,
}

#[derive(Default)]
struct State {
    blobs: Mutex<HashMap<(String, String), Bytes>>,
    manifests: Mutex<HashMap<(String, String), (String, Bytes)>>,
    tags: Mutex<HashMap<(String, String), String>>,
    switches: Mutex<Switches>,
    hits: Mutex<HashMap<(String, String), u64>>,
    blob_gets: Mutex<HashMap<String, u64>>,
    /// token -> (scope, valid until)
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    token_requests: AtomicU64,
    /// The Authorization header of each token request (None = anonymous).
    token_auth: Mutex<Vec<Option<String>>>,
    issued: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    pub fn start() -> FakeUpstream {
        let state = Arc::new(State::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let stream = tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(st, addr, req).await) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    });
                }
            });
        });
        FakeUpstream {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stores a blob in `repo`; returns its digest.
    pub fn add_blob(&self, repo: &str, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes).to_string();
        lock(&self.state.blobs).insert((repo.into(), digest.clone()), bytes);
        digest
    }

    /// Stores a manifest in `repo`, tagged `tag` unless empty; returns its digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> String {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes).to_string();
        lock(&self.state.manifests)
            .insert((repo.into(), digest.clone()), (media_type.into(), bytes));
        if !tag.is_empty() {
            self.set_tag(repo, tag, &digest);
        }
        digest
    }

    pub fn set_tag(&self, repo: &str, tag: &str, digest: &str) {
        lock(&self.state.tags).insert((repo.into(), tag.into()), digest.into());
    }

    /// Changes the switches: `fake.set(|s| s.server_errors = 2)`.
    pub fn set(&self, f: impl FnOnce(&mut Switches)) {
        f(&mut lock(&self.state.switches));
    }

    /// Requests seen with `method` for exactly `path` (no query).
    pub fn hits(&self, method: &str, path: &str) -> u64 {
        let key = (method.to_string(), path.to_string());
        lock(&self.state.hits).get(&key).copied().unwrap_or(0)
    }

    pub fn total_hits(&self) -> u64 {
        lock(&self.state.hits).values().sum()
    }

    /// GET requests for a blob with this digest, whatever their outcome.
    pub fn blob_gets(&self, digest: &str) -> u64 {
        lock(&self.state.blob_gets)
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// The Authorization header of every token request so far (None: anonymous).
    pub fn token_auth(&self) -> Vec<Option<String>> {
        lock(&self.state.token_auth).clone()
    }

    pub fn reset_counters(&self) {
        lock(&self.state.hits).clear();
        lock(&self.state.blob_gets).clear();
        lock(&self.state.token_auth).clear();
        self.state.token_requests.store(0, Ordering::SeqCst);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn handle(st: Arc<State>, addr: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    *lock(&st.hits)
        .entry((method.to_string(), path.clone()))
        .or_default() += 1;
    let route = Route::parse(&path);
    if let (&Method::GET, Route::Blob(_, d)) = (&method, &route) {
        *lock(&st.blob_gets).entry(d.clone()).or_default() += 1;
    }
    let sw = lock(&st.switches).clone();
    if sw.black_hole {
        std::future::pending::<()>().await;
    }
    if let Some(d) = sw.stall_head {
        tokio::time::sleep(d).await;
    }
    let mut resp = answer(
        &st,
        addr,
        &sw,
        &method,
        &route,
        req.headers(),
        req.uri().query(),
    );
    if let Some(v) = sw
        .ratelimit_remaining
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert("ratelimit-remaining", v);
    }
    resp
}

fn answer(
    st: &State,
    addr: SocketAddr,
    sw: &Switches,
    method: &Method,
    route: &Route,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response<Body> {
    if let Route::Token = route {
        return token(st, sw, headers, query);
    }
    if let Some(resp) = one_shot_fault(st) {
        return resp;
    }
    if let Some(resp) = check_auth(st, addr, sw, route, headers) {
        return resp;
    }
    let head = method == Method::HEAD;
    match route {
        Route::Base => json(StatusCode::OK, "{}"),
        Route::Blob(repo, digest) => match lock(&st.blobs).get(&(repo.clone(), digest.clone())) {
            Some(b) => {
                let mut data = b.to_vec();
                if sw.corrupt && !data.is_empty() {
                    let mid = data.len() / 2;
                    data[mid] ^= 0xff;
                }
                content(
                    sw,
                    headers,
                    Bytes::from(data),
                    "application/octet-stream",
                    digest,
                    head,
                )
            }
            None => oci_error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            ),
        },
        Route::Manifest(repo, reference) => {
            let digest = match reference.contains(':') {
                true => Some(reference.clone()),
                false => lock(&st.tags)
                    .get(&(repo.clone(), reference.clone()))
                    .cloned(),
            };
            let found = digest.and_then(|d| {
                let m = lock(&st.manifests).get(&(repo.clone(), d.clone())).cloned();
                m.map(|m| (d, m))
            });
            match found {
                Some((d, (media_type, bytes))) => {
                    content(sw, headers, bytes, &media_type, &d, head)
                }
                None => oci_error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                ),
            }
        }
        Route::Tags(repo) => {
            let mut tags: Vec<String> = lock(&st.tags)
                .keys()
                .filter(|(r, _)| r == repo)
                .map(|(_, t)| t.clone())
                .collect();
            tags.sort();
            // A repository the registry knows nothing of is unknown, as in distribution.
            let known = !tags.is_empty()
                || lock(&st.manifests).keys().any(|(r, _)| r == repo)
                || lock(&st.blobs).keys().any(|(r, _)| r == repo);
            if !known {
                return oci_error(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    "repository name not known to registry",
                );
            }
            json(
                StatusCode::OK,
                &serde_json::json!({"name": repo, "tags": tags}).to_string(),
            )
        }
        Route::Token | Route::Other => {
            oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "not found")
        }
    }
}

/// 429 or 5xx while their counters last.
fn one_shot_fault(st: &State) -> Option<Response<Body>> {
    let mut sw = lock(&st.switches);
    if sw.server_errors > 0 {
        sw.server_errors -= 1;
        let status = sw
            .server_error_status
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Some(oci_error(status, "UNKNOWN", "injected server error"));
    }
    if sw.too_many > 0 {
        sw.too_many -= 1;
        let mut r = oci_error(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "slow down",
        );
        if let Some(v) = sw
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Some(r);
    }
    None
}

/// `None` when the request may pass; else the 401.
fn check_auth(
    st: &State,
    addr: SocketAddr,
    sw: &Switches,
    route: &Route,
    headers: &HeaderMap,
) -> Option<Response<Body>> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let repo = route.repo();
    let bearer_challenge = || {
        let scope = repo
            .map(|r| format!(",scope=\"repository:{r}:pull,push\""))
            .unwrap_or_default();
        format!("Bearer realm=\"http://{addr}/token\",service=\"fake-upstream\"{scope}")
    };
    let challenge = match &sw.auth {
        AuthMode::Anonymous => return None,
        AuthMode::Basic(user, pass) => {
            if given == Some(format!("Basic {}", base64(&format!("{user}:{pass}"))).as_str()) {
                return None;
            }
            "Basic realm=\"fake-upstream\"".to_string()
        }
        AuthMode::StaticToken(t) => {
            if given == Some(format!("Bearer {t}").as_str()) {
                return None;
            }
            bearer_challenge()
        }
        AuthMode::Bearer { reject_tokens, .. } => {
            let token = given.and_then(|g| g.strip_prefix("Bearer "));
            let valid = token
                .and_then(|t| lock(&st.tokens).get(t).cloned())
                .is_some_and(|(scope, until)| {
                    until > Instant::now()
                        && repo.is_none_or(|r| {
                            scope
                                .split(' ')
                                .any(|s| s == format!("repository:{r}:pull"))
                        })
                });
            if valid && !reject_tokens {
                return None;
            }
            bearer_challenge()
        }
    };
    let mut r = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("challenge"),
    );
    Some(r)
}

/// `GET /token?service=..&scope=..`: issues `fake-token-N` for the scope.
fn token(st: &State, sw: &Switches, headers: &HeaderMap, query: Option<&str>) -> Response<Body> {
    st.token_requests.fetch_add(1, Ordering::SeqCst);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    lock(&st.token_auth).push(given.clone());
    let (expires_in, credentials) = match &sw.auth {
        AuthMode::Bearer {
            expires_in,
            credentials,
            ..
        } => (*expires_in, credentials.clone()),
        _ => (Some(60), None),
    };
    if let Some((user, pass)) = credentials {
        if given.as_deref() != Some(format!("Basic {}", base64(&format!("{user}:{pass}"))).as_str())
        {
            return json(
                StatusCode::UNAUTHORIZED,
                r#"{"details":"incorrect username or password"}"#,
            );
        }
    }
    let scope: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let n = st.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("fake-token-{n}");
    let life = Duration::from_secs(expires_in.unwrap_or(60));
    lock(&st.tokens).insert(token.clone(), (scope.join(" "), Instant::now() + life));
    let mut body = serde_json::json!({"token": token, "access_token": token});
    if let Some(e) = expires_in {
        body["expires_in"] = e.into();
    }
    json(StatusCode::OK, &body.to_string())
}

/// A blob or manifest answer: Range (206 / 416) unless ignored, faults in the body.
fn content(
    sw: &Switches,
    headers: &HeaderMap,
    data: Bytes,
    media_type: &str,
    digest: &str,
    head: bool,
) -> Response<Body> {
    let total = data.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !sw.ignore_range);
    let (status, slice, content_range) = match range.map(|r| parse_range(r, total)) {
        None => (StatusCode::OK, data, None),
        Some(Some((a, b))) => (
            StatusCode::PARTIAL_CONTENT,
            data.slice(a..=b),
            Some(format!("bytes {a}-{b}/{total}")),
        ),
        Some(None) => {
            let mut r = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "range not satisfiable",
            );
            r.headers_mut()
                .insert(header::CONTENT_RANGE, hv(&format!("bytes */{total}")));
            return r;
        }
    };
    let len = slice.len();
    let body = if head {
        Full::new(Bytes::new())
            .map_err(|e| match e {})
            .boxed_unsync()
    } else {
        faulty_body(sw, slice)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(media_type));
    h.insert(header::CONTENT_LENGTH, hv(&len.to_string()));
    h.insert("docker-content-digest", hv(digest));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, hv(&cr));
    }
    r
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` -> inclusive (start, end); None if unsatisfiable.
fn parse_range(value: &str, total: usize) -> Option<(usize, usize)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: usize = n.parse().ok()?;
            (total.checked_sub(n.min(total))?, total.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, total.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<usize>().ok()?.min(total.checked_sub(1)?),
        ),
    };
    (start <= end && end < total).then_some((start, end))
}

/// A body in chunks that obeys `pace`, `stall_after` and `truncate_after`.
fn faulty_body(sw: &Switches, data: Bytes) -> Body {
    struct S {
        data: Bytes,
        pos: usize,
        stall: Option<(usize, Duration)>,
        truncate: Option<usize>,
        pace: Option<usize>,
        done: bool,
    }
    let s = S {
        data,
        pos: 0,
        stall: sw.stall_after,
        truncate: sw.truncate_after,
        pace: sw.pace,
        done: false,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        if let Some((at, d)) = s.stall {
            if s.pos >= at {
                s.stall = None;
                tokio::time::sleep(d).await;
            }
        }
        if s.truncate.is_some_and(|t| s.pos >= t) {
            // Let hyper flush what was sent (head included) before the connection drops.
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.done = true;
            let e = std::io::Error::other("fake upstream: truncated by switch");
            return Some((Err(e), s));
        }
        if s.pos >= s.data.len() {
            return None;
        }
        let mut end = (s.pos + 16 * 1024).min(s.data.len());
        if let Some(t) = s.truncate {
            end = end.min(t);
        }
        if let Some((at, _)) = s.stall {
            if at > s.pos {
                end = end.min(at);
            }
        }
        if let Some(p) = s.pace {
            end = end.min(s.pos + p.max(1));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let chunk = s.data.slice(s.pos..end);
        s.pos = end;
        Some((Ok(Frame::data(chunk)), s))
    });
    StreamBody::new(stream).boxed_unsync()
}

enum Route {
    Base,
    Token,
    Blob(String, String),
    Manifest(String, String),
    Tags(String),
    Other,
}

impl Route {
    /// `/v2/<repo>/(blobs|manifests)/<ref>` and `/v2/<repo>/tags/list`, parsed from the right.
    fn parse(path: &str) -> Route {
        if path == "/token" {
            return Route::Token;
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Route::Other;
        };
        if rest.is_empty() {
            return Route::Base;
        }
        if let Some(repo) = rest.strip_suffix("/tags/list") {
            return Route::Tags(repo.to_string());
        }
        let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
        match parts.as_slice() {
            [r, "blobs", repo] => Route::Blob(repo.to_string(), r.to_string()),
            [r, "manifests", repo] => Route::Manifest(repo.to_string(), r.to_string()),
            _ => Route::Other,
        }
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Route::Blob(r, _) | Route::Manifest(r, _) | Route::Tags(r) => Some(r),
            _ => None,
        }
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}

fn json(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string(),
    )
}

/// Standard base64 with padding, for comparing Basic credentials.
pub fn base64(input: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.as_bytes().chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[(n >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}
