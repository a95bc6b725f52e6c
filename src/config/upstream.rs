//! The `[mirror]` and `[upstreams."<host>"]` sections: typed structs, the per-upstream
//! defaults, building them from the merged table, rendering them for `config show`, and
//! the `--upstream NAME=URL` flag. Value checks are in `checks.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use super::base::{positive, ConfigError, Secret, EMBEDDED, REDACTED};
use super::checks::{
    check_aliases, host_name, parse_url, readable_file, redact_userinfo, regex_problem,
};
use super::merge::{join, Origins};
use super::units::{format_duration, format_size, parse_duration, parse_size};
use super::{Config, DEFAULT_CONFIG_TOML};

/// How plain repository names are routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The upstream (by name; an alias in the file is resolved) that plain
    /// `/v2/<repo>/...` requests go to; `None` when the file says `""`.
    pub default_upstream: Option<String>,
    /// Repository prefixes hosted here and never proxied; each ends with `/`.
    pub hosted_prefixes: Vec<String>,
    /// Also pick the upstream from the `Host` header (names and aliases).
    pub route_by_host: bool,
    /// A push to a plain name creates a hosted repository, which from then on shadows the
    /// default upstream for that name (false: such pushes are refused with UNSUPPORTED).
    pub hosted_on_push: bool,
    /// `mirror.parent`: every upstream request goes to this mirror instead, with
    /// `?ns=<upstream name>`.
    pub parent: Option<ParentConfig>,
    /// `mirror.prefetch_layers`: a manifest fetched from the upstream starts the fills of
    /// its config and layers in the background.
    pub prefetch_layers: bool,
    /// At most this many prefetch fills run at once.
    pub prefetch_concurrency: usize,
}

/// A parent mirror (`mirror.parent*`): an edge site's regional instance of this project
/// (or any mirror honouring containerd's `ns=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentConfig {
    /// `scheme://host[:port]`, no trailing slash.
    pub url: String,
    /// Set together with `password`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Extra PEM CA bundle trusted for the parent.
    pub ca_file: Option<PathBuf>,
    /// When the parent is unreachable (connect error, timeout, 5xx; not a 4xx), ask the
    /// origin upstream itself.
    pub fallback: bool,
}

impl ParentConfig {
    /// The parent as an upstream of its own (own connections, health and token flow),
    /// with the per-upstream defaults.
    pub fn upstream(&self) -> UpstreamConfig {
        let authority = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, a)| a);
        let mut u = UpstreamConfig::new(&format!("parent {authority}"), &self.url);
        u.username = self.username.clone();
        u.password = self.password.clone();
        u.ca_file = self.ca_file.clone();
        u
    }
}

/// How far an upstream's 429 reaches (`rate_limit_scope`): every request to that
/// upstream (`"upstream"`, the default: Docker Hub limits a client, not a repository),
/// or only requests for the repository that got it (`"repository"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitScope {
    #[default]
    Upstream,
    Repository,
}

impl RateLimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitScope::Upstream => "upstream",
            RateLimitScope::Repository => "repository",
        }
    }

    fn parse(s: &str) -> Result<RateLimitScope, String> {
        match s {
            "upstream" => Ok(RateLimitScope::Upstream),
            "repository" => Ok(RateLimitScope::Repository),
            other => Err(format!(
                "expected \"upstream\" or \"repository\", found {other:?}"
            )),
        }
    }
}

/// One upstream registry. Only upstreams listed in the config are ever contacted.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry host name, e.g. `docker.io` or `localhost:5000`.
    pub name: String,
    /// `scheme://host[:port]`, no trailing slash.
    pub url: String,
    pub aliases: Vec<String>,
    /// Single-segment repository names get `library/` (Docker Hub's convention).
    pub library_prefix: bool,
    /// Set together with `password`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A static bearer token; excludes `username` and `password`.
    pub token: Option<Secret>,
    /// Extra PEM CA bundle trusted for this upstream.
    pub ca_file: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// How long a cached tag -> digest mapping is fresh.
    pub tag_ttl: Duration,
    /// Tags matching any of these are never revalidated.
    pub immutable_tags: Vec<regex::Regex>,
    /// How long a stale tag mapping is served while the upstream is down.
    pub max_stale: Duration,
    /// When the upstream says a cached tag is gone: keep serving it (`true`) or 404.
    pub serve_stale_on_404: bool,
    pub max_concurrency: usize,
    /// Bytes per second read from this upstream, all transfers together; `None`: no cap.
    pub max_bandwidth: Option<u64>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    /// Longest pause inside a body. A blob fill's Range resumes after such a pause
    /// share one more `idle_timeout` of dead time in all (`cache::fill`).
    pub idle_timeout: Duration,
    /// What a 429 from this upstream holds back: the upstream or the repository.
    pub rate_limit_scope: RateLimitScope,
}

