//! The pull-through mirror against a real upstream (Debian's docker-registry, CNCF
//! distribution) with real clients: skopeo (direct, path prefix, registries.conf mirror),
//! podman (registries.conf mirror) and containerd (`hosts.toml`, which sends `?ns=`, also
//! with `override_path = true` and the path prefix).

use crate::support::distribution::Distribution;
use crate::support::http::Http;
use crate::support::image::{self, ImageInfo};
use crate::support::server::TestServer;
use crate::support::tools::{self, Containerd, Podman};
use std::path::Path;
use std::time::Duration;

/// A mirror whose `docker.io` (the default upstream) is `dist`.
pub fn mirror_of(upstream_url: &str, tag_ttl: Duration) -> TestServer {
    let url = upstream_url.to_string();
    TestServer::start_with(move |cfg| {
        let up = crate::support::server::default_upstream(cfg, &url);
        up.tag_ttl = tag_ttl;
        up.first_byte_timeout = Duration::from_secs(5);
    })
}

/// Pushes an OCI layout's tag to the upstream with skopeo.
fn seed(dist: &Distribution, layout: &Path, tag: &str, dest: &str, all: bool) {
    let mut cmd = tools::command("skopeo");
    cmd.arg("copy").arg("--dest-tls-verify=false");
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{dest}", dist.host()));
    tools::run(&mut cmd);
}

