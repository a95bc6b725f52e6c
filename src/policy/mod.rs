//! Pull policies (`[policy]`, and `agent registry policy set` at run time): what a
//! manifest GET or HEAD must satisfy before it is served.
//!
//! - vulnerabilities: the newest report attached to the requested digest (a referrer
//!   whose `artifactType` is a report or attestation type, or a layer of cosign's
//!   `sha256-<hex>.att` tag) must have no finding at or above `block_vulnerabilities`;
//!   a manifest with no report follows `unscanned` (an index passes: its children are
//!   checked when they are requested).
//! - signatures: a manifest of a repository one of `[[policy.signatures]]` matches must
//!   carry a cosign signature (the `.sig` tag or a signature referrer) that verifies with
//!   one of the rule's keys and names this digest.
//!
//! Manifests that only carry supply-chain metadata (every layer a signature payload, a
//! report or an attestation) are exempt: they are checked through their subject.
//!
//! The verdicts are decided here, for hosted and mirrored content alike: the handlers
//! give a [`Source`] that reads what the policy needs (their storage, or the upstream
//! through the mirror path). Nothing here knows HTTP. A verified signature is cached as
//! (rule, digest) under the policy [`Policies::version`]: a change of the policy bumps the
//! version and empties the cache, so it applies to the next request.

use crate::oci::Digest;
use crate::scan::{self, Severity, Summary};
use crate::sign::{self, NamedKey, PublicKey, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// A signature payload is tiny; anything larger is not one.
const MAX_PAYLOAD: u64 = 64 << 10;
/// A report blob read for a verdict.
const MAX_REPORT: u64 = 32 << 20;
/// Report referrers opened per verdict, at most.
const MAX_REPORTS: usize = 16;
/// Signature manifests opened per verdict, at most.
const MAX_SIGNATURES: usize = 16;
/// Cached verdicts, at most (the cache is emptied when full).
const MAX_VERDICTS: usize = 100_000;
/// Where the policy set at run time is kept, in the data directory.
pub const FILE: &str = "policy.json";
/// The annotation a report's attach date is read from.
const CREATED: &str = "org.opencontainers.image.created";

/// What a [`Source`] answers: its error is a message naming what failed.
pub type Fetch<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// Reads what a verdict needs from where the manifest lives: hosted storage, or the
/// upstream through the mirror path (and its cache).
pub trait Source: Send + Sync {
    /// The bytes of the manifest a tag or digest names; `None` when there is none.
    fn manifest<'a>(&'a self, reference: &'a str) -> Fetch<'a, Option<Vec<u8>>>;
    /// A blob's bytes, checked against `digest`; `None` when missing or over `limit`.
    fn blob<'a>(&'a self, digest: &'a Digest, limit: u64) -> Fetch<'a, Option<Vec<u8>>>;
    /// The referrers of `digest` (the descriptors of the referrers index); empty when
    /// there are none or the registry has no referrers API.
    fn referrers<'a>(&'a self, digest: &'a Digest) -> Fetch<'a, Vec<Value>>;
}

/// Which policy refused (the `policy` label of `agent_registry_policy_denied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Signature,
    Vulnerability,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Signature => "signature",
            Kind::Vulnerability => "vulnerability",
        }
    }
}

/// A policy's objection to a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Objection {
    pub kind: Kind,
    pub message: String,
}

/// The verdict on one manifest: refused (the first objection of an enforced policy), and
/// objections of `mode = "warn"` rules, which are logged and counted but do not refuse.
#[derive(Debug, Default)]
pub struct Decision {
    pub refused: Option<Objection>,
    pub warnings: Vec<Objection>,
}

/// What to do with a manifest that has no vulnerability report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unscanned {
    Allow,
    Block,
}

