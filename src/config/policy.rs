//! The `[policy]` section: pull policies the server enforces on manifest GET and HEAD
//! (`crate::policy` decides the verdicts). Key files are checked here to be readable PEM
//! public keys; the server parses them at start.

use super::base::ConfigError;
use super::merge::Origins;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The severities `block_vulnerabilities` takes (`""`: no threshold).
pub const SEVERITIES: [&str; 4] = ["critical", "high", "medium", "low"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// `critical`, `high`, `medium` or `low`; `None` refuses nothing for its findings.
    pub block_vulnerabilities: Option<String>,
    /// `true` for `unscanned = "block"`.
    pub block_unscanned: bool,
    pub signatures: Vec<SignaturePolicy>,
}

/// One `[[policy.signatures]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    pub repos: Vec<String>,
    pub keys: Vec<PathBuf>,
    /// `false` for `mode = "warn"`.
    pub enforce: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    block_vulnerabilities: String,
    unscanned: String,
    signatures: Vec<RawSignatures>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSignatures {
    repos: Vec<String>,
    keys: Vec<String>,
    #[serde(default = "enforce")]
    mode: String,
}

fn enforce() -> String {
    "enforce".into()
}

pub(super) fn show_policy(p: &PolicyConfig) -> RawPolicy {
    RawPolicy {
        block_vulnerabilities: p.block_vulnerabilities.clone().unwrap_or_default(),
        unscanned: if p.block_unscanned { "block" } else { "allow" }.into(),
        signatures: p
            .signatures
            .iter()
            .map(|s| RawSignatures {
                repos: s.repos.clone(),
                keys: s
                    .keys
                    .iter()
                    .map(|k| k.to_string_lossy().into_owned())
                    .collect(),
                mode: if s.enforce { "enforce" } else { "warn" }.into(),
            })
            .collect(),
    }
}

fn pem_public_key(path: &std::path::Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "{} is a directory, expected a PEM file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match text.contains("-----BEGIN PUBLIC KEY-----") {
        true => Ok(()),
        false => Err(format!(
            "{} is not a PEM public key (expected -----BEGIN PUBLIC KEY-----, as `agent key generate` writes to the .pub file)",
            path.display()
        )),
    }
}

pub(super) fn build_policy(raw: RawPolicy, o: &Origins) -> Result<PolicyConfig, ConfigError> {
    let block = match raw.block_vulnerabilities.trim() {
        "" => Ok(None),
        s if SEVERITIES.contains(&s) => Ok(Some(s.to_string())),
        s => Err(format!(
            "{s:?} is not one of \"critical\", \"high\", \"medium\", \"low\" or \"\""
        )),
    };
    let unscanned = match raw.unscanned.as_str() {
        "allow" => Ok(false),
        "block" => Ok(true),
        s => Err(format!("{s:?} is not \"allow\" or \"block\"")),
    };
    let mut signatures = Vec::new();
    for (i, s) in raw.signatures.into_iter().enumerate() {
        let key = format!("policy.signatures[{i}]");
        if s.repos.is_empty() || s.repos.iter().any(|r| r.trim().is_empty()) {
            o.check::<()>(
                &format!("{key}.repos"),
                Err("must name at least one repository pattern, none empty".into()),
            )?;
        }
        if s.keys.is_empty() {
            o.check::<()>(
                &format!("{key}.keys"),
                Err("must name at least one PEM public key file".into()),
            )?;
        }
        let keys = s
            .keys
            .iter()
            .map(|k| {
                let p = PathBuf::from(k);
                o.check(&format!("{key}.keys"), pem_public_key(&p))?;
                Ok(p)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let enforce = match s.mode.as_str() {
            "enforce" => Ok(true),
            "warn" => Ok(false),
            m => Err(format!("{m:?} is not \"enforce\" or \"warn\"")),
        };
        signatures.push(SignaturePolicy {
            repos: s.repos,
            keys,
            enforce: o.check(&format!("{key}.mode"), enforce)?,
        });
    }
    Ok(PolicyConfig {
        block_vulnerabilities: o.check("policy.block_vulnerabilities", block)?,
        block_unscanned: o.check("policy.unscanned", unscanned)?,
        signatures,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str) -> Result<Config, String> {
        Config::from_toml_str(toml, "test.toml", &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn policy_values_are_checked_naming_key_and_file() {
        let e = load("[policy]\nblock_vulnerabilities = \"severe\"\n").unwrap_err();
        assert!(
            e.contains("test.toml") && e.contains("policy.block_vulnerabilities"),
            "{e}"
        );
        let e = load("[policy]\nunscanned = \"maybe\"\n").unwrap_err();
        assert!(e.contains("policy.unscanned"), "{e}");
        let e = load("[[policy.signatures]]\nrepos = [\"a/*\"]\nkeys = [\"/nonexistent/k.pub\"]\n")
            .unwrap_err();
        assert!(
            e.contains("policy.signatures[0].keys") && e.contains("/nonexistent/k.pub"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k.pub");
        std::fs::write(
            &k,
            "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let text = format!(
            "[[policy.signatures]]\nrepos = [\"a/*\"]\nkeys = [{:?}]\nmode = \"audit\"\n",
            k.display().to_string()
        );
        let e = load(&text).unwrap_err();
        assert!(e.contains("policy.signatures[0].mode"), "{e}");
        let c = load(&text.replace("audit", "warn")).unwrap();
        assert!(!c.policy.signatures[0].enforce);
        let again = load(&c.to_toml_redacted()).unwrap();
        assert_eq!(again.policy, c.policy);
    }
}
