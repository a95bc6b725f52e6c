//! The HTTP server: accepts TCP connections, optionally completes a TLS handshake
//! (`tls.rs`), speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge, or h2 by ALPN) through
//! hyper-util's auto builder, hands every request to `dispatch::Handle::handle`, and shuts down
//! gracefully. Connection limits (count, count per client address, header timeout,
//! header size, idle timeout, request body timeout and rate floor) are applied here,
//! idle tracking lives in `idle.rs`, the body clocks in `body.rs`, the systemd notify protocol in
//! `systemd.rs`. Plain-TCP connections get a `crate::io::sendfile::SendfileIo` socket, so their
//! HTTP/1 blob bodies go out with sendfile(2). One file per resource next to this one.

pub mod idle;
pub mod systemd;
pub mod tls;

use crate::app::App;
use crate::config::ServerConfig;
use crate::dispatch::Handle;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tls::ServerTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Serves `app` on `listener` (HTTPS when `tls` is set) until `shutdown` flips to true,
/// then drains.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let cfg = app.config.server.clone();
    let builder = Arc::new(builder(&cfg));
    // At the limit a connection is accepted and closed at once rather than left in the
    // kernel backlog: the client fails fast instead of hanging until its own timeout,
    // and the backlog cannot fill up behind connections we would never serve.
    let slots = Arc::new(Semaphore::new(
        cfg.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    // Likewise for one address over `limits.max_connections_per_client`: at accept
    // time nothing but the TCP peer is known (no credentials, no X-Forwarded-For).
    let per_client = Arc::new(crate::limits::ConnCounts::default());
    let purge = tokio::spawn(purge_uploads(app.clone()));
    app.auth.spawn_log_writer();
    let cache_upkeep = tokio::spawn(crate::cache::admin::maintain(app.tiers()));
    // `[[preheat]]` lists kept warm (returns at once when there are none).
    let preheat = tokio::spawn(crate::handlers::preheat::keep_warm(app.clone()));
    let reload = tls.clone().map(|t| tokio::spawn(t.watch_files()));
    let mut watchdog = systemd::watchdog_interval()
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Only this loop pets the watchdog: a wedged accept loop gets restarted.
            _ = tick(&mut watchdog) => {
                systemd::notify("WATCHDOG=1");
                continue;
            }
            _ = shutdown.changed() => break,
        };
        let limits = app.limits();
        let place = match limits.connection_cap(peer.ip()) {
            None => None,
            Some(cap) => match per_client.open(peer.ip(), cap) {
                Some(place) => Some(place),
                None => {
                    tracing::debug!(client = %peer, limit = cap, "per-client connection limit reached, closing");
                    drop(stream);
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(client = %peer, limit = cfg.max_connections, "connection limit reached, closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            peer,
            tls: tls.as_ref().map(|t| t.acceptor()),
            sendfile: cfg.sendfile,
            admin_only: false,
            draining: false,
            body_limits: body_limits(limits.config()),
            idle_timeout: cfg.keep_alive_timeout,
            header_timeout: cfg.header_read_timeout,
        };
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = (permit, place);
            serve_accepted(app, builder, watcher, stream, accepted).await;
        });
    }
    app.set_draining();
    purge.abort();
    cache_upkeep.abort();
    preheat.abort();
    if let Some(reload) = reload {
        reload.abort();
    }
    let drain = async {
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(cfg.drain_timeout) => tracing::warn!("drain deadline passed, closing"),
        }
    };
    accept_while_draining(&app, &listener, tls.as_ref(), drain).await;
    drop(listener);
    // The cache's recency survives the restart.
    app.cache.flush().await;
}

/// While `drain` runs (the requests in flight at the stop finish), the listener stays
/// open so that load balancers polling `/readyz` see 503 rather than a refused
/// connection. Connections accepted now are served one request each (no keep-alive):
/// health and metrics as usual, `/readyz` 503, everything else 503 (`Conn::draining`).
async fn accept_while_draining(
    app: &Arc<App>,
    listener: &TcpListener,
    tls: Option<&Arc<ServerTls>>,
    drain: impl std::future::Future<Output = ()>,
) {
    let late = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = builder(&app.config.server);
    builder.http1().keep_alive(false);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(DRAIN_CONNECTIONS));
    tokio::pin!(drain);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut drain => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let cfg = &app.config.server;
        let accepted = Accepted {
            peer,
            tls: tls.map(|t| t.acceptor()),
            sendfile: false,
            admin_only: false,
            draining: true,
            body_limits: body_limits(app.limits().config()),
            idle_timeout: cfg.keep_alive_timeout,
            header_timeout: cfg.header_read_timeout,
        };
        let (app, builder, watcher) = (app.clone(), builder.clone(), late.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            serve_accepted(app, builder, watcher, stream, accepted).await;
        });
    }
    // Answers being written on late connections get a moment; they are small.
    let _ = tokio::time::timeout(Duration::from_secs(1), late.shutdown()).await;
}

