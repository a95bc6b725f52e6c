//! Upload abuse: bodies that break off, digests that do not match, chunks out of order or
//! overlapping or lying about their length, finishing without a digest, unknown upload
//! ids and ids used under another repository. Each leaves no blob and no temp file, and
//! the session, where it should survive, still finishes with the right bytes.

use super::*;

const REPO: &str = "up/load";

async fn start(http: &Http, repo: &str) -> String {
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", show(&r));
    r.header("location").expect("Location").to_string()
}

async fn patch(http: &Http, loc: &str, range: Option<&str>, body: &[u8]) -> Resp {
    let mut h = vec![("content-type", "application/octet-stream")];
    if let Some(r) = range {
        h.push(("content-range", r));
    }
    http.send(Method::PATCH, loc, &h, body.to_vec()).await
}

async fn finish(http: &Http, loc: &str, digest: &str, body: &[u8]) -> Resp {
    http.send(
        Method::PUT,
        &format!("{loc}?digest={digest}"),
        &[],
        body.to_vec(),
    )
    .await
}

/// The acknowledged range of a session, from its status GET.
async fn range_of(http: &Http, loc: &str) -> String {
    let r = http.get(loc).await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "status of {loc}: {}",
        show(&r)
    );
    r.header("range").expect("Range").to_string()
}

async fn assert_absent(http: &Http, srv: &TestServer, repo: &str, digest: &str) {
    let r = http.head(&format!("/v2/{repo}/blobs/{digest}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{digest} is served");
    assert!(
        !blob_file(srv.data_dir(), digest).exists(),
        "{digest} is on disk"
    );
}

/// Clients that declare a length and die before sending it all: a monolithic POST, a
/// PATCH, the closing PUT and a manifest PUT. Nothing is stored, `tmp/` drains, and the
/// chunked session resumes from what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_uploads_leave_no_blob_and_no_temp_file() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let addr = srv.host();
    let known = push_image(&http, REPO, "v1", 10).await;
    let full = bytes(256 * 1024, 11);
    let digest = sha256(&full);

    // Monolithic POST: 256 KiB declared, 100 KiB sent.
    let target = format!("/v2/{REPO}/blobs/uploads/?digest={digest}");
    let mut req = head(
        "POST",
        &target,
        &[("Content-Length", full.len().to_string())],
    )
    .into_bytes();
    req.extend_from_slice(&full[..100 * 1024]);
    let r = raw(&addr, &req, true).await;
    assert!(r.as_ref().is_none_or(|r| r.status >= 400), "{r:?}");
    assert_store_consistent(srv.data_dir()).await;
    assert_absent(&http, &srv, REPO, &digest).await;

    // Chunked session: one good chunk, then a PATCH that dies half way.
    let loc = start(&http, REPO).await;
    let first = 64 * 1024;
    let r = patch(
        &http,
        &loc,
        Some(&format!("0-{}", first - 1)),
        &full[..first],
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", show(&r));
    let second = 128 * 1024;
    let mut req = head(
        "PATCH",
        &loc,
        &[
            ("Content-Length", (second - first).to_string()),
            ("Content-Range", format!("{first}-{}", second - 1)),
        ],
    )
    .into_bytes();
    req.extend_from_slice(&full[first..first + 10_000]);
    let r = raw(&addr, &req, true).await;
    assert!(r.as_ref().is_none_or(|r| r.status >= 400), "{r:?}");
    assert_eq!(range_of(&http, &loc).await, format!("0-{}", first - 1));

    // The closing PUT dies half way too: no blob, the session keeps its offset.
    let mut req = head(
        "PUT",
        &format!("{loc}?digest={digest}"),
        &[("Content-Length", (full.len() - first).to_string())],
    )
    .into_bytes();
    req.extend_from_slice(&full[first..first + 5_000]);
    let r = raw(&addr, &req, true).await;
    assert!(r.as_ref().is_none_or(|r| r.status >= 400), "{r:?}");
    assert_store_consistent(srv.data_dir()).await;
    assert_absent(&http, &srv, REPO, &digest).await;
    assert_eq!(range_of(&http, &loc).await, format!("0-{}", first - 1));

    // Resume: the rest in one PATCH and an empty closing PUT.
    let rest = format!("{first}-{}", full.len() - 1);
    let r = patch(&http, &loc, Some(&rest), &full[first..]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", show(&r));
    let r = finish(&http, &loc, &digest, b"").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let r = http.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert!(r.body.as_ref() == full.as_slice(), "resumed blob differs");

    // A manifest PUT that dies: no manifest, no tag.
    let m = known[2].content.clone();
    let mut req = head(
        "PUT",
        &format!("/v2/{REPO}/manifests/half"),
        &[
            ("Content-Length", m.len().to_string()),
            ("Content-Type", OCI_MANIFEST.to_string()),
        ],
    )
    .into_bytes();
    req.extend_from_slice(&m[..m.len() / 2]);
    let r = raw(&addr, &req, true).await;
    assert!(r.as_ref().is_none_or(|r| r.status >= 400), "{r:?}");
    let r = http.get(&format!("/v2/{REPO}/manifests/half")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    assert_store_consistent(srv.data_dir()).await;
    wait_empty(&srv.data_dir().join("uploads")).await;
    assert_still_served(&http, &known).await;
}

/// A digest that does not match the bytes: 400 DIGEST_INVALID for a monolithic POST, a
/// POST then PUT, a streamed and a chunked upload, in sha256 and sha512; nothing is stored
/// under the claimed digest or the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_is_refused_and_nothing_is_stored() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let known = push_image(&http, REPO, "v1", 12).await;
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let sent = bytes(5000, 13);
        let claimed = digest_of(alg, &bytes(5000, 14));
        let actual = digest_of(alg, &sent);
        let mono = http
            .send(
                Method::POST,
                &format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"),
                &[],
                sent.clone(),
            )
            .await;
        let loc = start(&http, REPO).await;
        let post_put = finish(&http, &loc, &claimed, &sent).await;
        let loc = start(&http, REPO).await;
        assert_eq!(
            patch(&http, &loc, None, &sent).await.status,
            StatusCode::ACCEPTED
        );
        let streamed = finish(&http, &loc, &claimed, b"").await;
        let loc = start(&http, REPO).await;
        assert_eq!(
            patch(&http, &loc, Some("0-2499"), &sent[..2500])
                .await
                .status,
            StatusCode::ACCEPTED
        );
        let chunked = http
            .send(
                Method::PUT,
                &format!("{loc}?digest={claimed}"),
                &[("content-range", "2500-4999")],
                sent[2500..].to_vec(),
            )
            .await;
        for (what, r) in [
            ("POST", mono),
            ("POST+PUT", post_put),
            ("stream", streamed),
            ("chunked", chunked),
        ] {
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{what} {alg:?}: {}",
                show(&r)
            );
            assert_eq!(r.error_code(), "DIGEST_INVALID", "{what}");
        }
        assert_absent(&http, &srv, REPO, &claimed).await;
        assert_absent(&http, &srv, REPO, &actual).await;
        assert_store_consistent(srv.data_dir()).await;
    }
    assert_still_served(&http, &known).await;
}