fn skopeo_pull(src: &str, out: &Path, all: bool, registries_conf: Option<&Path>) -> String {
    let mut cmd = tools::command("skopeo");
    if let Some(f) = registries_conf {
        cmd.arg("--registries-conf").arg(f);
    }
    cmd.arg("copy").arg("--src-tls-verify=false");
    if all {
        cmd.arg("--all");
    }
    cmd.arg(src).arg(format!("oci:{}:out", out.display()));
    tools::run(&mut cmd);
    image::tagged_descriptor(out, "out")["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

fn registries_conf(dir: &Path, mirror: &str) -> std::path::PathBuf {
    let f = dir.join("registries.conf");
    std::fs::write(
        &f,
        format!(
            "unqualified-search-registries = []\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
        ),
    )
    .expect("registries.conf");
    f
}

fn layer_digests(info: &ImageInfo) -> Vec<String> {
    info.blobs.iter().map(|(d, _)| d.clone()).collect()
}

#[test]
fn skopeo_pulls_through_the_mirror_once_and_survives_the_upstream_going_down() {
    if !tools::require("skopeo") {
        return;
    }
    let Some(mut dist) = Distribution::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let app = image::single_image(&layout, "v1", 11, &[300_000, 40_000]);
    let multi = image::multi_arch_image(&layout, "multi", 12);
    seed(&dist, &layout, "v1", "library/app:v1", false);
    seed(&dist, &layout, "multi", "team/multi:v2", true);

    let srv = mirror_of(&dist.url(), Duration::from_millis(500));
    let m = srv.host();
    // Docker's registry-mirrors form: a plain name, `library/` added.
    let d = skopeo_pull(
        &format!("docker://{m}/app:v1"),
        &work.path().join("o1"),
        false,
        None,
    );
    assert_eq!(d, app.manifest_digest);
    for (digest, _) in &app.blobs {
        assert_eq!(
            image::read_blob(&work.path().join("o1"), digest),
            image::read_blob(&layout, digest),
            "blob {digest} byte for byte"
        );
    }
    // The path-prefix form, and a multi-arch index byte for byte.
    let d = skopeo_pull(
        &format!("docker://{m}/docker.io/team/multi:v2"),
        &work.path().join("o2"),
        true,
        None,
    );
    assert_eq!(d, multi.manifest_digest);
    // registries.conf mirror: docker.io is unreachable here, so success proves the mirror served it.
    let conf = registries_conf(work.path(), &m);
    let d = skopeo_pull(
        "docker://docker.io/library/app:v1",
        &work.path().join("o3"),
        false,
        Some(&conf),
    );
    assert_eq!(d, app.manifest_digest);
    // Three pulls, one upstream fetch per blob.
    for digest in layer_digests(&app) {
        assert_eq!(
            dist.hits("GET", &format!("/blobs/{digest}")),
            1,
            "upstream GETs of {digest}"
        );
    }

    // Upstream down: past the tag TTL, tags are served stale, digests from the cache.
    dist.stop();
    std::thread::sleep(Duration::from_millis(700));
    let d = skopeo_pull(
        &format!("docker://{m}/app:v1"),
        &work.path().join("o4"),
        false,
        None,
    );
    assert_eq!(d, app.manifest_digest);
    let d = skopeo_pull(
        &format!("docker://{m}/app@{}", app.manifest_digest),
        &work.path().join("o5"),
        false,
        None,
    );
    assert_eq!(d, app.manifest_digest);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = rt.block_on(Http::new(&m).get("/v2/library/app/manifests/v1"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), Some("stale"));
    assert!(
        r.header("warning").is_some_and(|w| w.starts_with("110")),
        "{:?}",
        r.headers
    );
    // A child manifest of the index that was only reached through the index is served too.
    let child = image::read_json(&image::blob_path(&layout, &multi.manifest_digest))["manifests"]
        [0]["digest"]
        .as_str()
        .expect("child")
        .to_string();
    let r = rt.block_on(Http::new(&m).get(&format!("/v2/docker.io/team/multi/manifests/{child}")));
    assert_eq!(r.status, 200);
}

#[test]
fn podman_and_containerd_pull_through_their_mirror_configs() {
    if !tools::require("podman") || !tools::require("containerd") {
        return;
    }
    let Some(dist) = Distribution::start() else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    let app = image::single_image(&layout, "v1", 21, &[200_000]);
    seed(&dist, &layout, "v1", "library/agent:v1", false);
    let srv = mirror_of(&dist.url(), Duration::from_secs(60));

    let podman = Podman::new();
    let conf = registries_conf(work.path(), &srv.host());
    tools::run(
        podman
            .cmd()
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(["pull", "docker.io/library/agent:v1"]),
    );

    // containerd resolves through hosts.toml with ?ns=docker.io.
    let certs = work.path().join("certs.d").join("docker.io");
    std::fs::create_dir_all(&certs).expect("certs.d");
    std::fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            srv.host()
        ),
    )
    .expect("hosts.toml");
    let c = Containerd::start();
    tools::run(
        c.ctr()
            .args(["images", "pull", "--hosts-dir"])
            .arg(work.path().join("certs.d"))
            .arg("docker.io/library/agent:v1"),
    );
    let out = tools::run(c.ctr().args(["images", "ls", "-q"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("docker.io/library/agent:v1"));

    // The README's `override_path = true` form: containerd sends the path prefix and
    // `?ns=docker.io` together (`/v2/docker.io/library/other/...?ns=docker.io`).
    let other = image::single_image(&layout, "other", 22, &[50_000]);
    seed(&dist, &layout, "other", "library/other:v1", false);
    let certs = work.path().join("override.d").join("docker.io");
    std::fs::create_dir_all(&certs).expect("certs.d");
    std::fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{}/v2/docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n",
            srv.host()
        ),
    )
    .expect("hosts.toml");
    tools::run(
        c.ctr()
            .args(["images", "pull", "--hosts-dir"])
            .arg(work.path().join("override.d"))
            .arg("docker.io/library/other:v1"),
    );
    let out = tools::run(c.ctr().args(["images", "ls"]));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("docker.io/library/other:v1") && listed.contains(&other.manifest_digest),
        "{listed}"
    );
    // Both clients' layer fetches were served from one upstream fetch.
    for digest in layer_digests(&app) {
        assert_eq!(
            dist.hits("GET", &format!("/blobs/{digest}")),
            1,
            "upstream GETs of {digest}"
        );
    }
}
