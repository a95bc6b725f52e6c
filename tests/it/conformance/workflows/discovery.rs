//! Classic suite, 03 content discovery: tag listing with `n` and `last`, and the
//! referrers API: OCI-Subject on push, artifacts pushed before their subject, an index
//! artifact, an artifactType filter with OCI-Filters-Applied, a subject never pushed.

use super::*;

async fn discovery_setup(http: &Http, fx: &Fx) {
    populate(http, &[&fx.configs[2], &fx.layer]).await;
    for i in 0..4 {
        put_manifest_ok(
            http,
            REPO,
            &format!("test{i}"),
            OCI_MANIFEST,
            &fx.manifests[2].content,
        )
        .await;
    }
}

/// References setup: artifacts pushed before and after their subject, an index artifact,
/// and one whose subject never arrives; every push answers with OCI-Subject.
async fn discovery_references_setup(http: &Http, fx: &Fx) {
    assert_eq!(
        fx.empty_json.digest,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    populate(http, &[&fx.empty_json, &fx.ref_blob_a]).await;
    let subject4 = &fx.manifests[4];
    for (artifact, mt) in [
        (&fx.refs_a_config, OCI_MANIFEST),
        (&fx.refs_a_layer, OCI_MANIFEST),
        (&fx.refs_index, OCI_INDEX),
    ] {
        let r = put_manifest_ok(http, REPO, &artifact.digest, mt, &artifact.content).await;
        assert_eq!(
            r.header("oci-subject"),
            Some(subject4.digest.as_str()),
            "{}",
            show(&r)
        );
    }
    populate(http, &[&fx.configs[4], &fx.layer]).await;
    put_manifest_ok(http, REPO, TEST_TAG, OCI_MANIFEST, &subject4.content).await;
    populate(http, &[&fx.ref_blob_b]).await;
    for (artifact, subject) in [
        (&fx.refs_b_config, subject4),
        (&fx.refs_b_layer, subject4),
        (&fx.refs_c_layer, &fx.manifests[3]),
    ] {
        let r = put_manifest_ok(
            http,
            REPO,
            &artifact.digest,
            OCI_MANIFEST,
            &artifact.content,
        )
        .await;
        assert_eq!(
            r.header("oci-subject"),
            Some(subject.digest.as_str()),
            "{}",
            show(&r)
        );
    }
}

async fn discovery_tag_listing(http: &Http) {
    let tags = tag_list(&http.get(&format!("/v2/{REPO}/tags/list")).await);
    for i in 0..4 {
        assert!(tags.contains(&format!("test{i}")), "{tags:?}");
    }
    let half = tags.len() / 2;
    let r = http.get(&format!("/v2/{REPO}/tags/list?n={half}")).await;
    let first = tag_list(&r);
    assert_eq!(first.len(), half);
    assert!(r.header("link").is_some(), "more tags follow: {}", show(&r));
    let last = &first[half - 1];
    let r = http
        .get(&format!("/v2/{REPO}/tags/list?n={half}&last={last}"))
        .await;
    let next = tag_list(&r);
    assert!(next.len() <= half);
    let mut sorted = tags.clone();
    sorted.sort();
    assert_eq!(first, sorted[..half].to_vec());
    assert_eq!(next, sorted[half..(2 * half).min(sorted.len())].to_vec());
}

fn index_of(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "referrers: {}", show(r));
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let v = r.json();
    v["manifests"].as_array().cloned().expect("manifests array")
}

async fn discovery_referrers(http: &Http, fx: &Fx) {
    let r = http
        .get(&format!("/v2/{REPO}/referrers/{}", fx.dummy))
        .await;
    assert!(index_of(&r).is_empty(), "referrers of a nonexistent blob");

    let subject = &fx.manifests[4].digest;
    let check = |list: &[Value]| {
        for d in list {
            let digest = d["digest"].as_str().expect("digest");
            let want = fx.annotations.iter().find(|(k, _)| k == digest);
            let want = want.unwrap_or_else(|| panic!("unexpected referrer {d}"));
            let notes = d["annotations"].as_object().expect("annotations");
            assert_eq!(notes.len(), 1, "{d}");
            assert_eq!(notes[ANNOTATION], want.1.as_str(), "{d}");
        }
    };
    let list = index_of(&http.get(&format!("/v2/{REPO}/referrers/{subject}")).await);
    assert_eq!(list.len(), 5, "{list:?}");
    assert_ne!(list[0]["digest"], list[1]["digest"]);
    check(&list);

    let r = http
        .get(&format!(
            "/v2/{REPO}/referrers/{subject}?artifactType={ART_A}"
        ))
        .await;
    let list = index_of(&r);
    // The suite accepts an unfiltered list without the header; this registry filters.
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(list.len(), 2, "{list:?}");
    check(&list);
    for d in &list {
        assert_eq!(d["artifactType"], ART_A, "{d}");
    }

    let missing = &fx.manifests[3].digest;
    let list = index_of(&http.get(&format!("/v2/{REPO}/referrers/{missing}")).await);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], fx.refs_c_layer.digest.as_str());
}

async fn discovery_teardown(http: &Http, fx: &Fx) {
    let refs = [
        &fx.refs_index.digest,
        &fx.manifests[2].digest,
        &fx.manifests[4].digest,
        &fx.refs_a_config.digest,
        &fx.refs_a_layer.digest,
    ];
    let tag = TEST_TAG.to_string();
    let rest = [
        &tag,
        &fx.refs_b_config.digest,
        &fx.refs_b_layer.digest,
        &fx.refs_c_layer.digest,
    ];
    for reference in refs.into_iter().chain(rest) {
        let r = delete(http, &manifest_path(reference)).await;
        assert_status(&r, DELETED_OR_GONE, "delete manifest");
    }
    for b in [&fx.configs[2], &fx.layer] {
        let r = delete(http, &blob_path(&b.digest)).await;
        assert_status(&r, DELETED, "delete blob");
    }
    for b in [
        &fx.configs[4],
        &fx.ref_blob_a,
        &fx.ref_blob_b,
        &fx.empty_json,
    ] {
        let r = delete(http, &blob_path(&b.digest)).await;
        assert_status(&r, DELETED_OR_GONE, "references teardown");
    }
    let list = index_of(
        &http
            .get(&format!("/v2/{REPO}/referrers/{}", fx.manifests[4].digest))
            .await,
    );
    assert!(
        list.is_empty(),
        "referrers outlive their manifests: {list:?}"
    );
}

pub(super) async fn discovery_workflow(http: &Http, fx: &Fx) {
    discovery_setup(http, fx).await;
    discovery_references_setup(http, fx).await;
    discovery_tag_listing(http).await;
    discovery_referrers(http, fx).await;
    discovery_teardown(http, fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_tag_listing_section() {
    let (_srv, http, fx) = fresh(9).await;
    discovery_setup(&http, &fx).await;
    discovery_tag_listing(&http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_referrers_section() {
    let (_srv, http, fx) = fresh(10).await;
    discovery_setup(&http, &fx).await;
    discovery_references_setup(&http, &fx).await;
    discovery_referrers(&http, &fx).await;
    discovery_teardown(&http, &fx).await;
}
