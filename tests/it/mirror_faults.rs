//! The mirror against a fault-injecting upstream, for what a real registry will not do on
//! demand: corrupt and truncated bodies, slow streams, 5xx, token auth, moved tags. Also the
//! project's own server as an upstream.

use crate::mirror::mirror_of;
use crate::support::fake_upstream::{AuthMode, FakeUpstream};
use crate::support::http::{image_manifest, Http};
use crate::support::random;
use crate::support::server::TestServer;
use agent_registry::oci::Digest;
use http::{Method, StatusCode};
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image in the fake upstream: (manifest digest, manifest bytes, blob digests).
fn image(fake: &FakeUpstream, repo: &str, tag: &str, seed: u64) -> (String, Vec<u8>, Vec<String>) {
    let config = fake.add_blob(repo, format!("{{\"seed\":{seed}}}").into_bytes());
    let layer_bytes = random(100_000, seed);
    let layer = fake.add_blob(repo, layer_bytes);
    let m = image_manifest((&config, 12), &[(&layer, 100_000)], None);
    let d = fake.add_manifest(repo, tag, OCI, m.clone());
    (d, m, vec![config, layer])
}

fn on_disk(srv: &TestServer, digest: &str) -> bool {
    let d: Digest = digest.parse().expect("digest");
    srv.app.storage.blobs.path(&d).exists()
}

