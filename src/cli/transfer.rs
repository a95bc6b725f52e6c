//! `agent push`, `agent pull` and `agent registry image info`: the OCI distribution API
//! between the local store ([`crate::client::Store`]) and a registry, over [`Client`].
//!
//! - Push: every blob is HEADed first and skipped when the registry has it; otherwise a
//!   cross-repository mount is tried (`?mount=D&from=R` when an earlier push or pull saw
//!   the blob in repository R of the same registry, else `?mount=D` for the registry's own
//!   content discovery), and when that starts an upload instead, the blob is sent in
//!   chunks (`PATCH` with `Content-Range`), re-synchronised after a failure by `GET` on the
//!   upload URL (its `Range` says what arrived) and closed with `PUT ?digest=`. Blobs go up
//!   [`PARALLEL`] at a time; an index goes after all its children.
//! - Pull: layers are streamed [`PARALLEL`] at a time into the store's resumable partial
//!   files ([`Store::resumable_writer`]); a body that breaks off is continued with `Range`
//!   (also by the next `agent pull` after a kill), and a blob enters `blobs/` only once its
//!   digest is verified. The manifest is stored and tagged last.
//!
//! Invariant: no blob is held in memory whole; an upload holds at most one chunk
//! ([`CHUNK`]) per parallel transfer, a download one body frame.

use super::http::{Client, Reply};
use super::images::{human_size, short_id};
use super::Target;
use crate::client::store::{normalize_ref, ref_name, Store};
use crate::oci::manifest::{is_index, Descriptor, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST};
use crate::oci::Digest;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures_util::stream::{self, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

/// Blobs transferred at once.
pub const PARALLEL: usize = 3;
/// The size of one upload `PATCH`.
pub const CHUNK: usize = 8 << 20;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Args)]
pub struct PushArgs {
    /// The local image: NAME[:TAG] (`HOST[:PORT]/NAME[:TAG]` also picks the registry).
    pub image: String,
    /// Push every local tag of NAME.
    #[arg(long)]
    pub all_tags: bool,
    /// Set the repository's visibility after the push (admin API): private or public.
    #[arg(long, value_parser = ["private", "public"])]
    pub visibility: Option<String>,
    /// No progress, only the digest.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Sign the pushed digest (cosign's format, tag sha256-<hex>.sig); key: --key, else
    /// the profile's signing.key, else ./cosign.key. Password: COSIGN_PASSWORD.
    #[arg(long)]
    pub sign: bool,
    /// The private key --sign uses (PEM: PKCS#8, encrypted PKCS#8 or cosign's cosign.key).
    #[arg(long, requires = "sign", value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,
    /// Scan the pushed image (profile's scan.command, else trivy, else grype) and attach
    /// the report to it as a referrer.
    #[arg(long)]
    pub security_scan: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@DIGEST (`HOST[:PORT]/NAME...` also picks the registry).
    pub image: String,
    /// The image to take from a multi-platform index, OS/ARCH[/VARIANT]; default: the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// No progress, only the image ID.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Refuse (exit status 1, nothing stored) unless a signature of the image's digest
    /// verifies with --key, else with the profile's signing.public_keys.
    #[arg(long)]
    pub verify_signature: bool,
    /// A public key (PEM) --verify-signature accepts; repeatable.
    #[arg(long = "key", requires = "verify_signature", value_name = "FILE")]
    pub keys: Vec<std::path::PathBuf>,
}

#[derive(Subcommand)]
pub enum RemoteImageCommand {
    /// Digest, media type, platforms, layers, labels, annotations and referrers of an image
    /// in the registry.
    Info {
        /// NAME[:TAG] or NAME@DIGEST.
        image: String,
        /// The platform whose layers and labels are shown (default: the host's, else the first).
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The signatures of an image (the `.sig` tag and signature referrers), each with the
    /// key that verifies it, or "unverified" and why.
    Signatures {
        /// NAME[:TAG] or NAME@DIGEST.
        image: String,
        /// Public keys (PEM) to verify with; default: the profile's signing.public_keys.
        #[arg(long = "key", value_name = "FILE")]
        keys: Vec<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The newest vulnerability report attached to an image (`agent push --security-scan`,
    /// `oras attach`, `cosign attest`): counts by severity, the highest findings, the scanner.
    ScanResults {
        /// NAME[:TAG] or NAME@DIGEST.
        image: String,
        #[arg(long)]
        json: bool,
    },
}

/// A reference split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// The registry host, when the reference names one (`localhost:5000/x`).
    pub host: Option<String>,
    pub repo: String,
    /// A tag or a digest (`sha256:...`).
    pub reference: String,
}

impl RemoteRef {
    pub fn parse(r: &str) -> anyhow::Result<RemoteRef> {
        let (name, reference) = match r.split_once('@') {
            Some((n, d)) => {
                d.parse::<Digest>()
                    .map_err(|e| anyhow!("invalid reference {r:?}: bad digest: {e}"))?;
                (n.to_string(), d.to_string())
            }
            None => {
                let full = normalize_ref(r)?;
                let i = full.rfind(':').unwrap_or(full.len());
                (full[..i].to_string(), full[i + 1..].to_string())
            }
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let mut host = None;
        if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            host = Some(parts.remove(0).to_string());
        }
        let repo = parts.join("/");
        crate::oci::RepoName::parse(&repo)
            .map_err(|_| anyhow!("invalid reference {r:?}: bad repository name {repo:?}"))?;
        Ok(RemoteRef {
            host,
            repo,
            reference,
        })
    }

    pub fn is_digest(&self) -> bool {
        self.reference.contains(':')
    }
}

/// The target for the registry a reference names (its host, unless `--registry` or
/// `--profile` say otherwise).
fn target_for(target: &Target, r: &RemoteRef) -> Target {
    let mut t = target.clone();
    if let (Some(h), None, None) = (&r.host, &t.registry, &t.profile) {
        t.registry = Some(h.clone());
    }
    t
}

/// The client for the registry a reference names.
pub(super) fn client_for(target: &Target, r: &RemoteRef) -> anyhow::Result<Arc<Client>> {
    Ok(Arc::new(target_for(target, r).client()?))
}

// ---------------------------------------------------------------------------------------
// Progress

/// Per-layer progress: bars on a terminal, one line per layer otherwise, or nothing.
#[derive(Clone)]
pub enum Progress {
    Bars(indicatif::MultiProgress),
    Lines,
    Quiet,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => Progress::Quiet,
            (false, true) => Progress::Bars(indicatif::MultiProgress::new()),
            (false, false) => Progress::Lines,
        }
    }