/// Secrets compare by value, regexes by their source text.
impl PartialEq for UpstreamConfig {
    fn eq(&self, other: &Self) -> bool {
        let patterns = |u: &Self| {
            u.immutable_tags
                .iter()
                .map(|r| r.as_str().to_string())
                .collect::<Vec<_>>()
        };
        let times = |u: &Self| {
            [
                u.tag_ttl,
                u.max_stale,
                u.connect_timeout,
                u.first_byte_timeout,
                u.idle_timeout,
            ]
        };
        let flags = |u: &Self| {
            [
                u.library_prefix,
                u.insecure_skip_verify,
                u.serve_stale_on_404,
            ]
        };
        (
            &self.name,
            &self.url,
            &self.aliases,
            &self.username,
            &self.password,
            &self.token,
        ) == (
            &other.name,
            &other.url,
            &other.aliases,
            &other.username,
            &other.password,
            &other.token,
        ) && (&self.ca_file, self.max_concurrency, self.max_bandwidth)
            == (&other.ca_file, other.max_concurrency, other.max_bandwidth)
            && self.rate_limit_scope == other.rate_limit_scope
            && (times(self), flags(self), patterns(self))
                == (times(other), flags(other), patterns(other))
    }
}

impl UpstreamConfig {
    /// An upstream with the per-upstream defaults: no aliases, no `library/` prefix, no
    /// credentials, 5m tag TTL, 7d max stale, 64 concurrent requests, 5s/30s/60s timeouts.
    pub fn new(name: &str, url: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_string(),
            url: url.trim_end_matches('/').to_string(),
            aliases: Vec::new(),
            library_prefix: false,
            username: None,
            password: None,
            token: None,
            ca_file: None,
            insecure_skip_verify: false,
            tag_ttl: Duration::from_secs(5 * 60),
            immutable_tags: Vec::new(),
            max_stale: Duration::from_secs(7 * 86_400),
            serve_stale_on_404: false,
            max_concurrency: 64,
            max_bandwidth: None,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            rate_limit_scope: RateLimitScope::Upstream,
        }
    }

    /// Whether `tag` matches one of `immutable_tags` (and so is never revalidated).
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable_tags.iter().any(|r| r.is_match(tag))
    }

    pub(super) fn answers_to(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

impl Config {
    /// The enabled upstream with this name or alias (ASCII case-insensitive).
    pub fn upstream(&self, name_or_alias: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.answers_to(name_or_alias))
    }

    /// `--upstream NAME=URL`: sets the url of the upstream with that name or alias
    /// (keeping its other settings) or adds a new upstream with the defaults of
    /// [`UpstreamConfig::new`]; then re-validates.
    pub fn apply_upstream_flag(&mut self, spec: &str) -> Result<(), ConfigError> {
        let err = |problem: String| ConfigError::Flag {
            spec: redact_userinfo(spec),
            problem,
        };
        let (name, url) = spec.split_once('=').ok_or_else(|| {
            err("expected NAME=URL, e.g. docker.io=https://registry-1.docker.io".into())
        })?;
        let url = parse_url(url).map_err(|p| err(format!("url: {p}")))?;
        match self.upstreams.iter_mut().find(|u| u.answers_to(name)) {
            Some(upstream) => upstream.url = url,
            None => {
                host_name(name).map_err(err)?;
                self.upstreams.push(UpstreamConfig::new(name, &url));
                self.upstreams.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        let checked = check_aliases(&self.upstreams, &Origins::default())
            .and_then(|()| self.mirror_default_is_enabled());
        checked.map_err(|e| match e {
            ConfigError::Invalid { key, problem, .. } => err(format!("{key}: {problem}")),
            other => err(other.to_string()),
        })
    }

    fn mirror_default_is_enabled(&self) -> Result<(), ConfigError> {
        let Some(name) = &self.mirror.default_upstream else {
            return Ok(());
        };
        let found = self.upstreams.iter().any(|u| &u.name == name);
        let problem = format!("{name:?} is not an enabled upstream");
        Origins::default().check(
            "mirror.default_upstream",
            found.then_some(()).ok_or(problem),
        )
    }
}

// The file schema of the two sections (`Serialize` renders the effective config).

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    default_upstream: String,
    hosted_prefixes: Vec<String>,
    route_by_host: bool,
    hosted_on_push: bool,
    parent: String,
    parent_username: String,
    parent_password: String,
    parent_ca_file: String,
    parent_fallback: bool,
    prefetch_layers: bool,
    prefetch_concurrency: i64,
}

/// One `[upstreams."<host>"]` table; keys missing from the file come from [`template`].
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    enabled: bool,
    url: String,
    aliases: Vec<String>,
    library_prefix: bool,
    username: String,
    password: String,
    token: String,
    ca_file: String,
    insecure_skip_verify: bool,
    tag_ttl: String,
    immutable_tags: Vec<String>,
    max_stale: String,
    serve_stale_on_404: bool,
    max_concurrency: i64,
    max_bandwidth: String,
    connect_timeout: String,
    first_byte_timeout: String,
    idle_timeout: String,
    rate_limit_scope: String,
}

