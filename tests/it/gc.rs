//! Garbage collection of hosted repositories: what it frees and keeps, dry runs, the
//! cleanup policies, and manifests pushed while it runs.

use crate::support::http::{image_manifest, Http};
use crate::support::random;
use crate::support::server::TestServer;
use agent_registry::oci::Digest;
use http::{Method, StatusCode};
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn server(f: impl FnOnce(&mut agent_registry::config::CacheConfig)) -> TestServer {
    TestServer::start_with(|cfg| {
        cfg.cache.gc.grace = Duration::ZERO;
        f(&mut cfg.cache);
    })
}

fn on_disk(srv: &TestServer, digest: &str) -> bool {
    let d: Digest = digest.parse().expect("digest");
    srv.app.storage.blobs.path(&d).exists()
}

/// Pushes config + layer and returns (manifest bytes, blob digests).
async fn push_blobs(http: &Http, repo: &str, seed: u64) -> (Vec<u8>, Vec<String>) {
    let cfg = format!("{{\"seed\":{seed}}}");
    let c = http.push_blob(repo, cfg.as_bytes()).await;
    let layer = random(50_000, seed);
    let l = http.push_blob(repo, &layer).await;
    let m = image_manifest((&c, cfg.len()), &[(&l, layer.len())], None);
    (m, vec![c, l])
}

async fn gc(http: &Http, dry_run: bool) -> serde_json::Value {
    let path = if dry_run {
        "/admin/gc?dry_run=1"
    } else {
        "/admin/gc"
    };
    let r = http.send(Method::POST, path, &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_frees_what_nothing_references_and_keeps_images() {
    let srv = server(|_| {});
    let http = Http::new(&srv.host());
    let (m, kept) = push_blobs(&http, "team/app", 1).await;
    let r = http.put_manifest("team/app", "v1", OCI, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let orphan = http.push_blob("team/app", &random(30_000, 2)).await;
    let (m2, dropped) = push_blobs(&http, "team/old", 3).await;
    let r = http.put_manifest("team/old", "v1", OCI, &m2).await;
    let old = r
        .header("docker-content-digest")
        .expect("digest")
        .to_string();
    let r = http
        .send(
            Method::DELETE,
            &format!("/v2/team/old/manifests/{old}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // Links become collectable once they are older than the grace (whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let dry = gc(&http, true).await;
    assert_eq!(dry["dry_run"], true);
    let listed: Vec<String> = dry["deleted"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for d in dropped.iter().chain([&orphan, &old]) {
        assert!(listed.contains(d), "{d} not in {listed:?}");
        assert!(on_disk(&srv, d), "a dry run deletes nothing");
    }
    let report = gc(&http, false).await;
    assert_eq!(report["blobs_deleted"], dry["blobs_deleted"], "{report}");
    assert!(report["freed_bytes"].as_u64().is_some_and(|n| n > 80_000));
    for d in dropped.iter().chain([&orphan, &old]) {
        assert!(!on_disk(&srv, d), "{d} collected");
    }
    for d in &kept {
        assert!(on_disk(&srv, d));
        let r = http
            .get_hashed(&format!("/v2/team/app/blobs/{d}"), &[])
            .await
            .expect("blob");
        assert_eq!(&r.digest, d);
    }
    let r = http.get("/v2/team/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    // Nothing left to do; the metric counted the bytes.
    assert_eq!(gc(&http, false).await["blobs_deleted"], 0);
    let text = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    assert!(
        text.contains("agent_registry_gc_freed_bytes_total"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_never_deletes_a_blob_of_a_manifest_pushed_during_the_run() {
    let srv = server(|_| {});
    let http = Http::new(&srv.host());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (http, stop) = (http.clone(), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                gc(&http, false).await;
                runs += 1;
            }
            runs
        })
    };
    let pushers: Vec<_> = (0..8u64)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                let repo = format!("race/app{i}");
                let mut retries = 0;
                loop {
                    let (m, blobs) = push_blobs(&http, &repo, 100 + i).await;
                    // First try: wait until the links are collectable, so the manifest
                    // push races the collector's sweep. A retry pushes at once.
                    if retries == 0 {
                        tokio::time::sleep(Duration::from_millis(900 + 50 * i)).await;
                    }
                    let r = http.put_manifest(&repo, "v1", OCI, &m).await;
                    if r.status == StatusCode::CREATED {
                        return (repo, blobs, retries);
                    }
                    // The collector took the blobs first: the push is refused, never
                    // accepted with missing blobs. Push again.
                    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
                    assert_eq!(r.error_code(), "MANIFEST_BLOB_UNKNOWN");
                    retries += 1;
                    assert!(retries < 20);
                }
            })
        })
        .collect();
    let mut pushed = Vec::new();
    for p in pushers {
        pushed.push(p.await.expect("pusher"));
    }
    // A few more runs after the last push.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = collector.await.expect("collector");
    assert!(runs >= 3, "gc ran {runs} times");
    gc(&http, false).await;
    for (repo, blobs, _) in &pushed {
        let r = http.get(&format!("/v2/{repo}/manifests/v1")).await;
        assert_eq!(r.status, StatusCode::OK);
        for d in blobs {
            let r = http
                .get_hashed(&format!("/v2/{repo}/blobs/{d}"), &[])
                .await
                .unwrap_or_else(|e| panic!("{repo} lost {d}: {e}"));
            assert_eq!(r.status, StatusCode::OK, "{repo} lost {d}");
            assert_eq!(&r.digest, d);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_keeps_the_last_tags_and_drops_untagged_manifests() {
    let srv = server(|c| {
        c.cleanup.keep_last_tags = Some(2);
        c.cleanup.delete_untagged_after = Some(Duration::from_secs(1));
    });
    let http = Http::new(&srv.host());
    let mut layers = Vec::new();
    for (i, tag) in ["t1", "t2", "t3", "t4"].iter().enumerate() {
        let (m, blobs) = push_blobs(&http, "team/rel", 10 + i as u64).await;
        let r = http.put_manifest("team/rel", tag, OCI, &m).await;
        assert_eq!(r.status, StatusCode::CREATED);
        layers.push(blobs[1].clone());
        // Distinct update times, so "newest" is well defined.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let report = gc(&http, false).await;
    assert_eq!(report["tags_deleted"], 2, "{report}");
    assert_eq!(report["manifests_deleted"], 2, "{report}");
    let tags = http.get("/v2/team/rel/tags/list").await.json();
    assert_eq!(tags["tags"], serde_json::json!(["t3", "t4"]));
    assert_eq!(
        http.get("/v2/team/rel/manifests/t1").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(!on_disk(&srv, &layers[0]) && !on_disk(&srv, &layers[1]));
    assert!(on_disk(&srv, &layers[2]) && on_disk(&srv, &layers[3]));
}
