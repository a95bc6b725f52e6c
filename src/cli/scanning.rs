//! `agent push --security-scan` and `agent registry image scan-results`: vulnerability
//! reports attached to an image as OCI referrers, read with [`crate::scan`].
//!
//! The scanner: the profile's `scan.command` (the profile named by `--profile`, else
//! `default`), else `trivy`, else `grype` on `PATH`. A command line is run by `sh -c` with
//! its placeholders replaced by shell-quoted values:
//!
//! - `{image}`: an OCI archive (a tar, what `agent save` writes) of the pushed image;
//! - `{dir}`: an OCI image layout directory holding only the pushed image;
//! - `{format}`: `sarif`, the format asked for;
//! - `{ref}`: the pushed image in the registry, `HOST/REPO@DIGEST`.
//!
//! Its standard output is the report: SARIF, CycloneDX, Trivy JSON, or an in-toto
//! attestation carrying one (told from the content). Trivy runs as `trivy image --quiet
//! --input {image} --format {format}`, Grype as `grype oci-dir:{dir} -o {format} -q`.
//!
//! The report is attached to the pushed manifest as an OCI image manifest with
//! `artifactType` = the report's media type, the empty config
//! (`application/vnd.oci.empty.v1+json`, `{}`), one layer (the report), `subject` = the
//! image and the annotation `org.opencontainers.image.created`, pushed by digest, so the
//! referrers API lists it, as it lists what `oras attach` and `cosign attest` leave.
//! `scan-results` also reads cosign's `sha256-<hex>.att` tag for registries without
//! referrers.

use super::http::Client;
use super::transfer::{self, RemoteRef};
use super::Target;
use crate::client::store::Store;
use crate::oci::manifest::{Descriptor, OCI_MANIFEST};
use crate::oci::Digest;
use crate::scan::{self, Severity, Summary};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The empty config of an artifact manifest.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The annotation holding when a referrer was made.
pub const CREATED: &str = "org.opencontainers.image.created";
/// Reports larger than this are not read by `scan-results`.
const MAX_REPORT: u64 = 128 << 20;
/// Referrers of unknown type whose manifests are opened to look for a report layer.
const MAX_OPENED: usize = 32;

const TRIVY_LINE: &str = "trivy image --quiet --input {image} --format {format}";
const GRYPE_LINE: &str = "grype oci-dir:{dir} -o {format} -q";

/// A scanner command line and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCommand {
    pub line: String,
    /// `scan.command of profile NAME`, `trivy`, `grype`.
    pub source: String,
}

/// The scanner to run: `profile_command` (with the name of its profile), else trivy, else
/// grype on `path` (a `PATH` value).
pub fn find_scanner(
    profile_command: Option<(String, String)>,
    path: Option<&std::ffi::OsStr>,
) -> anyhow::Result<ScanCommand> {
    if let Some((profile, line)) = profile_command {
        return Ok(ScanCommand {
            line,
            source: format!("scan.command of profile {profile}"),
        });
    }
    for (tool, line) in [("trivy", TRIVY_LINE), ("grype", GRYPE_LINE)] {
        if which(tool, path).is_some() {
            return Ok(ScanCommand {
                line: line.to_string(),
                source: tool.to_string(),
            });
        }
    }
    bail!("no vulnerability scanner found: looked for the profile's scan.command, then trivy and grype on PATH; install one or set scan.command")
}

fn which(tool: &str, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path?)
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The `scan.command` of the profile named by `--profile`, else of `default`.
fn profile_command(target: &Target) -> anyhow::Result<Option<(String, String)>> {
    let Some(file) = super::profile::ConfigFile::load()? else {
        return Ok(None);
    };
    let name = target.profile.as_deref().unwrap_or("default");
    Ok(file
        .profile(name)?
        .and_then(|p| p.scan_command)
        .map(|c| (name.to_string(), c)))
}

