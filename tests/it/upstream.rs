//! The upstream client (`agent_registry::upstream`) against the fault-injecting fake
//! upstream: token auth, basic auth, retries, 429, timeouts, ranges, rate-limit headers;
//! and against Debian's docker-registry (CNCF distribution) as a real peer.

use crate::support::distribution::Distribution;
use crate::support::fake_upstream::{base64, AuthMode, FakeUpstream};
use crate::support::http::{image_manifest, Http};
use crate::support::tools;
use agent_registry::config::{Secret, UpstreamConfig};
use agent_registry::oci::ErrorCode;
use agent_registry::upstream::{TimeoutPhase, Upstream, UpstreamError};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn upstream(url: &str, f: impl FnOnce(&mut UpstreamConfig)) -> Arc<Upstream> {
    let mut cfg = UpstreamConfig::new("fake", url);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.first_byte_timeout = Duration::from_secs(5);
    cfg.idle_timeout = Duration::from_secs(5);
    f(&mut cfg);
    Arc::new(Upstream::new(cfg).expect("upstream"))
}

/// A fake with one manifest `test/app:v1` and returns its path.
fn with_manifest(fake: &FakeUpstream) -> String {
    fake.add_manifest(
        "test/app",
        "v1",
        OCI_MANIFEST,
        &b"{\"schemaVersion\":2}"[..],
    );
    "/v2/test/app/manifests/v1".to_string()
}

async fn get(
    up: &Upstream,
    path: &str,
) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
    up.send(Method::GET, path, "test/app", HeaderMap::new())
        .await
}

