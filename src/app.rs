//! `App`: the configuration and the storage behind one `Arc`, and `App::handle`, which
//! turns any request into a response and never fails.

use crate::auth::{Auth, AuthError, Identity, RepoKind};
use crate::cache::memory::MemoryTier;
use crate::cache::DiskTier;
use crate::config::{Action, Config, HostedWrites};
use crate::error::{Error, Result};
use crate::mirror::{self, Mirror, Proxy, Target};
use crate::oci::{ErrorCode, RepoName};
use crate::server::body::{error_response, Body, BoxError, ReqBody};
use crate::server::router::{self, Route};
use crate::server::{admin, blobs, health, listing, manifests, token, uploads};
use crate::storage::Storage;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct App {
    /// The configuration the server started with. `[mirror]`, `[upstreams]`, `[limits]`
    /// and `[auth]` may since have been reloaded: see [`App::config_snapshot`].
    pub config: Config,
    pub storage: Arc<Storage>,
    /// Upstreams and routing; replaced whole by [`App::reload`].
    mirror: ArcSwap<Mirror>,
    /// Blob fills in flight, shared by every generation of `mirror`.
    pub fills: Arc<crate::cache::Fills>,
    /// Small hot objects (manifests, tag rows, referrers, small blobs) kept in RAM,
    /// capped at `cache.memory.max_size`.
    pub memory: MemoryTier,
    /// The disk tier's index: what proxied content is cached, capped at `cache.max_size`.
    pub cache: Arc<DiskTier>,
    /// Per-client request rate limits (`[limits]`); replaced by [`App::reload`].
    limits: ArcSwap<crate::server::limits::Limits>,
    /// The reloadable sections as last loaded.
    live: ArcSwap<Config>,
    /// Users, rules, tokens, the audit and access logs.
    pub auth: Arc<Auth>,
    draining: AtomicBool,
}

/// How a request was served with respect to the cache; `as_str` feeds logs, metrics
/// and the `X-Cache` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Coalesced,
    Stale,
    Revalidated,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Stale => "stale",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// What one request did, for the access log line written once at the end.
pub struct Ctx {
    pub route: &'static str,
    pub repo: Option<String>,
    pub peer: SocketAddr,
    /// The client: the peer, or behind a trusted proxy the address `X-Forwarded-For`
    /// names. Logs, audit records, login limits and the loopback rule use it.
    pub client: std::net::IpAddr,
    pub cache: CacheStatus,
    pub upstream: Option<String>,
    pub ns: Option<String>,
    /// The authenticated user; `None` when anonymous.
    pub identity: Option<String>,
    /// Set by a handler that knows better than `cache` where the body came from (the
    /// memory tier); feeds `agent_registry_served_bytes_total{source}`.
    pub served_from: Option<crate::metrics::Source>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("{0}")]
    Auth(String),
}

impl App {
    pub fn new(config: Config) -> std::result::Result<Arc<App>, StartError> {
        crate::metrics::install();
        let storage = Arc::new(Storage::open(&config.storage.data_dir)?);
        let mirror = Mirror::new(&config)?;
        let limits = crate::server::limits::Limits::new(&config.limits);
        let auth = Auth::new(&config.auth, &config.storage.data_dir).map_err(StartError::Auth)?;
        let memory = MemoryTier::new(config.cache.memory.max_size);
        let cache = DiskTier::open(storage.clone(), memory.clone(), &config.cache)
            .map_err(crate::storage::StorageError::from)?;
        let fills = Arc::new(crate::cache::Fills::default());
        fills.attach(cache.clone());
        Ok(Arc::new(App {
            live: ArcSwap::from_pointee(config.clone()),
            config,
            storage,
            mirror: ArcSwap::from_pointee(mirror),
            fills,
            memory,
            cache,
            limits: ArcSwap::from_pointee(limits),
            auth: Arc::new(auth),
            draining: AtomicBool::new(false),
        }))
    }

    /// The configuration in effect: the started one with the reloaded sections.
    pub fn config_snapshot(&self) -> Config {
        let live = self.live.load();
        let mut c = self.config.clone();
        c.mirror = live.mirror.clone();
        c.upstreams = live.upstreams.clone();
        c.limits = live.limits.clone();
        c.auth = live.auth.clone();
        c
    }