/// `'s'` for `sh`: the value as one word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `line` with its placeholders replaced by shell-quoted `values`.
pub fn expand(line: &str, values: &[(&str, &str)]) -> String {
    let mut out = line.to_string();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), &shell_quote(v));
    }
    out
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("agent-scan-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)
            .with_context(|| format!("cannot create scan directory {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an OCI layout at `dir` holding `local_ref` (its manifests and blobs only).
fn export_layout(store: &Store, local_ref: &str, d: &Descriptor, dir: &Path) -> anyhow::Result<()> {
    let dst = Store::open(dir)?;
    let only = crate::client::store::Index {
        manifests: vec![d.clone()],
        ..Default::default()
    };
    for digest in store.reachable(&only)? {
        let (from, to) = (store.blob_path(&digest), dst.blob_path(&digest));
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy blob {digest} for the scanner"))?;
        }
    }
    dst.set_tag(local_ref, d)
}

/// A report attached to an image.
pub struct Attached {
    /// The digest of the referrer manifest.
    pub digest: String,
    pub artifact_type: String,
    pub summary: Summary,
    pub scanner: ScanCommand,
}

impl Attached {
    pub fn to_json(&self) -> Value {
        json!({
            "report_digest": self.digest,
            "artifact_type": self.artifact_type,
            "scanner_command": self.scanner.source,
            "scanner": self.summary.scanner,
            "counts": self.summary.counts,
            "total": self.summary.counts.total(),
        })
    }
}

/// Runs the scanner on the pushed image `d` (`local_ref` in the store), then attaches its
/// report to `d` in `repo` as a referrer.
pub async fn scan_and_attach(
    target: &Target,
    client: &Client,
    store: &Store,
    repo: &str,
    local_ref: &str,
    d: &Descriptor,
) -> anyhow::Result<Attached> {
    let scanner = find_scanner(
        profile_command(target)?,
        std::env::var_os("PATH").as_deref(),
    )?;
    let work = TempDir::new()?;
    let host = super::profile::host_of(client.base());
    let remote = format!("{host}/{repo}@{}", d.digest);
    let image_tar = work.0.join("image.tar");
    let layout = work.0.join("layout");
    if scanner.line.contains("{image}") {
        let mut f = std::fs::File::create(&image_tar)
            .with_context(|| format!("cannot create {}", image_tar.display()))?;
        crate::client::archive::save(store, &[local_ref.to_string()], &mut f)?;
    }
    if scanner.line.contains("{dir}") {
        export_layout(store, local_ref, d, &layout)?;
    }
    let line = expand(
        &scanner.line,
        &[
            ("image", &image_tar.to_string_lossy()),
            ("dir", &layout.to_string_lossy()),
            ("format", "sarif"),
            ("ref", &remote),
        ],
    );
    let out = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&line)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run the scanner ({}): {line}", scanner.source))?;
    let stderr_tail = String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string();
    let parsed = serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| scan::media_type_of(&v).map(|m| (v, m)));
    let Some((_, media_type)) = parsed else {
        if !out.status.success() {
            bail!(
                "the scanner ({}) failed with {}: {stderr_tail}",
                scanner.source,
                out.status
            );
        }
        bail!(
            "the scanner ({}) printed no SARIF, CycloneDX or Trivy JSON report on its standard output",
            scanner.source
        );
    };
    let summary = scan::parse(&out.stdout)
        .map_err(|e| anyhow!("the scanner's report ({}): {e}", scanner.source))?;
    if !out.status.success() {
        eprintln!(
            "agent: the scanner ({}) exited with {}; its report is attached",
            scanner.source, out.status
        );
    }
    let digest = attach(client, store, repo, d, &media_type, out.stdout).await?;
    Ok(Attached {
        digest,
        artifact_type: media_type,
        summary,
        scanner,
    })
}

/// Pushes `report` as a referrer of `d` (a manifest in the local store) in `repo`.
/// Returns the referrer's digest.
async fn attach(
    client: &Client,
    store: &Store,
    repo: &str,
    d: &Descriptor,
    media_type: &str,
    report: Vec<u8>,
) -> anyhow::Result<String> {
    let subject_digest: Digest = d
        .digest
        .parse()
        .map_err(|e| anyhow!("bad digest {}: {e}", d.digest))?;
    let subject_bytes = store.read_blob(&subject_digest)?;
    let subject_type = match d.media_type.as_str() {
        "" => serde_json::from_slice::<Value>(&subject_bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| OCI_MANIFEST.to_string()),
        m => m.to_string(),
    };
    let empty = super::transfer::put_small_blob(client, repo, b"{}").await?;
    let size = report.len();
    let layer = super::transfer::put_small_blob(client, repo, &report).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": media_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": 2},
        "layers": [{"mediaType": media_type, "digest": layer.to_string(), "size": size}],
        "subject": {"mediaType": subject_type, "digest": d.digest, "size": subject_bytes.len()},
        "annotations": {CREATED: crate::auth::store::rfc3339(now)},
    });
    let bytes = serde_json::to_vec(&manifest)?;
    let digest = Digest::sha256_of(&bytes);
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(OCI_MANIFEST),
    );
    let r = client
        .execute(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{digest}"),
            h,
            Bytes::from(bytes),
        )
        .await?;
    if r.status != StatusCode::CREATED {
        return Err(client.status_error(&r, &format!("report manifest {repo}@{digest}")));
    }
    Ok(digest.to_string())
}