    /// Ends the bars' last line, so what follows starts on a line of its own.
    fn finish(&self) {
        if let Progress::Bars(_) = self {
            eprintln!();
        }
    }

    fn layer(&self, digest: &str, size: u64) -> Layer {
        let id = short_id(digest);
        let bar = match self {
            Progress::Bars(m) => {
                let b = m.add(indicatif::ProgressBar::new(size));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix}: {msg:<10} [{bar:30}] {bytes}/{total_bytes}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                b.set_style(style);
                b.set_prefix(id.clone());
                b.set_message("waiting");
                Some(b)
            }
            _ => None,
        };
        Layer {
            bar,
            lines: matches!(self, Progress::Lines),
            id,
            size,
        }
    }
}

struct Layer {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    id: String,
    size: u64,
}

impl Layer {
    fn start(&self, what: &str) {
        if let Some(b) = &self.bar {
            b.set_message(what.to_string());
        }
    }
    fn set(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_position(n);
        }
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn done(&self, what: &str) {
        if let Some(b) = &self.bar {
            b.set_position(self.size);
            b.finish_with_message(what.to_string());
        } else if self.lines {
            eprintln!("{}: {what} ({})", self.id, human_size(self.size));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Where blobs were seen: the hint for cross-repository mounts.

/// `$AAC_HOME/blob-sources.json`: registry host -> digest -> repositories that had it.
/// A hint only (a wrong one costs a refused mount and an upload), so concurrent updates
/// may lose an entry.
struct Sources {
    path: std::path::PathBuf,
    map: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Sources {
    fn load() -> Sources {
        let path = crate::client::store::aac_home()
            .map(|h| h.join("blob-sources.json"))
            .unwrap_or_default();
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Sources { path, map }
    }

    /// Another repository of `host` that had `digest`.
    fn other(&self, host: &str, digest: &str, repo: &str) -> Option<String> {
        self.map
            .get(host)?
            .get(digest)?
            .iter()
            .find(|r| *r != repo)
            .cloned()
    }

    fn add(&mut self, host: &str, repo: &str, digests: impl IntoIterator<Item = String>) {
        let m = self.map.entry(host.to_string()).or_default();
        for d in digests {
            m.entry(d).or_default().insert(repo.to_string());
        }
    }

    fn save(&self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        if let Ok(b) = serde_json::to_vec(&self.map) {
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Push

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Existed,
    Mounted,
    Uploaded,
}

struct Pusher {
    client: Arc<Client>,
    store: Store,
    repo: String,
    host: String,
    progress: Progress,
    retries: u32,
}

impl Pusher {
    /// Sends one blob unless the registry has it.
    async fn blob(&self, d: &Descriptor, from: Option<String>) -> anyhow::Result<Sent> {
        let digest: Digest = d
            .digest
            .parse()
            .map_err(|e| anyhow!("bad digest {}: {e}", d.digest))?;
        let layer = self.progress.layer(&d.digest, d.size);
        let head = self
            .client
            .send(Method::HEAD, &format!("/v2/{}/blobs/{digest}", self.repo))
            .await?;
        if head.status.is_success() {
            layer.done("exists");
            return Ok(Sent::Existed);
        }
        if head.status != StatusCode::NOT_FOUND {
            return Err(self.client.status_error(&head, &format!("blob {digest}")));
        }
        if !self.store.has_blob(&digest) {
            bail!(
                "blob {digest} is neither in the local store nor in {} on the registry",
                self.repo
            );
        }
        let mut path = format!("/v2/{}/blobs/uploads/?mount={digest}", self.repo);
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let r = self.client.send(Method::POST, &path).await?;
        match r.status {
            StatusCode::CREATED => {
                layer.done("mounted");
                return Ok(Sent::Mounted);
            }
            StatusCode::ACCEPTED => {}
            _ => return Err(self.client.status_error(&r, &format!("upload of {digest}"))),
        }
        let location = self.location(&r, &digest)?;
        layer.start("pushing");
        self.upload(&digest, d.size, location, &layer).await?;
        layer.done("pushed");
        Ok(Sent::Uploaded)
    }

    fn location(&self, r: &Reply, digest: &Digest) -> anyhow::Result<String> {
        let l = r
            .headers
            .get(http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| anyhow!("upload of {digest}: the registry sent no Location"))?;
        self.client.path_of(l).ok_or_else(|| {
            anyhow!("upload of {digest}: the registry sent an upload URL on another host: {l}")
        })
    }

    /// The chunked upload: PATCH chunks, re-synchronise on a failure, PUT ?digest=.
    async fn upload(
        &self,
        digest: &Digest,
        size: u64,
        mut location: String,
        layer: &Layer,
    ) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(self.store.blob_path(digest))
            .await
            .with_context(|| format!("blob {digest} is missing from the local store"))?;
        let mut offset = 0u64;
        let mut failures = 0u32;
        while offset < size {
            let len = (size - offset).min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; len];
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            file.read_exact(&mut buf)
                .await
                .with_context(|| format!("cannot read blob {digest}"))?;
            let mut h = HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                http::header::CONTENT_RANGE,
                header(&format!("{offset}-{}", offset + len as u64 - 1))?,
            );
            let sent = self
                .client
                .execute(Method::PATCH, &location, h, Bytes::from(buf))
                .await;
            match sent {
                Ok(r) if r.status == StatusCode::ACCEPTED => {
                    offset += len as u64;
                    layer.set(offset);
                    if r.headers.contains_key(http::header::LOCATION) {
                        location = self.location(&r, digest)?;
                    }
                    continue;
                }
                Ok(r)
                    if r.status.is_client_error()
                        && r.status != StatusCode::RANGE_NOT_SATISFIABLE =>
                {
                    return Err(self.client.status_error(&r, &format!("upload of {digest}")));
                }
                Ok(r) if failures >= self.retries => {
                    return Err(self.client.status_error(&r, &format!("upload of {digest}")))
                }
                Err(e) if failures >= self.retries => return Err(e),
                _ => failures += 1,
            }
            // Ask the registry what arrived and continue from there.
            let st = self.client.get(&location).await?;
            if st.status != StatusCode::NO_CONTENT && !st.status.is_success() {
                return Err(self
                    .client
                    .status_error(&st, &format!("upload of {digest}")));
            }
            offset = st
                .headers
                .get(http::header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().rsplit_once('-'))
                .and_then(|(_, end)| end.parse::<u64>().ok())
                .map_or(0, |end| end + 1);
            if st.headers.contains_key(http::header::LOCATION) {
                location = self.location(&st, digest)?;
            }
            layer.set(offset);
        }
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .client
            .execute(
                Method::PUT,
                &format!("{location}{sep}digest={}", enc(&digest.to_string())),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        if r.status != StatusCode::CREATED {
            return Err(self.client.status_error(&r, &format!("upload of {digest}")));
        }
        Ok(())
    }

    /// Pushes the blobs of an image manifest (config and layers), [`PARALLEL`] at once.
    async fn image_blobs(
        &self,
        m: &crate::client::store::ManifestJson,
        sources: &Sources,
    ) -> anyhow::Result<Vec<Sent>> {
        let mut blobs: Vec<Descriptor> = Vec::new();
        for d in m.config.iter().chain(m.layers.iter()) {
            if !blobs.iter().any(|b| b.digest == d.digest) {
                blobs.push(d.clone());
            }
        }
        let results: Vec<anyhow::Result<Sent>> = stream::iter(blobs.iter().map(|d| {
            let from = sources.other(&self.host, &d.digest, &self.repo);
            self.blob(d, from)
        }))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
        results.into_iter().collect()
    }

    /// PUTs a manifest's bytes under `reference` (a tag or its digest).
    async fn manifest(&self, d: &Descriptor, reference: &str) -> anyhow::Result<String> {
        let digest: Digest = d
            .digest
            .parse()
            .map_err(|e| anyhow!("bad digest {}: {e}", d.digest))?;
        let bytes = self.store.read_blob(&digest)?;
        let mut media = d.media_type.clone();
        if media.is_empty() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            media = v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
        }
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, header(&media)?);
        let r = self
            .client
            .execute(
                Method::PUT,
                &format!("/v2/{}/manifests/{reference}", self.repo),
                h,
                Bytes::from(bytes),
            )
            .await?;
        if r.status != StatusCode::CREATED {
            return Err(self
                .client
                .status_error(&r, &format!("manifest {}:{reference}", self.repo)));
        }
        Ok(digest.to_string())
    }

    /// The descriptor of the manifest `d` names, as a signature's `subject`.
    fn subject(&self, d: &Descriptor) -> anyhow::Result<crate::sign::Desc> {
        let digest: Digest = d
            .digest
            .parse()
            .map_err(|e| anyhow!("bad digest {}: {e}", d.digest))?;
        let bytes = self.store.read_blob(&digest)?;
        let mut media = d.media_type.clone();
        if media.is_empty() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            media = v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
        }
        Ok(crate::sign::Desc {
            media_type: media,
            size: bytes.len() as u64,
            digest: digest.to_string(),
            annotations: None,
        })
    }

    /// Pushes an image or a whole index (children first) and tags it.
    async fn push(
        &self,
        d: &Descriptor,
        tag: &str,
        sources: &mut Sources,
    ) -> anyhow::Result<Vec<Sent>> {
        let m = self.store.manifest(d)?;
        let mut sent = Vec::new();
        let index = is_index(&d.media_type) || (m.config.is_none() && !m.manifests.is_empty());
        if index {
            for child in &m.manifests {
                let cd: Digest = child
                    .digest
                    .parse()
                    .map_err(|e| anyhow!("bad digest {}: {e}", child.digest))?;
                if !self.store.has_blob(&cd) {
                    let head = self
                        .client
                        .send(Method::HEAD, &format!("/v2/{}/manifests/{cd}", self.repo))
                        .await?;
                    if !head.status.is_success() {
                        bail!("index {}: its image {cd} is neither in the local store nor in {} on the registry", d.digest, self.repo);
                    }
                    continue;
                }
                let cm = self.store.manifest(child)?;
                sent.extend(self.image_blobs(&cm, sources).await?);
                self.manifest(child, &child.digest).await?;
                sources.add(&self.host, &self.repo, blob_digests(&cm));
            }
        } else {
            sent.extend(self.image_blobs(&m, sources).await?);
            sources.add(&self.host, &self.repo, blob_digests(&m));
        }
        self.manifest(d, tag).await?;
        Ok(sent)
    }
}

fn blob_digests(m: &crate::client::store::ManifestJson) -> Vec<String> {
    m.config
        .iter()
        .chain(m.layers.iter())
        .map(|d| d.digest.clone())
        .collect()
}

fn header(v: &str) -> anyhow::Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|_| anyhow!("invalid header value {v:?}"))
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The size of an image: its manifest's config and layers (for an index, the sum over the
/// children the store has).
fn image_size(store: &Store, d: &Descriptor) -> u64 {
    let Ok(m) = store.manifest(d) else { return 0 };
    let own: u64 = m.config.iter().chain(m.layers.iter()).map(|l| l.size).sum();
    own + m
        .manifests
        .iter()
        .map(|c| image_size(store, c))
        .sum::<u64>()
}

