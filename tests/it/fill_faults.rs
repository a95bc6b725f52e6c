//! Fills under upstream and disk faults: a stalled upstream ends its clients' bodies
//! within about twice `idle_timeout` (the resumes share one budget), a Range reader
//! waiting ahead of a slow fill is not taken for an idle connection, a blob that does
//! not fit streams through alone while caching goes on for the rest, a disk that fills
//! during a fill switches its readers to a relay from memory, concurrent clients of a
//! stream-through share one upstream fetch, and each failure is one rate-limited warning.

use crate::cache::{on_disk, tmpfs, Unmount, MIB};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::Http;
use crate::support::random;
use crate::support::server::{default_upstream, TestServer};
use agent_registry::config::Config;
use agent_registry::oci::Digest;
use http::StatusCode;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A mirror of `fake` as docker.io, with `f` applied to the config.
fn mirror(fake: &FakeUpstream, f: impl FnOnce(&mut Config)) -> TestServer {
    let url = fake.url();
    TestServer::start_with(move |cfg| {
        let up = default_upstream(cfg, &url);
        up.first_byte_timeout = Duration::from_secs(5);
        cfg.cache.memory.blob_threshold = 0;
        f(cfg);
    })
}

fn sha256(b: &[u8]) -> String {
    Digest::sha256_of(b).to_string()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}