/// `agent push --security-scan`: scans each pushed `(tag, descriptor)` of local `name`
/// and records the outcome in its entry of `results` (`security_scan`). Returns the first
/// failure, worded so it is clear the image itself was pushed.
pub async fn scan_all(
    target: &Target,
    client: &Client,
    store: &Store,
    name: &str,
    tags: &[(String, Descriptor)],
    results: &mut [Value],
    quiet: bool,
) -> Option<anyhow::Error> {
    // One scan per digest: tags of the same image share its report.
    let mut done: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    for ((tag, d), res) in tags.iter().zip(results.iter_mut()) {
        if let Some(v) = done.get(&d.digest) {
            res["security_scan"] = v.clone();
            continue;
        }
        let repo = res["repository"].as_str().unwrap_or_default().to_string();
        let local_ref = format!("{name}:{tag}");
        if !quiet {
            eprintln!("scanning {repo}:{tag} ({})", d.digest);
        }
        match scan_and_attach(target, client, store, &repo, &local_ref, d).await {
            Ok(a) => {
                res["security_scan"] = a.to_json();
                done.insert(d.digest.clone(), a.to_json());
            }
            Err(e) => {
                return Some(anyhow!(
                    "{repo}:{tag} was pushed ({}) but not scanned: {e:#}",
                    d.digest
                ))
            }
        }
    }
    None
}