pub async fn push(target: &Target, a: PushArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = Store::open_default()?;
    let r = RemoteRef::parse(&a.image)?;
    if r.is_digest() {
        bail!("invalid reference {:?}: push a NAME[:TAG]", a.image);
    }
    let client = client_for(target, &r)?;
    // The key is read before anything is sent: a missing key or password fails the push.
    let signer = match a.sign {
        true => Some(super::signing::signing_key(
            a.key.as_deref(),
            &target_for(target, &r).endpoint()?,
        )?),
        false => None,
    };
    let ep_host = client
        .base()
        .split_once("://")
        .map_or(client.base(), |(_, h)| h)
        .to_string();
    // The local tags to push: NAME:TAG, or every tag of NAME.
    let name = a
        .image
        .rsplit_once(':')
        .filter(|_| crate::client::store::has_tag(&a.image))
        .map_or(a.image.as_str(), |(n, _)| n);
    let mut tags: Vec<(String, Descriptor)> = Vec::new();
    if a.all_tags {
        for d in store.index()?.manifests {
            if let Some(n) = ref_name(&d) {
                if let Some((rn, t)) = n.rsplit_once(':') {
                    if rn == name {
                        tags.push((t.to_string(), d.clone()));
                    }
                }
            }
        }
        if tags.is_empty() {
            bail!("no local image is tagged {name}:*: build or tag one first");
        }
    } else {
        let d = store.resolve(&a.image).map_err(|_| {
            anyhow!("image {} is not in the local store: build, load or tag it first (agent images lists them)", a.image)
        })?;
        tags.push((r.reference.clone(), d));
    }
    let progress = Progress::new(a.quiet || a.json);
    let pusher = Pusher {
        client: client.clone(),
        store: store.clone(),
        repo: r.repo.clone(),
        host: ep_host,
        progress,
        retries: target.retries,
    };
    let mut sources = Sources::load();
    let mut results = Vec::new();
    for (tag, d) in &tags {
        let res = pusher.push(d, tag, &mut sources).await;
        sources.save();
        let sent = res?;
        let signature = match &signer {
            Some((_, key)) => {
                let subject = pusher.subject(d)?;
                Some(super::signing::sign_image(&client, &r.repo, subject, key).await?)
            }
            None => None,
        };
        results.push(json!({
            "repository": r.repo,
            "tag": tag,
            "digest": d.digest,
            "size": human_size(image_size(&store, d)),
            "size_bytes": image_size(&store, d),
            "registry_url": client.base(),
            "blobs_existing": sent.iter().filter(|s| **s == Sent::Existed).count(),
            "blobs_mounted": sent.iter().filter(|s| **s == Sent::Mounted).count(),
            "blobs_uploaded": sent.iter().filter(|s| **s == Sent::Uploaded).count(),
            "signature": signature,
            "signing_key": signer.as_ref().map(|(p, _)| p.display().to_string()),
        }));
    }
    pusher.progress.finish();
    if let Some(v) = &a.visibility {
        let mut sink = Vec::new();
        super::admin::visibility(&client, &r.repo, Some(v), &mut sink).await?;
    }
    let mut scan_failed = None;
    if a.security_scan {
        scan_failed = super::scanning::scan_all(
            target,
            &client,
            &store,
            name,
            &tags,
            &mut results,
            a.quiet || a.json,
        )
        .await;
    }
    if a.json {
        let v = match results.len() {
            1 => results.remove(0),
            _ => Value::Array(results),
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return scan_failed.map_or(Ok(()), Err);
    }
    for v in &results {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        if a.quiet {
            writeln!(out, "{}", s("digest"))?;
            continue;
        }
        writeln!(out, "Pushed {}:{}", s("repository"), s("tag"))?;
        writeln!(out, "Repository: {}", s("repository"))?;
        writeln!(out, "Tag: {}", s("tag"))?;
        writeln!(out, "Digest: {}", s("digest"))?;
        writeln!(out, "Size: {}", s("size"))?;
        writeln!(out, "Registry: {}", s("registry_url"))?;
        if let Some(sig) = v["signature"].as_str() {
            writeln!(
                out,
                "Signature: {}:{sig} (key {})",
                s("repository"),
                s("signing_key")
            )?;
        }
        super::scanning::print_scan(&v["security_scan"], out)?;
    }
    if let (Some(v), false) = (&a.visibility, a.quiet) {
        writeln!(out, "Visibility: {v}")?;
    }
    scan_failed.map_or(Ok(()), Err)
}

// ---------------------------------------------------------------------------------------
// Pull

/// `OS/ARCH[/VARIANT]`.
fn parse_platform(p: &str) -> anyhow::Result<(String, String, Option<String>)> {
    let parts: Vec<&str> = p.split('/').collect();
    match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => {
            Ok((os.to_string(), arch.to_string(), None))
        }
        [os, arch, v] if !os.is_empty() && !arch.is_empty() => {
            Ok((os.to_string(), arch.to_string(), Some(v.to_string())))
        }
        _ => bail!("invalid platform {p:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64"),
    }
}

