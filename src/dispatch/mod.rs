//! Dispatch: the one way down from the listener to a handler. Every request goes
//! route (`web::route`) -> authenticate (`auth`) -> limit (`limits`) -> authorize
//! (`authz.rs`) -> handler (`handlers/`) -> access log (`access.rs`), whichever listener
//! or routing form (`?ns=`, a host, a path prefix) reached it. Errors become OCI error
//! responses here and only here.

mod access;
mod authz;

use crate::app::App;
use crate::auth::{Identity, RepoKind};
use crate::config::Action;
use crate::error::{Error, Result};
use crate::handlers::{
    self, admin, blobs, health, listing, manifests, token, uploads, CacheStatus, Ctx,
};
use crate::metrics::Source;
use crate::mirror::{Proxy, Target};
use crate::oci::{ErrorCode, RepoName};
use crate::web::body::{error_response, Body, BoxError, ReqBody};
use crate::web::route::{self as router, Route};
use crate::web::{query, query_get};
use access::{AccessLogged, Finished, Outcome};
use authz::{auth_error, challenge, deny, loopback_dev, require_admin};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The listener's entry points on the shared state: `app.handle(req, peer)`.
pub trait Handle {
    /// Routes and serves one request; never fails (errors are OCI error responses).
    fn handle<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>;

    /// The admin listener's entry: health, metrics and `/admin/...`; 404 for the rest.
    fn handle_admin<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>;
}

impl Handle for Arc<App> {
    fn handle<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        handle(self, req, peer)
    }

    fn handle_admin<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        handle_admin(self, req, peer)
    }
}

