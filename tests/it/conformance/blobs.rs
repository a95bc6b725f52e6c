//! The v1.1 suite's blob API checks, for sha256 and sha512: every upload flavour (POST
//! only, POST+PUT, streamed PATCH, chunked PATCH with the last chunk in the PATCH or the
//! PUT, out-of-order chunks recovered through a status GET), mounts with, without and from
//! the wrong source, cancel, empty and `{}` blobs, range requests and bad digests. After
//! each push: HEAD and GET with length and digest, then DELETE and a 404.

use super::*;
use agent_registry::oci::Algorithm;

const REPO: &str = "conformance/repo1";
const REPO2: &str = "conformance/repo2";
/// The suite's smallest chunk.
const CHUNK_MIN: usize = 1024;

/// How a blob is pushed.
#[derive(Clone, Copy, Debug)]
pub enum Push {
    PostOnly,
    PostPut,
    Stream,
    Chunked {
        chunk: usize,
        out_of_order: bool,
        put_last: bool,
    },
}

pub const CHUNKED: Push = Push::Chunked {
    chunk: CHUNK_MIN,
    out_of_order: false,
    put_last: false,
};

fn uploads(repo: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/")
}

async fn put_digest(http: &Http, loc: &str, digest: &str, body: &[u8]) -> Resp {
    http.send(
        Method::PUT,
        &with_query(loc, "digest", digest),
        &[("content-type", OCTET)],
        body.to_vec(),
    )
    .await
}

/// Pushes `content` under `digest` (which may not match, to test rejection) and returns
/// the response that ends the upload.
pub async fn push_as(http: &Http, repo: &str, digest: &str, content: &[u8], how: Push) -> Resp {
    match how {
        Push::PostOnly => {
            let r = http
                .send(
                    Method::POST,
                    &with_query(&uploads(repo), "digest", digest),
                    &[("content-type", OCTET)],
                    content.to_vec(),
                )
                .await;
            if r.status != StatusCode::ACCEPTED {
                return r;
            }
            // The suite falls back to PUT (and notes the registry as not supporting it).
            put_digest(http, &location(&r), digest, content).await
        }
        Push::PostPut => {
            let loc = start_session(http, repo).await;
            put_digest(http, &loc, digest, content).await
        }
        Push::Stream => {
            let loc = start_session(http, repo).await;
            let r = http
                .send(
                    Method::PATCH,
                    &loc,
                    &[("content-type", OCTET)],
                    content.to_vec(),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::ACCEPTED,
                "streamed PATCH: {}",
                show(&r)
            );
            put_digest(http, &location(&r), digest, b"").await
        }
        Push::Chunked {
            chunk,
            out_of_order,
            put_last,
        } => push_chunked(http, repo, digest, content, chunk, out_of_order, put_last).await,
    }
}

pub async fn push(http: &Http, repo: &str, blob: &Blob, how: Push) -> Resp {
    push_as(http, repo, &blob.digest, &blob.content, how).await
}

async fn send_chunk(http: &Http, method: Method, url: &str, start: usize, body: &[u8]) -> Resp {
    let range = format!("{start}-{}", start + body.len() - 1);
    http.send(
        method,
        url,
        &[("content-type", OCTET), ("content-range", range.as_str())],
        body.to_vec(),
    )
    .await
}

