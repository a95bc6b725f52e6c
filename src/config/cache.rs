//! The `[cache]` section ([`CacheConfig`]): the disk tier's byte cap and eviction policy,
//! metadata freshness, the seed's three strategy switches, the memory tier, garbage
//! collection of hosted repositories and its cleanup policies.
//!
//! `strategies` takes the seed's list form, `[[cache.strategies]]` tables of one key each
//! (`strategies = [{ layer_caching = true }, { metadata_caching = false }]`), or a plain
//! table (`[cache.strategies]` with the same keys). [`normalize`] folds the list into the
//! table before the file is merged over the default, so unknown keys still name the file.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::base::{invalid, one_of, ConfigError};
use super::merge::Origins;
use super::units::{format_duration, format_size, parse_duration, parse_size};

/// Smallest `cache.memory.max_size` / `cache.max_size` that makes sense.
const MIN_CAP: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// false: nothing proxied is kept (blobs stream through, metadata is always asked for).
    pub enabled: bool,
    /// Bytes of cached (proxied) objects on disk; hosted content is not counted.
    pub max_size: u64,
    /// The longest any cached metadata (tag mappings, tag lists, referrers) stays fresh;
    /// an upstream's `tag_ttl` may make tag mappings fresh for less.
    pub ttl: Duration,
    pub policy: Policy,
    pub strategies: Strategies,
    pub memory: MemoryConfig,
    pub gc: GcConfig,
    pub cleanup: CleanupConfig,
}

/// The disk tier's admission and eviction order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    S3Fifo,
    Lru,
}

impl Policy {
    pub const ALL: [Policy; 2] = [Policy::S3Fifo, Policy::Lru];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::S3Fifo => "s3-fifo",
            Policy::Lru => "lru",
        }
    }
}

/// The seed's strategy switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategies {
    /// Keep proxied blobs (layers, configs) on disk.
    pub layers: bool,
    /// Keep proxied manifests and tag mappings.
    pub metadata: bool,
    /// Keep tag-list and referrers answers.
    pub search: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    pub max_size: u64,
    /// Proxied blobs up to this size are also held in memory; 0 = none.
    pub blob_threshold: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcConfig {
    /// How often garbage collection runs in the server; None = only on request.
    pub interval: Option<Duration>,
    /// Objects and links younger than this are never collected.
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupConfig {
    /// Keep only the newest N tags of each hosted repository; None = keep all.
    pub keep_last_tags: Option<u64>,
    /// Delete hosted manifests without tags (and not referenced by an index or as a
    /// referrer's subject) after this long; None = never.
    pub delete_untagged_after: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            enabled: true,
            max_size: 10_000_000_000,
            ttl: Duration::from_secs(24 * 3600),
            policy: Policy::S3Fifo,
            strategies: Strategies {
                layers: true,
                metadata: true,
                search: true,
            },
            memory: MemoryConfig {
                max_size: 256_000_000,
                blob_threshold: 256 << 10,
            },
            gc: GcConfig {
                interval: None,
                grace: Duration::from_secs(3600),
            },
            cleanup: CleanupConfig {
                keep_last_tags: None,
                delete_untagged_after: None,
            },
        }
    }
}

impl CacheConfig {
    /// The effective switches: all off when the cache is disabled.
    pub fn effective(&self) -> Strategies {
        let on = self.enabled;
        Strategies {
            layers: on && self.strategies.layers,
            metadata: on && self.strategies.metadata,
            search: on && self.strategies.search,
        }
    }
}