/// Chunks that leave a gap, overlap, replay or lie about their length are refused with
/// 416 and change nothing: the session still reports what it had, and the right next
/// chunk and the closing PUT produce the right blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_get_416_and_the_session_stays_usable() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let blob = bytes(30, 15);
    let digest = sha256(&blob);
    let loc = start(&http, REPO).await;
    let r = patch(&http, &loc, Some("0-9"), &blob[..10]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range"), Some("0-9"));
    // (Content-Range, body): out of order, overlapping, replayed, mismatched, malformed.
    let bad: Vec<(&str, &[u8])> = vec![
        ("20-29", &blob[20..]),
        ("11-20", &blob[11..21]),
        ("5-14", &blob[5..15]),
        ("9-18", &blob[9..19]),
        ("0-9", &blob[..10]),
        ("0-19", &blob[..20]),
        ("10-19", &blob[10..15]),
        ("10-14", &blob[10..20]),
        ("10-9", &blob[10..20]),
        ("garbage", &blob[10..20]),
        ("10-", &blob[10..20]),
        ("-10", &blob[10..20]),
        // Numbers at and past the edge of u64.
        ("0-18446744073709551615", &blob[10..20]),
        ("10-18446744073709551615", &blob[10..20]),
        ("18446744073709551615-18446744073709551615", &blob[10..11]),
        ("10-99999999999999999999", &blob[10..20]),
    ];
    for (range, body) in bad {
        let r = patch(&http, &loc, Some(range), body).await;
        assert_eq!(
            r.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "PATCH {range}: {}",
            show(&r)
        );
        assert!(
            r.error_code().starts_with("BLOB_UPLOAD_INVALID") || r.error_code() == "RANGE_INVALID"
        );
        assert_eq!(range_of(&http, &loc).await, "0-9", "after PATCH {range}");
        // The closing PUT checks its range the same way.
        let r = http
            .send(
                Method::PUT,
                &format!("{loc}?digest={digest}"),
                &[("content-range", range)],
                body.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "PUT {range}: {}",
            show(&r)
        );
        assert_eq!(range_of(&http, &loc).await, "0-9", "after PUT {range}");
        assert_store_consistent(srv.data_dir()).await;
    }
    // `bytes` units and a total are accepted forms of a good range.
    let r = patch(&http, &loc, Some("bytes 10-19/30"), &blob[10..20]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", show(&r));
    assert_eq!(r.header("range"), Some("0-19"));
    let r = http
        .send(
            Method::PUT,
            &format!("{loc}?digest={digest}"),
            &[("content-range", "20-29")],
            blob[20..].to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let r = http.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(r.body.as_ref(), blob.as_slice());
    assert_store_consistent(srv.data_dir()).await;
}

/// A closing PUT without a digest (or with an empty one) is a 400 and ends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_without_a_digest_is_400_and_the_session_survives() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let blob = bytes(40, 16);
    let loc = start(&http, REPO).await;
    assert_eq!(
        patch(&http, &loc, None, &blob[..20]).await.status,
        StatusCode::ACCEPTED
    );
    for url in [
        loc.clone(),
        format!("{loc}?digest="),
        format!("{loc}?other=x"),
    ] {
        let r = http.send(Method::PUT, &url, &[], blob[20..].to_vec()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "PUT {url}: {}", show(&r));
        assert_eq!(r.error_code(), "DIGEST_INVALID");
        assert_eq!(range_of(&http, &loc).await, "0-19");
    }
    let r = finish(&http, &loc, &sha256(&blob), &blob[20..]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    assert_store_consistent(srv.data_dir()).await;
}

/// Upload ids that were never issued: 404 BLOB_UPLOAD_UNKNOWN on every method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_upload_ids_are_404() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let live = start(&http, REPO).await;
    let ids = [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".to_string(),
        "00000000-0000-0000-0000-000000000000".to_string(),
        "%2e%2e".to_string(),
        "..".to_string(),
        "x".repeat(300),
    ];
    let body = bytes(10, 17);
    let digest = sha256(&body);
    for id in ids {
        let loc = format!("/v2/{REPO}/blobs/uploads/{id}");
        for (method, url) in [
            (Method::GET, loc.clone()),
            (Method::PATCH, loc.clone()),
            (Method::PUT, format!("{loc}?digest={digest}")),
            (Method::DELETE, loc.clone()),
        ] {
            let r = http.send(method.clone(), &url, &[], body.clone()).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{method} {url}: {}",
                show(&r)
            );
            assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN", "{method} {url}");
        }
        assert_store_consistent(srv.data_dir()).await;
    }
    assert_absent(&http, &srv, REPO, &digest).await;
    assert_eq!(range_of(&http, &live).await, "0-0");
    assert_store_consistent(srv.data_dir()).await;
}

