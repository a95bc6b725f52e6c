//! `agent build`: a directory becomes an OCI image without a container engine.
//!
//! The layer is reproducible: entries in sorted order, every mtime the same
//! (`SOURCE_DATE_EPOCH`, else 0), uid/gid 0 with no user or group names, the file mode
//! kept (exec bits), and gzip with no file name, no mtime and a fixed level. The same
//! directory and `agent.yaml` give the same layer, config and manifest digests.

use super::ignore::Ignore;
use super::store::{ManifestJson, Store};
use crate::oci::manifest::{Descriptor, OCI_MANIFEST};
use crate::oci::Digest;
use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The directory the build context lands in when `agent.yaml` names no `workdir`.
pub const DEFAULT_WORKDIR: &str = "/agent";
/// gzip level of built layers; part of the reproducibility contract.
const GZIP_LEVEL: u32 = 6;

/// The host platform as OCI names it (GOOS/GOARCH style: linux/amd64, linux/arm64).
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    };
    (std::env::consts::OS, arch)
}

/// A string or a list of strings in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }

    /// A command: a list is used as is (exec form), a string runs with `/bin/sh -c`.
    fn command(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `env` as a map or as a list of `KEY=VALUE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EnvSpec {
    Map(BTreeMap<String, serde_yaml_ng::Value>),
    List(Vec<String>),
}

/// The keys of `agent.yaml` that `agent build` reads (others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AgentYaml {
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub authors: Option<OneOrMany>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    pub entrypoint: Option<OneOrMany>,
    pub cmd: Option<OneOrMany>,
    pub env: Option<EnvSpec>,
    pub workdir: Option<String>,
    pub base: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl AgentYaml {
    /// Reads `DIR/agent.yaml` (or `agent.yml`); none is an empty spec.
    pub fn read(dir: &Path) -> anyhow::Result<AgentYaml> {
        for name in ["agent.yaml", "agent.yml"] {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    if text.trim().is_empty() {
                        return Ok(AgentYaml::default());
                    }
                    return serde_yaml_ng::from_str(&text)
                        .with_context(|| format!("{} is not valid", p.display()));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(anyhow!("cannot read {}: {e}", p.display())),
            }
        }
        Ok(AgentYaml::default())
    }

    fn env(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        match &self.env {
            None => {}
            Some(EnvSpec::List(l)) => {
                for e in l {
                    let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
                    out.push((k.to_string(), v.to_string()));
                }
            }
            Some(EnvSpec::Map(m)) => {
                for (k, v) in m {
                    let v = match v {
                        serde_yaml_ng::Value::String(s) => s.clone(),
                        serde_yaml_ng::Value::Number(n) => n.to_string(),
                        serde_yaml_ng::Value::Bool(b) => b.to_string(),
                        serde_yaml_ng::Value::Null => String::new(),
                        _ => bail!("agent.yaml: env {k} must be a string, number or boolean"),
                    };
                    out.push((k.clone(), v));
                }
            }
        }
        for (k, _) in &out {
            if k.is_empty() || k.contains('=') {
                bail!("agent.yaml: invalid environment variable name {k:?}");
            }
        }
        Ok(out)
    }
}

/// Finds the base image an `agent.yaml` names. The local store is the only source for now;
/// a registry-backed lookup (pull on demand) implements the same trait.
pub trait BaseResolver {
    fn resolve(&self, store: &Store, reference: &str) -> anyhow::Result<Descriptor>;
}

/// Base images come from the local store only.
pub struct LocalBase;

impl BaseResolver for LocalBase {
    fn resolve(&self, store: &Store, reference: &str) -> anyhow::Result<Descriptor> {
        store.resolve(reference).map_err(|_| {
            anyhow!(
                "base image {reference} is not in the local store: run `agent pull {reference}`"
            )
        })
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub manifest: Descriptor,
    pub config: Digest,
    pub layer: Digest,
}

/// The epoch seconds every timestamp of the build uses: `SOURCE_DATE_EPOCH`, else 0.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => s.trim().parse().map_err(|_| {
            anyhow!("SOURCE_DATE_EPOCH must be a number of seconds since 1970, not {s:?}")
        }),
        _ => Ok(0),
    }
}

/// Builds `dir` into the store and tags it `tag`.
pub fn build(
    store: &Store,
    dir: &Path,
    tag: &str,
    base: &dyn BaseResolver,
) -> anyhow::Result<Built> {
    if !dir.is_dir() {
        bail!("build context {} is not a directory", dir.display());
    }
    let spec = AgentYaml::read(dir)?;
    let epoch = source_date_epoch()?;
    let created = crate::auth::store::rfc3339(epoch);
    let workdir = spec
        .workdir
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKDIR.into());
    if !workdir.starts_with('/') {
        bail!("agent.yaml: workdir must be an absolute path, not {workdir:?}");
    }
    let _session = store.writer()?;

    // The base: its manifest and config are extended.
    let (mut config, mut layers) = match &spec.base {
        Some(b) => {
            let d = base.resolve(store, b)?;
            let (_, m) = store.platform_manifest(&d)?;
            base_parts(store, &m, b)?
        }
        None => {
            let (os, arch) = host_platform();
            (
                json!({
                    "architecture": arch,
                    "os": os,
                    "config": {},
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "history": [],
                }),
                Vec::new(),
            )
        }
    };

    let ignore = read_ignore(dir)?;
    let (layer, diff_id) = write_layer(store, dir, &workdir, &ignore, epoch)?;

    // Config.
    let c = config
        .as_object_mut()
        .ok_or_else(|| anyhow!("base image config is not a JSON object"))?;
    c.insert("created".into(), json!(created));
    let rootfs = c
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    match rootfs["diff_ids"].as_array_mut() {
        Some(ids) => ids.push(json!(diff_id.to_string())),
        None => rootfs["diff_ids"] = json!([diff_id.to_string()]),
    }
    let history = c.entry("history").or_insert_with(|| json!([]));
    if let Some(h) = history.as_array_mut() {
        h.push(json!({"created": created, "created_by": "agent build", "comment": "agent build context"}));
    }
    let cc = c.entry("config").or_insert_with(|| json!({}));
    if !cc.is_object() {
        *cc = json!({});
    }
    let mut env: Vec<String> = cc["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in spec.env()? {
        env.retain(|e| e.split_once('=').map(|(a, _)| a).unwrap_or(e) != k);
        env.push(format!("{k}={v}"));
    }
    if !env.is_empty() {
        cc["Env"] = json!(env);
    }
    if let Some(e) = &spec.entrypoint {
        cc["Entrypoint"] = json!(e.command());
        // Docker: a new entrypoint resets the base's cmd.
        if spec.cmd.is_none() {
            if let Some(o) = cc.as_object_mut() {
                o.remove("Cmd");
            }
        }
    }
    if let Some(cmd) = &spec.cmd {
        cc["Cmd"] = json!(cmd.command());
    }
    cc["WorkingDir"] = json!(workdir);
    let mut labels: BTreeMap<String, String> = cc["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    labels.extend(spec.labels.clone());
    let mut set = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            labels.insert(k.to_string(), v);
        }
    };
    set("org.opencontainers.image.title", spec.name.clone());
    set(
        "org.opencontainers.image.description",
        spec.description.clone(),
    );
    set(
        "org.opencontainers.image.authors",
        spec.authors.as_ref().map(|a| a.list().join(", ")),
    );
    set("org.opencontainers.image.version", spec.version.clone());
    set("org.opencontainers.image.created", Some(created.clone()));
    if !spec.capabilities.is_empty() {
        for cap in &spec.capabilities {
            if cap.contains(',') || cap.trim().is_empty() {
                bail!("agent.yaml: capability {cap:?} must be non-empty and have no comma");
            }
        }
        set(
            "ai.agent.capabilities",
            Some(
                spec.capabilities
                    .iter()
                    .map(|c| c.trim())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        );
    }
    cc["Labels"] = json!(labels);

    let config_bytes = serde_json::to_vec(&config)?;
    let cfg = store.put_blob(&config_bytes)?;
    layers.push(descriptor(LAYER_TAR_GZIP, &layer.digest, layer.size));
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Some(descriptor(OCI_CONFIG, &cfg.digest, cfg.size)),
        layers,
        ..Default::default()
    };
    let mbytes = serde_json::to_vec(&manifest)?;
    let m = store.put_blob(&mbytes)?;
    let desc = descriptor(OCI_MANIFEST, &m.digest, m.size);
    store.set_tag(tag, &desc)?;
    Ok(Built {
        manifest: desc,
        config: cfg.digest,
        layer: layer.digest,
    })
}

pub fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.to_string(),
        size,
        artifact_type: None,
        urls: vec![],
        annotations: None,
        platform: None,
    }
}

/// The base image's config (as JSON) and layers, with docker layer media types mapped to
/// their OCI equivalents (the bytes are the same format).
fn base_parts(
    store: &Store,
    m: &ManifestJson,
    name: &str,
) -> anyhow::Result<(Value, Vec<Descriptor>)> {
    let c = m
        .config
        .as_ref()
        .ok_or_else(|| anyhow!("base image {name} has no config"))?;
    let cd: Digest = c
        .digest
        .parse()
        .map_err(|e| anyhow!("base image {name}: {e}"))?;
    let config: Value = serde_json::from_slice(&store.read_blob(&cd)?)
        .with_context(|| format!("base image {name}: config is not JSON"))?;
    let mut layers = Vec::new();
    for l in &m.layers {
        let mut l = l.clone();
        l.media_type = match l.media_type.as_str() {
            DOCKER_LAYER_GZIP => LAYER_TAR_GZIP.into(),
            "application/vnd.docker.image.rootfs.diff.tar" => LAYER_TAR.into(),
            other => other.into(),
        };
        let d: Digest = l
            .digest
            .parse()
            .map_err(|e| anyhow!("base image {name}: {e}"))?;
        if !store.has_blob(&d) {
            bail!("base image {name}: layer {d} is missing from the local store");
        }
        layers.push(l);
    }
    Ok((config, layers))
}

fn read_ignore(dir: &Path) -> anyhow::Result<Ignore> {
    for name in [".agentignore", ".dockerignore"] {
        let p = dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(t) => return Ok(Ignore::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(anyhow!("cannot read {}: {e}", p.display())),
        }
    }
    Ok(Ignore::default())
}

/// Counts bytes and hashes what passes through (the uncompressed tar: the diff ID).
struct HashingWriter<W: Write> {
    inner: W,
    hasher: crate::oci::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One entry of the build context, relative to it.
struct Entry {
    rel: String,
    path: PathBuf,
    meta: std::fs::Metadata,
}

/// Walks `dir` in sorted order, skipping ignored paths. A directory is listed when it is
/// not excluded or when something below it is re-included.
fn walk(dir: &Path, ignore: &Ignore) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_into(dir, "", ignore, &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, rel: &str, ignore: &Ignore, out: &mut Vec<Entry>) -> anyhow::Result<()> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    names.sort();
    for name in names {
        let Some(n) = name.to_str() else {
            bail!("{}: file names must be UTF-8", dir.join(&name).display());
        };
        let r = if rel.is_empty() {
            n.to_string()
        } else {
            format!("{rel}/{n}")
        };
        let path = dir.join(n);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let excluded = ignore.excluded(&r);
        if meta.is_dir() {
            if excluded && !ignore.has_exceptions() {
                continue;
            }
            let at = out.len();
            walk_into(&path, &r, ignore, out)?;
            if !excluded || out.len() > at {
                out.insert(at, Entry { rel: r, path, meta });
            }
        } else if !excluded && (meta.is_file() || meta.file_type().is_symlink()) {
            out.push(Entry { rel: r, path, meta });
        }
    }
    Ok(())
}

/// Writes the layer of `dir` (under `workdir` in the image) into the store. Returns the
/// committed blob and the diff ID (sha256 of the uncompressed tar).
fn write_layer(
    store: &Store,
    dir: &Path,
    workdir: &str,
    ignore: &Ignore,
    mtime: u64,
) -> anyhow::Result<(super::store::Committed, Digest)> {
    use std::os::unix::fs::PermissionsExt;
    let entries = walk(dir, ignore)?;
    let blob = store.blob_writer()?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(blob, flate2::Compression::new(GZIP_LEVEL));
    let hashing = HashingWriter {
        inner: gz,
        hasher: crate::oci::Algorithm::Sha256.hasher(),
    };
    let mut tar = tar::Builder::new(hashing);
    tar.mode(tar::HeaderMode::Complete);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(size);
        h
    };
    // The workdir's own directories, then the context below it.
    let prefix = workdir.trim_matches('/');
    let mut parent = String::new();
    for seg in prefix.split('/').filter(|s| !s.is_empty()) {
        parent = if parent.is_empty() {
            seg.to_string()
        } else {
            format!("{parent}/{seg}")
        };
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{parent}/"), io::empty())?;
    }
    let in_image = |rel: &str| {
        if prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{prefix}/{rel}")
        }
    };
    for e in entries {
        let mode = e.meta.permissions().mode();
        let name = in_image(&e.rel);
        if e.meta.is_dir() {
            let mut h = header(tar::EntryType::Directory, mode, 0);
            tar.append_data(&mut h, format!("{name}/"), io::empty())?;
        } else if e.meta.file_type().is_symlink() {
            let target = std::fs::read_link(&e.path)
                .with_context(|| format!("cannot read link {}", e.path.display()))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            tar.append_link(&mut h, &name, &target)
                .with_context(|| format!("cannot add {}", e.path.display()))?;
        } else {
            let f = std::fs::File::open(&e.path)
                .with_context(|| format!("cannot read {}", e.path.display()))?;
            let len = f.metadata()?.len();
            let mut h = header(tar::EntryType::Regular, mode, len);
            // At most the size in the header, even if the file grows while it is read.
            tar.append_data(&mut h, &name, f.take(len))
                .with_context(|| format!("cannot add {}", e.path.display()))?;
        }
    }
    let hashing = tar.into_inner()?;
    let diff_id = hashing.hasher.finish();
    let blob = hashing.inner.finish()?;
    let committed = blob.commit(None)?;
    Ok((committed, diff_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_input_same_digest_and_ignores() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path();
        std::fs::write(d.join("main.py"), "print('hi')\n").unwrap();
        std::fs::create_dir(d.join("build")).unwrap();
        std::fs::write(d.join("build/out.bin"), "x").unwrap();
        std::fs::write(d.join(".agentignore"), "build\n*.log\n").unwrap();
        std::fs::write(d.join("debug.log"), "x").unwrap();
        std::fs::write(
            d.join("agent.yaml"),
            "name: demo\nversion: 1.0.0\ncapabilities: [chat, text-generation]\nenv: {MODE: prod}\nentrypoint: [python, main.py]\n",
        )
        .unwrap();
        let t1 = tempfile::tempdir().unwrap();
        let t2 = tempfile::tempdir().unwrap();
        let s1 = Store::open(t1.path()).unwrap();
        let s2 = Store::open(t2.path()).unwrap();
        let a = build(&s1, d, "demo:1", &LocalBase).unwrap();
        // Touch every file: times are not part of the image.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.join("main.py"), "print('hi')\n").unwrap();
        let b = build(&s2, d, "demo:1", &LocalBase).unwrap();
        assert_eq!(a.manifest.digest, b.manifest.digest);

        let layer = s1.read_blob(&a.layer).unwrap();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"agent/main.py".to_string()), "{names:?}");
        assert!(!names
            .iter()
            .any(|n| n.contains("build") || n.ends_with(".log")));

        let cfg: Value = serde_json::from_slice(&s1.read_blob(&a.config).unwrap()).unwrap();
        assert_eq!(
            cfg["config"]["Labels"]["ai.agent.capabilities"],
            "chat,text-generation"
        );
        assert_eq!(cfg["config"]["Env"][0], "MODE=prod");
        assert_eq!(cfg["created"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn an_exception_reopens_an_excluded_directory() {
        let src = tempfile::tempdir().unwrap();
        let d = src.path();
        std::fs::create_dir_all(d.join("data/sub")).unwrap();
        std::fs::write(d.join("data/big.bin"), "x").unwrap();
        std::fs::write(d.join("data/sub/keep.txt"), "k").unwrap();
        std::fs::create_dir_all(d.join("cache")).unwrap();
        std::fs::write(d.join("cache/x"), "x").unwrap();
        let ignore = Ignore::parse("data\ncache\n!data/sub/keep.txt\n");
        let rels: Vec<String> = walk(d, &ignore)
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(rels, ["data", "data/sub", "data/sub/keep.txt"]);
    }

    #[test]
    fn missing_base_names_the_pull() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("agent.yaml"), "base: python:3.12\n").unwrap();
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let e = build(&s, src.path(), "x:1", &LocalBase).unwrap_err();
        assert_eq!(
            e.to_string(),
            "base image python:3.12 is not in the local store: run `agent pull python:3.12`"
        );
    }
}