/// Waits until no fill is in flight (they finish after their readers got the bytes).
async fn fills_done(srv: &TestServer) {
    for _ in 0..1000 {
        if srv.app.fills.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fills still in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fill_ends_its_clients_body_within_twice_the_idle_timeout() {
    let fake = FakeUpstream::start();
    let digest = fake.add_blob("library/stall", random(4 * MIB, 11));
    // Every response (the first GET and each Range resume) stops after 256 KiB.
    fake.set(|s| s.stall_after = Some((256 << 10, Duration::from_secs(3600))));
    let srv = mirror(&fake, |cfg| {
        cfg.upstreams
            .iter_mut()
            .for_each(|u| u.idle_timeout = Duration::from_secs(1));
    });
    let http = Http::new(&srv.host());
    let t0 = Instant::now();
    let r = http
        .get_hashed(&format!("/v2/stall/blobs/{digest}"), &[])
        .await;
    let waited = t0.elapsed();
    assert!(r.is_err(), "a stalled blob must not arrive complete");
    // One idle_timeout for the stall, one more shared by all resumes (not 4x).
    assert!(
        waited > Duration::from_millis(900) && waited <= Duration::from_millis(2500),
        "the client waited {waited:?}"
    );
    fills_done(&srv).await;
    assert!(!on_disk(&srv, &digest), "nothing partial is cached");
    assert_eq!(
        files_in(&srv.data_dir().join("tmp")),
        0,
        "no temp file left"
    );
    assert!(fake.blob_gets(&digest) >= 2, "it did resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_reader_ahead_of_a_slow_fill_is_not_cut_as_idle() {
    let fake = FakeUpstream::start();
    let bytes = random(4 * MIB, 12);
    let digest = fake.add_blob("library/slow", bytes.clone());
    // About 4 KiB per millisecond at best: the fill takes well over a second.
    fake.set(|s| s.pace = Some(4096));
    let srv = mirror(&fake, |cfg| {
        cfg.server.keep_alive_timeout = Duration::from_secs(1);
    });
    let path = format!("/v2/slow/blobs/{digest}");
    let whole = {
        let (http, path) = (Http::new(&srv.host()), path.clone());
        tokio::spawn(async move { http.get_hashed(&path, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The last 64 KiB: its bytes land only at the end of the fill.
    let start = bytes.len() - (64 << 10);
    let range = format!("bytes={start}-");
    let t0 = Instant::now();
    let tail = Http::new(&srv.host())
        .get_hashed(&path, &[("range", &range)])
        .await
        .expect("the ranged body is not cut while it waits for the fill");
    assert!(
        t0.elapsed() > Duration::from_millis(1200),
        "the reader waited longer than keep_alive_timeout ({:?})",
        t0.elapsed()
    );
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.digest, sha256(&bytes[start..]));
    let whole = whole.await.expect("task").expect("whole body");
    assert_eq!(whole.digest, digest);
    assert_eq!(fake.blob_gets(&digest), 1);
}

/// A 12 MiB tmpfs under `root` for the data directory (None: not root, skipped).
fn small_disk(root: &Path, size: &str) -> Option<(Unmount, std::path::PathBuf)> {
    let mnt = root.join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    tmpfs(&mnt, size)?;
    Some((Unmount(mnt.clone()), mnt))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_free_space_streams_through_and_a_small_one_after_it_is_cached() {
    let fake = FakeUpstream::start();
    let root = tempfile::tempdir().expect("tempdir");
    let Some((_unmount, mnt)) = small_disk(root.path(), "12m") else {
        return;
    };
    let data = mnt.join("data");
    let srv = mirror(&fake, move |cfg| {
        cfg.storage.data_dir = data;
        cfg.cache.max_size = 1 << 30; // the disk, not the cap, is what is short
    });
    let http = Http::new(&srv.host());
    let big = fake.add_blob("library/disk", random(16 * MIB, 13));
    let small = fake.add_blob("library/disk", random(MIB, 14));
    // Four clients at once (the body waits a moment after the head, so all of them are
    // there before the first byte): one upstream fetch, relayed to all four.
    fake.set(|s| s.stall_after = Some((0, Duration::from_millis(300))));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, path) = (Http::new(&srv.host()), format!("/v2/disk/blobs/{big}"));
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    for c in clients {
        let r = c
            .await
            .expect("task")
            .expect("the oversize blob streams through");
        assert_eq!(r.digest, big);
        assert_eq!(
            r.headers.get("x-cache").and_then(|v| v.to_str().ok()),
            Some("bypass")
        );
    }
    assert_eq!(
        fake.blob_gets(&big),
        1,
        "4 clients of a stream-through, one GET"
    );
    fake.set(|s| s.stall_after = None);
    fills_done(&srv).await;
    assert!(!on_disk(&srv, &big));
    assert_eq!(
        files_in(&srv.data_dir().join("tmp")),
        0,
        "no temp file left"
    );
    // Caching is not switched off: the small blob pulled after it is cached.
    let r = http
        .get_hashed(&format!("/v2/disk/blobs/{small}"), &[])
        .await
        .expect("small blob");
    assert_eq!(r.digest, small);
    fills_done(&srv).await;
    assert!(on_disk(&srv, &small), "{:?}", srv.app.cache.stats());
    let stats = srv.app.cache.stats();
    assert!(!stats.write_disabled, "{stats:?}");
    assert_eq!(stats.entries, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_a_fill_switches_its_readers_to_stream_through() {
    let fake = FakeUpstream::start();
    let root = tempfile::tempdir().expect("tempdir");
    let Some((_unmount, mnt)) = small_disk(root.path(), "16m") else {
        return;
    };
    let data = mnt.join("data");
    let srv = mirror(&fake, move |cfg| {
        cfg.storage.data_dir = data;
    });
    let bytes = random(8 * MIB, 15);
    let digest = fake.add_blob("library/fills", bytes);
    // Slow enough that the disk fills while the blob is on its way.
    fake.set(|s| s.pace = Some(4096));
    let path = format!("/v2/fills/blobs/{digest}");
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (http, path) = (Http::new(&srv.host()), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    // Once the fill wrote something, something else takes all the free space.
    let tmp = srv.data_dir().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written: u64 = std::fs::read_dir(&tmp)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if written > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the fill never wrote");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![7u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
    }
    for c in clients {
        let r = c
            .await
            .expect("task")
            .expect("the clients still get the whole blob");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.digest, digest, "exact bytes");
    }
    fills_done(&srv).await;
    assert_eq!(fake.blob_gets(&digest), 1, "one upstream fetch throughout");
    assert!(!on_disk(&srv, &digest));
    assert_eq!(files_in(&tmp), 0, "the temp file is removed");
    assert!(
        srv.app.cache.stats().write_disabled,
        "a really full disk turns caching off"
    );
    std::fs::remove_file(&filler).expect("rm filler");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_of_a_stream_through_share_one_upstream_fetch() {
    let fake = FakeUpstream::start();
    let bytes = random(4 * MIB, 16);
    let digest = fake.add_blob("library/through", bytes);
    fake.set(|s| s.pace = Some(16 << 10));
    let srv = mirror(&fake, |cfg| cfg.cache.strategies.layers = false);
    let path = format!("/v2/through/blobs/{digest}");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, path) = (Http::new(&srv.host()), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    for c in clients {
        let r = c.await.expect("task").expect("whole body");
        assert_eq!(r.digest, digest);
        assert_eq!(
            r.headers.get("x-cache").and_then(|v| v.to_str().ok()),
            Some("bypass")
        );
    }
    assert_eq!(fake.blob_gets(&digest), 1, "8 clients, one upstream GET");
    fills_done(&srv).await;
    assert!(
        !on_disk(&srv, &digest),
        "layer caching is off: nothing stored"
    );
    assert_eq!(files_in(&srv.data_dir().join("tmp")), 0);
}

/// The real binary with `config`, its log (text, warn level) in a file.
struct Proc {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn start(dir: &Path, config: &str) -> (Proc, String) {
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).expect("config");
        let log = dir.join("server.log");
        let child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .env("RUST_LOG", "info")
            .env("AGENT_REGISTRY_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        let addr = crate::support::server::wait_listening(&log, Duration::from_secs(20));
        (Proc { child, log }, addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The WARN lines that contain `what`.
    fn warnings(&self, what: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(what))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_failures_and_stream_throughs_are_one_rate_limited_warning_each() {
    let good = FakeUpstream::start();
    let big = good.add_blob("library/big", random(3 * MIB, 17));
    let bad = FakeUpstream::start();
    let corrupt = bad.add_blob("library/bad", random(MIB, 18));
    bad.set(|s| s.corrupt = true);
    let stalled = FakeUpstream::start();
    let stuck = stalled.add_blob("library/stuck", random(2 * MIB, 19));
    stalled.set(|s| s.stall_after = Some((128 << 10, Duration::from_secs(3600))));
    let config = format!(
        "[cache]\nmax_size = \"2MiB\"\n\
         [mirror]\ndefault_upstream = \"good.test\"\n\
         [upstreams.\"good.test\"]\nurl = \"{}\"\n\
         [upstreams.\"bad.test\"]\nurl = \"{}\"\n\
         [upstreams.\"stalled.test\"]\nurl = \"{}\"\nidle_timeout = \"500ms\"\n",
        good.url(),
        bad.url(),
        stalled.url()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (p, addr) = Proc::start(dir.path(), &config);
    let http = Http::new(&addr);
    for _ in 0..3 {
        // Larger than the cache cap: streams through, each time.
        let r = http
            .get_hashed(&format!("/v2/library/big/blobs/{big}"), &[])
            .await
            .expect("streams through");
        assert_eq!(r.digest, big);
        let r = http
            .get_hashed(&format!("/v2/bad.test/library/bad/blobs/{corrupt}"), &[])
            .await;
        assert!(r.is_err(), "a corrupt blob never arrives complete");
        let r = http
            .get_hashed(
                &format!("/v2/stalled.test/library/stuck/blobs/{stuck}"),
                &[],
            )
            .await;
        assert!(r.is_err(), "a stalled blob never arrives complete");
    }
    // Logged asynchronously by the fill tasks: give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cases = [
        ("blob streams through", "good.test", "library/big", &big),
        ("blob digest mismatch", "bad.test", "library/bad", &corrupt),
        ("blob fill failed", "stalled.test", "library/stuck", &stuck),
    ];
    for (what, upstream, repo, digest) in cases {
        let lines = p.warnings(what);
        assert_eq!(
            lines.len(),
            1,
            "one line for three {what}: {lines:#?}\n{}",
            p.log()
        );
        let line = &lines[0];
        for field in [
            format!("upstream=\"{upstream}\""),
            format!("repo=\"{repo}\""),
            format!("digest={digest}"),
        ] {
            assert!(line.contains(&field), "{field} in {line}");
        }
    }
    assert!(p.warnings("larger than the room in the cache cap").len() == 1);
    if std::env::var("SHOW_FILL_LOG").is_ok() {
        eprintln!("{}", p.log());
    }
}