    /// The upstreams and routing in effect.
    pub fn mirror(&self) -> Arc<Mirror> {
        self.mirror.load_full()
    }

    /// The `[limits]` in effect (the server reads the body and connection limits here).
    pub fn limits(&self) -> Arc<crate::server::limits::Limits> {
        self.limits.load_full()
    }

    /// Applies `new`'s `[mirror]`, `[upstreams]`, `[limits]` and `[auth]` all at once, or
    /// none of them when any part fails to build (the old ones keep serving). Returns
    /// the keys that changed but need a restart to take effect.
    pub fn reload(&self, new: &Config) -> std::result::Result<Vec<&'static str>, String> {
        let mirror = Mirror::reusing(new, Some(&self.mirror())).map_err(|e| e.to_string())?;
        let policy = crate::auth::AuthPolicy::build(&new.auth)?;
        let limits = crate::server::limits::Limits::new(&new.limits);
        self.mirror.store(Arc::new(mirror));
        self.limits.store(Arc::new(limits));
        self.auth.install(policy);
        self.live.store(Arc::new(new.clone()));
        let old = &self.config;
        let mut restart = Vec::new();
        if new.server != old.server {
            restart.push("server");
        }
        if new.storage != old.storage {
            restart.push("storage");
        }
        if new.log != old.log {
            restart.push("log");
        }
        if new.cache != old.cache {
            restart.push("cache");
        }
        if new.tls.enabled != old.tls.enabled || new.tls.client_ca_file != old.tls.client_ca_file {
            restart.push("tls");
        }
        Ok(restart)
    }

    /// Marks the server as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The admin listener's entry: health, metrics and `/admin/...`; 404 for the rest.
    pub async fn handle_admin<B>(
        self: &Arc<Self>,
        req: Request<B>,
        peer: SocketAddr,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let admin_route = matches!(
            router::parse(req.uri().path()),
            Route::Healthz | Route::Readyz | Route::Health | Route::Metrics | Route::Admin(_)
        );
        match admin_route {
            true => self.handle(req, peer).await,
            false => {
                let e = Error::not_found(
                    ErrorCode::Unsupported,
                    "the admin listener serves /healthz, /readyz, /health, /metrics and /admin/ only",
                );
                error_response(&e, req.method() == Method::HEAD)
            }
        }
    }

    /// Routes and serves one request. Errors become OCI error responses here and only here.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>, peer: SocketAddr) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let req: Request<ReqBody> = req.map(|b| b.map_err(Into::into).boxed_unsync());
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let route = router::parse(&path);
        let mut ctx = Ctx {
            route: route.label(),
            repo: route.repo().map(str::to_string),
            peer,
            client: self.client_ip(peer.ip(), req.headers()),
            cache: CacheStatus::Bypass,
            upstream: None,
            ns: None,
            identity: None,
            served_from: None,
        };
        let head = method == Method::HEAD;
        let mut resp = match self.dispatch(route, req, &mut ctx).await {
            Ok(r) => r,
            Err(e) => {
                if let Error::Internal(m) = &e {
                    tracing::error!(method = %method, path = %path, error = %m, "request failed");
                }
                error_response(&e, head)
            }
        };
        if head {
            // A HEAD response never has a body. HTTP/1 drops one, but over HTTP/2 it would
            // be sent and the client resets the stream (HEAD /v2/, HEAD /healthz).
            *resp.body_mut() = crate::server::body::empty();
        }
        let h = resp.headers_mut();
        use crate::server::body::{DOCKER_DISTRIBUTION_API_VERSION, OCI_NAMESPACE, X_CACHE};
        h.insert(
            DOCKER_DISTRIBUTION_API_VERSION,
            HeaderValue::from_static("registry/2.0"),
        );
        if let Some(ns) = &ctx.ns {
            h.insert(OCI_NAMESPACE, crate::server::body::hv(ns));
        }
        if ctx.upstream.is_some() {
            h.insert(X_CACHE, HeaderValue::from_static(ctx.cache.as_str()));
        }
        let elapsed = start.elapsed();
        crate::metrics::request(&ctx, &method, &resp, elapsed);
        let done = Finished {
            app: self.clone(),
            start,
            client: ctx.client,
            identity: ctx.identity.take(),
            method,
            route: ctx.route,
            repo: ctx.repo.take(),
            status: resp.status().as_u16(),
            length: resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.parse().ok()),
            cache: ctx.cache.as_str(),
            upstream: ctx.upstream.take(),
        };
        if http_body::Body::is_end_stream(resp.body()) {
            // Nothing to wait for: a HEAD, an empty body. Logged with the length it
            // announced (the size of the resource a HEAD describes).
            let length = done.length;
            done.log(Outcome::Ok, length);
            return resp;
        }
        // The line is written when the body ended, with what was actually sent.
        resp.map(|b| AccessLogged::wrap(b, done))
    }

    async fn dispatch(
        self: &Arc<Self>,
        route: Route<'_>,
        req: Request<ReqBody>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>> {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let id = match self.auth.authenticate(authorization, ctx.client).await {
            Ok(id) => id,
            Err(e) => return Err(self.auth_error(e, req.headers())),
        };
        ctx.identity = id.user.clone();
        // Authenticated clients have a quota of their own wherever they connect from.
        self.limits
            .load()
            .check(&route, ctx.peer, req.headers(), id.user.as_deref())?;
        let m = req.method().clone();
        let name = match route.repo() {
            Some(n) => repo(n)?,
            None => {
                return match route {
                    Route::Base if m == Method::GET || m == Method::HEAD => {
                        // With users, anonymous clients are asked to log in here: Docker
                        // and podman only send credentials after a challenge on /v2/.
                        match id.is_anonymous() && self.auth.has_identities() {
                            true => Err(self.challenge(req.headers(), None, false)),
                            false => Ok(health::base()),
                        }
                    }
                    Route::Token if m == Method::GET || m == Method::POST => {
                        token::handle(self, id, req, ctx).await
                    }
                    Route::Admin(path) => {
                        if path != "whoami" {
                            self.require_admin(&id, &req, ctx)?;
                        }
                        admin::handle(self, &id, path, req, ctx).await
                    }
                    Route::Healthz => Ok(health::healthz()),
                    Route::Readyz => Ok(health::readyz(self).await),
                    Route::Health => Ok(health::detailed(self).await),
                    Route::Metrics if m == Method::GET || m == Method::HEAD => {
                        Ok(health::metrics(self))
                    }
                    Route::Search if m == Method::GET => {
                        crate::server::search::handle(self, &id, req.uri()).await
                    }
                    Route::Catalog if m == Method::GET => {
                        let visible = |r: &str| self.may_read(&id, r);
                        listing::catalog(self, req.uri(), &visible).await
                    }
                    Route::NotFound => {
                        Err(Error::not_found(ErrorCode::Unsupported, "no such endpoint"))
                    }
                    _ => Err(unsupported(&m)),
                };
            }
        };
        let q = query(req.uri());
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        let write = matches!(
            m,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let mirror = self.mirror();
        // Upload sessions belong to a push whatever their method (a GET of an upload's
        // progress included), so they are routed as writes.
        let pushing = write || matches!(route, Route::UploadStart(_) | Route::Upload(..));
        // A plain name that is (or, with a push, becomes) a hosted repository, in front
        // of the default upstream's repository of that name.
        let mut shadowed = None;
        let target = match mirror.resolve(&name, query_get(&q, "ns"), host)? {
            Target::Proxy(p)
                if p.via_default
                    && mirror.hosted_on_push
                    && (pushing || self.storage.is_hosted(name.as_str())) =>
            {
                shadowed = Some(p);
                Target::Hosted(name.clone())
            }
            t => t,
        };
        let action = match (&route, &m) {
            // Upload sessions are part of a push, whatever the method.
            (Route::UploadStart(_) | Route::Upload(..), _) => Action::Push,
            (_, &Method::GET | &Method::HEAD) => Action::Pull,
            (_, &Method::DELETE) => Action::Delete,
            _ => Action::Push,
        };
        match target {
            Target::Hosted(name) => {
                let exists = self.storage.is_hosted(name.as_str());
                let dev = self.loopback_dev(&id, ctx.client);
                let kind = RepoKind::Hosted { exists };
                if !dev && !self.auth.allowed(&id, name.as_str(), kind, action) {
                    if let (Some(p), Action::Pull) = (&shadowed, action) {
                        return Err(self.shadowed_refusal(&id, &name, p, route, req, ctx).await);
                    }
                    return Err(self.deny(&id, name.as_str(), action, req.headers(), ctx));
                }
                let mount_ok = match (&route, query_get(&q, "from")) {
                    (Route::UploadStart(_), Some(from)) => dev || self.may_read(&id, from),
                    // A mount without `from` takes the blob from any repository.
                    (Route::UploadStart(_), None) => dev || self.auth.is_admin(&id),
                    _ => false,
                };
                let resp = self.hosted(route, &name, req, mount_ok).await?;
                // Only a write that stored content (201: a blob, a mount, a manifest)
                // makes a name hosted; an upload started, patched or cancelled does
                // not, so it never shadows the upstream's repository of that name.
                if write && resp.status() == StatusCode::CREATED {
                    self.storage.mark_hosted(name.as_str()).await?;
                    if !exists {
                        self.auth
                            .remember_visibility(name.as_str())
                            .map_err(|e| Error::Internal(e.to_string()))?;
                    }
                }
                Ok(resp)
            }
            Target::Proxy(p) => {
                if !self
                    .auth
                    .allowed(&id, name.as_str(), RepoKind::Mirrored, Action::Pull)
                {
                    return Err(self.deny(&id, name.as_str(), Action::Pull, req.headers(), ctx));
                }
                ctx.upstream = Some(p.upstream.name().to_string());
                ctx.ns = p.ns.clone();
                // A push to a new plain name starts with blob HEADs (does the registry
                // have it?) before its first write makes the name hosted. When the
                // default upstream cannot answer (air-gapped), this registry answers that
                // check itself: the name holds no hosted content (else it would be
                // hosted above), so the blob is unknown here. GETs still answer 502/504.
                let push_check = matches!(route, Route::Blob(..))
                    && m == Method::HEAD
                    && p.via_default
                    && mirror.hosted_on_push;
                // (Known down, the upstream is not asked at all: 503, answered the same way.)
                match self.proxied(route, &name, &p, req, ctx).await {
                    Err(e @ (Error::Client { .. } | Error::Unavailable { .. }))
                        if push_check && e.status().is_server_error() =>
                    {
                        Err(Error::not_found(
                            ErrorCode::BlobUnknown,
                            format!("blob unknown in {name}; the upstream did not answer: {e}"),
                        ))
                    }
                    answered => answered,
                }
            }
        }
    }

    /// A pull of a plain-named hosted repository by someone who may not pull it. A plain
    /// name nobody pushed is the default upstream's, so such a repository answers as the
    /// upstream does (its 404, its 400, its failure), which is what the same request for
    /// a never-pushed name gets; only where the upstream has the object, whose bytes are
    /// not served under a hosted name, is it refused.
    async fn shadowed_refusal(
        self: &Arc<Self>,
        id: &Identity,
        name: &RepoName,
        p: &Proxy,
        route: Route<'_>,
        req: Request<ReqBody>,
        ctx: &mut Ctx,
    ) -> Error {
        let n = name.as_str();
        if !self.auth.allowed(id, n, RepoKind::Mirrored, Action::Pull) {
            return self.deny(id, n, Action::Pull, req.headers(), ctx);
        }
        ctx.upstream = Some(p.upstream.name().to_string());
        ctx.ns = p.ns.clone();
        let headers = req.headers().clone();
        match self.proxied(route, name, p, req, ctx).await {
            Ok(_) => self.deny(id, n, Action::Pull, &headers, ctx),
            Err(e) => e,
        }
    }

    /// A request for a repository hosted here.
    async fn hosted(
        self: &Arc<Self>,
        route: Route<'_>,
        name: &RepoName,
        req: Request<ReqBody>,
        mount_ok: bool,
    ) -> Result<Response<Body>> {
        let m = req.method().clone();
        match route {
            Route::Tags(_) if m == Method::GET => listing::tags(self, name, req.uri()).await,
            Route::Referrers(_, d) if m == Method::GET => {
                listing::referrers(self, name, d, req.uri()).await
            }
            Route::Manifest(_, r) => match m {
                Method::GET => manifests::get(self, name, r, false).await,
                Method::HEAD => manifests::get(self, name, r, true).await,
                Method::PUT => manifests::put(self, name, r, req).await,
                Method::DELETE => manifests::delete(self, name, r).await,
                _ => Err(unsupported(&m)),
            },
            Route::Blob(_, d) => match m {
                Method::GET => blobs::get(self, name, d, req.headers(), false).await,
                Method::HEAD => blobs::get(self, name, d, req.headers(), true).await,
                Method::DELETE => blobs::delete(self, name, d).await,
                _ => Err(unsupported(&m)),
            },
            Route::UploadStart(_) if m == Method::POST => {
                uploads::start(self, name, req, mount_ok).await
            }
            Route::Upload(_, id) => {
                let id = uploads::parse_id(id)?;
                match m {
                    Method::GET => uploads::progress_of(self, name, id).await,
                    Method::PATCH => uploads::patch(self, name, id, req).await,
                    Method::PUT => uploads::finish(self, name, id, req).await,
                    Method::DELETE => uploads::cancel(self, name, id).await,
                    _ => Err(unsupported(&m)),
                }
            }
            _ => Err(unsupported(&m)),
        }
    }

    /// A request for a repository of an upstream: reads only.
    async fn proxied(
        self: &Arc<Self>,
        route: Route<'_>,
        name: &RepoName,
        p: &Proxy,
        req: Request<ReqBody>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>> {
        let m = req.method().clone();
        let head = m == Method::HEAD;
        match route {
            Route::Manifest(_, r) if m == Method::GET || head => mirror::manifests::get(self, p, r, head, ctx).await,
            Route::Blob(_, d) if m == Method::GET || head => {
                mirror::blobs::get(self, p, d, req.headers(), head, ctx).await
            }
            Route::Tags(_) if m == Method::GET => mirror::listing::tags(self, name, p, req.uri(), ctx).await,
            Route::Referrers(_, d) if m == Method::GET => mirror::listing::referrers(self, p, d, req.uri(), ctx).await,
            _ if m == Method::GET || head => Err(unsupported(&m)),
            _ => Err(Error::client(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                format!("{name} is mirrored from upstream {}: pushes and deletes are not supported here", p.upstream.name()),
            )),
        }
    }

    /// `server.hosted_writes = "loopback"`: an anonymous client on loopback may do
    /// anything to hosted repositories (development and tests).
    /// The client is the forwarded one behind a trusted proxy: a proxy on loopback does
    /// not make its clients local.
    fn loopback_dev(&self, id: &Identity, client: std::net::IpAddr) -> bool {
        self.config.server.hosted_writes == HostedWrites::Loopback
            && id.is_anonymous()
            && client.is_loopback()
    }

    /// How the rules see `name`, whatever the action. A plain name that a push could make
    /// hosted is judged as hosted even while it is not: a pull of it from the upstream
    /// needs no grant (`Auth::allowed` lets it through as mirrored content), and a grant
    /// given or withheld for it (the token endpoint's) must not tell a private hosted
    /// repository from a name nobody pushed.
    fn repo_kind(&self, name: &RepoName) -> RepoKind {
        let exists = self.storage.is_hosted(name.as_str());
        let mirror = self.mirror();
        match mirror.resolve(name, None, None) {
            Ok(Target::Proxy(p)) if !(p.via_default && mirror.hosted_on_push) => RepoKind::Mirrored,
            _ => RepoKind::Hosted { exists },
        }
    }

    /// Whether `id` may pull `repo` (filters listings, checks mounts).
    pub fn may_read(&self, id: &Identity, repo: &str) -> bool {
        match RepoName::parse(repo) {
            Ok(name) => {
                let kind = self.repo_kind(&name);
                self.auth.allowed(id, repo, kind, Action::Pull)
            }
            Err(_) => false,
        }
    }

    /// Of `wanted`, what `id` may do on `name` (the token endpoint's grants).
    pub fn grantable(&self, id: &Identity, name: &RepoName, wanted: &[Action]) -> Vec<Action> {
        let kind = self.repo_kind(name);
        wanted
            .iter()
            .copied()
            .filter(|a| self.auth.allowed(id, name.as_str(), kind, *a))
            .collect()
    }

    /// The admin API needs `admin` on `*` (or the loopback development mode).
    fn require_admin(&self, id: &Identity, req: &Request<ReqBody>, ctx: &Ctx) -> Result<()> {
        if self.loopback_dev(id, ctx.client) || self.auth.is_admin(id) {
            return Ok(());
        }
        let scope = "registry:*:*".to_string();
        Err(self.deny_scoped(id, scope, Action::Admin, "admin API", req.headers(), ctx))
    }

    /// The refusal of a request `id` may not make. It never depends on whether the
    /// repository exists: a private repository looks exactly like a missing one.
    fn deny(
        &self,
        id: &Identity,
        repo: &str,
        action: Action,
        headers: &http::HeaderMap,
        ctx: &Ctx,
    ) -> Error {
        let actions = match action {
            Action::Pull => "pull",
            Action::Push => "pull,push",
            Action::Delete => "delete",
            Action::Admin => "*",
        };
        let scope = format!("repository:{repo}:{actions}");
        self.deny_scoped(id, scope, action, repo, headers, ctx)
    }

    fn deny_scoped(
        &self,
        id: &Identity,
        scope: String,
        action: Action,
        what: &str,
        headers: &http::HeaderMap,
        ctx: &Ctx,
    ) -> Error {
        crate::metrics::auth_denied(action);
        let client = ctx.client.to_string();
        let detail = format!("{} {what}", action.as_str());
        self.auth.audit(
            "denied",
            id.user.as_deref(),
            Some(&client),
            ctx.repo.as_deref(),
            Some(&detail),
        );
        match &id.method {
            crate::auth::Method::Anonymous => self.challenge(headers, Some(scope), false),
            crate::auth::Method::Jwt(_) => self.challenge(headers, Some(scope), true),
            _ => Error::client(
                StatusCode::FORBIDDEN,
                ErrorCode::Denied,
                "requested access to the resource is denied",
            ),
        }
    }

    /// 401 with the token-flow challenge for `scope`.
    fn challenge(
        &self,
        headers: &http::HeaderMap,
        scope: Option<String>,
        insufficient: bool,
    ) -> Error {
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers),
            self.auth.service()
        );
        if let Some(s) = scope {
            c.push_str(&format!(",scope=\"{s}\""));
        }
        let message = match insufficient {
            true => {
                c.push_str(",error=\"insufficient_scope\"");
                "insufficient scope: the token does not grant this access"
            }
            false => "authentication required",
        };
        Error::Unauthorized {
            challenge: c,
            message: message.into(),
        }
    }

    /// The client's address: the peer, or behind a trusted proxy (`limits.trusted_proxies`)
    /// the one `X-Forwarded-For` names. Failed logins are counted against it.
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        self.limits.load().client_ip(peer, headers)
    }

    /// The token endpoint's URL: `auth.realm`, or this server as the client reached it.
    pub fn realm(&self, headers: &http::HeaderMap) -> String {
        let configured = self.auth.realm();
        if !configured.is_empty() {
            return configured;
        }
        let scheme = match self.config.tls.enabled {
            true => "https",
            false => "http",
        };
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .map(str::to_string)
            .unwrap_or_else(|| self.config.server.listen.to_string());
        format!("{scheme}://{host}/token")
    }

    fn auth_error(&self, e: AuthError, headers: &http::HeaderMap) -> Error {
        match e {
            AuthError::Blocked { retry_after } => {
                crate::metrics::auth_failure_reason("blocked");
                Error::TooManyRequests {
                    retry_after,
                    message: e.to_string(),
                }
            }
            AuthError::BadToken(_) => {
                let mut err = self.challenge(headers, None, false);
                if let Error::Unauthorized { challenge, message } = &mut err {
                    challenge.push_str(",error=\"invalid_token\"");
                    *message = e.to_string();
                }
                err
            }
            AuthError::BadCredentials { .. } | AuthError::Malformed => {
                let mut err = self.challenge(headers, None, false);
                if let Error::Unauthorized { message, .. } = &mut err {
                    *message = e.to_string();
                }
                err
            }
        }
    }
}

