//! Debian's `docker-registry` (CNCF distribution 2.8) as a real upstream: started on a free
//! 127.0.0.1 port with its own storage and access log, stopped (and restartable) on demand.

use super::tools;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Distribution {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Distribution {
    /// None (test skipped) when docker-registry is not installed and interop is optional.
    pub fn start() -> Option<Distribution> {
        if !tools::require("docker-registry") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "version: 0.1\nlog: {{level: info, accesslog: {{disabled: false}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("write config");
        let mut d = Distribution {
            port,
            dir,
            child: None,
        };
        d.resume();
        Some(d)
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The access log so far (one line per completed request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many completed requests the access log has with `method` for a path containing `needle`.
    pub fn hits(&self, method: &str, needle: &str) -> usize {
        let pat = format!("\"{method} ");
        self.log()
            .lines()
            .filter(|l| l.contains(&pat) && l.contains(needle))
            .count()
    }

    /// Stops the registry (the upstream goes down).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same storage and port.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let bin = tools::which("docker-registry").expect("docker-registry");
        let child = Command::new(bin)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.host()).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}
