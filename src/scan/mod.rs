//! Vulnerability reports: one [`Summary`] from a report in any of three real formats, and
//! the [`Severity`] scale a pull policy compares against.
//!
//! - SARIF 2.1.0 (`application/sarif+json`, `trivy --format sarif`, `grype -o sarif`):
//!   see [`sarif`].
//! - CycloneDX 1.4-1.6 JSON with `vulnerabilities` (`application/vnd.cyclonedx+json`):
//!   see [`cyclonedx`].
//! - Trivy's own JSON (`trivy --format json`, [`TRIVY_JSON`]): see [`trivy`].
//!
//! Any of them may arrive wrapped as an in-toto attestation (`cosign attest --type
//! vuln|cyclonedx`): a DSSE envelope, or a sigstore bundle holding one, whose payload is an
//! in-toto statement carrying the report in `predicate` (or, for cosign's vuln predicate,
//! in `predicate.scanner.result`); [`parse`] unwraps it (see [`intoto`]).
//!
//! The format is told from the content, not from a media type, so a report attached with a
//! generic or wrong `artifactType` still reads. Pure code: no I/O, no HTTP.

pub mod cyclonedx;
pub mod intoto;
pub mod sarif;
pub mod trivy;

use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// SARIF's registered media type (what `oras attach --artifact-type` users write).
pub const SARIF: &str = "application/sarif+json";
/// CycloneDX JSON.
pub const CYCLONEDX: &str = "application/vnd.cyclonedx+json";
/// Trivy's native JSON report (the type Aqua's tooling and oras users attach it under).
pub const TRIVY_JSON: &str = "application/vnd.aquasec.trivy.report+json";
/// A DSSE envelope (cosign's attestation layers; `cosign attest` with OCI 1.1 referrers).
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
/// An in-toto statement, unsigned.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// The prefix of the sigstore bundle media types (`...bundle.v0.3+json`).
pub const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle";

/// How bad a finding is. Ordered: `Unknown < Low < Medium < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// Every severity, highest first.
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Unknown => "unknown",
        }
    }

    /// A severity word as scanners write it, any case: critical, high, medium or moderate,
    /// low, negligible/info/informational/none (all low), unknown. `None` for anything else.
    pub fn from_label(s: &str) -> Option<Severity> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" | "negligible" | "info" | "informational" | "none" => Severity::Low,
            "unknown" | "unspecified" => Severity::Unknown,
            _ => return None,
        })
    }

    /// A CVSS base score: 9.0+ critical, 7.0+ high, 4.0+ medium, above 0 low; 0 (what
    /// Trivy writes for an unrated finding) or out of range: unknown.
    pub fn from_score(score: f64) -> Severity {
        match score {
            s if !(0.0..=10.0).contains(&s) => Severity::Unknown,
            s if s >= 9.0 => Severity::Critical,
            s if s >= 7.0 => Severity::High,
            s if s >= 4.0 => Severity::Medium,
            s if s > 0.0 => Severity::Low,
            _ => Severity::Unknown,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy threshold: `critical`, `high`, `medium` or `low` (any case).
impl FromStr for Severity {
    type Err = ReportError;
    fn from_str(s: &str) -> Result<Severity, ReportError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Ok(Severity::Critical),
            "high" => Ok(Severity::High),
            "medium" => Ok(Severity::Medium),
            "low" => Ok(Severity::Low),
            _ => Err(ReportError(format!(
                "invalid severity {s:?}: expected critical, high, medium or low"
            ))),
        }
    }
}

/// Why a report could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReportError(pub String);