async fn read_all(
    up: &Upstream,
    resp: http::Response<hyper::body::Incoming>,
) -> Result<Vec<u8>, UpstreamError> {
    let mut body = up.body(resp);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_token_flow_is_single_flight_and_cached() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| s.auth = AuthMode::bearer(300));
    let up = upstream(&fake.url(), |_| {});

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (up, path) = (up.clone(), path.clone());
            tokio::spawn(async move { get(&up, &path).await.map(|r| r.status()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("join").expect("send"), StatusCode::OK);
    }
    assert_eq!(
        fake.token_requests(),
        1,
        "one token fetch for 20 concurrent requests"
    );
    assert_eq!(up.token_fetches(), 1);
    assert_eq!(fake.token_auth(), vec![None], "anonymous token request");

    // The cached token goes out up front: one hit, no 401 round trip.
    let before = fake.hits("GET", &path);
    assert_eq!(
        get(&up, &path).await.expect("send").status(),
        StatusCode::OK
    );
    assert_eq!(fake.hits("GET", &path), before + 1);
    assert_eq!(fake.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_fetched_again_after_expiry() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| s.auth = AuthMode::bearer(1));
    let up = upstream(&fake.url(), |_| {});
    get(&up, &path).await.expect("first");
    get(&up, &path).await.expect("cached");
    assert_eq!(up.token_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get(&up, &path).await.expect("after expiry");
    assert_eq!((up.token_fetches(), fake.token_requests()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentialed_token_flow_sends_basic_to_the_realm_only() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| {
        s.auth = AuthMode::Bearer {
            expires_in: None,
            credentials: Some(("alice".into(), "s3cret-pw".into())),
            reject_tokens: false,
        }
    });
    let up = upstream(&fake.url(), |c| {
        c.username = Some("alice".into());
        c.password = Some(Secret::new("s3cret-pw"));
    });
    assert_eq!(
        get(&up, &path).await.expect("send").status(),
        StatusCode::OK
    );
    let expected = format!("Basic {}", base64("alice:s3cret-pw"));
    assert_eq!(fake.token_auth(), vec![Some(expected)]);

    let wrong = upstream(&fake.url(), |c| {
        c.username = Some("alice".into());
        c.password = Some(Secret::new("wrong-pw"));
    });
    let e = get(&wrong, &path).await.expect_err("wrong password");
    let msg = e.to_string();
    assert!(matches!(e, UpstreamError::Auth { .. }), "{e:?}");
    assert!(!e.is_unavailable());
    assert!(
        msg.contains("upstream fake: token GET http://")
            && msg.contains("refused the configured credentials"),
        "{msg}"
    );
    for secret in ["wrong-pw", "s3cret-pw", &base64("alice:wrong-pw")] {
        assert!(
            !msg.contains(secret) && !format!("{e:?}").contains(secret),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_upstream() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| s.auth = AuthMode::Basic("bob".into(), "hunter2".into()));
    let up = upstream(&fake.url(), |c| {
        c.username = Some("bob".into());
        c.password = Some(Secret::new("hunter2"));
    });
    assert_eq!(
        get(&up, &path).await.expect("send").status(),
        StatusCode::OK
    );
    assert_eq!(fake.hits("GET", &path), 2, "one 401, then basic");
    get(&up, &path).await.expect("again");
    assert_eq!(
        fake.hits("GET", &path),
        3,
        "basic credentials now go up front"
    );
    assert_eq!(fake.token_requests(), 0);

    let anonymous = upstream(&fake.url(), |_| {});
    let e = get(&anonymous, &path).await.expect_err("no credentials");
    assert!(e.to_string().contains("none are configured"), "{e}");

    let wrong = upstream(&fake.url(), |c| {
        c.username = Some("bob".into());
        c.password = Some(Secret::new("letmein"));
    });
    let e = get(&wrong, &path).await.expect_err("wrong password");
    let msg = e.to_string();
    assert!(
        msg.contains("still 401 with the configured username and password")
            && !msg.contains("letmein"),
        "{msg}"
    );
    assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_token_is_sent_up_front() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| s.auth = AuthMode::StaticToken("pat-123".into()));
    let up = upstream(&fake.url(), |c| c.token = Some(Secret::new("pat-123")));
    assert_eq!(
        get(&up, &path).await.expect("send").status(),
        StatusCode::OK
    );
    assert_eq!((fake.hits("GET", &path), fake.token_requests()), (1, 0));

    let wrong = upstream(&fake.url(), |c| c.token = Some(Secret::new("pat-999")));
    let e = get(&wrong, &path).await.expect_err("refused");
    assert!(
        e.to_string().contains("configured token was refused")
            && !e.to_string().contains("pat-999"),
        "{e}"
    );
    assert_eq!(fake.token_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_401_is_an_auth_error() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| {
        s.auth = AuthMode::Bearer {
            expires_in: Some(300),
            credentials: None,
            reject_tokens: true,
        }
    });
    let up = upstream(&fake.url(), |_| {});
    let e = get(&up, &path).await.expect_err("never let in");
    assert!(matches!(e, UpstreamError::Auth { .. }), "{e:?}");
    assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(!e.is_unavailable());
    assert!(!e.to_string().contains("fake-token"), "{e}");
    assert_eq!((fake.hits("GET", &path), fake.token_requests()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_once_then_open_the_circuit() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    let up = upstream(&fake.url(), |_| {});
    // The first failure in a row is retried once.
    fake.set(|s| s.server_errors = 1);
    assert_eq!(
        get(&up, &path).await.expect("second attempt").status(),
        StatusCode::OK
    );
    assert_eq!(fake.hits("GET", &path), 2);

    fake.set(|s| {
        s.server_errors = 10;
        s.server_error_status = Some(StatusCode::BAD_GATEWAY);
    });
    let started = Instant::now();
    let e = get(&up, &path).await.expect_err("gives up");
    assert_eq!(fake.hits("GET", &path), 4, "at most 2 attempts");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(e.is_unavailable() && e.status().is_none(), "{e:?}");
    assert!(e.to_string().contains("502 Bad Gateway"), "{e}");
    // The third failure in a row is not retried and opens the circuit: then nothing
    // is sent until the backoff passes.
    get(&up, &path).await.expect_err("third failure");
    assert_eq!(fake.hits("GET", &path), 5);
    let e = get(&up, &path).await.expect_err("refused");
    assert!(matches!(e, UpstreamError::Refused { .. }), "{e:?}");
    assert!(e.is_unavailable());
    assert!(e.to_string().contains("502 Bad Gateway"), "the cause: {e}");
    assert_eq!(fake.hits("GET", &path), 5);

    // Other 5xx are not retried.
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    let up = upstream(&fake.url(), |_| {});
    fake.set(|s| {
        s.server_errors = 1;
        s.server_error_status = Some(StatusCode::INTERNAL_SERVER_ERROR);
    });
    let e = get(&up, &path).await.expect_err("500");
    assert!(e.is_unavailable());
    assert_eq!(fake.hits("GET", &path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_retry_after_is_waited_out_once() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    let up = upstream(&fake.url(), |_| {});
    fake.set(|s| {
        s.too_many = 1;
        s.retry_after = Some("1".into());
    });
    let started = Instant::now();
    assert_eq!(
        get(&up, &path).await.expect("after waiting").status(),
        StatusCode::OK
    );
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.hits("GET", &path), 2);

    // A second 429 in the same request is not waited for again.
    fake.set(|s| s.too_many = 2);
    let e = get(&up, &path).await.expect_err("429 twice");
    assert!(matches!(e, UpstreamError::TooManyRequests { .. }), "{e:?}");
    assert_eq!(fake.hits("GET", &path), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_retry_after_fails_fast() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    let up = upstream(&fake.url(), |_| {});
    fake.set(|s| {
        s.too_many = 1;
        s.retry_after = Some("120".into());
    });
    let started = Instant::now();
    let e = get(&up, &path).await.expect_err("429");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    match &e {
        UpstreamError::TooManyRequests { retry_after, .. } => {
            assert_eq!(*retry_after, Some(Duration::from_secs(120)))
        }
        other => panic!("expected TooManyRequests, got {other:?}"),
    }
    assert!(e.is_unavailable());
    assert_eq!(e.code(), Some(ErrorCode::Toomanyrequests));
    assert_eq!(fake.hits("GET", &path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let up = upstream(&format!("http://127.0.0.1:{port}"), |_| {});
    let started = Instant::now();
    let e = get(&up, "/v2/test/app/manifests/v1")
        .await
        .expect_err("refused");
    assert!(matches!(e, UpstreamError::Connect { .. }), "{e:?}");
    assert!(e.is_unavailable());
    let msg = e.to_string();
    assert!(
        msg.starts_with("upstream fake: GET /v2/test/app/manifests/v1: cannot connect: "),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_timeout() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    fake.set(|s| s.stall_head = Some(Duration::from_secs(3)));
    let up = upstream(&fake.url(), |c| {
        c.first_byte_timeout = Duration::from_millis(500)
    });
    let started = Instant::now();
    let e = get(&up, &path).await.expect_err("stalled head");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    match &e {
        UpstreamError::Timeout { phase, after, .. } => {
            assert_eq!(
                (*phase, *after),
                (TimeoutPhase::FirstByte, Duration::from_millis(500))
            )
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(e.is_unavailable());
    assert_eq!(
        e.to_string(),
        "upstream fake: GET /v2/test/app/manifests/v1: timed out waiting for the first byte after 500ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_mid_body() {
    let fake = FakeUpstream::start();
    let digest = fake.add_blob("test/app", payload(64 * 1024));
    fake.set(|s| s.stall_after = Some((1000, Duration::from_secs(3))));
    let up = upstream(&fake.url(), |c| c.idle_timeout = Duration::from_millis(300));
    let resp = get(&up, &format!("/v2/test/app/blobs/{digest}"))
        .await
        .expect("head arrives");
    let started = Instant::now();
    let mut body = up.body(resp);
    let mut got = 0;
    let e = loop {
        match body.next().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("body ended without the idle timeout"),
        }
    };
    assert_eq!(got, 1000);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e,
            UpstreamError::Timeout {
                phase: TimeoutPhase::Idle,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains(&format!("GET /v2/test/app/blobs/{digest}: timed out")),
        "{e}"
    );
    assert!(
        body.next().await.is_none(),
        "the stream ends after its error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_an_error() {
    let fake = FakeUpstream::start();
    let digest = fake.add_blob("test/app", payload(40_000));
    fake.set(|s| s.truncate_after = Some(5000));
    let up = upstream(&fake.url(), |_| {});
    let resp = get(&up, &format!("/v2/test/app/blobs/{digest}"))
        .await
        .expect("head");
    let e = read_all(&up, resp).await.expect_err("truncated");
    assert!(matches!(e, UpstreamError::Body { .. }), "{e:?}");
    assert!(e.is_unavailable());
    assert!(e.to_string().contains("body broke off"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_passes_through() {
    let fake = FakeUpstream::start();
    let data = payload(100);
    let digest = fake.add_blob("test/app", data.clone());
    let up = upstream(&fake.url(), |_| {});
    let mut h = HeaderMap::new();
    h.insert(header::RANGE, HeaderValue::from_static("bytes=10-19"));
    let path = format!("/v2/test/app/blobs/{digest}");
    let resp = up
        .send(Method::GET, &path, "test/app", h.clone())
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()["content-range"], "bytes 10-19/100");
    assert_eq!(read_all(&up, resp).await.expect("body"), &data[10..20]);

    // The fake's switches: a server that ignores Range, and corrupted bytes.
    fake.set(|s| {
        s.ignore_range = true;
        s.corrupt = true;
    });
    let resp = up
        .send(Method::GET, &path, "test/app", h)
        .await
        .expect("full");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = read_all(&up, resp).await.expect("body");
    assert_eq!(body.len(), 100);
    assert_ne!(body, data);
    assert_eq!(fake.blob_gets(&digest), 2);

    let resp = up
        .send(Method::HEAD, &path, "test/app", HeaderMap::new())
        .await
        .expect("head");
    assert_eq!(resp.headers()["content-length"], "100");
    assert_eq!(fake.blob_gets(&digest), 2, "HEAD is not a blob GET");

    // Pacing: 2000 bytes at 10 bytes per millisecond take 200 chunks of at least 1 ms.
    let slow = fake.add_blob("test/app", payload(2000));
    fake.set(|s| s.pace = Some(10));
    let started = Instant::now();
    let resp = get(&up, &format!("/v2/test/app/blobs/{slow}"))
        .await
        .expect("paced");
    assert_eq!(read_all(&up, resp).await.expect("body").len(), 2000);
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratelimit_remaining_is_recorded() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    let up = upstream(&fake.url(), |_| {});
    get(&up, &path).await.expect("send");
    assert_eq!(up.ratelimit_remaining(), None);
    fake.set(|s| s.ratelimit_remaining = Some("97;w=21600".into()));
    get(&up, &path).await.expect("send");
    assert_eq!(up.ratelimit_remaining(), Some(97));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_passed_through_with_its_code() {
    let fake = FakeUpstream::start();
    let up = upstream(&fake.url(), |_| {});
    let e = get(&up, "/v2/test/app/manifests/nope")
        .await
        .expect_err("404");
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(e.code(), Some(ErrorCode::ManifestUnknown));
    assert!(!e.is_unavailable());
    assert_eq!(
        e.to_string(),
        "upstream fake: GET /v2/test/app/manifests/nope: 404 Not Found MANIFEST_UNKNOWN: manifest unknown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_permit_is_not_held_by_slow_bodies() {
    let fake = FakeUpstream::start();
    let path = with_manifest(&fake);
    let digest = fake.add_blob("test/app", payload(8192));
    fake.set(|s| s.stall_after = Some((10, Duration::from_secs(2))));
    let up = upstream(&fake.url(), |c| c.max_concurrency = 1);
    let slow = get(&up, &format!("/v2/test/app/blobs/{digest}"))
        .await
        .expect("slow blob");
    let started = Instant::now();
    fake.set(|s| s.stall_after = None);
    assert_eq!(
        get(&up, &path).await.expect("manifest").status(),
        StatusCode::OK
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
}

/// Debian's docker-registry (CNCF distribution) as the upstream: a blob and a manifest
/// pushed through its API come back through `Upstream` byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_blob_and_manifest() {
    let started = tokio::task::spawn_blocking(Distribution::start);
    let Some(dist) = started.await.expect("start") else {
        return; // docker-registry not installed and REQUIRE_INTEROP unset
    };
    let http = Http::new(&dist.host());
    let repo = "test/interop";
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer = payload(300_000);
    let config_digest = push_blob(&http, repo, &config).await;
    let layer_digest = push_blob(&http, repo, &layer).await;
    let manifest = image_manifest(
        (&config_digest, config.len()),
        &[(&layer_digest, layer.len())],
        None,
    );
    let r = http.put_manifest(repo, "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    let up = upstream(&dist.url(), |_| {});
    let resp = up
        .send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{layer_digest}"),
            repo,
            HeaderMap::new(),
        )
        .await
        .expect("blob");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(read_all(&up, resp).await.expect("blob body") == layer);

    let mut accept = HeaderMap::new();
    accept.insert(header::ACCEPT, HeaderValue::from_static(OCI_MANIFEST));
    let resp = up
        .send(
            Method::GET,
            &format!("/v2/{repo}/manifests/v1"),
            repo,
            accept.clone(),
        )
        .await
        .expect("manifest");
    let digest = agent_registry::oci::Digest::sha256_of(&manifest).to_string();
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(read_all(&up, resp).await.expect("manifest body"), manifest);

    let e = up
        .send(
            Method::HEAD,
            &format!("/v2/{repo}/manifests/v2"),
            repo,
            accept,
        )
        .await
        .expect_err("unknown tag");
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    // The access log line is written as the request completes: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while dist.hits("GET", &layer_digest) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dist.hits("GET", &layer_digest), 1, "one blob GET upstream");
}

/// POST an upload, PUT its bytes with the digest; returns the digest.
async fn push_blob(http: &Http, repo: &str, data: &[u8]) -> String {
    let digest = agent_registry::oci::Digest::sha256_of(data).to_string();
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let location = r.header("location").expect("upload location").to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = http
        .send(
            Method::PUT,
            &format!("{location}{sep}digest={digest}"),
            &[("content-type", "application/octet-stream")],
            data.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    digest
}

/// TLS: an upstream whose certificate comes from a private CA is refused by default,
/// trusted with `ca_file` (and then only for its own name), and accepted by anything
/// under `insecure_skip_verify`. The client offers h2 and http/1.1 by ALPN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ca_file_and_insecure_skip_verify() {
    if !tools::require("openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = TlsPeer::start(dir.path());
    let (by_name, by_ip) = (
        format!("https://localhost:{}", peer.port),
        format!("https://127.0.0.1:{}", peer.port),
    );
    let ok = |up: Arc<Upstream>| async move {
        let resp = get(&up, "/v2/").await?;
        assert_eq!(resp.status(), StatusCode::OK);
        read_all(&up, resp).await
    };

    let e = ok(upstream(&by_name, |_| {}))
        .await
        .expect_err("private CA");
    assert!(matches!(e, UpstreamError::Tls { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("upstream fake: GET /v2/: tls: "),
        "{e}"
    );

    let ca = dir.path().join("ca.pem");
    let trusted = upstream(&by_name, |c| c.ca_file = Some(ca.clone()));
    assert_eq!(ok(trusted).await.expect("trusted by ca_file"), b"ok");
    let wrong_name = upstream(&by_ip, |c| c.ca_file = Some(ca.clone()));
    let e = ok(wrong_name).await.expect_err("name mismatch");
    assert!(matches!(e, UpstreamError::Tls { .. }), "{e:?}");

    let lab = upstream(&by_ip, |c| c.insecure_skip_verify = true);
    assert_eq!(ok(lab).await.expect("insecure_skip_verify"), b"ok");

    let offered = peer.offered_alpn.lock().expect("alpn").clone();
    assert!(!offered.is_empty());
    for alpn in offered {
        assert_eq!(alpn, ["h2", "http/1.1"]);
    }
}

/// A blocking TLS server (rustls) with a private CA's certificate for `localhost`,
/// answering every request with `200 ok` over HTTP/1.1. Records the ALPN protocols
/// each client offered. Stops on drop.
struct TlsPeer {
    port: u16,
    offered_alpn: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsPeer {
    fn start(dir: &std::path::Path) -> TlsPeer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let openssl = |args: &str| {
            let mut cmd = tools::command("openssl");
            cmd.current_dir(dir).args(args.split(' '));
            tools::run(&mut cmd);
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(&format!(
            "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=upstream-test-ca"
        ));
        openssl(&format!(
            "req {ec} -keyout leaf.key -out leaf.csr -subj /CN=localhost"
        ));
        std::fs::write(
            dir.join("leaf.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("leaf.ext");
        openssl("x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 2 -extfile leaf.ext");

        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("leaf.pem"))
                .expect("leaf.pem")
                .collect::<Result<_, _>>()
                .expect("certs");
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).expect("leaf.key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let config = Arc::new(config);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let offered_alpn = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (alpn, halt) = (offered_alpn.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if halt.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let (config, alpn) = (config.clone(), alpn.clone());
                if let Ok(stream) = stream {
                    std::thread::spawn(move || serve_tls(stream, config, alpn));
                }
            }
        });
        TlsPeer {
            port,
            offered_alpn,
            stop,
            thread: Some(thread),
        }
    }
}

fn serve_tls(
    mut stream: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    alpn: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
) {
    use std::io::{Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut acceptor = rustls::server::Acceptor::default();
    let accepted = loop {
        if acceptor.read_tls(&mut stream).unwrap_or(0) == 0 {
            return;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err(_) => return,
        }
    };
    let offered: Vec<String> = accepted
        .client_hello()
        .alpn()
        .map(|list| {
            list.map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        })
        .unwrap_or_default();
    alpn.lock().expect("alpn").push(offered);
    let Ok(conn) = accepted.into_connection(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

impl Drop for TlsPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
