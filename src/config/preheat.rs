//! `[[preheat]]`: lists of images the server keeps warm in its cache, each refilled
//! through the mirror every `interval` (`handlers::preheat`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::base::{positive, ConfigError};
use super::merge::Origins;
use super::units::{format_duration, parse_duration};

/// Which children of an index a preheat fills.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Platform {
    /// Every child manifest.
    #[default]
    All,
    /// The children for `os/arch` (e.g. `linux/amd64`, `linux/arm64/v8`), and children
    /// without a platform (attestations).
    Only {
        os: String,
        arch: String,
        variant: Option<String>,
    },
}

impl Platform {
    /// `all` or `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        if s == "all" {
            return Ok(Platform::All);
        }
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform::Only {
                    os: os.to_string(),
                    arch: arch.to_string(),
                    variant: parts
                        .get(2)
                        .filter(|v| !v.is_empty())
                        .map(|v| v.to_string()),
                })
            }
            _ => Err(format!(
                "expected \"all\" or OS/ARCH (e.g. \"linux/amd64\"), found {s:?}"
            )),
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Platform::All => "all".into(),
            Platform::Only { os, arch, variant } => match variant {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            },
        }
    }

    /// Whether an index entry with this `platform` object is wanted.
    pub fn wants(&self, platform: Option<&serde_json::Value>) -> bool {
        let Platform::Only { os, arch, variant } = self else {
            return true;
        };
        let Some(p) = platform else {
            // Attestations and other artifacts: kept with the image.
            return true;
        };
        let field = |k: &str| p.get(k).and_then(|v| v.as_str());
        if field("os") == Some("unknown") && field("architecture") == Some("unknown") {
            // BuildKit's attestation manifests.
            return true;
        }
        field("os") == Some(os.as_str())
            && field("architecture") == Some(arch.as_str())
            && match variant {
                Some(v) => field("variant") == Some(v.as_str()),
                None => true,
            }
    }
}

/// One `[[preheat]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreheatConfig {
    /// Image references, e.g. `docker.io/library/alpine:3.20`.
    pub images: Vec<String>,
    pub platform: Platform,
    /// How often the list is filled again (the first run is at start).
    pub interval: Duration,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreheat {
    images: Vec<String>,
    #[serde(default = "all")]
    platform: String,
    #[serde(default = "hourly")]
    interval: String,
}

fn all() -> String {
    "all".into()
}

fn hourly() -> String {
    "1h".into()
}

/// Types and validates the `preheat` array of tables.
pub(super) fn build_preheat(
    table: &mut Table,
    o: &Origins,
) -> Result<Vec<PreheatConfig>, ConfigError> {
    let raw: Vec<RawPreheat> = match table.remove("preheat") {
        Some(v @ Value::Array(_)) => o.parse("preheat", v)?,
        _ => Vec::new(),
    };
    let mut built = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("preheat[{i}].{k}");
        if r.images.is_empty() {
            o.check(
                &key("images"),
                Err("must list at least one image".to_string()),
            )?;
        }
        for (j, image) in r.images.iter().enumerate() {
            let problem = match image.trim() {
                "" => Err("must not be empty".to_string()),
                s if s != image => Err(format!("{image:?} has surrounding spaces")),
                _ => Ok(()),
            };
            o.check(&format!("preheat[{i}].images[{j}]"), problem)?;
        }
        built.push(PreheatConfig {
            platform: o.check(&key("platform"), Platform::parse(&r.platform))?,
            interval: o.check(&key("interval"), positive(parse_duration(&r.interval)))?,
            images: r.images,
        });
    }
    Ok(built)
}

/// The lists as `config show` writes them.
pub(super) fn show_preheat(p: &[PreheatConfig]) -> Vec<RawPreheat> {
    p.iter()
        .map(|p| RawPreheat {
            images: p.images.clone(),
            platform: p.platform.as_string(),
            interval: format_duration(p.interval),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        assert_eq!(Platform::parse("all"), Ok(Platform::All));
        let amd = Platform::parse("linux/amd64").expect("platform");
        let arm = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        let x86 = serde_json::json!({"os": "linux", "architecture": "amd64"});
        let att = serde_json::json!({"os": "unknown", "architecture": "unknown"});
        assert!(amd.wants(Some(&x86)) && !amd.wants(Some(&arm)) && amd.wants(Some(&att)));
        let v8 = Platform::parse("linux/arm64/v8").expect("platform");
        assert!(v8.wants(Some(&arm)) && !v8.wants(Some(&x86)));
        assert_eq!(v8.as_string(), "linux/arm64/v8");
        for bad in ["linux", "", "/amd64", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