impl Unscanned {
    pub fn parse(s: &str) -> Result<Unscanned, String> {
        match s {
            "allow" => Ok(Unscanned::Allow),
            "block" => Ok(Unscanned::Block),
            _ => Err(format!(
                "unscanned must be \"allow\" or \"block\", not {s:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unscanned::Allow => "allow",
            Unscanned::Block => "block",
        }
    }
}

/// Parses a `block_vulnerabilities` value: `""` (or `"none"`) for no threshold.
pub fn parse_threshold(s: &str) -> Result<Option<Severity>, String> {
    match s.trim() {
        "" | "none" => Ok(None),
        t => match t.parse::<Severity>().ok() {
            Some(s) if s != Severity::Unknown => Ok(Some(s)),
            _ => Err(format!(
                "block_vulnerabilities must be \"critical\", \"high\", \"medium\", \"low\" or \"\", not {t:?}"
            )),
        },
    }
}

/// One `[[policy.signatures]]` rule with its keys loaded.
#[derive(Debug, Clone)]
pub struct SignatureRule {
    /// Patterns of repositories as routed (`agents/prod/*`, `docker.io/myorg/*`); `*`
    /// matches any characters, `/` too.
    pub repos: Vec<String>,
    pub keys: Vec<NamedKey>,
    /// `false` for `mode = "warn"`.
    pub enforce: bool,
    /// The key files, as configured (for `policy show`).
    pub key_files: Vec<PathBuf>,
}

impl SignatureRule {
    /// Loads the rule's PEM public keys; errors name the file.
    pub fn load(
        repos: Vec<String>,
        key_files: Vec<PathBuf>,
        enforce: bool,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        for f in &key_files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("policy key {}: {e}", f.display()))?;
            let key = PublicKey::from_pem(&text)
                .map_err(|e| format!("policy key {}: {e}", f.display()))?;
            keys.push(NamedKey {
                name: f.display().to_string(),
                key,
            });
        }
        Ok(SignatureRule {
            repos,
            keys,
            enforce,
            key_files,
        })
    }

    pub fn matches(&self, repo: &str) -> bool {
        self.repos.iter().any(|p| glob(p, repo))
    }
}

/// `*` matches any run of characters (`/` too); everything else literally.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// The vulnerability settings made at run time (`agent registry policy set`): they take
/// the place of the config's until `policy clear`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// `""` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_vulnerabilities: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unscanned: Option<Unscanned>,
}

/// The vulnerability settings in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vulnerabilities {
    pub block: Option<Severity>,
    pub unscanned: Unscanned,
}

struct Verdicts {
    version: u64,
    /// (rule index, digest) whose signature verified (or whose index's did).
    allowed: HashSet<(usize, String)>,
}

/// The vulnerability settings in effect: the override's where it has them, else `base`.
fn effective(base: Vulnerabilities, o: &Override) -> Vulnerabilities {
    Vulnerabilities {
        block: match &o.block_vulnerabilities {
            Some(b) => parse_threshold(b).ok().flatten(),
            None => base.block,
        },
        unscanned: o.unscanned.unwrap_or(base.unscanned),
    }
}

impl Vulnerabilities {
    /// Whether these settings can refuse anything.
    fn active(self) -> bool {
        self.block.is_some() || self.unscanned == Unscanned::Block
    }
}

/// The pull policies of a server: the config's, the run-time override, the verdict cache.
pub struct Policies {
    base: Vulnerabilities,
    signatures: Vec<SignatureRule>,
    runtime: RwLock<Override>,
    version: AtomicU64,
    /// Whether a vulnerability setting is in effect: kept by `new` and `set`, so a server
    /// without policies answers `applies` with two loads, no lock and no allocation.
    vuln_active: AtomicBool,
    verdicts: Mutex<Verdicts>,
    /// Where the override is persisted; `None` keeps it in memory only.
    file: Option<PathBuf>,
}