/// The three report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Sarif,
    CycloneDx,
    Trivy,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Sarif => SARIF,
            Format::CycloneDx => CYCLONEDX,
            Format::Trivy => TRIVY_JSON,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Sarif => "SARIF",
            Format::CycloneDx => "CycloneDX",
            Format::Trivy => "Trivy JSON",
        }
    }

    /// The format of a parsed JSON document, from its shape.
    pub fn detect(v: &Value) -> Option<Format> {
        if v["runs"].is_array() && (v["version"].is_string() || v.get("$schema").is_some()) {
            Some(Format::Sarif)
        } else if v["bomFormat"].as_str() == Some("CycloneDX") {
            Some(Format::CycloneDx)
        } else if v["Results"].is_array()
            || (v.get("SchemaVersion").is_some() && v.get("ArtifactName").is_some())
        {
            Some(Format::Trivy)
        } else {
            None
        }
    }
}

/// Whether a referrer's `artifactType` (or a layer's media type) may carry a report: one
/// of the three formats, or an attestation that may wrap one. Parameters
/// (`; version=1.5`) are ignored.
pub fn is_report_type(media_type: &str) -> bool {
    let t = media_type.split(';').next().unwrap_or("").trim();
    matches!(t, SARIF | CYCLONEDX | TRIVY_JSON | DSSE | IN_TOTO)
        || t.starts_with(SIGSTORE_BUNDLE)
        || t == "application/vnd.cyclonedx"
}

/// The media type to attach a report document under: its format's, or its wrapper's
/// (DSSE envelope, sigstore bundle, in-toto statement). `None` for other documents.
pub fn media_type_of(v: &Value) -> Option<String> {
    if let Some(f) = Format::detect(v) {
        return Some(f.media_type().to_string());
    }
    if v["payloadType"].is_string() && v["payload"].is_string() {
        return Some(DSSE.to_string());
    }
    if v["dsseEnvelope"].is_object() {
        return Some(
            text(&v["mediaType"])
                .filter(|m| m.starts_with(SIGSTORE_BUNDLE))
                .unwrap_or_else(|| format!("{SIGSTORE_BUNDLE}.v0.3+json")),
        );
    }
    if v["_type"]
        .as_str()
        .is_some_and(|t| t.starts_with("https://in-toto.io/Statement"))
    {
        return Some(IN_TOTO.to_string());
    }
    None
}

/// One vulnerability in one package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// CVE-..., GHSA-..., or the scanner's own id.
    pub id: String,
    pub severity: Severity,
    pub package: Option<String>,
    pub installed: Option<String>,
    /// The version that fixes it, when the scanner knows one.
    pub fixed: Option<String>,
    pub title: Option<String>,
}

/// Findings per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub critical: usize,
    pub high: usize,
    pub medium: usize,
    pub low: usize,
    pub unknown: usize,
}

impl Counts {
    pub fn get(&self, s: Severity) -> usize {
        match s {
            Severity::Critical => self.critical,
            Severity::High => self.high,
            Severity::Medium => self.medium,
            Severity::Low => self.low,
            Severity::Unknown => self.unknown,
        }
    }

    fn add(&mut self, s: Severity) {
        match s {
            Severity::Critical => self.critical += 1,
            Severity::High => self.high += 1,
            Severity::Medium => self.medium += 1,
            Severity::Low => self.low += 1,
            Severity::Unknown => self.unknown += 1,
        }
    }

    pub fn total(&self) -> usize {
        Severity::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Findings at `min` or above.
    pub fn at_or_above(&self, min: Severity) -> usize {
        Severity::ALL
            .iter()
            .filter(|s| **s >= min)
            .map(|s| self.get(*s))
            .sum()
    }

    /// `"2 critical, 1 high"`: the non-zero counts at `min` or above, highest first
    /// (`"none"` when there are none): what a refusal message names.
    pub fn describe_at_or_above(&self, min: Severity) -> String {
        let parts: Vec<String> = Severity::ALL
            .iter()
            .filter(|s| **s >= min && self.get(**s) > 0)
            .map(|s| format!("{} {s}", self.get(*s)))
            .collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// The tool that wrote a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scanner {
    pub name: Option<String>,
    pub version: Option<String>,
}

impl fmt::Display for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, &self.version) {
            (Some(n), Some(v)) => write!(f, "{n} {v}"),
            (Some(n), None) => f.write_str(n),
            (None, Some(v)) => write!(f, "unknown scanner {v}"),
            (None, None) => f.write_str("unknown scanner"),
        }
    }
}

