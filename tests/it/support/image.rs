//! OCI image layouts generated in Rust for interop tests: seeded random tar.gz layers, configs, manifests and indexes, no Docker needed.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MANIFEST_V1: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_V1: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_V1: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Fixed mtime of every tar entry, so layers depend only on the seed.
const MTIME: u64 = 1_700_000_000;
/// Size of the single layer of each platform image in [`multi_arch_image`].
const SMALL_LAYER: usize = 4096;

/// What was written for one tag.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Digest of the top-level manifest (or index for a multi-arch image).
    pub manifest_digest: String,
    /// Size in bytes of the top-level manifest or index.
    pub manifest_size: u64,
    /// Every other blob as (digest, size): configs, layers and child manifests.
    pub blobs: Vec<(String, u64)>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Path of the blob `digest` inside the layout `dir`.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    dir.join("blobs").join("sha256").join(hex)
}

/// Bytes of the blob `digest` in the layout `dir`.
pub fn read_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let path = blob_path(dir, digest);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The descriptor `index.json` of layout `dir` holds for `tag`.
pub fn tagged_descriptor(dir: &Path, tag: &str) -> Value {
    let index = read_json(&dir.join("index.json"));
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"][REF_NAME] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("no {tag} in {}/index.json: {index}", dir.display()))
}

pub fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Writes an image with one layer per entry of `layers` (each a tar.gz holding one file of
/// that many seeded random bytes) into the layout `dir` under `tag`, adding to any layout
/// already there.
pub fn single_image(dir: &Path, tag: &str, seed: u64, layers: &[usize]) -> ImageInfo {
    let layout = Layout::open(dir);
    let mut blobs = Vec::new();
    let (manifest, _) = platform_image(&layout, seed, "amd64", layers, 0, &mut blobs);
    let (manifest_digest, manifest_size) = layout.write_blob(&manifest);
    layout.tag(
        tag,
        descriptor(MANIFEST_V1, &manifest_digest, manifest_size),
    );
    ImageInfo {
        manifest_digest,
        manifest_size,
        blobs,
    }
}

/// Writes an OCI image index for linux/amd64 and linux/arm64 (each its own config and one
/// small layer) into the layout `dir` under `tag`.
pub fn multi_arch_image(dir: &Path, tag: &str, seed: u64) -> ImageInfo {
    let layout = Layout::open(dir);
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    for (n, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let stream = 1000 + n as u64;
        let (manifest, platform) =
            platform_image(&layout, seed, arch, &[SMALL_LAYER], stream, &mut blobs);
        let (digest, size) = layout.write_blob(&manifest);
        blobs.push((digest.clone(), size));
        let mut desc = descriptor(MANIFEST_V1, &digest, size);
        desc["platform"] = platform;
        children.push(desc);
    }
    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_V1,
        "manifests": children,
    }));
    let (manifest_digest, manifest_size) = layout.write_blob(&index);
    layout.tag(tag, descriptor(INDEX_V1, &manifest_digest, manifest_size));
    ImageInfo {
        manifest_digest,
        manifest_size,
        blobs,
    }
}

/// Writes layers and config for one platform; returns the manifest bytes (not yet written)
/// and the platform object. Layer `i` uses RNG stream `first_stream + i`.
fn platform_image(
    layout: &Layout,
    seed: u64,
    arch: &str,
    sizes: &[usize],
    first_stream: u64,
    blobs: &mut Vec<(String, u64)>,
) -> (Vec<u8>, Value) {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_blobs = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("it-{seed}-{arch}-{i}.bin");
        let (gz, diff_id) = layer(seed, first_stream + i as u64, &name, size);
        let (digest, len) = layout.write_blob(&gz);
        layer_descs.push(descriptor(LAYER_TAR_GZIP, &digest, len));
        layer_blobs.push((digest, len));
        diff_ids.push(diff_id);
    }
    let mut platform = json!({"architecture": arch, "os": "linux"});
    if arch == "arm64" {
        platform["variant"] = json!("v8");
    }
    let mut config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {"it.agent-registry.seed": seed.to_string()},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(variant) = platform.get("variant") {
        config["variant"] = variant.clone();
    }
    let (config_digest, config_size) = layout.write_blob(&to_bytes(&config));
    blobs.push((config_digest.clone(), config_size));
    blobs.extend(layer_blobs);
    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V1,
        "config": descriptor(CONFIG_V1, &config_digest, config_size),
        "layers": layer_descs,
    }));
    (manifest, platform)
}