/// A chunked upload. With `out_of_order`, each chunk is preceded by one that skips ahead
/// (or back to the start), which must be refused with 416; the session is then recovered
/// with a status GET whose Range must still end at the last acknowledged byte.
async fn push_chunked(
    http: &Http,
    repo: &str,
    digest: &str,
    content: &[u8],
    chunk: usize,
    out_of_order: bool,
    put_last: bool,
) -> Resp {
    let r = http
        .send(
            Method::POST,
            &uploads(repo),
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", show(&r));
    let mut loc = location(&r);
    let min = r
        .header("oci-chunk-min-length")
        .map(|v| v.parse::<usize>().expect("OCI-Chunk-Min-Length"));
    let chunk = chunk.max(min.unwrap_or(0)).min(content.len()).max(1);
    let n = content.len();
    let mut start = 0;
    let mut last: Option<Resp> = None;
    while start < n {
        if out_of_order {
            let bad = if start + chunk >= n { 0 } else { start + chunk };
            if bad != start {
                let bad_end = (bad + chunk).min(n);
                let (method, url) = if put_last && bad_end == n {
                    (Method::PUT, with_query(&loc, "digest", digest))
                } else {
                    (Method::PATCH, loc.clone())
                };
                let r = send_chunk(http, method, &url, bad, &content[bad..bad_end]).await;
                assert_eq!(
                    r.status,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "out-of-order chunk {bad}..{bad_end} at {start}: {}",
                    show(&r)
                );
                let r = http.get(&loc).await;
                assert_eq!(
                    r.status,
                    StatusCode::NO_CONTENT,
                    "upload status: {}",
                    show(&r)
                );
                let range = r.header("range").expect("Range").to_string();
                let end = range.strip_prefix("0-").expect("Range starts with 0-");
                let end: usize = end.parse().expect("Range end");
                if start > 0 {
                    assert_eq!(end, start - 1, "Range after a refused chunk");
                }
                loc = location(&r);
            }
        }
        let end = (start + chunk).min(n);
        if put_last && end == n {
            let url = with_query(&loc, "digest", digest);
            last = Some(send_chunk(http, Method::PUT, &url, start, &content[start..end]).await);
        } else {
            let r = send_chunk(http, Method::PATCH, &loc, start, &content[start..end]).await;
            assert_eq!(
                r.status,
                StatusCode::ACCEPTED,
                "chunk {start}..{end}: {}",
                show(&r)
            );
            assert_eq!(r.header("range"), Some(format!("0-{}", end - 1).as_str()));
            loc = location(&r);
        }
        start = end;
    }
    match last {
        Some(r) => r,
        None => {
            http.send(
                Method::PUT,
                &with_query(&loc, "digest", digest),
                &[("content-type", OCTET), ("content-length", "0")],
                Bytes::new(),
            )
            .await
        }
    }
}

/// A finished push: 201, the digest header, and a Location that serves the bytes.
pub async fn assert_pushed(http: &Http, r: &Resp, blob: &Blob, what: &str) {
    assert_eq!(r.status, StatusCode::CREATED, "{what}: {}", show(r));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(blob.digest.as_str()),
        "{what}"
    );
    let got = http.get(&location(r)).await;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "{what}: Location: {}",
        show(&got)
    );
    assert_eq!(
        got.body.as_ref(),
        blob.content.as_slice(),
        "{what}: Location bytes"
    );
}

/// HEAD and GET of a stored blob: length, digest, bytes; HEAD has no body.
pub async fn assert_blob(http: &Http, repo: &str, blob: &Blob) {
    let path = format!("/v2/{repo}/blobs/{}", blob.digest);
    let len = blob.len().to_string();
    let h = http.head(&path).await;
    assert_eq!(h.status, StatusCode::OK, "HEAD {path}: {}", show(&h));
    assert!(h.body.is_empty());
    assert_eq!(
        h.header("content-length"),
        Some(len.as_str()),
        "HEAD {path}"
    );
    assert_eq!(
        h.header("docker-content-digest"),
        Some(blob.digest.as_str())
    );
    let g = http.get(&path).await;
    assert_eq!(g.status, StatusCode::OK, "GET {path}");
    assert_eq!(g.header("content-length"), Some(len.as_str()), "GET {path}");
    assert_eq!(
        g.header("docker-content-digest"),
        Some(blob.digest.as_str())
    );
    assert_eq!(g.body.as_ref(), blob.content.as_slice(), "GET {path}");
}