/// Whether the blob is committed, waiting a little: a fill commits after its readers got
/// the verified bytes.
async fn stored(srv: &TestServer, digest: &str) -> bool {
    for _ in 0..300 {
        if on_disk(srv, digest) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_cold_gets_of_a_64mib_blob_make_one_upstream_fetch() {
    let fake = FakeUpstream::start();
    let bytes = random(64 << 20, 1);
    let digest = fake.add_blob("library/big", bytes);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    let path = format!("/v2/big/blobs/{digest}");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (http, path) = (http.clone(), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.expect("task").expect("complete body");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.digest, digest);
        assert_eq!(r.len, 64 << 20);
        *statuses
            .entry(
                r.headers
                    .get("x-cache")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(
        fake.blob_gets(&digest),
        1,
        "upstream blob GETs; cache statuses {statuses:?}"
    );
    assert_eq!(statuses.get("miss"), Some(&1), "{statuses:?}");
    assert!(stored(&srv, &digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_upstream_gives_an_error_and_nothing_is_cached() {
    let fake = FakeUpstream::start();
    let digest = fake.add_blob("library/x", random(3 << 20, 2));
    fake.set(|s| s.corrupt = true);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    let path = format!("/v2/x/blobs/{digest}");
    let r = http.get_hashed(&path, &[]).await;
    assert!(
        r.is_err(),
        "a corrupt blob must not arrive complete: {:?}",
        r.map(|h| h.digest)
    );
    assert!(!on_disk(&srv, &digest));
    let tmp = std::fs::read_dir(srv.data_dir().join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp, 0, "no temp file left");
    // The access log records the GET as failed, with the bytes actually sent, not as a
    // 200 of the whole length.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let record = loop {
        let r = http.get("/admin/access-logs?since=1h").await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let v = r.json();
        let found =
            v["requests"].as_array().into_iter().flatten().find(|x| {
                x["route"] == "blob" && x["method"] == "GET" && x["outcome"] != "aborted"
            });
        if let Some(x) = found {
            break x.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no blob GET logged: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["outcome"], "failed", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    let sent = record["bytes"].as_u64().expect("bytes sent");
    assert!(sent < 3 << 20, "the last bytes were held back: {record}");
    // Once the upstream behaves, the same blob is fetched and verified.
    fake.set(|s| s.corrupt = false);
    let r = http.get_hashed(&path, &[]).await.expect("good body");
    assert_eq!(r.digest, digest);
    assert!(stored(&srv, &digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upstream_transfer_resumes_with_range() {
    let fake = FakeUpstream::start();
    let bytes = random((5 << 20) / 2, 3);
    let digest = fake.add_blob("library/x", bytes);
    fake.set(|s| s.truncate_after = Some(1 << 20));
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let r = Http::new(&srv.host())
        .get_hashed(&format!("/v2/x/blobs/{digest}"), &[])
        .await
        .expect("the client never notices");
    assert_eq!(r.digest, digest);
    assert_eq!(fake.blob_gets(&digest), 3, "one GET and two Range resumes");
    assert!(stored(&srv, &digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_request_during_a_cold_fill_gets_the_right_bytes() {
    let fake = FakeUpstream::start();
    let bytes = random(8 << 20, 4);
    let digest = fake.add_blob("library/x", bytes.clone());
    fake.set(|s| s.pace = Some(4_000)); // ~4 MB/s: the fill takes about 2 s
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    let path = format!("/v2/x/blobs/{digest}");
    let full = tokio::spawn({
        let (http, path) = (http.clone(), path.clone());
        async move { http.get_hashed(&path, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http
        .send(
            Method::GET,
            &path,
            &[("range", "bytes=5000000-5099999")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("x-cache"), Some("coalesced"));
    assert_eq!(
        r.header("content-range"),
        Some("bytes 5000000-5099999/8388608")
    );
    assert_eq!(r.body.as_ref(), &bytes[5_000_000..5_100_000]);
    assert_eq!(full.await.expect("task").expect("full body").digest, digest);
    assert_eq!(fake.blob_gets(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_does_not_abort_the_fill() {
    let fake = FakeUpstream::start();
    let digest = fake.add_blob("library/x", random(4 << 20, 5));
    fake.set(|s| s.pace = Some(8_000));
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let mut s = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET /v2/x/blobs/{digest} HTTP/1.1\r\nHost: m\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.expect("read");
    assert!(n > 0);
    drop(s);
    for _ in 0..500 {
        if on_disk(&srv, &digest) {
            assert_eq!(fake.blob_gets(&digest), 1);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the fill was abandoned with its client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_revalidate_with_head_move_after_the_ttl_and_go_stale_on_errors() {
    let fake = FakeUpstream::start();
    let (d1, m1, _) = image(&fake, "library/app", "v1", 10);
    let srv = mirror_of(&fake.url(), Duration::from_millis(300));
    let http = Http::new(&srv.host());
    let get = || http.get("/v2/app/manifests/v1");
    let r = get().await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("miss"))
    );
    assert_eq!(r.header("docker-content-digest"), Some(d1.as_str()));
    assert_eq!(r.body.as_ref(), m1.as_slice());
    assert_eq!(r.header("content-type"), Some(OCI));
    assert_eq!(get().await.header("x-cache"), Some("hit"));

    // Past the TTL, unchanged: one HEAD upstream, no GET.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let gets = fake.hits("GET", "/v2/library/app/manifests/v1");
    let r = get().await;
    assert_eq!(r.header("x-cache"), Some("revalidated"));
    assert_eq!(fake.hits("HEAD", "/v2/library/app/manifests/v1"), 1);
    assert_eq!(fake.hits("GET", "/v2/library/app/manifests/v1"), gets);

    // The tag moves upstream: the old digest until the TTL passes, then the new one.
    let (d2, m2, _) = image(&fake, "library/app", "v1", 11);
    assert_ne!(d1, d2);
    assert_eq!(
        get().await.header("docker-content-digest"),
        Some(d1.as_str())
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = get().await;
    assert_eq!(r.header("docker-content-digest"), Some(d2.as_str()));
    assert_eq!(r.body.as_ref(), m2.as_slice());

    // The upstream fails: the stale mapping is served with a Warning.
    tokio::time::sleep(Duration::from_millis(350)).await;
    fake.set(|s| s.server_errors = 100);
    let r = get().await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("stale"))
    );
    assert!(r.header("warning").is_some_and(|w| w.starts_with("110")));
    assert_eq!(r.body.as_ref(), m2.as_slice());
    // By digest needs no upstream at all.
    let r = http.get(&format!("/v2/app/manifests/{d1}")).await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("hit"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_spec_errors_never_500() {
    let fake = FakeUpstream::start();
    image(&fake, "library/app", "v1", 20);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    let unknown = format!("sha256:{}", "0".repeat(64));
    let r = http.get(&format!("/v2/app/manifests/{unknown}")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let r = http.get(&format!("/v2/app/blobs/{unknown}")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
    let r = http.get("/v2/app/manifests/nope").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let r = http
        .get("/v2/library/app/manifests/v1?ns=evil.example.com")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    let r = http.get("/v2/library/app/manifests/v1?ns=docker.io").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("oci-namespace"), Some("docker.io"));
    let r = http
        .send(
            Method::POST,
            "/v2/docker.io/library/app/blobs/uploads/",
            &[],
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
    );
    // An upstream that keeps failing is a 502, not a 500.
    fake.set(|s| s.server_errors = 1000);
    let r = http.get("/v2/other/manifests/v1").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{:?}", r.body);
    // Tag lists pass through, and fall back to the cached tags when the upstream fails.
    fake.set(|s| s.server_errors = 0);
    let r = http.get("/v2/app/tags/list").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    fake.set(|s| s.server_errors = 1000);
    let r = http.get("/v2/app/tags/list").await;
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("stale"))
    );
    assert_eq!(r.json()["tags"][0], "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_auth_upstream_costs_one_token_per_scope() {
    let fake = FakeUpstream::start();
    fake.set(|s| s.auth = AuthMode::bearer(300));
    let (d, _, blobs) = image(&fake, "library/app", "v1", 30);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    assert_eq!(
        http.get("/v2/app/manifests/v1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        http.get(&format!("/v2/app/manifests/{d}")).await.status,
        StatusCode::OK
    );
    for b in &blobs {
        let r = http
            .get_hashed(&format!("/v2/app/blobs/{b}"), &[])
            .await
            .expect("blob");
        assert_eq!(&r.digest, b);
    }
    assert_eq!(fake.token_requests(), 1);
}

#[test]
fn the_projects_own_server_as_an_upstream() {
    if !crate::support::tools::require("skopeo") {
        return;
    }
    // The upstream: this project's server, hosting an image pushed with skopeo.
    let upstream = TestServer::start();
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let img = crate::support::image::single_image(&layout, "v1", 40, &[500_000]);
    crate::support::tools::run(
        crate::support::tools::command("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/team/app:v1", upstream.host())),
    );
    let edge = mirror_of(
        &format!("http://{}", upstream.host()),
        Duration::from_secs(60),
    );
    let out = work.path().join("out");
    crate::support::tools::run(
        crate::support::tools::command("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/team/app:v1", edge.host()))
            .arg(format!("oci:{}:v1", out.display())),
    );
    let got = crate::support::image::tagged_descriptor(&out, "v1");
    assert_eq!(got["digest"].as_str(), Some(img.manifest_digest.as_str()));
    // Stop the upstream: the edge still serves the image.
    drop(upstream);
    let out2 = work.path().join("out2");
    crate::support::tools::run(
        crate::support::tools::command("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/team/app:v1", edge.host()))
            .arg(format!("oci:{}:v1", out2.display())),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_survive_the_mirror_referrers_and_cosign_tags() {
    let upstream = TestServer::start();
    let up = Http::new(&upstream.host());
    let config = up.push_blob("team/app", b"{\"cfg\":1}").await;
    let layer = up.push_blob("team/app", &random(10_000, 50)).await;
    let m = image_manifest((&config, 9), &[(&layer, 10_000)], None);
    let r = up.put_manifest("team/app", "v1", OCI, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let subject = Digest::sha256_of(&m).to_string();
    let sig_layer = up.push_blob("team/app", b"signature").await;
    let sig = image_manifest((&config, 9), &[(&sig_layer, 9)], Some((&subject, m.len())));
    let cosign_tag = subject.replace(':', "-") + ".sig";
    let r = up.put_manifest("team/app", &cosign_tag, OCI, &sig).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let sig_digest = Digest::sha256_of(&sig).to_string();

    let edge = mirror_of(
        &format!("http://{}", upstream.host()),
        Duration::from_secs(60),
    );
    let http = Http::new(&edge.host());
    let referrers = format!("/v2/team/app/referrers/{subject}");
    let r = http.get(&referrers).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"][0]["digest"], sig_digest.as_str());
    assert_eq!(
        r.json()["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    let r = http
        .get(&format!("/v2/team/app/manifests/{cosign_tag}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), sig.as_slice());
    // Tag mappings are persisted in the background: the catalog lists the repository
    // once that write landed.
    let mut repos = serde_json::Value::Null;
    for _ in 0..200 {
        repos = http.get("/v2/_catalog").await.json()["repositories"].clone();
        if repos
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "docker.io/team/app"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        repos
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "docker.io/team/app")),
        "{repos}"
    );

    // The upstream goes away: referrers and the signature tag are still answered.
    drop(upstream);
    let r = http.get(&referrers).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"][0]["digest"], sig_digest.as_str());
    let r = http
        .get(&format!("/v2/team/app/manifests/{cosign_tag}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_plain_name_creates_a_hosted_repository_that_shadows_the_default() {
    let fake = FakeUpstream::start();
    let (upstream_digest, _, _) = image(&fake, "team/app", "v1", 60);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    // Before any push the plain name is proxied.
    let r = http.get("/v2/team/app/manifests/v1").await;
    assert_eq!(
        r.header("docker-content-digest"),
        Some(upstream_digest.as_str())
    );
    assert_eq!(r.header("x-cache"), Some("miss"));
    // Pushing to a plain name of our own makes it hosted.
    let cfg = http.push_blob("team/mine", b"{}").await;
    let m = image_manifest((&cfg, 2), &[], None);
    assert_eq!(
        http.put_manifest("team/mine", "v1", OCI, &m).await.status,
        StatusCode::CREATED
    );
    let r = http.get("/v2/team/mine/manifests/v1").await;
    assert_eq!((r.status, r.header("x-cache")), (StatusCode::OK, None));
    assert_eq!(r.body.as_ref(), m.as_slice());
    assert_eq!(fake.hits("GET", "/v2/team/mine/manifests/v1"), 0);
    // Explicitly proxied names never take pushes.
    for path in [
        "/v2/docker.io/team/mine/blobs/uploads/",
        "/v2/team/mine/blobs/uploads/?ns=docker.io",
    ] {
        let r = http.send(Method::POST, path, &[], "").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            "{path}"
        );
    }

    // With hosted_on_push = false, a push to a plain name is refused.
    let url = fake.url();
    let strict = TestServer::start_with(move |cfg| {
        cfg.upstreams.retain(|u| u.name != "docker.io");
        cfg.upstreams
            .push(agent_registry::config::UpstreamConfig::new(
                "docker.io",
                &url,
            ));
        cfg.mirror.default_upstream = Some("docker.io".into());
        cfg.mirror.hosted_on_push = false;
    });
    let r = Http::new(&strict.host())
        .send(Method::POST, "/v2/team/mine/blobs/uploads/", &[], "")
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
    );

    // The hosted name survives a restart.
    let dir = srv.stop();
    let again = TestServer::restart_on_with(dir, |cfg| {
        cfg.mirror.default_upstream = Some("docker.io".into());
    });
    let r = Http::new(&again.host())
        .get("/v2/team/mine/manifests/v1")
        .await;
    assert_eq!((r.status, r.header("x-cache")), (StatusCode::OK, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_manifests_come_from_the_memory_tier() {
    let fake = FakeUpstream::start();
    let (d, m, _) = image(&fake, "library/app", "v1", 70);
    let srv = mirror_of(&fake.url(), Duration::from_secs(60));
    let http = Http::new(&srv.host());
    assert_eq!(
        http.get("/v2/app/manifests/v1").await.status,
        StatusCode::OK
    );
    // Take the disk copy (written in the background) and the upstream away: a warm
    // hit needs neither.
    assert!(stored(&srv, &d).await, "the manifest reaches the disk");
    let digest: Digest = d.parse().expect("digest");
    std::fs::remove_file(srv.app.storage.blobs.path(&digest)).expect("remove");
    fake.set(|s| s.server_errors = 1000);
    let memory_bytes = |text: String| -> f64 {
        text.lines()
            .find(|l| l.starts_with("agent_registry_served_bytes_total{source=\"memory\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = memory_bytes(String::from_utf8_lossy(&http.get("/metrics").await.body).into());
    for path in [
        "/v2/app/manifests/v1".to_string(),
        format!("/v2/app/manifests/{d}"),
    ] {
        let r = http.get(&path).await;
        assert_eq!(
            (r.status, r.header("x-cache")),
            (StatusCode::OK, Some("hit")),
            "{path}"
        );
        assert_eq!(r.body.as_ref(), m.as_slice());
    }
    let after = memory_bytes(String::from_utf8_lossy(&http.get("/metrics").await.body).into());
    assert!(
        after - before >= 2.0 * m.len() as f64,
        "served from memory: {before} -> {after}"
    );
    let (entries, bytes) = srv.app.memory.stats();
    assert!(
        entries >= 2 && bytes > 0,
        "{entries} entries, {bytes} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_cap_paces_reads_from_an_upstream() {
    let fake = FakeUpstream::start();
    let bytes = random(4 << 20, 77);
    let digest = fake.add_blob("library/slow", bytes);
    let url = fake.url();
    let srv = TestServer::start_with(move |cfg| {
        // 1 MiB/s with one second of burst: 4 MiB take at least 3 s.
        crate::support::server::default_upstream(cfg, &url).max_bandwidth = Some(1 << 20);
    });
    let http = Http::new(&srv.host());
    let start = std::time::Instant::now();
    let got = http
        .get_hashed(&format!("/v2/slow/blobs/{digest}"), &[])
        .await
        .expect("get");
    let took = start.elapsed();
    assert_eq!(got.digest, digest);
    // A lower bound only: a slow machine cannot make this fail.
    assert!(
        took >= Duration::from_millis(2800),
        "4 MiB at 1 MiB/s took {took:?}"
    );
    // A warm read is not paced: the cap is on upstream traffic only.
    let got = http
        .get_hashed(&format!("/v2/slow/blobs/{digest}"), &[])
        .await
        .expect("warm");
    assert_eq!(got.digest, digest);
}

#[test]
fn the_projects_own_server_behind_token_auth_as_an_upstream() {
    if !crate::support::tools::require("skopeo") {
        return;
    }
    // The upstream: this project's server with users, the image in a private repository.
    let upstream = TestServer::start_with(crate::auth::configure);
    upstream
        .app
        .auth
        .set_visibility("agents/app", agent_registry::config::Visibility::Private)
        .expect("visibility");
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let img = crate::support::image::single_image(&layout, "v1", 41, &[300_000]);
    let creds = format!("writer:{}", crate::auth::PASSWORD);
    crate::support::tools::run(
        crate::support::tools::command("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/agents/app:v1", upstream.host())),
    );
    // The edge logs in to it with the writer's password (token flow, /token on the upstream).
    let url = format!("http://{}", upstream.host());
    let edge = TestServer::start_with(move |cfg| {
        let mut up = agent_registry::config::UpstreamConfig::new("parent.test", &url);
        up.username = Some("writer".into());
        up.password = Some(agent_registry::config::Secret::new(crate::auth::PASSWORD));
        cfg.upstreams.push(up);
    });
    let out = work.path().join("out");
    crate::support::tools::run(
        crate::support::tools::command("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!(
                "docker://{}/parent.test/agents/app:v1",
                edge.host()
            ))
            .arg(format!("oci:{}:v1", out.display())),
    );
    let got = crate::support::image::tagged_descriptor(&out, "v1");
    assert_eq!(got["digest"].as_str(), Some(img.manifest_digest.as_str()));
    let fetches = edge
        .app
        .mirror()
        .upstreams
        .iter()
        .find(|u| u.name() == "parent.test")
        .map(|u| u.token_fetches())
        .expect("upstream");
    assert_eq!(fetches, 1, "one token for the one scope");
}