/// The admin listener's entry: health, metrics and `/admin/...`; 404 for the rest.
async fn handle_admin<B>(app: &Arc<App>, req: Request<B>, peer: SocketAddr) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let admin_route = matches!(
        router::parse(req.uri().path()),
        Route::Healthz | Route::Readyz | Route::Health | Route::Metrics | Route::Admin(_)
    );
    match admin_route {
        true => handle(app, req, peer).await,
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
async fn handle<B>(app: &Arc<App>, req: Request<B>, peer: SocketAddr) -> Response<Body>
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
        client: app.client_ip(peer.ip(), req.headers()),
        cache: CacheStatus::Bypass,
        upstream: None,
        ns: None,
        identity: None,
        served_from: None,
    };
    let head = method == Method::HEAD;
    let mut resp = match dispatch(app, route, req, &mut ctx).await {
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
        *resp.body_mut() = crate::web::body::empty();
    }
    let h = resp.headers_mut();
    use crate::web::body::{DOCKER_DISTRIBUTION_API_VERSION, OCI_NAMESPACE, X_CACHE};
    h.insert(
        DOCKER_DISTRIBUTION_API_VERSION,
        HeaderValue::from_static("registry/2.0"),
    );
    if let Some(ns) = &ctx.ns {
        h.insert(OCI_NAMESPACE, crate::web::body::hv(ns));
    }
    if ctx.upstream.is_some() {
        h.insert(X_CACHE, HeaderValue::from_static(ctx.cache.as_str()));
    }
    let elapsed = start.elapsed();
    crate::metrics::request(crate::metrics::Finished {
        route: ctx.route,
        method: &method,
        status: resp.status(),
        cache: match ctx.upstream {
            Some(_) => ctx.cache.as_str(),
            None => "none",
        },
        served: served(&ctx, &method, &resp),
        elapsed,
    });
    let done = Finished {
        app: app.clone(),
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

/// Authenticate, rate-limit, resolve the name (hosted or which upstream), authorize the
/// action, and call the handler: hosted ([`hosted`]) or mirrored ([`proxied`]).
async fn dispatch(
    app: &Arc<App>,
    route: Route<'_>,
    req: Request<ReqBody>,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    if req.headers().contains_key(crate::cluster::PEER_HEADER) {
        return peer_request(app, route, req, ctx).await;
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let id = match app.auth.authenticate(authorization, ctx.client).await {
        Ok(id) => id,
        Err(e) => return Err(auth_error(app, e, req.headers())),
    };
    ctx.identity = id.user.clone();
    // Authenticated clients have a quota of their own wherever they connect from.
    app.limits()
        .check(&route, ctx.peer, req.headers(), id.user.as_deref())?;
    let m = req.method().clone();
    let name = match route.repo() {
        Some(n) => repo(n)?,
        None => {
            return match route {
                Route::Base if m == Method::GET || m == Method::HEAD => {
                    // With users, anonymous clients are asked to log in here: Docker
                    // and podman only send credentials after a challenge on /v2/.
                    match id.is_anonymous() && app.auth.has_identities() {
                        true => Err(challenge(app, req.headers(), None, false)),
                        false => Ok(health::base()),
                    }
                }
                Route::Token if m == Method::GET || m == Method::POST => {
                    token::handle(app, id, req, ctx).await
                }
                Route::Admin(path) => {
                    if path != "whoami" {
                        require_admin(app, &id, &req, ctx)?;
                    }
                    admin::handle(app, &id, path, req, ctx).await
                }
                Route::Healthz => Ok(health::healthz()),
                Route::Readyz => Ok(health::readyz(app).await),
                Route::Health => Ok(health::detailed(app).await),
                Route::Metrics if m == Method::GET || m == Method::HEAD => Ok(health::metrics(app)),
                Route::Search if m == Method::GET => {
                    crate::handlers::search::handle(app, &id, req.uri()).await
                }
                Route::Catalog if m == Method::GET => {
                    let visible = |r: &str| app.may_read(&id, r);
                    listing::catalog(app, req.uri(), &visible).await
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
    let mirror = app.mirror();
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
                && (pushing || app.storage.is_hosted(name.as_str())) =>
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
            let exists = app.storage.is_hosted(name.as_str());
            let dev = loopback_dev(app, &id, ctx.client);
            let kind = RepoKind::Hosted { exists };
            if !dev && !app.auth.allowed(&id, name.as_str(), kind, action) {
                if let (Some(p), Action::Pull) = (&shadowed, action) {
                    return Err(shadowed_refusal(app, &id, &name, p, route, req, ctx).await);
                }
                return Err(deny(app, &id, name.as_str(), action, req.headers(), ctx));
            }
            let mount_ok = match (&route, query_get(&q, "from")) {
                (Route::UploadStart(_), Some(from)) => dev || app.may_read(&id, from),
                // A mount without `from` takes the blob from any repository.
                (Route::UploadStart(_), None) => dev || app.auth.is_admin(&id),
                _ => false,
            };
            let resp = hosted(app, route, &name, req, mount_ok, ctx).await?;
            // Only a write that stored content (201: a blob, a mount, a manifest)
            // makes a name hosted; an upload started, patched or cancelled does
            // not, so it never shadows the upstream's repository of that name.
            if write && resp.status() == StatusCode::CREATED {
                app.storage.mark_hosted(name.as_str()).await?;
                if !exists {
                    app.auth
                        .remember_visibility(name.as_str())
                        .map_err(|e| Error::Internal(e.to_string()))?;
                }
            }
            Ok(resp)
        }
        Target::Proxy(p) => {
            if !app
                .auth
                .allowed(&id, name.as_str(), RepoKind::Mirrored, Action::Pull)
            {
                return Err(deny(
                    app,
                    &id,
                    name.as_str(),
                    Action::Pull,
                    req.headers(),
                    ctx,
                ));
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
            match proxied(app, route, &name, &p, req, ctx).await {
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
    app: &Arc<App>,
    id: &Identity,
    name: &RepoName,
    p: &Proxy,
    route: Route<'_>,
    req: Request<ReqBody>,
    ctx: &mut Ctx,
) -> Error {
    let n = name.as_str();
    if !app.auth.allowed(id, n, RepoKind::Mirrored, Action::Pull) {
        return deny(app, id, n, Action::Pull, req.headers(), ctx);
    }
    ctx.upstream = Some(p.upstream.name().to_string());
    ctx.ns = p.ns.clone();
    let headers = req.headers().clone();
    match proxied(app, route, name, p, req, ctx).await {
        Ok(_) => deny(app, id, n, Action::Pull, &headers, ctx),
        Err(e) => e,
    }
}

/// A blob request from another node of the cluster (it carries
/// `X-Agent-Registry-Peer`): authenticated by its signature with the shared secret only,
/// never by client credentials, and refused before anything else happens when the
/// signature is missing, wrong or stale (or this node has no cluster). Only blob GETs and
/// HEADs of an upstream's repository; served through the normal mirror path (which sees
/// the header and fills from the upstream itself: a peer request never goes on to
/// another peer).
async fn peer_request(
    app: &Arc<App>,
    route: Route<'_>,
    req: Request<ReqBody>,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let m = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let value = req
        .headers()
        .get(crate::cluster::PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = app
        .cluster
        .as_ref()
        .is_some_and(|c| c.verify(value, &m, &target));
    if !ok {
        crate::metrics::peer_request("refused");
        return Err(Error::client(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "peer request refused: no cluster here, or a missing, wrong or stale signature",
        ));
    }
    crate::metrics::peer_request("accepted");
    ctx.identity = Some("cluster-peer".into());
    let (Route::Blob(name, d), true) = (route, m == Method::GET || m == Method::HEAD) else {
        return Err(Error::bad_request(
            ErrorCode::Unsupported,
            "a peer request is a blob GET or HEAD",
        ));
    };
    let name = repo(name)?;
    let q = query(req.uri());
    let Some(ns) = query_get(&q, "ns") else {
        return Err(Error::bad_request(
            ErrorCode::Unsupported,
            "a peer request names its upstream with ?ns=",
        ));
    };
    let Target::Proxy(p) = app.mirror().resolve(&name, Some(ns), None)? else {
        return Err(Error::bad_request(
            ErrorCode::Unsupported,
            "a peer request is for an upstream's blob",
        ));
    };
    ctx.upstream = Some(p.upstream.name().to_string());
    ctx.ns = p.ns.clone();
    handlers::mirror::blobs::get(app, &p, d, req.headers(), m == Method::HEAD, ctx).await
}

/// A request for a repository hosted here.
async fn hosted(
    app: &Arc<App>,
    route: Route<'_>,
    name: &RepoName,
    req: Request<ReqBody>,
    mount_ok: bool,
    ctx: &Ctx,
) -> Result<Response<Body>> {
    let m = req.method().clone();
    match route {
        Route::Tags(_) if m == Method::GET => listing::tags(app, name, req.uri()).await,
        Route::Referrers(_, d) if m == Method::GET => {
            listing::referrers(app, name, d, req.uri()).await
        }
        Route::Manifest(_, r) => match m {
            Method::GET => manifests::get(app, name, r, false, ctx).await,
            Method::HEAD => manifests::get(app, name, r, true, ctx).await,
            Method::PUT => manifests::put(app, name, r, req).await,
            Method::DELETE => manifests::delete(app, name, r).await,
            _ => Err(unsupported(&m)),
        },
        Route::Blob(_, d) => match m {
            Method::GET => blobs::get(app, name, d, req.headers(), false).await,
            Method::HEAD => blobs::get(app, name, d, req.headers(), true).await,
            Method::DELETE => blobs::delete(app, name, d).await,
            _ => Err(unsupported(&m)),
        },
        Route::UploadStart(_) if m == Method::POST => {
            uploads::start(app, name, req, mount_ok).await
        }
        Route::Upload(_, id) => {
            let id = uploads::parse_id(id)?;
            match m {
                Method::GET => uploads::progress_of(app, name, id).await,
                Method::PATCH => uploads::patch(app, name, id, req).await,
                Method::PUT => uploads::finish(app, name, id, req).await,
                Method::DELETE => uploads::cancel(app, name, id).await,
                _ => Err(unsupported(&m)),
            }
        }
        _ => Err(unsupported(&m)),
    }
}

/// A request for a repository of an upstream: reads only.
async fn proxied(
    app: &Arc<App>,
    route: Route<'_>,
    name: &RepoName,
    p: &Proxy,
    req: Request<ReqBody>,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let m = req.method().clone();
    let head = m == Method::HEAD;
    match route {
        Route::Manifest(_, r) if m == Method::GET || head => {
            handlers::mirror::manifests::get(app, p, name, r, head, ctx).await
        }
        Route::Blob(_, d) if m == Method::GET || head => {
            handlers::mirror::blobs::get(app, p, d, req.headers(), head, ctx).await
        }
        Route::Tags(_) if m == Method::GET => {
            handlers::mirror::listing::tags(app, name, p, req.uri(), ctx).await
        }
        Route::Referrers(_, d) if m == Method::GET => {
            handlers::mirror::listing::referrers(app, p, d, req.uri(), ctx).await
        }
        _ if m == Method::GET || head => Err(unsupported(&m)),
        _ => Err(Error::client(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!(
                "{name} is mirrored from upstream {}: pushes and deletes are not supported here",
                p.upstream.name()
            ),
        )),
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

/// The body bytes of a successful GET of a repository's object, and where they came
/// from (`agent_registry_served_bytes_total{source}`).
fn served(ctx: &Ctx, method: &Method, resp: &Response<Body>) -> Option<(Source, u64)> {
    let ok = matches!(resp.status(), StatusCode::OK | StatusCode::PARTIAL_CONTENT);
    if *method != Method::GET || ctx.repo.is_none() || !ok {
        return None;
    }
    let n = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| http_body::Body::size_hint(resp.body()).exact())?;
    Some((served_from(ctx), n))
}

/// Hosted content is on disk; proxied content came from the upstream on a miss, else
/// from the cache (disk unless the handler said memory).
fn served_from(ctx: &Ctx) -> Source {
    if let Some(s) = ctx.served_from {
        return s;
    }
    match (ctx.upstream.is_some(), ctx.cache) {
        (false, _) => Source::Disk,
        (true, CacheStatus::Miss | CacheStatus::Coalesced | CacheStatus::Bypass) => {
            Source::Upstream
        }
        (true, CacheStatus::Hit | CacheStatus::Stale | CacheStatus::Revalidated) => Source::Disk,
    }
}