/// What a report says, whatever its format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub format: Format,
    pub scanner: Scanner,
    /// When the scan ran, as the report states it (RFC 3339), if it does.
    pub created: Option<String>,
    /// The in-toto `predicateType` when the report came wrapped in an attestation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    pub counts: Counts,
    /// Highest severity first, then by id and package; exact duplicates removed.
    pub findings: Vec<Finding>,
}

impl Summary {
    /// Builds a summary: sorts the findings, removes duplicates, counts them.
    pub fn new(
        format: Format,
        scanner: Scanner,
        created: Option<String>,
        mut findings: Vec<Finding>,
    ) -> Summary {
        findings.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.package.cmp(&b.package))
                .then_with(|| a.installed.cmp(&b.installed))
        });
        findings
            .dedup_by(|a, b| a.id == b.id && a.package == b.package && a.installed == b.installed);
        let mut counts = Counts::default();
        for f in &findings {
            counts.add(f.severity);
        }
        Summary {
            format,
            scanner,
            created,
            predicate_type: None,
            counts,
            findings,
        }
    }

    /// How many findings are at `min` or above: what `block_vulnerabilities = "high"`
    /// compares with zero.
    pub fn at_or_above(&self, min: Severity) -> usize {
        self.counts.at_or_above(min)
    }

    /// The highest severity found, `None` for a clean report.
    pub fn highest(&self) -> Option<Severity> {
        self.findings.first().map(|f| f.severity)
    }
}

/// Reads a report: SARIF, CycloneDX or Trivy JSON, bare or wrapped in an in-toto
/// attestation (DSSE envelope, sigstore bundle or bare statement).
pub fn parse(bytes: &[u8]) -> Result<Summary, ReportError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ReportError(format!("the report is not JSON: {e}")))?;
    parse_value(&v)
}

/// [`parse`] of an already parsed document.
pub fn parse_value(v: &Value) -> Result<Summary, ReportError> {
    if let Some(f) = Format::detect(v) {
        return parse_as(f, v);
    }
    if let Some(statement) = intoto::statement(v)? {
        return intoto::summary(&statement);
    }
    Err(ReportError(
        "the document is not a SARIF, CycloneDX or Trivy JSON report, nor an in-toto attestation carrying one".into(),
    ))
}

fn parse_as(f: Format, v: &Value) -> Result<Summary, ReportError> {
    match f {
        Format::Sarif => sarif::parse(v),
        Format::CycloneDx => cyclonedx::parse(v),
        Format::Trivy => trivy::parse(v),
    }
}

