//! `GET /metrics`, `/health?detailed=1` and `agent registry metrics`. The recorder is
//! process-wide and tests run in parallel, so counters are compared before and after
//! (`>=` deltas) or read under label sets no other test uses (a distinct upstream name).

use crate::mirror::mirror_of;
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{image_manifest, Http};
use crate::support::server::TestServer;
use agent_registry::config::UpstreamConfig;
use agent_registry::dispatch::Handle;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// The sum of every sample of `name` whose labels include all of `labels`.
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, want)| rest.split(',').any(|p| p == format!("{k}=\"{want}\"")));
            all.then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

pub(crate) async fn scrape(http: &Http) -> String {
    let r = http.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    String::from_utf8(r.body.to_vec()).expect("utf-8")
}

/// How much `name{labels}` grew between two scrapes.
pub(crate) fn delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}

#[tokio::test]
async fn metrics_endpoint_speaks_the_text_format() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let r = http.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body.to_vec()).expect("utf-8");
    for line in [
        "# TYPE agent_registry_pull_operations_total counter",
        "# TYPE agent_registry_fills_in_flight gauge",
        "# TYPE agent_registry_storage_free_bytes gauge",
    ] {
        assert!(text.contains(line), "{line} missing in:\n{text}");
    }
    // A second scrape sees the first one, with its histogram.
    let text = scrape(&http).await;
    assert!(value(&text, REQ, &[("route", "metrics"), ("method", "GET")]) >= 1.0);
    assert!(text.contains("agent_registry_request_duration_seconds_bucket{"));
    assert_eq!(http.head("/metrics").await.status, StatusCode::OK);
}

const REQ: &str = "agent_registry_requests_total";
const SERVED: &str = "agent_registry_served_bytes_total";

