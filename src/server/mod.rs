//! The HTTP server: accepts TCP connections, optionally completes a TLS handshake
//! (`tls.rs`), speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge, or h2 by ALPN) through
//! hyper-util's auto builder, hands every request to `App::handle`, and shuts down
//! gracefully. One file per resource next to this one.

pub mod blobs;
pub mod body;
pub mod health;
pub mod listing;
pub mod manifests;
pub mod router;
pub mod tls;
pub mod uploads;

use crate::app::App;
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
use tokio::sync::watch;

/// How long in-flight requests may run after shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` (HTTPS when `tls` is set) until `shutdown` flips to true,
/// then drains.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let purge = tokio::spawn(purge_uploads(app.clone()));
    let reload = tls.clone().map(|t| tokio::spawn(t.watch_files()));
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
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        // The handshake runs in the connection's task: a slow client never stalls accept.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(app, &builder, watcher, stream, peer).await,
                Some(acceptor) => {
                    if let Some(stream) = tls::handshake(acceptor, stream, peer).await {
                        serve_connection(app, &builder, watcher, stream, peer).await;
                    }
                }
            }
        });
    }
    app.set_draining();
    purge.abort();
    if let Some(reload) = reload {
        reload.abort();
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed, closing"),
    }
}

/// Serves HTTP on one connection (plain TCP or TLS) until it closes or shutdown drains it.
async fn serve_connection<I>(
    app: Arc<App>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(app.handle(req, peer).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
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
        let task = tokio::spawn(serve(app.clone(), listener, tls.clone(), rx));
        Ok(Running {
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
