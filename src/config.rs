//! Configuration: the TOML file schema (serde), `${VAR}` expansion, `AGENT_REGISTRY_*` overrides and validation into [`Config`].
//!
//! Pipeline: parse TOML -> expand `${VAR}` in strings -> merge over the
//! embedded default key by key (unknown keys and wrong types are rejected here,
//! naming the dotted key) -> environment overrides -> `Raw*` serde structs ->
//! validated, typed [`Config`]. Every value remembers where it came from so
//! errors name the file or the environment variable.
//!
//! Adding a section: put it, with every key, in `config/agent-registry.toml`,
//! add a `Raw*` struct, a typed struct and its lines in `Config::build` and
//! `Config::to_toml_redacted`. Env overrides and unknown-key checks follow the
//! default file automatically.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::{Table, Value};

/// The default config, every key documented; compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/agent-registry.toml");

const EMBEDDED: &str = "embedded default";
const ENV_PREFIX: &str = "AGENT_REGISTRY_";
const MAX_MANIFEST_SIZE_LIMIT: u64 = 64 << 20;
const REDACTED: &str = "<redacted>";

/// Size units, largest first; matched case-insensitively.
const SIZE_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// Duration units in milliseconds, largest first.
const DURATION_UNITS: [(&str, u64); 6] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    /// `"embedded default"` or the path of the file it was loaded from.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bytes; a larger manifest PUT is rejected.
    pub max_manifest_size: u64,
    pub hosted_writes: HostedWrites,
}

/// Who may push to and delete from hosted repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostedWrites {
    /// Only clients on 127.0.0.0/8 and ::1.
    Loopback,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Abandoned upload sessions older than this are deleted.
    pub upload_expiry: Duration,
    /// How often the upload purge runs.
    pub upload_purge_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing filter directive such as `info` or `agent_registry=debug`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl HostedWrites {
    pub fn as_str(self) -> &'static str {
        match self {
            HostedWrites::Loopback => "loopback",
            HostedWrites::Any => "any",
        }
    }
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A secret string: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself; call only where it is sent, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A config problem. `origin` is where the value came from:
/// `config <path>`, `config embedded default` or `environment <VAR>`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read: {error}")]
    Read {
        origin: String,
        error: std::io::Error,
    },
    #[error("{origin}: line {line} column {column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: unknown key {key}")]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: key {key}: {problem}")]
    Invalid {
        origin: String,
        key: String,
        problem: String,
    },
}

// The file schema. Values arrive merged over the default, so every key is present.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    max_manifest_size: String,
    hosted_writes: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: String,
    upload_expiry: String,
    upload_purge_interval: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