#[tokio::test]
async fn hosted_push_and_pull_move_the_operation_counters() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let before = scrape(&http).await;

    let config = http.push_blob("metrics/hosted", b"{\"c\":1}").await;
    let layer = http.push_blob("metrics/hosted", &[7u8; 1000]).await;
    let m = image_manifest((&config, 7), &[(&layer, 1000)], None);
    let r = http.put_manifest("metrics/hosted", "v1", OCI, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = http.get("/v2/metrics/hosted/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = http.get(&format!("/v2/metrics/hosted/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = http.get("/v2/metrics/hosted/manifests/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let after = scrape(&http).await;
    let d = |name, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert!(d("agent_registry_push_operations_total", &[]) >= 1.0);
    assert!(d("agent_registry_pull_operations_total", &[]) >= 1.0);
    let put = [
        ("route", "manifest"),
        ("method", "PUT"),
        ("status_class", "2xx"),
        ("cache", "none"),
    ];
    assert!(d(REQ, &put) >= 1.0);
    let missing = [
        ("route", "manifest"),
        ("method", "GET"),
        ("status_class", "4xx"),
    ];
    assert!(d(REQ, &missing) >= 1.0);
    assert!(d(REQ, &[("route", "upload"), ("method", "POST")]) >= 2.0);
    // Hosted bytes come from disk: the manifest and the layer.
    assert!(d(SERVED, &[("source", "disk")]) >= (m.len() + 1000) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_pull_is_served_from_upstream_then_from_disk() {
    let fake = FakeUpstream::start();
    let blob = vec![42u8; 300_000];
    let digest = fake.add_blob("library/metrics-app", blob.clone());
    let config = fake.add_blob("library/metrics-app", b"{}".to_vec());
    let m = image_manifest((&config, 2), &[(&digest, blob.len())], None);
    fake.add_manifest("library/metrics-app", "v1", OCI, m);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    let path = format!("/v2/metrics-app/blobs/{digest}");
    let len = blob.len() as f64;

    let s0 = scrape(&http).await;
    let r = http.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-cache"), Some("miss"));
    let s1 = scrape(&http).await;
    assert!(delta(&s0, &s1, SERVED, &[("source", "upstream")]) >= len);
    let ok = [("upstream", "docker.io"), ("outcome", "ok")];
    assert!(delta(&s0, &s1, "agent_registry_upstream_requests_total", &ok) >= 1.0);
    let miss = [
        ("route", "blob"),
        ("status_class", "2xx"),
        ("cache", "miss"),
    ];
    assert!(delta(&s0, &s1, REQ, &miss) >= 1.0);

    // The fill commits just after the client got its bytes.
    let d: agent_registry::oci::Digest = digest.parse().expect("digest");
    for _ in 0..300 {
        if srv.app.storage.blobs.path(&d).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = http.get(&path).await;
    assert_eq!(r.header("x-cache"), Some("hit"));
    let r = http.get("/v2/metrics-app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    let s2 = scrape(&http).await;
    assert!(delta(&s1, &s2, SERVED, &[("source", "disk")]) >= len);
    assert!(delta(&s1, &s2, "agent_registry_pull_operations_total", &[]) >= 1.0);
    assert_eq!(fake.blob_gets(&digest), 1);
}

/// An upstream name no other test uses, so its series can be read as absolute values.
fn upstream(name: &str, url: &str) -> UpstreamConfig {
    let mut up = UpstreamConfig::new(name, url);
    up.first_byte_timeout = Duration::from_secs(2);
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detailed_health_probes_upstreams_once_per_interval() {
    let fake = FakeUpstream::start();
    fake.set(|s| s.ratelimit_remaining = Some("42;w=21600".into()));
    let stopped = FakeUpstream::start();
    let stopped_url = stopped.url();
    drop(stopped);
    let (live, dead) = (fake.url(), stopped_url);
    let srv = TestServer::start_with(move |cfg| {
        // Only these two: the report probes every configured upstream.
        cfg.upstreams.clear();
        cfg.upstreams.push(upstream("live.metrics.test", &live));
        cfg.upstreams.push(upstream("dead.metrics.test", &dead));
    });
    let http = Http::new(&srv.host());

    let r = http.get("/health?detailed=1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    assert_eq!(v["draining"], false);
    assert_eq!(v["storage"]["writable"], true);
    assert!(v["storage"]["free_bytes"].as_u64().is_some_and(|n| n > 0));
    assert!(v["storage"]["total_bytes"].as_u64().is_some_and(|n| n > 0));
    assert_eq!(v["fills_in_flight"], 0);
    let find = |v: &serde_json::Value, name: &str| {
        v["upstreams"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} missing in {v}"))
    };
    let up = find(&v, "live.metrics.test");
    assert_eq!(up["reachable"], true, "{up}");
    assert_eq!(up["status"], 200);
    assert_eq!(up["url"], fake.url().as_str());
    assert!(up["error"].is_null());
    assert!(up["latency_ms"].is_u64());
    let down = find(&v, "dead.metrics.test");
    assert_eq!(down["reachable"], false, "{down}");
    assert!(down["status"].is_null());
    assert!(down["error"]
        .as_str()
        .is_some_and(|e| e.contains("dead.metrics.test")));

    // Within the interval the cached answers are reused: one probe per upstream.
    let again = http.get("/health").await.json();
    assert_eq!(find(&again, "live.metrics.test")["reachable"], true);
    assert_eq!(fake.hits("GET", "/v2/"), 1);

    // The probes went through the upstream client, so its metrics saw them.
    let text = scrape(&http).await;
    let name = "agent_registry_upstream_requests_total";
    let live = [("upstream", "live.metrics.test"), ("outcome", "ok")];
    assert_eq!(value(&text, name, &live), 1.0);
    let dead = [
        ("upstream", "dead.metrics.test"),
        ("outcome", "connect_error"),
    ];
    assert_eq!(value(&text, name, &dead), 1.0);
    let rl = [("upstream", "live.metrics.test")];
    assert_eq!(
        value(&text, "agent_registry_upstream_ratelimit_remaining", &rl),
        42.0
    );
}

#[tokio::test]
async fn a_refused_write_counts_as_denied() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let before = scrape(&http).await;
    // Not through a socket: Handle::handle with a peer that is not loopback.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/v2/metrics/refused/manifests/v1")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let peer = "192.0.2.7:40000".parse().expect("addr");
    let resp = srv.app.handle(req, peer).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let after = scrape(&http).await;
    let push = [("action", "push")];
    assert!(delta(&before, &after, "agent_registry_auth_denied_total", &push) >= 1.0);
}

#[test]
fn cli_prints_one_metric_family() {
    let srv = TestServer::start();
    let family = "agent_registry_pull_operations_total";
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["registry", "metrics", "--metric", family])
        .args(["--registry", &srv.url("")])
        .output()
        .expect("run agent");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"# TYPE agent_registry_pull_operations_total counter"));
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{family} "))),
        "{out}"
    );
    assert!(lines.iter().all(|l| l.contains(family)), "{out}");

    // Without --metric: everything; an unknown family is an error naming it.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["registry", "metrics", "--registry", &srv.url("")])
        .output()
        .expect("run agent");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("agent_registry_requests_total"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["registry", "metrics", "--metric", "agent_registry_nope"])
        .args(["--registry", &srv.url("")])
        .output()
        .expect("run agent");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("agent_registry_nope"));
}

/// Every metric name declared in src/metrics.rs is in README's metrics table with its
/// type, labels and description, and the table lists nothing else.
#[test]
fn tidy_every_metric_is_documented() {
    let root = env!("CARGO_MANIFEST_DIR");
    let src = std::fs::read_to_string(format!("{root}/src/metrics.rs")).expect("metrics.rs");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let declared: Vec<&str> = src
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const") || l.trim_start().starts_with('"'))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|n| n.starts_with("agent_registry_"))
        .collect();
    assert!(declared.len() >= 17, "{declared:?}");
    let mut sorted = declared.clone();
    sorted.sort_unstable();
    let mut exported: Vec<&str> = agent_registry::metrics::ALL
        .iter()
        .map(|d| d.name)
        .collect();
    exported.sort_unstable();
    assert_eq!(sorted, exported, "every constant is in metrics::ALL");
    let documented: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `agent_registry_"))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    for name in &declared {
        assert!(
            documented.contains(name),
            "{name} missing in README's metrics table"
        );
    }
    for name in &documented {
        assert!(
            declared.contains(name),
            "README documents unknown metric {name}"
        );
    }
    // The table's type and labels columns say what the code declares.
    for d in agent_registry::metrics::ALL {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", d.name)))
            .unwrap_or_else(|| panic!("no row for {}", d.name));
        let cols: Vec<&str> = row.split('|').map(str::trim).collect();
        let kind = format!("{:?}", d.kind).to_lowercase();
        assert_eq!(cols.get(2), Some(&kind.as_str()), "{row}");
        let labels: Vec<&str> = cols
            .get(3)
            .map(|c| c.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        assert_eq!(labels, d.labels, "{row}");
        // The meaning column is the help text /metrics serves (code marks and case
        // aside): one description, not two that drift apart.
        let meaning = normalize(cols.get(4).copied().unwrap_or(""));
        let help = normalize(d.help);
        assert_eq!(
            meaning, help,
            "README's meaning of {} differs from its help text in src/metrics.rs",
            d.name
        );
    }
    // A closed label set written out in the README is the code's set.
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `agent_registry_requests_total` |"))
        .expect("requests_total row");
    let listed = row
        .split("`route` is one of ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or_else(|| panic!("the route list in {row}"));
    let mut listed: Vec<&str> = listed.split(", ").map(str::trim).collect();
    listed.sort_unstable();
    let mut routes = agent_registry::web::route::LABELS.to_vec();
    routes.sort_unstable();
    assert_eq!(listed, routes, "README's route label values");
}

/// Lowercase, markdown code marks removed, whitespace collapsed.
fn normalize(s: &str) -> String {
    s.replace('`', "")
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn the_admin_listener_serves_health_metrics_and_admin_only() {
    let srv = TestServer::start_with(|c| {
        c.server.admin_listen = Some("127.0.0.1:0".parse().expect("addr"));
    });
    let admin = Http::new(&srv.admin_addr.expect("admin listener").to_string());
    for path in [
        "/healthz",
        "/readyz",
        "/health?detailed=1",
        "/metrics",
        "/admin/whoami",
    ] {
        let r = admin.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    let text = String::from_utf8_lossy(&admin.get("/metrics").await.body).to_string();
    assert!(text.contains("agent_registry_requests_total"), "{text}");
    for path in ["/v2/", "/v2/_catalog", "/v2/a/tags/list", "/token"] {
        let r = admin.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.error_code(), "UNSUPPORTED");
    }
    // The main listener still has /metrics.
    let main = Http::new(&srv.host());
    assert_eq!(main.get("/metrics").await.status, StatusCode::OK);
}
