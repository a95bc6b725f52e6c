//! Access control: who a request is ([`Auth::authenticate`]), what it may do
//! ([`Auth::allowed`]), the bearer tokens of the registry token flow ([`jwt`]), and the
//! audit and access logs ([`store`]).
//!
//! Credentials arrive as Basic (a user's password, or an API token as the password) or
//! Bearer (an API token, or a JWT issued by `/token`). Passwords are bcrypt; a verified
//! pair is remembered for a minute as a sha256 of both, so bcrypt runs once per client
//! per minute, not per request. API tokens are stored as sha256 hashes.

pub mod htpasswd;
pub mod jwt;
pub mod policy;
pub mod store;

use crate::config::{Action, AuthConfig, Visibility};
use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use policy::{Actions, Grant, Subject};
use sha2::Digest;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use store::{AccessEntry, AuditRecord, Store};

/// What API tokens start with, so a Bearer value is told apart from a JWT at a glance
/// (and secret scanners can find leaked ones).
pub const API_TOKEN_PREFIX: &str = "agr_";

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Anonymous,
    Password,
    /// An API token limited to these scopes.
    ApiToken(Vec<(String, Actions)>),
    /// A bearer token from `/token` carrying these grants.
    Jwt(Vec<jwt::Access>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None` for anonymous requests.
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub method: Method,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: None,
            groups: Vec::new(),
            method: Method::Anonymous,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }

    /// The user name, `-` when anonymous (for logs).
    pub fn name(&self) -> &str {
        self.user.as_deref().unwrap_or("-")
    }
}

/// Why authentication failed. The message never contains the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed")]
    BadCredentials { user: Option<String> },
    #[error("invalid bearer token: {0}")]
    BadToken(jwt::JwtError),
    #[error("too many failed authentications; try again later")]
    Blocked { retry_after: Duration },
    #[error("malformed Authorization header")]
    Malformed,
}

/// What a repository is, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// Proxied from an upstream.
    Mirrored,
    /// Hosted here; `exists` is false for a name nobody has pushed yet.
    Hosted { exists: bool },
}

struct User {
    hash: Option<String>,
    groups: Vec<String>,
}

/// Users and rules built from `[auth]` (and the htpasswd file), ready to install.
pub struct AuthPolicy(Policy);

impl AuthPolicy {
    pub fn build(cfg: &AuthConfig) -> Result<AuthPolicy, String> {
        Policy::build(cfg).map(AuthPolicy)
    }
}

/// The part that `SIGHUP` replaces: users and rules.
struct Policy {
    cfg: AuthConfig,
    users: HashMap<String, User>,
    rules: Vec<Grant>,
}

impl Policy {
    fn build(cfg: &AuthConfig) -> Result<Policy, String> {
        let mut users: HashMap<String, User> = HashMap::new();
        if let Some(path) = &cfg.htpasswd {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.htpasswd {}: {e}", path.display()))?;
            for entry in htpasswd::parse(&text).map_err(|e| format!("{}: {e}", path.display()))? {
                users.insert(
                    entry.user,
                    User {
                        hash: Some(entry.hash),
                        groups: Vec::new(),
                    },
                );
            }
        }
        for u in &cfg.users {
            let slot = users.entry(u.name.clone()).or_insert(User {
                hash: None,
                groups: Vec::new(),
            });
            if let Some(h) = &u.password_hash {
                slot.hash = Some(h.expose().to_string());
            }
            slot.groups.extend(u.groups.iter().cloned());
        }
        let mut rules = Vec::new();
        for r in &cfg.rules {
            let actions = Actions::of(&r.actions);
            for pattern in &r.repos {
                let subjects = r
                    .users
                    .iter()
                    .map(|u| Subject::User(u.clone()))
                    .chain(r.groups.iter().map(|g| Subject::Group(g.clone())));
                for subject in subjects {
                    rules.push(Grant {
                        pattern: pattern.clone(),
                        subject,
                        actions,
                    });
                }
            }
        }
        Ok(Policy {
            cfg: cfg.clone(),
            users,
            rules,
        })
    }
}

/// Failed authentications in the current minute for one client or user name.
struct Window {
    start: Instant,
    failures: u32,
}

pub struct Auth {
    policy: ArcSwap<Policy>,
    pub store: Arc<Store>,
    keys: jwt::Keys,
    /// Run-time permissions (`agent registry permission add`), mirrored from the store.
    perms: RwLock<Vec<Grant>>,
    /// Visibility set at run time, mirrored from the store.
    visibility: RwLock<HashMap<String, Visibility>>,
    /// sha256(user, password) of pairs verified in the last minute -> user.
    verified: moka::sync::Cache<[u8; 32], Arc<str>>,
    /// sha256 of API tokens looked up in the last 10 s (revocation shows within that).
    tokens: moka::sync::Cache<String, Option<Arc<store::TokenInfo>>>,
    failures: moka::sync::Cache<String, Arc<Mutex<Window>>>,
    /// sha256 of bearer JWTs verified in the last minute -> their claims.
    bearers: moka::sync::Cache<[u8; 32], Arc<jwt::Claims>>,
    live_tokens: moka::sync::Cache<(), bool>,
    log_tx: tokio::sync::mpsc::Sender<LogRecord>,
    log_rx: Mutex<Option<tokio::sync::mpsc::Receiver<LogRecord>>>,
}

pub enum LogRecord {
    Access(AccessEntry),
    Audit(AuditRecord),
}

/// Records waiting for the log writer at most; beyond that they are dropped and counted.
const LOG_QUEUE: usize = 65_536;
/// Records written in one transaction at most.
const LOG_BATCH: usize = 8192;

impl Auth {
    pub fn new(cfg: &AuthConfig, data_dir: &Path) -> Result<Auth, String> {
        let policy = Policy::build(cfg)?;
        let store = Store::open(data_dir).map_err(|e| e.to_string())?;
        let keys = jwt::Keys::load_or_create(&data_dir.join("auth"))
            .map_err(|e| format!("token signing key: {e}"))?;
        let perms = store.permissions().map_err(|e| e.to_string())?;
        let vis = store.visibilities().map_err(|e| e.to_string())?;
        let (log_tx, log_rx) = tokio::sync::mpsc::channel(LOG_QUEUE);
        Ok(Auth {
            policy: ArcSwap::from_pointee(policy),
            store: Arc::new(store),
            keys,
            perms: RwLock::new(perms),
            visibility: RwLock::new(vis.into_iter().collect()),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            bearers: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            live_tokens: moka::sync::Cache::builder()
                .time_to_live(Duration::from_secs(10))
                .build(),
            log_tx,
            log_rx: Mutex::new(Some(log_rx)),
        })
    }

    /// Replaces users and rules (`SIGHUP`); forgets verified passwords.
    pub fn install(&self, policy: AuthPolicy) {
        self.policy.store(Arc::new(policy.0));
        self.verified.invalidate_all();
        // The service (audience and issuer) may have changed.
        self.bearers.invalidate_all();
    }

    pub fn config(&self) -> AuthConfig {
        self.policy.load().cfg.clone()
    }

    pub fn user_count(&self) -> usize {
        self.policy.load().users.len()
    }

    /// Whether anyone can log in at all: users or live API tokens exist. Without,
    /// this is a pull-only mirror and `/v2/` does not ask anonymous clients to log in.
    pub fn has_identities(&self) -> bool {
        if self.user_count() > 0 {
            return true;
        }
        self.live_tokens.get_with((), || {
            self.store
                .live_token_count()
                .map(|n| n > 0)
                .unwrap_or(false)
        })
    }

    /// Who sent `authorization` (the header value, if any). Bcrypt runs on the blocking pool.
    pub async fn authenticate(
        self: &Arc<Self>,
        authorization: Option<&str>,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let Some(value) = authorization else {
            return Ok(Identity::anonymous());
        };
        let (scheme, rest) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = B64.decode(rest).map_err(|_| AuthError::Malformed)?;
            let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
            let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed)?;
            if password.starts_with(API_TOKEN_PREFIX) {
                return self.api_token(password, client).await;
            }
            self.password(user, password, client).await
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if rest.starts_with(API_TOKEN_PREFIX) {
                return self.api_token(rest, client).await;
            }
            let claims = self.bearer(rest)?;
            let user = (!claims.sub.is_empty()).then(|| claims.sub.clone());
            let groups = user
                .as_deref()
                .map(|u| self.groups_of(u))
                .unwrap_or_default();
            Ok(Identity {
                user,
                groups,
                method: Method::Jwt(claims.access.clone()),
            })
        } else {
            Err(AuthError::Malformed)
        }
    }

    /// A verified bearer JWT's claims. A signature check costs tens of microseconds, so
    /// tokens verified once are remembered (by sha256) until they expire; expiry is
    /// checked again on every use.
    fn bearer(&self, token: &str) -> Result<Arc<jwt::Claims>, AuthError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = store::now_secs();
        if let Some(c) = self.bearers.get(&key) {
            if c.exp > now {
                return Ok(c);
            }
        }
        let service = self.policy.load().cfg.service.clone();
        let claims = self.keys.verify(token, &service, now).map_err(|e| {
            crate::metrics::auth_failure_reason("bad_token");
            AuthError::BadToken(e)
        })?;
        let claims = Arc::new(claims);
        self.bearers.insert(key, claims.clone());
        Ok(claims)
    }

    fn groups_of(&self, user: &str) -> Vec<String> {
        self.policy
            .load()
            .users
            .get(user)
            .map(|u| u.groups.clone())
            .unwrap_or_default()
    }

    /// Refuses when the client or the user has failed too often this minute.
    fn check_blocked(&self, client: IpAddr, user: Option<&str>) -> Result<(), AuthError> {
        let p = self.policy.load();
        let keys = [
            (format!("ip:{client}"), p.cfg.failures_per_client),
            (
                format!("user:{}", user.unwrap_or("")),
                p.cfg.failures_per_user,
            ),
        ];
        for (key, limit) in keys.iter().take(if user.is_some() { 2 } else { 1 }) {
            if let Some(w) = self.failures.get(key) {
                let w = w.lock().unwrap_or_else(|e| e.into_inner());
                let elapsed = w.start.elapsed();
                if w.failures >= *limit && elapsed < Duration::from_secs(60) {
                    return Err(AuthError::Blocked {
                        retry_after: Duration::from_secs(60) - elapsed,
                    });
                }
            }
        }
        Ok(())
    }

    fn record_failure(&self, client: IpAddr, user: Option<&str>, reason: &'static str) {
        crate::metrics::auth_failure_reason(reason);
        let mut keys = vec![format!("ip:{client}")];
        if let Some(u) = user {
            keys.push(format!("user:{u}"));
        }
        for key in keys {
            let w = self.failures.get_with(key, || {
                Arc::new(Mutex::new(Window {
                    start: Instant::now(),
                    failures: 0,
                }))
            });
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            if w.start.elapsed() >= Duration::from_secs(60) {
                *w = Window {
                    start: Instant::now(),
                    failures: 0,
                };
            }
            w.failures += 1;
        }
        self.audit(
            "auth_failure",
            user,
            Some(&client.to_string()),
            None,
            Some(reason),
        );
    }

    async fn password(
        self: &Arc<Self>,
        user: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        self.check_blocked(client, Some(user))?;
        let mut h = sha2::Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Some(u) = self.verified.get(&key) {
            return Ok(self.user_identity(&u));
        }
        let hash = self
            .policy
            .load()
            .users
            .get(user)
            .and_then(|u| u.hash.clone());
        let ok = match hash {
            Some(hash) => {
                let pw = password.to_string();
                tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false)
            }
            None => {
                // Same cost for unknown users, so timing does not tell who exists.
                let pw = password.to_string();
                let _ = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &DUMMY_HASH)).await;
                false
            }
        };
        if !ok {
            self.record_failure(client, Some(user), "bad_password");
            return Err(AuthError::BadCredentials {
                user: Some(user.to_string()),
            });
        }
        self.verified.insert(key, Arc::from(user));
        Ok(self.user_identity(user))
    }

    fn user_identity(&self, user: &str) -> Identity {
        Identity {
            user: Some(user.to_string()),
            groups: self.groups_of(user),
            method: Method::Password,
        }
    }

    async fn api_token(
        self: &Arc<Self>,
        token: &str,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        self.check_blocked(client, None)?;
        let hash = store::token_hash(token);
        let found = match self.tokens.get(&hash) {
            Some(f) => f,
            None => {
                let (store, h) = (self.store.clone(), hash.clone());
                let f = tokio::task::spawn_blocking(move || store.token_by_hash(&h))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten()
                    .map(Arc::new);
                self.tokens.insert(hash, f.clone());
                f
            }
        };
        let now = store::now_secs();
        let valid = found.filter(|t| t.revoked.is_none() && t.expires.is_none_or(|e| e > now));
        let Some(t) = valid else {
            self.record_failure(client, None, "bad_token");
            return Err(AuthError::BadCredentials { user: None });
        };
        let scopes = t
            .scopes
            .split_whitespace()
            .filter_map(|s| policy::parse_scope(s).ok())
            .collect();
        Ok(Identity {
            user: Some(t.user.clone()),
            groups: self.groups_of(&t.user),
            method: Method::ApiToken(scopes),
        })
    }

    /// What rules and stored permissions grant `user` on `repo` (tokens not applied).
    pub fn rights(&self, user: &str, groups: &[String], repo: &str) -> Actions {
        let p = self.policy.load();
        let from_rules = policy::granted(&p.rules, user, groups, repo);
        let perms = self.perms.read().unwrap_or_else(|e| e.into_inner());
        from_rules.union(policy::granted(&perms, user, groups, repo))
    }

    /// What `id` may do on `repo` by grants alone (no public access).
    pub fn granted(&self, id: &Identity, repo: &str) -> Actions {
        let Some(user) = &id.user else {
            return Actions::NONE;
        };
        match &id.method {
            Method::Anonymous => Actions::NONE,
            Method::Password => self.rights(user, &id.groups, repo),
            Method::ApiToken(scopes) => {
                let scope = scopes
                    .iter()
                    .filter(|(p, _)| policy::matches(p, repo))
                    .fold(Actions::NONE, |acc, (_, a)| acc.union(*a));
                self.rights(user, &id.groups, repo).intersect(scope)
            }
            Method::Jwt(access) => jwt_grants(access, "repository", repo),
        }
    }

    pub fn visibility(&self, repo: &str) -> Visibility {
        let v = self.visibility.read().unwrap_or_else(|e| e.into_inner());
        v.get(repo)
            .copied()
            .unwrap_or(self.policy.load().cfg.default_visibility)
    }

    pub fn set_visibility(&self, repo: &str, v: Visibility) -> Result<(), store::StoreError> {
        self.store.set_visibility(repo, v)?;
        let mut map = self.visibility.write().unwrap_or_else(|e| e.into_inner());
        map.insert(repo.to_string(), v);
        Ok(())
    }

    /// Records the visibility of a repository created by a push, so a later change of
    /// `auth.default_visibility` does not flip it.
    pub fn remember_visibility(&self, repo: &str) -> Result<(), store::StoreError> {
        let known = {
            let v = self.visibility.read().unwrap_or_else(|e| e.into_inner());
            v.contains_key(repo)
        };
        if known {
            return Ok(());
        }
        self.set_visibility(repo, self.policy.load().cfg.default_visibility)
    }

    /// Whether `id` may do `action` on `repo`, a repository of `kind`.
    pub fn allowed(&self, id: &Identity, repo: &str, kind: RepoKind, action: Action) -> bool {
        self.public(id, repo, kind, action) || self.granted(id, repo).contains(action)
    }

    /// Access everyone has (or every logged-in user): pulls of mirrored repositories and
    /// of existing public hosted ones.
    fn public(&self, id: &Identity, repo: &str, kind: RepoKind, action: Action) -> bool {
        if action != Action::Pull {
            return false;
        }
        let cfg = &self.policy.load().cfg;
        let user = !id.is_anonymous();
        match kind {
            RepoKind::Mirrored => cfg.anonymous_pull_mirrored || user,
            RepoKind::Hosted { exists: false } => false,
            RepoKind::Hosted { exists: true } => {
                self.visibility(repo) == Visibility::Public && (cfg.anonymous_pull_public || user)
            }
        }
    }

    /// The admin API needs `admin` on the pattern `*`.
    pub fn is_admin(&self, id: &Identity) -> bool {
        match &id.method {
            Method::Jwt(access) => jwt_grants(access, "registry", "*").contains(Action::Admin),
            _ => self.granted(id, "*").contains(Action::Admin),
        }
    }

    // Tokens of the token flow.

    /// Signs a bearer token for `id` with `access` (already filtered by what it may do).
    pub fn issue(&self, id: &Identity, access: Vec<jwt::Access>) -> (String, Duration) {
        let p = self.policy.load();
        let now = store::now_secs();
        let ttl = p.cfg.token_ttl;
        let claims = jwt::Claims {
            iss: p.cfg.service.clone(),
            sub: id.user.clone().unwrap_or_default(),
            aud: p.cfg.service.clone(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        (self.keys.sign(&claims), ttl)
    }

    /// Signs arbitrary claims (tests forge tokens with it).
    pub fn sign_claims(&self, claims: &jwt::Claims) -> String {
        self.keys.sign(claims)
    }

    pub fn service(&self) -> String {
        self.policy.load().cfg.service.clone()
    }

    pub fn realm(&self) -> String {
        self.policy.load().cfg.realm.clone()
    }

    pub fn token_ttl(&self) -> Duration {
        self.policy.load().cfg.token_ttl
    }

    // Permissions.

    pub fn add_permission(
        &self,
        repo: &str,
        subject: &Subject,
        actions: Actions,
    ) -> Result<Actions, store::StoreError> {
        let new = self.store.add_permission(repo, subject, actions)?;
        self.refresh_permissions()?;
        Ok(new)
    }

    pub fn remove_permission(
        &self,
        repo: &str,
        subject: &Subject,
        actions: Option<Actions>,
    ) -> Result<bool, store::StoreError> {
        let found = self.store.remove_permission(repo, subject, actions)?;
        self.refresh_permissions()?;
        Ok(found)
    }

    fn refresh_permissions(&self) -> Result<(), store::StoreError> {
        let all = self.store.permissions()?;
        *self.perms.write().unwrap_or_else(|e| e.into_inner()) = all;
        Ok(())
    }

    /// Rules from config followed by stored permissions.
    pub fn all_grants(&self) -> (Vec<Grant>, Vec<Grant>) {
        let rules = self.policy.load().rules.clone();
        let perms = self.perms.read().unwrap_or_else(|e| e.into_inner()).clone();
        (rules, perms)
    }

    // Logs.

    /// Queues an audit event for the store and writes it to the `audit` log target.
    pub fn audit(
        &self,
        event: &str,
        user: Option<&str>,
        client: Option<&str>,
        repo: Option<&str>,
        detail: Option<&str>,
    ) {
        tracing::info!(
            target: "audit",
            event,
            user = user.unwrap_or("-"),
            client = client.unwrap_or("-"),
            repo = repo.unwrap_or("-"),
            detail = detail.unwrap_or("-"),
        );
        self.queue(LogRecord::Audit(AuditRecord {
            ts_ms: store::now_ms(),
            event: event.to_string(),
            user: user.map(str::to_string),
            client: client.map(str::to_string),
            repo: repo.map(str::to_string),
            detail: detail.map(str::to_string),
        }));
    }

    /// Queues a request for the queryable access log (none kept when
    /// `access_log_max_entries` is 0).
    pub fn log_access(&self, record: AccessEntry) {
        if self.policy.load().cfg.access_log_max_entries > 0 {
            self.queue(LogRecord::Access(record));
        }
    }

    fn queue(&self, r: LogRecord) {
        if self.log_tx.try_send(r).is_err() {
            crate::metrics::access_log_dropped();
        }
    }

    /// Starts the task that writes queued records in batches and prunes the access log
    /// (by age and count) every ten minutes. Call once, inside the runtime.
    pub fn spawn_log_writer(self: &Arc<Self>) {
        let rx = self.log_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut rx) = rx else { return };
        let auth = self.clone();
        tokio::spawn(async move {
            let mut last_prune = Instant::now();
            let mut buf = Vec::with_capacity(LOG_BATCH);
            loop {
                let n = rx.recv_many(&mut buf, LOG_BATCH).await;
                if n == 0 {
                    break;
                }
                let (mut access, mut audit) = (Vec::new(), Vec::new());
                for r in buf.drain(..) {
                    match r {
                        LogRecord::Access(a) => access.push(a),
                        LogRecord::Audit(a) => audit.push(a),
                    }
                }
                let store = auth.store.clone();
                let (retention, max) = {
                    let p = auth.policy.load();
                    (p.cfg.access_log_retention, p.cfg.access_log_max_entries)
                };
                let prune = last_prune.elapsed() > Duration::from_secs(600);
                if prune {
                    last_prune = Instant::now();
                }
                let began = Instant::now();
                let res = tokio::task::spawn_blocking(move || {
                    store.append(&access, &audit)?;
                    if prune {
                        let cutoff = store::now_ms().saturating_sub(retention.as_millis() as u64);
                        store.prune_access(cutoff, max)?;
                    }
                    Ok::<_, store::StoreError>(())
                })
                .await;
                if let Ok(Err(e)) = res {
                    tracing::warn!(error = %e, "writing the access log failed");
                }
                // Let records gather for a moment when the queue ran dry. With a
                // backlog, rest as long as the write took: the writer never takes more
                // than half a core from serving, and past that rate records are dropped
                // (and counted) rather than requests slowed.
                let rest = match n < LOG_BATCH {
                    true => Duration::from_millis(200),
                    false => began.elapsed(),
                };
                tokio::time::sleep(rest).await;
            }
        });
    }
}

/// What the `access` claim grants on `name` of `kind`.
fn jwt_grants(access: &[jwt::Access], kind: &str, name: &str) -> Actions {
    access
        .iter()
        .filter(|a| a.kind == kind && a.name == name)
        .flat_map(|a| a.actions.iter())
        .filter_map(|a| Action::parse(a).ok())
        .fold(Actions::NONE, |acc, a| acc.union(Actions::of(&[a])))
}

/// A bcrypt hash of a random password, verified against for unknown users.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let pw = uuid::Uuid::new_v4().to_string();
    bcrypt::hash(pw, 10).unwrap_or_default()
});

/// A five-minute admin token signed with the server's key, for the server's own CLI
/// (`agent-registry cache|gc` run by whoever can read the data directory).
pub fn admin_token(keys: &jwt::Keys, service: &str) -> String {
    let now = store::now_secs();
    keys.sign(&jwt::Claims {
        iss: service.to_string(),
        sub: "agent-registry-cli".into(),
        aud: service.to_string(),
        exp: now + 300,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        access: vec![jwt::Access {
            kind: "registry".into(),
            name: "*".into(),
            actions: vec!["*".into()],
        }],
    })
}

/// Makes a bcrypt hash (cost 12) for config or htpasswd.
pub fn hash_password(password: &str) -> Result<String, String> {
    bcrypt::hash(password, 12).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_queued_unless_the_access_log_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let on = Auth::new(&AuthConfig::default(), dir.path()).unwrap();
        on.log_access(AccessEntry::sample(store::now_ms()));
        assert_eq!(on.log_tx.capacity(), LOG_QUEUE - 1);

        let dir = tempfile::tempdir().unwrap();
        let cfg = AuthConfig {
            access_log_max_entries: 0,
            ..AuthConfig::default()
        };
        let off = Auth::new(&cfg, dir.path()).unwrap();
        off.log_access(AccessEntry::sample(store::now_ms()));
        assert_eq!(off.log_tx.capacity(), LOG_QUEUE);
    }
}