fn platform_str(p: &Value) -> String {
    let mut s = format!(
        "{}/{}",
        p["os"].as_str().unwrap_or("?"),
        p["architecture"].as_str().unwrap_or("?")
    );
    if let Some(v) = p["variant"].as_str() {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// The child of an index for `platform` (default: the host's, else the first).
pub(super) fn pick_platform<'a>(
    children: &'a [Descriptor],
    platform: Option<&str>,
    what: &str,
) -> anyhow::Result<&'a Descriptor> {
    let matches = |c: &Descriptor, os: &str, arch: &str, variant: Option<&str>| {
        c.platform.as_ref().is_some_and(|p| {
            p["os"].as_str() == Some(os)
                && p["architecture"].as_str() == Some(arch)
                && variant.is_none_or(|v| p["variant"].as_str() == Some(v))
        })
    };
    match platform {
        Some(p) => {
            let (os, arch, variant) = parse_platform(p)?;
            children
                .iter()
                .find(|c| matches(c, &os, &arch, variant.as_deref()))
                .ok_or_else(|| {
                    let have: Vec<String> = children
                        .iter()
                        .filter_map(|c| c.platform.as_ref().map(platform_str))
                        .collect();
                    anyhow!(
                        "image not found in registry: {what} has no image for {p} (it has {})",
                        have.join(", ")
                    )
                })
        }
        None => {
            let (os, arch) = crate::client::build::host_platform();
            children
                .iter()
                .find(|c| matches(c, os, arch, None))
                .or_else(|| children.first())
                .ok_or_else(|| anyhow!("{what} is an empty index"))
        }
    }
}