/// What `config show` writes for an upstream: all keys, or `enabled = false` for a
/// default upstream the config drops.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum ShownUpstream {
    Enabled(Box<RawUpstream>),
    Disabled { enabled: bool },
}

impl RawUpstream {
    /// `secret` renders a set secret (`<redacted>` for display).
    fn from_config(u: &UpstreamConfig, secret: impl Fn(&Secret) -> String) -> RawUpstream {
        let secret = |s: &Option<Secret>| s.as_ref().map(&secret).unwrap_or_default();
        RawUpstream {
            enabled: true,
            url: u.url.clone(),
            aliases: u.aliases.clone(),
            library_prefix: u.library_prefix,
            username: u.username.clone().unwrap_or_default(),
            password: secret(&u.password),
            token: secret(&u.token),
            ca_file: u
                .ca_file
                .as_ref()
                .map(|p| p.to_string_lossy().into())
                .unwrap_or_default(),
            insecure_skip_verify: u.insecure_skip_verify,
            tag_ttl: format_duration(u.tag_ttl),
            immutable_tags: u.immutable_tags.iter().map(|r| r.as_str().into()).collect(),
            max_stale: format_duration(u.max_stale),
            serve_stale_on_404: u.serve_stale_on_404,
            max_concurrency: i64::try_from(u.max_concurrency).unwrap_or(i64::MAX),
            max_bandwidth: u.max_bandwidth.map_or("0".into(), format_size),
            connect_timeout: format_duration(u.connect_timeout),
            first_byte_timeout: format_duration(u.first_byte_timeout),
            idle_timeout: format_duration(u.idle_timeout),
            rate_limit_scope: u.rate_limit_scope.as_str().to_string(),
        }
    }
}

/// Every key of an upstream table with its per-upstream default (`url` empty): the
/// schema a user's `[upstreams."<host>"]` table is checked against.
pub(super) fn template() -> Table {
    let raw = RawUpstream::from_config(&UpstreamConfig::new("", ""), |_| String::new());
    match Value::try_from(raw) {
        Ok(Value::Table(table)) => table,
        _ => Table::new(),
    }
}