/// Connections the listener takes at most while draining (health polls).
const DRAIN_CONNECTIONS: usize = 64;

/// A plain or TLS connection.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The HTTP/1 and HTTP/2 settings from `[server]`.
fn builder(cfg: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let header_size = usize::try_from(cfg.max_header_size).unwrap_or(usize::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's clock also runs between keep-alive requests; `idle::Activity` keeps
        // the header timeout, hyper only a backstop no shorter than the keep-alive one.
        .header_read_timeout(cfg.keep_alive_timeout.max(cfg.header_read_timeout))
        .max_buf_size(header_size)
        // Body frames are queued as they are, never copied into hyper's buffer: the
        // placeholders of `sendfile` must reach the socket by address.
        .writev(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// Waits for the next watchdog tick; never resolves when the watchdog is off.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Serves the admin listener: health, metrics and `/admin/...` only, plain HTTP, until
/// `closed` (the main listener's drain is over, so `/readyz` answers 503 here
/// throughout it); then drains its own connections.
async fn serve_admin(app: Arc<App>, listener: TcpListener, mut closed: watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let cfg = app.config.server.clone();
    let builder = Arc::new(builder(&cfg));
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closed.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let accepted = Accepted {
            peer,
            tls: None,
            sendfile: false,
            admin_only: true,
            draining: false,
            body_limits: body_limits(app.limits().config()),
            idle_timeout: cfg.keep_alive_timeout,
            header_timeout: cfg.header_read_timeout,
        };
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _permit = permit;
            serve_accepted(app, builder, watcher, stream, accepted).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(cfg.drain_timeout) => {},
    }
}

/// Open connections the admin listener takes at most.
const ADMIN_CONNECTIONS: usize = 256;

/// How an accepted connection is served (the main listener, its drain, the admin one).
struct Accepted {
    peer: SocketAddr,
    /// TLS: the handshake runs first, in the connection's task, with its own timeout.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Plain-HTTP/1 blob bodies by sendfile(2) (`server.sendfile`; never with TLS).
    sendfile: bool,
    admin_only: bool,
    draining: bool,
    body_limits: crate::web::body::BodyLimits,
    idle_timeout: Duration,
    header_timeout: Duration,
}

/// Serves one accepted connection until it ends, or until it has been idle for the
/// keep-alive timeout or slow with a request head for the header timeout.
async fn serve_accepted(
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    stream: tokio::net::TcpStream,
    a: Accepted,
) {
    let activity = idle::Activity::new();
    let conn = async {
        // Idle tracking starts after the handshake.
        let (io, slot) = match a.tls {
            None if a.sendfile => {
                let (io, slot) = crate::io::sendfile::SendfileIo::new(stream);
                (Some(Box::new(io) as Box<dyn Io>), Some(slot))
            }
            None => (Some(Box::new(stream) as Box<dyn Io>), None),
            Some(acceptor) => (
                tls::handshake(acceptor, stream, a.peer)
                    .await
                    .map(|s| Box::new(s) as Box<dyn Io>),
                None,
            ),
        };
        let Some(io) = io else { return };
        activity.touch();
        let io = idle::IdleIo::new(io, activity.clone());
        let conn = Conn {
            peer: a.peer,
            activity: &activity,
            admin_only: a.admin_only,
            draining: a.draining,
            slot,
            body_limits: a.body_limits,
        };
        serve_connection(app, &builder, watcher, io, conn).await;
    };
    tokio::select! {
        _ = conn => {}
        why = activity.expired(a.idle_timeout, Some(a.header_timeout)) => {
            tracing::debug!(client = %a.peer, reason = why, "connection closed");
        }
    }
}

/// What a connection's requests are served with.
struct Conn<'a> {
    peer: SocketAddr,
    activity: &'a Arc<idle::Activity>,
    /// Answer health, metrics and the admin API, 404 to the rest.
    admin_only: bool,
    /// Accepted after the stop began: health and metrics are answered, the rest 503.
    draining: bool,
    /// Set on plain TCP with `server.sendfile`: HTTP/1 blob bodies use sendfile(2).
    slot: Option<Arc<crate::io::sendfile::Slot>>,
    /// How slow a request body may be.
    body_limits: crate::web::body::BodyLimits,
}

/// The request body limits of `[limits]`.
fn body_limits(l: &crate::config::LimitsConfig) -> crate::web::body::BodyLimits {
    crate::web::body::BodyLimits {
        idle: l.body_idle_timeout,
        min_rate: l.body_min_rate,
    }
}

/// Serves HTTP on one connection (plain TCP or TLS) until it closes or shutdown drains it.
async fn serve_connection<I>(
    app: Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    conn: Conn<'_>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        admin_only,
        draining,
        slot,
        body_limits,
        ..
    } = conn;
    let activity = conn.activity.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        let in_flight = activity.request();
        // HTTP/2 streams share the connection: only HTTP/1 bodies may use placeholders.
        let slot = match req.version() {
            http::Version::HTTP_10 | http::Version::HTTP_11 => slot.clone(),
            _ => None,
        };
        // Every handler reads its body through the body clocks.
        let req = req.map(|b| crate::web::body::TimedBody::new(b, body_limits));
        async move {
            let health = matches!(
                crate::web::route::parse(req.uri().path()),
                crate::web::route::Route::Healthz
                    | crate::web::route::Route::Readyz
                    | crate::web::route::Route::Health
                    | crate::web::route::Route::Metrics
            );
            let response = match (admin_only, draining && !health) {
                (_, true) => shutting_down(req.method() == http::Method::HEAD),
                (true, false) => app.handle_admin(req, peer).await,
                (false, false) => crate::io::sendfile::scope(slot, app.handle(req, peer)).await,
            };
            // The request stays in flight until its response body has been sent.
            Ok::<_, std::convert::Infallible>(
                response.map(|b| idle::InFlightBody::new(b, in_flight)),
            )
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}

/// 503 for a request that arrives while the server drains.
fn shutting_down(head: bool) -> hyper::Response<crate::web::body::Body> {
    let e = crate::error::Error::client(
        http::StatusCode::SERVICE_UNAVAILABLE,
        crate::oci::ErrorCode::Unknown,
        "the server is shutting down; retry on another instance",
    );
    crate::web::body::error_response(&e, head)
}

/// Removes abandoned upload sessions every `upload_purge_interval`.
async fn purge_uploads(app: Arc<App>) {
    let cfg = &app.config.storage;
    let mut tick = tokio::time::interval(cfg.upload_purge_interval);
    loop {
        tick.tick().await;
        match app.storage.purge_uploads(cfg.upload_expiry).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "purged abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "purging uploads failed"),
        }
    }
}

