//! Signatures on the client: `agent key generate`, the signing step of
//! `agent push --sign`, the check of `agent pull --verify-signature`, and
//! `agent registry image signatures`. The format is [`crate::sign`]'s (cosign's); this
//! module moves it over the OCI distribution API.
//!
//! - Signing: the payload names `HOST/REPO` and the pushed manifest's digest; the
//!   signature manifest under `sha256-<hex>.sig` keeps the signatures already there
//!   (cosign appends the same way) and adds the new one; its `subject` makes the
//!   referrers API list it too.
//! - Finding: the `.sig` tag, then the referrers of the digest whose artifact type is a
//!   signature manifest's; each payload blob is fetched and checked against its digest.
//! - Verifying: a signature counts only when it verifies under one of the keys AND its
//!   payload names the digest being pulled.
//!
//! Keys: `--key`, else the profile's `signing.key` / `signing.public_keys`, else (for
//! signing) `cosign.key` in the current directory. Private keys' password comes from
//! `COSIGN_PASSWORD` (unset = empty, as cosign's non-interactive mode).

use super::http::Client;
use super::profile::{host_of, Endpoint};
use crate::oci::manifest::OCI_MANIFEST;
use crate::oci::Digest;
use crate::sign::{self, Desc, NamedKey, PrivateKey, PublicKey, Verdict};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The largest payload blob fetched (a simple-signing payload is a few hundred bytes).
const MAX_PAYLOAD: u64 = 64 << 10;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate an ECDSA P-256 key pair that cosign can use too: NAME.key (cosign's
    /// encrypted format, password from COSIGN_PASSWORD, empty when unset) and NAME.pub.
    Generate {
        /// NAME of the files written (NAME.key, NAME.pub); existing files are not replaced.
        #[arg(long, default_value = "cosign", value_name = "NAME")]
        output_key_prefix: String,
    },
}

/// `COSIGN_PASSWORD`, empty when unset.
fn password() -> Vec<u8> {
    std::env::var("COSIGN_PASSWORD")
        .map(String::into_bytes)
        .unwrap_or_default()
}

pub fn key(cmd: KeyCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let KeyCommand::Generate { output_key_prefix } = cmd;
    let private = PathBuf::from(format!("{output_key_prefix}.key"));
    let public = PathBuf::from(format!("{output_key_prefix}.pub"));
    for p in [&private, &public] {
        if p.exists() {
            bail!(
                "{} exists: refusing to overwrite it (choose another --output-key-prefix)",
                p.display()
            );
        }
    }
    if std::env::var_os("COSIGN_PASSWORD").is_none() {
        eprintln!(
            "COSIGN_PASSWORD is not set: the private key is encrypted with an empty password"
        );
    }
    let k = PrivateKey::generate();
    let sealed = k.to_cosign_pem(&password())?;
    let pubpem = k.public_key().to_pem()?;
    write_new(&private, sealed.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&public, pubpem.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&private);
        return Err(e);
    }
    writeln!(out, "Private key written to {}", private.display())?;
    writeln!(out, "Public key written to {}", public.display())?;
    Ok(())
}

/// Creates `path` (never replacing a file) with `mode` and `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The private key `agent push --sign` signs with: `--key`, the profile's `signing.key`,
/// else `cosign.key` in the current directory.
pub fn signing_key(flag: Option<&Path>, ep: &Endpoint) -> anyhow::Result<(PathBuf, PrivateKey)> {
    let path = match (flag, ep.profile.as_ref().and_then(|p| p.signing.key.clone())) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(k)) => PathBuf::from(k),
        (None, None) if Path::new("cosign.key").exists() => PathBuf::from("cosign.key"),
        (None, None) => bail!(
            "no signing key: pass --key FILE, set signing.key in the registry's profile, or create cosign.key here with `agent key generate`"
        ),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    let k = PrivateKey::from_pem(&text, &password())
        .map_err(|e| anyhow!("signing key {}: {e}", path.display()))?;
    Ok((path, k))
}

/// The public keys to verify with: the `--key` files, else the profile's
/// `signing.public_keys`.
pub fn public_keys(flags: &[PathBuf], ep: &Endpoint) -> anyhow::Result<Vec<NamedKey>> {
    let paths: Vec<PathBuf> = match flags.is_empty() {
        false => flags.to_vec(),
        true => ep
            .profile
            .as_ref()
            .map(|p| p.signing.public_keys.iter().map(PathBuf::from).collect())
            .unwrap_or_default(),
    };
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read public key {}", p.display()))?;
            let key = PublicKey::from_pem(&text)
                .map_err(|e| anyhow!("public key {}: {e}", p.display()))?;
            Ok(NamedKey {
                name: p.display().to_string(),
                key,
            })
        })
        .collect()
}