// The file schema (`Serialize` renders the effective config).

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    enabled: bool,
    max_size: String,
    ttl: String,
    policy: String,
    strategies: RawStrategies,
    memory: RawMemory,
    gc: RawGc,
    cleanup: RawCleanup,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStrategies {
    layer_caching: bool,
    metadata_caching: bool,
    search_caching: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    max_size: String,
    blob_threshold: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawGc {
    interval: String,
    grace: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCleanup {
    keep_last_tags: i64,
    delete_untagged_after: String,
}

/// Folds the seed's `[[cache.strategies]]` list of one-key tables into one table, in the
/// user's file before merging. A list item with other than one key is an error.
pub(super) fn normalize(user: &mut Table, label: &str) -> Result<(), ConfigError> {
    let Some(Value::Table(cache)) = user.get_mut("cache") else {
        return Ok(());
    };
    let Some(Value::Array(items)) = cache.get("strategies") else {
        return Ok(());
    };
    let mut folded = Table::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("cache.strategies[{i}]");
        match item {
            Value::Table(t) if t.len() == 1 => folded.extend(t.clone()),
            _ => {
                let problem = "expected a table of one key, e.g. { layer_caching = true }";
                return Err(invalid(label, &key, problem.into()));
            }
        }
    }
    cache.insert("strategies".into(), Value::Table(folded));
    Ok(())
}

pub(super) fn show_cache(c: &CacheConfig) -> RawCache {
    RawCache {
        enabled: c.enabled,
        max_size: format_size(c.max_size),
        ttl: format_duration(c.ttl),
        policy: c.policy.as_str().into(),
        strategies: RawStrategies {
            layer_caching: c.strategies.layers,
            metadata_caching: c.strategies.metadata,
            search_caching: c.strategies.search,
        },
        memory: RawMemory {
            max_size: format_size(c.memory.max_size),
            blob_threshold: format_size(c.memory.blob_threshold),
        },
        gc: RawGc {
            interval: c.gc.interval.map_or("0s".into(), format_duration),
            grace: format_duration(c.gc.grace),
        },
        cleanup: RawCleanup {
            keep_last_tags: c.cleanup.keep_last_tags.map_or(0, |n| n as i64),
            delete_untagged_after: c
                .cleanup
                .delete_untagged_after
                .map_or("0s".into(), format_duration),
        },
    }
}

/// Types and validates `[cache]`.
pub(super) fn build_cache(raw: RawCache, o: &Origins) -> Result<CacheConfig, ConfigError> {
    let at_least = |s: &str| {
        parse_size(s).and_then(|n| match n >= MIN_CAP {
            true => Ok(n),
            false => Err(format!("{s:?} is smaller than the minimum of 1MiB")),
        })
    };
    let optional = |s: &str| parse_duration(s).map(|d| (!d.is_zero()).then_some(d));
    let memory = MemoryConfig {
        max_size: o.check("cache.memory.max_size", at_least(&raw.memory.max_size))?,
        blob_threshold: o.check(
            "cache.memory.blob_threshold",
            parse_size(&raw.memory.blob_threshold).and_then(|n| match n <= 16 << 20 {
                true => Ok(n),
                false => Err(format!("{n} bytes is larger than the limit of 16MiB")),
            }),
        )?,
    };
    let keep = match raw.cleanup.keep_last_tags {
        0 => Ok(None),
        n if n > 0 => Ok(Some(n as u64)),
        n => Err(format!("{n} must not be negative (0 keeps every tag)")),
    };
    Ok(CacheConfig {
        enabled: raw.enabled,
        max_size: o.check("cache.max_size", at_least(&raw.max_size))?,
        ttl: o.check("cache.ttl", parse_duration(&raw.ttl))?,
        policy: o.check(
            "cache.policy",
            one_of(&raw.policy, &Policy::ALL, Policy::as_str),
        )?,
        strategies: Strategies {
            layers: raw.strategies.layer_caching,
            metadata: raw.strategies.metadata_caching,
            search: raw.strategies.search_caching,
        },
        memory,
        gc: GcConfig {
            interval: o.check("cache.gc.interval", optional(&raw.gc.interval))?,
            grace: o.check("cache.gc.grace", parse_duration(&raw.gc.grace))?,
        },
        cleanup: CleanupConfig {
            keep_last_tags: o.check("cache.cleanup.keep_last_tags", keep)?,
            delete_untagged_after: o.check(
                "cache.cleanup.delete_untagged_after",
                optional(&raw.cleanup.delete_untagged_after),
            )?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        super::super::tests::load_at(text, "/x.toml", env)
    }

    #[test]
    fn default_matches_the_embedded_file() {
        assert_eq!(load("", &[]).unwrap().cache, CacheConfig::default());
    }

    #[test]
    fn seed_list_form_and_plain_table_both_load() {
        let seed = "[cache]\nmax_size = \"10GB\"\nttl = \"24h\"\n\
                    [[cache.strategies]]\nlayer_caching = true\n\
                    [[cache.strategies]]\nmetadata_caching = false\n\
                    [[cache.strategies]]\nsearch_caching = true\n";
        let c = load(seed, &[]).unwrap().cache;
        assert_eq!(c.max_size, 10_000_000_000);
        assert!(c.strategies.layers && !c.strategies.metadata && c.strategies.search);
        let plain = "[cache.strategies]\nsearch_caching = false\n";
        let c = load(plain, &[]).unwrap().cache;
        assert!(c.strategies.layers && c.strategies.metadata && !c.strategies.search);
        let off = load("cache.enabled = false", &[]).unwrap().cache;
        assert_eq!(
            off.effective(),
            Strategies {
                layers: false,
                metadata: false,
                search: false
            }
        );
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let cases = [
            (
                "cache.max_size = \"10XB\"",
                "config /x.toml: key cache.max_size: invalid size \"10XB\": unknown unit \"XB\" (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)",
            ),
            (
                "cache.memory.max_size = \"1KB\"",
                "config /x.toml: key cache.memory.max_size: \"1KB\" is smaller than the minimum of 1MiB",
            ),
            (
                "cache.policy = \"random\"",
                "config /x.toml: key cache.policy: invalid value \"random\": expected \"s3-fifo\" or \"lru\"",
            ),
            (
                "cache.strategies = [{ layer_caching = true, search_caching = true }]",
                "config /x.toml: key cache.strategies[0]: expected a table of one key, e.g. { layer_caching = true }",
            ),
            (
                "cache.cleanup.keep_last_tags = -1",
                "config /x.toml: key cache.cleanup.keep_last_tags: -1 must not be negative (0 keeps every tag)",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(load(text, &[]).unwrap_err(), want, "{text}");
        }
        let typo = load("[[cache.strategies]]\nlayers_caching = true\n", &[]).unwrap_err();
        assert!(
            typo.contains("/x.toml") && typo.contains("cache.strategies.layers_caching"),
            "{typo}"
        );
        let env = [("AGENT_REGISTRY_CACHE_TTL", "soon")];
        let e = load("", &env).unwrap_err();
        assert!(
            e.starts_with("environment AGENT_REGISTRY_CACHE_TTL: key cache.ttl"),
            "{e}"
        );
    }

    #[test]
    fn shown_config_reads_back() {
        let text =
            "[cache]\nmax_size = \"2GiB\"\npolicy = \"lru\"\n[cache.gc]\ninterval = \"6h\"\n\
                    [cache.cleanup]\nkeep_last_tags = 5\ndelete_untagged_after = \"7d\"\n";
        let c = load(text, &[]).unwrap();
        assert_eq!(c.cache.gc.interval, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(c.cache.cleanup.keep_last_tags, Some(5));
        let back = Config::from_toml_str(&c.to_toml_redacted(), "shown", &|_| None).unwrap();
        assert_eq!(back.cache, c.cache);
    }
}