/// Reads the process environment: `std::env::var(name).ok()`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Loads `path` (or the embedded default when `None`), applies
    /// `AGENT_REGISTRY_*` overrides from `env`, validates.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Config::from_toml_str(DEFAULT_CONFIG_TOML, EMBEDDED, env);
        };
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            origin: format!("config {origin}"),
            error,
        })?;
        Config::from_toml_str(&text, &origin, env)
    }

    /// Same as [`Config::load`] from a string; `origin` names it in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let label = format!("config {origin}");
        let default = parse_table(DEFAULT_CONFIG_TOML, &format!("config {EMBEDDED}"))?;
        let mut user = parse_table(text, &label)?;
        for (key, value) in user.iter_mut() {
            expand_value(value, key, env, &label)?;
        }
        let mut origins = Origins::default();
        let mut merged = default.clone();
        merge(&mut merged, user, "", &label, &mut origins)?;
        apply_env(&mut merged, &default, env, &mut origins)?;
        Config::build(merged, origin, &origins)
    }

    /// The embedded default with no env overrides.
    pub fn embedded_default() -> Config {
        // A test keeps the parsed default and `builtin` equal, so this never falls back.
        Config::from_toml_str(DEFAULT_CONFIG_TOML, EMBEDDED, &|_| None)
            .unwrap_or_else(|_| Config::builtin())
    }

    fn builtin() -> Config {
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 5000)),
                max_manifest_size: 4 << 20,
                hosted_writes: HostedWrites::Loopback,
            },
            storage: StorageConfig {
                data_dir: PathBuf::from("./data"),
                upload_expiry: Duration::from_secs(24 * 3600),
                upload_purge_interval: Duration::from_secs(3600),
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            origin: EMBEDDED.into(),
        }
    }

    /// The effective config as TOML, secrets replaced by `<redacted>`;
    /// it parses back with [`Config::from_toml_str`].
    pub fn to_toml_redacted(&self) -> String {
        let section = |pairs: &[(&str, String)]| {
            let t: Table = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                .collect();
            Value::Table(t)
        };
        let mut root = Table::new();
        root.insert(
            "server".into(),
            section(&[
                ("listen", self.server.listen.to_string()),
                (
                    "max_manifest_size",
                    format_size(self.server.max_manifest_size),
                ),
                ("hosted_writes", self.server.hosted_writes.as_str().into()),
            ]),
        );
        root.insert(
            "storage".into(),
            section(&[
                ("data_dir", self.storage.data_dir.to_string_lossy().into()),
                ("upload_expiry", format_duration(self.storage.upload_expiry)),
                (
                    "upload_purge_interval",
                    format_duration(self.storage.upload_purge_interval),
                ),
            ]),
        );
        root.insert(
            "log".into(),
            section(&[
                ("level", self.log.level.clone()),
                ("format", self.log.format.as_str().into()),
            ]),
        );
        let origin = self.origin.replace(['\r', '\n'], " ");
        format!("# effective configuration, loaded from {origin}\n{root}")
    }

    fn build(mut table: Table, origin: &str, origins: &Origins) -> Result<Config, ConfigError> {
        let server: RawServer = origins.section(&mut table, "server")?;
        let storage: RawStorage = origins.section(&mut table, "storage")?;
        let log: RawLog = origins.section(&mut table, "log")?;
        let o = origins;
        Ok(Config {
            server: ServerConfig {
                listen: o.check("server.listen", parse_socket_addr(&server.listen))?,
                max_manifest_size: o.check(
                    "server.max_manifest_size",
                    positive_size(&server.max_manifest_size).and_then(|n| {
                        if n <= MAX_MANIFEST_SIZE_LIMIT {
                            Ok(n)
                        } else {
                            Err(format!(
                                "{:?} is larger than the limit of 64MiB",
                                server.max_manifest_size
                            ))
                        }
                    }),
                )?,
                hosted_writes: o.check(
                    "server.hosted_writes",
                    match server.hosted_writes.as_str() {
                        "loopback" => Ok(HostedWrites::Loopback),
                        "any" => Ok(HostedWrites::Any),
                        other => Err(format!(
                            "invalid value {other:?}: expected \"loopback\" or \"any\""
                        )),
                    },
                )?,
            },
            storage: StorageConfig {
                data_dir: o.check(
                    "storage.data_dir",
                    non_empty(&storage.data_dir).map(PathBuf::from),
                )?,
                upload_expiry: o.check(
                    "storage.upload_expiry",
                    positive_duration(&storage.upload_expiry),
                )?,
                upload_purge_interval: o.check(
                    "storage.upload_purge_interval",
                    positive_duration(&storage.upload_purge_interval),
                )?,
            },
            log: LogConfig {
                level: o.check("log.level", non_empty(&log.level))?,
                format: o.check(
                    "log.format",
                    match log.format.as_str() {
                        "text" => Ok(LogFormat::Text),
                        "json" => Ok(LogFormat::Json),
                        other => Err(format!(
                            "invalid value {other:?}: expected \"text\" or \"json\""
                        )),
                    },
                )?,
            },
            origin: origin.to_string(),
        })
    }
}

/// Where each dotted key's value came from; keys not listed come from the embedded default.
#[derive(Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn of(&self, key: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| format!("config {EMBEDDED}"))
    }

    fn check<T>(&self, key: &str, result: Result<T, String>) -> Result<T, ConfigError> {
        result.map_err(|problem| ConfigError::Invalid {
            origin: self.of(key),
            key: key.to_string(),
            problem,
        })
    }

    fn section<T: DeserializeOwned>(
        &self,
        table: &mut Table,
        name: &str,
    ) -> Result<T, ConfigError> {
        let value = table
            .remove(name)
            .ok_or_else(|| "missing section".to_string());
        self.check(
            name,
            value.and_then(|v| {
                v.try_into()
                    .map_err(|e: toml::de::Error| one_line(e.message()))
            }),
        )
    }
}

fn parse_table(text: &str, label: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let before = text.get(..at).unwrap_or(text);
        ConfigError::Syntax {
            origin: label.to_string(),
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
            message: one_line(e.message()),
        }
    })
}