/// A gzip (level 1) tar holding one file `name` of `size` random bytes; returns the
/// compressed bytes and the diff_id (sha256 of the uncompressed tar).
fn layer(seed: u64, stream: u64, name: &str, size: usize) -> (Vec<u8>, String) {
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    rng_seed[8..16].copy_from_slice(&stream.to_le_bytes());
    let mut data = vec![0u8; size];
    StdRng::from_seed(rng_seed).fill_bytes(&mut data);

    let mut header = tar::Header::new_ustar();
    header.set_path(name).expect("tar path");
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(&header, data.as_slice())
        .expect("tar append");
    let tar = builder.into_inner().expect("tar finish");

    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip finish"), sha256_digest(&tar))
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize json")
}

/// An OCI image layout directory being written.
struct Layout<'a> {
    dir: &'a Path,
}

impl<'a> Layout<'a> {
    /// Creates `dir`, `blobs/sha256` and `oci-layout` as needed; keeps what is there.
    fn open(dir: &'a Path) -> Layout<'a> {
        std::fs::create_dir_all(dir.join("blobs").join("sha256")).expect("create layout dirs");
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
        }
        Layout { dir }
    }

    /// Stores `bytes` under their digest (once) and returns (digest, size).
    fn write_blob(&self, bytes: &[u8]) -> (String, u64) {
        let digest = sha256_digest(bytes);
        let path = blob_path(self.dir, &digest);
        if !path.exists() {
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        (digest, bytes.len() as u64)
    }

    /// Points `tag` at `desc` in index.json, replacing an earlier entry for the same tag.
    fn tag(&self, tag: &str, mut desc: Value) {
        let path = self.dir.join("index.json");
        let mut index = if path.exists() {
            read_json(&path)
        } else {
            json!({"schemaVersion": 2, "mediaType": INDEX_V1, "manifests": []})
        };
        desc["annotations"] = json!({ REF_NAME: tag });
        let manifests = index["manifests"]
            .as_array_mut()
            .expect("index.json manifests");
        manifests.retain(|d| d["annotations"][REF_NAME] != tag);
        manifests.push(desc);
        std::fs::write(&path, to_bytes(&index)).expect("write index.json");
    }
}

#[cfg(test)]
mod tests {
    use super::super::tools;
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("gunzip layer");
        out
    }

