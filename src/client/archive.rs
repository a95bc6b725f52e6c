//! `agent load` and `agent save`: images in and out of the store as files.
//!
//! Load reads an OCI image layout (a directory, or a tar of one, gzip or not) and a
//! `docker save` archive (`manifest.json` with `Config`, `RepoTags`, `Layers`), the
//! legacy one-directory-per-layer form included. Every blob is verified against the
//! digest that names it before it enters the store.
//!
//! Save writes a tar that is both an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/`) and a `docker save` archive (`manifest.json` pointing at the same
//! blobs), the format docker 25+ writes itself: `docker load`, `skopeo copy
//! oci-archive:FILE` and `skopeo copy docker-archive:FILE` all read it.

use super::build::{descriptor, LAYER_TAR, LAYER_TAR_GZIP, OCI_CONFIG};
use super::store::{
    ref_name, Committed, Index, ManifestJson, Store, CONTAINERD_NAME, OCI_LAYOUT_FILE, REF_NAME,
};
use crate::oci::manifest::{is_index, Descriptor, OCI_MANIFEST};
use crate::oci::Digest;
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The metadata files of a layout or docker archive, kept in memory (small).
const META_FILES: &[&str] = &[
    "index.json",
    "manifest.json",
    "repositories",
    OCI_LAYOUT_FILE,
];

/// Where load reads from.
enum Source {
    Dir(PathBuf),
    /// A tar already streamed into the store: every file's blob by path, metadata in memory.
    Tar {
        files: HashMap<String, Committed>,
        meta: HashMap<String, Vec<u8>>,
    },
}

fn clean(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p.to_string()
}

impl Source {
    fn meta(&self, store: &Store, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Source::Dir(d) => match std::fs::read(d.join(name)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("cannot read {}: {e}", d.join(name).display())),
            },
            Source::Tar { files, meta } => {
                if let Some(b) = meta.get(name) {
                    return Ok(Some(b.clone()));
                }
                match files.get(&clean(name)) {
                    Some(c) => Ok(Some(store.read_blob(&c.digest)?)),
                    None => Ok(None),
                }
            }
        }
    }

    /// The file at `path` as a blob in the store, verified against `expected`.
    fn blob(
        &self,
        store: &Store,
        path: &str,
        expected: Option<&Digest>,
    ) -> anyhow::Result<Committed> {
        match self {
            Source::Dir(d) => {
                let rel = clean(path);
                if rel.split('/').any(|s| s == "..") {
                    bail!("archive path {path:?} leaves the image directory");
                }
                let p = d.join(&rel);
                let mut f = std::fs::File::open(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                store
                    .put_blob_from(&mut f, expected)
                    .with_context(|| format!("{}", p.display()))
            }
            Source::Tar { files, .. } => {
                let c = files
                    .get(&clean(path))
                    .ok_or_else(|| anyhow!("the archive has no file {path}"))?;
                if let Some(e) = expected {
                    if *e != c.digest {
                        bail!(
                            "{path} in the archive has the wrong content: it hashes to {}, not {e}",
                            c.digest
                        );
                    }
                }
                Ok(c.clone())
            }
        }
    }
}

/// Opens `path` for reading, decompressing gzip when the file starts with its magic.
fn maybe_gunzip(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else {
        Ok(Box::new(r))
    }
}

/// Streams every regular file of the tar at `path` into the store.
fn read_tar(store: &Store, path: &Path) -> anyhow::Result<Source> {
    let mut ar = tar::Archive::new(maybe_gunzip(path)?);
    let mut files = HashMap::new();
    let mut meta = HashMap::new();
    let what = || format!("{} is not a readable tar archive", path.display());
    for entry in ar.entries().with_context(what)? {
        let mut entry = entry.with_context(what)?;
        if entry.header().entry_type() != tar::EntryType::Regular
            && entry.header().entry_type() != tar::EntryType::Continuous
        {
            continue;
        }
        let name = clean(&entry.path().with_context(what)?.to_string_lossy());
        if META_FILES.contains(&name.as_str()) {
            let mut b = Vec::new();
            entry.read_to_end(&mut b).with_context(what)?;
            meta.insert(name, b);
            continue;
        }
        let c = store
            .put_blob_from(&mut entry, None)
            .with_context(|| format!("{name} in {}", path.display()))?;
        files.insert(name, c);
    }
    Ok(Source::Tar { files, meta })
}

/// `manifest.json` of a docker archive.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What a load added: each image with the name it was tagged with (None: untagged).
pub type Loaded = Vec<(Option<String>, Descriptor)>;

