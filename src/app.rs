//! `App`: the configuration and the storage behind one `Arc`, and `App::handle`, which
//! turns any request into a response and never fails.

use crate::config::{Config, HostedWrites};
use crate::error::{Error, Result};
use crate::oci::{ErrorCode, RepoName};
use crate::server::body::{error_response, Body, BoxError, ReqBody};
use crate::server::router::{self, Route};
use crate::server::{blobs, health, listing, manifests, uploads};
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
    draining: AtomicBool,
}

/// What one request did, for the access log line written once at the end.
pub struct Ctx {
    pub route: &'static str,
    pub repo: Option<String>,
    pub peer: SocketAddr,
}

impl App {
    pub fn new(config: Config) -> std::result::Result<Arc<App>, crate::storage::StorageError> {
        let storage = Arc::new(Storage::open(&config.storage.data_dir)?);
        Ok(Arc::new(App {
            config,
            storage,
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
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        tracing::info!(
            target: "access",
            client = %ctx.peer.ip(),
            method = %method,
            route = ctx.route,
            repo = ctx.repo.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            duration_us = start.elapsed().as_micros() as u64,
        );
        resp
    }

    async fn dispatch(
        self: &Arc<Self>,
        route: Route<'_>,
        req: Request<ReqBody>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>> {
        let method = req.method().clone();
        if matches!(
            method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            self.check_write(ctx.peer)?;
        }
        let m = &method;
        match route {
            Route::Base if m == Method::GET || m == Method::HEAD => Ok(health::base()),
            Route::Healthz => Ok(health::healthz()),
            Route::Readyz => Ok(health::readyz(self).await),
            Route::Health => Ok(health::detailed(self).await),
            Route::Catalog if m == Method::GET => listing::catalog(self, req.uri()).await,
            Route::Tags(n) if m == Method::GET => listing::tags(self, &repo(n)?, req.uri()).await,
            Route::Referrers(n, d) if m == Method::GET => {
                listing::referrers(self, &repo(n)?, d, req.uri()).await
            }
            Route::Manifest(n, r) => {
                let name = repo(n)?;
                match *m {
                    Method::GET => manifests::get(self, &name, r, false).await,
                    Method::HEAD => manifests::get(self, &name, r, true).await,
                    Method::PUT => manifests::put(self, &name, r, req).await,
                    Method::DELETE => manifests::delete(self, &name, r).await,
                    _ => Err(unsupported(m)),
                }
            }
            Route::Blob(n, d) => {
                let name = repo(n)?;
                match *m {
                    Method::GET => blobs::get(self, &name, d, req.headers(), false).await,
                    Method::HEAD => blobs::get(self, &name, d, req.headers(), true).await,
                    Method::DELETE => blobs::delete(self, &name, d).await,
                    _ => Err(unsupported(m)),
                }
            }
            Route::UploadStart(n) if m == Method::POST => {
                uploads::start(self, &repo(n)?, req).await
            }
            Route::Upload(n, id) => {
                let name = repo(n)?;
                let id = uploads::parse_id(id)?;
                match *m {
                    Method::GET => uploads::progress_of(self, &name, id).await,
                    Method::PATCH => uploads::patch(self, &name, id, req).await,
                    Method::PUT => uploads::finish(self, &name, id, req).await,
                    Method::DELETE => uploads::cancel(self, &name, id).await,
                    _ => Err(unsupported(m)),
                }
            }
            Route::NotFound => Err(Error::not_found(ErrorCode::Unsupported, "no such endpoint")),
            _ => Err(unsupported(m)),
        }
    }

    /// Until access control exists, writes are accepted only from loopback clients.
    fn check_write(&self, peer: SocketAddr) -> Result<()> {
        match self.config.server.hosted_writes {
            HostedWrites::Any => Ok(()),
            HostedWrites::Loopback if peer.ip().is_loopback() => Ok(()),
            HostedWrites::Loopback => Err(Error::client(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "writes are accepted only from loopback clients (server.hosted_writes = \"loopback\")",
            )),
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
