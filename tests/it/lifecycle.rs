//! The real `agent-registry` binary under operational stress: SIGTERM drains an
//! in-flight download (`/readyz` 503 meanwhile) and exits 0, slowloris clients are cut by `header_read_timeout`,
//! idle sockets cannot hold `max_connections` forever, and the systemd notify protocol
//! (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) reaches `$NOTIFY_SOCKET`.

use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary on a free port with its own data dir and config; killed when dropped.
struct Proc {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Proc {
    /// Starts with `server_keys` added to `[server]` and `env` set; waits for the port
    /// unless `wait` is false.
    fn start(server_keys: &str, env: &[(&str, &str)], wait: bool) -> Proc {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("[server]\n{server_keys}\n")).expect("write config");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-registry"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("AGENT_REGISTRY_MIRROR_DEFAULT_UPSTREAM", "")
            .env("RUST_LOG", "info")
            .env("AGENT_REGISTRY_SERVER_HOSTED_WRITES", "loopback")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn agent-registry");
        let mut proc = Proc {
            child,
            addr: String::new(),
            dir,
        };
        if wait {
            proc.wait_for_port();
        }
        proc
    }

    /// Learns the port (bound to :0, so parallel tests never collide) from the
    /// "listening on" log line and waits until it answers.
    fn wait_for_port(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let marker = "listening on http://";
        loop {
            let log = self.log();
            if let Some(at) = log.find(marker) {
                let rest = &log[at + marker.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                self.addr = rest[..end].to_string();
                break;
            }
            assert!(Instant::now() < deadline, "server did not start: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "port does not answer: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes one request; returns the stream positioned after the response head, and the status.
fn send_head(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, BufReader<TcpStream>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    loop {
        line.clear();
        r.read_line(&mut line).expect("header line");
        if line.trim_end().is_empty() {
            break;
        }
    }
    (status, r)
}

/// One `Connection: close` request; the status, or None when the connection failed.
fn try_get(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// True when the peer has closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    closed_after(s, limit).is_some()
}

/// When the peer closes `s` within `limit`: Some(bytes received before the close).
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<usize> {
    let deadline = Instant::now() + limit;
    let (mut buf, mut received) = ([0u8; 1024], 0);
    while Instant::now() < deadline {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        match s.read(&mut buf) {
            Ok(0) => return Some(received),
            Ok(n) => received += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(received),
        }
    }
    None
}

/// The address after `marker` ("listening on http://") in the log.
fn logged_addr(log: &str, marker: &str) -> Option<String> {
    let rest = &log[log.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

#[test]
fn sigterm_drains_a_slow_download_while_readyz_answers_503_and_exits_zero() {
    let mut server = Proc::start(
        "drain_timeout = \"30s\"\nadmin_listen = \"127.0.0.1:0\"",
        &[],
        true,
    );
    let admin = logged_addr(
        &server.log(),
        "admin listener (health, metrics, /admin) on http://",
    )
    .expect("admin listener address in the log");
    let mut blob = vec![0u8; 32 << 20];
    for (i, chunk) in blob.chunks_mut(8).enumerate() {
        let v = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let digest = sha256_hex(&blob);
    let path = format!("/v2/agents/x/blobs/uploads/?digest={digest}");
    let (status, _) = send_head(&server.addr, "POST", &path, &blob);
    assert_eq!(status, 201, "push: {}", server.log());
    assert_eq!(try_get(&server.addr, "/readyz"), Some(200));
    assert_eq!(try_get(&admin, "/readyz"), Some(200));

    let (status, mut download) = send_head(
        &server.addr,
        "GET",
        &format!("/v2/agents/x/blobs/{digest}"),
        b"",
    );
    assert_eq!(status, 200);
    let mut got = Vec::with_capacity(blob.len());
    let mut buf = vec![0u8; 64 << 10];
    let mut read_some = |r: &mut BufReader<TcpStream>, got: &mut Vec<u8>| -> usize {
        let n = r.read(&mut buf).expect("download read");
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(8));
        n
    };
    while got.len() < 1 << 20 {
        read_some(&mut download, &mut got);
    }

    server.sigterm();
    // While the download drains, a load balancer polling /readyz (main or admin
    // listener) sees 503; liveness stays 200; new registry requests are refused with 503.
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_get(&server.addr, "/readyz") != Some(503) {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 503: {}",
            server.log()
        );
        read_some(&mut download, &mut got);
    }
    assert_eq!(try_get(&admin, "/readyz"), Some(503));
    assert_eq!(try_get(&server.addr, "/healthz"), Some(200));
    assert_eq!(
        try_get(&server.addr, &format!("/v2/agents/x/blobs/{digest}")),
        Some(503)
    );
    assert!(got.len() < blob.len(), "download finished before the check");
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "exited with a download in flight"
    );

    while read_some(&mut download, &mut got) > 0 {}
    assert_eq!(
        got.len(),
        blob.len(),
        "download cut short: {}",
        server.log()
    );
    assert!(got == blob, "downloaded bytes differ");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}: {}", server.log());
    // Once the drain is over, both listeners are closed.
    assert!(TcpStream::connect(&server.addr).is_err());
    assert!(TcpStream::connect(&admin).is_err());
}

#[test]
fn slowloris_is_cut_after_header_read_timeout_while_others_are_served() {
    let server = Proc::start("header_read_timeout = \"2s\"", &[], true);
    let addr = server.addr.clone();
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let start = Instant::now();
        let head = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n",
            "a".repeat(40)
        );
        for b in head.bytes() {
            if s.write_all(&[b]).is_err() || closed_within(&mut s, Duration::from_secs(1)) {
                return Some(start.elapsed());
            }
        }
        None
    });
    let mut served = 0;
    while !slow.is_finished() {
        assert_eq!(try_get(&server.addr, "/v2/"), Some(200), "{}", server.log());
        served += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let cut = slow
        .join()
        .expect("slow client")
        .expect("slowloris never cut off");
    assert!(cut >= Duration::from_millis(1500), "cut too early: {cut:?}");
    assert!(cut < Duration::from_secs(8), "cut too late: {cut:?}");
    assert!(served >= 3, "normal client served {served} times");
}

#[test]
fn idle_sockets_beyond_max_connections_cannot_starve_the_server() {
    let keys = "max_connections = 20\nkeep_alive_timeout = \"3s\"\nheader_read_timeout = \"30s\"";
    let server = Proc::start(keys, &[], true);
    // Let the start-up probe's connection finish, or it holds a slot for a moment.
    assert_eq!(try_get(&server.addr, "/v2/"), Some(200));
    std::thread::sleep(Duration::from_millis(300));
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&server.addr).expect("connect idle"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Policy: at the limit a new connection is accepted and closed without an answer
    // (a connection given a slot would get a 200 and stay open for 3s).
    let start = Instant::now();
    let mut extra = TcpStream::connect(&server.addr).expect("connect at the limit");
    let _ = extra.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = extra.set_read_timeout(Some(Duration::from_secs(3)));
    let mut answer = Vec::new();
    let closed = match extra.read_to_end(&mut answer) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    };
    assert!(
        closed && answer.is_empty(),
        "a connection over the limit was served or left open: {:?} {}",
        String::from_utf8_lossy(&answer),
        server.log()
    );
    // The idle sockets are closed by keep_alive_timeout, then a normal client is served.
    let mut served = None;
    while Instant::now() < start + Duration::from_secs(15) {
        if try_get(&server.addr, "/v2/") == Some(200) {
            served = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = served.unwrap_or_else(|| panic!("never served: {}", server.log()));
    assert!(
        served < Duration::from_secs(10),
        "served only after {served:?}"
    );
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(3)),
            "idle socket {i} still open"
        );
    }
}

