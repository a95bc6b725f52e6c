//! `agent push`, `agent pull` and `agent registry image info` as the real `agent` binary
//! against the project's server (TestServer) and, for faults, the fake upstream used
//! directly as the registry.

use crate::support::agent::{text, Home};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::Http;
use crate::support::image as img;
use crate::support::server::TestServer;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

trait Tagged {
    fn digest_of(&self, name: &str) -> String;
}

impl Tagged for Home {
    /// The manifest digest `name` is tagged with in the store.
    fn digest_of(&self, name: &str) -> String {
        img::tagged_descriptor(&self.images(), name)["digest"]
            .as_str()
            .expect("digest")
            .to_string()
    }
}

fn context(dir: &Path, extra: &str) {
    std::fs::write(dir.join("main.py"), "print('hello')\n").unwrap();
    std::fs::write(dir.join("data.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "name: pp\nversion: 1.0.0\ndescription: push pull test\ncapabilities: [chat]\n{extra}"
        ),
    )
    .unwrap();
}

/// Upload requests (POST, PATCH, PUT of blob uploads) the server logged for `repo`.
fn uploads(srv: &TestServer, repo: &str) -> Vec<(String, u16)> {
    srv.app
        .auth
        .store
        .access_log(None, 0, 100_000)
        .expect("access log")
        .into_iter()
        .filter(|r| r.route == "upload" && r.repo.as_deref() == Some(repo))
        .map(|r| (r.method.clone(), r.status))
        .collect()
}

/// Waits until the server has logged a manifest PUT for `repo` (the log is written behind).
fn wait_logged(srv: &TestServer, repo: &str, puts: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = srv
            .app
            .auth
            .store
            .access_log(None, 0, 100_000)
            .expect("access log")
            .into_iter()
            .filter(|r| {
                r.route == "manifest" && r.method == "PUT" && r.repo.as_deref() == Some(repo)
            })
            .count();
        if n >= puts {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the access log never showed {puts} manifest PUTs of {repo}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn build_push_rmi_pull_gives_the_same_digest_and_skips_and_mounts() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path(), "");
    home.ok(&["build", "-t", "agents/pp:1.0", ctx.path().to_str().unwrap()]);
    let built = home.digest_of("agents/pp:1.0");

    let v = home.json(&["push", "agents/pp:1.0", "--registry", &host, "--json"]);
    assert_eq!(v["repository"], "agents/pp");
    assert_eq!(v["tag"], "1.0");
    assert_eq!(v["digest"], built.as_str());
    assert_eq!(v["blobs_uploaded"], 2, "{v}");
    wait_logged(&srv, "agents/pp", 1);
    let first = uploads(&srv, "agents/pp");
    assert!(
        first.iter().any(|(m, s)| m == "PATCH" && *s == 202),
        "{first:?}"
    );

    // The same image again: every blob HEADed and skipped, no upload at all.
    let v = home.json(&["push", "agents/pp:1.0", "--registry", &host, "--json"]);
    assert_eq!(v["blobs_existing"], 2, "{v}");
    wait_logged(&srv, "agents/pp", 2);
    assert_eq!(
        uploads(&srv, "agents/pp"),
        first,
        "a second push uploaded again"
    );

    // Another repository on the same registry: mounted from the first, nothing uploaded.
    home.ok(&["tag", "agents/pp:1.0", "agents/other:1.0"]);
    let v = home.json(&["push", "agents/other:1.0", "--registry", &host, "--json"]);
    assert_eq!(v["blobs_mounted"], 2, "{v}");
    wait_logged(&srv, "agents/other", 1);
    let other = uploads(&srv, "agents/other");
    assert!(
        other.iter().all(|(m, s)| m == "POST" && *s == 201),
        "{other:?}"
    );

    // --all-tags: every local tag of the name.
    home.ok(&["tag", "agents/pp:1.0", "agents/pp:stable"]);
    let v = home.json(&[
        "push",
        "agents/pp",
        "--all-tags",
        "--registry",
        &host,
        "--json",
    ]);
    let mut tags: Vec<&str> = v
        .as_array()
        .expect("one result per tag")
        .iter()
        .map(|r| r["tag"].as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["1.0", "stable"]);
    home.ok(&["rmi", "agents/pp:stable"]);

    // rmi, then pull: the same manifest digest in the store.
    home.ok(&["rmi", "agents/pp:1.0", "agents/other:1.0"]);
    assert!(home.run(&["images", "-q"]).stdout.is_empty());
    let o = home.run(&["pull", "agents/pp:1.0", "--registry", &host]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    // Not a terminal: one progress line per blob (config and layer) on stderr.
    let err = text(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains(": pulled (")).count(),
        2,
        "{err}"
    );
    assert!(
        out.contains("Image ID: ") && out.contains("Size: "),
        "{out}"
    );
    assert!(out.contains(&format!("Digest: {built}")), "{out}");
    assert_eq!(home.digest_of("agents/pp:1.0"), built);

    // The pulled image is a base a build can use, and a missing base is pulled on demand.
    let home2 = Home::new();
    let ctx2 = tempfile::tempdir().unwrap();
    context(ctx2.path(), &format!("base: {host}/agents/pp:1.0\n"));
    std::fs::write(ctx2.path().join("main.py"), "print('child')\n").unwrap();
    home2.ok(&[
        "build",
        "-t",
        "agents/child:1",
        ctx2.path().to_str().unwrap(),
    ]);
    assert_eq!(home2.digest_of(&format!("{host}/agents/pp:1.0")), built);
}

