//! The `[auth]` section: users (bcrypt hashes in config or an htpasswd file), the rules
//! that map users and groups to repository patterns and actions, what anonymous clients
//! may do, the token service, brute-force limits and the retention of the access log.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::base::{positive, ConfigError, Secret, REDACTED};
use super::merge::Origins;
use super::{format_duration, parse_duration};

/// Something a rule allows on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
    /// Everything, and on the pattern `*` the admin API.
    Admin,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Pull, Action::Push, Action::Delete, Action::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }

    /// `pull`, `push`, `delete`, `admin`, and the seed's `read` and `write`; `*` is admin.
    pub fn parse(s: &str) -> Result<Action, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pull" | "read" => Ok(Action::Pull),
            "push" | "write" => Ok(Action::Push),
            "delete" => Ok(Action::Delete),
            "admin" | "*" => Ok(Action::Admin),
            other => Err(format!(
                "unknown action {other:?}: expected pull (read), push (write), delete or admin"
            )),
        }
    }
}

/// Whether a hosted repository is readable by everyone or only by those granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    pub fn parse(s: &str) -> Result<Visibility, String> {
        match s {
            "public" => Ok(Visibility::Public),
            "private" => Ok(Visibility::Private),
            _ => Err(format!(
                "invalid visibility {s:?}: expected \"public\" or \"private\""
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    pub name: String,
    /// A bcrypt hash (`$2y$...`); `None` for an entry that only adds groups to a user of
    /// the htpasswd file.
    pub password_hash: Option<Secret>,
    pub groups: Vec<String>,
}

/// Grants `actions` on repositories matching any of `repos` to `users` and `groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// Names or patterns: `*` matches any characters, `/` included.
    pub repos: Vec<String>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt entries, as CNCF distribution reads it.
    pub htpasswd: Option<PathBuf>,
    pub users: Vec<UserConfig>,
    pub rules: Vec<RuleConfig>,
    /// Anonymous clients may pull mirrored (proxied) repositories.
    pub anonymous_pull_mirrored: bool,
    /// Anonymous clients may pull public hosted repositories.
    pub anonymous_pull_public: bool,
    /// The visibility of a hosted repository created by a push.
    pub default_visibility: Visibility,
    /// The token endpoint URL in challenges; empty: `<scheme>://<Host header>/token`,
    /// which follows the client's `Host` header (the server warns at start when users
    /// exist and this is empty).
    pub realm: String,
    /// The `service` of the token flow, also the audience and issuer of tokens.
    pub service: String,
    /// How long an issued bearer token is valid (never past the credential it was
    /// issued for; accepted at most `jwt::LEEWAY` seconds past its `exp`).
    pub token_ttl: Duration,
    /// Failed authentications allowed per client address per minute before 429 (the
    /// client as the rate limits see it: behind trusted proxies, `X-Forwarded-For`).
    pub failures_per_client: u32,
    /// Failed authentications per user name per minute after which the user's checks
    /// are slowed down, and clients that failed against it get 429.
    pub failures_per_user: u32,
    /// How long the queryable access log keeps a request.
    pub access_log_retention: Duration,
    /// The access log keeps at most this many requests (the oldest go first).
    pub access_log_max_entries: u64,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            htpasswd: None,
            users: Vec::new(),
            rules: Vec::new(),
            anonymous_pull_mirrored: true,
            anonymous_pull_public: true,
            default_visibility: Visibility::Public,
            realm: String::new(),
            service: "agent-registry".into(),
            token_ttl: Duration::from_secs(300),
            failures_per_client: 10,
            failures_per_user: 5,
            access_log_retention: Duration::from_secs(7 * 24 * 3600),
            access_log_max_entries: 10_000_000,
        }
    }
}

// The file schema.

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    htpasswd: String,
    users: Vec<RawUser>,
    rules: Vec<RawRule>,
    anonymous_pull_mirrored: bool,
    anonymous_pull_public: bool,
    default_visibility: String,
    realm: String,
    service: String,
    token_ttl: String,
    failures_per_client: i64,
    failures_per_user: i64,
    access_log_retention: String,
    access_log_max_entries: i64,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<Secret>,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    repos: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    actions: Vec<String>,
}

/// The section as `config show` writes it (password hashes redacted).
pub(super) fn show_auth(a: &AuthConfig) -> RawAuth {
    RawAuth {
        htpasswd: a
            .htpasswd
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        users: a
            .users
            .iter()
            .map(|u| RawUser {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                groups: u.groups.clone(),
            })
            .collect(),
        rules: a
            .rules
            .iter()
            .map(|r| RawRule {
                repos: r.repos.clone(),
                users: r.users.clone(),
                groups: r.groups.clone(),
                actions: r.actions.iter().map(|a| a.as_str().to_string()).collect(),
            })
            .collect(),
        anonymous_pull_mirrored: a.anonymous_pull_mirrored,
        anonymous_pull_public: a.anonymous_pull_public,
        default_visibility: a.default_visibility.as_str().into(),
        realm: a.realm.clone(),
        service: a.service.clone(),
        token_ttl: format_duration(a.token_ttl),
        failures_per_client: i64::from(a.failures_per_client),
        failures_per_user: i64::from(a.failures_per_user),
        access_log_retention: format_duration(a.access_log_retention),
        access_log_max_entries: i64::try_from(a.access_log_max_entries).unwrap_or(i64::MAX),
    }
}