/// Receives datagrams until `want` arrives (returns all seen) or `limit` passes.
fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("{want} not received; got {seen:?}");
}

#[test]
fn notify_socket_gets_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    let notify = path.to_str().expect("utf-8 path");
    let env = [("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")];
    let mut server = Proc::start("", &env, false);
    let seen = recv_until(&sock, "READY=1", Duration::from_secs(20));
    assert!(
        server.log().contains("listening on"),
        "READY=1 before binding"
    );
    server.wait_for_port();
    assert!(
        TcpStream::connect(&server.addr).is_ok(),
        "READY=1 before the port answers"
    );
    assert!(!seen.iter().any(|m| m.contains("STOPPING")), "{seen:?}");
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(3));
    server.sigterm();
    recv_until(&sock, "STOPPING=1", Duration::from_secs(10));
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}: {}", server.log());
}

#[test]
fn notify_reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("agent-registry-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
    let notify = format!("@{name}");
    let mut server = Proc::start("", &[("NOTIFY_SOCKET", &notify)], false);
    recv_until(&sock, "READY=1", Duration::from_secs(20));
    server.wait_for_port();
    assert!(TcpStream::connect(&server.addr).is_ok());
}

impl Proc {
    fn write_config(&self, text: &str) {
        let path = self.dir.path().join("config.toml");
        let tmp = self.dir.path().join("config.toml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &path).expect("rename config");
    }

    fn sighup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Waits until the log has `n` occurrences of `needle`.
    fn wait_log(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(Instant::now() < deadline, "no {needle:?} in: {log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn sighup_reloads_upstreams_limits_and_auth_at_once_and_keeps_them_if_invalid() {
    let p = Proc::start("", &[], true);
    let addr = p.addr.clone();
    // Before: no users (v2 open), no upstream "up.test", loopback never limited; the
    // startup log says how to add a user.
    assert!(
        p.log().contains("pull-only mirror") && p.log().contains("hash-password"),
        "{}",
        p.log()
    );
    assert_eq!(try_get(&addr, "/v2/"), Some(200));
    let path = "/v2/up.test/lib/x/manifests/latest";
    assert_ne!(try_get(&addr, path), Some(502));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let good = format!(
        "[server]\n\n[limits]\nallow = []\nmanifests_per_second = 1\nmanifests_burst = 3\n\n\
         [auth]\nusers = [{{ name = \"ops\", password_hash = \"{hash}\" }}]\n\n\
         [upstreams.\"up.test\"]\nurl = \"http://{dead_addr}\"\nconnect_timeout = \"1s\"\n"
    );
    p.write_config(&good);
    p.sighup();
    p.wait_log("SIGHUP: configuration reloaded", 1);
    // After: users exist, so /v2/ challenges; the new upstream is dialled (and is down).
    assert_eq!(try_get(&addr, "/v2/"), Some(401));
    assert_eq!(try_get(&addr, path), Some(502));
    // The tighter limit applies to loopback now.
    let statuses: Vec<Option<u16>> = (0..6)
        .map(|_| try_get(&addr, "/v2/agents/a/tags/list"))
        .collect();
    assert!(statuses.contains(&Some(429)), "{statuses:?}");
    // An invalid file: nothing of it applies, the log names the key and the file.
    p.write_config(&good.replace("[limits]\n", "[limits]\nmanifests_burts = 9\n"));
    p.sighup();
    let log = p.wait_log("keeping the previous one", 1);
    assert!(
        log.contains("limits.manifests_burts") && log.contains("config.toml"),
        "{log}"
    );
    assert_eq!(try_get(&addr, "/v2/"), Some(401));
    // Let the quota (1/s, burst 3) refill.
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(try_get(&addr, path), Some(502));
    // Still serving and draining normally.
    p.sigterm();
}

#[test]
fn start_warns_when_users_exist_and_no_realm_is_set() {
    let hash = bcrypt::hash("pw", 4).expect("bcrypt");
    let users = format!("\n[auth]\nusers = [{{ name = \"ops\", password_hash = \"{hash}\" }}]\n");
    // The warning comes before the "listening" line the start waits for.
    let p = Proc::start(&users, &[], true);
    assert!(p.log().contains("auth.realm is not set"), "{}", p.log());
    let realm = format!("{users}realm = \"https://registry.example.com/token\"\n");
    let p = Proc::start(&realm, &[], true);
    assert!(!p.log().contains("auth.realm is not set"), "{}", p.log());
    // Without users there is nothing to log in to: no warning either.
    let p = Proc::start("", &[], true);
    assert!(!p.log().contains("auth.realm is not set"), "{}", p.log());
}

#[test]
fn keep_alive_connections_outlive_the_header_timeout_but_silent_sockets_do_not() {
    let p = Proc::start(
        "header_read_timeout = \"1s\"\nkeep_alive_timeout = \"30s\"",
        &[],
        true,
    );
    let addr = p.addr.clone();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let read_response = |s: &mut TcpStream| -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
    };
    s.write_all(req.as_bytes()).expect("first request");
    let first = read_response(&mut s).expect("first response");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle between requests for longer than the header timeout: still open.
    std::thread::sleep(Duration::from_millis(2500));
    s.write_all(req.as_bytes()).expect("second request");
    let second = read_response(&mut s).expect("the keep-alive connection was closed");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    // A socket that never sends a request is closed after the header timeout.
    let mut silent = TcpStream::connect(&addr).expect("connect");
    let closed = closed_after(&mut silent, Duration::from_secs(10)).is_some();
    assert!(closed, "a silent socket stayed open");
    // And a head that trickles in is cut after it, even on a kept-alive connection.
    s.write_all(b"GET /healthz HTTP/1.1\r\n")
        .expect("partial head");
    assert!(
        closed_within(&mut s, Duration::from_secs(4)),
        "a slow head was not cut"
    );
}
