//! Per-upstream health through the whole server: a 429's `Retry-After` is kept (nothing is
//! sent before it passes), a failing upstream opens its circuit (about one upstream request
//! per client request, then none), a black-holed upstream does not hold stale tags up,
//! `agent registry health` says degraded, and each state change is logged once.

use crate::metrics::{scrape, value};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{image_manifest, Http, Resp};
use crate::support::server::TestServer;
use agent_registry::config::UpstreamConfig;
use http::StatusCode;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// A mirror whose only (and default) upstream is `name` at `url`. Plain names go to it
/// as they are (no `library/`). Upstream names are unique per test: metrics are shared
/// by every server in this process.
fn mirror(name: &str, url: &str, f: impl FnOnce(&mut UpstreamConfig)) -> TestServer {
    let mut up = UpstreamConfig::new(name, url);
    f(&mut up);
    let name = name.to_string();
    TestServer::start_with(move |cfg| {
        cfg.upstreams.clear();
        cfg.upstreams.push(up);
        cfg.mirror.default_upstream = Some(name);
    })
}

/// An image in the fake: (manifest digest, config blob digest).
fn image(fake: &FakeUpstream, repo: &str, tag: &str) -> (String, String) {
    let config = fake.add_blob(repo, format!("{{\"tag\":\"{tag}\"}}").into_bytes());
    let m = image_manifest((&config, 13), &[], None);
    (fake.add_manifest(repo, tag, OCI, m), config)
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {:?} {:?}", r.headers, r.body))
}

fn message(r: &Resp) -> String {
    r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// GETs `path` until it is not a 503, waiting out each 503's `Retry-After` (as a client
/// does while an upstream is down); at most 30 s.
pub(crate) async fn get_after_retry_after(http: &Http, path: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http.get(path).await;
        if r.status != StatusCode::SERVICE_UNAVAILABLE {
            return r;
        }
        assert!(Instant::now() < deadline, "still 503: {:?}", r.body);
        tokio::time::sleep(Duration::from_secs(retry_after(&r))).await;
    }
}