/// `host[:port]/repo`: the `docker-reference` of a payload.
fn docker_reference(client: &Client, repo: &str) -> String {
    format!("{}/{repo}", host_of(client.base()))
}

/// GETs manifest `reference` of `repo` (an OCI image manifest); `None` when the registry
/// has none. Checked against its digest when `reference` is one.
async fn fetch_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
) -> anyhow::Result<Option<(Bytes, Digest)>> {
    let mut h = HeaderMap::new();
    h.insert(http::header::ACCEPT, HeaderValue::from_static(OCI_MANIFEST));
    let r = client
        .execute(
            Method::GET,
            &format!("/v2/{repo}/manifests/{reference}"),
            h,
            Bytes::new(),
        )
        .await?;
    if r.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !r.status.is_success() {
        return Err(client.status_error(&r, &format!("manifest {repo}:{reference}")));
    }
    let actual = Digest::sha256_of(&r.body);
    if let Ok(d) = reference.parse::<Digest>() {
        if !d.matches(&r.body) {
            bail!("manifest {repo}@{d} has the wrong content: it hashes to {actual}");
        }
    }
    Ok(Some((r.body, actual)))
}

/// Signs the manifest `subject` of `repo` with `key` and pushes the signature: the
/// payload and config blobs, then the signature manifest under `sha256-<hex>.sig`.
/// Returns that tag.
pub async fn sign_image(
    client: &Client,
    repo: &str,
    subject: Desc,
    key: &PrivateKey,
) -> anyhow::Result<String> {
    let digest: Digest = subject
        .digest
        .parse()
        .map_err(|e| anyhow!("bad digest {}: {e}", subject.digest))?;
    let payload = sign::payload(&docker_reference(client, repo), &digest);
    let signature = key.sign(&payload);
    let tag = sign::signature_tag(&digest);
    let existing = fetch_manifest(client, repo, &tag).await?;
    let built = sign::signature_manifest(
        existing.as_ref().map(|(b, _)| &b[..]),
        &payload,
        &signature,
        subject,
    )?;
    super::transfer::put_small_blob(client, repo, &built.payload).await?;
    super::transfer::put_small_blob(client, repo, &built.config).await?;
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(OCI_MANIFEST),
    );
    let r = client
        .execute(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            h,
            Bytes::from(built.manifest),
        )
        .await?;
    if r.status != StatusCode::CREATED {
        return Err(client.status_error(&r, &format!("signature {repo}:{tag}")));
    }
    Ok(tag)
}

/// One signature found for an image.
#[derive(Debug, Clone)]
pub struct Found {
    /// The signature manifest's digest.
    pub manifest: String,
    /// `tag` (the `.sig` tag) or `referrers`.
    pub found_by: &'static str,
    pub layer: Desc,
    /// The base64 DER signature.
    pub signature: String,
    /// The payload bytes, or why they could not be had.
    pub payload: Result<Bytes, String>,
}

