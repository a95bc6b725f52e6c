//! Classic suite, 02 push: streamed, monolithic and chunked blob uploads (with the
//! out-of-order and retried chunks the suite sends), cross-repository mounts with and
//! without `from`, manifest upload with tags and without layers, and teardown.

use super::*;

async fn push_blob_upload_streamed(http: &Http, fx: &Fx) {
    let loc = start_session(http, REPO).await;
    let r = http
        .send(
            Method::PATCH,
            &loc,
            &[("content-type", OCTET)],
            fx.blob_a.content.clone(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "streamed PATCH: {}",
        show(&r)
    );
    let r = http
        .send(
            Method::PUT,
            &with_query(&location(&r), "digest", &fx.blob_a.digest),
            &[("content-type", OCTET)],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "PUT closing a streamed upload: {}",
        show(&r)
    );
    let got = http.get(&location(&r)).await;
    assert_eq!(got.body.as_ref(), fx.blob_a.content.as_slice());
}

async fn push_blob_upload_monolithic(http: &Http, fx: &Fx) {
    let r = http.get(&blob_path(&fx.dummy)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let c1 = &fx.configs[1];
    let r = http
        .send(
            Method::POST,
            &with_query(&format!("/v2/{REPO}/blobs/uploads/"), "digest", &c1.digest),
            &[("content-type", OCTET)],
            c1.content.clone(),
        )
        .await;
    assert_status(&r, &[201, 202], "POST with digest and blob");
    location(&r);
    let got = http.get(&blob_path(&c1.digest)).await;
    let expected = if r.status == StatusCode::ACCEPTED {
        404
    } else {
        200
    };
    assert_eq!(
        got.status.as_u16(),
        expected,
        "GET after POST answered {}",
        r.status
    );
    let loc = start_session(http, REPO).await;
    for (blob, loc) in [(c1, loc), (&fx.layer, start_session(http, REPO).await)] {
        let r = http
            .send(
                Method::PUT,
                &with_query(&loc, "digest", &blob.digest),
                &[("content-type", OCTET)],
                blob.content.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "PUT upload: {}", show(&r));
        location(&r);
        let r = http.get(&blob_path(&blob.digest)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.as_ref(), blob.content.as_slice());
    }
}

async fn push_blob_upload_chunked(http: &Http, fx: &Fx) {
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/"),
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await;
    let loc = location(&r);
    // The suite grows its blob when the registry asks for bigger chunks.
    let (blob, chunk1) = match r.header("oci-chunk-min-length").map(|v| v.parse::<usize>()) {
        Some(Ok(min)) if min > fx.chunk1 => {
            let b = Blob::new(random(min * 2 - 2, 99));
            let c = b.len() / 2 + 1;
            (b, c)
        }
        Some(Err(e)) => panic!("bad OCI-Chunk-Min-Length: {e}"),
        _ => (fx.blob_b.clone(), fx.chunk1),
    };
    let (c1, c2) = blob.content.split_at(chunk1);
    let range1 = format!("0-{}", chunk1 - 1);
    let range2 = format!("{chunk1}-{}", blob.len() - 1);
    let patch = |loc: String, range: String, body: Vec<u8>| async move {
        http.send(
            Method::PATCH,
            &loc,
            &[("content-type", OCTET), ("content-range", range.as_str())],
            body,
        )
        .await
    };
    let r = patch(loc, range2.clone(), c2.to_vec()).await;
    assert_eq!(
        r.status,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "out-of-order chunk: {}",
        show(&r)
    );

    let prev = start_session(http, REPO).await;
    let r = patch(prev.clone(), range1.clone(), c1.to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "first chunk: {}", show(&r));
    assert_eq!(r.header("range"), Some(range1.as_str()));
    let r = patch(prev.clone(), range1.clone(), c1.to_vec()).await;
    assert_eq!(
        r.status,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "retried chunk: {}",
        show(&r)
    );
    let r = http.get(&prev).await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "status of a stale upload: {}",
        show(&r)
    );
    assert_eq!(r.header("range"), Some(range1.as_str()));
    let r = patch(location(&r), range2, c2.to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "second chunk: {}", show(&r));
    let r = http
        .send(
            Method::PUT,
            &with_query(&location(&r), "digest", &blob.digest),
            &[("content-type", OCTET), ("content-length", "0")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "closing PUT: {}", show(&r));
    location(&r);
    let r = http.get(&blob_path(&blob.digest)).await;
    assert_eq!(r.body.as_ref(), blob.content.as_slice());
}

async fn push_cross_repository_mount(http: &Http, fx: &Fx) {
    let uploads = format!("/v2/{CROSS}/blobs/uploads/");
    let r = http
        .send(
            Method::POST,
            &with_query(&uploads, "mount", &fx.dummy),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "mount of an unknown blob: {}",
        show(&r)
    );
    assert!(location(&r).starts_with(&uploads), "{}", show(&r));

    let url = with_query(
        &with_query(&uploads, "mount", &fx.blob_a.digest),
        "from",
        REPO,
    );
    let r = http.send(Method::POST, &url, &[], Bytes::new()).await;
    assert_status(&r, &[201, 202], "mount from another repository");
    if r.status == StatusCode::CREATED {
        let loc = location(&r);
        assert_eq!(loc, format!("/v2/{CROSS}/blobs/{}", fx.blob_a.digest));
        let got = http.get(&loc).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body.as_ref(), fx.blob_a.content.as_slice());
    } else {
        assert!(location(&r).starts_with(&uploads));
    }
    // This registry mounts without `from` (OCI_AUTOMATIC_CROSSMOUNT=1 in the suite).
    let third = "conformance/repo3";
    let url = with_query(
        &format!("/v2/{third}/blobs/uploads/"),
        "mount",
        &fx.blob_a.digest,
    );
    let r = http.send(Method::POST, &url, &[], Bytes::new()).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "automatic mount: {}",
        show(&r)
    );
    assert_eq!(
        location(&r),
        format!("/v2/{third}/blobs/{}", fx.blob_a.digest)
    );
}