/// A server running on a background task; stops (and drains) when dropped.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    tls: Option<Arc<ServerTls>>,
}

impl Running {
    /// Loads the TLS files (when `tls.enabled`), binds `app.config.server.listen` and
    /// starts serving.
    pub async fn start(app: Arc<App>) -> std::io::Result<Running> {
        let tls = match app.config.tls.enabled {
            true => Some(Arc::new(ServerTls::load(&app.config.tls).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?)),
            false => None,
        };
        let listener = TcpListener::bind(app.config.server.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let (closed_tx, closed_rx) = watch::channel(false);
        let admin = match app.config.server.admin_listen {
            Some(a) => {
                let l = TcpListener::bind(a).await?;
                let bound = l.local_addr()?;
                Some((tokio::spawn(serve_admin(app.clone(), l, closed_rx)), bound))
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(_, a)| *a);
        let main = serve(app.clone(), listener, tls.clone(), rx);
        let task = tokio::spawn(async move {
            main.await;
            let _ = closed_tx.send(true);
            if let Some((admin, _)) = admin {
                let _ = admin.await;
            }
        });
        Ok(Running {
            admin_addr,
            addr,
            app,
            shutdown: tx,
            task: Some(task),
            tls,
        })
    }

    /// Reloads the certificate, key and client CA files for new connections (open
    /// connections keep theirs). On failure the previous certificate stays in use.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Err("tls is not enabled".into()),
        }
    }

    /// Stops accepting, drains, and waits for the server task.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
