//! The local image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`)
//! that skopeo, oras and crane read and write as `oci:DIR:REF`.
//!
//! A tag is an `index.json` entry whose annotation `org.opencontainers.image.ref.name` holds
//! the reference as given (`my-agent:1.0`, `localhost:5000/agents/x:v1`), which is what
//! `skopeo copy ... oci:DIR:REF` writes. An entry without that annotation is an untagged
//! manifest (docker's dangling image).
//!
//! Writes: a blob is streamed into a temp file in the layout's `.tmp/`, hashed, checked
//! against the expected digest, fsynced and renamed into `blobs/`, so `blobs/` never holds a
//! partial or wrong object. `index.json` is replaced the same way (temp, fsync, rename) while
//! holding an exclusive `flock` on `.index.lock`, so concurrent `agent` processes serialize
//! their read-modify-write and never lose an update. Blob garbage collection holds `.gc.lock`
//! exclusively; every writer holds it shared from its first blob to its index update
//! ([`Store::writer`]), so a collection never removes a blob a running load or build wrote
//! but has not tagged yet.

use crate::oci::manifest::{is_index, Descriptor};
use crate::oci::{Digest, Hasher};
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The annotation holding a tag's reference in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The full image name containerd and docker (25+) write next to `REF_NAME`.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// `index.json` of the layout. Unknown fields are kept as they were.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(crate::oci::manifest::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }
}

/// The reference a descriptor of `index.json` is tagged with, if any.
pub fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

/// The store root: `$AAC_HOME/images`, else `~/.aac/images`.
pub fn default_root() -> anyhow::Result<PathBuf> {
    Ok(aac_home()?.join("images"))
}

/// `$AAC_HOME`, else `$HOME/.aac`.
pub fn aac_home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("AAC_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".aac")),
        None => bail!("cannot find the local image store: neither AAC_HOME nor HOME is set"),
    }
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held `flock`; released when dropped (the file closes).
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

fn lock(path: &Path, exclusive: bool) -> anyhow::Result<Lock> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    let op = if exclusive {
        rustix::fs::FlockOperation::LockExclusive
    } else {
        rustix::fs::FlockOperation::LockShared
    };
    loop {
        match rustix::fs::flock(&f, op) {
            Ok(()) => return Ok(Lock(f)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(anyhow!("cannot lock {}: {e}", path.display())),
        }
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a temp file in `tmp`, fsync, rename, fsync of the dir.
fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let (mut f, tmp_path) = temp_file(tmp)?;
    let r = (|| -> io::Result<()> {
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp_path, path)?;
        if let Some(parent) = path.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    r.with_context(|| format!("cannot write {}", path.display()))
}

fn temp_file(tmp: &Path) -> anyhow::Result<(File, PathBuf)> {
    for _ in 0..16 {
        let p = tmp.join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        match std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(anyhow!(
                    "cannot create a temp file in {}: {e}",
                    tmp.display()
                ))
            }
        }
    }
    bail!("cannot create a temp file in {}", tmp.display())
}

