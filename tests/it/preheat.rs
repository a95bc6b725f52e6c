//! Preheat (`agent registry preheat`, `POST /admin/preheat`, `[[preheat]]`) and
//! `mirror.prefetch_layers`, against the fake upstream (which counts requests).

use crate::mirror::mirror_of;
use crate::support::agent::{text, Home};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{image_manifest, Http};
use crate::support::random;
use crate::support::server::{default_upstream, TestServer};
use agent_registry::config::{Platform, PreheatConfig};
use agent_registry::oci::Digest;
use http::StatusCode;
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One platform image in `repo`: (manifest digest, manifest size, [config, layer]).
fn platform_image(fake: &FakeUpstream, repo: &str, seed: u64) -> (String, usize, Vec<String>) {
    let config = fake.add_blob(repo, format!("{{\"seed\":{seed}}}").into_bytes());
    let layer = fake.add_blob(repo, random(60_000 + seed as usize, seed));
    let m = image_manifest((&config, 12), &[(&layer, 60_000 + seed as usize)], None);
    let len = m.len();
    let d = fake.add_manifest(repo, "", OCI, m);
    (d, len, vec![config, layer])
}

/// A two-platform image tagged `tag`: (index digest, amd64 image, arm64 image).
#[allow(clippy::type_complexity)]
fn multi_arch(
    fake: &FakeUpstream,
    repo: &str,
    tag: &str,
) -> (String, (String, Vec<String>), (String, Vec<String>)) {
    let (amd, amd_len, amd_blobs) = platform_image(fake, repo, 1);
    let (arm, arm_len, arm_blobs) = platform_image(fake, repo, 2);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": OCI, "digest": amd, "size": amd_len,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI, "digest": arm, "size": arm_len,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    });
    let d = fake.add_manifest(repo, tag, INDEX, serde_json::to_vec(&index).expect("json"));
    (d, (amd, amd_blobs), (arm, arm_blobs))
}

fn on_disk(srv: &TestServer, digest: &str) -> bool {
    let d: Digest = digest.parse().expect("digest");
    srv.app.storage.blobs.path(&d).exists()
}