fn repo(name: &str) -> Result<RepoName> {
    RepoName::parse(name).map_err(|e| Error::bad_request(ErrorCode::NameInvalid, e.to_string()))
}

fn unsupported(m: &Method) -> Error {
    Error::client(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unsupported,
        format!("method {m} not allowed here"),
    )
}

/// Parses the query string into decoded pairs.
pub fn query(uri: &http::Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

pub fn location(resp: &mut Response<Body>, value: &str) {
    resp.headers_mut()
        .insert(header::LOCATION, crate::server::body::hv(value));
}

/// How a response body ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every byte was handed to the connection.
    Ok,
    /// The body broke off with an error (an upstream that failed mid-blob, a digest
    /// mismatch): the client got a truncated response.
    Failed,
    /// The connection dropped the body before its end (the client went away).
    Aborted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

/// What the access log line of a request needs once its body has ended.
struct Finished {
    app: Arc<App>,
    start: Instant,
    client: std::net::IpAddr,
    identity: Option<String>,
    method: Method,
    route: &'static str,
    repo: Option<String>,
    status: u16,
    /// The announced `Content-Length`.
    length: Option<u64>,
    cache: &'static str,
    upstream: Option<String>,
}

impl Finished {
    /// One access-log line (target `access`) and one queued record.
    fn log(self, outcome: Outcome, bytes: Option<u64>) {
        let elapsed = self.start.elapsed();
        let shown = bytes.map_or_else(|| "-".to_string(), |b| b.to_string());
        let fields = (
            self.identity.as_deref().unwrap_or("-"),
            self.repo.as_deref().unwrap_or("-"),
            self.upstream.as_deref().unwrap_or("-"),
        );
        let expected = self
            .length
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    client = %self.client,
                    identity = fields.0,
                    method = %self.method,
                    route = self.route,
                    repo = fields.1,
                    status = self.status,
                    bytes = %shown,
                    expected = %expected,
                    outcome = outcome.as_str(),
                    cache = self.cache,
                    upstream = fields.2,
                    duration_us = elapsed.as_micros() as u64,
                )
            };
        }
        // A body that broke off is a failure someone should see; a client that left
        // early is routine.
        match outcome {
            Outcome::Failed => line!(warn),
            Outcome::Ok | Outcome::Aborted => line!(info),
        }
        let auth = self.app.auth.clone();
        auth.log_access(crate::auth::store::AccessEntry {
            ts_ms: crate::auth::store::now_ms(),
            client: self.client,
            user: self.identity,
            method: self.method,
            route: self.route,
            repo: self.repo,
            status: self.status,
            bytes,
            duration_us: elapsed.as_micros() as u64,
            cache: self.cache,
            outcome: outcome.as_str(),
        });
    }
}

/// A response body that writes the request's access-log line when it ends: at its
/// last frame, at an error, or when the connection drops it early. Frames pass
/// through untouched (sendfile placeholders keep their address).
struct AccessLogged {
    inner: Body,
    sent: u64,
    done: Option<Finished>,
}

impl AccessLogged {
    fn wrap(inner: Body, done: Finished) -> Body {
        use http_body_util::BodyExt;
        AccessLogged {
            inner,
            sent: 0,
            done: Some(done),
        }
        .boxed_unsync()
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            done.log(outcome, Some(self.sent));
        }
    }
}

impl http_body::Body for AccessLogged {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(Outcome::Ok);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Outcome::Failed),
            Poll::Ready(None) => this.finish(Outcome::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AccessLogged {
    fn drop(&mut self) {
        // hyper stops polling once it has sent the announced length; anything short of
        // that is a client that went away.
        let complete = self
            .done
            .as_ref()
            .is_some_and(|d| d.length == Some(self.sent));
        self.finish(if complete {
            Outcome::Ok
        } else {
            Outcome::Aborted
        });
    }
}