/// A blob being written: bytes go to a temp file and a hasher; [`BlobWriter::commit`] moves
/// it into `blobs/` once its digest is known (and matches the expected one).
pub struct BlobWriter {
    file: Option<File>,
    path: PathBuf,
    hasher: Hasher,
    size: u64,
    root: PathBuf,
    /// A resumable download's partial file outlives a dropped writer.
    keep_on_drop: bool,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub digest: Digest,
    pub size: u64,
    /// False when the store already had the blob (the temp file was dropped).
    pub created: bool,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer is closed"))?;
        let n = f.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Verifies the digest against `expected` (if given), fsyncs and renames the temp file
    /// into `blobs/`. On a mismatch nothing enters the store.
    pub fn commit(mut self, expected: Option<&Digest>) -> anyhow::Result<Committed> {
        let file = self
            .file
            .take()
            .ok_or_else(|| anyhow!("blob writer is closed"))?;
        let hasher = std::mem::replace(&mut self.hasher, crate::oci::Algorithm::Sha256.hasher());
        let actual = match expected {
            Some(e) if e.algorithm() != crate::oci::Algorithm::Sha256 && !self.keep_on_drop => {
                // Re-hash with the expected algorithm (sha512 blobs are rare).
                let mut h = e.algorithm().hasher();
                let mut f = File::open(&self.path)?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                h.finish()
            }
            _ => hasher.finish(),
        };
        if let Some(e) = expected {
            if *e != actual {
                // A wrong partial must not be resumed either.
                let _ = std::fs::remove_file(&self.path);
                bail!(
                    "blob {e} has the wrong content: its {} bytes hash to {actual}",
                    self.size
                );
            }
        }
        let dest = blob_path(&self.root, &actual);
        if dest.exists() {
            return Ok(Committed {
                digest: actual,
                size: self.size,
                created: false,
            });
        }
        file.sync_all()
            .with_context(|| format!("cannot write blob {actual}"))?;
        drop(file);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::rename(&self.path, &dest)
            .with_context(|| format!("cannot store blob {actual}"))?;
        fsync_dir(&dir).with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(Committed {
            digest: actual,
            size: self.size,
            created: true,
        })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Committed: the path was renamed away (or already removed); else drop the temp
        // file, unless it is a partial download to resume.
        if !self.keep_on_drop || self.file.is_none() || self.size == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("blobs")
        .join(d.algorithm().as_str())
        .join(d.hex())
}

/// A writer's shared hold on `.gc.lock`: no blob collection runs while it lives.
#[derive(Debug)]
pub struct WriteSession {
    _gc: Lock,
}

impl Store {
    /// Opens the layout at `root`, creating it (directories, `oci-layout`, an empty
    /// `index.json`) if it does not exist yet.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        let s = Store {
            root: root.to_path_buf(),
        };
        for d in [s.root.join("blobs").join("sha256"), s.tmp_dir()] {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        let layout = s.root.join(OCI_LAYOUT_FILE);
        if !layout.exists() {
            write_atomic(&s.tmp_dir(), &layout, LAYOUT_VERSION.as_bytes())?;
        }
        if !s.index_path().exists() {
            let _l = lock(&s.root.join(".index.lock"), true)?;
            if !s.index_path().exists() {
                s.write_index(&Index::default())?;
            }
        }
        Ok(s)
    }

    /// The store at `$AAC_HOME/images` (or `~/.aac/images`).
    pub fn open_default() -> anyhow::Result<Store> {
        Store::open(&default_root()?)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Path of a blob in the layout (it may not exist).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        blob_path(&self.root, d)
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Starts writing blobs that will be referenced from `index.json` later; hold the
    /// session until that index update is done.
    pub fn writer(&self) -> anyhow::Result<WriteSession> {
        Ok(WriteSession {
            _gc: lock(&self.root.join(".gc.lock"), false)?,
        })
    }

    /// A new blob writer (the caller should hold a [`WriteSession`]).
    pub fn blob_writer(&self) -> anyhow::Result<BlobWriter> {
        let (file, path) = temp_file(&self.tmp_dir())?;
        Ok(BlobWriter {
            file: Some(file),
            path,
            hasher: crate::oci::Algorithm::Sha256.hasher(),
            size: 0,
            root: self.root.clone(),
            keep_on_drop: false,
        })
    }

    /// A writer for the blob `expected` that continues the partial file an earlier,
    /// interrupted writer (a download cut or killed) left in `.tmp/`: [`BlobWriter::size`]
    /// is how much it holds, so a download asks for the rest with `Range`. The partial is
    /// kept when the writer is dropped without a commit, removed when its digest proves
    /// wrong, and collected by `rmi`/`image prune` like any leftover. If another process
    /// is writing the same blob, a fresh writer is returned instead.
    pub fn resumable_writer(&self, expected: &Digest) -> anyhow::Result<BlobWriter> {
        let path = self.tmp_dir().join(format!(
            "{}-{}.partial",
            expected.algorithm().as_str(),
            expected.hex()
        ));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return self.blob_writer(),
            Err(e) => bail!("cannot lock {}: {e}", path.display()),
        }
        let mut hasher = expected.algorithm().hasher();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(BlobWriter {
            file: Some(file),
            path,
            hasher,
            size,
            root: self.root.clone(),
            keep_on_drop: true,
        })
    }