/// The upstream's entry in `/health?detailed=1`.
async fn upstream_report(http: &Http, name: &str) -> serde_json::Value {
    let v = http.get("/health?detailed=1").await.json();
    v["upstreams"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} missing in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_holds_every_request_to_the_upstream_until_its_retry_after() {
    let name = "rl.health.test";
    let fake = FakeUpstream::start();
    image(&fake, "app", "v1");
    let (_, config) = image(&fake, "app", "v2");
    let srv = mirror(name, &fake.url(), |u| {
        u.tag_ttl = Duration::from_millis(200)
    });
    let http = Http::new(&srv.host());
    // v1 is cached, and goes stale.
    assert_eq!(
        http.get("/v2/app/manifests/v1").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(250)).await;

    fake.set(|s| {
        s.too_many = 1;
        s.retry_after = Some("30".into());
    });
    fake.reset_counters();
    let r = http.get("/v2/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(retry_after(&r), 30);
    assert!(message(&r).contains(name), "{}", message(&r));
    assert_eq!(fake.total_hits(), 1);

    // Inside the window nothing goes upstream: tags fail fast with 429, blobs with 503,
    // and a stale tag is served as it is.
    let r = http.get("/v2/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let left = retry_after(&r);
    assert!((28..=30).contains(&left), "{left}");
    // (A HEAD names the upstream: on a plain name it is a push's existence check, which
    // this registry answers itself while the upstream cannot.)
    for blob in [
        http.get(&format!("/v2/app/blobs/{config}")).await,
        http.head(&format!("/v2/{name}/app/blobs/{config}")).await,
    ] {
        assert_eq!(
            blob.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{:?}",
            blob.body
        );
        assert!((28..=30).contains(&retry_after(&blob)));
    }
    let started = Instant::now();
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("stale"))
    );
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
    assert!(started.elapsed() < Duration::from_millis(400));
    let report = upstream_report(&http, name).await;
    assert_eq!(report["state"], "rate_limited", "{report}");
    assert!(report["retry_at"].is_string(), "{report}");
    assert_eq!(
        fake.total_hits(),
        1,
        "no request inside the Retry-After window"
    );

    let text = scrape(&http).await;
    let up = [("upstream", name)];
    assert_eq!(value(&text, "agent_registry_upstream_state", &up), 1.0);
    assert_eq!(
        value(&text, "agent_registry_upstream_rate_limits_total", &up),
        1.0
    );
    let refused = [("upstream", name), ("reason", "rate_limited")];
    assert!(value(&text, "agent_registry_upstream_refused_total", &refused) >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_repository_scope_a_429_holds_back_only_its_repository() {
    let name = "scoped.health.test";
    let fake = FakeUpstream::start();
    image(&fake, "a", "v1");
    image(&fake, "b", "v1");
    let srv = mirror(name, &fake.url(), |u| {
        u.rate_limit_scope = agent_registry::config::RateLimitScope::Repository;
    });
    let http = Http::new(&srv.host());
    fake.set(|s| {
        s.too_many = 1;
        s.retry_after = Some("30".into());
    });
    let r = http.get("/v2/a/manifests/v1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&r), 30);
    let r = http.get("/v2/a/manifests/v1").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fake.hits("GET", "/v2/a/manifests/v1"), 1);
    // Another repository of the same upstream is not held back.
    let r = http.get("/v2/b/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let report = upstream_report(&http, name).await;
    assert_eq!(report["state"], "healthy", "{report}");
    assert_eq!(report["rate_limited_repositories"], 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_opens_its_circuit_and_costs_at_most_one_request_per_client_request() {
    let name = "flaky.health.test";
    let fake = FakeUpstream::start();
    let (digest, _) = image(&fake, "app", "v1");
    let srv = mirror(name, &fake.url(), |_| {});
    let http = Http::new(&srv.host());
    // Four 503s: two for the first request (its one retry), one that opens the circuit,
    // one for the first half-open probe; the second probe succeeds.
    fake.set(|s| s.server_errors = 4);
    let (mut sent, mut opened_seen) = (0u64, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    let ok = loop {
        assert!(Instant::now() < deadline, "the circuit never closed");
        let r = http.get("/v2/app/manifests/v1").await;
        sent += 1;
        if r.status == StatusCode::OK {
            break r;
        }
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            // Refused while down: says so, with the cause and when to come back.
            let m = message(&r);
            assert!(m.contains("not sent: down"), "{m}");
            assert!(m.contains("503 Service Unavailable"), "{m}");
            assert!(retry_after(&r) >= 1);
            if !opened_seen {
                opened_seen = true;
                let report = upstream_report(&http, name).await;
                assert!(
                    report["state"] == "open" || report["state"] == "half_open",
                    "{report}"
                );
                assert!(
                    report["consecutive_failures"].as_u64() >= Some(3),
                    "{report}"
                );
                assert!(report["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("503")));
            }
        } else {
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{:?}", r.body);
            assert!(
                message(&r).contains(&format!("upstream {name}: GET /v2/app/manifests/v1: 503"))
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ok.header("docker-content-digest"), Some(digest.as_str()));
    assert!(opened_seen);
    let hits = fake.total_hits();
    assert!(sent >= 10, "{sent}");
    assert!(
        hits <= 6,
        "{hits} upstream requests for {sent} client requests"
    );
    assert!(
        hits <= sent,
        "{hits} upstream requests for {sent} client requests"
    );

    // Closed again: healthy in the report and the metrics; opened once.
    let report = upstream_report(&http, name).await;
    assert_eq!(report["state"], "healthy", "{report}");
    assert_eq!(report["consecutive_failures"], 0);
    let text = scrape(&http).await;
    let up = [("upstream", name)];
    assert_eq!(value(&text, "agent_registry_upstream_state", &up), 0.0);
    assert_eq!(
        value(&text, "agent_registry_upstream_circuit_openings_total", &up),
        1.0
    );
    let refused = [("upstream", name), ("reason", "down")];
    assert!(value(&text, "agent_registry_upstream_refused_total", &refused) >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_is_served_at_once_while_a_black_holed_upstream_is_revalidated_once() {
    let name = "hole.health.test";
    let fake = FakeUpstream::start();
    let (digest, _) = image(&fake, "app", "v1");
    let srv = mirror(name, &fake.url(), |u| {
        u.tag_ttl = Duration::from_millis(200);
        u.first_byte_timeout = Duration::from_secs(120);
    });
    let http = Http::new(&srv.host());
    assert_eq!(
        http.get("/v2/app/manifests/v1").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    fake.set(|s| s.black_hole = true);
    fake.reset_counters();

    // Concurrent clients, then later ones: every answer is the stale tag, within a second.
    let started = Instant::now();
    let concurrent = (0..4).map(|_| {
        let http = http.clone();
        async move {
            let t = Instant::now();
            (http.get("/v2/app/manifests/v1").await, t.elapsed())
        }
    });
    let mut answers = futures_util::future::join_all(concurrent).await;
    for _ in 0..3 {
        let t = Instant::now();
        answers.push((http.get("/v2/app/manifests/v1").await, t.elapsed()));
    }
    for (r, took) in &answers {
        assert_eq!(
            (r.status, r.header("x-cache")),
            (StatusCode::OK, Some("stale")),
            "{:?}",
            r.body
        );
        assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        assert!(*took < Duration::from_secs(1), "{took:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // One revalidation in flight for the tag, however many clients asked.
    assert_eq!(fake.hits("HEAD", "/v2/app/manifests/v1"), 1);
    assert_eq!(fake.total_hits(), 1);
    assert_eq!(srv.app.mirror().revalidations.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_timeout_marks_the_upstream_down_and_stale_tags_are_served_at_once() {
    let name = "timeout.health.test";
    let fake = FakeUpstream::start();
    image(&fake, "app", "v1");
    let srv = mirror(name, &fake.url(), |u| {
        u.tag_ttl = Duration::from_millis(200);
        u.first_byte_timeout = Duration::from_secs(1);
    });
    let http = Http::new(&srv.host());
    assert_eq!(
        http.get("/v2/app/manifests/v1").await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    fake.set(|s| s.black_hole = true);
    fake.reset_counters();
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(r.header("x-cache"), Some("stale"));
    // The revalidation's first-byte timeout marks the upstream down (watched in the
    // metrics: the /health probe would go into the hole too).
    let deadline = Instant::now() + Duration::from_secs(5);
    let up = [("upstream", name)];
    while value(&scrape(&http).await, "agent_registry_upstream_state", &up) != 2.0 {
        assert!(Instant::now() < deadline, "never marked down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Known down: the stale tag at once, a tag never seen fails at once; nothing sent.
    let started = Instant::now();
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("stale"))
    );
    let r = http.get("/v2/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(message(&r).contains("first byte"), "{}", message(&r));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.total_hits(), 1);
    let report = upstream_report(&http, name).await;
    assert!(
        report["state"] == "open" || report["state"] == "half_open",
        "{report}"
    );
    assert!(
        report["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out waiting for the first byte")),
        "{report}"
    );
}

/// A port nothing listens on.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_shows_in_errors_and_makes_health_say_degraded() {
    let name = "dead.health.test";
    let srv = mirror(name, &dead_url(), |_| {});
    let http = Http::new(&srv.host());
    // The 502 names the upstream, the request and the cause; no internal detail.
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let m = message(&r);
    assert!(
        m.starts_with(&format!(
            "upstream {name}: GET /v2/app/manifests/v1: cannot connect: "
        )),
        "{m}"
    );
    assert!(m.to_lowercase().contains("refused"), "{m}");
    // Down after consecutive failures: 503 + Retry-After, the cause still named.
    let r = http.get("/v2/app/manifests/v2").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let r = http.get("/v2/app/manifests/v3").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(retry_after(&r) >= 1);
    assert!(
        message(&r).to_lowercase().contains("refused"),
        "{}",
        message(&r)
    );
    // A push's blob check on a new plain name is answered here while the upstream is known
    // down, as when it does not answer (an air-gapped push goes on); a GET is 503.
    let blob = format!("sha256:{}", "1".repeat(64));
    let r = http.head(&format!("/v2/newapp/blobs/{blob}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = http.get(&format!("/v2/newapp/blobs/{blob}")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(retry_after(&r) >= 1);

    // Still ready (stale content can be served), but degraded, naming the upstream.
    let o = tokio::task::spawn_blocking({
        let url = format!("http://{}", srv.host());
        move || {
            Command::new(env!("CARGO_BIN_EXE_agent"))
                .args(["registry", "health", "--registry", &url])
                .env_remove("AGENT_REGISTRY_URL")
                .output()
                .expect("run agent")
        }
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(": degraded: upstream dead.health.test down"),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}");
    assert_eq!(http.get("/readyz").await.status, StatusCode::OK);
}

struct Proc {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn each_state_change_is_logged_once() {
    let fake = FakeUpstream::start();
    image(&fake, "app", "v1");
    fake.set(|s| s.server_errors = 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.toml");
    let config = format!(
        "[mirror]\ndefault_upstream = \"logged.health.test\"\n\n[upstreams.\"logged.health.test\"]\nurl = \"{}\"\n",
        fake.url()
    );
    std::fs::write(&cfg, config).expect("config");
    let log = dir.path().join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env("AGENT_REGISTRY_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let addr = crate::support::server::wait_listening(&log, Duration::from_secs(20));
    let p = Proc { child, log };
    let read = || std::fs::read_to_string(&p.log).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let http = Http::new(&addr);
    rt.block_on(async {
        // Down, then past one failed probe (logged at debug, not again at warn).
        let until = Instant::now() + Duration::from_millis(1800);
        while Instant::now() < until {
            http.get("/v2/app/manifests/v1").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fake.set(|s| s.server_errors = 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.get("/v2/app/manifests/v1").await.status != StatusCode::OK {
            assert!(Instant::now() < deadline, "never recovered: {}", read());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for _ in 0..5 {
            http.get("/v2/app/manifests/v1").await;
        }
    });
    // Lines below warn reach the file from the log's writer thread a little later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read().contains("upstream recovered") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = read();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("upstream down: circuit open"), 1, "{text}");
    assert_eq!(count("upstream recovered: circuit closed"), 1, "{text}");
    let down = text
        .lines()
        .find(|l| l.contains("upstream down"))
        .unwrap_or_default();
    assert!(down.contains("WARN"), "{down}");
    assert!(down.contains("logged.health.test"), "{down}");
    assert!(down.contains("503 Service Unavailable"), "{down}");
}
