//! Trivy's own JSON report (`trivy image --format json`): `Results[].Vulnerabilities[]`
//! with `VulnerabilityID`, `PkgName`, `InstalledVersion`, `FixedVersion`, `Severity`
//! (`CRITICAL`... `UNKNOWN`), `Title`; the scan date in `CreatedAt`, the version in
//! `Trivy.Version` (newer releases).

use super::{text, Finding, Format, ReportError, Scanner, Severity, Summary};
use serde_json::Value;

pub fn parse(v: &Value) -> Result<Summary, ReportError> {
    let mut findings = Vec::new();
    for result in v["Results"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        for x in result["Vulnerabilities"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            findings.push(Finding {
                id: text(&x["VulnerabilityID"]).unwrap_or_default(),
                severity: x["Severity"]
                    .as_str()
                    .and_then(Severity::from_label)
                    .unwrap_or(Severity::Unknown),
                package: text(&x["PkgName"]).or_else(|| text(&x["PkgID"])),
                installed: text(&x["InstalledVersion"]),
                fixed: text(&x["FixedVersion"]),
                title: text(&x["Title"]),
            });
        }
    }
    let scanner = Scanner {
        name: Some("Trivy".into()),
        version: text(&v["Trivy"]["Version"]),
    };
    Ok(Summary::new(
        Format::Trivy,
        scanner,
        text(&v["CreatedAt"]),
        findings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trivy_json_reads_every_target() {
        let v = json!({
            "SchemaVersion": 2, "CreatedAt": "2024-07-01T08:00:00.123456789Z",
            "ArtifactName": "agents/x", "ArtifactType": "container_image",
            "Trivy": {"Version": "0.57.1"},
            "Results": [
                {"Target": "agents/x (debian 12.5)", "Class": "os-pkgs", "Type": "debian",
                 "Vulnerabilities": [
                    {"VulnerabilityID": "CVE-2024-2", "PkgName": "libc6", "InstalledVersion": "2.36-9",
                     "FixedVersion": "2.36-9+deb12u7", "Severity": "HIGH", "Title": "glibc: overflow"},
                    {"VulnerabilityID": "CVE-2024-9", "PkgName": "tar", "InstalledVersion": "1.34", "Severity": "UNKNOWN"}
                 ]},
                {"Target": "app/requirements.txt", "Class": "lang-pkgs", "Type": "pip",
                 "Vulnerabilities": [
                    {"VulnerabilityID": "GHSA-aaaa", "PkgName": "jinja2", "InstalledVersion": "3.1.2",
                     "FixedVersion": "3.1.3", "Severity": "CRITICAL"}
                 ]},
                {"Target": "clean", "Class": "lang-pkgs"}
            ]
        });
        let s = parse(&v).unwrap();
        assert_eq!(s.scanner.to_string(), "Trivy 0.57.1");
        assert_eq!(s.created.as_deref(), Some("2024-07-01T08:00:00.123456789Z"));
        let ids: Vec<&str> = s.findings.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["GHSA-aaaa", "CVE-2024-2", "CVE-2024-9"]);
        assert_eq!(s.findings[1].fixed.as_deref(), Some("2.36-9+deb12u7"));
        assert_eq!(s.findings[2].fixed, None);
        assert_eq!(
            (s.counts.critical, s.counts.high, s.counts.unknown),
            (1, 1, 1)
        );
    }
}
