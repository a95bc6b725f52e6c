//! Configuration: TOML file -> `${VAR}` expansion -> merge over the embedded default -> env overrides -> validated [`Config`].
//!
//! Unknown keys and wrong types are caught while merging over the default; each key
//! remembers where its value came from, so errors name the file or variable. Adding a
//! section: write every key into `config/agent-registry.toml`, add a `Raw*` struct (and
//! a `RawConfig` field), a typed struct, and its lines in `Config::build` and
//! `Config::to_toml_redacted`; env overrides and unknown-key checks follow the default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The default config with every key documented; compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/agent-registry.toml");

const EMBEDDED: &str = "embedded default";
const MAX_MANIFEST_SIZE_LIMIT: u64 = 64 << 20;
const REDACTED: &str = "<redacted>";

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

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
    pub const ALL: [HostedWrites; 2] = [HostedWrites::Loopback, HostedWrites::Any];

    pub fn as_str(self) -> &'static str {
        match self {
            HostedWrites::Loopback => "loopback",
            HostedWrites::Any => "any",
        }
    }
}

impl LogFormat {
    pub const ALL: [LogFormat; 2] = [LogFormat::Text, LogFormat::Json];

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A secret string: `Debug`, `Display` and `Serialize` give `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: for sending it, never for logging it.
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

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A config problem. `origin` says where the value came from:
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

fn invalid(origin: &str, key: &str, problem: String) -> ConfigError {
    let (origin, key) = (origin.to_string(), key.to_string());
    ConfigError::Invalid {
        origin,
        key,
        problem,
    }
}

// The file schema. Values arrive merged over the default, so every key is present.
// `Serialize` renders the effective config (a `Secret` field renders as `<redacted>`).

#[derive(Serialize)]
struct RawConfig {
    server: RawServer,
    storage: RawStorage,
    log: RawLog,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    max_manifest_size: String,
    hosted_writes: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: String,
    upload_expiry: String,
    upload_purge_interval: String,
}

#[derive(Deserialize, Serialize)]
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
        let (mut merged, mut origins) = (default.clone(), Origins::default());
        merge(&mut merged, user, "", &label, &mut origins)?;
        apply_env(&mut merged, &default, env, &mut origins)?;
        Config::build(merged, origin, &origins)
    }

    /// The embedded default with no env overrides.
    pub fn embedded_default() -> Config {
        // A test keeps the parsed default equal to `builtin`, so this never falls back.
        Config::from_toml_str(DEFAULT_CONFIG_TOML, EMBEDDED, &|_| None)
            .unwrap_or_else(|_| Config::builtin())
    }

    fn builtin() -> Config {
        let server = ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5000)),
            max_manifest_size: 4 << 20,
            hosted_writes: HostedWrites::Loopback,
        };
        let storage = StorageConfig {
            data_dir: PathBuf::from("./data"),
            upload_expiry: Duration::from_secs(24 * 3600),
            upload_purge_interval: Duration::from_secs(3600),
        };
        let log = LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        };
        Config {
            server,
            storage,
            log,
            origin: EMBEDDED.into(),
        }
    }

    /// The effective config as TOML, secrets replaced by `<redacted>`;
    /// it parses back with [`Config::from_toml_str`].
    pub fn to_toml_redacted(&self) -> String {
        let (server, storage, log) = (&self.server, &self.storage, &self.log);
        let raw = RawConfig {
            server: RawServer {
                listen: server.listen.to_string(),
                max_manifest_size: format_size(server.max_manifest_size),
                hosted_writes: server.hosted_writes.as_str().into(),
            },
            storage: RawStorage {
                data_dir: storage.data_dir.to_string_lossy().into(),
                upload_expiry: format_duration(storage.upload_expiry),
                upload_purge_interval: format_duration(storage.upload_purge_interval),
            },
            log: RawLog {
                level: log.level.clone(),
                format: log.format.as_str().into(),
            },
        };
        let body = toml::to_string(&raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
        // Values hold no `${VAR}` any more: escape so reading it back does not expand again.
        let body = body.replace("${", "$${");
        let origin = self.origin.replace(['\r', '\n'], " ");
        format!("# effective configuration, loaded from {origin}\n{body}")
    }

    fn build(mut table: Table, origin: &str, o: &Origins) -> Result<Config, ConfigError> {
        let server: RawServer = o.section(&mut table, "server")?;
        let storage: RawStorage = o.section(&mut table, "storage")?;
        let log: RawLog = o.section(&mut table, "log")?;
        let size = &server.max_manifest_size;
        let too_large = format!("{size:?} is larger than the limit of 64MiB");
        let manifest_size = positive(parse_size(size))
            .and_then(|n| (n <= MAX_MANIFEST_SIZE_LIMIT).then_some(n).ok_or(too_large));
        let writes = one_of(
            &server.hosted_writes,
            &HostedWrites::ALL,
            HostedWrites::as_str,
        );
        let format = one_of(&log.format, &LogFormat::ALL, LogFormat::as_str);
        let expiry = positive(parse_duration(&storage.upload_expiry));
        let purge = positive(parse_duration(&storage.upload_purge_interval));
        Ok(Config {
            server: ServerConfig {
                listen: o.check("server.listen", parse_socket_addr(&server.listen))?,
                max_manifest_size: o.check("server.max_manifest_size", manifest_size)?,
                hosted_writes: o.check("server.hosted_writes", writes)?,
            },
            storage: StorageConfig {
                data_dir: PathBuf::from(o.check("storage.data_dir", non_empty(&storage.data_dir))?),
                upload_expiry: o.check("storage.upload_expiry", expiry)?,
                upload_purge_interval: o.check("storage.upload_purge_interval", purge)?,
            },
            log: LogConfig {
                level: o.check("log.level", non_empty(&log.level))?,
                format: o.check("log.format", format)?,
            },
            origin: origin.to_string(),
        })
    }
}

/// Where each dotted key's value came from; keys not listed come from the embedded default.
#[derive(Default)]
struct Origins(BTreeMap<String, String>);

impl Origins {
    fn check<T>(&self, key: &str, result: Result<T, String>) -> Result<T, ConfigError> {
        let embedded = format!("config {EMBEDDED}");
        result.map_err(|problem| invalid(self.0.get(key).unwrap_or(&embedded), key, problem))
    }

    fn section<T: DeserializeOwned>(&self, table: &mut Table, key: &str) -> Result<T, ConfigError> {
        let value = table
            .remove(key)
            .ok_or_else(|| "missing section".to_string());
        let parse = |v: Value| {
            v.try_into()
                .map_err(|e: toml::de::Error| one_line(e.message()))
        };
        self.check(key, value.and_then(parse))
    }
}

fn parse_table(text: &str, label: &str) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| {
        let before = text.get(..e.span().map_or(0, |s| s.start)).unwrap_or(text);
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
    match prefix {
        "" => key.to_string(),
        _ => format!("{prefix}.{key}"),
    }
}

/// Replaces `${VAR}` in every string under `value`.
fn expand_value(value: &mut Value, path: &str, env: Env, label: &str) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand(s, env).map_err(|problem| invalid(label, path, problem))?;
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

/// Replaces `${VAR}` from `env`; `$${` is a literal `${`, any other `$` stays.
fn expand(s: &str, env: Env) -> Result<String, String> {
    let (mut out, mut rest) = (String::with_capacity(s.len()), s);
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
            out.push_str(&env(name).ok_or(format!("environment variable {name} is not set"))?);
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
    o: &mut Origins,
) -> Result<(), ConfigError> {
    for (key, value) in over {
        let path = join(prefix, &key);
        let Some(slot) = base.get_mut(&key) else {
            return Err(ConfigError::UnknownKey {
                origin: label.to_string(),
                key: path,
            });
        };
        same_type(slot, &value).map_err(|problem| invalid(label, &path, problem))?;
        o.0.insert(path.clone(), label.to_string());
        match (slot, value) {
            (Value::Table(slot), Value::Table(value)) => merge(slot, value, &path, label, o)?,
            (slot, value) => *slot = value,
        }
    }
    Ok(())
}

/// Checks that `value` has the type of the default (an integer may stand for a float).
fn same_type(default: &Value, value: &Value) -> Result<(), String> {
    let (want, got) = (default.type_str(), value.type_str());
    match default {
        Value::Float(_) if value.is_integer() => Ok(()),
        _ if want == got => Ok(()),
        Value::String(_) => Err(format!(
            "expected a string like {default}, found {got} {value}"
        )),
        _ => Err(format!("expected {want}, found {got}")),
    }
}

/// Applies `AGENT_REGISTRY_<SECTION>_<KEY>` for every section and key of the default.
fn apply_env(
    merged: &mut Table,
    default: &Table,
    env: Env,
    o: &mut Origins,
) -> Result<(), ConfigError> {
    for (section, keys) in default {
        let (Value::Table(keys), Some(Value::Table(target))) = (keys, merged.get_mut(section))
        else {
            continue;
        };
        for (key, default_value) in keys {
            let var = format!("AGENT_REGISTRY_{section}_{key}").to_uppercase();
            let Some(raw) = env(&var) else { continue };
            let (path, label) = (format!("{section}.{key}"), format!("environment {var}"));
            let value = env_value(&raw, default_value).map_err(|e| invalid(&label, &path, e))?;
            target.insert(key.clone(), value);
            let nested = format!("{path}.");
            o.0.retain(|k, _| !k.starts_with(&nested));
            o.0.insert(path, label);
        }
    }
    Ok(())
}

/// Converts an environment string to the type of the default: a string stays
/// a string, anything else is parsed as a TOML value (`42`, `true`, `["a"]`).
fn env_value(raw: &str, default: &Value) -> Result<Value, String> {
    if default.is_str() {
        return Ok(Value::String(raw.to_string()));
    }
    let parsed = format!("v = {raw}").parse::<Table>().ok();
    let value = parsed.and_then(|mut t| t.remove("v"));
    let value = value.ok_or_else(|| format!("invalid {} {raw:?}", default.type_str()))?;
    same_type(default, &value)?;
    Ok(value)
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid socket address {s:?}"))
}

fn non_empty(s: &str) -> Result<String, String> {
    match s.trim() {
        "" => Err("must not be empty".into()),
        _ => Ok(s.to_string()),
    }
}

/// Rejects zero (`0` bytes, a zero duration).
fn positive<T: Default + PartialEq>(parsed: Result<T, String>) -> Result<T, String> {
    parsed.and_then(|v| match v == T::default() {
        true => Err("must be greater than 0".into()),
        false => Ok(v),
    })
}

/// Picks the value of `all` named `s`.
fn one_of<T: Copy>(s: &str, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    all.iter().copied().find(|v| name(*v) == s).ok_or_else(|| {
        let names: Vec<String> = all.iter().map(|v| format!("{:?}", name(*v))).collect();
        format!("invalid value {s:?}: expected {}", names.join(" or "))
    })
}

/// Parses `"10GB"` (10^9), `"4MiB"` (4 * 2^20), `"1.5GB"`, `"100B"` or bare bytes
/// `"1024"`; units B, KB, KiB, MB, MiB, GB, GiB, TB, TiB in any case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
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
            let units = "B, KB, KiB, MB, MiB, GB, GiB, TB, TiB";
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use {units})"
            ));
        }
    };
    // At most 20 digits: fits in u128 even times 2^40.
    let digits: u128 = format!("{int}{frac}")
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    let (bytes, scale) = (
        digits * u128::from(multiplier),
        10u128.pow(frac.len() as u32),
    );
    if bytes % scale != 0 {
        return Err(format!("invalid size {s:?}: not a whole number of bytes"));
    }
    u64::try_from(bytes / scale).map_err(|_| format!("invalid size {s:?}: too large"))
}

/// Renders bytes with the largest unit that divides them exactly (`4MiB`, `10GB`, `100B`).
pub fn format_size(bytes: u64) -> String {
    match SIZE_UNITS.iter().find(|(_, m)| bytes % m == 0) {
        Some((unit, m)) if bytes > 0 => format!("{}{unit}", bytes / m),
        _ => "0B".to_string(),
    }
}

/// Parses `"24h"`, `"90d"`, `"500ms"`, `"1w"` or combinations like `"1h30m"`
/// (units ms, s, m, h, d, w); a bare number is rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {s:?}: {why}");
    let (units, mut rest, mut total) = ("ms, s, m, h, d, w", s.trim(), 0u64);
    if rest.is_empty() {
        return Err(bad("empty".into()));
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let u_end = rest[n_end..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |i| n_end + i);
        let (number, unit) = (&rest[..n_end], &rest[n_end..u_end]);
        let millis = match DURATION_UNITS.iter().find(|(u, _)| *u == unit) {
            _ if number.is_empty() => Err("expected a number and a unit, e.g. \"24h\"".into()),
            Some((_, ms)) => Ok(*ms),
            None if unit.is_empty() && n_end == rest.len() => Err(format!("add a unit ({units})")),
            None if unit.is_empty() => Err(format!("unexpected {:?}", &rest[n_end..])),
            None => Err(format!("unknown unit {unit:?} (use {units})")),
        };
        let n = number.parse::<u64>().ok();
        let sum = millis.map(|ms| n.and_then(|n| n.checked_mul(ms)?.checked_add(total)));
        total = sum.map_err(bad)?.ok_or_else(|| bad("too large".into()))?;
        rest = &rest[u_end..];
    }
    Ok(Duration::from_millis(total))
}

/// Renders a duration with the largest unit that divides it exactly (`1d`, `90m`,
/// `500ms`); sub-millisecond parts are dropped.
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

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let env = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        Config::from_toml_str(text, "/etc/ar.toml", &env).map_err(|e| e.to_string())
    }

    /// `text` with `env` fails with exactly `expected`.
    fn check(text: &str, env: &[(&str, &str)], expected: &str) {
        assert_eq!(
            load(text, env).expect_err(text),
            expected,
            "{text:?} {env:?}"
        );
    }

    #[test]
    fn default_parses_and_matches_builtin() {
        let parsed = Config::load(None, &|_| None).unwrap();
        let builtin = Config::builtin();
        assert_eq!(
            (&parsed.server, &parsed.storage, &parsed.log),
            (&builtin.server, &builtin.storage, &builtin.log)
        );
        assert_eq!(parsed.origin, "embedded default");
        assert_eq!(Config::embedded_default().server.max_manifest_size, 4 << 20);
    }

    #[test]
    fn partial_file_merges_over_default() {
        let c = load("[server]\nlisten = \"127.0.0.1:6000\"\n", &[]).unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
        assert_eq!(
            (c.server.max_manifest_size, c.server.hosted_writes),
            (4 << 20, HostedWrites::Loopback)
        );
        assert_eq!(
            (c.storage, c.origin.as_str()),
            (Config::builtin().storage, "/etc/ar.toml")
        );
        assert_eq!(load("", &[]).unwrap().log, Config::builtin().log);
    }

    /// One case a line: `<toml text> => <error after "config /etc/ar.toml: ">`; `\n` is a newline.
    const FILE_ERRORS: &str = r#"
server.listen = "0.0.0.0:99999"        => key server.listen: invalid socket address "0.0.0.0:99999"
server.lisen = "x"                     => unknown key server.lisen
[sever]                                => unknown key sever
server.listen = 5000                   => key server.listen: expected a string like "0.0.0.0:5000", found integer 5000
server = 1                             => key server: expected table, found integer
# x\n\n[server                         => line 3 column 8: invalid table header; expected `.`, `]`
server.max_manifest_size = "0"         => key server.max_manifest_size: must be greater than 0
server.max_manifest_size = "65MiB"     => key server.max_manifest_size: "65MiB" is larger than the limit of 64MiB
server.max_manifest_size = "10XB"      => key server.max_manifest_size: invalid size "10XB": unknown unit "XB" (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)
server.hosted_writes = "all"           => key server.hosted_writes: invalid value "all": expected "loopback" or "any"
storage.upload_expiry = "24"           => key storage.upload_expiry: invalid duration "24": add a unit (ms, s, m, h, d, w)
storage.upload_purge_interval = "0s"   => key storage.upload_purge_interval: must be greater than 0
storage.data_dir = ""                  => key storage.data_dir: must not be empty
log.level = " "                        => key log.level: must not be empty
log.format = "xml"                     => key log.format: invalid value "xml": expected "text" or "json"
storage.data_dir = "${NOPE}/x"         => key storage.data_dir: environment variable NOPE is not set
log.level = "${OPEN"                   => key log.level: unterminated ${ (write $${ for a literal ${)
"#;

    #[test]
    fn file_errors_name_origin_and_key() {
        for line in FILE_ERRORS.lines().filter(|l| !l.is_empty()) {
            let (text, expected) = line.split_once(" => ").unwrap();
            let text = text.trim().replace("\\n", "\n");
            check(&text, &[], &format!("config /etc/ar.toml: {expected}"));
        }
    }

    #[test]
    fn env_errors_name_variable_and_key() {
        let env = [("AGENT_REGISTRY_SERVER_LISTEN", "nope")];
        let want = r#"environment AGENT_REGISTRY_SERVER_LISTEN: key server.listen: invalid socket address "nope""#;
        check("", &env, want);
        let env = [("AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY", "5")];
        let want = "environment AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY: key storage.upload_expiry: invalid duration \"5\": add a unit (ms, s, m, h, d, w)";
        check("storage.upload_expiry = \"1h\"", &env, want);
    }

    #[test]
    fn load_reads_file_or_names_it() {
        let err = Config::load(Some(Path::new("/nonexistent/x.toml")), &|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config /nonexistent/x.toml: cannot read: No such file or directory (os error 2)"
        );
        let path =
            std::env::temp_dir().join(format!("agent-registry-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[log]\nformat = \"json\"\n").unwrap();
        let result = Config::load(Some(&path), &|_| None);
        std::fs::remove_file(&path).unwrap();
        let c = result.unwrap();
        assert_eq!(
            (c.log.format, c.origin),
            (LogFormat::Json, path.display().to_string())
        );
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
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(c.server.max_manifest_size, 8 << 20);
        assert_eq!(c.storage.upload_expiry, Duration::from_secs(12 * 3600));
        assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/ar"));
    }

    #[test]
    fn env_values_take_the_default_type() {
        let (int, float, array) = (Value::Integer(1), Value::Float(1.0), Value::Array(vec![]));
        let ok = [
            (
                "x y",
                Value::String("a".into()),
                Value::String("x y".into()),
            ),
            (" 42 ", int.clone(), Value::Integer(42)),
            ("1.5", float.clone(), Value::Float(1.5)),
            ("2", float, Value::Integer(2)),
            ("true", Value::Boolean(false), Value::Boolean(true)),
            (
                "[1, 2]",
                array.clone(),
                Value::Array(vec![Value::Integer(1), Value::Integer(2)]),
            ),
        ];
        for (raw, default, want) in ok {
            assert_eq!(env_value(raw, &default), Ok(want), "{raw}");
        }
        assert_eq!(env_value("x", &int), Err(r#"invalid integer "x""#.into()));
        assert_eq!(
            env_value("yes", &Value::Boolean(false)),
            Err(r#"invalid boolean "yes""#.into())
        );
        assert_eq!(
            env_value("3", &array),
            Err("expected array, found integer".into())
        );
    }

    #[test]
    fn expands_env_references() {
        let env = [("HOME", "/home/a"), ("LVL", "debug")];
        let text = "storage.data_dir = \"${HOME}/data\"\nlog.level = \"ar=${LVL},x=$${LVL}$$y$\"\n";
        let c = load(text, &env).unwrap();
        assert_eq!(c.storage.data_dir, PathBuf::from("/home/a/data"));
        assert_eq!(c.log.level, "ar=debug,x=${LVL}$$y$");
    }

    #[test]
    fn parse_size_table() {
        let cases = [
            ("10GB", 10_000_000_000),
            ("4MiB", 4 << 20),
            ("256KB", 256_000),
            ("512KiB", 512 << 10),
            ("100B", 100),
            ("1024", 1024),
            ("1.5GB", 1_500_000_000),
            ("2tb", 2_000_000_000_000),
            ("1TiB", 1 << 40),
            (" 3 mib ", 3 << 20),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input:?}");
        }
        for bad in [
            "",
            "10XB",
            "-1GB",
            "1.5",
            "1.",
            ".5GB",
            "GB",
            "99999999999999999999TB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parse_duration_table() {
        let cases = [
            ("24h", 86_400_000),
            ("90d", 90 * 86_400_000),
            ("30s", 30_000),
            ("500ms", 500),
            ("15m", 900_000),
            ("1h30m", 5_400_000),
            ("1w", 604_800_000),
            ("0s", 0),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_millis(ms)),
                "{input:?}"
            );
        }
        for bad in ["", "24H", "-1h", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let errors = [
            ("24", "add a unit (ms, s, m, h, d, w)"),
            ("1h30", "add a unit (ms, s, m, h, d, w)"),
            ("1h30x", r#"unknown unit "x" (use ms, s, m, h, d, w)"#),
            ("1.5h", r#"unexpected ".5h""#),
            ("h", r#"expected a number and a unit, e.g. "24h""#),
        ];
        for (input, why) in errors {
            assert_eq!(
                parse_duration(input),
                Err(format!("invalid duration {input:?}: {why}"))
            );
        }
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
        assert_eq!(
            [format_size(4 << 20), format_size(10_000_000_000)],
            ["4MiB", "10GB"]
        );
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
        assert_eq!(
            [
                format_duration(Duration::from_secs(5400)),
                format_duration(Duration::ZERO)
            ],
            ["90m", "0s"]
        );
    }

    #[test]
    fn redacted_toml_reparses_to_equal_config() {
        let env = [("AGENT_REGISTRY_LOG_FORMAT", "json")];
        let text = "server.listen = \"[::1]:6000\"\nserver.max_manifest_size = \"1.5MB\"\n\
                    server.hosted_writes = \"any\"\nstorage.upload_expiry = \"1h30m\"\nlog.level = \"a$${b}\"\n";
        let c = load(text, &env).unwrap();
        let rendered = c.to_toml_redacted();
        let back = Config::from_toml_str(&rendered, "rendered", &|_| None).unwrap();
        assert_eq!(c.log.level, "a${b}");
        assert_eq!(
            (back.server, back.storage, back.log),
            (c.server, c.storage, c.log)
        );
        assert!(rendered.starts_with("# effective configuration, loaded from /etc/ar.toml\n"));
    }

    #[test]
    fn secret_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(
            [format!("{s:?}"), s.to_string()],
            ["<redacted>", "<redacted>"]
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), r#""<redacted>""#);
        assert_eq!(s.expose(), "hunter2");
    }
}