/// Fills the keys the embedded default leaves out of its upstream tables from `template`.
pub(super) fn complete_defaults(default: &mut Table, template: &Table) {
    let Some(Value::Table(upstreams)) = default.get_mut("upstreams") else {
        return;
    };
    for (_, upstream) in upstreams.iter_mut() {
        if let Value::Table(keys) = upstream {
            for (key, value) in template {
                keys.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }
}

/// The mirror section as `config show` writes it.
pub(super) fn show_mirror(m: &MirrorConfig) -> RawMirror {
    RawMirror {
        default_upstream: m.default_upstream.clone().unwrap_or_default(),
        hosted_prefixes: m.hosted_prefixes.clone(),
        route_by_host: m.route_by_host,
        hosted_on_push: m.hosted_on_push,
        parent: m.parent.as_ref().map(|p| p.url.clone()).unwrap_or_default(),
        parent_username: m
            .parent
            .as_ref()
            .and_then(|p| p.username.clone())
            .unwrap_or_default(),
        parent_password: match m.parent.as_ref().and_then(|p| p.password.as_ref()) {
            Some(_) => REDACTED.to_string(),
            None => String::new(),
        },
        parent_ca_file: m
            .parent
            .as_ref()
            .and_then(|p| p.ca_file.as_ref())
            .map(|p| p.to_string_lossy().into())
            .unwrap_or_default(),
        parent_fallback: m.parent.as_ref().is_some_and(|p| p.fallback),
        prefetch_layers: m.prefetch_layers,
        prefetch_concurrency: i64::try_from(m.prefetch_concurrency).unwrap_or(i64::MAX),
    }
}

/// The upstreams as `config show` writes them: secrets `<redacted>`, default upstreams
/// missing from `upstreams` as `enabled = false` so the output reads back the same.
pub(super) fn show_upstreams(upstreams: &[UpstreamConfig]) -> BTreeMap<String, ShownUpstream> {
    let mut shown: BTreeMap<String, ShownUpstream> = upstreams
        .iter()
        .map(|u| {
            let raw = RawUpstream::from_config(u, |_| REDACTED.to_string());
            (u.name.clone(), ShownUpstream::Enabled(Box::new(raw)))
        })
        .collect();
    let default = DEFAULT_CONFIG_TOML.parse::<Table>().unwrap_or_default();
    if let Some(Value::Table(names)) = default.get("upstreams") {
        for name in names.keys() {
            shown
                .entry(name.clone())
                .or_insert(ShownUpstream::Disabled { enabled: false });
        }
    }
    shown
}

/// The typed `upstreams` table: the enabled upstreams sorted by name, and the names of
/// the disabled ones.
pub(super) type Upstreams = (Vec<UpstreamConfig>, Vec<String>);

/// Types and validates the `upstreams` table (merged, every key present).
pub(super) fn build_upstreams(table: &mut Table, o: &Origins) -> Result<Upstreams, ConfigError> {
    let upstreams = match table.remove("upstreams") {
        Some(Value::Table(upstreams)) => upstreams,
        _ => Table::new(),
    };
    let (mut built, mut disabled) = (Vec::new(), Vec::new());
    for (name, value) in upstreams {
        let prefix = join("upstreams", &name);
        o.check(&prefix, host_name(&name))?;
        let raw: RawUpstream = o.parse(&prefix, value)?;
        match raw.enabled {
            true => built.push(build_upstream(name, raw, &prefix, o)?),
            false => disabled.push(name),
        }
    }
    built.sort_by(|a, b| a.name.cmp(&b.name));
    check_aliases(&built, o)?;
    Ok((built, disabled))
}

fn build_upstream(
    name: String,
    raw: RawUpstream,
    prefix: &str,
    o: &Origins,
) -> Result<UpstreamConfig, ConfigError> {
    let key = |k: &str| join(prefix, k);
    let duration = |k: &str, s: &str| o.check(&key(k), positive(parse_duration(s)));
    let url = o.check(&key("url"), parse_url(&raw.url))?;
    for (i, alias) in raw.aliases.iter().enumerate() {
        o.check(&format!("{}[{i}]", key("aliases")), host_name(alias))?;
    }
    let set = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let (username, password, token) = (set(&raw.username), set(&raw.password), set(&raw.token));
    match (&username, &password) {
        (Some(_), None) => o.check(
            &key("username"),
            Err("is set but password is empty".to_string()),
        )?,
        (None, Some(_)) => o.check(
            &key("password"),
            Err("is set but username is empty".to_string()),
        )?,
        _ => {}
    }
    if token.is_some() && username.is_some() {
        o.check(
            &key("token"),
            Err("cannot be combined with username and password".to_string()),
        )?;
    }
    let ca_file = set(&raw.ca_file).map(PathBuf::from);
    if let Some(path) = &ca_file {
        o.check(&key("ca_file"), readable_file(path))?;
    }
    let mut immutable_tags = Vec::new();
    for (i, pattern) in raw.immutable_tags.iter().enumerate() {
        let compiled = regex::Regex::new(pattern).map_err(|e| regex_problem(pattern, &e));
        immutable_tags.push(o.check(&format!("{}[{i}]", key("immutable_tags")), compiled)?);
    }
    let concurrency = usize::try_from(raw.max_concurrency)
        .ok()
        .filter(|n| *n >= 1);
    let too_few = format!("must be at least 1, found {}", raw.max_concurrency);
    Ok(UpstreamConfig {
        url,
        aliases: raw.aliases,
        library_prefix: raw.library_prefix,
        username,
        password: password.map(Secret::new),
        token: token.map(Secret::new),
        ca_file,
        insecure_skip_verify: raw.insecure_skip_verify,
        tag_ttl: duration("tag_ttl", &raw.tag_ttl)?,
        immutable_tags,
        max_stale: duration("max_stale", &raw.max_stale)?,
        serve_stale_on_404: raw.serve_stale_on_404,
        max_concurrency: o.check(&key("max_concurrency"), concurrency.ok_or(too_few))?,
        max_bandwidth: o
            .check(&key("max_bandwidth"), parse_size(&raw.max_bandwidth))
            .map(|n| (n > 0).then_some(n))?,
        connect_timeout: duration("connect_timeout", &raw.connect_timeout)?,
        first_byte_timeout: duration("first_byte_timeout", &raw.first_byte_timeout)?,
        idle_timeout: duration("idle_timeout", &raw.idle_timeout)?,
        rate_limit_scope: o.check(
            &key("rate_limit_scope"),
            RateLimitScope::parse(&raw.rate_limit_scope),
        )?,
        name,
    })
}

/// Types and validates `[mirror]` against the upstreams. Disabling the default
/// upstream in a file blames that file's `enabled = false`, not the embedded default.
pub(super) fn build_mirror(
    raw: RawMirror,
    (upstreams, disabled): &Upstreams,
    o: &Origins,
) -> Result<MirrorConfig, ConfigError> {
    let key = "mirror.default_upstream";
    let default_upstream = match raw.default_upstream.as_str() {
        "" => None,
        name => {
            let found = upstreams
                .iter()
                .find(|u| u.answers_to(name))
                .map(|u| u.name.clone());
            if found.is_none() && disabled.iter().any(|d| d == name) {
                let enabled = join(&join("upstreams", name), "enabled");
                if o.origin(key) == format!("config {EMBEDDED}") {
                    let problem = format!("disables {name:?}, which is mirror.default_upstream: also set mirror.default_upstream (\"\" for none)");
                    return o.check(&enabled, Err(problem));
                }
                return o.check(
                    key,
                    Err(format!("{name:?} is disabled ({enabled} = false)")),
                );
            }
            let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            let problem = format!(
                "{name:?} is not an enabled upstream (enabled: {})",
                names.join(", ")
            );
            Some(o.check(key, found.ok_or(problem))?)
        }
    };
    for (i, prefix) in raw.hosted_prefixes.iter().enumerate() {
        let problem = match prefix.as_str() {
            "" => Some("must not be empty".to_string()),
            p if p.starts_with('/') => Some(format!("{p:?} must not start with \"/\"")),
            p if !p.ends_with('/') => Some(format!("{p:?} must end with \"/\", e.g. \"{p}/\"")),
            _ => None,
        };
        o.check(
            &format!("mirror.hosted_prefixes[{i}]"),
            problem.map_or(Ok(()), Err),
        )?;
    }
    let parent = build_parent(&raw, o)?;
    let concurrency = usize::try_from(raw.prefetch_concurrency)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("must be at least 1, found {}", raw.prefetch_concurrency));
    Ok(MirrorConfig {
        default_upstream,
        hosted_prefixes: raw.hosted_prefixes,
        route_by_host: raw.route_by_host,
        hosted_on_push: raw.hosted_on_push,
        parent,
        prefetch_layers: raw.prefetch_layers,
        prefetch_concurrency: o.check("mirror.prefetch_concurrency", concurrency)?,
    })
}

/// `mirror.parent` and its credentials, CA and fallback; the other `parent_*` keys
/// need `parent`.
fn build_parent(raw: &RawMirror, o: &Origins) -> Result<Option<ParentConfig>, ConfigError> {
    let set = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let (username, password) = (set(&raw.parent_username), set(&raw.parent_password));
    let ca_file = set(&raw.parent_ca_file).map(PathBuf::from);
    if raw.parent.is_empty() {
        let stray = [
            ("mirror.parent_username", username.is_some()),
            ("mirror.parent_password", password.is_some()),
            ("mirror.parent_ca_file", ca_file.is_some()),
            ("mirror.parent_fallback", raw.parent_fallback),
        ];
        if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
            o.check(key, Err("is set but mirror.parent is empty".to_string()))?;
        }
        return Ok(None);
    }
    let url = o.check("mirror.parent", parse_url(&raw.parent))?;
    match (&username, &password) {
        (Some(_), None) => o.check(
            "mirror.parent_username",
            Err("is set but mirror.parent_password is empty".to_string()),
        )?,
        (None, Some(_)) => o.check(
            "mirror.parent_password",
            Err("is set but mirror.parent_username is empty".to_string()),
        )?,
        _ => {}
    }
    if let Some(path) = &ca_file {
        o.check("mirror.parent_ca_file", readable_file(path))?;
    }
    Ok(Some(ParentConfig {
        url,
        username,
        password: password.map(Secret::new),
        ca_file,
        fallback: raw.parent_fallback,
    }))
}