/// Loads an OCI layout (dir or tar) or docker archive into the store. `repo` names the
/// repository of images the layout names by a bare tag (`v1`, as `skopeo copy ...
/// oci:DIR:v1` writes); without it such a name is kept as it is.
pub fn load(store: &Store, path: &Path, repo: Option<&str>) -> anyhow::Result<Loaded> {
    let session = store.writer()?;
    let source = if path.is_dir() {
        Source::Dir(path.to_path_buf())
    } else {
        read_tar(store, path)?
    };
    let images = if let Some(idx) = source.meta(store, "index.json")? {
        let idx: Index = serde_json::from_slice(&idx)
            .with_context(|| format!("{}: index.json is not valid", path.display()))?;
        load_oci(store, &source, &idx, repo)?
    } else if let Some(m) = source.meta(store, "manifest.json")? {
        let entries: Vec<DockerEntry> = serde_json::from_slice(&m)
            .with_context(|| format!("{}: manifest.json is not valid", path.display()))?;
        load_docker(store, &source, &entries)?
    } else {
        bail!(
            "{} is neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
            path.display()
        );
    };
    if images.is_empty() {
        bail!("{} holds no image", path.display());
    }
    store.add_images(&images)?;
    drop(session);
    if let Source::Tar { files, .. } = &source {
        // Files of the archive that are no blob of an image (a legacy layer's `json`,
        // `VERSION`) were stored too; remove the ones this load created.
        let created: Vec<Digest> = files
            .values()
            .filter(|c| c.created)
            .map(|c| c.digest.clone())
            .collect();
        store.discard_unreferenced(&created)?;
    }
    Ok(images)
}

fn load_oci(
    store: &Store,
    src: &Source,
    idx: &Index,
    repo: Option<&str>,
) -> anyhow::Result<Loaded> {
    let mut out = Vec::new();
    for d in &idx.manifests {
        let digest: Digest = d.digest.parse().map_err(|e| anyhow!("index.json: {e}"))?;
        import_tree(store, src, d, &digest)?;
        let ann = d.annotations.as_ref();
        let name = ann
            .and_then(|a| a.get(CONTAINERD_NAME))
            .or_else(|| ann.and_then(|a| a.get(REF_NAME)))
            .map(|n| match repo {
                Some(r) if !n.contains(':') && !n.contains('/') => format!("{r}:{n}"),
                _ => n.clone(),
            });
        let mut d = d.clone();
        if let Some(a) = d.annotations.as_mut() {
            a.remove(REF_NAME);
            a.remove(CONTAINERD_NAME);
        }
        if d.annotations.as_ref().is_some_and(|a| a.is_empty()) {
            d.annotations = None;
        }
        out.push((name, d));
    }
    Ok(out)
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// Imports a manifest (or index) and everything it references.
fn import_tree(store: &Store, src: &Source, d: &Descriptor, digest: &Digest) -> anyhow::Result<()> {
    src.blob(store, &blob_rel(digest), Some(digest))?;
    let m: ManifestJson = serde_json::from_slice(&store.read_blob(digest)?)
        .with_context(|| format!("manifest {digest} is not valid JSON"))?;
    let media_type = m.media_type.clone().unwrap_or_else(|| d.media_type.clone());
    if is_index(&media_type) {
        for c in &m.manifests {
            let cd: Digest = c
                .digest
                .parse()
                .map_err(|e| anyhow!("index {digest}: {e}"))?;
            import_tree(store, src, c, &cd)?;
        }
        return Ok(());
    }
    for b in m.config.iter().chain(m.layers.iter()) {
        if !b.urls.is_empty() {
            continue; // a foreign layer: fetched from its URL, not part of the layout
        }
        let bd: Digest = b
            .digest
            .parse()
            .map_err(|e| anyhow!("manifest {digest}: {e}"))?;
        src.blob(store, &blob_rel(&bd), Some(&bd))?;
    }
    Ok(())
}

fn load_docker(store: &Store, src: &Source, entries: &[DockerEntry]) -> anyhow::Result<Loaded> {
    let mut out = Vec::new();
    for e in entries {
        let cfg = src.blob(store, &e.config, None)?;
        let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&cfg.digest)?)
            .with_context(|| format!("{}: image config is not JSON", e.config))?;
        let diff_ids = config["rootfs"]["diff_ids"].as_array().map(Vec::len);
        if diff_ids.is_some_and(|n| n != e.layers.len()) {
            bail!(
                "{}: the config lists {} layers, manifest.json {}",
                e.config,
                diff_ids.unwrap_or(0),
                e.layers.len()
            );
        }
        let mut layers = Vec::new();
        for l in &e.layers {
            let c = src.blob(store, l, None)?;
            let mut head = [0u8; 2];
            let n = store.open_blob(&c.digest)?.read(&mut head)?;
            let mt = if n == 2 && head == [0x1f, 0x8b] {
                LAYER_TAR_GZIP
            } else {
                LAYER_TAR
            };
            layers.push(descriptor(mt, &c.digest, c.size));
        }
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: Some(descriptor(OCI_CONFIG, &cfg.digest, cfg.size)),
            layers,
            ..Default::default()
        };
        let m = store.put_blob(&serde_json::to_vec(&manifest)?)?;
        let d = descriptor(OCI_MANIFEST, &m.digest, m.size);
        match e.repo_tags.as_deref() {
            Some(tags) if !tags.is_empty() => {
                for t in tags {
                    out.push((Some(t.clone()), d.clone()));
                }
            }
            _ => out.push((None, d)),
        }
    }
    Ok(out)
}

