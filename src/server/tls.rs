//! HTTPS on the listener: the current rustls config behind a lock (a reload swaps it for
//! new connections; open ones keep theirs), the reload on demand (SIGHUP) and on a change
//! of the files (polled), and the per-connection handshake with its timeout.

use crate::config::{TlsConfig, TlsFileError};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listener's TLS state: the files to load and the config loaded from them last.
pub struct ServerTls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// What the files looked like before the last load attempt (successful or not), so a
    /// broken file is reported once, not at every poll, and retried when it changes.
    seen: Mutex<Vec<Option<Stamp>>>,
}

/// Enough of a file's metadata to notice a rewrite, a rename over it or a symlink swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

impl ServerTls {
    /// Loads the certificate, key and client CA named by `files`.
    pub fn load(files: &TlsConfig) -> Result<ServerTls, TlsFileError> {
        let seen = stamps(files);
        let config = files.server_config()?;
        Ok(ServerTls {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(seen),
        })
    }

    /// Reads the files again. On success new connections get the new certificate; on
    /// failure the previous one stays in use and the error names the key and file.
    pub fn reload(&self) -> Result<(), String> {
        let seen = stamps(&self.files);
        let loaded = self.files.server_config();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
        let config = loaded.map_err(|e| e.to_string())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the current config.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(current.clone())
    }

    /// Whether a file changed since the last load attempt.
    fn changed(&self) -> bool {
        let now = stamps(&self.files);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Every `reload_interval`, reloads if a file changed; never returns (zero: no polling).
    pub async fn watch_files(self: Arc<Self>) {
        let every = self.files.reload_interval;
        if every.is_zero() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if !self.changed() {
                continue;
            }
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert_file = %self.files.cert_file.display(),
                    "tls files changed: certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "tls files changed but cannot be loaded: keeping the previous certificate"
                ),
            }
        }
    }
}

fn stamps(files: &TlsConfig) -> Vec<Option<Stamp>> {
    files.files().into_iter().map(stamp).collect()
}

/// The server side of the handshake, bounded by [`HANDSHAKE_TIMEOUT`]; failures are
/// logged at debug (port scanners and plain-HTTP clients are not news).
pub(super) async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, timeout = ?HANDSHAKE_TIMEOUT, "tls handshake timed out");
            None
        }
    }
}
