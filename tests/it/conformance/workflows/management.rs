//! Classic suite, 04 content management: deleting a tag and a manifest (the tag list
//! shrinks, the manifest is a 404 MANIFEST_UNKNOWN), then its blobs (404 BLOB_UNKNOWN).

use super::*;

/// Setup; returns the number of tags before anything is deleted.
async fn management_setup(http: &Http, fx: &Fx) -> usize {
    populate(http, &[&fx.configs[3], &fx.layer]).await;
    put_manifest_ok(http, REPO, TEST_TAG, OCI_MANIFEST, &fx.manifests[3].content).await;
    tag_list(&http.get(&format!("/v2/{REPO}/tags/list")).await).len()
}

async fn management_manifest_delete(http: &Http, fx: &Fx, tags_before: usize) {
    let r = delete(http, &manifest_path(TEST_TAG)).await;
    assert_status(&r, &[202, 400, 405], "delete tag");
    if r.status == StatusCode::BAD_REQUEST {
        assert_eq!(r.error_code(), "UNSUPPORTED");
    }
    let m3 = &fx.manifests[3];
    let r = delete(http, &manifest_path(&m3.digest)).await;
    assert_status(&r, &[202, 404], "delete manifest by digest");
    let r = http.get(&manifest_path(&m3.digest)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "GET of a deleted manifest");
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let r = http.get(&manifest_path(TEST_TAG)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "GET of a deleted tag");
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
    let r = http.get(&format!("/v2/{REPO}/tags/list")).await;
    let tags = tag_list(&r);
    assert!(tags.len() < tags_before, "{tags:?}");
}

async fn management_blob_delete(http: &Http, fx: &Fx) {
    let mut allowed = true;
    for b in [&fx.configs[3], &fx.layer] {
        let r = delete(http, &blob_path(&b.digest)).await;
        assert_status(&r, &[202, 404, 405], "delete blob");
        allowed = r.status != StatusCode::METHOD_NOT_ALLOWED;
    }
    if allowed {
        let r = http.get(&blob_path(&fx.configs[3].digest)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "GET of a deleted blob");
        assert_eq!(r.error_code(), "BLOB_UNKNOWN");
        let r = http.head(&blob_path(&fx.layer.digest)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "HEAD of a deleted blob");
    }
}

pub(super) async fn management_workflow(http: &Http, fx: &Fx) {
    let tags = management_setup(http, fx).await;
    management_manifest_delete(http, fx, tags).await;
    management_blob_delete(http, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_manifest_delete_section() {
    let (_srv, http, fx) = fresh(11).await;
    let tags = management_setup(&http, &fx).await;
    management_manifest_delete(&http, &fx, tags).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_blob_delete_section() {
    let (_srv, http, fx) = fresh(12).await;
    let tags = management_setup(&http, &fx).await;
    management_manifest_delete(&http, &fx, tags).await;
    management_blob_delete(&http, &fx).await;
}