/// The signatures of `repo@digest`: those of the `.sig` tag's manifest, then those of
/// signature manifests the referrers API lists.
pub async fn find_signatures(
    client: &Client,
    repo: &str,
    digest: &Digest,
) -> anyhow::Result<Vec<Found>> {
    let mut manifests: Vec<(String, &'static str, Bytes)> = Vec::new();
    if let Some((b, d)) = fetch_manifest(client, repo, &sign::signature_tag(digest)).await? {
        manifests.push((d.to_string(), "tag", b));
    }
    let r = client
        .get(&format!("/v2/{repo}/referrers/{digest}"))
        .await?;
    if r.status.is_success() {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        for m in v["manifests"].as_array().into_iter().flatten() {
            let (Some(d), t) = (m["digest"].as_str(), m["artifactType"].as_str()) else {
                continue;
            };
            let signature_like = matches!(
                t,
                Some(sign::CONFIG_MEDIA_TYPE) | Some(sign::SIMPLE_SIGNING_MEDIA_TYPE) | None
            );
            if !signature_like || manifests.iter().any(|(md, _, _)| md == d) {
                continue;
            }
            if let Some((b, _)) = fetch_manifest(client, repo, d).await? {
                manifests.push((d.to_string(), "referrers", b));
            }
        }
    } else if matches!(
        r.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) || r.status.is_server_error()
    {
        return Err(client.status_error(&r, &format!("referrers of {repo}@{digest}")));
    }
    // Any other answer (404, 400, 405) is a registry without the referrers API: the
    // `.sig` tag is then the only place signatures are.
    let mut found: Vec<Found> = Vec::new();
    for (md, by, bytes) in manifests {
        // A referrer that is not a signature manifest has no signature layers.
        let Ok(layers) = sign::signature_layers(&bytes) else {
            continue;
        };
        for l in layers {
            if found
                .iter()
                .any(|f| f.layer.digest == l.layer.digest && f.signature == l.signature)
            {
                continue;
            }
            let payload = fetch_payload(client, repo, &l.layer).await?;
            found.push(Found {
                manifest: md.clone(),
                found_by: by,
                layer: l.layer,
                signature: l.signature,
                payload,
            });
        }
    }
    Ok(found)
}

/// A payload blob, checked against its digest; `Err(reason)` when it cannot be had.
async fn fetch_payload(
    client: &Client,
    repo: &str,
    layer: &Desc,
) -> anyhow::Result<Result<Bytes, String>> {
    let Ok(d) = layer.digest.parse::<Digest>() else {
        return Ok(Err(format!("bad payload digest {}", layer.digest)));
    };
    if layer.size > MAX_PAYLOAD {
        return Ok(Err(format!(
            "payload {d} is {} bytes, more than a signature payload's {MAX_PAYLOAD}",
            layer.size
        )));
    }
    let r = client.get(&format!("/v2/{repo}/blobs/{d}")).await?;
    if !r.status.is_success() {
        return Ok(Err(format!(
            "payload {d}: registry answered HTTP {}",
            r.status.as_u16()
        )));
    }
    if !d.matches(&r.body) {
        return Ok(Err(format!(
            "payload {d} has the wrong content (it hashes to {})",
            Digest::sha256_of(&r.body)
        )));
    }
    Ok(Ok(r.body))
}

/// The verdict on one found signature.
pub fn judge(f: &Found, digest: &Digest, keys: &[NamedKey]) -> Verdict {
    match &f.payload {
        Ok(p) => sign::verify(p, &f.signature, digest, keys),
        Err(reason) => Verdict::Unverified {
            reason: reason.clone(),
        },
    }
}

/// Succeeds with the key that verifies a signature of `repo@digest`; otherwise says why
/// no signature does.
pub async fn verify_image(
    client: &Client,
    repo: &str,
    digest: &Digest,
    keys: &[NamedKey],
) -> anyhow::Result<String> {
    if keys.is_empty() {
        bail!("no public key to verify signatures with: pass --key FILE or set signing.public_keys in the registry's profile");
    }
    let found = find_signatures(client, repo, digest).await?;
    if found.is_empty() {
        bail!(
            "signature verification failed: {repo}@{digest} is not signed (no {} tag, no signature referrer)",
            sign::signature_tag(digest)
        );
    }
    let mut reasons = Vec::new();
    for f in &found {
        match judge(f, digest, keys) {
            Verdict::Verified { key } => return Ok(key),
            Verdict::Unverified { reason } => reasons.push(format!("{}: {reason}", f.layer.digest)),
        }
    }
    bail!(
        "signature verification failed: no signature of {repo}@{digest} verifies ({})",
        reasons.join("; ")
    )
}

/// `agent registry image signatures NAME[:TAG]`.
pub async fn signatures(
    client: &Client,
    repo: &str,
    digest: &Digest,
    keys: &[NamedKey],
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let found = find_signatures(client, repo, digest).await?;
    let list: Vec<Value> = found
        .iter()
        .map(|f| {
            let claim = f
                .payload
                .as_ref()
                .ok()
                .and_then(|p| sign::parse_payload(p).ok());
            let (verified, key, reason) = match judge(f, digest, keys) {
                Verdict::Verified { key } => (true, Some(key), None),
                Verdict::Unverified { reason } => (false, None, Some(reason)),
            };
            json!({
                "manifest": f.manifest,
                "found_by": f.found_by,
                "payload": f.layer.digest,
                "signature": f.signature,
                "docker_reference": claim.as_ref().map(|c| c.docker_reference.clone()),
                "signed_digest": claim.as_ref().map(|c| c.digest.clone()),
                "verified": verified,
                "key": key,
                "reason": reason,
            })
        })
        .collect();
    if json_out {
        let v = json!({
            "repository": repo,
            "digest": digest.to_string(),
            "signatures": list,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    if list.is_empty() {
        writeln!(out, "{repo}@{digest}: no signatures")?;
        return Ok(());
    }
    writeln!(out, "Signatures of {repo}@{digest}:")?;
    for s in &list {
        let status = match (&s["key"], &s["reason"]) {
            (Value::String(k), _) => format!("verified by {k}"),
            (_, Value::String(r)) => format!("unverified ({r})"),
            _ => "unverified".to_string(),
        };
        writeln!(
            out,
            "  {}  {}  {status}",
            s["payload"].as_str().unwrap_or("-"),
            s["found_by"].as_str().unwrap_or("-"),
        )?;
    }
    Ok(())
}
