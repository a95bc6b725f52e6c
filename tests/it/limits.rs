//! Per-client rate limits (`[limits]`): 429 with Retry-After and TOOMANYREQUESTS,
//! separate manifest and blob quotas, the allow-list, trusted proxies, health routes.

use crate::support::http::Http;
use crate::support::server::TestServer;
use agent_registry::config::{Config, IpNet, LimitsConfig, Rate};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::Duration;

/// Manifests: a burst of 3, then one a second; blobs: a burst of 5.
fn tight(allow: &[&str], trusted: &[&str]) -> LimitsConfig {
    let nets = |v: &[&str]| v.iter().map(|s| IpNet::parse(s).expect("cidr")).collect();
    LimitsConfig {
        enabled: true,
        manifests: Rate::new(1, 3),
        blobs: Rate::new(1, 5),
        trusted_proxies: nets(trusted),
        allow: nets(allow),
    }
}

const MANIFEST: &str = "/v2/t/limited/manifests/v1";
const BLOB: &str =
    "/v2/t/limited/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Status, `Retry-After` and OCI error code (if any) of a request through `App::handle`
/// from a made-up peer: no socket, so any address will do.
async fn handle(srv: &TestServer, peer: &str, xff: Option<&str>) -> (StatusCode, Option<String>) {
    let mut b = Request::builder().uri(MANIFEST);
    if let Some(v) = xff {
        b = b.header("x-forwarded-for", v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    let peer: SocketAddr = peer.parse().expect("peer");
    let resp = srv.app.handle(req, peer).await;
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let _ = resp.into_body().collect().await;
    (status, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_manifest_quota_is_refused_until_retry_after() {
    let srv = TestServer::start_with(|c| c.limits = tight(&[], &[]));
    let http = Http::new(&srv.host());
    for _ in 0..3 {
        let r = http.get(MANIFEST).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    }
    let r = http.get(MANIFEST).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains("127.0.0.1") && message.contains("manifest"),
        "{message}"
    );
    // Tags share the manifest quota; HEAD gets the status and header without a body.
    assert_eq!(
        http.get("/v2/t/limited/tags/list").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let h = http.head(MANIFEST).await;
    assert_eq!(h.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(h.header("retry-after").is_some() && h.body.is_empty());
    let metrics = http.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    let counted = text
        .lines()
        .find_map(|l| l.strip_prefix("agent_registry_rate_limited_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(counted.is_some_and(|n| n >= 1.0), "{counted:?}");
    // Blobs are a separate quota: the same client still gets through.
    for _ in 0..3 {
        assert_eq!(http.get(BLOB).await.status, StatusCode::NOT_FOUND);
    }
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(http.get(MANIFEST).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_and_upload_requests_share_the_blob_quota() {
    let srv = TestServer::start_with(|c| c.limits = tight(&[], &[]));
    let http = Http::new(&srv.host());
    http.push_blob("t/limited", b"one").await;
    for _ in 0..4 {
        assert_eq!(http.head(BLOB).await.status, StatusCode::NOT_FOUND);
    }
    let r = http.get(BLOB).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    // The manifest quota is untouched.
    assert_eq!(http.get(MANIFEST).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_listed_clients_and_health_routes_are_never_limited() {
    // The default allow-list holds loopback.
    let srv = TestServer::start_with(|c| {
        c.limits = tight(&["127.0.0.0/8", "::1/128"], &[]);
    });
    let http = Http::new(&srv.host());
    for _ in 0..20 {
        assert_eq!(http.get(MANIFEST).await.status, StatusCode::NOT_FOUND);
    }
    drop(http);
    drop(srv);
    let srv = TestServer::start_with(|c| c.limits = tight(&[], &[]));
    let http = Http::new(&srv.host());
    for _ in 0..5 {
        let _ = http.get(MANIFEST).await;
    }
    assert_eq!(
        http.get(MANIFEST).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..10 {
        for path in ["/healthz", "/readyz", "/health", "/metrics", "/v2/"] {
            let r = http.get(path).await;
            assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
            assert!(r.status.is_success(), "{path}: {}", r.status);
        }
    }
}

/// An anonymous client off loopback may not read a hosted repository nobody pushed:
/// the answer (401) is what counts here, only that it is not 429.
const DENIED: StatusCode = StatusCode::UNAUTHORIZED;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let srv = TestServer::start_with(|c| {
        c.limits = tight(&["203.0.113.7/32"], &["10.0.0.0/8"]);
    });
    // Through the trusted proxy 10.0.0.1, the allow-listed 203.0.113.7 is never limited.
    for _ in 0..10 {
        let (status, _) = handle(&srv, "10.0.0.1:4000", Some("203.0.113.7")).await;
        assert_eq!(status, DENIED);
    }
    // From an untrusted peer the same header is ignored: the peer itself is limited.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(handle(&srv, "198.51.100.9:4000", Some("203.0.113.7")).await);
    }
    assert_eq!(statuses[2].0, DENIED);
    assert_eq!(statuses[3].0, StatusCode::TOO_MANY_REQUESTS);
    assert!(statuses[3].1.is_some());
    // Behind the trusted proxy, each forwarded client has its own quota: the rightmost
    // untrusted hop counts, a spoofed leftmost entry does not.
    for _ in 0..3 {
        let (status, _) = handle(&srv, "10.0.0.1:4000", Some("6.6.6.6, 192.0.2.1, 10.0.0.2")).await;
        assert_eq!(status, DENIED);
    }
    let (status, _) = handle(&srv, "10.0.0.1:4000", Some("7.7.7.7, 192.0.2.1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = handle(&srv, "10.0.0.1:4000", Some("192.0.2.2")).await;
    assert_eq!(status, DENIED);
    // The proxy itself, with no header, is a client of its own.
    let (status, _) = handle(&srv, "10.0.0.1:4000", None).await;
    assert_eq!(status, DENIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_limits_never_refuse() {
    let srv = TestServer::start_with(|c| {
        c.limits = LimitsConfig {
            enabled: false,
            ..tight(&[], &[])
        }
    });
    for _ in 0..10 {
        let (status, _) = handle(&srv, "198.51.100.9:4000", None).await;
        assert_eq!(status, DENIED);
    }
}

#[test]
fn config_errors_name_the_key() {
    let load = |text: &str| Config::from_toml_str(text, "/x.toml", &|_| None).map(|_| ());
    let cases = [
        (
            "[limits]\nmanifests_burst = 0\n",
            "key limits.manifests_burst",
        ),
        (
            "[limits]\nblobs_per_second = 5000000000\n",
            "key limits.blobs_per_second",
        ),
        (
            "[limits]\nallow = [\"10.0.0.1/8\"]\n",
            "key limits.allow[0]",
        ),
        (
            "[limits]\ntrusted_proxies = [\"proxy.local\"]\n",
            "key limits.trusted_proxies[0]",
        ),
        ("[limits]\nenabled = \"yes\"\n", "limits.enabled"),
        ("[limits]\nburst = 1\n", "limits.burst"),
    ];
    for (text, key) in cases {
        let e = load(text).expect_err(text).to_string();
        assert!(
            e.starts_with("config /x.toml: ") && e.contains(key),
            "{text:?}: {e}"
        );
    }
    let c = Config::from_toml_str("", "/x.toml", &|_| None).expect("default");
    assert_eq!(c.limits, LimitsConfig::default());
    assert_eq!(c.limits.manifests, Rate::new(50, 200));
}
