//! Configuration: TOML file -> `${VAR}` expansion -> merge over the embedded default -> env overrides -> validated [`Config`].
//!
//! Unknown keys and wrong types are caught while merging over the default; each key
//! remembers where its value came from, so errors name the file or variable. Adding a
//! section: write every key into `config/agent-registry.toml`, add a `Raw*` struct (and
//! a `RawConfig` field), a typed struct, and its lines in `Config::build` and
//! `Config::to_toml_redacted`; env overrides and unknown-key checks follow the default.
//! `[upstreams."<host>"]` tables are the exception: their names are the user's, their
//! keys are checked against `upstream::template` (see `upstream.rs`).
//!
//! Files: `merge.rs` (tables before typing: `${VAR}`, merge, env, origins), `units.rs`
//! (sizes, durations), `tls.rs` (`[tls]`), `limits.rs` (`[limits]`), `auth.rs` (`[auth]`),
//! `cache.rs` (`[cache]`, whose `strategies` list is folded into a table before merging),
//! `upstream.rs` (`[mirror]`, `[upstreams]`, `--upstream`), `policy.rs` (`[policy]`),
//! `checks.rs` (host names, urls, aliases), `tests.rs` and `tests/upstreams.rs`.

mod auth;
mod base;
mod cache;
mod checks;
mod cluster;
mod limits;
mod merge;
mod policy;
mod preheat;
mod tls;
mod units;
mod upstream;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Table;

pub use auth::{check_bcrypt, Action, AuthConfig, RuleConfig, UserConfig, Visibility};
use base::{one_of, positive, EMBEDDED};
pub use base::{ConfigError, Secret};
pub use cache::{CacheConfig, CleanupConfig, GcConfig, MemoryConfig, Policy, Strategies};
pub use cluster::ClusterConfig;
pub use limits::{IpNet, LimitsConfig, Rate};
use merge::{add_named, apply_env, expand_value, merge, parse_table, Origins};
pub use policy::{PolicyConfig, SignaturePolicy};
pub use preheat::{Platform, PreheatConfig};
pub use tls::{TlsConfig, TlsFileError};
pub use units::{format_duration, format_size, parse_duration, parse_size};
pub use upstream::{MirrorConfig, ParentConfig, RateLimitScope, UpstreamConfig};
use upstream::{RawMirror, ShownUpstream};

/// The default config with every key documented; compiled in.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/agent-registry.toml");

const MAX_MANIFEST_SIZE_LIMIT: u64 = 64 << 20;
const MIN_HEADER_SIZE: u64 = 8 << 10;
const MAX_HEADER_SIZE: u64 = 16 << 20;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub mirror: MirrorConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    /// `[cache]`: disk and memory tiers, strategies, garbage collection.
    pub cache: CacheConfig,
    /// `[policy]`: pull policies (vulnerability threshold, signature rules).
    pub policy: PolicyConfig,
    /// The enabled upstreams, sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[preheat]]`: image lists kept warm.
    pub preheat: Vec<PreheatConfig>,
    /// `[cluster]`: peer mirror nodes sharing cold blobs by digest.
    pub cluster: ClusterConfig,
    /// `"embedded default"` or the path of the file it was loaded from.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bytes; a larger manifest PUT is rejected.
    pub max_manifest_size: u64,
    pub hosted_writes: HostedWrites,
    /// Open connections at most; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// A client must send a complete HTTP/1 request head within this time.
    pub header_read_timeout: Duration,
    /// Bytes: the HTTP/1 read buffer (request line + headers) and HTTP/2 header list.
    pub max_header_size: u64,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub keep_alive_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub drain_timeout: Duration,
    /// A second, plain-HTTP listener for health, metrics and the admin API only.
    pub admin_listen: Option<SocketAddr>,
    /// Send blob bytes from files with sendfile(2) on plain-HTTP/1 connections.
    pub sendfile: bool,
}

