//! SARIF 2.1.0 as vulnerability scanners write it (`trivy --format sarif`, `grype -o
//! sarif`): one `result` per finding, its `ruleId` the vulnerability id, the rule in
//! `runs[].tool.driver.rules`.
//!
//! Severity, first found wins: a severity word among the rule's (or result's)
//! `properties.tags` (Trivy writes its own verdict there: `["vulnerability", "security",
//! "HIGH"]`); the `properties.security-severity` CVSS score (GitHub's convention, Trivy and
//! Grype both write it); the result's `level`, else the rule's
//! `defaultConfiguration.level` (`error` high, `warning` medium, `note` low, `none`
//! unknown). Package, installed and fixed versions come from the `Package:`, `Installed
//! Version:` and `Fixed Version:` lines Trivy writes into `message.text` (and the rule's
//! `help.text`), or from Grype's "... package: NAME, version VERSION ..." message.

use super::{text, Finding, Format, ReportError, Scanner, Severity, Summary};
use serde_json::Value;

pub fn parse(v: &Value) -> Result<Summary, ReportError> {
    let runs = v["runs"]
        .as_array()
        .ok_or_else(|| ReportError("SARIF report: no runs".into()))?;
    let mut scanner = Scanner::default();
    let mut created = None;
    let mut findings = Vec::new();
    for run in runs {
        let driver = &run["tool"]["driver"];
        if scanner.name.is_none() {
            scanner.name = text(&driver["name"]);
            scanner.version = text(&driver["semanticVersion"]).or_else(|| text(&driver["version"]));
        }
        if created.is_none() {
            created = run["invocations"].as_array().and_then(|inv| {
                inv.iter()
                    .find_map(|i| text(&i["endTimeUtc"]).or_else(|| text(&i["startTimeUtc"])))
            });
        }
        let rules = driver["rules"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for r in run["results"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            findings.push(finding(r, rules));
        }
    }
    Ok(Summary::new(Format::Sarif, scanner, created, findings))
}

fn finding(r: &Value, rules: &[Value]) -> Finding {
    let rule_id = text(&r["ruleId"]).or_else(|| text(&r["rule"]["id"]));
    let rule = r["ruleIndex"]
        .as_u64()
        .and_then(|i| rules.get(i as usize))
        .filter(|rule| rule_id.is_none() || text(&rule["id"]) == rule_id)
        .or_else(|| {
            rule_id.as_ref().and_then(|id| {
                rules
                    .iter()
                    .find(|rule| text(&rule["id"]).as_ref() == Some(id))
            })
        })
        .unwrap_or(&Value::Null);
    let raw_id = rule_id.or_else(|| text(&rule["id"])).unwrap_or_default();
    // Trivy's old template wrote "[HIGH] CVE-...".
    let id = match raw_id.strip_prefix('[').and_then(|s| s.split_once("] ")) {
        Some((_, rest)) => rest.trim().to_string(),
        None => raw_id,
    };
    let message = r["message"]["text"].as_str().unwrap_or_default();
    let help = rule["help"]["text"].as_str().unwrap_or_default();
    let field = |name: &str| line_value(message, name).or_else(|| line_value(help, name));
    let (grype_pkg, grype_version) = grype_message(message);
    Finding {
        id,
        severity: severity(r, rule),
        package: field("Package").or(grype_pkg),
        installed: field("Installed Version").or(grype_version),
        fixed: field("Fixed Version"),
        title: text(&rule["shortDescription"]["text"]).or_else(|| text(&rule["name"])),
    }
}

fn severity(r: &Value, rule: &Value) -> Severity {
    let tagged = |v: &Value| {
        v["properties"]["tags"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| !t.eq_ignore_ascii_case("none"))
            .find_map(Severity::from_label)
    };
    let scored = |v: &Value| {
        let s = &v["properties"]["security-severity"];
        s.as_f64()
            .or_else(|| s.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
            .map(Severity::from_score)
    };
    let level = |l: &Value| match l.as_str()? {
        "error" => Some(Severity::High),
        "warning" => Some(Severity::Medium),
        "note" => Some(Severity::Low),
        "none" => Some(Severity::Unknown),
        _ => None,
    };
    tagged(r)
        .or_else(|| tagged(rule))
        .or_else(|| scored(r))
        .or_else(|| scored(rule))
        .or_else(|| level(&r["level"]))
        .or_else(|| level(&rule["defaultConfiguration"]["level"]))
        .unwrap_or(Severity::Unknown)
}

/// The value of a `Name: value` line, if non-empty.
fn line_value(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(name)?.strip_prefix(':')?;
        Some(rest.trim().to_string()).filter(|v| !v.is_empty())
    })
}

