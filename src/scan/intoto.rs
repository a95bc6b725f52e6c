//! Reports wrapped in in-toto attestations, as `cosign attest --type vuln|cyclonedx`
//! leaves them: a DSSE envelope (`{"payloadType", "payload": base64, "signatures"}`), or a
//! sigstore bundle holding one in `dsseEnvelope`, whose payload is an in-toto statement
//! (`{"_type": "https://in-toto.io/Statement/v0.1"|"/v1", "subject", "predicateType",
//! "predicate"}`). The report is the `predicate` itself (CycloneDX, SARIF, Trivy JSON), or
//! `predicate.scanner.result` for cosign's vuln predicate
//! (`https://cosign.sigstore.dev/attestation/vuln/v1`), whose `scanner.uri`/`version` and
//! `metadata.scanFinishedOn` fill in what the report itself does not say.
//!
//! Signatures are not checked here: a report is information, and signature policy is the
//! signing code's business.

use super::{text, Format, ReportError, Scanner, Summary};
use base64::Engine;
use serde_json::Value;

/// The in-toto statement `v` is or carries, `None` if it is none of the wrappers.
pub fn statement(v: &Value) -> Result<Option<Value>, ReportError> {
    let envelope = if v["payloadType"].is_string() && v["payload"].is_string() {
        v
    } else if v["dsseEnvelope"].is_object() {
        &v["dsseEnvelope"]
    } else if is_statement(v) {
        return Ok(Some(v.clone()));
    } else {
        return Ok(None);
    };
    let payload = envelope["payload"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(payload.trim()))
        .map_err(|e| ReportError(format!("DSSE envelope: the payload is not base64: {e}")))?;
    let s: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ReportError(format!("DSSE envelope: the payload is not JSON: {e}")))?;
    if !is_statement(&s) {
        return Err(ReportError(format!(
            "DSSE envelope: the payload ({}) is not an in-toto statement",
            envelope["payloadType"].as_str().unwrap_or("no payloadType")
        )));
    }
    Ok(Some(s))
}

fn is_statement(v: &Value) -> bool {
    v["_type"]
        .as_str()
        .is_some_and(|t| t.starts_with("https://in-toto.io/Statement"))
        && v.get("predicate").is_some()
}

/// The report a statement carries.
pub fn summary(statement: &Value) -> Result<Summary, ReportError> {
    let predicate_type = text(&statement["predicateType"]);
    let p = &statement["predicate"];
    // A predicate may also hold the report as a JSON string.
    let decoded = |v: &Value| -> Value {
        match v.as_str() {
            Some(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let scanner_result = decoded(&p["scanner"]["result"]);
    let direct = decoded(p);
    let report = [&direct, &scanner_result]
        .into_iter()
        .find_map(|r| Format::detect(r).map(|f| (f, r)));
    let Some((_, report)) = report else {
        return Err(ReportError(format!(
            "in-toto attestation {}: its predicate carries no SARIF, CycloneDX or Trivy JSON report",
            predicate_type.as_deref().unwrap_or("(no predicateType)")
        )));
    };
    let mut s = super::parse_value(report)?;
    if s.scanner == Scanner::default() {
        s.scanner = Scanner {
            name: text(&p["scanner"]["uri"]),
            version: text(&p["scanner"]["version"]),
        };
    }
    if s.created.is_none() {
        s.created = text(&p["metadata"]["scanFinishedOn"])
            .or_else(|| text(&p["metadata"]["scanStartedOn"]));
    }
    s.predicate_type = predicate_type;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Format, Severity};
    use base64::Engine;
    use serde_json::json;

    fn envelope(statement: &serde_json::Value) -> Vec<u8> {
        let payload = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(statement).unwrap());
        serde_json::to_vec(&json!({
            "payloadType": "application/vnd.in-toto+json",
            "payload": payload,
            "signatures": [{"keyid": "", "sig": "MEUCIQ=="}]
        }))
        .unwrap()
    }

    #[test]
    fn cosign_vuln_predicate_in_a_dsse_envelope() {
        let st = json!({
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://cosign.sigstore.dev/attestation/vuln/v1",
            "subject": [{"name": "r/agents/x", "digest": {"sha256": "ab"}}],
            "predicate": {
                "invocation": {"uri": "", "event_id": "", "builder.id": ""},
                "scanner": {"uri": "pkg:github/aquasecurity/trivy@0.57.1", "version": "0.57.1",
                    "result": {"SchemaVersion": 2, "ArtifactName": "x", "Results": [
                        {"Vulnerabilities": [{"VulnerabilityID": "CVE-1", "PkgName": "p",
                          "InstalledVersion": "1", "FixedVersion": "2", "Severity": "CRITICAL"}]}]}},
                "metadata": {"scanStartedOn": "2024-01-01T00:00:00Z", "scanFinishedOn": "2024-01-01T00:01:00Z"}
            }
        });
        let s = parse(&envelope(&st)).unwrap();
        assert_eq!(s.format, Format::Trivy);
        assert_eq!(s.counts.critical, 1);
        assert_eq!(s.created.as_deref(), Some("2024-01-01T00:01:00Z"));
        assert_eq!(
            s.predicate_type.as_deref(),
            Some("https://cosign.sigstore.dev/attestation/vuln/v1")
        );
    }

    #[test]
    fn cyclonedx_predicate_in_a_sigstore_bundle_and_bare_statements() {
        let st = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "predicateType": "https://cyclonedx.org/bom",
            "subject": [],
            "predicate": {"bomFormat": "CycloneDX", "specVersion": "1.6",
                "vulnerabilities": [{"id": "CVE-2", "ratings": [{"severity": "low"}], "affects": [{"ref": "a"}]}]}
        });
        let env: serde_json::Value = serde_json::from_slice(&envelope(&st)).unwrap();
        let bundle = json!({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                            "verificationMaterial": {}, "dsseEnvelope": env});
        let s = parse(&serde_json::to_vec(&bundle).unwrap()).unwrap();
        assert_eq!(s.format, Format::CycloneDx);
        assert_eq!(s.findings[0].severity, Severity::Low);
        let s = parse(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(s.counts.low, 1);
        // An attestation of something else says so.
        let other = json!({"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://slsa.dev/provenance/v1", "predicate": {"buildDefinition": {}}});
        let e = parse(&envelope(&other)).unwrap_err().to_string();
        assert!(
            e.contains("https://slsa.dev/provenance/v1") && e.contains("carries no"),
            "{e}"
        );
    }
}