/// Who may push to and delete from hosted repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostedWrites {
    /// An identity the `[auth]` rules allow to push or delete.
    Auth,
    /// As `Auth`, and anonymous clients on 127.0.0.0/8 and ::1 may do anything to hosted
    /// repositories (development and tests).
    Loopback,
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
    pub const ALL: [HostedWrites; 2] = [HostedWrites::Auth, HostedWrites::Loopback];

    pub fn as_str(self) -> &'static str {
        match self {
            HostedWrites::Auth => "auth",
            HostedWrites::Loopback => "loopback",
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

// The file schema. Values arrive merged over the default, so every key is present.
// `Serialize` renders the effective config (a `Secret` field renders as `<redacted>`).

#[derive(Serialize)]
struct RawConfig {
    server: RawServer,
    tls: tls::RawTls,
    storage: RawStorage,
    log: RawLog,
    mirror: RawMirror,
    limits: limits::RawLimits,
    auth: auth::RawAuth,
    cache: cache::RawCache,
    policy: policy::RawPolicy,
    upstreams: BTreeMap<String, ShownUpstream>,
    preheat: Vec<preheat::RawPreheat>,
    cluster: cluster::RawCluster,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    max_manifest_size: String,
    hosted_writes: String,
    max_connections: i64,
    header_read_timeout: String,
    max_header_size: String,
    keep_alive_timeout: String,
    drain_timeout: String,
    admin_listen: String,
    sendfile: bool,
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
        let mut default = parse_table(DEFAULT_CONFIG_TOML, &format!("config {EMBEDDED}"))?;
        let template = upstream::template();
        upstream::complete_defaults(&mut default, &template);
        let mut user = parse_table(text, &label)?;
        cache::normalize(&mut user, &label)?;
        for (key, value) in user.iter_mut() {
            expand_value(value, key, env, &label)?;
        }
        let (mut merged, mut origins) = (default.clone(), Origins::default());
        add_named(&mut merged, &user, &template, &label, &mut origins);
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
            hosted_writes: HostedWrites::Auth,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 64 << 10,
            keep_alive_timeout: Duration::from_secs(75),
            drain_timeout: Duration::from_secs(30),
            admin_listen: None,
            sendfile: true,
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
        let mirror = MirrorConfig {
            default_upstream: Some("docker.io".into()),
            hosted_prefixes: vec!["agents/".into()],
            route_by_host: false,
            hosted_on_push: true,
            parent: None,
            prefetch_layers: false,
            prefetch_concurrency: 4,
        };
        let mut docker = UpstreamConfig::new("docker.io", "https://registry-1.docker.io");
        let aliases = ["docker", "hub", "registry-1.docker.io", "index.docker.io"];
        docker.aliases = aliases.map(String::from).to_vec();
        docker.library_prefix = true;
        let others = [
            "gcr.io",
            "ghcr.io",
            "mcr.microsoft.com",
            "public.ecr.aws",
            "quay.io",
            "registry.k8s.io",
        ];
        let others = others.map(|name| UpstreamConfig::new(name, &format!("https://{name}")));
        Config {
            server,
            tls: TlsConfig::default(),
            storage,
            log,
            mirror,
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            cache: CacheConfig::default(),
            policy: PolicyConfig::default(),
            upstreams: [docker].into_iter().chain(others).collect(),
            preheat: Vec::new(),
            cluster: ClusterConfig::default(),
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
                max_connections: i64::try_from(server.max_connections).unwrap_or(i64::MAX),
                header_read_timeout: format_duration(server.header_read_timeout),
                max_header_size: format_size(server.max_header_size),
                keep_alive_timeout: format_duration(server.keep_alive_timeout),
                drain_timeout: format_duration(server.drain_timeout),
                admin_listen: server
                    .admin_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                sendfile: server.sendfile,
            },
            tls: tls::show_tls(&self.tls),
            storage: RawStorage {
                data_dir: storage.data_dir.to_string_lossy().into(),
                upload_expiry: format_duration(storage.upload_expiry),
                upload_purge_interval: format_duration(storage.upload_purge_interval),
            },
            log: RawLog {
                level: log.level.clone(),
                format: log.format.as_str().into(),
            },
            mirror: upstream::show_mirror(&self.mirror),
            limits: limits::show_limits(&self.limits),
            auth: auth::show_auth(&self.auth),
            cache: cache::show_cache(&self.cache),
            policy: policy::show_policy(&self.policy),
            upstreams: upstream::show_upstreams(&self.upstreams),
            preheat: preheat::show_preheat(&self.preheat),
            cluster: cluster::show_cluster(&self.cluster),
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
        let max_connections = usize::try_from(server.max_connections)
            .map_err(|_| format!("{} must not be negative", server.max_connections))
            .and_then(|n| positive(Ok(n)))
            .and_then(|n| match n <= 10_000_000 {
                true => Ok(n),
                false => Err(format!("{n} is larger than the limit of 10000000")),
            });
        let header_timeout = positive(parse_duration(&server.header_read_timeout));
        let header_size = parse_size(&server.max_header_size).and_then(|n| {
            // hyper's http1 buffer cannot be smaller than 8KiB; h2 takes a u32.
            match (MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&n) {
                true => Ok(n),
                false => Err(format!("{n} bytes is outside 8KiB..=16MiB")),
            }
        });
        let keep_alive = positive(parse_duration(&server.keep_alive_timeout));
        let drain = parse_duration(&server.drain_timeout);
        let expiry = positive(parse_duration(&storage.upload_expiry));
        let purge = positive(parse_duration(&storage.upload_purge_interval));
        let server = ServerConfig {
            listen: o.check("server.listen", parse_socket_addr(&server.listen))?,
            max_manifest_size: o.check("server.max_manifest_size", manifest_size)?,
            hosted_writes: o.check("server.hosted_writes", writes)?,
            max_connections: o.check("server.max_connections", max_connections)?,
            header_read_timeout: o.check("server.header_read_timeout", header_timeout)?,
            max_header_size: o.check("server.max_header_size", header_size)?,
            keep_alive_timeout: o.check("server.keep_alive_timeout", keep_alive)?,
            drain_timeout: o.check("server.drain_timeout", drain)?,
            admin_listen: match server.admin_listen.trim() {
                "" => None,
                a => Some(o.check("server.admin_listen", parse_socket_addr(a))?),
            },
            sendfile: server.sendfile,
        };
        let storage = StorageConfig {
            data_dir: PathBuf::from(o.check("storage.data_dir", non_empty(&storage.data_dir))?),
            upload_expiry: o.check("storage.upload_expiry", expiry)?,
            upload_purge_interval: o.check("storage.upload_purge_interval", purge)?,
        };
        let log = LogConfig {
            level: o.check("log.level", non_empty(&log.level))?,
            format: o.check("log.format", format)?,
        };
        let tls = tls::build_tls(o.section(&mut table, "tls")?, o)?;
        let limits = limits::build_limits(o.section(&mut table, "limits")?, o)?;
        let auth = auth::build_auth(o.section(&mut table, "auth")?, o)?;
        let cache = cache::build_cache(o.section(&mut table, "cache")?, o)?;
        let policy = policy::build_policy(o.section(&mut table, "policy")?, o)?;
        let mirror: RawMirror = o.section(&mut table, "mirror")?;
        let upstreams = upstream::build_upstreams(&mut table, o)?;
        let mirror = upstream::build_mirror(mirror, &upstreams, o)?;
        let (upstreams, _disabled) = upstreams;
        let preheat = preheat::build_preheat(&mut table, o)?;
        let cluster = cluster::build_cluster(o.section(&mut table, "cluster")?, o)?;
        Ok(Config {
            server,
            tls,
            storage,
            log,
            mirror,
            limits,
            auth,
            cache,
            policy,
            upstreams,
            preheat,
            cluster,
            origin: origin.to_string(),
        })
    }
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
