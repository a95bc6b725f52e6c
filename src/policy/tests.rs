use super::*;

#[test]
fn glob_matches_across_slashes() {
    assert!(glob("agents/prod/*", "agents/prod/a/b"));
    assert!(glob("docker.io/myorg/*", "docker.io/myorg/app"));
    assert!(!glob("docker.io/myorg/*", "docker.io/other/app"));
    assert!(glob("*", "x"));
    assert!(glob("a*b*c", "a-b-c"));
    assert!(!glob("a*b*c", "a-c-b"));
    assert!(glob("exact", "exact"));
    assert!(!glob("exact", "exactly"));
}

#[test]
fn thresholds_parse() {
    assert_eq!(parse_threshold(""), Ok(None));
    assert_eq!(parse_threshold("high"), Ok(Some(Severity::High)));
    assert!(parse_threshold("severe").is_err());
    assert!(Unscanned::parse("maybe").is_err());
}

#[test]
fn metadata_manifests_are_told_from_images() {
    let sig = serde_json::json!({"layers": [{"mediaType": sign::SIMPLE_SIGNING_MEDIA_TYPE}]});
    let report = serde_json::json!({"layers": [{"mediaType": scan::SARIF}]});
    let image = serde_json::json!({"layers": [
        {"mediaType": sign::SIMPLE_SIGNING_MEDIA_TYPE},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
    ]});
    let empty = serde_json::json!({"layers": []});
    assert!(is_metadata(&sig) && is_metadata(&report));
    assert!(!is_metadata(&image) && !is_metadata(&empty));
}

#[test]
fn an_override_is_persisted_and_cleared_with_a_new_version() {
    let dir = std::env::temp_dir().join(format!("policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = Vulnerabilities {
        block: Some(Severity::Critical),
        unscanned: Unscanned::Allow,
    };
    let p = Policies::new(base, Vec::new(), Some(&dir)).unwrap();
    let v0 = p.version();
    let o = Override {
        block_vulnerabilities: Some("high".into()),
        unscanned: Some(Unscanned::Block),
    };
    assert!(p.set(Some(o.clone())).unwrap() > v0);
    let again = Policies::new(base, Vec::new(), Some(&dir)).unwrap();
    assert_eq!(again.runtime(), o);
    assert_eq!(again.vulnerabilities().block, Some(Severity::High));
    again.set(None).unwrap();
    assert_eq!(again.vulnerabilities(), base);
    assert!(!dir.join(FILE).exists());
    std::fs::remove_dir_all(&dir).ok();
}
