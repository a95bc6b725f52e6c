//! kill -9 while a 100 MiB chunked upload, a 100 MiB monolithic upload and a pull are in
//! flight; after a restart nothing partial is visible, every stored object matches its
//! digest, and the chunked upload resumes from what the server acknowledged.

use crate::support::random;
use agent_registry::oci::Digest;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(data: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
            .args(["serve", "--listen", &addr, "--data-dir"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .env("AGENT_REGISTRY_SERVER_HOSTED_WRITES", "loopback")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, addr }
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with a body; returns (status, headers, body).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let mut hdrs = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hdrs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut out = Vec::new();
    let _ = r.read_to_end(&mut out);
    (status, hdrs, out)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Starts sending `len` bytes of a request whose body is `data`, in a thread that
/// stops writing (or dies with the connection) when the server is killed.
fn stream_body(
    addr: &str,
    method: &str,
    path: &str,
    data: Vec<u8>,
    progress: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    let addr = addr.to_string();
    let path = path.to_string();
    let method = method.to_string();
    std::thread::spawn(move || {
        let Ok(mut s) = TcpStream::connect(&addr) else {
            return 0;
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            data.len()
        );
        if s.write_all(head.as_bytes()).is_err() {
            return 0;
        }
        let mut sent = 0;
        for chunk in data.chunks(1 << 20) {
            if s.write_all(chunk).is_err() {
                break;
            }
            sent += chunk.len();
            progress.store(sent, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
        }
        sent
    })
}

/// Every committed file under blobs/ hashes to its own name; tmp/ is empty.
fn assert_store_consistent(data: &Path) -> usize {
    let mut n = 0;
    let blobs = data.join("blobs");
    for alg in std::fs::read_dir(&blobs).expect("blobs dir") {
        let alg = alg.expect("entry");
        let alg_name = alg.file_name().to_string_lossy().to_string();
        for prefix in std::fs::read_dir(alg.path()).expect("prefix dir") {
            for f in std::fs::read_dir(prefix.expect("prefix").path()).expect("files") {
                let f = f.expect("file");
                let name = format!("{alg_name}:{}", f.file_name().to_string_lossy());
                let d: Digest = name.parse().expect("blob file named by its digest");
                let bytes = std::fs::read(f.path()).expect("read blob");
                assert!(d.matches(&bytes), "{name} does not match its content");
                n += 1;
            }
        }
    }
    let tmp: Vec<_> = std::fs::read_dir(data.join("tmp")).expect("tmp").collect();
    assert!(
        tmp.is_empty(),
        "temp files left visible after restart: {tmp:?}"
    );
    n
}

#[test]
fn kill_9_during_uploads_and_pull_leaves_nothing_partial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut srv = Server::start(&data);

    // Something to pull: a 32 MiB blob.
    let pulled = random(32 << 20, 1);
    let pulled_d = Digest::sha256_of(&pulled).to_string();
    let (st, _, _) = request(
        &srv.addr,
        "POST",
        &format!("/v2/agents/crash/blobs/uploads/?digest={pulled_d}"),
        &[],
        &pulled,
    );
    assert_eq!(st, 201);

    // A chunked upload: the first 8 MiB acknowledged, then a 92 MiB chunk in flight.
    let big = random(100 << 20, 2);
    let big_d = Digest::sha256_of(&big).to_string();
    let (st, h, _) = request(
        &srv.addr,
        "POST",
        "/v2/agents/crash/blobs/uploads/",
        &[],
        &[],
    );
    assert_eq!(st, 202);
    let loc = header(&h, "location").expect("location").to_string();
    let first = 8 << 20;
    let (st, _, _) = request(
        &srv.addr,
        "PATCH",
        &loc,
        &[("Content-Range", format!("0-{}", first - 1))],
        &big[..first],
    );
    assert_eq!(st, 202);
    let (chunk_p, mono_p, pull_p) = (
        Arc::<AtomicUsize>::default(),
        Arc::<AtomicUsize>::default(),
        Arc::<AtomicUsize>::default(),
    );
    let chunk = stream_body(
        &srv.addr,
        "PATCH",
        &loc,
        big[first..].to_vec(),
        Arc::clone(&chunk_p),
    );

    // A monolithic upload of another 100 MiB in flight.
    let mono = random(100 << 20, 3);
    let mono_d = Digest::sha256_of(&mono).to_string();
    let mono_t = stream_body(
        &srv.addr,
        "POST",
        &format!("/v2/agents/crash/blobs/uploads/?digest={mono_d}"),
        mono.clone(),
        Arc::clone(&mono_p),
    );

    // A slow pull in flight.
    let addr = srv.addr.clone();
    let path = format!("/v2/agents/crash/blobs/{pulled_d}");
    let pull_seen = Arc::clone(&pull_p);
    let pull = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).expect("connect");
        let _ = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
            pull_seen.store(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
        }
        n
    });

    // Kill once all three are visibly under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunk_p.load(Ordering::SeqCst) < 4 << 20
        || mono_p.load(Ordering::SeqCst) < 4 << 20
        || pull_p.load(Ordering::SeqCst) < 1 << 20
    {
        assert!(Instant::now() < deadline, "transfers did not get under way");
        std::thread::sleep(Duration::from_millis(5));
    }
    srv.kill9();
    let sent_chunk = chunk.join().expect("chunk thread");
    let sent_mono = mono_t.join().expect("mono thread");
    let pulled_bytes = pull.join().expect("pull thread");
    assert!(
        sent_chunk > 0 && sent_chunk < big.len() - first,
        "the chunk was in flight ({sent_chunk})"
    );
    assert!(
        sent_mono > 0 && sent_mono < mono.len(),
        "the monolithic upload was in flight ({sent_mono})"
    );
    assert!(
        pulled_bytes < pulled.len(),
        "the pull was in flight ({pulled_bytes})"
    );

    let srv = Server::start(&data);
    assert!(assert_store_consistent(&data) >= 1);
    // Neither interrupted upload is visible.
    for d in [&mono_d, &big_d] {
        let (st, _, _) = request(
            &srv.addr,
            "HEAD",
            &format!("/v2/agents/crash/blobs/{d}"),
            &[],
            &[],
        );
        assert_eq!(st, 404, "{d} must not be visible");
    }
    // What was committed before the crash is whole.
    let (st, _, body) = request(
        &srv.addr,
        "GET",
        &format!("/v2/agents/crash/blobs/{pulled_d}"),
        &[],
        &[],
    );
    assert_eq!(st, 200);
    assert_eq!(Digest::sha256_of(&body).to_string(), pulled_d);

    // The chunked upload resumes from the acknowledged offset and completes.
    let (st, h, _) = request(&srv.addr, "GET", &loc, &[], &[]);
    assert_eq!(st, 204);
    let range = header(&h, "range").expect("range");
    let offset: usize = range
        .trim_start_matches("0-")
        .parse::<usize>()
        .expect("offset")
        + 1;
    assert_eq!(offset, first, "only acknowledged bytes count");
    let (st, _, _) = request(
        &srv.addr,
        "PUT",
        &format!("{loc}?digest={big_d}"),
        &[("Content-Range", format!("{offset}-{}", big.len() - 1))],
        &big[offset..],
    );
    assert_eq!(st, 201);
    let (st, _, body) = request(
        &srv.addr,
        "GET",
        &format!("/v2/agents/crash/blobs/{big_d}"),
        &[],
        &[],
    );
    assert_eq!(st, 200);
    assert_eq!(body.len(), big.len());
    assert_eq!(Digest::sha256_of(&body).to_string(), big_d);
    assert_store_consistent(&data);
}
