//! Per-client rate limits (`[limits]`): 429 with Retry-After and TOOMANYREQUESTS,
//! separate manifest and blob quotas, the allow-list, trusted proxies, health routes;
//! request bodies that stall or trickle are cut, one address cannot hold more than its
//! share of connections, and a response being read slowly is never idle (real sockets).

use crate::support::http::Http;
use crate::support::server::TestServer;
use agent_registry::config::{Config, IpNet, LimitsConfig, Rate};
use agent_registry::dispatch::Handle;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Manifests: a burst of 3, then one a second; blobs: a burst of 5.
fn tight(allow: &[&str], trusted: &[&str]) -> LimitsConfig {
    let nets = |v: &[&str]| v.iter().map(|s| IpNet::parse(s).expect("cidr")).collect();
    LimitsConfig {
        enabled: true,
        manifests: Rate::new(1, 3),
        blobs: Rate::new(1, 5),
        trusted_proxies: nets(trusted),
        allow: nets(allow),
        ..LimitsConfig::default()
    }
}

const MANIFEST: &str = "/v2/t/limited/manifests/v1";
const BLOB: &str =
    "/v2/t/limited/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Status, `Retry-After` and OCI error code (if any) of a request through `dispatch::Handle::handle`
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

// Slow clients, over real sockets.

const REPO: &str = "agents/slow";
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// Bodies may pause for 1s and must average 10KiB/s; `cap` connections per address.
/// Nothing is allow-listed, so loopback is limited like any client.
fn slow_clients(c: &mut Config, cap: usize) {
    c.limits.allow = Vec::new();
    c.limits.body_idle_timeout = Duration::from_secs(1);
    c.limits.body_min_rate = 10 * 1024;
    c.limits.max_connections_per_client = cap;
}

/// A connection to `srv` from `source`: any 127/8 address works, Linux routes them all
/// to the loopback interface.
async fn connect_from(srv: &TestServer, source: [u8; 4], recv_buffer: Option<u32>) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    sock.bind(SocketAddr::from((source, 0))).expect("bind");
    sock.connect(srv.addr).await.expect("connect")
}