/// GETs a manifest, verified against its digest. Returns its bytes, media type and digest.
pub(super) async fn get_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
) -> anyhow::Result<(Bytes, String, Digest)> {
    let mut h = HeaderMap::new();
    h.insert(http::header::ACCEPT, HeaderValue::from_static(ACCEPT));
    let r = client
        .execute(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            h,
            Bytes::new(),
        )
        .await?;
    if !r.status.is_success() {
        return Err(client.status_error(&r, &format!("{repo}:{reference}")));
    }
    let actual = Digest::sha256_of(&r.body);
    let claimed = r
        .headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    let expected = match reference.parse::<Digest>() {
        Ok(d) => Some(d),
        Err(_) => claimed.filter(|c| c.algorithm() == actual.algorithm()),
    };
    if let Some(e) = expected {
        if !e.matches(&r.body) {
            bail!(
                "manifest {repo}:{reference} has the wrong content: it hashes to {actual}, not {e}"
            );
        }
    }
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|e| anyhow!("manifest {repo}:{reference} is not JSON: {e}"))?;
    let media = v["mediaType"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            r.headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .map(|c| c.split(';').next().unwrap_or(c).trim().to_string())
        })
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let digest = match reference.parse::<Digest>() {
        Ok(d) => d,
        Err(_) => actual,
    };
    Ok((r.body, media, digest))
}

pub(super) fn index_like(media: &str, v: &Value) -> bool {
    media == OCI_INDEX
        || media == DOCKER_LIST
        || (v.get("config").is_none() && v["manifests"].is_array())
}

struct Puller {
    client: Arc<Client>,
    store: Store,
    repo: String,
    progress: Progress,
    retries: u32,
    timeout: Duration,
}

impl Puller {
    /// Streams one blob into the store, resuming a partial file and a broken body with
    /// `Range`, and verifies it before it enters `blobs/`.
    async fn blob(&self, d: &Descriptor) -> anyhow::Result<bool> {
        let digest: Digest = d
            .digest
            .parse()
            .map_err(|e| anyhow!("bad digest {}: {e}", d.digest))?;
        let layer = self.progress.layer(&d.digest, d.size);
        if self.store.has_blob(&digest) {
            layer.done("already exists");
            return Ok(false);
        }
        let mut w = self.store.resumable_writer(&digest)?;
        if w.size() > d.size {
            // Longer than the blob: not a prefix of it. Start over.
            let _ = w.commit(Some(&digest));
            w = self.store.resumable_writer(&digest)?;
        }
        layer.start("downloading");
        let path = format!("/v2/{}/blobs/{digest}", self.repo);
        let mut failures = 0u32;
        while w.size() < d.size || d.size == 0 {
            let have = w.size();
            layer.set(have);
            let mut h = HeaderMap::new();
            if have > 0 {
                h.insert(http::header::RANGE, header(&format!("bytes={have}-"))?);
            }
            let attempt = async {
                let r = self.client.stream(Method::GET, &path, h).await?;
                let mut skip = match r.status {
                    StatusCode::PARTIAL_CONTENT => {
                        let start = r
                            .headers
                            .get(http::header::CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().strip_prefix("bytes "))
                            .and_then(|v| v.split('-').next())
                            .and_then(|s| s.parse::<u64>().ok());
                        match start {
                            Some(s) if s == have => 0,
                            _ => bail!("blob {digest}: the registry answered a range that does not start at byte {have}"),
                        }
                    }
                    // The whole blob: drop what the partial file has already.
                    StatusCode::OK => have,
                    _ => {
                        let (status, headers) = (r.status, r.headers);
                        let body = tokio::time::timeout(self.timeout, r.body.collect())
                            .await
                            .ok()
                            .and_then(|b| b.ok())
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let reply = Reply {
                            status,
                            headers,
                            body,
                            elapsed: Duration::ZERO,
                            attempts: 1,
                        };
                        return Err(self.client.status_error(&reply, &format!("blob {digest}")).context(Fatal));
                    }
                };
                let mut body = r.body;
                loop {
                    let frame = tokio::time::timeout(self.timeout, body.frame())
                        .await
                        .map_err(|_| anyhow!("failed to connect to registry {}: blob {digest}: no data within {:?}", self.client.base(), self.timeout))?;
                    let Some(frame) = frame else { break };
                    let frame = frame.map_err(|e| {
                        anyhow!("failed to connect to registry {}: blob {digest}: the download broke off: {e}", self.client.base())
                    })?;
                    let Ok(mut data) = frame.into_data() else { continue };
                    if skip > 0 {
                        let n = (skip as usize).min(data.len());
                        skip -= n as u64;
                        data = data.slice(n..);
                    }
                    if data.is_empty() {
                        continue;
                    }
                    if w.size() + data.len() as u64 > d.size {
                        bail!("blob {digest}: the registry sent more than its {} bytes", d.size);
                    }
                    w.write_all(&data)
                        .with_context(|| format!("cannot write blob {digest}"))
                        .context(Fatal)?;
                    layer.inc(data.len() as u64);
                }
                Ok(())
            }
            .await;
            let err = match attempt {
                Ok(()) if w.size() >= d.size => break,
                Ok(()) => anyhow!(
                    "failed to connect to registry {}: blob {digest}: the download ended at {} of {} bytes",
                    self.client.base(),
                    w.size(),
                    d.size
                ),
                Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
                Err(e) => e,
            };
            if w.size() > have {
                failures = 0; // progress: a cut is not a failure of the registry
            } else {
                failures += 1;
            }
            if failures > self.retries {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(100 * failures as u64)).await;
        }
        layer.start("verifying");
        w.commit(Some(&digest))?;
        layer.done("pulled");
        Ok(true)
    }
}

