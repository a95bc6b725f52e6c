//! Interoperability with real clients (skopeo, podman, containerd's ctr, oras-py) against the project's server.
//!
//! Each test starts its own server, generates its images with `support::image`, shells out
//! to the client, and checks digests and bytes. A missing tool skips the test, or fails it
//! under `REQUIRE_INTEROP=1`.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::image::{self, ImageInfo};
use crate::support::server::TestServer;
use crate::support::tools::{self, run};

pub(crate) fn skopeo() -> Command {
    let mut cmd = tools::command("skopeo");
    // Do not depend on the host's /etc/containers/policy.json.
    cmd.arg("--insecure-policy");
    cmd
}

/// `skopeo copy [extra] oci:LAYOUT:TAG docker://DEST`.
pub(crate) fn push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}")));
}

/// `skopeo copy [extra] docker://SRC DEST` where DEST is a transport reference (`oci:..`, `dir:..`).
pub(crate) fn pull(src: &str, dest: &str, extra: &[&str]) {
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{src}"))
        .arg(dest));
}

/// The manifest bytes exactly as the registry serves them.
fn inspect_raw(reference: &str) -> Vec<u8> {
    run(skopeo()
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")))
    .stdout
}

/// `skopeo inspect` (resolved to one platform) as JSON.
fn inspect(reference: &str, arch: &str) -> Value {
    let out = run(skopeo()
        .args(["--override-os", "linux", "--override-arch", arch])
        .args(["inspect", "--no-tags", "--tls-verify=false"])
        .arg(format!("docker://{reference}")));
    serde_json::from_slice(&out.stdout).expect("skopeo inspect json")
}

pub(crate) fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// `out` is an OCI layout holding `tag` -> the same top-level manifest as `src`, and every
/// blob of `info` is byte-identical to the generated one.
fn assert_layout_copy(src: &Path, info: &ImageInfo, out: &Path, tag: &str) {
    let desc = image::tagged_descriptor(out, tag);
    assert_eq!(desc["digest"], info.manifest_digest.as_str(), "{desc}");
    assert_eq!(desc["size"], info.manifest_size);
    let top = std::iter::once(&info.manifest_digest);
    for digest in top.chain(info.blobs.iter().map(|(d, _)| d)) {
        assert!(
            image::read_blob(out, digest) == image::read_blob(src, digest),
            "blob {digest} differs after the round trip"
        );
    }
}

/// (config, layers) digests of an image manifest.
fn manifest_digests(manifest: &Value) -> (String, Vec<String>) {
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let layers = manifest["layers"].as_array().expect("layers");
    let layers = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned());
    (config.to_owned(), layers.collect())
}

pub(crate) fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("it-interop-")
        .tempdir()
        .expect("tempdir")
}

#[test]
fn skopeo_oci_image_round_trips_byte_identical() {
    if !tools::require("skopeo") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 101, &[1024, 256 * 1024, 0]);
    let reference = format!("{host}/it/oci:v1");
    push(&src, "v1", &reference, &[]);

    let raw = inspect_raw(&reference);
    assert!(
        raw == image::read_blob(&src, &info.manifest_digest),
        "manifest bytes changed"
    );
    let by_digest = format!("{host}/it/oci@{}", info.manifest_digest);
    assert!(inspect_raw(&by_digest) == raw);
    assert_eq!(
        inspect(&reference, "amd64")["Digest"],
        info.manifest_digest.as_str()
    );

    let out = work.path().join("out");
    pull(&reference, &format!("oci:{}:v1", out.display()), &[]);
    assert_layout_copy(&src, &info, &out, "v1");
}