/// Reads until the server closes the connection or `limit` passes: what arrived, and
/// how long the close took (`None`: still open).
async fn read_until_close<R: AsyncRead + Unpin>(
    s: &mut R,
    limit: Duration,
) -> (String, Option<Duration>) {
    let (start, mut got, mut buf) = (Instant::now(), Vec::new(), [0u8; 4096]);
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Some(start.elapsed()))
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /v2/` on `s`: the status, or `None` when the server closes the connection
/// without an answer.
async fn version_check(s: &mut TcpStream) -> Option<u16> {
    if s.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .is_err()
    {
        return None;
    }
    let (mut got, mut buf) = (Vec::new(), [0u8; 1024]);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => return None,
            Err(_) => panic!("no answer and no close within 5s"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.get(9..12)?.parse().ok()
}

/// Starts an upload session: its location.
async fn start_upload(http: &Http) -> String {
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    r.header("location").expect("location").to_string()
}

/// The upload's `Range` as the status request reports it.
async fn upload_range(http: &Http, location: &str) -> String {
    let r = http.get(location).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    r.header("range").expect("range").to_string()
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_cut_after_body_idle_timeout() {
    let srv = TestServer::start_with(|c| slow_clients(c, 0));
    let http = Http::new(&srv.host());
    let location = start_upload(&http).await;
    let heads = [
        format!("PATCH {location} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n"),
        format!("PUT /v2/{REPO}/manifests/v1 HTTP/1.1\r\nhost: x\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: 100000\r\n\r\n"),
    ];
    for head in heads {
        // The head and 1000 bytes of the promised 100000, then silence.
        let mut s = connect_from(&srv, LOOPBACK, None).await;
        s.write_all(head.as_bytes()).await.expect("head");
        s.write_all(&[b'{'; 1000]).await.expect("part of the body");
        let (answer, closed) = read_until_close(&mut s, Duration::from_secs(10)).await;
        let took = closed.unwrap_or_else(|| panic!("still open after 10s: {head}"));
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "closed after {took:?}"
        );
        // The handler's error goes out before the close.
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("limits.body_idle_timeout"), "{answer}");
    }
    // Nothing of the broken chunk counts.
    assert_eq!(upload_range(&http, &location).await, "0-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_trickling_below_body_min_rate_is_cut_and_the_session_resumes() {
    let srv = TestServer::start_with(|c| slow_clients(c, 0));
    let http = Http::new(&srv.host());
    let data = bytes(60_000);
    let location = start_upload(&http).await;
    let octets = ("content-type", "application/octet-stream");
    let first = ("content-range", "0-9999");
    let r = http
        .send(
            Method::PATCH,
            &location,
            &[octets, first],
            data[..10_000].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    // The second chunk trickles 100 bytes every 100ms: 1000 bytes/s against a floor of
    // 10KiB/s, and no pause near body_idle_timeout.
    let mut s = connect_from(&srv, LOOPBACK, None).await;
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n\
         content-range: 10000-59999\r\ncontent-length: 50000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let (mut rd, mut wr) = s.into_split();
    let rest = data[10_000..].to_vec();
    let trickle = tokio::spawn(async move {
        for piece in rest.chunks(100) {
            if wr.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (answer, closed) = read_until_close(&mut rd, Duration::from_secs(10)).await;
    trickle.abort();
    let took = closed.expect("a trickling body is cut");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    assert!(answer.contains("limits.body_min_rate"), "{answer}");
    // The session still ends at the first chunk, and the rest goes through from there.
    assert_eq!(upload_range(&http, &location).await, "0-9999");
    let second = ("content-range", "10000-59999");
    let r = http
        .send(
            Method::PATCH,
            &location,
            &[octets, second],
            data[10_000..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let digest = agent_registry::oci::Digest::sha256_of(&data).to_string();
    let r = http
        .send(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let blob = http.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(blob.body.as_ref(), &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_steady_upload_is_not_cut() {
    let srv = TestServer::start_with(|c| slow_clients(c, 0));
    let data = bytes(3 << 20);
    let digest = agent_registry::oci::Digest::sha256_of(&data).to_string();
    // 3MiB in 64KiB pieces every 50ms (about 1.3MB/s) for over 2s: longer than
    // body_idle_timeout, always above body_min_rate.
    let mut s = connect_from(&srv, LOOPBACK, None).await;
    let head = format!(
        "POST /v2/{REPO}/blobs/uploads/?digest={digest} HTTP/1.1\r\nhost: x\r\n\
         content-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    for piece in data.chunks(64 << 10) {
        s.write_all(piece).await.expect("a steady upload is read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_client_cap_are_closed_while_other_addresses_are_served() {
    let srv = TestServer::start_with(|c| slow_clients(c, 4));
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(&srv, LOOPBACK, None).await;
        assert_eq!(version_check(&mut s).await, Some(200));
        held.push(s);
    }
    // A fifth from the same address is closed unanswered, again and again.
    for _ in 0..3 {
        let mut s = connect_from(&srv, LOOPBACK, None).await;
        assert_eq!(version_check(&mut s).await, None);
    }
    // Another address is served, and the held connections still are.
    let mut other = connect_from(&srv, [127, 0, 0, 2], None).await;
    assert_eq!(version_check(&mut other).await, Some(200));
    assert_eq!(version_check(&mut held[0]).await, Some(200));
    // Closing one frees its place.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from(&srv, LOOPBACK, None).await;
        match version_check(&mut s).await {
            Some(status) => {
                assert_eq!(status, 200);
                break;
            }
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("the closed connection's place was not freed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_big_blob_slowly_but_steadily_is_not_cut() {
    let srv = TestServer::start_with(|c| c.server.keep_alive_timeout = Duration::from_secs(1));
    let http = Http::new(&srv.host());
    let data = bytes(4 << 20);
    let digest = http.push_blob(REPO, &data).await;
    // A small receive window, read 16KiB every 20ms (about 800KB/s): the server's
    // socket is always full, and bytes keep moving.
    let mut s = connect_from(&srv, LOOPBACK, Some(16 << 10)).await;
    let get = format!("GET /v2/{REPO}/blobs/{digest} HTTP/1.1\r\nhost: x\r\n\r\n");
    s.write_all(get.as_bytes()).await.expect("request");
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 16 << 10]);
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no bytes for 5s"),
        }
        if got.len() >= data.len() && got.ends_with(&data[data.len() - 64..]) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "too slow");
    }
    let body_at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .expect("a response head");
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        got.len() - body_at,
        data.len(),
        "cut after {:?}",
        start.elapsed()
    );
    assert!(got[body_at..] == data[..]);
}