async fn push_manifest_upload(http: &Http, fx: &Fx) {
    let r = http.get(&manifest_path(NONEXISTENT)).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "GET nonexistent manifest: {}",
        show(&r)
    );
    let m1 = &fx.manifests[1];
    for i in 0..4 {
        let r = http
            .put_manifest(REPO, &format!("test{i}"), OCI_MANIFEST, &m1.content)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "PUT manifest: {}", show(&r));
        location(&r);
    }
    let e = &fx.empty_layer_manifest;
    let r = http
        .put_manifest(REPO, "emptylayer", OCI_MANIFEST, &e.content)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "manifest with no layers: {}",
        show(&r)
    );
    location(&r);
    let r = get_with(http, &manifest_path(&m1.digest), ACCEPT_MANIFEST).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), m1.content.as_slice());
}

async fn push_teardown(http: &Http, fx: &Fx) {
    for m in [&fx.manifests[1], &fx.empty_layer_manifest] {
        let r = delete(http, &manifest_path(&m.digest)).await;
        assert_status(&r, DELETED, "delete manifest");
    }
    for b in [&fx.configs[1], &fx.layer] {
        let r = delete(http, &blob_path(&b.digest)).await;
        assert_status(&r, DELETED_OR_GONE, "delete blob");
    }
}

pub(super) async fn push_workflow(http: &Http, fx: &Fx) {
    push_blob_upload_streamed(http, fx).await;
    push_blob_upload_monolithic(http, fx).await;
    push_blob_upload_chunked(http, fx).await;
    push_cross_repository_mount(http, fx).await;
    push_manifest_upload(http, fx).await;
    push_teardown(http, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_blob_upload_streamed_section() {
    let (_srv, http, fx) = fresh(4).await;
    push_blob_upload_streamed(&http, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_blob_upload_monolithic_section() {
    let (_srv, http, fx) = fresh(5).await;
    push_blob_upload_monolithic(&http, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_blob_upload_chunked_section() {
    let (_srv, http, fx) = fresh(6).await;
    push_blob_upload_chunked(&http, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_cross_repository_mount_section() {
    let (_srv, http, fx) = fresh(7).await;
    push_blob_upload_streamed(&http, &fx).await;
    push_cross_repository_mount(&http, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_manifest_upload_and_teardown_sections() {
    let (_srv, http, fx) = fresh(8).await;
    populate(&http, &[&fx.configs[1], &fx.layer]).await;
    push_manifest_upload(&http, &fx).await;
    push_teardown(&http, &fx).await;
}