/// A non-empty trimmed string at `v`.
pub(crate) fn text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_and_parse() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::High > Severity::Medium);
        assert!(Severity::Medium > Severity::Low);
        assert!(Severity::Low > Severity::Unknown);
        for s in ["critical", "high", "medium", "low"] {
            assert_eq!(s.parse::<Severity>().unwrap().as_str(), s);
        }
        assert_eq!("HIGH".parse::<Severity>().unwrap(), Severity::High);
        let e = "severe".parse::<Severity>().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid severity \"severe\": expected critical, high, medium or low"
        );
        assert!("unknown".parse::<Severity>().is_err());
        assert_eq!(Severity::from_label("Moderate"), Some(Severity::Medium));
        assert_eq!(Severity::from_label("Negligible"), Some(Severity::Low));
        assert_eq!(Severity::from_label("vulnerability"), None);
        assert_eq!(Severity::from_score(9.8), Severity::Critical);
        assert_eq!(Severity::from_score(7.0), Severity::High);
        assert_eq!(Severity::from_score(5.5), Severity::Medium);
        assert_eq!(Severity::from_score(0.1), Severity::Low);
        assert_eq!(Severity::from_score(0.0), Severity::Unknown);
        assert_eq!(Severity::from_score(11.0), Severity::Unknown);
    }

    fn finding(id: &str, s: Severity, pkg: &str) -> Finding {
        Finding {
            id: id.into(),
            severity: s,
            package: Some(pkg.into()),
            installed: Some("1".into()),
            fixed: None,
            title: None,
        }
    }

    #[test]
    fn summary_sorts_counts_and_answers_at_or_above() {
        let s = Summary::new(
            Format::Trivy,
            Scanner::default(),
            None,
            vec![
                finding("CVE-3", Severity::Low, "c"),
                finding("CVE-1", Severity::Critical, "a"),
                finding("CVE-2", Severity::High, "b"),
                finding("CVE-2", Severity::High, "b"),
                finding("CVE-4", Severity::Unknown, "d"),
                finding("CVE-5", Severity::High, "a"),
            ],
        );
        let ids: Vec<&str> = s.findings.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["CVE-1", "CVE-2", "CVE-5", "CVE-3", "CVE-4"]);
        assert_eq!(
            s.counts,
            Counts {
                critical: 1,
                high: 2,
                medium: 0,
                low: 1,
                unknown: 1
            }
        );
        assert_eq!(s.at_or_above(Severity::Critical), 1);
        assert_eq!(s.at_or_above(Severity::High), 3);
        assert_eq!(s.at_or_above(Severity::Medium), 3);
        assert_eq!(s.at_or_above(Severity::Low), 4);
        assert_eq!(s.counts.total(), 5);
        assert_eq!(s.highest(), Some(Severity::Critical));
        assert_eq!(
            s.counts.describe_at_or_above(Severity::High),
            "1 critical, 2 high"
        );
        let clean = Summary::new(Format::Sarif, Scanner::default(), None, vec![]);
        assert_eq!(clean.at_or_above(Severity::Low), 0);
        assert_eq!(clean.counts.describe_at_or_above(Severity::Low), "none");
        assert_eq!(clean.highest(), None);
    }

    #[test]
    fn report_types_are_recognised_with_parameters() {
        assert!(is_report_type(SARIF));
        assert!(is_report_type(
            "application/vnd.cyclonedx+json; version=1.5"
        ));
        assert!(is_report_type(TRIVY_JSON));
        assert!(is_report_type(DSSE));
        assert!(is_report_type(
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        ));
        assert!(!is_report_type(
            "application/vnd.dev.cosign.simplesigning.v1+json"
        ));
        assert!(!is_report_type("application/vnd.oci.image.config.v1+json"));
        let m = |v: Value| media_type_of(&v);
        assert_eq!(
            m(serde_json::json!({"version": "2.1.0", "runs": []})).as_deref(),
            Some(SARIF)
        );
        assert_eq!(
            m(serde_json::json!({"bomFormat": "CycloneDX"})).as_deref(),
            Some(CYCLONEDX)
        );
        assert_eq!(
            m(serde_json::json!({"SchemaVersion": 2, "ArtifactName": "x"})).as_deref(),
            Some(TRIVY_JSON)
        );
        assert_eq!(
            m(serde_json::json!({"payloadType": "x", "payload": ""})).as_deref(),
            Some(DSSE)
        );
        assert_eq!(m(serde_json::json!({"a": 1})), None);
    }

    #[test]
    fn other_json_is_refused_with_a_clear_error() {
        let e = parse(br#"{"hello": "world"}"#).unwrap_err().to_string();
        assert!(
            e.contains("not a SARIF, CycloneDX or Trivy JSON report"),
            "{e}"
        );
        let e = parse(b"not json").unwrap_err().to_string();
        assert!(e.starts_with("the report is not JSON"), "{e}");
    }
}
