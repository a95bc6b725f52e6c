//! CycloneDX 1.4-1.6 JSON with a `vulnerabilities` array (`trivy --format cyclonedx
//! --scanners vuln`, `grype -o cyclonedx-json`). A document without one is an SBOM and is
//! refused: it says nothing about vulnerabilities, so it must not read as a clean scan.
//!
//! Each vulnerability names the components it affects through `affects[].ref` (a
//! `bom-ref` of `metadata.component` or of `components`, nested ones included): one
//! finding per affected component. Severity: the highest `ratings[].severity`, else the
//! highest `ratings[].score` as CVSS. Fixed version: an `affects[].versions[]` entry with
//! `status: "unaffected"`, else the version in a `recommendation` of the form "Upgrade X
//! to [version] Y". Scanner: `metadata.tools` (1.4: an array of tools; 1.5+: `{components:
//! [...]}`). Date: `metadata.timestamp`.

use super::{text, Finding, Format, ReportError, Scanner, Severity, Summary};
use serde_json::Value;
use std::collections::HashMap;

pub fn parse(v: &Value) -> Result<Summary, ReportError> {
    // An SBOM (syft, `trivy --format cyclonedx` without vulnerability scanning) has no
    // `vulnerabilities`: it says nothing about them, so it must not read as a clean scan.
    if !v["vulnerabilities"].is_array() {
        return Err(ReportError(
            "CycloneDX document without a vulnerabilities array: an SBOM, not a vulnerability report".into(),
        ));
    }
    let mut components: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    collect(&v["metadata"]["component"], &mut components);
    for c in v["components"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        collect(c, &mut components);
    }
    let mut findings = Vec::new();
    for vuln in v["vulnerabilities"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let id = text(&vuln["id"]).unwrap_or_default();
        let severity = severity(&vuln["ratings"]);
        let title = text(&vuln["description"])
            .or_else(|| text(&vuln["detail"]))
            .map(|t| t.lines().next().unwrap_or_default().to_string());
        let recommended = vuln["recommendation"]
            .as_str()
            .and_then(recommended_version);
        let affects = vuln["affects"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let mut push =
            |package: Option<String>, installed: Option<String>, fixed: Option<String>| {
                findings.push(Finding {
                    id: id.clone(),
                    severity,
                    package,
                    installed,
                    fixed: fixed.or_else(|| recommended.clone()),
                    title: title.clone(),
                })
            };
        if affects.is_empty() {
            push(None, None, None);
        }
        for a in affects {
            let r = a["ref"].as_str().unwrap_or_default();
            let (name, version) = components.get(r).cloned().unwrap_or_else(|| purl_parts(r));
            let versions = a["versions"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let with_status = |st: &str| {
                versions
                    .iter()
                    .find(|x| x["status"].as_str() == Some(st))
                    .and_then(|x| text(&x["version"]))
            };
            let installed = version.or_else(|| with_status("affected"));
            push(name, installed, with_status("unaffected"));
        }
    }
    Ok(Summary::new(
        Format::CycloneDx,
        tools(&v["metadata"]["tools"]),
        text(&v["metadata"]["timestamp"]),
        findings,
    ))
}

fn collect(c: &Value, out: &mut HashMap<String, (Option<String>, Option<String>)>) {
    if !c.is_object() {
        return;
    }
    let name = text(&c["name"]).map(|n| match text(&c["group"]) {
        Some(g) => format!("{g}/{n}"),
        None => n,
    });
    let entry = (name, text(&c["version"]));
    if let Some(r) = text(&c["bom-ref"]) {
        out.insert(r, entry.clone());
    }
    if let Some(p) = text(&c["purl"]) {
        out.entry(p).or_insert(entry);
    }
    for child in c["components"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        collect(child, out);
    }
}

/// Name and version from a package URL (`pkg:deb/debian/openssl@3.0.11?arch=amd64`), the
/// fallback when `ref` names no component of the document.
fn purl_parts(r: &str) -> (Option<String>, Option<String>) {
    let Some(rest) = r.strip_prefix("pkg:") else {
        return (Some(r.to_string()).filter(|r| !r.is_empty()), None);
    };
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (path, version) = match rest.rsplit_once('@') {
        Some((p, v)) => (p, Some(v.to_string())),
        None => (rest, None),
    };
    let name = path.rsplit('/').next().map(str::to_string);
    (name, version)
}

fn severity(ratings: &Value) -> Severity {
    let ratings = ratings.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let labelled = ratings
        .iter()
        .filter_map(|r| r["severity"].as_str().and_then(Severity::from_label))
        .filter(|s| *s != Severity::Unknown)
        .max();
    labelled
        .or_else(|| {
            ratings
                .iter()
                .filter_map(|r| r["score"].as_f64().map(Severity::from_score))
                .max()
        })
        .unwrap_or(Severity::Unknown)
}

/// "Upgrade openssl to version 3.0.12" / "Upgrade openssl to 3.0.12".
fn recommended_version(r: &str) -> Option<String> {
    let r = r.trim();
    if !r.to_ascii_lowercase().starts_with("upgrade ") {
        return None;
    }
    let (_, after) = r.rsplit_once(" to ")?;
    let after = after.trim().trim_start_matches("version ").trim();
    let v = after
        .split_whitespace()
        .next()?
        .trim_end_matches(['.', ',']);
    Some(v.to_string()).filter(|v| !v.is_empty())
}

fn tools(t: &Value) -> Scanner {
    let list: Vec<&Value> = match t {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o
            .get("components")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    list.first()
        .map(|t| Scanner {
            name: text(&t["name"]),
            version: text(&t["version"]),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cyclonedx_1_5_resolves_refs_and_takes_the_highest_rating() {
        let v = json!({
            "bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
            "metadata": {
                "timestamp": "2024-06-01T12:00:00+00:00",
                "tools": {"components": [{"type": "application", "group": "aquasecurity", "name": "trivy", "version": "0.52.0"}]},
                "component": {"bom-ref": "img", "type": "container", "name": "agents/x"}
            },
            "components": [
                {"bom-ref": "pkg:deb/debian/openssl@3.0.11?arch=amd64", "type": "library", "name": "openssl", "version": "3.0.11",
                 "components": [{"bom-ref": "nested", "name": "libssl3", "version": "3.0.11"}]}
            ],
            "vulnerabilities": [
                {"id": "CVE-2024-1", "ratings": [{"source": {"name": "nvd"}, "score": 5.3, "severity": "medium"},
                                                {"source": {"name": "debian"}, "severity": "high"}],
                 "description": "openssl: something\nmore",
                 "affects": [{"ref": "pkg:deb/debian/openssl@3.0.11?arch=amd64",
                              "versions": [{"version": "3.0.11", "status": "affected"}, {"version": "3.0.13", "status": "unaffected"}]},
                             {"ref": "nested"}],
                 "recommendation": "Upgrade openssl to version 3.0.14"},
                {"id": "GHSA-xxxx", "ratings": [{"score": 9.1, "method": "CVSSv31"}],
                 "affects": [{"ref": "pkg:pypi/requests@2.0.0"}]},
                {"id": "CVE-2024-3", "ratings": [{"severity": "unknown"}], "affects": []}
            ]
        });
        let s = parse(&v).unwrap();
        assert_eq!(s.scanner.name.as_deref(), Some("trivy"));
        assert_eq!(s.scanner.version.as_deref(), Some("0.52.0"));
        assert_eq!(s.created.as_deref(), Some("2024-06-01T12:00:00+00:00"));
        assert_eq!(
            (s.counts.critical, s.counts.high, s.counts.unknown),
            (1, 2, 1)
        );
        let g = &s.findings[0];
        assert_eq!(g.id, "GHSA-xxxx");
        assert_eq!(
            (g.package.as_deref(), g.installed.as_deref()),
            (Some("requests"), Some("2.0.0"))
        );
        let o = s
            .findings
            .iter()
            .find(|f| f.package.as_deref() == Some("openssl"))
            .unwrap();
        assert_eq!(o.severity, Severity::High);
        assert_eq!(o.installed.as_deref(), Some("3.0.11"));
        assert_eq!(o.fixed.as_deref(), Some("3.0.13"));
        assert_eq!(o.title.as_deref(), Some("openssl: something"));
        let n = s
            .findings
            .iter()
            .find(|f| f.package.as_deref() == Some("libssl3"))
            .unwrap();
        assert_eq!(
            n.fixed.as_deref(),
            Some("3.0.14"),
            "from the recommendation"
        );
    }

    #[test]
    fn an_sbom_is_not_a_clean_report() {
        let sbom = json!({"bomFormat": "CycloneDX", "specVersion": "1.5",
            "components": [{"bom-ref": "a", "name": "openssl", "version": "3.0.11"}]});
        let e = parse(&sbom).unwrap_err().to_string();
        assert!(e.contains("an SBOM, not a vulnerability report"), "{e}");
        let clean = json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "vulnerabilities": []});
        assert_eq!(parse(&clean).unwrap().counts.total(), 0);
    }

    #[test]
    fn cyclonedx_1_4_tools_array() {
        let v = json!({"bomFormat": "CycloneDX", "specVersion": "1.4",
            "metadata": {"tools": [{"vendor": "anchore", "name": "grype", "version": "0.74.0"}]},
            "vulnerabilities": [{"id": "CVE-1", "ratings": [{"severity": "critical"}], "affects": [{"ref": "x"}]}]});
        let s = parse(&v).unwrap();
        assert_eq!(s.scanner.to_string(), "grype 0.74.0");
        assert_eq!(s.findings[0].package.as_deref(), Some("x"));
        assert_eq!(s.counts.critical, 1);
    }
}
