//! `App`: the configuration and the storage behind one `Arc`, and `App::handle`, which
//! turns any request into a response and never fails.

use crate::cache::memory::MemoryTier;
use crate::cache::DiskTier;
use crate::config::{Config, HostedWrites};
use crate::error::{Error, Result};
use crate::mirror::{self, Mirror, Proxy, Target};
use crate::oci::{ErrorCode, RepoName};
use crate::server::body::{error_response, Body, BoxError, ReqBody};
use crate::server::router::{self, Route};
use crate::server::{admin_cache, blobs, health, listing, manifests, uploads};
use crate::storage::Storage;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct App {
    pub config: Config,
    pub storage: Arc<Storage>,
    pub mirror: Mirror,
    /// Small hot objects (manifests, tag rows, referrers, small blobs) kept in RAM,
    /// capped at `cache.memory.max_size`.
    pub memory: MemoryTier,
    /// The disk tier's index: what proxied content is cached, capped at `cache.max_size`.
    pub cache: Arc<DiskTier>,
    /// Per-client request rate limits (`[limits]`).
    pub limits: crate::server::limits::Limits,
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
    pub cache: CacheStatus,
    pub upstream: Option<String>,
    pub ns: Option<String>,
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
}

impl App {
    pub fn new(config: Config) -> std::result::Result<Arc<App>, StartError> {
        crate::metrics::install();
        let storage = Arc::new(Storage::open(&config.storage.data_dir)?);
        let mirror = Mirror::new(&config)?;
        let limits = crate::server::limits::Limits::new(&config.limits);
        let memory = MemoryTier::new(config.cache.memory.max_size);
        let cache = DiskTier::open(storage.clone(), memory.clone(), &config.cache)
            .map_err(crate::storage::StorageError::from)?;
        mirror.fills.attach(cache.clone());
        Ok(Arc::new(App {
            config,
            storage,
            mirror,
            memory,
            cache,
            limits,
            draining: AtomicBool::new(false),
        }))
    }

    /// Marks the server as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
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
            cache: CacheStatus::Bypass,
            upstream: None,
            ns: None,
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
        h.insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        if let Some(ns) = &ctx.ns {
            h.insert("oci-namespace", crate::server::body::hv(ns));
        }
        if ctx.upstream.is_some() {
            h.insert("x-cache", HeaderValue::from_static(ctx.cache.as_str()));
        }
        let elapsed = start.elapsed();
        crate::metrics::request(&ctx, &method, &resp, elapsed);
        let bytes = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info!(
            target: "access",
            client = %ctx.peer.ip(),
            // Access control is not there yet: every request is anonymous.
            identity = "-",
            method = %method,
            route = ctx.route,
            repo = ctx.repo.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            bytes,
            cache = ctx.cache.as_str(),
            upstream = ctx.upstream.as_deref().unwrap_or("-"),
            duration_us = elapsed.as_micros() as u64,
        );
        resp
    }

    async fn dispatch(
        self: &Arc<Self>,
        route: Route<'_>,
        req: Request<ReqBody>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>> {
        self.limits.check(&route, ctx.peer, req.headers())?;
        let m = req.method().clone();
        let name = match route.repo() {
            Some(n) => repo(n)?,
            None => {
                return match route {
                    Route::Base if m == Method::GET || m == Method::HEAD => Ok(health::base()),
                    Route::Healthz => Ok(health::healthz()),
                    Route::Readyz => Ok(health::readyz(self).await),
                    Route::Health => Ok(health::detailed(self).await),
                    Route::Metrics if m == Method::GET || m == Method::HEAD => {
                        Ok(health::metrics(self))
                    }
                    Route::Catalog if m == Method::GET => listing::catalog(self, req.uri()).await,
                    Route::AdminCacheStats if m == Method::GET => {
                        self.require_admin(&req, ctx)?;
                        admin_cache::stats(self)
                    }
                    Route::AdminCachePurge if m == Method::POST => {
                        self.require_admin(&req, ctx)?;
                        admin_cache::purge(self, req.uri()).await
                    }
                    Route::AdminGc if m == Method::POST => {
                        self.require_admin(&req, ctx)?;
                        admin_cache::gc(self, req.uri()).await
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
        let target = match self.mirror.resolve(&name, query_get(&q, "ns"), host)? {
            // A plain name that is (or, with a push, becomes) a hosted repository.
            Target::Proxy(p)
                if p.via_default
                    && self.config.mirror.hosted_on_push
                    && (write || self.storage.is_hosted(name.as_str())) =>
            {
                Target::Hosted(name.clone())
            }
            t => t,
        };
        match target {
            Target::Hosted(name) => {
                if write {
                    self.check_write(ctx.peer)?;
                }
                let resp = self.hosted(route, &name, req).await?;
                if write && m != Method::DELETE && resp.status().is_success() {
                    self.storage.mark_hosted(name.as_str()).await?;
                }
                Ok(resp)
            }
            Target::Proxy(p) => {
                ctx.upstream = Some(p.upstream.name().to_string());
                ctx.ns = p.ns.clone();
                self.proxied(route, &name, &p, req, ctx).await
            }
        }
    }

    /// A request for a repository hosted here.
    async fn hosted(
        self: &Arc<Self>,
        route: Route<'_>,
        name: &RepoName,
        req: Request<ReqBody>,
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
            Route::UploadStart(_) if m == Method::POST => uploads::start(self, name, req).await,
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

    /// Until access control exists, writes are accepted only from loopback clients.
    fn check_write(&self, peer: SocketAddr) -> Result<()> {
        match self.config.server.hosted_writes {
            HostedWrites::Any => Ok(()),
            HostedWrites::Loopback if peer.ip().is_loopback() => Ok(()),
            HostedWrites::Loopback => {
                crate::metrics::auth_failure();
                Err(Error::client(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "writes are accepted only from loopback clients (server.hosted_writes = \"loopback\")",
                ))
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

impl App {
    /// The guard of the admin endpoints (`/admin/...`). For now loopback peers only;
    /// access control replaces the body with the admin-permission check.
    fn require_admin(&self, _req: &Request<ReqBody>, ctx: &Ctx) -> Result<()> {
        if ctx.peer.ip().is_loopback() {
            return Ok(());
        }
        crate::metrics::auth_failure();
        Err(Error::client(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "admin endpoints are available only to loopback clients",
        ))
    }
}