/// Writes `refs` as one tar (OCI layout + docker `manifest.json`) to `out`.
pub fn save(store: &Store, refs: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
    let mut index = Index::default();
    let mut docker = Vec::new();
    let mut blobs: Vec<Digest> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in refs {
        let d = store.resolve(r)?;
        let name = ref_name(&d)
            .map(str::to_string)
            .unwrap_or_else(|| r.clone());
        collect(store, &d, &mut blobs, &mut seen)?;
        let (_, pm) = store.platform_manifest(&d)?;
        if let Some(c) = &pm.config {
            let cd: Digest = c.digest.parse().map_err(|e| anyhow!("{r}: {e}"))?;
            let mut layers = Vec::new();
            for l in &pm.layers {
                let ld: Digest = l.digest.parse().map_err(|e| anyhow!("{r}: {e}"))?;
                layers.push(blob_rel(&ld));
            }
            docker.push(DockerEntry {
                config: blob_rel(&cd),
                repo_tags: Some(vec![name.clone()]).filter(|_| super::store::has_tag(&name)),
                layers,
            });
        }
        let mut d = d.clone();
        let ann = d.annotations.get_or_insert_with(BTreeMap::new);
        ann.insert(REF_NAME.into(), name.clone());
        ann.insert(CONTAINERD_NAME.into(), name);
        index.manifests.push(d);
    }
    let mut tar = tar::Builder::new(out);
    let put = |tar: &mut tar::Builder<&mut dyn Write>,
               name: &str,
               size: u64,
               data: &mut dyn Read|
     -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if name.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if name.ends_with('/') { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(size);
        tar.append_data(&mut h, name, data)
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    put(
        &mut tar,
        OCI_LAYOUT_FILE,
        layout.len() as u64,
        &mut &layout[..],
    )?;
    let idx = serde_json::to_vec(&index)?;
    put(&mut tar, "index.json", idx.len() as u64, &mut &idx[..])?;
    let man = serde_json::to_vec(&docker)?;
    put(&mut tar, "manifest.json", man.len() as u64, &mut &man[..])?;
    put(&mut tar, "blobs/", 0, &mut io::empty())?;
    let mut algs = BTreeSet::new();
    for b in &blobs {
        if algs.insert(b.algorithm().as_str()) {
            put(
                &mut tar,
                &format!("blobs/{}/", b.algorithm().as_str()),
                0,
                &mut io::empty(),
            )?;
        }
        let f = store.open_blob(b)?;
        let len = f.metadata()?.len();
        put(&mut tar, &blob_rel(b), len, &mut f.take(len))
            .with_context(|| format!("cannot write blob {b}"))?;
    }
    tar.finish().context("cannot write the archive")?;
    Ok(())
}

/// Every blob of `d`'s tree, manifests first, each once.
fn collect(
    store: &Store,
    d: &Descriptor,
    out: &mut Vec<Digest>,
    seen: &mut BTreeSet<Digest>,
) -> anyhow::Result<()> {
    let digest: Digest = d.digest.parse().map_err(|e| anyhow!("{e}"))?;
    if !seen.insert(digest.clone()) {
        return Ok(());
    }
    out.push(digest);
    let m = store.manifest(d)?;
    let mt = m.media_type.clone().unwrap_or_else(|| d.media_type.clone());
    if is_index(&mt) {
        for c in &m.manifests {
            // An index may list platforms that were never copied in: save what is here.
            let cd: Digest = c.digest.parse().map_err(|e| anyhow!("{e}"))?;
            if store.has_blob(&cd) {
                collect(store, c, out, seen)?;
            }
        }
        return Ok(());
    }
    for b in m.config.iter().chain(m.layers.iter()) {
        if !b.urls.is_empty() {
            continue;
        }
        let bd: Digest = b.digest.parse().map_err(|e| anyhow!("{e}"))?;
        if !store.has_blob(&bd) {
            bail!("blob {bd} of {} is missing from the local store", d.digest);
        }
        if seen.insert(bd.clone()) {
            out.push(bd);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a.txt"), "a").unwrap();
        let t1 = tempfile::tempdir().unwrap();
        let s1 = Store::open(&t1.path().join("images")).unwrap();
        let b =
            super::super::build::build(&s1, src.path(), "rt:1", &super::super::build::LocalBase)
                .unwrap();
        let file = t1.path().join("out.tar");
        let mut f = std::fs::File::create(&file).unwrap();
        save(&s1, &["rt:1".into()], &mut f).unwrap();
        drop(f);
        let t2 = tempfile::tempdir().unwrap();
        let s2 = Store::open(t2.path()).unwrap();
        let loaded = load(&s2, &file, None).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].0.as_deref(), Some("rt:1"));
        assert_eq!(s2.resolve("rt:1").unwrap().digest, b.manifest.digest);
        // Nothing but the image's three blobs (no stray metadata files).
        let n = std::fs::read_dir(t2.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(n, 3);
    }
}