fn one_line(message: &str) -> String {
    message.trim().replace(['\r', '\n'], "; ")
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Replaces `${VAR}` in every string under `value`; `$${` is a literal `${`.
fn expand_value(
    value: &mut Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    label: &str,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, env).map_err(|problem| ConfigError::Invalid {
                origin: label.to_string(),
                key: path.to_string(),
                problem,
            })?;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{i}]"), env, label)?;
            }
        }
        Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_value(item, &join(path, key), env, label)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let end = body
                .find('}')
                .ok_or("unterminated ${ (write $${ for a literal ${)")?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?}"));
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Merges `over` into `base` key by key; a key absent from `base` (the default) is unknown.
fn merge(
    base: &mut Table,
    over: Table,
    prefix: &str,
    label: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (key, value) in over {
        let path = join(prefix, &key);
        let Some(slot) = base.get_mut(&key) else {
            return Err(ConfigError::UnknownKey {
                origin: label.to_string(),
                key: path,
            });
        };
        if let Err(problem) = same_type(slot, &value) {
            return Err(ConfigError::Invalid {
                origin: label.to_string(),
                key: path,
                problem,
            });
        }
        origins.0.insert(path.clone(), label.to_string());
        match (slot, value) {
            (Value::Table(slot), Value::Table(value)) => merge(slot, value, &path, label, origins)?,
            (slot, value) => *slot = value,
        }
    }
    Ok(())
}

fn same_type(default: &Value, value: &Value) -> Result<(), String> {
    let same = std::mem::discriminant(default) == std::mem::discriminant(value)
        || matches!((default, value), (Value::Float(_), Value::Integer(_)));
    match default {
        _ if same => Ok(()),
        Value::String(_) => Err(format!(
            "expected a string like {default}, found {} {value}",
            value.type_str()
        )),
        _ => Err(format!(
            "expected {}, found {}",
            default.type_str(),
            value.type_str()
        )),
    }
}

/// Applies `AGENT_REGISTRY_<SECTION>_<KEY>` for every section/key of the default.
fn apply_env(
    merged: &mut Table,
    default: &Table,
    env: &dyn Fn(&str) -> Option<String>,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (section, keys) in default {
        let (Value::Table(keys), Some(Value::Table(target))) = (keys, merged.get_mut(section))
        else {
            continue;
        };
        for (key, default_value) in keys {
            let var = format!(
                "{ENV_PREFIX}{}_{}",
                section.to_uppercase(),
                key.to_uppercase()
            );
            let Some(raw) = env(&var) else { continue };
            let path = format!("{section}.{key}");
            let label = format!("environment {var}");
            let value = env_value(&raw, default_value).map_err(|problem| ConfigError::Invalid {
                origin: label.clone(),
                key: path.clone(),
                problem,
            })?;
            target.insert(key.clone(), value);
            let nested = format!("{path}.");
            origins.0.retain(|k, _| !k.starts_with(&nested));
            origins.0.insert(path, label);
        }
    }
    Ok(())
}

/// Converts an environment string to the type the default has for that key.
fn env_value(raw: &str, default: &Value) -> Result<Value, String> {
    let trimmed = raw.trim();
    match default {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Integer(_) => trimmed
            .parse()
            .map(Value::Integer)
            .map_err(|_| format!("invalid integer {raw:?}")),
        Value::Float(_) => trimmed
            .parse()
            .map(Value::Float)
            .map_err(|_| format!("invalid number {raw:?}")),
        Value::Boolean(_) => match trimmed {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err(format!("invalid boolean {raw:?}: expected true or false")),
        },
        Value::Datetime(_) | Value::Array(_) | Value::Table(_) => {
            let mut doc: Table =
                format!("v = {trimmed}")
                    .parse()
                    .map_err(|e: toml::de::Error| {
                        format!("invalid toml value {raw:?}: {}", one_line(e.message()))
                    })?;
            let value = doc
                .remove("v")
                .ok_or_else(|| format!("invalid toml value {raw:?}"))?;
            same_type(default, &value)?;
            Ok(value)
        }
    }
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid socket address {s:?}"))
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn positive_size(s: &str) -> Result<u64, String> {
    parse_size(s).and_then(|n| {
        if n > 0 {
            Ok(n)
        } else {
            Err("must be greater than 0".into())
        }
    })
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err("must be greater than 0".into())
        } else {
            Ok(d)
        }
    })
}

