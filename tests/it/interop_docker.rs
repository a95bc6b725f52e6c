//! Docker Engine (a private `dockerd`, Debian's `docker.io`) against the project's server:
//! a pull through `registry-mirrors` (plain `/v2/library/...` requests to the default
//! upstream, a real CNCF distribution), then `docker login`, `push` and `pull` against
//! the hosted registry with access control on. One daemon serves both: `daemon.json`
//! (the mirror address) is fixed when it starts.

use crate::auth::{configure, PASSWORD};
use crate::support::distribution::Distribution;
use crate::support::image;
use crate::support::server::TestServer;
use crate::support::tools::{self, run, Dockerd};
use std::time::Duration;

/// `docker image inspect --format '{{.Id}}'`: the image's config digest.
fn image_id(d: &Dockerd, reference: &str) -> String {
    let out = run(d
        .docker()
        .args(["image", "inspect", "--format", "{{.Id}}", reference]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn docker_pulls_through_registry_mirrors_and_logs_in_pushes_and_pulls_hosted() {
    if !tools::require("dockerd") || !tools::require("docker") || !tools::require("skopeo") {
        return;
    }
    let Some(dist) = Distribution::start() else {
        return;
    };
    let work = crate::interop::temp();
    let layout = work.path().join("layout");
    let info = image::single_image(&layout, "v1", 401, &[3000, 120_000]);
    let config_digest = info.blobs[0].0.clone();
    tools::run(
        tools::command("skopeo")
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/library/small:v1", dist.host())),
    );
    let url = dist.url();
    let srv = TestServer::start_with(move |cfg| {
        configure(cfg);
        let up = crate::support::server::default_upstream(cfg, &url);
        up.first_byte_timeout = Duration::from_secs(5);
    });
    let host = srv.host();
    let d = Dockerd::start(&host);

    // registry-mirrors: docker.io cannot be reached here, so a pull that succeeds was
    // served by the mirror (anonymous: mirrored content is public by default).
    run(d.docker().args(["pull", "small:v1"]));
    assert_eq!(image_id(&d, "small:v1"), config_digest, "{}", d.log());
    for (digest, _) in &info.blobs[1..] {
        assert_eq!(
            dist.hits("GET", &format!("/blobs/{digest}")),
            1,
            "upstream GETs of {digest}"
        );
    }

    // The hosted registry: anonymous pushes are refused, a logged-in writer's work.
    let dest = format!("{host}/agents/docker:v1");
    run(d.docker().args(["tag", "small:v1", &dest]));
    let anon = tools::output(d.docker().args(["push", &dest]));
    assert!(!anon.status.success(), "anonymous push accepted");
    let bad = d.login(&host, "writer", "not the password");
    assert!(!bad.status.success(), "a wrong password logged in");
    let login = d.login(&host, "writer", PASSWORD);
    assert!(
        login.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    run(d.docker().args(["push", &dest]));
    // The pushed image has the same config (so the same layers, by diff_id).
    let raw = run(tools::command("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("writer:{PASSWORD}"))
        .arg(format!("docker://{dest}")))
    .stdout;
    let manifest = crate::interop::parse(&raw);
    assert_eq!(manifest["config"]["digest"], config_digest.as_str());

    // Pull it back into a clean daemon store.
    run(d.docker().args(["rmi", &dest, "small:v1"]));
    run(d.docker().args(["pull", &dest]));
    assert_eq!(image_id(&d, &dest), config_digest);
}
