//! The cache across process boundaries: kill -9 during fills and a restart, a restart
//! with 100,000 cached blobs, the `agent-registry cache` and `gc` commands, and skopeo
//! pulling through a capped cache in front of CNCF distribution.

use crate::cache::{disk_bytes, image, mirror, pull, settled, MIB};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::Http;
use crate::support::random;
use crate::support::server::{default_upstream, TestServer};
use agent_registry::oci::Digest;
use http::StatusCode;
use std::path::Path;
use std::time::{Duration, Instant};

/// The server binary on a config file, killed on drop.
struct Proc {
    child: std::process::Child,
}

impl Proc {
    /// Starts `agent-registry serve -c config` and returns once it answers /v2/, with the
    /// time that took.
    fn start(config: &Path, addr: &str) -> (Proc, Duration) {
        let started = Instant::now();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-registry"))
            .args(["serve", "-c"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn server");
        let p = Proc { child };
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let req = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
                let mut out = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut out).is_ok()
                    && out.starts_with("HTTP/1.1 200")
                {
                    return (p, started.elapsed());
                }
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

fn config_file(dir: &Path, addr: &str, upstream: &str, cache: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[server]\nlisten = \"{addr}\"\n[storage]\ndata_dir = \"{}\"\n\
         [mirror]\ndefault_upstream = \"docker.io\"\n\
         [upstreams.\"docker.io\"]\nurl = \"{upstream}\"\nfirst_byte_timeout = \"5s\"\n\
         {cache}\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

/// Every file under `blobs/` hashes to its name; returns (files, bytes).
fn check_files(data: &Path) -> (usize, u64) {
    let (mut n, mut bytes) = (0, 0);
    for alg in std::fs::read_dir(data.join("blobs"))
        .expect("blobs")
        .flatten()
    {
        for prefix in std::fs::read_dir(alg.path()).expect("prefix").flatten() {
            for f in std::fs::read_dir(prefix.path()).expect("files").flatten() {
                let body = std::fs::read(f.path()).expect("read");
                let name = format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                let d: Digest = name.parse().expect("a digest name");
                assert!(d.matches(&body), "{name} does not match its bytes");
                n += 1;
                bytes += body.len() as u64;
            }
        }
    }
    (n, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_fills_then_restart_is_consistent() {
    let fake = FakeUpstream::start();
    let blobs: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let b = random(2 * MIB, 300 + i);
            (fake.add_blob("library/crash", b.clone()), b)
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let cache = "[cache]\nmax_size = \"5MiB\"\n[cache.memory]\nblob_threshold = \"0\"";
    let config = config_file(dir.path(), &addr, &fake.url(), cache);
    let (server, _) = Proc::start(&config, &addr);
    let http = Http::new(&addr);
    // Two blobs cached whole, then six slow fills in flight when the process dies.
    for (d, _) in &blobs[..2] {
        let r = http
            .get_hashed(&format!("/v2/crash/blobs/{d}"), &[])
            .await
            .expect("body");
        assert_eq!(&r.digest, d);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.set(|s| s.pace = Some(2_000));
    let inflight: Vec<_> = blobs[2..]
        .iter()
        .map(|(d, _)| {
            let (http, path) = (http.clone(), format!("/v2/crash/blobs/{d}"));
            tokio::spawn(async move {
                let _ = http.get_hashed(&path, &[]).await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tmp = dir.path().join("data").join("tmp");
    let partial = std::fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(0);
    assert!(partial > 0, "fills were in flight");
    server.kill9();
    for t in inflight {
        let _ = t.await;
    }
    fake.set(|s| s.pace = None);

    let (server, _) = Proc::start(&config, &addr);
    let data = dir.path().join("data");
    assert_eq!(
        std::fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "temp files removed"
    );
    let (files, bytes) = check_files(&data);
    assert!(bytes <= 5 * MIB as u64, "{bytes}");
    // The index agrees with the files (after the background reconcile).
    let mut stats = serde_json::Value::Null;
    for _ in 0..100 {
        stats = admin_stats(&http, &data).await;
        if stats["entries"] == files as u64 && stats["bytes"] == bytes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats["entries"], files as u64, "{stats}");
    assert_eq!(stats["bytes"], bytes, "{stats}");
    // Everything pulls, with exact bytes, and the cap still holds.
    for (d, b) in &blobs {
        let r = http
            .get_hashed(&format!("/v2/crash/blobs/{d}"), &[])
            .await
            .expect("body");
        assert_eq!(&r.digest, d);
        assert_eq!(r.len, b.len() as u64);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, bytes) = check_files(&data);
    assert!(bytes <= 5 * MIB as u64, "{bytes}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_100k_cached_blobs_serves_without_waiting_for_a_scan() {
    let fake = FakeUpstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = free_addr();
    let config = config_file(dir.path(), &addr, &fake.url(), "");
    // One run creates the schema; then 100,000 cached objects appear as a previous run
    // would have left them: files under blobs/ and their index rows.
    let (server, _) = Proc::start(&config, &addr);
    server.kill9();
    let data = dir.path().join("data");
    let conn = rusqlite::Connection::open(data.join("meta.db")).expect("db");
    conn.execute_batch("BEGIN").expect("begin");
    let mut kept = None;
    for i in 0..100_000u32 {
        let body = format!("cached object {i}");
        let d = Digest::sha256_of(body.as_bytes());
        let hex = d.hex();
        let p = data.join("blobs/sha256").join(&hex[..2]);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join(hex), &body).expect("write");
        conn.execute(
            "INSERT INTO cache_objects(digest, kind, size, atime_ms, freq, blake3) VALUES (?1, 0, ?2, ?3, 0, NULL)",
            rusqlite::params![d.to_string(), body.len() as i64, i64::from(i)],
        )
        .expect("row");
        // And the upstream each was fetched from (provenance, also loaded at start).
        conn.execute(
            "INSERT INTO cache_origins(digest, upstream) VALUES (?1, 'docker.io')",
            rusqlite::params![d.to_string()],
        )
        .expect("provenance row");
        kept = Some((d, body));
    }
    conn.execute_batch("COMMIT").expect("commit");
    drop(conn);
    let (server, took) = Proc::start(&config, &addr);
    eprintln!("restart with 100000 cached blobs: serving after {took:?}");
    // About 1 s on an idle 2-core box (2 s under a load of 7, as CI's parallel tests
    // make it); the bound only catches a start that walks the files or the index
    // object by object before it serves. Speed is for benchmarks, not this test.
    assert!(took < Duration::from_secs(10), "serving after {took:?}");
    let http = Http::new(&addr);
    let stats = admin_stats(&http, &data).await;
    assert_eq!(stats["entries"], 100_000, "{stats}");
    // A cached object is a hit: no upstream request.
    let (d, body) = kept.expect("one object");
    let r = http.get(&format!("/v2/x/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), body.as_bytes());
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert_eq!(fake.total_hits(), 0);
    drop(server);
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(args)
        .output()
        .expect("run agent-registry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_cache_stats_purge_gc_and_verify() {
    let fake = FakeUpstream::start();
    let srv = mirror(&fake, |_| {});
    let http = Http::new(&srv.host());
    let img = image(&fake, "cli", 200_000, 42);
    pull(&http, &img).await;
    settled(&srv, &img).await;
    // The fill recorded the layer's blake3, which `cache verify` compares against.
    let layer: Digest = img.blobs[1].parse().expect("digest");
    let recorded: Option<String> = rusqlite::Connection::open(srv.data_dir().join("meta.db"))
        .expect("db")
        .query_row(
            "SELECT blake3 FROM cache_objects WHERE digest = ?1",
            [layer.to_string()],
            |r| r.get(0),
        )
        .expect("row");
    let file = std::fs::read(srv.app.storage.blobs.path(&layer)).expect("layer");
    assert_eq!(recorded, Some(blake3::hash(&file).to_hex().to_string()));
    let url = srv.url("");
    let (ok, out, err) = cli(&["cache", "stats", "--url", &url]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(stats["entries"], 3, "{out}");
    let (ok, out, err) = cli(&["gc", "--dry-run", "--url", &url]);
    assert!(ok, "{err}");
    assert!(out.contains("\"dry_run\": true"), "{out}");

    // verify: a flipped byte in the cached layer is found and quarantined.
    let data = srv.data_dir().to_path_buf();
    let path = srv.app.storage.blobs.path(&layer);
    let mut bytes = std::fs::read(&path).expect("layer");
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).expect("corrupt");
    let dir = data.to_str().expect("utf-8 path");
    let (ok, out, err) = cli(&["cache", "verify", "--data-dir", dir]);
    assert!(!ok, "a corrupt object fails verify: {out}");
    assert!(err.contains("quarantined"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["quarantined"], serde_json::json!([img.blobs[1]]));
    assert!(report["checked"].as_u64().is_some_and(|n| n >= 3));
    assert!(!path.exists());
    assert!(data
        .join("quarantine")
        .join(format!("sha256-{}", layer.hex()))
        .exists());
    // The server notices the object is gone and fetches it again, verified.
    let r = http
        .get_hashed(&format!("/v2/cli/blobs/{layer}"), &[])
        .await
        .expect("body");
    assert_eq!(r.digest, img.blobs[1]);
    let (ok, out, err) = cli(&["cache", "verify", "--data-dir", dir]);
    assert!(ok, "{out} {err}");

    let (ok, out, err) = cli(&["cache", "purge", "--url", &url, "library/cli"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"tags\": 1"), "{out}");
    let (ok, _, err) = cli(&["cache", "stats", "--url", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("failed to connect"), "{err}");
}

/// `skopeo copy src dest` (TLS verification off: the registries here are plain HTTP).
fn skopeo_copy(src: &str, dest: &str) {
    use crate::support::tools;
    let mut cmd = tools::command("skopeo");
    cmd.args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        src,
        dest,
    ]);
    tools::run(&mut cmd);
}

#[test]
fn skopeo_pulls_through_a_capped_cache_in_front_of_distribution() {
    use crate::support::{distribution::Distribution, image, tools};
    if !tools::require("skopeo") {
        return;
    }
    let Some(dist) = Distribution::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let images: Vec<_> = (0..6u64)
        .map(|i| {
            let tag = format!("v{i}");
            let info = image::single_image(&layout, &tag, 70 + i, &[500_000, 200_000]);
            skopeo_copy(
                &format!("oci:{}:{tag}", layout.display()),
                &format!("docker://{}/library/app{i}:v1", dist.host()),
            );
            info
        })
        .collect();
    let cap = 2 * MIB as u64;
    let url = dist.url();
    let srv = TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url);
        cfg.cache.max_size = cap;
    });
    // Every image twice: evicted ones come from distribution again, byte for byte.
    for round in 0..2 {
        for (i, info) in images.iter().enumerate() {
            let out = work.path().join(format!("out{round}-{i}"));
            skopeo_copy(
                &format!("docker://{}/app{i}:v1", srv.host()),
                &format!("oci:{}:out", out.display()),
            );
            let got = image::tagged_descriptor(&out, "out")["digest"]
                .as_str()
                .expect("digest")
                .to_string();
            assert_eq!(got, info.manifest_digest);
            for (d, _) in &info.blobs {
                assert_eq!(image::read_blob(&out, d), image::read_blob(&layout, d));
            }
            std::thread::sleep(Duration::from_millis(100));
            let bytes = disk_bytes(srv.data_dir());
            assert!(bytes <= cap, "{bytes} bytes on disk over {cap}");
        }
    }
    let stats = srv.app.cache.stats();
    assert!(stats.evictions > 0 && stats.bytes <= cap, "{stats:?}");
}

/// `GET /admin/cache/stats` with an admin token signed by the server's own key (what
/// `agent-registry cache stats` does).
async fn admin_stats(http: &Http, data: &Path) -> serde_json::Value {
    let keys = agent_registry::auth::jwt::Keys::load_or_create(&data.join("auth")).expect("key");
    let bearer = format!(
        "Bearer {}",
        agent_registry::auth::admin_token(&keys, "agent-registry")
    );
    let r = http
        .send(
            http::Method::GET,
            "/admin/cache/stats",
            &[("authorization", &bearer)],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, http::StatusCode::OK, "{:?}", r.body);
    r.json()
}