/// A session belongs to the repository it was started in: its id under another
/// repository is unknown there, and using it that way does not disturb it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_ids_do_not_cross_repositories() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let blob = bytes(50, 18);
    let digest = sha256(&blob);
    let loc = start(&http, "team/a").await;
    assert_eq!(
        patch(&http, &loc, Some("0-24"), &blob[..25]).await.status,
        StatusCode::ACCEPTED
    );
    let id = loc.rsplit('/').next().expect("id").to_string();
    let other = format!("/v2/team/b/blobs/uploads/{id}");
    for (method, url, body) in [
        (Method::GET, other.clone(), vec![]),
        (Method::PATCH, other.clone(), blob[25..].to_vec()),
        (
            Method::PUT,
            format!("{other}?digest={digest}"),
            blob[25..].to_vec(),
        ),
        (Method::DELETE, other.clone(), vec![]),
    ] {
        let r = http.send(method.clone(), &url, &[], body).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {url}: {}",
            show(&r)
        );
        assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    }
    assert_eq!(range_of(&http, &loc).await, "0-24");
    let r = finish(&http, &loc, &digest, &blob[25..]).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let r = http.get(&format!("/v2/team/a/blobs/{digest}")).await;
    assert_eq!(r.body.as_ref(), blob.as_slice());
    let r = http.head(&format!("/v2/team/b/blobs/{digest}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "blob leaked into team/b");
    assert_store_consistent(srv.data_dir()).await;
}

/// A chunk sent with chunked transfer encoding has no Content-Length to check its
/// Content-Range against up front: a body longer or shorter than the range it claims is
/// still a 416, and nothing of it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_transfer_chunks_must_fill_their_content_range_exactly() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let blob = bytes(30, 19);
    let digest = sha256(&blob);
    let loc = start(&http, REPO).await;
    let send = |method: &'static str, target: String, range: &'static str, body: Vec<u8>| {
        let addr = srv.host();
        async move {
            let mut req = head(
                method,
                &target,
                &[
                    ("Transfer-Encoding", "chunked".to_string()),
                    ("Content-Range", range.to_string()),
                ],
            )
            .into_bytes();
            req.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            req.extend_from_slice(&body);
            req.extend_from_slice(b"\r\n0\r\n\r\n");
            raw(&addr, &req, false).await.expect("a response")
        }
    };
    let cases: [(&'static str, &[u8]); 4] = [
        ("0-9", &blob[..20]),
        ("0-9", &blob[..5]),
        ("0-29", &blob[..10]),
        ("0-18446744073709551615", &blob[..10]),
    ];
    for (range, body) in cases {
        let r = send("PATCH", loc.clone(), range, body.to_vec()).await;
        assert_eq!(
            r.status,
            416,
            "PATCH {range} with {} bytes: {r:?}",
            body.len()
        );
        assert_eq!(range_of(&http, &loc).await, "0-0");
        let r = send(
            "PUT",
            format!("{loc}?digest={digest}"),
            range,
            body.to_vec(),
        )
        .await;
        assert_eq!(
            r.status,
            416,
            "PUT {range} with {} bytes: {r:?}",
            body.len()
        );
        assert_eq!(range_of(&http, &loc).await, "0-0");
    }
    let r = send("PATCH", loc.clone(), "0-9", blob[..10].to_vec()).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("range"), Some("0-9"));
    let r = send(
        "PUT",
        format!("{loc}?digest={digest}"),
        "10-29",
        blob[10..].to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let r = http.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    assert_eq!(r.body.as_ref(), blob.as_slice());
    assert_store_consistent(srv.data_dir()).await;
}

/// Files under `dir` (recursively), for "nothing left behind".
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type().map(|t| t.is_dir()) {
                Ok(true) => stack.push(e.path()),
                _ => out.push(e.path()),
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_onto_a_full_disk_answers_507_and_keeps_no_upload_data() {
    let root = tempfile::tempdir().expect("tempdir");
    let mnt = root.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    if crate::cache::tmpfs(&mnt, "6m").is_none() {
        return;
    }
    let _unmount = crate::cache::Unmount(mnt.clone());
    let data = mnt.join("data");
    let srv = TestServer::start_with({
        let data = data.clone();
        move |cfg| cfg.storage.data_dir = data
    });
    let http = Http::new(&srv.host());
    let small = bytes(1000, 1);
    http.push_blob(REPO, &small).await;
    let full = |r: &Resp| {
        r.status == StatusCode::INSUFFICIENT_STORAGE
            && String::from_utf8_lossy(&r.body).contains("insufficient storage space")
    };

    // PATCH 64 KiB at a time until the disk is full. (Small chunks: the server answers
    // as soon as a write fails, and a body it never read would reset the connection
    // under the answer.)
    let loc = start(&http, REPO).await;
    const CHUNK: u64 = 64 * 1024;
    let chunk = bytes(CHUNK as usize, 2);
    let mut last = None;
    for i in 0..256u64 {
        let range = format!("{}-{}", i * CHUNK, (i + 1) * CHUNK - 1);
        let r = patch(&http, &loc, Some(&range), &chunk).await;
        if r.status != StatusCode::ACCEPTED {
            last = Some(r);
            break;
        }
    }
    let r = last.expect("6 MiB filled by 16 MiB of chunks");
    assert!(full(&r), "{}", show(&r));
    // The session and its data are gone at once.
    let r = http.get(&loc).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", show(&r));
    assert_eq!(
        files_under(&data.join("uploads")),
        Vec::<std::path::PathBuf>::new()
    );

    // What fits is still pushed, and what was there is still served.
    http.push_blob(REPO, &bytes(2000, 4)).await;
    assert_still_served(&http, &[Known::blob(REPO, &small)]).await;
    drop(srv);
}

/// A registry whose disk filled before anything was ever pushed: the metadata store
/// (SQLite) is the first to find no room, and that too is 507, not 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_push_onto_a_full_disk_answers_507_from_the_metadata_store_too() {
    let root = tempfile::tempdir().expect("tempdir");
    let mnt = root.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    if crate::cache::tmpfs(&mnt, "4m").is_none() {
        return;
    }
    let _unmount = crate::cache::Unmount(mnt.clone());
    let data = mnt.join("data");
    let srv = TestServer::start_with({
        let data = data.clone();
        move |cfg| cfg.storage.data_dir = data
    });
    let http = Http::new(&srv.host());
    // Fill the disk to the last byte with a file outside the data directory.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(mnt.join("filler")).expect("filler");
        let block = vec![7u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(28), "{e}");
                break;
            }
        }
        let mut small = [0u8; 1];
        while f.write_all(&small).is_ok() {
            small[0] = small[0].wrapping_add(1);
        }
    }
    let blob = bytes(1000, 9);
    let digest = Digest::sha256_of(&blob).to_string();
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
            &[("content-type", "application/octet-stream")],
            blob.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{}", show(&r));
    assert!(
        String::from_utf8_lossy(&r.body).contains("insufficient storage space"),
        "{}",
        show(&r)
    );
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{}", show(&r));
    // Room again: the same push goes through.
    std::fs::remove_file(mnt.join("filler")).expect("rm filler");
    http.push_blob(REPO, &bytes(1000, 9)).await;
    drop(srv);
}