/// An error no retry mends (a 4xx, a full disk).
#[derive(Debug)]
struct Fatal;
impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fatal")
    }
}

/// What `agent pull` did.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub name: Option<String>,
    /// The digest the reference resolved to on the registry (an index's for a multi-platform image).
    pub digest: String,
    /// The image manifest stored and tagged.
    pub manifest: Descriptor,
    pub image_id: String,
    pub size: u64,
    pub downloaded: usize,
    /// The key that verified the image's signature (`--verify-signature`).
    pub verified_by: Option<String>,
}

/// Pulls `image` into the store and tags it as named (without a tag: `:latest`).
pub async fn pull_image(
    target: &Target,
    image: &str,
    platform: Option<&str>,
    progress: Progress,
) -> anyhow::Result<Pulled> {
    pull_image_verified(target, image, platform, progress, None).await
}

/// [`pull_image`]; with `keys`, only once a signature of the digest the reference
/// resolves to verifies with one of them (checked before anything is stored).
pub async fn pull_image_verified(
    target: &Target,
    image: &str,
    platform: Option<&str>,
    progress: Progress,
    keys: Option<&[crate::sign::NamedKey]>,
) -> anyhow::Result<Pulled> {
    let r = RemoteRef::parse(image)?;
    let client = client_for(target, &r)?;
    let (bytes, media, digest) = get_manifest(&client, &r.repo, &r.reference).await?;
    let verified_by = match keys {
        Some(k) => Some(super::signing::verify_image(&client, &r.repo, &digest, k).await?),
        None => None,
    };
    let store = Store::open_default()?;
    let what = format!("{}:{}", r.repo, r.reference);
    let v: Value = serde_json::from_slice(&bytes)?;
    let (mbytes, mmedia, mdigest, platform_v) = if index_like(&media, &v) {
        let idx: crate::client::store::ManifestJson = serde_json::from_slice(&bytes)?;
        let child = pick_platform(&idx.manifests, platform, &what)?;
        let (b, m, d) = get_manifest(&client, &r.repo, &child.digest).await?;
        (b, m, d, child.platform.clone())
    } else {
        (bytes, media, digest.clone(), None)
    };
    let m: crate::client::store::ManifestJson = serde_json::from_slice(&mbytes)
        .map_err(|e| anyhow!("manifest {what} is not valid: {e}"))?;
    let config = m
        .config
        .clone()
        .ok_or_else(|| anyhow!("{what} is not an image (its manifest has no config)"))?;
    let _session = store.writer()?;
    let puller = Puller {
        client: client.clone(),
        store: store.clone(),
        repo: r.repo.clone(),
        progress,
        retries: target.retries,
        timeout: target.timeout,
    };
    // The config first (small): a single image must match an asked-for platform.
    let mut downloaded = usize::from(puller.blob(&config).await?);
    if let (Some(p), None) = (platform, &platform_v) {
        let (os, arch, variant) = parse_platform(p)?;
        let cd: Digest = config
            .digest
            .parse()
            .map_err(|e| anyhow!("bad digest {}: {e}", config.digest))?;
        let c: Value = serde_json::from_slice(&store.read_blob(&cd)?).unwrap_or_default();
        let same = c["os"].as_str() == Some(os.as_str())
            && c["architecture"].as_str() == Some(arch.as_str())
            && variant.is_none_or(|v| c["variant"].as_str() == Some(v.as_str()));
        if !same {
            bail!(
                "image not found in registry: {what} is a single image for {}, not {p}",
                platform_str(&c)
            );
        }
    }
    let mut blobs = vec![config.clone()];
    for l in &m.layers {
        if !blobs.iter().any(|b| b.digest == l.digest) {
            blobs.push(l.clone());
        }
    }
    let results: Vec<anyhow::Result<bool>> =
        stream::iter(blobs.iter().skip(1).map(|d| puller.blob(d)))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
    for res in results {
        if res? {
            downloaded += 1;
        }
    }
    puller.progress.finish();
    store.put_blob_from(&mut &mbytes[..], Some(&mdigest))?;
    let desc = Descriptor {
        media_type: mmedia,
        digest: mdigest.to_string(),
        size: mbytes.len() as u64,
        artifact_type: None,
        urls: Vec::new(),
        annotations: None,
        platform: platform_v,
    };
    let name = match r.is_digest() {
        true => None,
        false => Some(normalize_ref(image)?),
    };
    store.add_images(&[(name.clone(), desc.clone())])?;
    let host = client
        .base()
        .split_once("://")
        .map_or(client.base(), |(_, h)| h)
        .to_string();
    let mut sources = Sources::load();
    sources.add(&host, &r.repo, blobs.iter().map(|b| b.digest.clone()));
    sources.save();
    Ok(Pulled {
        name,
        digest: digest.to_string(),
        manifest: desc,
        image_id: config.digest.clone(),
        size: blobs.iter().map(|b| b.size).sum(),
        downloaded,
        verified_by,
    })
}