/// Whether `digest` gets committed within 5 s.
async fn becomes_cached(srv: &TestServer, digest: &str) -> bool {
    for _ in 0..500 {
        if on_disk(srv, digest) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[test]
fn after_agent_registry_preheat_the_image_pulls_with_no_upstream_request() {
    let fake = FakeUpstream::start();
    let (index, (amd, amd_blobs), (_arm, arm_blobs)) = multi_arch(&fake, "library/app", "v1");
    let srv = mirror_of(&fake.url(), Duration::from_secs(600));
    let url = format!("http://{}", srv.host());
    let home = Home::new();
    let o = home.run(&[
        "registry",
        "preheat",
        "--registry",
        &url,
        "--platform",
        "linux/amd64",
        "docker.io/library/app:v1",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    // The index and the amd64 child; its config and layer.
    assert!(
        out.contains("docker.io/library/app:v1: 2 manifests, 2 blobs,"),
        "{out}"
    );
    assert!(text(&o.stderr).contains("preheating docker.io/library/app:v1 (1/1)"));
    for d in &amd_blobs {
        assert!(on_disk(&srv, d), "amd64 blob {d} cached");
    }
    for d in &arm_blobs {
        assert!(
            !on_disk(&srv, d),
            "arm64 blob {d} not filled for linux/amd64"
        );
    }

    // A pull of the amd64 image now never reaches the upstream.
    fake.reset_counters();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = Http::new(&srv.host());
        let r = http.get("/v2/app/manifests/v1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-content-digest"), Some(index.as_str()));
        let r = http.get(&format!("/v2/app/manifests/{amd}")).await;
        assert_eq!(r.status, StatusCode::OK);
        for d in &amd_blobs {
            let r = http.get(&format!("/v2/app/blobs/{d}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("x-cache"), Some("hit"), "{d}");
        }
    });
    assert_eq!(fake.total_hits(), 0, "upstream requests after preheat");

    // An unknown image reports its error; the others are still filled; exit status 1.
    let (_, (_, other_blobs), _) = multi_arch(&fake, "library/other", "v2");
    let o = home.run(&[
        "registry",
        "preheat",
        "--registry",
        &url,
        "docker.io/library/nope:v9",
        "docker.io/library/other:v2",
    ]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}{}", text(&o.stderr));
    assert!(
        out.contains("docker.io/library/nope:v9: failed: manifest v9 unknown"),
        "{out}"
    );
    assert!(
        out.contains("docker.io/library/other:v2: 3 manifests, 4 blobs,"),
        "{out}"
    );
    assert!(text(&o.stderr).contains("preheat failed for 1 of 2 images"));
    for d in &other_blobs {
        assert!(on_disk(&srv, d), "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_per_image_and_refuses_bad_requests() {
    let fake = FakeUpstream::start();
    let (_, (_, amd_blobs), (_, arm_blobs)) = multi_arch(&fake, "library/app", "v1");
    let srv = mirror_of(&fake.url(), Duration::from_secs(600));
    let http = Http::new(&srv.host());
    let post = |body: serde_json::Value| {
        let http = http.clone();
        async move {
            http.send(
                http::Method::POST,
                "/admin/preheat",
                &[("content-type", "application/json")],
                serde_json::to_vec(&body).expect("json"),
            )
            .await
        }
    };
    let r = post(serde_json::json!({"images": ["docker.io/library/app:v1", "agents/x:1"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = r.json();
    let first = &v["images"][0];
    assert_eq!(first["manifests"], 3);
    assert_eq!(first["blobs"], 4);
    let size: u64 = 2 * 10 + 60_001 + 60_002;
    assert_eq!(first["bytes"], size);
    assert!(first.get("error").is_none(), "{v}");
    assert!(
        v["images"][1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("agents/x is not a mirrored repository")),
        "{v}"
    );
    for d in amd_blobs.iter().chain(&arm_blobs) {
        assert!(on_disk(&srv, d), "{d}");
    }
    // A second run finds everything cached: same report, no blob fetched again.
    let r = post(serde_json::json!({"images": ["docker.io/library/app:v1"]})).await;
    assert_eq!(r.json()["images"][0]["bytes"], size);
    for d in amd_blobs.iter().chain(&arm_blobs) {
        assert_eq!(fake.blob_gets(d), 1, "{d}");
    }
    let r = post(serde_json::json!({"images": ["a:1"], "platform": "amd64"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(serde_json::json!({"images": []})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_caches_the_layers_after_one_manifest_get() {
    let fake = FakeUpstream::start();
    let config = fake.add_blob("library/app", b"{\"seed\":7}".to_vec());
    let l1 = fake.add_blob("library/app", random(300_000, 7));
    let l2 = fake.add_blob("library/app", random(200_000, 8));
    let m = image_manifest((&config, 10), &[(&l1, 300_000), (&l2, 200_000)], None);
    fake.add_manifest("library/app", "v1", OCI, m);
    let url = fake.url();
    let srv = TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url);
        cfg.mirror.prefetch_layers = true;
        cfg.mirror.prefetch_concurrency = 2;
    });
    let http = Http::new(&srv.host());
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    for d in [&config, &l1, &l2] {
        assert!(becomes_cached(&srv, d).await, "{d} prefetched");
        assert_eq!(fake.blob_gets(d), 1, "{d}");
    }
    let r = http.get(&format!("/v2/app/blobs/{l1}")).await;
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert_eq!(fake.blob_gets(&l1), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preheat_list_is_kept_warm() {
    let fake = FakeUpstream::start();
    let (_, (_, amd_blobs), (_, arm_blobs)) = multi_arch(&fake, "library/app", "v1");
    let url = fake.url();
    let srv = TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url);
        cfg.preheat = vec![PreheatConfig {
            images: vec!["docker.io/library/app:v1".into()],
            platform: Platform::parse("linux/arm64").expect("platform"),
            interval: Duration::from_millis(300),
        }];
    });
    // The server runs the list itself (started with the listener).
    for d in &arm_blobs {
        assert!(becomes_cached(&srv, d).await, "{d}");
    }
    for d in &amd_blobs {
        assert!(!on_disk(&srv, d), "{d}");
    }
    // The next run fills again what left the cache meanwhile.
    let layer = &arm_blobs[1];
    let r = Http::new(&srv.host())
        .send(
            http::Method::POST,
            &format!("/admin/cache/purge?digest={layer}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(!on_disk(&srv, layer), "purged");
    // (The purge takes the manifests referencing the layer with it, and their config.)
    for d in &arm_blobs {
        assert!(
            becomes_cached(&srv, d).await,
            "{d} refilled by the next run"
        );
    }
    assert_eq!(fake.blob_gets(layer), 2);
    for d in &amd_blobs {
        assert!(!on_disk(&srv, d), "{d}");
    }
}