#[test]
fn a_multi_platform_index_is_pushed_whole_and_pulled_by_platform() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    home.ok(&["images"]); // creates the store
    let info = img::multi_arch_image(&home.images(), "agents/multi:1", 7);
    let v = home.json(&["push", "agents/multi:1", "--registry", &host, "--json"]);
    assert_eq!(v["digest"], info.manifest_digest.as_str());
    // Children first: the index PUT found both of them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idx = rt.block_on(Http::new(&host).get("/v2/agents/multi/manifests/1"));
    assert_eq!(idx.status, 200);
    assert_eq!(img::sha256_digest(&idx.body), info.manifest_digest);

    let other = Home::new();
    let v = other.json(&[
        "pull",
        "agents/multi:1",
        "--registry",
        &host,
        "--platform",
        "linux/arm64",
        "--json",
    ]);
    assert_eq!(v["digest"], info.manifest_digest.as_str());
    let m = other.digest_of("agents/multi:1");
    let manifest: Value = serde_json::from_slice(&img::read_blob(&other.images(), &m)).unwrap();
    let config: Value = serde_json::from_slice(&img::read_blob(
        &other.images(),
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(config["architecture"], "arm64");
    let o = other.run(&[
        "pull",
        "agents/multi:1",
        "--registry",
        &host,
        "--platform",
        "linux/s390x",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("image not found in registry"),
        "{}",
        text(&o.stderr)
    );
}

/// An image in the fake upstream: a config and one layer of `size` bytes.
fn fake_image(fake: &FakeUpstream, repo: &str, tag: &str, size: usize) -> (String, String) {
    let mut layer = vec![0u8; size];
    for (i, b) in layer.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let cd = fake.add_blob(repo, config.clone());
    let ld = fake.add_blob(repo, layer.clone());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": img::MANIFEST_V1,
        "config": {"mediaType": img::CONFIG_V1, "digest": cd, "size": config.len()},
        "layers": [{"mediaType": img::LAYER_TAR_GZIP, "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    let md = fake.add_manifest(repo, tag, img::MANIFEST_V1, manifest);
    (md, ld)
}

#[test]
fn pull_honours_retry_after_survives_503s_and_resumes_a_cut_layer() {
    let fake = FakeUpstream::start();
    let (md, ld) = fake_image(&fake, "agents/flaky", "1", 600_000);
    fake.set(|s| {
        s.too_many = 1;
        s.retry_after = Some("1".into());
    });
    let home = Home::new();
    let url = fake.url();
    let t = Instant::now();
    home.ok(&["pull", "agents/flaky:1", "--registry", &url, "-q"]);
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After was not waited for"
    );
    assert_eq!(home.digest_of("agents/flaky:1"), md);
    // A single image is taken only for its own platform.
    let o = home.run(&[
        "pull",
        "agents/flaky:1",
        "--registry",
        &url,
        "--platform",
        "linux/arm64",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("is a single image for linux/amd64, not linux/arm64"),
        "{}",
        text(&o.stderr)
    );

    // 503 bursts, then every body cut after 200 kB: the layer arrives through Ranges.
    let home = Home::new();
    fake.set(|s| {
        s.server_errors = 2;
        s.truncate_after = Some(200_000);
    });
    home.ok(&["pull", "agents/flaky:1", "--registry", &url, "-q"]);
    assert_eq!(home.digest_of("agents/flaky:1"), md);
    assert!(img::blob_path(&home.images(), &ld).is_file());
    assert!(fake.blob_gets(&ld) >= 3, "{} GETs", fake.blob_gets(&ld));
}

#[test]
fn kill_during_a_pull_leaves_no_half_layer_and_the_next_pull_continues() {
    let fake = FakeUpstream::start();
    let (md, ld) = fake_image(&fake, "agents/slow", "1", 2_000_000);
    fake.set(|s| s.pace = Some(100)); // 100 bytes per ms: 20 s for the layer
    let home = Home::new();
    let url = fake.url();
    let mut child = home
        .cmd(&["pull", "agents/slow:1", "--registry", &url, "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent pull");
    let partial = home
        .images()
        .join(".tmp")
        .join(format!("sha256-{}.partial", &ld[7..]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 100_000 {
        assert!(Instant::now() < deadline, "the pull wrote no partial layer");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let had = std::fs::metadata(&partial).unwrap().len();
    assert!(
        !img::blob_path(&home.images(), &ld).exists(),
        "a half layer is in blobs/"
    );
    let idx = img::read_json(&home.images().join("index.json"));
    assert!(idx["manifests"].as_array().unwrap().is_empty(), "{idx}");

    fake.set(|s| s.pace = None);
    fake.reset_counters();
    home.ok(&["pull", "agents/slow:1", "--registry", &url, "-q"]);
    assert_eq!(home.digest_of("agents/slow:1"), md);
    assert!(img::blob_path(&home.images(), &ld).is_file());
    assert!(!partial.exists());
    assert!(had > 0);
}

#[test]
fn image_info_shows_layers_labels_and_referrers() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path(), "");
    home.ok(&["build", "-t", "agents/info:1", ctx.path().to_str().unwrap()]);
    let v = home.json(&["push", "agents/info:1", "--registry", &host, "--json"]);
    let digest = v["digest"].as_str().unwrap().to_string();
    let size = v["size_bytes"].as_u64().unwrap();

    // A signature referrer: an artifact manifest whose subject is the image.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = Http::new(&host);
    let empty = rt.block_on(http.push_blob("agents/info", b"{}"));
    let sig = rt.block_on(http.push_blob("agents/info", b"signature"));
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": img::MANIFEST_V1,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sig, "size": 9}],
        "subject": {"mediaType": img::MANIFEST_V1, "digest": digest, "size": 1},
    }))
    .unwrap();
    let ref_digest = img::sha256_digest(&referrer);
    let r = rt.block_on(http.put_manifest("agents/info", &ref_digest, img::MANIFEST_V1, &referrer));
    assert_eq!(r.status, 201);

    let v = home.json(&[
        "registry",
        "image",
        "info",
        "agents/info:1",
        "--registry",
        &host,
        "--json",
    ]);
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["media_type"], img::MANIFEST_V1);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert!(layers[0]["size"].as_u64().unwrap() < size);
    assert_eq!(
        v["labels"]["org.opencontainers.image.description"],
        "push pull test"
    );
    assert!(v["created"].is_string(), "{v}");
    let sigs = v["referrers"]["application/vnd.dev.cosign.artifact.sig.v1+json"]
        .as_array()
        .expect("the signature is listed by its artifact type");
    assert_eq!(sigs[0]["digest"], ref_digest.as_str());

    let out = home.ok(&[
        "registry",
        "image",
        "info",
        "agents/info:1",
        "--registry",
        &host,
    ]);
    assert!(out.contains(&format!("Digest:      {digest}")), "{out}");
    assert!(
        out.contains("application/vnd.dev.cosign.artifact.sig.v1+json"),
        "{out}"
    );
    let o = home.run(&[
        "registry",
        "image",
        "info",
        "agents/nope:1",
        "--registry",
        &host,
    ]);
    assert!(
        text(&o.stderr).contains("image not found in registry"),
        "{}",
        text(&o.stderr)
    );
}

/// `podman login` writes the auth file; `agent push` and `agent pull` use it, nothing else.
#[test]
fn push_and_pull_with_podman_login_credentials_and_set_visibility() {
    use crate::auth::{configure, PASSWORD};
    if !crate::support::tools::require("podman") {
        return;
    }
    let srv = TestServer::start_with(configure);
    let host = srv.host();
    let home = Home::new();
    home.ok(&["images"]);
    let info = img::single_image(&home.images(), "agents/pod:1", 41, &[5000, 70_000]);
    let login = |home: &Home, user: &str| {
        let podman = crate::support::tools::Podman::new();
        let o = crate::support::tools::output(podman.cmd().args([
            "login",
            "--tls-verify=false",
            "--authfile",
            home.dir.path().join("auth.json").to_str().unwrap(),
            "-u",
            user,
            "-p",
            PASSWORD,
            &host,
        ]));
        assert!(o.status.success(), "podman login: {}", text(&o.stderr));
    };
    // No credentials: the seed's error.
    let o = home.run(&["push", "agents/pod:1", "--registry", &host]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("authentication failed"),
        "{}",
        text(&o.stderr)
    );

    login(&home, "writer");
    let v = home.json(&["push", "agents/pod:1", "--registry", &host, "--json"]);
    assert_eq!(v["digest"], info.manifest_digest.as_str());
    let puller = Home::new();
    login(&puller, "writer");
    puller.ok(&["pull", "agents/pod:1", "--registry", &host, "-q"]);
    assert_eq!(puller.digest_of("agents/pod:1"), info.manifest_digest);

    // --visibility goes through the admin API in the same command.
    let admin = Home::new();
    admin.ok(&["images"]);
    img::single_image(&admin.images(), "agents/pod:2", 42, &[3000]);
    login(&admin, "admin");
    let out = admin.ok(&[
        "push",
        "agents/pod:2",
        "--registry",
        &host,
        "--visibility",
        "private",
    ]);
    assert!(out.contains("Visibility: private"), "{out}");
    let shown = admin.ok(&["registry", "visibility", "agents/pod", "--registry", &host]);
    assert!(shown.contains("private"), "{shown}");
    let anon = Home::new();
    let o = anon.run(&["pull", "agents/pod:1", "--registry", &host]);
    assert!(
        !o.status.success(),
        "an anonymous client pulled a private image"
    );
}

/// A TCP proxy that cuts the connection carrying the `cut_at`-th byte sent towards the
/// server (once), then forwards everything.
fn cutting_proxy(
    target: std::net::SocketAddr,
    cut_at: u64,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(client) = c else { continue };
            let Ok(server) = std::net::TcpStream::connect(target) else {
                continue;
            };
            let (mut c_r, mut s_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_r, mut c_w) = (server, client);
            let (sent, cut) = (sent.clone(), cut2.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match c_r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let before = sent.fetch_add(n as u64, Ordering::SeqCst);
                    if before < cut_at
                        && before + n as u64 >= cut_at
                        && !cut.swap(true, Ordering::SeqCst)
                    {
                        let _ = s_w.write_all(&buf[..(cut_at - before) as usize]);
                        let _ = s_w.shutdown(std::net::Shutdown::Both);
                        let _ = c_r.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    if s_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_r, &mut c_w);
                let _ = c_w.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, cut)
}

#[test]
fn a_push_cut_mid_chunk_continues_the_upload() {
    let srv = TestServer::start();
    let home = Home::new();
    home.ok(&["images"]);
    // One 20 MB layer: three chunks; the cut falls in the middle of the second.
    let info = img::single_image(&home.images(), "agents/cut:1", 43, &[20_000_000]);
    let (proxy, cut) = cutting_proxy(srv.addr, 12_000_000);
    let v = home.json(&[
        "push",
        "agents/cut:1",
        "--registry",
        &proxy.to_string(),
        "--json",
    ]);
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy never cut"
    );
    assert_eq!(v["digest"], info.manifest_digest.as_str());
    // The registry has every blob, whole: a pull from it verifies each digest.
    let other = Home::new();
    other.ok(&["pull", "agents/cut:1", "--registry", &srv.host(), "-q"]);
    assert_eq!(other.digest_of("agents/cut:1"), info.manifest_digest);
    wait_logged(&srv, "agents/cut", 1);
    let ups = uploads(&srv, "agents/cut");
    assert!(
        ups.iter().filter(|(m, _)| m == "PATCH").count() >= 3,
        "{ups:?}"
    );
}
