//! Blob bodies sent with sendfile(2) on plain-HTTP/1 connections (`io/sendfile.rs`):
//! the bytes on the wire are the file's, whole, ranged, pipelined, during a cold fill,
//! and over HTTP/2 (which copies). `agent_registry_sendfile_bytes_total` shows the path
//! was taken; the recorder is process-wide, so only its growth is asserted.

use crate::metrics::{delta, scrape};
use crate::mirror::mirror_of;
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{Hashed, Http};
use crate::support::random;
use crate::support::server::TestServer;
use http::{Method, StatusCode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SENT: &str = "agent_registry_sendfile_bytes_total";

/// The body was all of `bytes`.
fn assert_whole(r: &Hashed, bytes: &[u8], digest: &str) {
    assert_eq!((r.len, r.digest.as_str()), (bytes.len() as u64, digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_blobs_go_out_with_sendfile_over_http1_and_copied_over_h2() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    // Several placeholder frames and a tail.
    let bytes = random(3 * (1 << 20) + 12_345, 71);
    let digest = http.push_blob("sendfile/hosted", &bytes).await;
    let path = format!("/v2/sendfile/hosted/blobs/{digest}");

    let before = scrape(&http).await;
    let r = http.get_hashed(&path, &[]).await.expect("whole blob");
    assert_eq!(r.status, StatusCode::OK);
    assert_whole(&r, &bytes, &digest);
    let r = http
        .send(Method::GET, &path, &[("range", "bytes=1000-2100000")], "")
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert!(r.body == bytes[1000..=2_100_000], "range bytes differ");
    let after = scrape(&http).await;
    let want = (bytes.len() + 2_099_001) as f64;
    assert!(
        delta(&before, &after, SENT, &[]) >= want,
        "sendfile not used"
    );

    let head = http.head(&path).await;
    assert_eq!(
        head.header("content-length"),
        Some(&*bytes.len().to_string())
    );
    assert!(head.body.is_empty());

    let h2 = Http::h2(&srv.host());
    let r = h2.get_hashed(&path, &[]).await.expect("h2 body");
    assert_whole(&r, &bytes, &digest);
    let r = h2
        .send(Method::GET, &path, &[("range", "bytes=-5000")], "")
        .await;
    assert!(
        r.body == bytes[bytes.len() - 5000..],
        "h2 range bytes differ"
    );
}

/// One response head and body from `raw`, by its Content-Length; the rest stays.
fn take_response(raw: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    if raw.len() < end + len {
        return None;
    }
    let body = raw[end..end + len].to_vec();
    raw.drain(..end + len);
    Some((head, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection_get_their_own_bytes() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let a = random((1 << 20) + 1, 72);
    let b = random(2_500_000, 73);
    let da = http.push_blob("sendfile/pipe", &a).await;
    let db = http.push_blob("sendfile/pipe", &b).await;
    let get = |d: &str, extra: &str| {
        format!("GET /v2/sendfile/pipe/blobs/{d} HTTP/1.1\r\nhost: x\r\n{extra}\r\n")
    };
    // Four requests in one write: whole, ranged, HEAD, whole; the last closes.
    let mut reqs = get(&da, "");
    reqs += &get(&db, "range: bytes=100-1999999\r\n");
    reqs += &format!("HEAD /v2/sendfile/pipe/blobs/{db} HTTP/1.1\r\nhost: x\r\n\r\n");
    reqs += &get(&db, "connection: close\r\n");
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    sock.write_all(reqs.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut raw))
        .await
        .expect("responses in time")
        .expect("read");

    let (h, body) = take_response(&mut raw).expect("first response");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(body == a, "first body differs");
    let (h, body) = take_response(&mut raw).expect("second response");
    assert!(h.starts_with("HTTP/1.1 206"), "{h}");
    assert!(body == b[100..2_000_000], "second body differs");
    // A HEAD answer has a Content-Length but no body.
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HEAD") + 4;
    let h = String::from_utf8_lossy(&raw[..end]).to_string();
    assert!(
        h.starts_with("HTTP/1.1 200") && h.contains("2500000"),
        "{h}"
    );
    raw.drain(..end);
    let (h, body) = take_response(&mut raw).expect("fourth response");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(body == b, "fourth body differs");
    assert!(raw.is_empty(), "{} stray bytes", raw.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_readers_of_a_cold_fill_get_its_bytes_with_sendfile() {
    let fake = FakeUpstream::start();
    let bytes = random(6 << 20, 74);
    let digest = fake.add_blob("library/sendfile-cold", bytes.clone());
    fake.set(|s| s.pace = Some(6_000)); // ~6 MB/s: readers follow the fill for about 1 s
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    let path = format!("/v2/sendfile-cold/blobs/{digest}");
    let before = scrape(&http).await;
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let (http, path) = (http.clone(), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    for r in readers {
        let r = r.await.expect("task").expect("body");
        assert_eq!(r.status, StatusCode::OK);
        assert_whole(&r, &bytes, &digest);
    }
    assert_eq!(fake.blob_gets(&digest), 1);
    let after = scrape(&http).await;
    assert!(delta(&before, &after, SENT, &[]) >= 6.0 * bytes.len() as f64);
}
