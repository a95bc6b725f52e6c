//! `TestServer`: the project's server in process on 127.0.0.1:0 with a fresh data
//! directory, on its own runtime thread so sync and async tests can both use it.
//! Stops and removes its data when dropped.

use agent_registry::app::App;
use agent_registry::config::{Config, HostedWrites};
use agent_registry::server::Running;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Makes `url` the `docker.io` upstream (with `library/` for plain names) and the default
/// upstream of `cfg`; returns it for further settings.
pub fn default_upstream<'a>(
    cfg: &'a mut Config,
    url: &str,
) -> &'a mut agent_registry::config::UpstreamConfig {
    let mut up = agent_registry::config::UpstreamConfig::new("docker.io", url);
    up.library_prefix = true;
    cfg.upstreams.retain(|u| u.name != "docker.io");
    cfg.upstreams.push(up);
    cfg.mirror.default_upstream = Some("docker.io".into());
    let last = cfg.upstreams.len() - 1;
    &mut cfg.upstreams[last]
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener, when `server.admin_listen` was set.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    /// Starts with the embedded default config changed by `f` (listen and data_dir are set first).
    pub fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = Config::embedded_default();
        cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.server.hosted_writes = HostedWrites::Loopback;
        cfg.storage.data_dir = dir.path().join("data");
        // Hosted-only unless a test configures a mirror: nothing may reach for the internet.
        cfg.mirror.default_upstream = None;
        f(&mut cfg);
        Self::start_in(cfg, dir)
    }

    /// Starts on an existing data directory (to test restarts).
    pub fn restart_on(dir: tempfile::TempDir) -> TestServer {
        Self::restart_on_with(dir, |_| {})
    }

    /// Starts on an existing data directory with the config changed by `f`.
    pub fn restart_on_with(dir: tempfile::TempDir, f: impl FnOnce(&mut Config)) -> TestServer {
        let mut cfg = Config::embedded_default();
        cfg.mirror.default_upstream = None;
        cfg.server.hosted_writes = HostedWrites::Loopback;
        cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.storage.data_dir = dir.path().join("data");
        f(&mut cfg);
        Self::start_in(cfg, dir)
    }

    fn start_in(cfg: Config, dir: tempfile::TempDir) -> TestServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = App::new(cfg).expect("open storage");
                let running = Running::start(app.clone()).await.expect("bind");
                ready_tx
                    .send((running.addr, running.admin_addr, app))
                    .expect("ready");
                let _ = stop_rx.await;
                running.stop().await;
            });
        });
        let (addr, admin_addr, app) = ready_rx.recv().expect("server started");
        TestServer {
            addr,
            admin_addr,
            app,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir,
        }
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn data_dir(&self) -> &Path {
        &self.app.config.storage.data_dir
    }

    /// Stops the server and hands back its directory, for a restart on the same data.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown();
        let tmp = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, tmp)
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address a real `agent-registry serve` bound (to 127.0.0.1:0), read from the
/// "listening on http://ADDR" line of its log file; panics with the log after `within`.
pub fn wait_listening(log: &Path, within: std::time::Duration) -> String {
    const MARKER: &str = "listening on http://";
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.find(MARKER) {
            return text[i + MARKER.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not start: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
