//! Real clients logging in to the project's server with access control on: podman
//! login, skopeo `--creds`, containerd's `ctr --user`, oras-py with basic auth. Each
//! speaks the registry token flow (401 challenge, /token, bearer token).

use crate::auth::{configure, PASSWORD};
use crate::interop::{parse, push, skopeo, temp};
use crate::support::image;
use crate::support::server::TestServer;
use crate::support::tools::{self, run};

fn creds(user: &str) -> String {
    format!("{user}:{PASSWORD}")
}

/// The digest of the manifest `reference` resolves to, read with the writer's credentials.
fn digest_as_writer(reference: &str) -> String {
    let raw = run(skopeo()
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds("writer"),
        ])
        .arg(format!("docker://{reference}")))
    .stdout;
    image::sha256_digest(&raw)
}

/// A server where agents/* is writable by `writer` and `agents/secret` is private.
fn server() -> TestServer {
    TestServer::start_with(configure)
}

fn make_private(server: &TestServer, repo: &str) {
    server
        .app
        .auth
        .set_visibility(repo, agent_registry::config::Visibility::Private)
        .expect("visibility");
}

#[test]
fn skopeo_with_creds_pushes_and_pulls_a_private_image() {
    if !tools::require("skopeo") {
        return;
    }
    let server = server();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 301, &[3000, 40_000]);
    make_private(&server, "agents/secret");
    // Anonymous push: refused.
    let anon = tools::output(
        skopeo()
            .args(["copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{host}/agents/secret:v1")),
    );
    assert!(!anon.status.success());
    let reference = format!("{host}/agents/secret:v1");
    push(&src, "v1", &reference, &["--dest-creds", &creds("writer")]);
    // Anonymous and reader pulls of the private image fail alike; the writer's works.
    for extra in [vec![], vec!["--creds".to_string(), creds("reader")]] {
        let out = tools::output(
            skopeo()
                .args(["inspect", "--raw", "--tls-verify=false"])
                .args(&extra)
                .arg(format!("docker://{reference}")),
        );
        assert!(!out.status.success(), "{extra:?} read a private image");
    }
    assert_eq!(digest_as_writer(&reference), info.manifest_digest);
    let out = work.path().join("out");
    crate::interop::pull(
        &reference,
        &format!("oci:{}:v1", out.display()),
        &["--src-creds", &creds("writer")],
    );
    let pulled = image::tagged_descriptor(&out, "v1");
    assert_eq!(pulled["digest"], info.manifest_digest.as_str());
}

#[test]
fn podman_login_then_push_and_pull() {
    if !tools::require("skopeo") || !tools::require("podman") {
        return;
    }
    let server = server();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 302, &[2048, 100_000]);
    make_private(&server, "agents/pod");
    let podman = tools::Podman::new();
    let authfile = work.path().join("auth.json");
    let authfile = authfile.to_str().expect("path");
    let bad = tools::output(podman.cmd().args([
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "writer",
        "-p",
        "wrong",
        &host,
    ]));
    assert!(!bad.status.success(), "a wrong password logged in");
    run(podman.cmd().args([
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "writer",
        "-p",
        PASSWORD,
        &host,
    ]));
    // Into podman's store from the layout, then pushed with the login.
    run(skopeo()
        .arg("copy")
        .arg(format!("oci:{}:v1", src.display()))
        .arg(podman.storage_ref("localhost/src:v1")));
    let dest = format!("{host}/agents/pod:v1");
    run(podman.cmd().args([
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "localhost/src:v1",
        &dest,
    ]));
    run(podman.cmd().args(["rmi", "-a", "-f"]));
    run(podman
        .cmd()
        .args(["pull", "--tls-verify=false", "--authfile", authfile, &dest]));
    let inspected = parse(&run(podman.cmd().args(["image", "inspect", &dest])).stdout);
    let config = image::read_json(&image::blob_path(&src, &info.blobs[0].0));
    assert_eq!(
        &inspected[0]["RootFS"]["Layers"],
        &config["rootfs"]["diff_ids"]
    );
    // Logged out, the private image is out of reach.
    run(podman.cmd().args(["logout", "--authfile", authfile, &host]));
    run(podman.cmd().args(["rmi", "-a", "-f"]));
    let anon = tools::output(podman.cmd().args([
        "pull",
        "--tls-verify=false",
        "--authfile",
        authfile,
        &dest,
    ]));
    assert!(
        !anon.status.success(),
        "anonymous podman pulled a private image"
    );
}

#[test]
fn ctr_with_user_pulls_a_private_image() {
    if !tools::require("skopeo") || !tools::require("containerd") || !tools::require("ctr") {
        return;
    }
    let server = server();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 303, &[4096, 60_000]);
    make_private(&server, "agents/ctr");
    let reference = format!("{host}/agents/ctr:v1");
    push(&src, "v1", &reference, &["--dest-creds", &creds("writer")]);
    let daemon = tools::Containerd::start();
    let anon = tools::output(
        daemon
            .ctr()
            .args(["content", "fetch", "--plain-http", &reference]),
    );
    assert!(
        !anon.status.success(),
        "ctr fetched a private image anonymously"
    );
    run(daemon.ctr().args([
        "content",
        "fetch",
        "--plain-http",
        "--user",
        &creds("writer"),
        &reference,
    ]));
    let got = run(daemon.ctr().args(["content", "get", &info.manifest_digest])).stdout;
    assert!(got == image::read_blob(&src, &info.manifest_digest));
    // ctr pushes with --user too; a reader may not.
    let dest = format!("{host}/agents/ctr-pushed:v1");
    let denied = tools::output(daemon.ctr().args([
        "images",
        "push",
        "--plain-http",
        "--user",
        &creds("reader"),
        &dest,
        &reference,
    ]));
    assert!(!denied.status.success(), "reader pushed through ctr");
    run(daemon.ctr().args([
        "images",
        "push",
        "--plain-http",
        "--user",
        &creds("writer"),
        &dest,
        &reference,
    ]));
    assert_eq!(digest_as_writer(&dest), info.manifest_digest);
}

const ORAS_BASIC: &str = r#"
import json, os, sys
import oras.client

host, work, user, password = sys.argv[1:5]
os.chdir(work)
with open("payload.txt", "w") as f:
    f.write("agent weights")
client = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
client.login(username=user, password=password, hostname=host, tls_verify=False)
client.push(target=f"{host}/agents/oras:v1", files=["payload.txt"])
files = client.pull(target=f"{host}/agents/oras:v1", outdir=os.path.join(work, "out"))
print(json.dumps({"files": files}))
"#;

#[test]
fn oras_py_with_basic_auth_pushes_and_pulls() {
    if !tools::require("oras") {
        return;
    }
    let server = server();
    let host = server.host();
    let work = temp();
    let script = work.path().join("oras_basic.py");
    std::fs::write(&script, ORAS_BASIC).expect("script");
    let out = run(tools::command("python3")
        .arg(&script)
        .arg(&host)
        .arg(work.path())
        .arg("writer")
        .arg(PASSWORD));
    let line = out
        .stdout
        .rsplit(|&b| b == b'\n')
        .find(|l| !l.is_empty())
        .expect("output");
    let v = parse(line);
    let files = v["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "{v}");
    let bytes = std::fs::read(files[0].as_str().expect("path")).expect("pulled file");
    assert_eq!(bytes, b"agent weights");
    // The reader cannot push with the same client.
    let denied = tools::output(
        tools::command("python3")
            .arg(&script)
            .arg(&host)
            .arg(work.path())
            .arg("reader")
            .arg(PASSWORD),
    );
    assert!(!denied.status.success(), "reader pushed through oras");
}