#[test]
fn skopeo_docker_schema2_round_trips() {
    if !tools::require("skopeo") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 102, &[4096, 100_000]);
    let reference = format!("{host}/it/docker:v1");
    push(&src, "v1", &reference, &["--format", "v2s2"]);

    let raw = inspect_raw(&reference);
    let manifest = parse(&raw);
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], image::DOCKER_MANIFEST_V2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    // Only the manifest was converted: config and layers are the generated blobs.
    let (config, layers) = manifest_digests(&manifest);
    let expected: Vec<&String> = info.blobs.iter().map(|(d, _)| d).collect();
    assert_eq!(
        std::iter::once(&config).chain(&layers).collect::<Vec<_>>(),
        expected
    );
    let digest = image::sha256_digest(&raw);
    assert_eq!(inspect(&reference, "amd64")["Digest"], digest.as_str());
    assert!(inspect_raw(&format!("{host}/it/docker@{digest}")) == raw);

    // dir: keeps the manifest as served; every blob comes back unchanged.
    let dir = work.path().join("dir");
    pull(&reference, &format!("dir:{}", dir.display()), &[]);
    assert!(std::fs::read(dir.join("manifest.json")).unwrap() == raw);
    for (blob, _) in &info.blobs {
        let copied = std::fs::read(dir.join(blob.trim_start_matches("sha256:"))).unwrap();
        assert!(
            copied == image::read_blob(&src, blob),
            "blob {blob} differs"
        );
    }

    // Back into an OCI layout: skopeo converts the manifest and re-serializes the config
    // (so its digest changes); the layers and the diff_ids are unchanged.
    let out = work.path().join("oci");
    pull(&reference, &format!("oci:{}:v1", out.display()), &[]);
    let desc = image::tagged_descriptor(&out, "v1");
    let pulled = parse(&image::read_blob(&out, desc["digest"].as_str().unwrap()));
    assert_eq!(pulled["mediaType"], image::MANIFEST_V1);
    let (pulled_config, pulled_layers) = manifest_digests(&pulled);
    assert_eq!(pulled_layers, layers);
    for blob in &layers {
        assert!(image::read_blob(&out, blob) == image::read_blob(&src, blob));
    }
    let original = image::read_json(&image::blob_path(&src, &config));
    let converted = image::read_json(&image::blob_path(&out, &pulled_config));
    assert_eq!(converted["rootfs"], original["rootfs"]);
    assert_eq!(converted["architecture"], "amd64");
}

#[test]
fn skopeo_multi_arch_index_round_trips() {
    if !tools::require("skopeo") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::multi_arch_image(&src, "multi", 103);
    let reference = format!("{host}/it/multi:v1");
    push(&src, "multi", &reference, &["--all"]);

    let raw = inspect_raw(&reference);
    assert_eq!(image::sha256_digest(&raw), info.manifest_digest);
    assert!(raw == image::read_blob(&src, &info.manifest_digest));
    let index = parse(&raw);
    assert_eq!(index["mediaType"], image::INDEX_V1);

    // Each platform resolves through the index to its own manifest.
    for child in index["manifests"].as_array().unwrap() {
        let arch = child["platform"]["architecture"].as_str().unwrap();
        let child_digest = child["digest"].as_str().unwrap();
        let child_manifest = parse(&image::read_blob(&src, child_digest));
        let (_, layers) = manifest_digests(&child_manifest);
        let inspected = inspect(&reference, arch);
        assert_eq!(inspected["Architecture"], arch);
        assert_eq!(inspected["Layers"], json!(layers));
        let by_digest = format!("{host}/it/multi@{child_digest}");
        assert!(inspect_raw(&by_digest) == image::read_blob(&src, child_digest));
    }

    let out = work.path().join("out");
    pull(
        &reference,
        &format!("oci:{}:multi", out.display()),
        &["--all"],
    );
    assert_layout_copy(&src, &info, &out, "multi");
}

