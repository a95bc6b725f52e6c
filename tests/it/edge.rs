//! Edge sites behind a parent mirror (`mirror.parent`): an edge node (this project)
//! whose upstream requests go to a parent node (this project) with `?ns=`, the parent
//! pulling from Debian's `docker-registry` or the fake upstream; the parent stopped with
//! `parent_fallback` on and off.

use crate::support::distribution::Distribution;
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{image_manifest, Http};
use crate::support::image;
use crate::support::random;
use crate::support::server::{default_upstream, TestServer};
use crate::support::tools;
use agent_registry::config::ParentConfig;
use agent_registry::oci::Digest;
use http::StatusCode;
use std::path::Path;
use std::time::Duration;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// A node whose `docker.io` is `origin_url`, with no default upstream: it serves a
/// mirrored repository only when the request names the upstream (`?ns=docker.io` or
/// the path prefix), so a parent answering an edge proves the edge sent `ns=`.
fn parent_of(origin_url: &str) -> TestServer {
    let url = origin_url.to_string();
    TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url).first_byte_timeout = Duration::from_secs(5);
        cfg.mirror.default_upstream = None;
    })
}

/// An edge node: `docker.io` (the default upstream) is `origin_url`, reached through
/// the parent at `parent_url`.
fn edge_of(origin_url: &str, parent_url: &str, fallback: bool) -> TestServer {
    let (url, parent) = (origin_url.to_string(), parent_url.to_string());
    TestServer::start_with(move |cfg| {
        let up = default_upstream(cfg, &url);
        up.tag_ttl = Duration::from_secs(600);
        up.first_byte_timeout = Duration::from_secs(5);
        cfg.mirror.parent = Some(ParentConfig {
            url: parent,
            username: None,
            password: None,
            ca_file: None,
            fallback,
        });
    })
}

/// Whether `digest` is committed on `srv`, waiting up to 3 s (a fill commits after its
/// readers got the verified bytes).
fn cached(srv: &TestServer, digest: &str) -> bool {
    let d: Digest = digest.parse().expect("digest");
    (0..300).any(|_| {
        let there = srv.app.storage.blobs.path(&d).exists();
        if !there {
            std::thread::sleep(Duration::from_millis(10));
        }
        there
    })
}

fn skopeo_pull(src: &str, out: &Path) -> String {
    let mut cmd = tools::command("skopeo");
    cmd.arg("copy")
        .arg("--src-tls-verify=false")
        .arg(src)
        .arg(format!("oci:{}:out", out.display()));
    tools::run(&mut cmd);
    image::tagged_descriptor(out, "out")["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// A free port nothing listens on (a parent that is down).
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

#[test]
fn an_edge_pulls_through_its_parent_from_distribution_and_keeps_serving_when_it_stops() {
    if !tools::require("skopeo") {
        return;
    }
    let Some(dist) = Distribution::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let info = image::single_image(&layout, "v1", 41, &[200_000, 30_000]);
    image::single_image(&layout, "v2", 42, &[50_000]);
    for (tag, dest) in [("v1", "library/app:v1"), ("v2", "library/app:v2")] {
        let mut cmd = tools::command("skopeo");
        cmd.arg("copy")
            .arg("--dest-tls-verify=false")
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", dist.host()));
        tools::run(&mut cmd);
    }
    let parent = parent_of(&dist.url());
    let edge = edge_of(&dist.url(), &parent.url(""), false);

    let got = skopeo_pull(
        &format!("docker://{}/app:v1", edge.host()),
        &work.path().join("o1"),
    );
    assert_eq!(got, info.manifest_digest);
    // The parent answered (it only routes `ns=docker.io` to distribution) and cached
    // every blob; distribution served each blob once, to the parent.
    for (d, _) in &info.blobs {
        assert!(cached(&edge, d), "edge cached {d}");
        assert!(cached(&parent, d), "parent cached {d}");
        assert_eq!(dist.hits("GET", &format!("/blobs/{d}")), 1, "{d}");
    }

    // The parent goes away; without fallback the edge serves what it holds...
    drop(parent);
    let before = dist.log().lines().count();
    let again = skopeo_pull(
        &format!("docker://{}/app:v1", edge.host()),
        &work.path().join("o2"),
    );
    assert_eq!(again, info.manifest_digest);
    assert_eq!(dist.log().lines().count(), before, "origin not asked");
    // ...and what it does not hold is a clean 502/503 naming the parent.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(Http::new(&edge.host()).get("/v2/app/manifests/v2"));
    assert!(
        r.status == StatusCode::BAD_GATEWAY || r.status == StatusCode::SERVICE_UNAVAILABLE,
        "{:?} {:?}",
        r.status,
        r.body
    );
    let msg = String::from_utf8_lossy(&r.body).to_string();
    assert!(msg.contains("upstream parent 127.0.0.1:"), "{msg}");
    assert_eq!(dist.log().lines().count(), before, "origin not asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_parent_fallback_a_stopped_parent_sends_requests_to_the_origin() {
    let fake = FakeUpstream::start();
    let config = fake.add_blob("library/app", b"{\"seed\":1}".to_vec());
    let layer = fake.add_blob("library/app", random(80_000, 3));
    let m = image_manifest((&config, 10), &[(&layer, 80_000)], None);
    let d = fake.add_manifest("library/app", "v1", OCI, m);

    // Through a live parent first: the origin sees only the parent's requests.
    let parent = parent_of(&fake.url());
    let edge = edge_of(&fake.url(), &parent.url(""), true);
    let http = Http::new(&edge.host());
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), Some(d.as_str()));
    let r = http.get(&format!("/v2/app/blobs/{layer}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(fake.blob_gets(&layer), 1);
    // A 404 from the parent is an answer, not an outage: no fallback to the origin.
    fake.reset_counters();
    let r = http.get("/v2/app/manifests/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The parent asked the origin once; the edge did not ask it again.
    assert_eq!(fake.hits("GET", "/v2/library/app/manifests/nope"), 1);

    // The parent stops: the next requests go to the origin directly.
    drop(parent);
    fake.reset_counters();
    let fresh = edge_of(&fake.url(), &dead_url(), true);
    let http = Http::new(&fresh.host());
    let r = http.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = http.get(&format!("/v2/app/blobs/{config}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(fake.hits("GET", "/v2/library/app/manifests/v1") >= 1);
    assert_eq!(fake.blob_gets(&config), 1);
    // The edge whose parent just went away falls back too.
    let r = Http::new(&edge.host())
        .get(&format!("/v2/app/blobs/{config}"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_gets_its_own_credentials_and_the_origin_nothing() {
    // Any registry serving the same paths can be the parent; this one wants Basic auth.
    let parent = FakeUpstream::start();
    parent.set(|s| {
        s.auth = crate::support::fake_upstream::AuthMode::Basic("edge".into(), "pw".into())
    });
    let origin = FakeUpstream::start();
    let layer = parent.add_blob("library/app", random(20_000, 9));
    let url = origin.url();
    let parent_url = parent.url();
    let edge = TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url);
        cfg.mirror.parent = Some(ParentConfig {
            url: parent_url,
            username: Some("edge".into()),
            password: Some(agent_registry::config::Secret::new("pw")),
            ca_file: None,
            fallback: false,
        });
    });
    let r = Http::new(&edge.host())
        .get(&format!("/v2/app/blobs/{layer}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(Digest::sha256_of(&r.body).to_string(), layer);
    // The 401 challenge and the retry with the credentials.
    assert_eq!(parent.blob_gets(&layer), 2);
    assert_eq!(origin.total_hits(), 0);
}