    /// Stores `bytes` as a blob.
    pub fn put_blob(&self, bytes: &[u8]) -> anyhow::Result<Committed> {
        let mut w = self.blob_writer()?;
        w.write_all(bytes)?;
        w.commit(None)
    }

    /// Streams `r` into a blob, verified against `expected` if given.
    pub fn put_blob_from(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
    ) -> anyhow::Result<Committed> {
        if let Some(e) = expected {
            if self.has_blob(e) {
                // Content-addressed: the stored copy is the one that was verified.
                let size = std::fs::metadata(self.blob_path(e))?.len();
                return Ok(Committed {
                    digest: e.clone(),
                    size,
                    created: false,
                });
            }
        }
        let mut w = self.blob_writer()?;
        io::copy(r, &mut w).context("cannot copy blob data")?;
        w.commit(expected)
    }

    /// The bytes of a blob.
    pub fn read_blob(&self, d: &Digest) -> anyhow::Result<Vec<u8>> {
        let p = self.blob_path(d);
        std::fs::read(&p).with_context(|| format!("blob {d} is missing from the local store"))
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, d: &Digest) -> anyhow::Result<File> {
        File::open(self.blob_path(d))
            .with_context(|| format!("blob {d} is missing from the local store"))
    }

    /// `index.json` as it is now.
    pub fn index(&self) -> anyhow::Result<Index> {
        let p = self.index_path();
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", p.display()))
    }