#[test]
fn skopeo_list_tags_lists_every_pushed_tag() {
    if !tools::require("skopeo") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let one = image::single_image(&src, "v1", 104, &[512]);
    let two = image::single_image(&src, "v2", 105, &[512]);
    push(&src, "v1", &format!("{host}/it/tags:v1"), &[]);
    push(&src, "v2", &format!("{host}/it/tags:v2"), &[]);
    push(&src, "v1", &format!("{host}/it/tags:latest"), &[]);

    let out = run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{host}/it/tags")));
    let listed = parse(&out.stdout);
    let mut tags: Vec<&str> = listed["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["latest", "v1", "v2"]);
    assert_eq!(
        image::sha256_digest(&inspect_raw(&format!("{host}/it/tags:latest"))),
        one.manifest_digest
    );
    assert_eq!(
        image::sha256_digest(&inspect_raw(&format!("{host}/it/tags:v2"))),
        two.manifest_digest
    );
}

#[test]
fn skopeo_delete_by_digest_removes_the_manifest() {
    if !tools::require("skopeo") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let gone = image::single_image(&src, "v1", 106, &[512]);
    let kept = image::single_image(&src, "v2", 107, &[512]);
    push(&src, "v1", &format!("{host}/it/del:v1"), &[]);
    push(&src, "v2", &format!("{host}/it/del:v2"), &[]);

    let by_digest = format!("{host}/it/del@{}", gone.manifest_digest);
    run(skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{by_digest}")));

    for reference in [by_digest, format!("{host}/it/del:v1")] {
        let out = tools::output(
            skopeo()
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{reference}")),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            !out.status.success(),
            "{reference} still resolves after delete"
        );
        assert!(stderr.contains("manifest unknown"), "{reference}: {stderr}");
    }
    let raw = inspect_raw(&format!("{host}/it/del:v2"));
    assert_eq!(image::sha256_digest(&raw), kept.manifest_digest);
}

/// An air-gapped site: the default upstream does not answer (a closed port). A push to a
/// new plain name, whose blob existence checks go to that upstream, still succeeds and
/// pulls back byte for byte; proxied reads of other plain names still fail with 502.
#[test]
fn skopeo_pushes_a_new_plain_name_with_no_upstream_reachable() {
    if !tools::require("skopeo") {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let server = TestServer::start_with(|cfg| {
        let up = crate::support::server::default_upstream(cfg, &dead);
        up.connect_timeout = std::time::Duration::from_secs(1);
    });
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 111, &[4096, 120_000]);
    let reference = format!("{host}/airgap/app:v1");
    push(&src, "v1", &reference, &[]);

    let out = work.path().join("out");
    pull(&reference, &format!("oci:{}:v1", out.display()), &[]);
    assert_layout_copy(&src, &info, &out, "v1");
    // Names with nothing hosted still go to the (unreachable) upstream: 502, or 503 with
    // Retry-After now that the failed checks marked it down.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let http = crate::support::http::Http::new(&host);
    let r = rt.block_on(http.get("/v2/other/app/manifests/v1"));
    assert!(matches!(r.status.as_u16(), 502 | 503), "{:?}", r.body);
    let blob = image::sha256_digest(b"in no registry");
    let r = rt.block_on(http.get(&format!("/v2/other/app/blobs/{blob}")));
    assert!(matches!(r.status.as_u16(), 502 | 503), "{:?}", r.body);
    let r = rt.block_on(http.head(&format!("/v2/other/app/blobs/{blob}")));
    assert_eq!(r.status, 404);
}

#[test]
fn podman_pulls_and_pushes_to_another_repository() {
    if !tools::require("skopeo") || !tools::require("podman") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 108, &[2048, 200_000]);
    let source = format!("{host}/it/src:v1");
    push(&src, "v1", &source, &[]);
    let config = image::read_json(&image::blob_path(&src, &info.blobs[0].0));
    let diff_ids = &config["rootfs"]["diff_ids"];

    let podman = tools::Podman::new();
    run(podman.cmd().args(["pull", "--tls-verify=false", &source]));
    let inspected = run(podman.cmd().args(["image", "inspect", &source]));
    let inspected = parse(&inspected.stdout);
    assert_eq!(inspected[0]["Digest"], info.manifest_digest.as_str());
    assert_eq!(&inspected[0]["RootFS"]["Layers"], diff_ids);

    let dest = format!("{host}/it/podman:v1");
    run(podman
        .cmd()
        .args(["push", "--tls-verify=false", &source, &dest]));

    // podman stores layers uncompressed and may recompress them on push: compare the
    // uncompressed contents, which the config's diff_ids pin down.
    let manifest = parse(&inspect_raw(&dest));
    let (config_digest, layers) = manifest_digests(&manifest);
    assert_eq!(layers.len(), 2);
    let dir = work.path().join("pushed");
    pull(&dest, &format!("dir:{}", dir.display()), &[]);
    let pushed_config = image::read_json(&dir.join(config_digest.trim_start_matches("sha256:")));
    assert_eq!(&pushed_config["rootfs"]["diff_ids"], diff_ids);
    for (layer, diff_id) in layers.iter().zip(diff_ids.as_array().unwrap()) {
        let bytes = std::fs::read(dir.join(layer.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(&image::sha256_digest(&bytes), layer);
        assert_eq!(
            image::sha256_digest(&gunzip(&bytes)),
            diff_id.as_str().unwrap()
        );
    }
    let by_digest = format!(
        "{host}/it/podman@{}",
        image::sha256_digest(&inspect_raw(&dest))
    );
    assert_eq!(inspect(&by_digest, "amd64")["Layers"], json!(layers));
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip layer");
    out
}

#[test]
fn containerd_pulls_and_pushes_to_another_repository() {
    if !tools::require("skopeo") || !tools::require("containerd") || !tools::require("ctr") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let src = work.path().join("src");
    let info = image::single_image(&src, "v1", 109, &[4096, 150_000]);
    let multi = image::multi_arch_image(&src, "multi", 110);
    let reference = format!("{host}/it/ctr:v1");
    push(&src, "v1", &reference, &[]);
    push(&src, "multi", &format!("{host}/it/ctr:multi"), &["--all"]);

    let daemon = tools::Containerd::start();
    let ctr_get = |digest: &str| run(daemon.ctr().args(["content", "get", digest])).stdout;

    // Pull + unpack into containerd's overlayfs snapshotter.
    let pulled = tools::output(daemon.ctr().args([
        "images",
        "pull",
        "--plain-http",
        "--platform",
        "linux/amd64",
        &reference,
    ]));
    if !pulled.status.success() {
        eprintln!(
            "ctr images pull (with unpack) failed, falling back to content fetch:\n{}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        run(daemon
            .ctr()
            .args(["content", "fetch", "--plain-http", &reference]));
    }
    let images = run(daemon.ctr().args(["images", "ls"]));
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(images.contains(&info.manifest_digest), "{images}");
    let top = std::iter::once(&info.manifest_digest);
    for digest in top.chain(info.blobs.iter().map(|(d, _)| d)) {
        assert!(
            ctr_get(digest) == image::read_blob(&src, digest),
            "{digest} differs in containerd"
        );
    }

    let dest = format!("{host}/it/ctr-pushed:v1");
    run(daemon
        .ctr()
        .args(["images", "push", "--plain-http", &dest, &reference]));
    assert_eq!(
        image::sha256_digest(&inspect_raw(&dest)),
        info.manifest_digest
    );
    let dir = work.path().join("pushed");
    pull(&dest, &format!("dir:{}", dir.display()), &[]);
    for (digest, _) in &info.blobs {
        let copied = std::fs::read(dir.join(digest.trim_start_matches("sha256:"))).unwrap();
        assert!(
            copied == image::read_blob(&src, digest),
            "{digest} differs after ctr push"
        );
    }

    // A multi-arch index: every platform's content arrives unchanged.
    run(daemon.ctr().args([
        "content",
        "fetch",
        "--plain-http",
        "--all-platforms",
        &format!("{host}/it/ctr:multi"),
    ]));
    let top = std::iter::once(&multi.manifest_digest);
    for digest in top.chain(multi.blobs.iter().map(|(d, _)| d)) {
        assert!(
            ctr_get(digest) == image::read_blob(&src, digest),
            "{digest} differs in containerd"
        );
    }
}

/// Pushes `payload.bin` as an artifact, then two referrers of it (one through oras-py's
/// `push(subject=..)`, whose artifactType comes from its config media type, one built by
/// hand with an explicit `artifactType`), pulls the first back and queries the referrers API.
/// Prints one JSON object.
const ORAS_SCRIPT: &str = r#"
import hashlib, json, os, sys, urllib.error, urllib.request
import oras.client, oras.container, oras.oci

host, work = sys.argv[1], sys.argv[2]
os.chdir(work)
repo = f"{host}/it/art"
client = oras.client.OrasClient(hostname=host, insecure=True)

def manifest(ref):
    req = urllib.request.Request(f"http://{host}/v2/it/art/manifests/{ref}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req) as resp:
        raw = resp.read()
    return {"digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw),
            "mediaType": json.loads(raw)["mediaType"]}

def get(path):
    try:
        with urllib.request.urlopen(f"http://{host}{path}") as resp:
            return {"status": resp.status, "content_type": resp.headers.get("Content-Type"),
                    "filters": resp.headers.get("OCI-Filters-Applied"),
                    "body": resp.read().decode()}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "content_type": err.headers.get("Content-Type"),
                "filters": None, "body": err.read().decode()}

client.push(target=f"{repo}:v1", files=["payload.bin"])
first = manifest("v1")
subject = oras.oci.Subject(mediaType=first["mediaType"], digest=first["digest"], size=first["size"])

with open("signature.json", "w") as f:
    json.dump({"signed": first["digest"]}, f)
with open("sig-config.json", "w") as f:
    json.dump({"kind": "signature"}, f)
client.push(target=f"{repo}:sig", files=["signature.json"], subject=subject,
            manifest_config="sig-config.json:application/vnd.it.signature.config.v1+json")
signature = manifest("sig")

container = oras.container.Container(f"{repo}:sbom")
with open("empty.json", "w") as f:
    f.write("{}")
with open("sbom.json", "w") as f:
    json.dump({"packages": []}, f)
empty = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
         "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()}
sbom_layer = oras.oci.NewLayer("sbom.json", media_type="application/vnd.it.sbom.v1+json")
for path, desc in (("empty.json", empty), ("sbom.json", sbom_layer)):
    resp = client.upload_blob(path, container, desc)
    assert resp.status_code in (200, 201, 202), resp.text
sbom_manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "artifactType": "application/vnd.it.sbom.v1+json",
    "config": empty,
    "layers": [sbom_layer],
    "subject": {"mediaType": first["mediaType"], "digest": first["digest"], "size": first["size"]},
    "annotations": {"it.agent-registry.kind": "sbom"},
}
resp = client.upload_manifest(sbom_manifest, container)
assert resp.status_code == 201, (resp.status_code, resp.text)
oci_subject = resp.headers.get("OCI-Subject")
sbom = manifest("sbom")

pulled = client.pull(target=f"{repo}:v1", outdir=os.path.join(work, "pulled"))

print(json.dumps({
    "first": first, "signature": signature, "sbom": sbom, "pulled": pulled, "oci_subject": oci_subject,
    "referrers": get(f"/v2/it/art/referrers/{first['digest']}"),
    "filtered": get(f"/v2/it/art/referrers/{first['digest']}?artifactType=application/vnd.it.sbom.v1%2Bjson"),
    "none": get(f"/v2/it/art/referrers/{signature['digest']}"),
}))
"#;

#[test]
fn oras_artifact_referrers_and_pull() {
    if !tools::require("oras") {
        return;
    }
    let server = TestServer::start();
    let host = server.host();
    let work = temp();
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(work.path().join("payload.bin"), &payload).unwrap();
    let script = work.path().join("oras_flow.py");
    std::fs::write(&script, ORAS_SCRIPT).unwrap();

    let out = run(tools::command("python3")
        .arg(&script)
        .arg(&host)
        .arg(work.path()));
    let result = parse(
        out.stdout
            .rsplit(|&b| b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    );

    // oras pull returns the pushed bytes.
    let pulled = result["pulled"].as_array().expect("pulled files");
    assert_eq!(pulled.len(), 1, "{result}");
    assert!(std::fs::read(pulled[0].as_str().unwrap()).unwrap() == payload);

    // The referrers API lists both referrers with their artifactType.
    let first = &result["first"];
    let referrers = &result["referrers"];
    assert_eq!(
        referrers["status"], 200,
        "referrers of {first}: {referrers}"
    );
    assert_eq!(referrers["content_type"], image::INDEX_V1);
    let index = parse(referrers["body"].as_str().unwrap().as_bytes());
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], image::INDEX_V1);
    let listed = index["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 2, "{index}");
    let find = |digest: &Value| {
        listed
            .iter()
            .find(|d| &d["digest"] == digest)
            .unwrap_or_else(|| panic!("{digest} not among referrers: {index}"))
    };
    let signature = find(&result["signature"]["digest"]);
    assert_eq!(signature["mediaType"], image::MANIFEST_V1);
    assert_eq!(signature["size"], result["signature"]["size"]);
    // No artifactType in the manifest: the config media type stands in.
    assert_eq!(
        signature["artifactType"],
        "application/vnd.it.signature.config.v1+json"
    );
    let sbom = find(&result["sbom"]["digest"]);
    assert_eq!(sbom["artifactType"], "application/vnd.it.sbom.v1+json");
    assert_eq!(sbom["size"], result["sbom"]["size"]);
    assert_eq!(sbom["annotations"]["it.agent-registry.kind"], "sbom");

    // A registry with the referrers API names the subject when a referrer is pushed.
    assert_eq!(result["oci_subject"], first["digest"]);

    // Filtering by artifactType is optional; when applied it must say so and be right.
    let filtered = &result["filtered"];
    assert_eq!(filtered["status"], 200, "{filtered}");
    if filtered["filters"]
        .as_str()
        .is_some_and(|f| f.contains("artifactType"))
    {
        let index = parse(filtered["body"].as_str().unwrap().as_bytes());
        let digests: Vec<&Value> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| &d["digest"])
            .collect();
        assert_eq!(digests, [&result["sbom"]["digest"]]);
    }

    // A manifest nobody refers to has an empty list, not a 404.
    let none = &result["none"];
    assert_eq!(none["status"], 200, "{none}");
    let index = parse(none["body"].as_str().unwrap().as_bytes());
    assert_eq!(index["manifests"], json!([]));
}