/// Grype: "A high vulnerability in deb package: libssl1.1, version 1.1.1n-0+deb11u3 was
/// found at: /var/lib/dpkg/status".
fn grype_message(m: &str) -> (Option<String>, Option<String>) {
    let Some((_, after)) = m.split_once("package: ") else {
        return (None, None);
    };
    let Some((pkg, rest)) = after.split_once(", version ") else {
        return (None, None);
    };
    let version = rest.split_whitespace().next().map(str::to_string);
    (
        Some(pkg.trim().to_string()).filter(|p| !p.is_empty()),
        version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trivy_shaped_sarif_reads_tags_scores_and_message_lines() {
        let v = json!({
            "version": "2.1.0",
            "$schema": "https://raw.githubusercontent.com/oasis-tcs/sarif-spec/main/sarif-2.1/schema/sarif-schema-2.1.0.json",
            "runs": [{
                "tool": {"driver": {"name": "Trivy", "version": "0.57.1", "rules": [
                    {"id": "CVE-2023-0001", "shortDescription": {"text": "openssl: bad"},
                     "defaultConfiguration": {"level": "note"},
                     "properties": {"security-severity": "9.8", "tags": ["vulnerability", "security", "LOW"]}},
                    {"id": "CVE-2023-0002", "properties": {"security-severity": "7.5", "tags": ["vulnerability", "security"]}},
                    {"id": "CVE-2023-0003", "defaultConfiguration": {"level": "error"}}
                ]}},
                "results": [
                    {"ruleId": "CVE-2023-0001", "ruleIndex": 0, "level": "note",
                     "message": {"text": "Package: openssl\nInstalled Version: 3.0.1\nVulnerability CVE-2023-0001\nSeverity: LOW\nFixed Version: 3.0.2\nLink: [CVE-2023-0001](https://avd.aquasec.com/nvd/cve-2023-0001)"}},
                    {"ruleId": "CVE-2023-0002", "ruleIndex": 1,
                     "message": {"text": "Package: zlib\nInstalled Version: 1.2\nFixed Version: \n"}},
                    {"ruleId": "CVE-2023-0003", "message": {"text": "A high vulnerability in deb package: libc6, version 2.36-9 was found at: /var/lib/dpkg/status"}}
                ]
            }]
        });
        let s = parse(&v).unwrap();
        assert_eq!(s.scanner.name.as_deref(), Some("Trivy"));
        assert_eq!(s.scanner.version.as_deref(), Some("0.57.1"));
        type Row<'a> = (
            &'a str,
            Severity,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let f: Vec<Row> = s
            .findings
            .iter()
            .map(|f| {
                (
                    f.id.as_str(),
                    f.severity,
                    f.package.as_deref(),
                    f.installed.as_deref(),
                    f.fixed.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            f,
            [
                // The score, then the default level.
                (
                    "CVE-2023-0002",
                    Severity::High,
                    Some("zlib"),
                    Some("1.2"),
                    None
                ),
                (
                    "CVE-2023-0003",
                    Severity::High,
                    Some("libc6"),
                    Some("2.36-9"),
                    None
                ),
                // Trivy's own verdict (the tag) wins over the CVSS score.
                (
                    "CVE-2023-0001",
                    Severity::Low,
                    Some("openssl"),
                    Some("3.0.1"),
                    Some("3.0.2")
                ),
            ]
        );
        assert_eq!(s.findings[2].title.as_deref(), Some("openssl: bad"));
    }

    #[test]
    fn old_trivy_template_ids_and_invocation_dates() {
        let v = json!({"version": "2.1.0", "runs": [{
            "tool": {"driver": {"name": "Trivy", "rules": [
                {"id": "[CRITICAL] CVE-2021-44228", "properties": {"tags": ["vulnerability", "CRITICAL", "log4j"]},
                 "help": {"text": "Vulnerability CVE-2021-44228\nSeverity: CRITICAL\nPackage: log4j\nInstalled Version: 2.14\nFixed Version: 2.15.0"}}
            ]}},
            "invocations": [{"executionSuccessful": true, "startTimeUtc": "2024-05-01T10:00:00Z", "endTimeUtc": "2024-05-01T10:01:00Z"}],
            "results": [{"ruleId": "[CRITICAL] CVE-2021-44228", "ruleIndex": 0, "level": "error", "message": {"text": "log4j"}}]
        }]});
        let s = parse(&v).unwrap();
        assert_eq!(s.created.as_deref(), Some("2024-05-01T10:01:00Z"));
        let f = &s.findings[0];
        assert_eq!(f.id, "CVE-2021-44228");
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.package.as_deref(), Some("log4j"));
        assert_eq!(f.fixed.as_deref(), Some("2.15.0"));
    }
}