/// Parses `"10GB"` (10^9), `"4MiB"` (4 * 2^20), `"1.5GB"`, `"100B"` or bare bytes `"1024"`;
/// units B, KB, KiB, MB, MiB, GB, GiB, TB, TiB in any case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || number.ends_with('.') || frac.contains('.') || number.len() > 20 {
        return Err(format!(
            "invalid size {s:?}: expected a number and a unit, e.g. \"4MiB\""
        ));
    }
    let multiplier = match SIZE_UNITS
        .iter()
        .find(|(u, _)| u.eq_ignore_ascii_case(unit))
    {
        Some((_, m)) => *m,
        None if unit.is_empty() => 1,
        None => {
            return Err(format!(
            "invalid size {s:?}: unknown unit {unit:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
        ))
        }
    };
    // At most 20 digits, so this fits in u128 even times 2^40.
    let digits: u128 = format!("{int}{frac}")
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    let scale = 10u128.pow(frac.len() as u32);
    let bytes = digits * u128::from(multiplier);
    if bytes % scale != 0 {
        return Err(format!("invalid size {s:?}: not a whole number of bytes"));
    }
    u64::try_from(bytes / scale).map_err(|_| format!("invalid size {s:?}: too large"))
}

/// Renders bytes with the largest unit that divides them exactly (`4MiB`, `10GB`, `100B`).
pub fn format_size(bytes: u64) -> String {
    match SIZE_UNITS.iter().find(|(_, m)| bytes % m == 0) {
        Some((unit, m)) if bytes > 0 => format!("{}{unit}", bytes / m),
        _ => format!("{bytes}B"),
    }
}

/// Parses `"24h"`, `"90d"`, `"500ms"`, `"1w"` or combinations like `"1h30m"`;
/// units ms, s, m, h, d, w. A bare number is rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?}: {why}");
    let add_unit = "add a unit (ms, s, m, h, d, w)";
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let u_end = rest[n_end..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |i| n_end + i);
        let (number, unit) = (&rest[..n_end], &rest[n_end..u_end]);
        if number.is_empty() {
            return Err(bad("expected a number and a unit, e.g. \"24h\""));
        }
        let millis = match DURATION_UNITS.iter().find(|(u, _)| *u == unit) {
            Some((_, ms)) => *ms,
            None if unit.is_empty() && n_end == rest.len() => return Err(bad(add_unit)),
            None if unit.is_empty() => {
                return Err(bad(&format!("unexpected {:?}", &rest[n_end..])))
            }
            None => {
                return Err(bad(&format!(
                    "unknown unit {unit:?} (use ms, s, m, h, d, w)"
                )))
            }
        };
        total = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(millis))
            .and_then(|ms| ms.checked_add(total))
            .ok_or_else(|| bad("too large"))?;
        rest = &rest[u_end..];
    }
    Ok(Duration::from_millis(total))
}