/// DELETE (202) and the blob is gone at once.
pub async fn assert_deleted(http: &Http, repo: &str, digest: &str) {
    let path = format!("/v2/{repo}/blobs/{digest}");
    let r = delete(http, &path).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "DELETE {path}: {}",
        show(&r)
    );
    let r = http.head(&path).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "HEAD after DELETE {path}");
}

async fn mount(http: &Http, repo: &str, from: Option<&str>, digest: &str) -> Resp {
    let mut url = with_query(&uploads(repo), "mount", digest);
    if let Some(from) = from {
        url = with_query(&url, "from", from);
    }
    http.send(Method::POST, &url, &[], Bytes::new()).await
}

async fn blob_apis(alg: Algorithm, seed: u64) {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let blob = |i: u64, len: usize| Blob::with(alg, random(len, seed + i));

    // get-missing
    let r = http
        .get(&format!("/v2/{REPO}/blobs/{}", blob(0, 512).digest))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let multi = 3 * CHUNK_MIN - 5;
    let flavours = [
        ("post only", Push::PostOnly, 512),
        ("post+put", Push::PostPut, 512),
        ("chunked single", CHUNKED, 512),
        ("stream", Push::Stream, 512),
        ("chunked multi", CHUNKED, multi),
        (
            "chunked multi and put chunk",
            Push::Chunked {
                chunk: CHUNK_MIN,
                out_of_order: false,
                put_last: true,
            },
            multi,
        ),
        (
            "chunked out-of-order",
            Push::Chunked {
                chunk: CHUNK_MIN,
                out_of_order: true,
                put_last: false,
            },
            multi,
        ),
        (
            "chunked out-of-order and put chunk",
            Push::Chunked {
                chunk: CHUNK_MIN,
                out_of_order: true,
                put_last: true,
            },
            multi,
        ),
    ];
    for (i, (name, how, len)) in flavours.into_iter().enumerate() {
        let b = blob(10 + i as u64, len);
        let r = push(&http, REPO, &b, how).await;
        assert_pushed(&http, &r, &b, name).await;
        assert_blob(&http, REPO, &b).await;
        assert_deleted(&http, REPO, &b.digest).await;
    }

    // mount from a repository that has the blob
    let b = blob(30, 512);
    assert_pushed(
        &http,
        &push(&http, REPO2, &b, Push::PostPut).await,
        &b,
        "mount source",
    )
    .await;
    let r = mount(&http, REPO, Some(REPO2), &b.digest).await;
    assert_pushed(&http, &r, &b, "mount").await;
    assert_blob(&http, REPO, &b).await;
    assert_deleted(&http, REPO, &b.digest).await;
    assert_deleted(&http, REPO2, &b.digest).await;

    // mount anonymous: no `from`; this registry mounts what it holds anywhere
    let b = blob(31, 512);
    assert_pushed(
        &http,
        &push(&http, REPO2, &b, Push::PostPut).await,
        &b,
        "mount source",
    )
    .await;
    let r = mount(&http, REPO, None, &b.digest).await;
    assert_pushed(&http, &r, &b, "anonymous mount").await;
    assert_blob(&http, REPO, &b).await;
    assert_deleted(&http, REPO, &b.digest).await;
    assert_deleted(&http, REPO2, &b.digest).await;

    // mount missing: the source does not have it, so no mount, a session instead
    let b = blob(32, 512);
    let r = mount(&http, REPO, Some(REPO2), &b.digest).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "mount of a missing blob: {}",
        show(&r)
    );
    let r = put_digest(&http, &location(&r), &b.digest, &b.content).await;
    assert_pushed(&http, &r, &b, "PUT after a refused mount").await;
    assert_blob(&http, REPO, &b).await;
    assert_deleted(&http, REPO, &b.digest).await;

    // post cancel
    let b = blob(0, 512);
    let loc = start_session(&http, REPO).await;
    let r = http
        .send(
            Method::DELETE,
            &loc,
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "cancel: {}", show(&r));
    let r = http.get(&loc).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "status of a cancelled upload"
    );
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    let r = put_digest(&http, &loc, &b.digest, &b.content).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "PUT to a cancelled upload");
    let r = http.head(&format!("/v2/{REPO}/blobs/{}", b.digest)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // well known contents
    for content in [b"".to_vec(), b"{}".to_vec()] {
        let b = Blob::with(alg, content);
        for how in [Push::PostOnly, Push::PostPut, Push::Stream] {
            assert_pushed(&http, &push(&http, REPO, &b, how).await, &b, "well known").await;
            assert_blob(&http, REPO, &b).await;
            assert_deleted(&http, REPO, &b.digest).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_apis_sha256() {
    blob_apis(Algorithm::Sha256, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_apis_sha512() {
    blob_apis(Algorithm::Sha512, 2000).await;
}

/// Range requests answer 206 with Content-Range and Content-Length, clamp an end past the
/// blob, and refuse a backwards or out-of-blob range with 416 and `bytes */size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_range_requests() {
    let srv = TestServer::start();
    for (alg, http) in [
        (Algorithm::Sha256, Http::new(&srv.host())),
        (Algorithm::Sha512, Http::h2(&srv.host())),
    ] {
        let b = Blob::with(alg, random(2048, 77));
        assert_pushed(
            &http,
            &push(&http, REPO, &b, Push::PostPut).await,
            &b,
            "setup",
        )
        .await;
        let path = format!("/v2/{REPO}/blobs/{}", b.digest);
        for (range, from, to) in [
            ("bytes=500-1499", 500, 1500),
            ("bytes=500-", 500, 2048),
            ("bytes=-500", 1548, 2048),
            ("bytes=2000-5000", 2000, 2048),
            ("bytes=0-0", 0, 1),
        ] {
            let r = get_with(&http, &path, &[("range", range)]).await;
            assert_eq!(
                r.status,
                StatusCode::PARTIAL_CONTENT,
                "{range}: {}",
                show(&r)
            );
            assert_eq!(r.body.as_ref(), &b.content[from..to], "{range}");
            let len = (to - from).to_string();
            assert_eq!(r.header("content-length"), Some(len.as_str()), "{range}");
            let cr = format!("bytes {from}-{}/2048", to - 1);
            assert_eq!(r.header("content-range"), Some(cr.as_str()), "{range}");
        }
        for range in ["bytes=500-0", "bytes=5000-10000", "bytes=2048-"] {
            let r = get_with(&http, &path, &[("range", range)]).await;
            assert_eq!(
                r.status,
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{range}: {}",
                show(&r)
            );
            assert_eq!(r.header("content-range"), Some("bytes */2048"), "{range}");
        }
        // HEAD with a range describes the part without sending it.
        let r = head_with(&http, &path, &[("range", "bytes=10-19")]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("10"));
        assert_eq!(r.header("content-range"), Some("bytes 10-19/2048"));
        assert_deleted(&http, REPO, &b.digest).await;
    }
}

/// Every push flavour with bytes that do not match the digest is refused with 400, and
/// nothing is stored under either digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_push_with_a_bad_digest_is_refused() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        for (i, how) in [
            Push::PostOnly,
            Push::PostPut,
            CHUNKED,
            Push::Chunked {
                chunk: CHUNK_MIN,
                out_of_order: false,
                put_last: true,
            },
            Push::Stream,
        ]
        .into_iter()
        .enumerate()
        {
            let good = random(3 * CHUNK_MIN - 5, 300 + i as u64);
            let digest = digest_of(alg, &good);
            let mut sent = good.clone();
            sent.extend_from_slice(b"oh no");
            let r = push_as(&http, REPO, &digest, &sent, how).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{how:?} {alg:?}: {}",
                show(&r)
            );
            assert_eq!(r.error_code(), "DIGEST_INVALID", "{how:?}");
            for d in [digest.clone(), digest_of(alg, &sent)] {
                let r = http.head(&format!("/v2/{REPO}/blobs/{d}")).await;
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{how:?}: {d} stored");
            }
        }
    }
}