pub async fn pull(target: &Target, a: PullArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let keys = match a.verify_signature {
        true => {
            let ep = target_for(target, &RemoteRef::parse(&a.image)?).endpoint()?;
            let keys = super::signing::public_keys(&a.keys, &ep)?;
            if keys.is_empty() {
                bail!("--verify-signature: no public key: pass --key FILE or set signing.public_keys in the registry's profile");
            }
            Some(keys)
        }
        false => None,
    };
    let p = pull_image_verified(
        target,
        &a.image,
        a.platform.as_deref(),
        Progress::new(a.quiet || a.json),
        keys.as_deref(),
    )
    .await?;
    let client = client_for(target, &RemoteRef::parse(&a.image)?)?;
    if a.json {
        let v = json!({
            "image_id": p.image_id,
            "size": human_size(p.size),
            "size_bytes": p.size,
            "digest": p.digest,
            "manifest_digest": p.manifest.digest,
            "registry_url": client.base(),
            "name": p.name,
            "layers_downloaded": p.downloaded,
            "signature_verified_by": p.verified_by,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else if a.quiet {
        writeln!(out, "{}", p.image_id)?;
    } else {
        if let Some(n) = &p.name {
            writeln!(out, "Pulled {n}")?;
        }
        writeln!(out, "Image ID: {}", short_id(&p.image_id))?;
        writeln!(out, "Size: {}", human_size(p.size))?;
        writeln!(out, "Digest: {}", p.digest)?;
        writeln!(out, "Registry: {}", client.base())?;
        if let Some(k) = &p.verified_by {
            writeln!(out, "Signature: verified with {k}")?;
        }
    }
    Ok(())
}

/// Pulls the base image `agent.yaml` names when the store lacks it (before `agent build`).
pub async fn pull_missing_base(target: &Target, dir: &std::path::Path) -> anyhow::Result<()> {
    let spec = crate::client::build::AgentYaml::read(dir)?;
    let Some(base) = spec.base else { return Ok(()) };
    let store = Store::open_default()?;
    if store.resolve(&base).is_ok() {
        return Ok(());
    }
    eprintln!("base image {base} is not in the local store: pulling it");
    pull_image(target, &base, None, Progress::new(false))
        .await
        .with_context(|| format!("cannot pull the base image {base}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Image info

/// `agent registry image signatures NAME[:TAG]`.
pub async fn signatures(
    target: &Target,
    image: &str,
    keys: &[std::path::PathBuf],
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let r = RemoteRef::parse(image)?;
    let client = client_for(target, &r)?;
    let keys = super::signing::public_keys(keys, &target_for(target, &r).endpoint()?)?;
    let (_, _, digest) = get_manifest(&client, &r.repo, &r.reference).await?;
    super::signing::signatures(&client, &r.repo, &digest, &keys, json_out, out).await
}

async fn get_blob_json(client: &Client, repo: &str, d: &str) -> anyhow::Result<Value> {
    let r = client.get(&format!("/v2/{repo}/blobs/{d}")).await?;
    if !r.status.is_success() {
        return Err(client.status_error(&r, &format!("blob {d}")));
    }
    let digest: Digest = d.parse().map_err(|e| anyhow!("bad digest {d}: {e}"))?;
    if !digest.matches(&r.body) {
        bail!("blob {d} has the wrong content");
    }
    serde_json::from_slice(&r.body).map_err(|e| anyhow!("blob {d} is not JSON: {e}"))
}

pub(super) async fn referrers(client: &Client, repo: &str, d: &str) -> anyhow::Result<Vec<Value>> {
    let r = client.get(&format!("/v2/{repo}/referrers/{d}")).await?;
    if r.status == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    if !r.status.is_success() {
        return Err(client.status_error(&r, &format!("referrers of {d}")));
    }
    let v: Value =
        serde_json::from_slice(&r.body).map_err(|e| anyhow!("referrers of {d}: not JSON: {e}"))?;
    Ok(v["manifests"].as_array().cloned().unwrap_or_default())
}

pub async fn info(
    target: &Target,
    image: &str,
    platform: Option<&str>,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let r = RemoteRef::parse(image)?;
    let client = client_for(target, &r)?;
    let (bytes, media, digest) = get_manifest(&client, &r.repo, &r.reference).await?;
    let v: Value = serde_json::from_slice(&bytes)?;
    let what = format!("{}:{}", r.repo, r.reference);
    let mut info = json!({
        "repository": r.repo,
        "reference": r.reference,
        "digest": digest.to_string(),
        "media_type": media,
        "size": bytes.len(),
        "annotations": v.get("annotations").cloned().unwrap_or(json!({})),
    });
    let (image_v, image_digest) = if index_like(&media, &v) {
        let idx: crate::client::store::ManifestJson = serde_json::from_slice(&bytes)?;
        info["platforms"] = Value::Array(
            idx.manifests
                .iter()
                .map(|c| {
                    json!({
                        "platform": c.platform.as_ref().map(platform_str),
                        "digest": c.digest,
                        "media_type": c.media_type,
                        "size": c.size,
                    })
                })
                .collect(),
        );
        let child = pick_platform(&idx.manifests, platform, &what)?;
        let (b, _, d) = get_manifest(&client, &r.repo, &child.digest).await?;
        info["platform"] = json!(child.platform.as_ref().map(platform_str));
        (serde_json::from_slice::<Value>(&b)?, Some(d.to_string()))
    } else {
        (v.clone(), None)
    };
    let layers: Vec<Value> = image_v["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| json!({"digest": l["digest"], "media_type": l["mediaType"], "size": l["size"]}))
        .collect();
    info["layers"] = Value::Array(layers);
    if let Some(cd) = image_v["config"]["digest"].as_str() {
        let cfg = get_blob_json(&client, &r.repo, cd)
            .await
            .unwrap_or_default();
        info["config"] = json!(cd);
        info["created"] = cfg["created"].clone();
        info["labels"] = cfg["config"]["Labels"].clone();
        if info.get("platform").is_none() {
            if let (Some(os), Some(arch)) = (cfg["os"].as_str(), cfg["architecture"].as_str()) {
                info["platform"] = json!(format!("{os}/{arch}"));
            }
        }
    }
    // Referrers (signatures, SBOMs, reports) of the reference's digest and of the image's.
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut subjects = vec![digest.to_string()];
    subjects.extend(image_digest);
    for s in &subjects {
        for m in referrers(&client, &r.repo, s).await? {
            let t = m["artifactType"].as_str().unwrap_or("(none)").to_string();
            by_type.entry(t).or_default().push(json!({
                "digest": m["digest"],
                "size": m["size"],
                "subject": s,
                "annotations": m.get("annotations").cloned().unwrap_or(json!({})),
            }));
        }
    }
    info["referrers"] = serde_json::to_value(&by_type)?;
    if json_out {
        writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
        return Ok(());
    }
    writeln!(out, "Repository:  {}", r.repo)?;
    writeln!(out, "Reference:   {}", r.reference)?;
    writeln!(out, "Digest:      {digest}")?;
    writeln!(out, "Media type:  {media}")?;
    if let Some(c) = info["created"].as_str() {
        writeln!(out, "Created:     {c}")?;
    }
    if let Some(p) = info["platforms"].as_array() {
        writeln!(out, "Platforms:")?;
        for p in p {
            writeln!(
                out,
                "  {:<16} {}",
                p["platform"].as_str().unwrap_or("-"),
                p["digest"].as_str().unwrap_or("-")
            )?;
        }
    }
    if let Some(p) = info["platform"].as_str() {
        writeln!(out, "Platform:    {p}")?;
    }
    let layers = info["layers"].as_array().cloned().unwrap_or_default();
    let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    writeln!(out, "Layers:      {} ({})", layers.len(), human_size(total))?;
    for l in &layers {
        writeln!(
            out,
            "  {}  {:>10}  {}",
            l["digest"].as_str().unwrap_or("-"),
            human_size(l["size"].as_u64().unwrap_or(0)),
            l["media_type"].as_str().unwrap_or("-")
        )?;
    }
    for (title, key) in [("Labels", "labels"), ("Annotations", "annotations")] {
        if let Some(m) = info[key].as_object().filter(|m| !m.is_empty()) {
            writeln!(out, "{title}:")?;
            for (k, v) in m {
                writeln!(out, "  {k}={}", v.as_str().unwrap_or(&v.to_string()))?;
            }
        }
    }
    if by_type.is_empty() {
        writeln!(out, "Referrers:   none")?;
    } else {
        writeln!(out, "Referrers:")?;
        for (t, list) in &by_type {
            writeln!(out, "  {t}:")?;
            for m in list {
                writeln!(
                    out,
                    "    {}  {}",
                    m["digest"].as_str().unwrap_or("-"),
                    human_size(m["size"].as_u64().unwrap_or(0))
                )?;
            }
        }
    }
    Ok(())
}

/// Uploads a small blob (a signature payload, a config, a report) in one request unless
/// the repository has it; returns its digest.
pub(super) async fn put_small_blob(
    client: &Client,
    repo: &str,
    bytes: &[u8],
) -> anyhow::Result<Digest> {
    let digest = Digest::sha256_of(bytes);
    let head = client
        .send(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}"))
        .await?;
    if head.status.is_success() {
        return Ok(digest);
    }
    let r = client
        .send(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .await?;
    if r.status != StatusCode::ACCEPTED {
        return Err(client.status_error(&r, &format!("upload of {digest}")));
    }
    let location = r
        .headers
        .get(http::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| client.path_of(l))
        .ok_or_else(|| anyhow!("upload of {digest}: the registry sent no usable Location"))?;
    let sep = if location.contains('?') { '&' } else { '?' };
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let r = client
        .execute(
            Method::PUT,
            &format!("{location}{sep}digest={digest}"),
            h,
            Bytes::copy_from_slice(bytes),
        )
        .await?;
    if r.status != StatusCode::CREATED {
        return Err(client.status_error(&r, &format!("upload of {digest}")));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_host_repo_and_reference() {
        let r = RemoteRef::parse("my-agent").unwrap();
        assert_eq!(
            (r.host, r.repo.as_str(), r.reference.as_str()),
            (None, "my-agent", "latest")
        );
        let r = RemoteRef::parse("localhost:5000/agents/x:v1").unwrap();
        assert_eq!(r.host.as_deref(), Some("localhost:5000"));
        assert_eq!((r.repo.as_str(), r.reference.as_str()), ("agents/x", "v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = RemoteRef::parse(&format!("agents/x@{d}")).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.reference, d);
        assert!(RemoteRef::parse("Bad/Name:1").is_err());
        assert!(RemoteRef::parse("x@sha256:zz").is_err());
    }

    #[test]
    fn platforms_pick_the_asked_one_or_the_host() {
        let child = |os: &str, arch: &str, d: &str| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d.into(),
            size: 1,
            artifact_type: None,
            urls: vec![],
            annotations: None,
            platform: Some(json!({"os": os, "architecture": arch})),
        };
        let (os, arch) = crate::client::build::host_platform();
        let c = vec![child("linux", "s390x", "a"), child(os, arch, "b")];
        assert_eq!(pick_platform(&c, None, "x").unwrap().digest, "b");
        assert_eq!(
            pick_platform(&c, Some("linux/s390x"), "x").unwrap().digest,
            "a"
        );
        let e = pick_platform(&c, Some("windows/arm64"), "x")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("image not found in registry"), "{e}");
        assert!(parse_platform("linux").is_err());
    }
}