    fn write_index(&self, idx: &Index) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(idx)?;
        write_atomic(&self.tmp_dir(), &self.index_path(), &bytes)
    }

    /// Read-modify-write of `index.json` under the exclusive index lock. The index is
    /// written only if `f` succeeds.
    pub fn update_index<T>(
        &self,
        f: impl FnOnce(&mut Index) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let _l = lock(&self.root.join(".index.lock"), true)?;
        let mut idx = self.index()?;
        let t = f(&mut idx)?;
        self.write_index(&idx)?;
        Ok(t)
    }

    /// Points `name` at `desc`: the manifest the tag named before, if no other entry
    /// references it, stays as an untagged entry (a dangling image, as docker keeps it).
    pub fn set_tag(&self, name: &str, desc: &Descriptor) -> anyhow::Result<()> {
        self.update_index(|idx| {
            set_tag_in(idx, name, desc);
            Ok(())
        })
    }

    /// Looks up an image: a reference as tagged (`name:tag`, `name` meaning `name:latest`),
    /// a manifest digest, or an image ID (config digest, or a unique prefix of its hex).
    pub fn resolve(&self, r: &str) -> anyhow::Result<Descriptor> {
        let idx = self.index()?;
        resolve_in(self, &idx, r)
    }

    /// Adds loaded images in one index update: a name moves its tag, `None` adds an
    /// untagged entry unless the manifest is already listed.
    pub fn add_images(&self, images: &[(Option<String>, Descriptor)]) -> anyhow::Result<()> {
        self.update_index(|idx| {
            for (name, d) in images {
                match name {
                    Some(n) => set_tag_in(idx, n, d),
                    None => {
                        if !idx.manifests.iter().any(|m| m.digest == d.digest) {
                            idx.manifests.push(d.clone());
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Removes those of `digests` that nothing in the index references (under the gc lock,
    /// so no running writer's blob is taken).
    pub fn discard_unreferenced(&self, digests: &[Digest]) -> anyhow::Result<()> {
        if digests.is_empty() {
            return Ok(());
        }
        let _gc = lock(&self.root.join(".gc.lock"), true)?;
        let keep = self.reachable(&self.index()?)?;
        for d in digests {
            if !keep.contains(d) {
                let _ = std::fs::remove_file(self.blob_path(d));
            }
        }
        Ok(())
    }

    /// Removes tags, like `docker rmi`: each manifest left without a tag is removed too,
    /// and then every blob that no remaining entry references. A reference that cannot be
    /// removed (unknown, or an image ID that several tags name) does not stop the others;
    /// it is reported in `failed`.
    pub fn remove_tags(&self, refs: &[String]) -> anyhow::Result<Removed> {
        let _gc = lock(&self.root.join(".gc.lock"), true)?;
        let removed = self.update_index(|idx| {
            let mut out = Removed::default();
            for r in refs {
                match remove_one(self, idx, r) {
                    Ok((name, deleted)) => {
                        out.untagged.extend(name);
                        out.deleted.extend(deleted);
                    }
                    Err(e) => out.failed.push(format!("{e:#}")),
                }
            }
            Ok(out)
        })?;
        self.collect_garbage_locked()?;
        Ok(removed)
    }

    /// `image prune`: untagged entries (all entries with `all`), then unreferenced blobs
    /// and temp files of interrupted writes. Returns the removed manifests and the bytes
    /// freed.
    pub fn prune(&self, all: bool) -> anyhow::Result<(Vec<Descriptor>, u64)> {
        let _gc = lock(&self.root.join(".gc.lock"), true)?;
        let removed = self.update_index(|idx| {
            let (gone, keep): (Vec<_>, Vec<_>) = idx
                .manifests
                .drain(..)
                .partition(|d| all || ref_name(d).is_none());
            idx.manifests = keep;
            Ok(gone)
        })?;
        let freed = self.collect_garbage_locked()?;
        Ok((removed, freed))
    }

    /// Every blob reachable from `index.json`: manifests, their configs, layers, children.
    pub fn reachable(&self, idx: &Index) -> anyhow::Result<BTreeSet<Digest>> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, String)> = idx
            .manifests
            .iter()
            .map(|d| (d.digest.clone(), d.media_type.clone()))
            .collect();
        while let Some((digest, media_type)) = stack.pop() {
            let Ok(d) = digest.parse::<Digest>() else {
                continue;
            };
            if !seen.insert(d.clone()) {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d) else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<ManifestJson>(&bytes) else {
                continue;
            };
            let mt = m.media_type.clone().unwrap_or(media_type);
            if is_index(&mt) || !m.manifests.is_empty() {
                for c in &m.manifests {
                    stack.push((c.digest.clone(), c.media_type.clone()));
                }
            }
            if let Some(c) = &m.config {
                if let Ok(cd) = c.digest.parse::<Digest>() {
                    seen.insert(cd);
                }
            }
            for l in &m.layers {
                if let Ok(ld) = l.digest.parse::<Digest>() {
                    seen.insert(ld);
                }
            }
        }
        Ok(seen)
    }

    /// Removes blobs no entry references, and temp files older than an hour (left by a
    /// killed process; a live writer holds the gc lock shared, so this runs only between
    /// writes). The caller holds `.gc.lock` exclusively. Returns the bytes freed.
    fn collect_garbage_locked(&self) -> anyhow::Result<u64> {
        let idx = self.index()?;
        let keep = self.reachable(&idx)?;
        let mut freed = 0;
        let blobs = self.root.join("blobs");
        for alg in std::fs::read_dir(&blobs).with_context(|| format!("{}", blobs.display()))? {
            let alg = alg?;
            let Some(alg_name) = alg.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !alg.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(alg.path())? {
                let f = f?;
                let Some(hex) = f.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let Ok(d) = format!("{alg_name}:{hex}").parse::<Digest>() else {
                    continue;
                };
                if !keep.contains(&d) {
                    freed += f.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(f.path())
                        .with_context(|| format!("cannot remove blob {d}"))?;
                }
            }
        }
        // No writer holds the shared gc lock now and none may update the index, so every
        // temp file is a leftover of a killed process.
        let _index = lock(&self.root.join(".index.lock"), true)?;
        if let Ok(rd) = std::fs::read_dir(self.tmp_dir()) {
            for f in rd.flatten() {
                freed += f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(f.path());
            }
        }
        Ok(freed)
    }

    /// Reads an image manifest (or index) blob.
    pub fn manifest(&self, d: &Descriptor) -> anyhow::Result<ManifestJson> {
        let digest: Digest = d
            .digest
            .parse()
            .map_err(|e| anyhow!("bad digest {}: {e}", d.digest))?;
        let bytes = self.read_blob(&digest)?;
        serde_json::from_slice(&bytes).with_context(|| format!("manifest {digest} is not valid"))
    }

    /// The platform image of `d` for the host (or the first one) when `d` is an index;
    /// `d` itself otherwise. Returns its descriptor and parsed manifest.
    pub fn platform_manifest(&self, d: &Descriptor) -> anyhow::Result<(Descriptor, ManifestJson)> {
        let m = self.manifest(d)?;
        if !(is_index(&d.media_type) || m.config.is_none() && !m.manifests.is_empty()) {
            return Ok((d.clone(), m));
        }
        let (os, arch) = super::build::host_platform();
        let pick = m
            .manifests
            .iter()
            .find(|c| {
                c.platform.as_ref().is_some_and(|p| {
                    p["os"].as_str() == Some(os) && p["architecture"].as_str() == Some(arch)
                })
            })
            .or_else(|| {
                m.manifests
                    .iter()
                    .find(|c| self.blob_path_str(&c.digest).is_some_and(|p| p.is_file()))
            })
            .cloned()
            .ok_or_else(|| anyhow!("index {} has no image in the local store", d.digest))?;
        let cm = self.manifest(&pick)?;
        Ok((pick, cm))
    }

    fn blob_path_str(&self, d: &str) -> Option<PathBuf> {
        d.parse::<Digest>().ok().map(|d| self.blob_path(&d))
    }
}

/// The fields of an image manifest or index the client reads.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManifestJson {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The names `r` may be tagged under: as given, and with `:latest` when it has no tag.
fn candidates(r: &str) -> Vec<String> {
    let mut v = vec![r.to_string()];
    if !has_tag(r) && !r.contains('@') {
        v.push(format!("{r}:latest"));
    }
    v
}

/// Checks a reference to tag an image with (`[HOST[:PORT]/]PATH[:TAG]`, lowercase path
/// components as the distribution spec wants them) and returns it with `:latest` added
/// when it has no tag.
pub fn normalize_ref(r: &str) -> anyhow::Result<String> {
    if r.contains('@') {
        bail!("invalid reference {r:?}: a tag cannot be a digest");
    }
    let (name, tag) = match has_tag(r) {
        true => {
            let i = r.rfind(':').unwrap_or(r.len());
            (&r[..i], &r[i + 1..])
        }
        false => (r, "latest"),
    };
    if !crate::oci::name::valid_tag(tag) {
        bail!("invalid reference {r:?}: bad tag {tag:?}");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        let is_host = first.contains('.') || first.contains(':') || first == "localhost";
        if is_host {
            let host_ok = !first.is_empty()
                && first
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !host_ok {
                bail!("invalid reference {r:?}: bad registry host {first:?}");
            }
            parts.remove(0);
        }
    }
    crate::oci::RepoName::parse(&parts.join("/"))
        .map_err(|_| anyhow!("invalid reference {r:?}: repository names are lowercase letters, digits and . _ - separators, with / between components"))?;
    Ok(format!("{name}:{tag}"))
}

/// True if a reference carries a tag: a `:` after its last `/`.
pub fn has_tag(r: &str) -> bool {
    let last = r.rsplit('/').next().unwrap_or(r);
    last.contains(':')
}

/// What `remove_tags` did.
#[derive(Debug, Default)]
pub struct Removed {
    /// The references that were removed.
    pub untagged: Vec<String>,
    /// Manifests removed because no tag named them any more.
    pub deleted: Vec<Digest>,
    /// One error per reference that could not be removed.
    pub failed: Vec<String>,
}

fn remove_one(
    store: &Store,
    idx: &mut Index,
    r: &str,
) -> anyhow::Result<(Option<String>, Option<Digest>)> {
    let names = candidates(r);
    let pos = idx
        .manifests
        .iter()
        .position(|d| ref_name(d).is_some_and(|n| names.iter().any(|c| c == n)));
    let pos = match pos {
        Some(p) => p,
        None => {
            // An image ID or digest: only when one entry (a tag or an untagged one) holds it.
            let d = resolve_in(store, idx, r)?;
            let holders: Vec<usize> = idx
                .manifests
                .iter()
                .enumerate()
                .filter(|(_, m)| m.digest == d.digest)
                .map(|(i, _)| i)
                .collect();
            match holders[..] {
                [one] => one,
                _ => bail!(
                    "image {r} is tagged {} times: remove it by its tags",
                    holders.len()
                ),
            }
        }
    };
    let d = idx.manifests.remove(pos);
    let name = ref_name(&d).map(str::to_string);
    let deleted = if idx.manifests.iter().any(|m| m.digest == d.digest) {
        None
    } else {
        Some(
            d.digest
                .parse()
                .map_err(|e| anyhow!("index.json: bad digest {}: {e}", d.digest))?,
        )
    };
    Ok((name, deleted))
}

fn set_tag_in(idx: &mut Index, name: &str, desc: &Descriptor) {
    let old: Vec<Descriptor> = idx
        .manifests
        .iter()
        .filter(|d| ref_name(d) == Some(name))
        .cloned()
        .collect();
    idx.manifests.retain(|d| ref_name(d) != Some(name));
    // The new target is no longer dangling.
    idx.manifests
        .retain(|d| !(ref_name(d).is_none() && d.digest == desc.digest));
    for o in old {
        if o.digest != desc.digest && !idx.manifests.iter().any(|d| d.digest == o.digest) {
            let mut o = o;
            if let Some(a) = o.annotations.as_mut() {
                a.remove(REF_NAME);
                a.remove(CONTAINERD_NAME);
            }
            if o.annotations.as_ref().is_some_and(|a| a.is_empty()) {
                o.annotations = None;
            }
            idx.manifests.push(o);
        }
    }
    let mut d = desc.clone();
    let ann = d.annotations.get_or_insert_with(BTreeMap::new);
    ann.remove(CONTAINERD_NAME);
    ann.insert(REF_NAME.to_string(), name.to_string());
    idx.manifests.push(d);
}

fn resolve_in(store: &Store, idx: &Index, r: &str) -> anyhow::Result<Descriptor> {
    let names = candidates(r);
    if let Some(d) = idx
        .manifests
        .iter()
        .find(|d| ref_name(d).is_some_and(|n| names.iter().any(|c| c == n)))
    {
        return Ok(d.clone());
    }
    // name@digest or a bare digest: the manifest digest.
    let digest_part = r.rsplit_once('@').map(|(_, d)| d).unwrap_or(r);
    if digest_part.contains(':') {
        if let Ok(d) = digest_part.parse::<Digest>() {
            if let Some(m) = idx.manifests.iter().find(|m| m.digest == d.to_string()) {
                return Ok(m.clone());
            }
        }
    }
    // An image ID: the config digest or a prefix (at least 4 hex) of it.
    let hex = r.strip_prefix("sha256:").unwrap_or(r);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut found: Vec<&Descriptor> = Vec::new();
        for m in &idx.manifests {
            let Ok((_, pm)) = store.platform_manifest(m) else {
                continue;
            };
            let id = pm.config.as_ref().map(|c| c.digest.as_str()).unwrap_or("");
            let id_hex = id.strip_prefix("sha256:").unwrap_or(id);
            let m_hex = m.digest.strip_prefix("sha256:").unwrap_or(&m.digest);
            if (id_hex.starts_with(hex) || m_hex.starts_with(hex))
                && !found.iter().any(|f| f.digest == m.digest)
            {
                found.push(m);
            }
        }
        match found.len() {
            1 => return Ok(found[0].clone()),
            0 => {}
            _ => bail!("image ID {r} is ambiguous: give more digits or a name:tag"),
        }
    }
    bail!("image {r} is not in the local store (see `agent images`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(digest: &Digest) -> Descriptor {
        Descriptor {
            media_type: crate::oci::manifest::OCI_MANIFEST.into(),
            digest: digest.to_string(),
            size: 2,
            artifact_type: None,
            urls: vec![],
            annotations: None,
            platform: None,
        }
    }

    #[test]
    fn blobs_are_verified_and_atomic() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let c = s.put_blob(b"hello").unwrap();
        assert_eq!(c.digest, Digest::sha256_of(b"hello"));
        assert!(c.created);
        assert!(!s.put_blob(b"hello").unwrap().created);
        assert_eq!(s.read_blob(&c.digest).unwrap(), b"hello");
        // A wrong expected digest leaves nothing behind, not even the temp file.
        let wrong = Digest::sha256_of(b"other");
        let err = s
            .put_blob_from(&mut &b"hello!"[..], Some(&wrong))
            .unwrap_err();
        assert!(err.to_string().contains("wrong content"), "{err}");
        assert!(!s.has_blob(&wrong));
        assert!(!s.has_blob(&Digest::sha256_of(b"hello!")));
        assert_eq!(std::fs::read_dir(t.path().join(".tmp")).unwrap().count(), 0);
        // The layout files are there.
        assert!(t.path().join("oci-layout").is_file());
        assert_eq!(s.index().unwrap().manifests.len(), 0);
    }

    #[test]
    fn an_interrupted_blob_write_resumes() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data = b"0123456789abcdef".repeat(1000);
        let d = Digest::sha256_of(&data);
        let mut w = s.resumable_writer(&d).unwrap();
        assert_eq!(w.size(), 0);
        w.write_all(&data[..7000]).unwrap();
        drop(w); // a cut download
        assert!(!s.has_blob(&d));
        let mut w = s.resumable_writer(&d).unwrap();
        assert_eq!(w.size(), 7000);
        // A second writer of the same blob meanwhile gets a fresh file.
        assert_eq!(s.resumable_writer(&d).unwrap().size(), 0);
        w.write_all(&data[7000..]).unwrap();
        assert!(w.commit(Some(&d)).unwrap().created);
        assert_eq!(s.read_blob(&d).unwrap(), data);
        assert_eq!(std::fs::read_dir(t.path().join(".tmp")).unwrap().count(), 0);

        // A partial with wrong bytes fails its digest and is not resumed again.
        let other = Digest::sha256_of(b"other");
        let mut w = s.resumable_writer(&other).unwrap();
        w.write_all(b"wrong").unwrap();
        drop(w);
        let w = s.resumable_writer(&other).unwrap();
        assert_eq!(w.size(), 5);
        assert!(w.commit(Some(&other)).is_err());
        assert_eq!(s.resumable_writer(&other).unwrap().size(), 0);
    }

    #[test]
    fn moving_a_tag_leaves_the_old_image_untagged_and_rmi_collects() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = s.put_blob(b"{}").unwrap().digest;
        let b = s.put_blob(b"{ }").unwrap().digest;
        s.set_tag("x:1", &desc(&a)).unwrap();
        s.set_tag("x:2", &desc(&a)).unwrap();
        s.set_tag("x:1", &desc(&b)).unwrap();
        // a is still tagged x:2: not dangling.
        assert_eq!(s.index().unwrap().manifests.len(), 2);
        s.set_tag("x:2", &desc(&b)).unwrap();
        let idx = s.index().unwrap();
        assert_eq!(idx.manifests.len(), 3);
        assert_eq!(
            idx.manifests
                .iter()
                .filter(|d| ref_name(d).is_none())
                .count(),
            1
        );
        assert_eq!(s.resolve("x:1").unwrap().digest, b.to_string());
        let (removed, _) = s.prune(false).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!s.has_blob(&a));
        let r = s.remove_tags(&["x:1".into()]).unwrap();
        assert_eq!((r.untagged.len(), r.deleted.len()), (1, 0));
        assert!(s.has_blob(&b));
        // An unknown name does not stop the known one.
        let r = s.remove_tags(&["nope:1".into(), "x:2".into()]).unwrap();
        assert_eq!(r.deleted, vec![b.clone()]);
        assert_eq!(r.failed.len(), 1);
        assert!(r.failed[0].contains("nope:1"), "{:?}", r.failed);
        assert!(!s.has_blob(&b));
        assert!(s.resolve("x:2").is_err());
    }

    #[test]
    fn references_are_checked() {
        assert_eq!(normalize_ref("my-agent").unwrap(), "my-agent:latest");
        assert_eq!(
            normalize_ref("localhost:5000/agents/x:v1.0").unwrap(),
            "localhost:5000/agents/x:v1.0"
        );
        assert!(normalize_ref("My-Agent:1").is_err());
        assert!(normalize_ref("a:b:c").is_err());
        assert!(normalize_ref("a@sha256:00").is_err());
        assert!(normalize_ref("a:-x").is_err());
    }

    #[test]
    fn names_without_tag_mean_latest() {
        assert_eq!(candidates("a/b"), vec!["a/b", "a/b:latest"]);
        assert_eq!(
            candidates("host:5000/a"),
            vec!["host:5000/a", "host:5000/a:latest"]
        );
        assert_eq!(candidates("a:1"), vec!["a:1"]);
    }
}