/// Renders a duration with the largest unit that divides it exactly (`1d`, `90m`, `500ms`);
/// sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match DURATION_UNITS.iter().find(|(_, m)| ms % m == 0) {
        Some((unit, m)) if ms > 0 => format!("{}{unit}", ms / m),
        _ => "0s".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "/etc/ar.toml";

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        Config::from_toml_str(text, ORIGIN, &env_of(env)).map_err(|e| e.to_string())
    }

    #[test]
    fn default_parses_and_matches_builtin() {
        let parsed = Config::from_toml_str(DEFAULT_CONFIG_TOML, EMBEDDED, &|_| None).unwrap();
        let builtin = Config::builtin();
        assert_eq!(parsed.server, builtin.server);
        assert_eq!(parsed.storage, builtin.storage);
        assert_eq!(parsed.log, builtin.log);
        let loaded = Config::load(None, &|_| None).unwrap();
        assert_eq!(loaded.origin, "embedded default");
        assert_eq!(Config::embedded_default().server.max_manifest_size, 4 << 20);
    }

    #[test]
    fn partial_file_merges_over_default() {
        let c = load("[server]\nlisten = \"127.0.0.1:6000\"\n", &[]).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(c.server.max_manifest_size, 4 << 20);
        assert_eq!(c.server.hosted_writes, HostedWrites::Loopback);
        assert_eq!(c.storage, Config::builtin().storage);
        assert_eq!(c.origin, ORIGIN);
        let empty = load("", &[]).unwrap();
        assert_eq!(empty.log, Config::builtin().log);
    }

    #[test]
    fn errors_name_origin_and_key() {
        let env_bad_listen = [("AGENT_REGISTRY_SERVER_LISTEN", "nope")];
        let env_bad_expiry = [("AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY", "5")];
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            (
                "[server]\nlisten = \"0.0.0.0:99999\"",
                &[],
                "config /etc/ar.toml: key server.listen: invalid socket address \"0.0.0.0:99999\"",
            ),
            ("[server]\nlisen = \"x\"", &[], "config /etc/ar.toml: unknown key server.lisen"),
            ("[sever]\nlisten = \"x\"", &[], "config /etc/ar.toml: unknown key sever"),
            (
                "[storage]\nupload_expiry = \"24\"",
                &[],
                "config /etc/ar.toml: key storage.upload_expiry: invalid duration \"24\": add a unit (ms, s, m, h, d, w)",
            ),
            ("# x\n\n[server\n", &[], "config /etc/ar.toml: line 3 column 8: "),
            ("[server]\nlisten = 5000", &[], "config /etc/ar.toml: key server.listen: expected a string like \"0.0.0.0:5000\", found integer 5000"),
            ("server = 1", &[], "config /etc/ar.toml: key server: expected table, found integer"),
            ("[server]\nmax_manifest_size = \"0\"", &[], "key server.max_manifest_size: must be greater than 0"),
            ("[server]\nmax_manifest_size = \"65MiB\"", &[], "key server.max_manifest_size: \"65MiB\" is larger than the limit of 64MiB"),
            ("[server]\nmax_manifest_size = \"10XB\"", &[], "key server.max_manifest_size: invalid size \"10XB\": unknown unit \"XB\""),
            ("[server]\nhosted_writes = \"all\"", &[], "key server.hosted_writes: invalid value \"all\": expected \"loopback\" or \"any\""),
            ("[storage]\nupload_purge_interval = \"0s\"", &[], "key storage.upload_purge_interval: must be greater than 0"),
            ("[storage]\ndata_dir = \"\"", &[], "config /etc/ar.toml: key storage.data_dir: must not be empty"),
            ("[log]\nlevel = \" \"", &[], "config /etc/ar.toml: key log.level: must not be empty"),
            ("[log]\nformat = \"xml\"", &[], "key log.format: invalid value \"xml\": expected \"text\" or \"json\""),
            ("[storage]\ndata_dir = \"${NOPE}/x\"", &[], "config /etc/ar.toml: key storage.data_dir: environment variable NOPE is not set"),
            ("[log]\nlevel = \"${OPEN\"", &[], "config /etc/ar.toml: key log.level: unterminated ${"),
            ("", &env_bad_listen, "environment AGENT_REGISTRY_SERVER_LISTEN: key server.listen: invalid socket address \"nope\""),
            (
                "[storage]\nupload_expiry = \"1h\"",
                &env_bad_expiry,
                "environment AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY: key storage.upload_expiry: invalid duration \"5\": add a unit",
            ),
        ];
        for (text, env, expected) in cases {
            let err = load(text, env).unwrap_err();
            assert!(
                err.contains(expected),
                "{text:?}: got {err:?}, want {expected:?}"
            );
            assert!(
                err.starts_with("config ") || err.starts_with("environment "),
                "{err}"
            );
            assert!(!err.contains('\n') && !err.ends_with('.'), "{err:?}");
        }
    }

    #[test]
    fn read_error_names_path() {
        let err = Config::load(Some(Path::new("/nonexistent/x.toml")), &|_| None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config /nonexistent/x.toml: cannot read: "),
            "{err}"
        );
    }

    #[test]
    fn load_reads_file() {
        let path =
            std::env::temp_dir().join(format!("agent-registry-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[log]\nformat = \"json\"\n").unwrap();
        let result = Config::load(Some(&path), &|_| None);
        std::fs::remove_file(&path).unwrap();
        let c = result.unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.origin, path.display().to_string());
    }

    #[test]
    fn env_overrides_string_size_duration() {
        let env = [
            ("AGENT_REGISTRY_SERVER_LISTEN", "127.0.0.1:7000"),
            ("AGENT_REGISTRY_SERVER_MAX_MANIFEST_SIZE", "8MiB"),
            ("AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY", "12h"),
            ("AGENT_REGISTRY_STORAGE_DATA_DIR", "/var/lib/ar"),
        ];
        let c = load("[server]\nlisten = \"127.0.0.1:6000\"", &env).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.server.max_manifest_size, 8 << 20);
        assert_eq!(c.storage.upload_expiry, Duration::from_secs(12 * 3600));
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/ar"));
    }

    #[test]
    fn env_values_take_the_default_type() {
        let ok: &[(&str, Value, Value)] = &[
            ("x", Value::String("a".into()), Value::String("x".into())),
            (" 42 ", Value::Integer(1), Value::Integer(42)),
            ("1.5", Value::Float(1.0), Value::Float(1.5)),
            ("true", Value::Boolean(false), Value::Boolean(true)),
            (
                "[1, 2]",
                Value::Array(vec![]),
                Value::Array(vec![Value::Integer(1), Value::Integer(2)]),
            ),
        ];
        for (raw, default, want) in ok {
            assert_eq!(&env_value(raw, default).unwrap(), want, "{raw}");
        }
        let bad: &[(&str, Value)] = &[
            ("x", Value::Integer(1)),
            ("yes", Value::Boolean(false)),
            ("[1,", Value::Array(vec![])),
            ("3", Value::Array(vec![])),
        ];
        for (raw, default) in bad {
            assert!(env_value(raw, default).is_err(), "{raw}");
        }
    }

    #[test]
    fn expands_env_references() {
        let env = [("HOME", "/home/a"), ("LVL", "debug")];
        let text = "[storage]\ndata_dir = \"${HOME}/data\"\n[log]\nlevel = \"agent_registry=${LVL},x=$${LVL}$$y$\"\n";
        let c = load(text, &env).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/home/a/data"));
        assert_eq!(c.log.level, "agent_registry=debug,x=${LVL}$$y$");
    }

    #[test]
    fn parse_size_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("10GB", Some(10_000_000_000)),
            ("4MiB", Some(4 << 20)),
            ("256KB", Some(256_000)),
            ("512KiB", Some(512 << 10)),
            ("100B", Some(100)),
            ("1024", Some(1024)),
            ("1.5GB", Some(1_500_000_000)),
            ("2tb", Some(2_000_000_000_000)),
            ("1TiB", Some(1 << 40)),
            (" 3 mib ", Some(3 << 20)),
            ("", None),
            ("10XB", None),
            ("-1GB", None),
            ("1.5", None),
            ("1.", None),
            (".5GB", None),
            ("GB", None),
            ("99999999999999999999TB", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn parse_duration_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("24h", Some(86_400_000)),
            ("90d", Some(90 * 86_400_000)),
            ("30s", Some(30_000)),
            ("500ms", Some(500)),
            ("15m", Some(900_000)),
            ("1h30m", Some(5_400_000)),
            ("1w", Some(604_800_000)),
            ("0s", Some(0)),
            ("", None),
            ("h", None),
            ("24", None),
            ("1h30", None),
            ("1.5h", None),
            ("24H", None),
            ("-1h", None),
            ("99999999999999999999w", None),
        ];
        for (input, want) in cases {
            let got = parse_duration(input).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, *want, "{input:?}");
        }
        let hint = parse_duration("24").unwrap_err();
        assert_eq!(
            hint,
            "invalid duration \"24\": add a unit (ms, s, m, h, d, w)"
        );
    }

    #[test]
    fn format_round_trips() {
        for n in [
            0,
            1,
            100,
            1000,
            1024,
            4 << 20,
            10_000_000_000,
            1_500_000_000,
            2_048_000,
            u64::MAX,
        ] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{}", format_size(n));
        }
        assert_eq!(format_size(4 << 20), "4MiB");
        assert_eq!(format_size(10_000_000_000), "10GB");
        for ms in [
            1,
            500,
            1000,
            90_000,
            5_400_000,
            86_400_000,
            90 * 86_400_000,
            604_800_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(
                parse_duration(&format_duration(d)),
                Ok(d),
                "{}",
                format_duration(d)
            );
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn redacted_toml_reparses_to_equal_config() {
        let env = [("AGENT_REGISTRY_LOG_FORMAT", "json")];
        let text = "[server]\nlisten = \"[::1]:6000\"\nmax_manifest_size = \"1.5MB\"\nhosted_writes = \"any\"\n[storage]\nupload_expiry = \"1h30m\"\n";
        let c = load(text, &env).unwrap();
        let rendered = c.to_toml_redacted();
        let back = Config::from_toml_str(&rendered, "rendered", &|_| None).unwrap();
        assert_eq!(back.server, c.server);
        assert_eq!(back.storage, c.storage);
        assert_eq!(back.log, c.log);
        assert!(rendered.starts_with("# effective configuration, loaded from /etc/ar.toml\n"));
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.to_string(), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
