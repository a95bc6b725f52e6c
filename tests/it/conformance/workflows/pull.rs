//! Classic suite, 01 pull: blobs and manifests by digest and tag, HEAD and GET, 404s
//! for what does not exist, an OCI error body for a malformed reference, and teardown.

use super::*;

async fn pull_setup(http: &Http, fx: &Fx) {
    populate(http, &[&fx.configs[0], &fx.configs[1], &fx.layer]).await;
    put_manifest_ok(http, REPO, TEST_TAG, OCI_MANIFEST, &fx.manifests[0].content).await;
    let m1 = &fx.manifests[1];
    put_manifest_ok(http, REPO, &m1.digest, OCI_MANIFEST, &m1.content).await;
}

async fn pull_blobs(http: &Http, fx: &Fx) {
    let r = http.head(&blob_path(&fx.dummy)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "HEAD nonexistent blob");
    assert!(r.body.is_empty());
    let c0 = &fx.configs[0];
    let r = http.head(&blob_path(&c0.digest)).await;
    assert_eq!(r.status, StatusCode::OK, "HEAD existing blob: {}", show(&r));
    assert_eq!(r.header("docker-content-digest"), Some(c0.digest.as_str()));
    assert_eq!(
        r.header("content-length"),
        Some(c0.len().to_string().as_str())
    );
    assert!(r.body.is_empty());
    let r = http.get(&blob_path(&fx.dummy)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "GET nonexistent blob");
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    let r = http.get(&blob_path(&c0.digest)).await;
    assert_eq!(r.status, StatusCode::OK, "GET existing blob");
    assert_eq!(r.body.as_ref(), c0.content.as_slice());
}

async fn pull_manifests(http: &Http, fx: &Fx) {
    let r = head_with(http, &manifest_path(NONEXISTENT), ACCEPT_MANIFEST).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "HEAD nonexistent manifest: {}",
        show(&r)
    );
    for m in &fx.manifests[..2] {
        let r = head_with(http, &manifest_path(&m.digest), ACCEPT_MANIFEST).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "HEAD manifest by digest: {}",
            show(&r)
        );
        assert_eq!(r.header("docker-content-digest"), Some(m.digest.as_str()));
        assert!(r.body.is_empty());
    }
    let m0 = &fx.manifests[0];
    let r = head_with(http, &manifest_path(TEST_TAG), ACCEPT_MANIFEST).await;
    assert_eq!(r.status, StatusCode::OK, "HEAD manifest by tag");
    assert_eq!(r.header("docker-content-digest"), Some(m0.digest.as_str()));
    let r = get_with(http, &manifest_path(NONEXISTENT), ACCEPT_MANIFEST).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "GET nonexistent manifest: {}",
        show(&r)
    );
    for m in &fx.manifests[..2] {
        let r = get_with(http, &manifest_path(&m.digest), ACCEPT_MANIFEST).await;
        assert_eq!(r.status, StatusCode::OK, "GET manifest by digest");
        assert_eq!(r.body.as_ref(), m.content.as_slice());
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    }
    let r = get_with(http, &manifest_path(TEST_TAG), ACCEPT_MANIFEST).await;
    assert_eq!(r.status, StatusCode::OK, "GET manifest by tag");
    assert_eq!(r.body.as_ref(), m0.content.as_slice());
}

async fn pull_error_codes(http: &Http) {
    // The earliest suite PUT the garbage and required exactly 400; later ones GET it.
    let r = http
        .put_manifest(REPO, "sha256:totallywrong", OCI_MANIFEST, b"blablabla")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", show(&r));
    assert!(SPEC_ERROR_CODES.contains(&r.error_code().as_str()));
    let r = http
        .send(
            Method::GET,
            &manifest_path("sha256:totallywrong"),
            &[("content-type", OCI_MANIFEST)],
            &b"blablabla"[..],
        )
        .await;
    assert_status(&r, &[400, 404], "GET of a malformed digest");
    if r.status == StatusCode::BAD_REQUEST {
        let code = r.error_code();
        assert!(SPEC_ERROR_CODES.contains(&code.as_str()), "{code}");
    }
}

async fn pull_teardown(http: &Http, fx: &Fx) {
    for m in &fx.manifests[..2] {
        let r = delete(http, &manifest_path(&m.digest)).await;
        assert_status(&r, DELETED, "delete manifest");
        let r = http.get(&manifest_path(&m.digest)).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "deleted manifest still served"
        );
    }
    for b in [&fx.configs[0], &fx.configs[1], &fx.layer] {
        let r = delete(http, &blob_path(&b.digest)).await;
        assert_status(&r, DELETED_OR_GONE, "delete blob");
    }
}

pub(super) async fn pull_workflow(http: &Http, fx: &Fx) {
    pull_setup(http, fx).await;
    pull_blobs(http, fx).await;
    pull_manifests(http, fx).await;
    pull_error_codes(http).await;
    pull_teardown(http, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_blobs_section() {
    let (_srv, http, fx) = fresh(1).await;
    pull_setup(&http, &fx).await;
    pull_blobs(&http, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_manifests_section() {
    let (_srv, http, fx) = fresh(2).await;
    pull_setup(&http, &fx).await;
    pull_manifests(&http, &fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_error_codes_and_teardown_sections() {
    let (_srv, http, fx) = fresh(3).await;
    pull_setup(&http, &fx).await;
    pull_error_codes(&http).await;
    pull_teardown(&http, &fx).await;
}
