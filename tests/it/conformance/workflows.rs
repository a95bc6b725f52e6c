//! The classic conformance suite's four workflows (01 pull, 02 push, 03 content discovery,
//! 04 content management) with its fixtures: one test per section, each on a fresh
//! registry after that workflow's setup, and the whole suite in order on one namespace,
//! as the Go suite runs it.

mod discovery;
mod management;
mod pull;
mod push;

use super::*;

const REPO: &str = "conformance/repo1";
const CROSS: &str = "conformance/repo2";
const TEST_TAG: &str = "tagtest0";
const NONEXISTENT: &str = ".INVALID_MANIFEST_NAME";
const ART_A: &str = "application/vnd.nhl.peanut.butter.bagel";
const ART_B: &str = "application/vnd.nba.strawberry.jam.croissant";
const ART_INDEX: &str = "application/vnd.food.stand";
const ANNOTATION: &str = "org.opencontainers.conformance.test";

/// The suite's fixtures: a config and an image manifest per workflow, a layer, blobs for
/// streamed and chunked uploads, and the referrers artifacts.
struct Fx {
    configs: Vec<Blob>,
    layer: Blob,
    manifests: Vec<Blob>,
    empty_layer_manifest: Blob,
    blob_a: Blob,
    blob_b: Blob,
    chunk1: usize,
    dummy: String,
    empty_json: Blob,
    ref_blob_a: Blob,
    ref_blob_b: Blob,
    refs_a_config: Blob,
    refs_b_config: Blob,
    refs_a_layer: Blob,
    refs_b_layer: Blob,
    refs_c_layer: Blob,
    refs_index: Blob,
    /// Expected annotation value per referrer digest.
    annotations: Vec<(String, String)>,
}

/// An image manifest as the suite writes it: tab-indented, with `data` and an unknown
/// `newUnspecifiedField` in the config descriptor and null ones in the layer.
fn legacy_manifest(config: &Blob, layers: &[&Blob], media_type: bool) -> Blob {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| {
            json!({"mediaType": OCI_LAYER_GZ, "digest": l.digest, "size": l.len(),
                "data": null, "newUnspecifiedField": null})
        })
        .collect();
    let mut m = json!({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.len(),
            "data": base64(&config.content), "newUnspecifiedField": base64(b"hello world")},
        "layers": layers,
    });
    if media_type {
        m["mediaType"] = json!(OCI_MANIFEST);
    }
    Blob::new(tab_json(&m))
}

fn artifact(config: Value, layers: Vec<Value>, subject: &Blob, extra: Value) -> Blob {
    let mut m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
        "layers": layers, "subject": subject.desc(OCI_MANIFEST)});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    Blob::new(tab_json(&m))
}