    /// Checks config, diff_ids and sizes of the image manifest `digest` in `dir`.
    fn check_manifest(dir: &Path, digest: &str, arch: &str, layers: usize) {
        let manifest: Value = serde_json::from_slice(&read_blob(dir, digest)).unwrap();
        assert_eq!(manifest["mediaType"], MANIFEST_V1);
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config: Value = serde_json::from_slice(&read_blob(dir, config_digest)).unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["type"], "layers");
        let descs = manifest["layers"].as_array().unwrap();
        assert_eq!(descs.len(), layers);
        for (desc, diff_id) in descs
            .iter()
            .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        {
            assert_eq!(desc["mediaType"], LAYER_TAR_GZIP);
            let gz = read_blob(dir, desc["digest"].as_str().unwrap());
            assert_eq!(desc["size"], gz.len() as u64);
            assert_eq!(diff_id.as_str().unwrap(), sha256_digest(&gunzip(&gz)));
        }
    }

    #[test]
    fn generator_is_deterministic_and_consistent() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let one = single_image(a.path(), "v1", 7, &[1000, 0, 70_000]);
        let again = single_image(b.path(), "v1", 7, &[1000, 0, 70_000]);
        let other = single_image(a.path(), "v2", 8, &[1000, 0, 70_000]);
        assert_eq!(one.manifest_digest, again.manifest_digest);
        assert_eq!(one.blobs, again.blobs);
        assert_ne!(one.manifest_digest, other.manifest_digest);
        assert!(one.blobs.iter().all(|b| !other.blobs.contains(b)));
        check_manifest(a.path(), &one.manifest_digest, "amd64", 3);
        // Layers hold incompressible random payloads.
        assert!(one.blobs[3].1 > 70_000);

        let multi = multi_arch_image(a.path(), "multi", 7);
        let index = read_json(&a.path().join("index.json"));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
        assert_eq!(
            tagged_descriptor(a.path(), "v1")["digest"],
            one.manifest_digest.as_str()
        );
        let top = tagged_descriptor(a.path(), "multi");
        assert_eq!(top["mediaType"], INDEX_V1);
        assert_eq!(top["digest"], multi.manifest_digest.as_str());
        assert_eq!(top["size"], multi.manifest_size);
        let image_index: Value =
            serde_json::from_slice(&read_blob(a.path(), &multi.manifest_digest)).unwrap();
        let children = image_index["manifests"].as_array().unwrap();
        for (child, arch) in children.iter().zip(["amd64", "arm64"]) {
            assert_eq!(child["platform"]["architecture"], arch);
            check_manifest(a.path(), child["digest"].as_str().unwrap(), arch, 1);
        }
        // Every blob is on disk with the size and digest claimed.
        for (digest, size) in one.blobs.iter().chain(&multi.blobs) {
            let bytes = read_blob(a.path(), digest);
            assert_eq!(
                (sha256_digest(&bytes), bytes.len() as u64),
                (digest.clone(), *size)
            );
        }
        // Re-tagging replaces the entry instead of adding one.
        single_image(a.path(), "v1", 9, &[10]);
        let index = read_json(&a.path().join("index.json"));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
    }

    /// The layouts are what skopeo, podman and containerd expect (no registry involved).
    #[test]
    fn real_tools_accept_generated_layouts() {
        if !tools::require("skopeo") {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let oci = |tag: &str| format!("oci:{}:{tag}", src.path().display());
        let one = single_image(src.path(), "v1", 11, &[2048, 300_000]);
        let multi = multi_arch_image(src.path(), "multi", 11);

        let inspect = tools::run(tools::command("skopeo").args(["inspect", &oci("v1")]));
        let inspect: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(inspect["Digest"], one.manifest_digest.as_str());
        assert_eq!(inspect["Architecture"], "amd64");
        let layers: Vec<&str> = one.blobs[1..].iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(inspect["Layers"], json!(layers));

        // skopeo verifies every blob digest while copying; dir: keeps the manifest as is.
        let dir = out.path().join("dir");
        let dest = format!("dir:{}", dir.display());
        tools::run(tools::command("skopeo").args(["--insecure-policy", "copy", &oci("v1"), &dest]));
        let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
        assert_eq!(sha256_digest(&manifest), one.manifest_digest);
        for (digest, _) in &one.blobs {
            let copied = std::fs::read(dir.join(digest.trim_start_matches("sha256:"))).unwrap();
            assert_eq!(copied, read_blob(src.path(), digest));
        }

        let copy = out.path().join("all");
        let dest = format!("oci:{}:multi", copy.display());
        tools::run(tools::command("skopeo").args([
            "--insecure-policy",
            "copy",
            "--all",
            &oci("multi"),
            &dest,
        ]));
        assert_eq!(
            tagged_descriptor(&copy, "multi")["digest"],
            multi.manifest_digest.as_str()
        );
        for (digest, _) in &multi.blobs {
            assert_eq!(read_blob(&copy, digest), read_blob(src.path(), digest));
        }

        if tools::require("podman") {
            // c/storage recomputes each layer's uncompressed digest while storing it and
            // podman reports the config's diff_ids. (`podman pull oci:DIR` would name the
            // image after the mixed-case tempdir path, which is not a valid name.)
            let podman = tools::Podman::new();
            let name = "localhost/it/generated:v1";
            tools::run(tools::command("skopeo").args([
                "--insecure-policy",
                "copy",
                &oci("v1"),
                &podman.storage_ref(name),
            ]));
            let inspected = tools::run(podman.cmd().args(["image", "inspect", name]));
            let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
            let config: Value =
                serde_json::from_slice(&read_blob(src.path(), &one.blobs[0].0)).unwrap();
            assert_eq!(
                inspected[0]["Id"],
                one.blobs[0].0.trim_start_matches("sha256:")
            );
            assert_eq!(
                inspected[0]["RootFS"]["Layers"],
                config["rootfs"]["diff_ids"]
            );
            assert_eq!(inspected[0]["Architecture"], "amd64");
        }

        if tools::require("containerd") && tools::require("ctr") {
            // containerd unpacks into overlayfs and fails on a diff_id mismatch.
            let archive = out.path().join("layout.tar");
            tools::run(
                tools::command("tar")
                    .arg("-C")
                    .arg(src.path())
                    .arg("-cf")
                    .arg(&archive)
                    .arg("."),
            );
            let daemon = tools::Containerd::start();
            tools::run(
                daemon
                    .ctr()
                    .args([
                        "images",
                        "import",
                        "--base-name",
                        "it.local/gen",
                        "--all-platforms",
                    ])
                    .arg(&archive),
            );
            let images = tools::run(daemon.ctr().args(["images", "ls"]));
            let images = String::from_utf8_lossy(&images.stdout);
            assert!(images.contains(&one.manifest_digest), "{images}");
            assert!(images.contains(&multi.manifest_digest), "{images}");
            tools::run(daemon.ctr().args(["images", "check"]));
            // The amd64 layers were unpacked (diff_ids verified) into committed snapshots:
            // two for v1, one for the amd64 image of multi.
            let snapshots = tools::run(daemon.ctr().args(["snapshots", "ls"]));
            let snapshots = String::from_utf8_lossy(&snapshots.stdout);
            let committed = snapshots
                .lines()
                .filter(|l| l.split_whitespace().last() == Some("Committed"))
                .count();
            assert_eq!(committed, 3, "{snapshots}\n{}", daemon.log());
        }
    }
}
