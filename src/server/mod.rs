//! The HTTP server: accepts TCP connections, speaks HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge) through hyper-util's auto builder, hands every request to `App::handle`,
//! and shuts down gracefully. One file per resource next to this one.

pub mod blobs;
pub mod body;
pub mod health;
pub mod listing;
pub mod manifests;
pub mod router;
pub mod uploads;

use crate::app::App;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long in-flight requests may run after shutdown starts.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` flips to true, then drains.
pub async fn serve(app: Arc<App>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
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
    let purge = tokio::spawn(purge_uploads(app.clone()));
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
        let app = app.clone();
        let svc = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, std::convert::Infallible>(app.handle(req, peer).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    app.set_draining();
    purge.abort();
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(DRAIN_DEADLINE) => tracing::warn!("drain deadline passed, closing"),
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
}

impl Running {
    /// Binds `app.config.server.listen` and starts serving.
    pub async fn start(app: Arc<App>) -> std::io::Result<Running> {
        let listener = TcpListener::bind(app.config.server.listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve(app.clone(), listener, rx));
        Ok(Running {
            addr,
            app,
            shutdown: tx,
            task: Some(task),
        })
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