impl Fx {
    fn new(seed: u64) -> Fx {
        let configs: Vec<Blob> = (0..5)
            .map(|i| {
                let author: String = random(12, seed * 100 + i)
                    .iter()
                    .map(|b| char::from(b'a' + b % 26))
                    .collect();
                Blob::new(tab_json(&json!({"author": author, "architecture": "amd64",
                    "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})))
            })
            .collect();
        let layer = Blob::new(random(150, seed * 100 + 50));
        let manifests: Vec<Blob> = configs
            .iter()
            .map(|c| legacy_manifest(c, &[&layer], true))
            .collect();
        let empty_layer_manifest = legacy_manifest(&configs[1], &[], false);
        let blob_b = Blob::new(random(42, seed * 100 + 52));
        let empty_json = Blob::new(b"{}".to_vec());
        let ref_blob_a = Blob::new(b"NHL Peanut Butter on my NHL bagel".to_vec());
        let ref_blob_b = Blob::new(b"NBA Strawberry Jam on my NBA croissant".to_vec());
        let note = |v: &str| json!({"annotations": {ANNOTATION: v}});
        let refs_a_config = artifact(
            ref_blob_a.desc(ART_A),
            vec![empty_json.desc(OCI_EMPTY)],
            &manifests[4],
            note("test config a"),
        );
        let refs_b_config = artifact(
            ref_blob_b.desc(ART_B),
            vec![empty_json.desc(OCI_EMPTY)],
            &manifests[4],
            note("test config b"),
        );
        let mut a_layer = note("test layer a");
        a_layer["artifactType"] = json!(ART_A);
        let refs_a_layer = artifact(
            empty_json.desc(OCI_EMPTY),
            vec![ref_blob_a.desc(ART_A)],
            &manifests[4],
            a_layer,
        );
        let mut b_layer = note("test layer b");
        b_layer["artifactType"] = json!(ART_B);
        let refs_b_layer = artifact(
            empty_json.desc(OCI_EMPTY),
            vec![ref_blob_b.desc(ART_B)],
            &manifests[4],
            b_layer,
        );
        // Like B's layer artifact, but its subject (manifest 3) is never pushed.
        let refs_c_layer = artifact(
            empty_json.desc(OCI_EMPTY),
            vec![ref_blob_b.desc(ART_B)],
            &manifests[3],
            json!({"artifactType": ART_B}),
        );
        let refs_index = Blob::new(tab_json(&json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ART_INDEX,
            "manifests": [refs_a_config.desc(OCI_MANIFEST), refs_a_layer.desc(OCI_MANIFEST)],
            "subject": manifests[4].desc(OCI_MANIFEST),
            "annotations": {ANNOTATION: "test index"},
        })));
        let annotations = vec![
            (refs_a_config.digest.clone(), "test config a".into()),
            (refs_b_config.digest.clone(), "test config b".into()),
            (refs_a_layer.digest.clone(), "test layer a".into()),
            (refs_b_layer.digest.clone(), "test layer b".into()),
            (refs_index.digest.clone(), "test index".into()),
        ];
        Fx {
            configs,
            layer,
            manifests,
            empty_layer_manifest,
            blob_a: Blob::new(random(42, seed * 100 + 51)),
            chunk1: blob_b.len() / 2 + 1,
            blob_b,
            dummy: sha256(b"hello world"),
            empty_json,
            ref_blob_a,
            ref_blob_b,
            refs_a_config,
            refs_b_config,
            refs_a_layer,
            refs_b_layer,
            refs_c_layer,
            refs_index,
            annotations,
        }
    }
}

async fn populate(http: &Http, blobs: &[&Blob]) {
    for b in blobs {
        let r = post_then_put(http, REPO, b).await;
        assert!(is_2xx(&r), "populate {}: {}", b.digest, show(&r));
    }
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

fn manifest_path(reference: &str) -> String {
    format!("/v2/{REPO}/manifests/{reference}")
}

const ACCEPT_MANIFEST: &[(&str, &str)] = &[("accept", OCI_MANIFEST)];
const DELETED: &[u16] = &[200, 201, 202, 204, 405];
const DELETED_OR_GONE: &[u16] = &[200, 201, 202, 204, 404, 405];

/// The tags of a 200 tag list.
fn tag_list(r: &Resp) -> Vec<String> {
    assert_eq!(r.status, StatusCode::OK, "tag list: {}", show(r));
    serde_json::from_value(r.json()["tags"].clone()).expect("tags")
}

async fn fresh(seed: u64) -> (TestServer, Http, Fx) {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    (srv, http, Fx::new(seed))
}

/// The Go suite runs the four workflows in order against one namespace, so what one
/// leaves behind is what the next sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_workflows_in_order_on_one_namespace() {
    let (srv, http, fx) = fresh(13).await;
    pull::pull_workflow(&http, &fx).await;
    push::push_workflow(&http, &fx).await;
    discovery::discovery_workflow(&http, &fx).await;
    management::management_workflow(&http, &fx).await;
    // Same again, over HTTP/2, with new fixtures on top of the leftovers.
    let h2 = Http::h2(&srv.host());
    let fx = Fx::new(14);
    pull::pull_workflow(&h2, &fx).await;
    push::push_workflow(&h2, &fx).await;
    discovery::discovery_workflow(&h2, &fx).await;
    management::management_workflow(&h2, &fx).await;
}