impl Policies {
    /// The policies of the config, with the override persisted in `data_dir` (if any).
    pub fn new(
        base: Vulnerabilities,
        signatures: Vec<SignatureRule>,
        data_dir: Option<&Path>,
    ) -> Result<Policies, String> {
        let file = data_dir.map(|d| d.join(FILE));
        let runtime = match &file {
            Some(f) => match std::fs::read(f) {
                Ok(b) => serde_json::from_slice::<Override>(&b)
                    .map_err(|e| format!("policy file {}: {e}", f.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Override::default(),
                Err(e) => return Err(format!("policy file {}: {e}", f.display())),
            },
            None => Override::default(),
        };
        if let Some(b) = &runtime.block_vulnerabilities {
            parse_threshold(b).map_err(|e| format!("policy file: {e}"))?;
        }
        let vuln_active = effective(base, &runtime).active();
        Ok(Policies {
            base,
            signatures,
            runtime: RwLock::new(runtime),
            version: AtomicU64::new(1),
            vuln_active: AtomicBool::new(vuln_active),
            verdicts: Mutex::new(Verdicts {
                version: 1,
                allowed: HashSet::new(),
            }),
            file,
        })
    }

    /// No policy at all: every manifest passes.
    pub fn none() -> Policies {
        let base = Vulnerabilities {
            block: None,
            unscanned: Unscanned::Allow,
        };
        // Infallible without a file.
        Policies {
            base,
            signatures: Vec::new(),
            runtime: RwLock::new(Override::default()),
            version: AtomicU64::new(1),
            vuln_active: AtomicBool::new(false),
            verdicts: Mutex::new(Verdicts {
                version: 1,
                allowed: HashSet::new(),
            }),
            file: None,
        }
    }

    /// Bumped by every change: cached verdicts of older versions are not used.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn signature_rules(&self) -> &[SignatureRule] {
        &self.signatures
    }

    pub fn runtime(&self) -> Override {
        self.runtime.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// The vulnerability settings in effect: the override's, else the config's.
    pub fn vulnerabilities(&self) -> Vulnerabilities {
        effective(self.base, &self.runtime())
    }

    /// The config's vulnerability settings.
    pub fn configured(&self) -> Vulnerabilities {
        self.base
    }

    /// Sets (`Some`) or clears (`None`) the run-time override: persisted first, then in
    /// effect, with a new version. Returns the new version.
    pub fn set(&self, o: Option<Override>) -> Result<u64, String> {
        let o = o.unwrap_or_default();
        if let Some(b) = &o.block_vulnerabilities {
            parse_threshold(b)?;
        }
        if let Some(f) = &self.file {
            if o == Override::default() {
                match std::fs::remove_file(f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("policy file {}: {e}", f.display())),
                }
            } else {
                let tmp = f.with_extension("json.tmp");
                let bytes = serde_json::to_vec_pretty(&o).map_err(|e| e.to_string())?;
                std::fs::write(&tmp, bytes)
                    .and_then(|_| std::fs::rename(&tmp, f))
                    .map_err(|e| format!("policy file {}: {e}", f.display()))?;
            }
        }
        let mut r = self
            .runtime
            .write()
            .map_err(|_| "policy state poisoned".to_string())?;
        self.vuln_active
            .store(effective(self.base, &o).active(), Ordering::Release);
        *r = o;
        Ok(self.version.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Whether any policy is in effect at all (the warm path's test, before it even
    /// names the repository).
    pub fn is_active(&self) -> bool {
        self.vuln_active.load(Ordering::Acquire) || !self.signatures.is_empty()
    }

    /// Whether any policy applies to `repo` (a quick test before any fetching).
    pub fn applies(&self, repo: &str) -> bool {
        self.vuln_active.load(Ordering::Acquire) || self.signatures.iter().any(|r| r.matches(repo))
    }

    fn cached(&self, rule: usize, digest: &str, version: u64) -> bool {
        let Ok(v) = self.verdicts.lock() else {
            return false;
        };
        v.version == version && v.allowed.contains(&(rule, digest.to_string()))
    }

    fn remember(&self, rule: usize, digests: impl IntoIterator<Item = String>, version: u64) {
        let Ok(mut v) = self.verdicts.lock() else {
            return;
        };
        if v.version != version {
            if version < v.version {
                return;
            }
            v.version = version;
            v.allowed.clear();
        }
        if v.allowed.len() >= MAX_VERDICTS {
            v.allowed.clear();
        }
        for d in digests {
            v.allowed.insert((rule, d));
        }
    }

    /// The verdict on manifest `digest` (bytes `manifest`) of repository `repo` as routed.
    pub async fn check(
        &self,
        repo: &str,
        digest: &Digest,
        manifest: &[u8],
        src: &dyn Source,
    ) -> Decision {
        let mut decision = Decision::default();
        let doc: Value = serde_json::from_slice(manifest).unwrap_or_default();
        if is_metadata(&doc) {
            return decision;
        }
        let index = is_index(&doc);
        let version = self.version();
        for (i, rule) in self.signatures.iter().enumerate() {
            if !rule.matches(repo) {
                continue;
            }
            if self.cached(i, &digest.to_string(), version) {
                continue;
            }
            match signed(digest, &rule.keys, src).await {
                Ok(key) => {
                    tracing::debug!(repo, digest = %digest, key, "signature verified by policy");
                    let mut allowed = vec![digest.to_string()];
                    if index {
                        allowed.extend(children(&doc));
                    }
                    self.remember(i, allowed, version);
                }
                Err(reason) => {
                    let o = Objection {
                        kind: Kind::Signature,
                        message: format!(
                            "refused by policy: {repo}@{digest} has no signature that verifies with the policy's keys ({reason})"
                        ),
                    };
                    if rule.enforce {
                        decision.refused = Some(o);
                        return decision;
                    }
                    decision.warnings.push(o);
                }
            }
        }
        let v = self.vulnerabilities();
        if v.block.is_none() && v.unscanned == Unscanned::Allow {
            return decision;
        }
        match newest_report(digest, src).await {
            Ok(Some((where_, s))) => {
                if let Some(min) = v.block {
                    if s.at_or_above(min) > 0 {
                        decision.refused = Some(Objection {
                            kind: Kind::Vulnerability,
                            message: format!(
                                "refused by policy: {} vulnerabilities at or above {min} in {where_}",
                                s.counts.describe_at_or_above(min)
                            ),
                        });
                    }
                }
            }
            Ok(None) if v.unscanned == Unscanned::Block && !index => {
                decision.refused = Some(Objection {
                    kind: Kind::Vulnerability,
                    message: format!(
                        "refused by policy: {repo}@{digest} has no vulnerability report (unscanned = \"block\")"
                    ),
                });
            }
            Ok(None) => {}
            Err(e) => {
                decision.refused = Some(Objection {
                    kind: Kind::Vulnerability,
                    message: format!(
                        "refused by policy: the vulnerability reports of {repo}@{digest} cannot be read: {e}"
                    ),
                });
            }
        }
        decision
    }
}

/// An index (or manifest list): it names child manifests.
fn is_index(doc: &Value) -> bool {
    doc["manifests"].is_array()
}

fn children(doc: &Value) -> Vec<String> {
    doc["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["digest"].as_str().map(str::to_string))
        .collect()
}

/// A manifest that only carries supply-chain metadata: every layer (there is one at
/// least) a signature payload, a report or an attestation. Nothing in it can run.
fn is_metadata(doc: &Value) -> bool {
    let Some(layers) = doc["layers"].as_array() else {
        return false;
    };
    !layers.is_empty()
        && layers.iter().all(|l| {
            let t = l["mediaType"].as_str().unwrap_or_default();
            t == sign::SIMPLE_SIGNING_MEDIA_TYPE || scan::is_report_type(t)
        })
}

/// The key that verifies a signature of `digest`, else why none does.
async fn signed(digest: &Digest, keys: &[NamedKey], src: &dyn Source) -> Result<String, String> {
    let mut manifests: Vec<(String, Vec<u8>)> = Vec::new();
    let tag = sign::signature_tag(digest);
    if let Some(b) = src.manifest(&tag).await? {
        manifests.push((tag.clone(), b));
    }
    for r in src.referrers(digest).await? {
        if manifests.len() >= MAX_SIGNATURES {
            break;
        }
        let t = r["artifactType"].as_str();
        let signature_like = matches!(
            t,
            Some(sign::CONFIG_MEDIA_TYPE) | Some(sign::SIMPLE_SIGNING_MEDIA_TYPE) | None
        );
        let Some(d) = r["digest"].as_str().filter(|_| signature_like) else {
            continue;
        };
        if let Some(b) = src.manifest(d).await? {
            manifests.push((d.to_string(), b));
        }
    }
    let mut reasons = Vec::new();
    for (name, bytes) in &manifests {
        let Ok(layers) = sign::signature_layers(bytes) else {
            continue;
        };
        for l in layers {
            let Ok(pd) = l.layer.digest.parse::<Digest>() else {
                reasons.push(format!("{name}: bad payload digest {}", l.layer.digest));
                continue;
            };
            let Some(payload) = src.blob(&pd, MAX_PAYLOAD).await? else {
                reasons.push(format!("{name}: payload {pd} missing"));
                continue;
            };
            match sign::verify(&payload, &l.signature, digest, keys) {
                Verdict::Verified { key } => return Ok(key),
                Verdict::Unverified { reason } => reasons.push(reason),
            }
        }
    }
    if reasons.is_empty() {
        return Err(format!(
            "not signed: no {tag} tag and no signature referrer"
        ));
    }
    reasons.dedup();
    Err(reasons.join("; "))
}

/// The newest readable report attached to `digest`, and where it is.
async fn newest_report(
    digest: &Digest,
    src: &dyn Source,
) -> Result<Option<(String, Summary)>, String> {
    let mut found: Vec<(Option<String>, String, Summary)> = Vec::new();
    let mut opened = 0;
    for r in src.referrers(digest).await? {
        let t = r["artifactType"].as_str().unwrap_or_default();
        if !scan::is_report_type(t) || opened >= MAX_REPORTS {
            continue;
        }
        let Some(d) = r["digest"].as_str() else {
            continue;
        };
        opened += 1;
        let Some(bytes) = src.manifest(d).await? else {
            continue;
        };
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let attached = r["annotations"][CREATED]
            .as_str()
            .or_else(|| doc["annotations"][CREATED].as_str())
            .map(str::to_string);
        if let Some(s) = report_in(&doc, true, src).await? {
            found.push((attached, format!("report {d}"), s));
        }
    }
    if let Some(hex) = digest.to_string().strip_prefix("sha256:") {
        let tag = format!("sha256-{hex}.att");
        if let Some(bytes) = src.manifest(&tag).await? {
            let doc: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let attached = doc["annotations"][CREATED].as_str().map(str::to_string);
            if let Some(s) = report_in(&doc, true, src).await? {
                found.push((attached, format!("attestation {tag}"), s));
            }
        }
    }
    // Newest by the report's own date, else its attach date; the last found wins ties.
    let when = |(attached, _, s): &(Option<String>, String, Summary)| {
        s.created
            .as_deref()
            .and_then(crate::client::list::parse_rfc3339)
            .or_else(|| {
                attached
                    .as_deref()
                    .and_then(crate::client::list::parse_rfc3339)
            })
            .unwrap_or(i64::MIN)
    };
    let mut best: Option<(i64, String, Summary)> = None;
    for f in found {
        let w = when(&f);
        if best.as_ref().is_none_or(|(bw, _, _)| w >= *bw) {
            best = Some((w, f.1, f.2));
        }
    }
    Ok(best.map(|(_, w, s)| (w, s)))
}

/// The first layer of a referrer manifest that reads as a report.
async fn report_in(
    doc: &Value,
    any_layer: bool,
    src: &dyn Source,
) -> Result<Option<Summary>, String> {
    for l in doc["layers"].as_array().into_iter().flatten().take(8) {
        let t = l["mediaType"].as_str().unwrap_or_default();
        if !any_layer && !scan::is_report_type(t) {
            continue;
        }
        let Some(d) = l["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else {
            continue;
        };
        let Some(bytes) = src.blob(&d, MAX_REPORT).await? else {
            continue;
        };
        if let Ok(s) = scan::parse(&bytes) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;

/// The policies `[policy]` configures, the override kept in `data_dir` applied; errors
/// name the key file or the policy file.
pub fn from_config(c: &crate::config::PolicyConfig, data_dir: &Path) -> Result<Policies, String> {
    let block = match &c.block_vulnerabilities {
        Some(b) => parse_threshold(b)?,
        None => None,
    };
    let base = Vulnerabilities {
        block,
        unscanned: match c.block_unscanned {
            true => Unscanned::Block,
            false => Unscanned::Allow,
        },
    };
    let rules = c
        .signatures
        .iter()
        .map(|s| SignatureRule::load(s.repos.clone(), s.keys.clone(), s.enforce))
        .collect::<Result<Vec<_>, _>>()?;
    Policies::new(base, rules, Some(data_dir))
}