/// The push output's lines for a `security_scan` entry (nothing when there is none).
pub fn print_scan(v: &Value, out: &mut dyn Write) -> anyhow::Result<()> {
    if v.is_null() {
        return Ok(());
    }
    let c = &v["counts"];
    let counts = Severity::ALL
        .iter()
        .map(|s| format!("{} {s}", c[s.as_str()].as_u64().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    let scanner = match (
        v["scanner"]["name"].as_str(),
        v["scanner"]["version"].as_str(),
    ) {
        (Some(n), Some(ver)) => format!("{n} {ver}"),
        (Some(n), None) => n.to_string(),
        _ => v["scanner_command"]
            .as_str()
            .unwrap_or("scanner")
            .to_string(),
    };
    writeln!(out, "Security scan: {counts} ({scanner})")?;
    writeln!(
        out,
        "Scan report: {} ({})",
        v["report_digest"].as_str().unwrap_or("-"),
        v["artifact_type"].as_str().unwrap_or("-")
    )?;
    Ok(())
}

/// `1 critical, 2 high, 0 medium, 0 low, 0 unknown`.
pub fn counts_line(s: &Summary) -> String {
    Severity::ALL
        .iter()
        .map(|v| format!("{} {v}", s.counts.get(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// scan-results

/// A report found among an image's referrers (or under cosign's `.att` tag).
struct Found {
    manifest: String,
    artifact_type: String,
    layer: String,
    attached: Option<String>,
    source: &'static str,
    subject: String,
    summary: Summary,
}

impl Found {
    /// The report's own date, else when it was attached, as seconds.
    fn when(&self) -> Option<i64> {
        self.summary
            .created
            .as_deref()
            .and_then(crate::client::list::parse_rfc3339)
            .or_else(|| {
                self.attached
                    .as_deref()
                    .and_then(crate::client::list::parse_rfc3339)
            })
    }
}

async fn get_blob(client: &Client, repo: &str, d: &Value) -> anyhow::Result<Bytes> {
    let digest_s = d["digest"].as_str().unwrap_or_default();
    let digest: Digest = digest_s
        .parse()
        .map_err(|e| anyhow!("bad digest {digest_s:?}: {e}"))?;
    if d["size"].as_u64().unwrap_or(0) > MAX_REPORT {
        bail!("blob {digest} is larger than {MAX_REPORT} bytes");
    }
    let r = client.get(&format!("/v2/{repo}/blobs/{digest}")).await?;
    if !r.status.is_success() {
        return Err(client.status_error(&r, &format!("blob {digest}")));
    }
    if !digest.matches(&r.body) {
        bail!("blob {digest} has the wrong content");
    }
    Ok(r.body)
}

/// The first layer of `manifest` that reads as a report.
async fn report_in(
    client: &Client,
    repo: &str,
    manifest: &Value,
    any_layer: bool,
    errors: &mut Vec<String>,
) -> Option<(String, Summary)> {
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    for l in layers.iter().take(8) {
        let media = l["mediaType"].as_str().unwrap_or_default();
        if !any_layer && !scan::is_report_type(media) {
            continue;
        }
        let parsed = match get_blob(client, repo, l).await {
            Ok(b) => scan::parse(&b).map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match parsed {
            Ok(s) => return Some((l["digest"].as_str().unwrap_or_default().to_string(), s)),
            Err(e) => errors.push(format!("{}: {e:#}", l["digest"].as_str().unwrap_or("?"))),
        }
    }
    None
}

/// Every readable report attached to `subject`.
async fn reports_of(
    client: &Client,
    repo: &str,
    subject: &str,
    errors: &mut Vec<String>,
) -> anyhow::Result<Vec<Found>> {
    let mut found = Vec::new();
    let mut opened = 0;
    for m in transfer::referrers(client, repo, subject).await? {
        let artifact_type = m["artifactType"].as_str().unwrap_or_default().to_string();
        let known = scan::is_report_type(&artifact_type);
        let other = artifact_type.starts_with("application/vnd.dev.cosign")
            || artifact_type == "application/vnd.oci.image.config.v1+json";
        if !known && (other || opened >= MAX_OPENED) {
            continue;
        }
        opened += usize::from(!known);
        let Some(digest) = m["digest"].as_str() else {
            continue;
        };
        let (bytes, _, _) = match transfer::get_manifest(client, repo, digest).await {
            Ok(x) => x,
            Err(e) => {
                errors.push(format!("{digest}: {e:#}"));
                continue;
            }
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if let Some((layer, summary)) = report_in(client, repo, &v, known, errors).await {
            let attached = m["annotations"][CREATED]
                .as_str()
                .or_else(|| v["annotations"][CREATED].as_str())
                .map(str::to_string);
            found.push(Found {
                manifest: digest.to_string(),
                artifact_type,
                layer,
                attached,
                source: "referrers",
                subject: subject.to_string(),
                summary,
            });
        }
    }
    // cosign's tag scheme: sha256-<hex>.att, one DSSE layer per attestation.
    if let Some(hex) = subject.strip_prefix("sha256:") {
        let tag = format!("sha256-{hex}.att");
        if let Ok((bytes, _, d)) = transfer::get_manifest(client, repo, &tag).await {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            for l in v["layers"].as_array().cloned().unwrap_or_default() {
                let one = json!({"layers": [l.clone()]});
                if let Some((layer, summary)) = report_in(client, repo, &one, true, errors).await {
                    found.push(Found {
                        manifest: d.to_string(),
                        artifact_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
                        layer,
                        attached: v["annotations"][CREATED].as_str().map(str::to_string),
                        source: "cosign .att tag",
                        subject: subject.to_string(),
                        summary,
                    });
                }
            }
        }
    }
    Ok(found)
}

pub async fn scan_results(
    target: &Target,
    image: &str,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let r = RemoteRef::parse(image)?;
    let client = transfer::client_for(target, &r)?;
    let (bytes, media, digest) = transfer::get_manifest(&client, &r.repo, &r.reference).await?;
    let v: Value = serde_json::from_slice(&bytes)?;
    let mut subjects = vec![digest.to_string()];
    if transfer::index_like(&media, &v) {
        let idx: crate::client::store::ManifestJson = serde_json::from_slice(&bytes)?;
        let what = format!("{}:{}", r.repo, r.reference);
        if let Ok(child) = transfer::pick_platform(&idx.manifests, None, &what) {
            subjects.push(child.digest.clone());
        }
    }
    let mut errors = Vec::new();
    let mut found = Vec::new();
    for s in &subjects {
        found.extend(reports_of(&client, &r.repo, s, &mut errors).await?);
    }
    // The newest; on equal dates (or none) the later one found.
    let newest = found
        .into_iter()
        .enumerate()
        .max_by_key(|(i, f)| (f.when(), *i))
        .map(|(_, f)| f);
    let what = format!("{}:{}", r.repo, r.reference);
    let Some(f) = newest else {
        if let Some(e) = errors.last() {
            bail!(
                "no readable vulnerability report is attached to {what} ({digest}): {} unreadable, the last: {e}",
                errors.len()
            );
        }
        bail!("no vulnerability report is attached to {what} ({digest}): attach one with `agent push --security-scan` or `oras attach --artifact-type application/sarif+json`");
    };
    let s = &f.summary;
    if json_out {
        let mut v = serde_json::to_value(s)?;
        v["repository"] = json!(r.repo);
        v["reference"] = json!(r.reference);
        v["digest"] = json!(digest.to_string());
        v["total"] = json!(s.counts.total());
        v["report"] = json!({
            "digest": f.manifest,
            "subject": f.subject,
            "artifact_type": f.artifact_type,
            "layer": f.layer,
            "attached": f.attached,
            "source": f.source,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(out, "Image:     {what} ({digest})")?;
    writeln!(
        out,
        "Report:    {} ({}, {}, via {})",
        f.manifest,
        s.format.name(),
        f.artifact_type,
        f.source
    )?;
    writeln!(out, "Scanner:   {}", s.scanner)?;
    let date = s.created.as_deref().or(f.attached.as_deref());
    writeln!(out, "Scanned:   {}", date.unwrap_or("unknown"))?;
    writeln!(out, "Findings:  {} ({})", s.counts.total(), counts_line(s))?;
    const SHOWN: usize = 20;
    for x in s.findings.iter().take(SHOWN) {
        let pkg = match (&x.package, &x.installed) {
            (Some(p), Some(v)) => format!("{p} {v}"),
            (Some(p), None) => p.clone(),
            _ => "-".to_string(),
        };
        let fix = x
            .fixed
            .as_deref()
            .map_or_else(|| "no fix".to_string(), |f| format!("fixed in {f}"));
        writeln!(
            out,
            "  {:<8}  {:<20}  {pkg}  ({fix})",
            x.severity.as_str().to_ascii_uppercase(),
            x.id
        )?;
    }
    if s.findings.len() > SHOWN {
        writeln!(
            out,
            "  ... and {} more (--json lists them all)",
            s.findings.len() - SHOWN
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_shell_quoted() {
        let l = expand(
            "scan {image} --dir={dir} -f {format} {ref} {other}",
            &[
                ("image", "/tmp/a b.tar"),
                ("dir", "/tmp/it's"),
                ("format", "sarif"),
                ("ref", "h/r@sha256:1"),
            ],
        );
        assert_eq!(
            l,
            r"scan '/tmp/a b.tar' --dir='/tmp/it'\''s' -f 'sarif' 'h/r@sha256:1' {other}"
        );
    }

    #[test]
    fn the_scanner_is_the_profile_command_then_trivy_then_grype() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("agent-scan-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.as_os_str();
        let e = find_scanner(None, Some(path)).unwrap_err().to_string();
        assert!(
            e.starts_with("no vulnerability scanner found: looked for the profile's scan.command, then trivy and grype"),
            "{e}"
        );
        let grype = dir.join("grype");
        std::fs::write(&grype, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&grype, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_scanner(None, Some(path)).unwrap().source, "grype");
        let trivy = dir.join("trivy");
        std::fs::write(&trivy, "#!/bin/sh\n").unwrap();
        // Not executable: not a scanner.
        assert_eq!(find_scanner(None, Some(path)).unwrap().source, "grype");
        std::fs::set_permissions(&trivy, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = find_scanner(None, Some(path)).unwrap();
        assert_eq!((t.source.as_str(), t.line.as_str()), ("trivy", TRIVY_LINE));
        let p = find_scanner(Some(("ci".into(), "my-scan {dir}".into())), Some(path)).unwrap();
        assert_eq!(p.source, "scan.command of profile ci");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