/// A bcrypt hash as htpasswd writes it; `<redacted>` (from `config show`) is accepted
/// and never matches a password.
pub fn check_bcrypt(hash: &str) -> Result<(), String> {
    let ok = hash == REDACTED
        || (hash.len() == 60
            && ["$2a$", "$2b$", "$2y$", "$2x$"]
                .iter()
                .any(|p| hash.starts_with(p)));
    match ok {
        true => Ok(()),
        false => Err(
            "not a bcrypt hash (expected $2y$...; make one with `agent-registry hash-password`)"
                .into(),
        ),
    }
}

/// A user, group or pattern name: no spaces or control characters.
fn check_name(s: &str) -> Result<String, String> {
    match !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()) && !s.contains(':') {
        true => Ok(s.to_string()),
        false => Err(format!(
            "invalid name {s:?}: printable ASCII without spaces or ':'"
        )),
    }
}

pub(super) fn build_auth(raw: RawAuth, o: &Origins) -> Result<AuthConfig, ConfigError> {
    let mut users = Vec::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let key = format!("auth.users[{i}]");
        let name = o.check(&format!("{key}.name"), check_name(&u.name))?;
        if let Some(h) = &u.password_hash {
            o.check(&format!("{key}.password_hash"), check_bcrypt(h.expose()))?;
        }
        let groups = u
            .groups
            .iter()
            .map(|g| o.check(&format!("{key}.groups"), check_name(g)))
            .collect::<Result<_, _>>()?;
        if users.iter().any(|x: &UserConfig| x.name == name) {
            let dup = Err(format!("user {name:?} is listed twice"));
            return o.check(&format!("{key}.name"), dup);
        }
        users.push(UserConfig {
            name,
            password_hash: u.password_hash,
            groups,
        });
    }
    let mut rules = Vec::new();
    for (i, r) in raw.rules.into_iter().enumerate() {
        let key = format!("auth.rules[{i}]");
        let names = |field: &str, list: &[String]| -> Result<Vec<String>, ConfigError> {
            list.iter()
                .map(|n| o.check(&format!("{key}.{field}"), check_name(n)))
                .collect()
        };
        let repos = names("repos", &r.repos)?;
        if repos.is_empty() {
            o.check::<()>(
                &format!("{key}.repos"),
                Err("must name at least one".into()),
            )?;
        }
        let actions = r
            .actions
            .iter()
            .map(|a| o.check(&format!("{key}.actions"), Action::parse(a)))
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(RuleConfig {
            repos,
            users: names("users", &r.users)?,
            groups: names("groups", &r.groups)?,
            actions,
        });
    }
    let per_minute = |key: &str, v: i64| {
        let n = u32::try_from(v)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{v} is not a whole number from 1 to {}", u32::MAX));
        o.check(key, n)
    };
    let realm = raw.realm.trim().to_string();
    let realm_ok =
        match realm.is_empty() || realm.starts_with("http://") || realm.starts_with("https://") {
            true => Ok(realm),
            false => Err(format!("{:?} is not an http(s) URL", raw.realm)),
        };
    Ok(AuthConfig {
        htpasswd: match raw.htpasswd.trim() {
            "" => None,
            p => Some(PathBuf::from(p)),
        },
        users,
        rules,
        anonymous_pull_mirrored: raw.anonymous_pull_mirrored,
        anonymous_pull_public: raw.anonymous_pull_public,
        default_visibility: o.check(
            "auth.default_visibility",
            Visibility::parse(&raw.default_visibility),
        )?,
        realm: o.check("auth.realm", realm_ok)?,
        service: o.check("auth.service", check_name(&raw.service))?,
        token_ttl: o.check("auth.token_ttl", positive(parse_duration(&raw.token_ttl)))?,
        failures_per_client: per_minute("auth.failures_per_client", raw.failures_per_client)?,
        failures_per_user: per_minute("auth.failures_per_user", raw.failures_per_user)?,
        access_log_retention: o.check(
            "auth.access_log_retention",
            positive(parse_duration(&raw.access_log_retention)),
        )?,
        access_log_max_entries: o.check(
            "auth.access_log_max_entries",
            u64::try_from(raw.access_log_max_entries)
                .map_err(|_| format!("{} is not a whole number", raw.access_log_max_entries)),
        )?,
    })
}
