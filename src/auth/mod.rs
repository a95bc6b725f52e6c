//! Access control: who a request is ([`Auth::authenticate`]), what it may do
//! ([`Auth::allowed`]), the bearer tokens of the registry token flow ([`jwt`]), and the
//! audit and access logs ([`store`]).
//!
//! Credentials arrive as Basic (a user's password, or an API token as the password) or
//! Bearer (an API token, or a JWT issued by `/token`). Passwords are bcrypt; a verified
//! pair is remembered for a minute as a sha256 of both, so bcrypt runs once per client
//! per minute, not per request. API tokens are stored as sha256 hashes.
//!
//! A JWT names what it was issued for (the user, and the API token if one was used)
//! and is honoured only while that still stands: every use checks that the user
//! exists or the API token is live, and intersects the token's access with what the
//! live rules and permissions grant (recomputed when the auth state's generation
//! changes). Renewing a JWT at `/token` never extends it past its own `exp`, and an
//! API token's JWTs never outlive the API token.
//!
//! Brute force: an attempt is reserved against the client's failure budget before
//! bcrypt runs, checks for one user run one at a time and decide the user's limit
//! under that lock, each client has one check running at most, and all checks share
//! a small pool (half the cores) on the blocking threads. Over a user's limit, the
//! user is not locked out: clients that have not failed against that user still get
//! in, after a delay ([`SLOW_DOWN`]); clients that have failed against them get 429.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use store::{AccessEntry, AuditRecord, Store};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// What API tokens start with, so a Bearer value is told apart from a JWT at a glance
/// (and secret scanners can find leaked ones).
pub const API_TOKEN_PREFIX: &str = "agr_";

/// Bytes of a password bcrypt reads; it ignores the rest, so longer passwords are
/// refused (by `hash-password`, and at login) rather than silently cut.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// How long a password check waits first while its user is over
/// `auth.failures_per_user` (for a client that has not failed against that user).
pub const SLOW_DOWN: Duration = Duration::from_secs(1);

const MINUTE: Duration = Duration::from_secs(60);

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
    /// The API token the credential is, or (for a JWT) was issued for.
    pub token_id: Option<String>,
    /// When the credential stops being valid (seconds since the epoch): an API
    /// token's expiry, a JWT's `exp`. `None`: a password, or an API token without one.
    pub expires: Option<u64>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: None,
            groups: Vec::new(),
            method: Method::Anonymous,
            token_id: None,
            expires: None,
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

#[derive(Clone)]
struct User {
    hash: Option<String>,
    groups: Vec<String>,
}

/// How often a running server looks for users added with `agent-registry user add`
/// (at most; a login as a name it does not know looks sooner, see [`USERS_POLL_UNKNOWN`]).
const USERS_POLL: Duration = Duration::from_secs(1);
const USERS_POLL_UNKNOWN: Duration = Duration::from_millis(100);

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
    /// Config and htpasswd users merged with those of `auth.db`.
    users: HashMap<String, User>,
    /// Config and htpasswd users only.
    base: HashMap<String, User>,
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
        let rules = rule_grants(cfg);
        Ok(Policy {
            cfg: cfg.clone(),
            base: users.clone(),
            users,
            rules,
        })
    }

    /// This policy with the users of `auth.db` added. The config and htpasswd file win
    /// for a name they give a password; one they list without a password takes the
    /// stored hash and both lists of groups.
    fn with_stored(mut self, stored: Vec<store::StoredUser>) -> Policy {
        let mut users = self.base.clone();
        for u in stored {
            let slot = users.entry(u.name).or_insert(User {
                hash: None,
                groups: Vec::new(),
            });
            if slot.hash.is_none() {
                slot.hash = Some(u.hash);
                slot.groups.extend(u.groups);
            }
        }
        self.users = users;
        self
    }
}

/// Failed authentications in the current minute for one client, user name, or client
/// and user name; `pending`: password checks reserved and not finished yet.
struct Window {
    start: Instant,
    failures: u32,
    pending: u32,
}

impl Window {
    /// Starts a new minute when the last one is over (reservations carry over).
    fn roll(&mut self) {
        if self.start.elapsed() >= MINUTE {
            self.start = Instant::now();
            self.failures = 0;
        }
    }

    fn retry_after(&self) -> Duration {
        MINUTE.saturating_sub(self.start.elapsed())
    }
}

struct WindowEntry {
    window: Mutex<Window>,
    /// Woken when a reservation ends.
    changed: Notify,
}

impl WindowEntry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        w.roll();
        w
    }
}

/// A verified bearer JWT, and its access as the auth state of `generation` allows.
struct Bearer {
    claims: jwt::Claims,
    live: Mutex<Option<(u64, Vec<jwt::Access>)>>,
}

/// A password check reserved against the client's failure budget. Ended by
/// [`Attempt::finish`]; dropped unfinished (the client went away before bcrypt ran,
/// so nothing was learnt) it only gives its place back. Once bcrypt is under way the
/// attempt belongs to it and records the real outcome.
struct Attempt {
    auth: Arc<Auth>,
    entry: Arc<WindowEntry>,
    client: IpAddr,
    user: String,
    done: bool,
}

impl Attempt {
    /// Ends the reservation: `Some(reason)` records a failure, `None` a success or an
    /// attempt refused before any check.
    fn finish(mut self, failure: Option<&'static str>) {
        self.end(failure);
    }

    fn end(&mut self, failure: Option<&'static str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(reason) = failure {
            self.auth
                .record_failure(self.client, Some(&self.user), reason);
        }
        {
            let mut w = self.entry.lock();
            w.pending = w.pending.saturating_sub(1);
        }
        self.entry.changed.notify_waiters();
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.end(None);
    }
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
    /// API tokens by id, looked up in the last 10 s (for JWTs issued for one).
    token_ids: moka::sync::Cache<String, Option<Arc<store::TokenInfo>>>,
    failures: moka::sync::Cache<String, Arc<WindowEntry>>,
    /// sha256 of bearer JWTs verified in the last minute -> their claims.
    bearers: moka::sync::Cache<[u8; 32], Arc<Bearer>>,
    live_tokens: moka::sync::Cache<(), bool>,
    /// Bumped by every change of users, rules, permissions or API tokens: cached
    /// bearer access computed at an older generation is recomputed.
    generation: AtomicU64,
    /// One password check at a time per user name, and per client.
    user_locks: moka::sync::Cache<String, Arc<Semaphore>>,
    client_locks: moka::sync::Cache<IpAddr, Arc<Semaphore>>,
    /// Password checks running at once, server-wide: half the cores, so serving goes on.
    hashing: Arc<Semaphore>,
    /// bcrypt verifications run (unknown users included).
    password_checks: AtomicU64,
    /// When `auth.db`'s users were last looked at, and their version then.
    users_seen: Mutex<(Instant, i64)>,
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
        let store = Store::open(data_dir).map_err(|e| e.to_string())?;
        let users_version = store.users_version().map_err(|e| e.to_string())?;
        let policy = Policy::build(cfg)?.with_stored(store.users().map_err(|e| e.to_string())?);
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
            token_ids: moka::sync::Cache::builder()
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
            generation: AtomicU64::new(0),
            user_locks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(MINUTE)
                .build(),
            client_locks: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(MINUTE)
                .build(),
            hashing: Arc::new(Semaphore::new(hashing_threads())),
            password_checks: AtomicU64::new(0),
            users_seen: Mutex::new((Instant::now(), users_version)),
            log_tx,
            log_rx: Mutex::new(Some(log_rx)),
        })
    }

    /// Replaces users and rules (`SIGHUP`); forgets verified passwords.
    pub fn install(&self, policy: AuthPolicy) {
        let stored = self.store.users().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the users of auth.db; using config users only");
            Vec::new()
        });
        self.policy.store(Arc::new(policy.0.with_stored(stored)));
        self.verified.invalidate_all();
        // The service (audience and issuer) may have changed.
        self.bearers.invalidate_all();
        self.changed();
    }

    /// Picks up users added, changed or removed in `auth.db` by `agent-registry user
    /// add` (another process): looks at the users' version when `poll` has passed since
    /// the last look, and rebuilds the user table when it changed.
    fn sync_users(&self, poll: Duration) {
        let mut seen = self.users_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.0.elapsed() < poll {
            return;
        }
        seen.0 = Instant::now();
        let version = match self.store.users_version() {
            Ok(v) if v != seen.1 => v,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the users' version in auth.db");
                return;
            }
        };
        match self.store.users() {
            Ok(stored) => {
                seen.1 = version;
                let current = self.policy.load();
                let next = Policy {
                    cfg: current.cfg.clone(),
                    users: HashMap::new(),
                    base: current.base.clone(),
                    rules: current.rules.clone(),
                }
                .with_stored(stored);
                tracing::info!(
                    users = next.users.len(),
                    "users changed in auth.db: reloaded"
                );
                self.policy.store(Arc::new(next));
                self.verified.invalidate_all();
                self.changed();
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the users of auth.db"),
        }
    }

    /// Marks the auth state changed: bearer tokens' access is checked again.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// bcrypt verifications run so far (tests and diagnostics).
    pub fn password_checks(&self) -> u64 {
        self.password_checks.load(Ordering::Relaxed)
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
        self.sync_users(USERS_POLL);
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
            let bearer = self.bearer(rest)?;
            self.bearer_identity(&bearer).await.inspect_err(|_| {
                crate::metrics::auth_failure_reason("bad_token");
            })
        } else {
            Err(AuthError::Malformed)
        }
    }

    /// A verified bearer JWT. A signature check costs tens of microseconds, so tokens
    /// verified once are remembered (by sha256) until they expire; expiry is checked
    /// again on every use.
    fn bearer(&self, token: &str) -> Result<Arc<Bearer>, AuthError> {
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = store::now_secs();
        if let Some(b) = self.bearers.get(&key) {
            if b.claims.exp + jwt::LEEWAY > now {
                return Ok(b);
            }
        }
        let service = self.policy.load().cfg.service.clone();
        let claims = self.keys.verify(token, &service, now).map_err(|e| {
            crate::metrics::auth_failure_reason("bad_token");
            AuthError::BadToken(e)
        })?;
        let bearer = Arc::new(Bearer {
            claims,
            live: Mutex::new(None),
        });
        self.bearers.insert(key, bearer.clone());
        Ok(bearer)
    }

    /// Who a verified JWT stands for now: its user must still exist, or the API token
    /// it was issued for still be live; its access is cut to what that origin is
    /// granted now (computed once per auth-state generation).
    async fn bearer_identity(self: &Arc<Self>, b: &Bearer) -> Result<Identity, AuthError> {
        let c = &b.claims;
        let revoked = || AuthError::BadToken(jwt::JwtError::Revoked);
        if c.cli {
            return Ok(Identity {
                user: Some(c.sub.clone()),
                groups: Vec::new(),
                method: Method::Jwt(c.access.clone()),
                token_id: None,
                expires: Some(c.exp),
            });
        }
        let origin = match &c.tid {
            Some(tid) => {
                let t = self.token_by_id(tid).await.ok_or_else(revoked)?;
                if t.user != c.sub {
                    return Err(revoked());
                }
                self.token_identity(&t)
            }
            None if c.sub.is_empty() => Identity::anonymous(),
            None => {
                if !self.policy.load().users.contains_key(&c.sub) {
                    return Err(revoked());
                }
                self.user_identity(&c.sub)
            }
        };
        let generation = self.generation.load(Ordering::Acquire);
        let access = {
            let mut live = b.live.lock().unwrap_or_else(|e| e.into_inner());
            match &*live {
                Some((g, a)) if *g == generation => a.clone(),
                _ => {
                    let a = self.live_access(&origin, &c.access);
                    *live = Some((generation, a.clone()));
                    a
                }
            }
        };
        Ok(Identity {
            user: origin.user,
            groups: origin.groups,
            method: Method::Jwt(access),
            token_id: c.tid.clone(),
            expires: Some(c.exp),
        })
    }

    /// Of a token's `access`, what `origin` (the password or API token it was issued
    /// for) is granted now. Public pulls need no grant and are decided at use.
    fn live_access(&self, origin: &Identity, access: &[jwt::Access]) -> Vec<jwt::Access> {
        let admin = self.is_admin(origin);
        access
            .iter()
            .filter_map(|a| {
                let actions: Vec<String> = match a.kind.as_str() {
                    "repository" => {
                        let granted = self.granted(origin, &a.name);
                        a.actions
                            .iter()
                            .filter(|x| Action::parse(x).is_ok_and(|x| granted.contains(x)))
                            .cloned()
                            .collect()
                    }
                    "registry" if a.name == "catalog" || admin => a.actions.clone(),
                    _ => Vec::new(),
                };
                (!actions.is_empty()).then(|| jwt::Access {
                    kind: a.kind.clone(),
                    name: a.name.clone(),
                    actions,
                })
            })
            .collect()
    }

    /// The API token `id` if it is live (not revoked, not expired); looked up at most
    /// every 10 s per token (a revocation by this server shows at once).
    async fn token_by_id(&self, id: &str) -> Option<Arc<store::TokenInfo>> {
        let found = match self.token_ids.get(id) {
            Some(f) => f,
            None => {
                let (store, key) = (self.store.clone(), id.to_string());
                let f = tokio::task::spawn_blocking(move || store.token_by_id(&key))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .flatten()
                    .map(Arc::new);
                self.token_ids.insert(id.to_string(), f.clone());
                f
            }
        };
        let now = store::now_secs();
        found.filter(|t| t.revoked.is_none() && t.expires.is_none_or(|e| e > now))
    }

    fn groups_of(&self, user: &str) -> Vec<String> {
        self.policy
            .load()
            .users
            .get(user)
            .map(|u| u.groups.clone())
            .unwrap_or_default()
    }

    /// The failure window of `key`.
    fn window(&self, key: String) -> Arc<WindowEntry> {
        self.failures.get_with(key, || {
            Arc::new(WindowEntry {
                window: Mutex::new(Window {
                    start: Instant::now(),
                    failures: 0,
                    pending: 0,
                }),
                changed: Notify::new(),
            })
        })
    }

    /// Failures in the current minute of `key`, and when that minute ends.
    fn failures_of(&self, key: &str) -> (u32, Duration) {
        match self.failures.get(key) {
            Some(e) => {
                let w = e.lock();
                (w.failures, w.retry_after())
            }
            None => (0, MINUTE),
        }
    }

    /// Refuses a client that has failed too often this minute (API tokens).
    fn check_blocked(&self, client: IpAddr) -> Result<(), AuthError> {
        let limit = self.policy.load().cfg.failures_per_client;
        let (failures, retry_after) = self.failures_of(&client_key(client));
        match failures >= limit {
            true => Err(AuthError::Blocked { retry_after }),
            false => Ok(()),
        }
    }

    /// Whether a check for `user` from `client` may run: `Ok(true)` when the user is
    /// over its limit and this one is slowed down; refused when the user is over its
    /// limit and this client has failed against it.
    fn user_gate(&self, client: IpAddr, user: &str) -> Result<bool, AuthError> {
        let limit = self.policy.load().cfg.failures_per_user;
        let (failures, retry_after) = self.failures_of(&user_key(user));
        if failures < limit {
            return Ok(false);
        }
        match self.failures_of(&pair_key(client, user)).0 {
            0 => Ok(true),
            _ => Err(AuthError::Blocked { retry_after }),
        }
    }

    /// Reserves a password check against the client's budget: refused when the
    /// client's failures reach its limit, held back while failures and checks in
    /// flight do (so concurrent guesses cannot overrun it).
    async fn reserve(self: &Arc<Self>, client: IpAddr, user: &str) -> Result<Attempt, AuthError> {
        let limit = self.policy.load().cfg.failures_per_client;
        let entry = self.window(client_key(client));
        loop {
            let changed = entry.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut w = entry.lock();
                if w.failures >= limit {
                    return Err(AuthError::Blocked {
                        retry_after: w.retry_after(),
                    });
                }
                if w.failures + w.pending < limit {
                    w.pending += 1;
                    break;
                }
            }
            changed.await;
        }
        Ok(Attempt {
            auth: self.clone(),
            entry,
            client,
            user: user.to_string(),
            done: false,
        })
    }

    fn record_failure(&self, client: IpAddr, user: Option<&str>, reason: &'static str) {
        crate::metrics::auth_failure_reason(reason);
        let mut keys = vec![client_key(client)];
        if let Some(u) = user {
            keys.push(user_key(u));
            keys.push(pair_key(client, u));
        }
        for key in keys {
            self.window(key).lock().failures += 1;
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
        let known = self.policy.load().users.contains_key(user);
        self.sync_users(if known {
            USERS_POLL
        } else {
            USERS_POLL_UNKNOWN
        });
        // Refused at once: a client that has failed against a user over its limit.
        self.user_gate(client, user)?;
        let attempt = self.reserve(client, user).await?;
        let mut h = sha2::Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        let key: [u8; 32] = h.finalize().into();
        if let Some(u) = self.verified.get(&key) {
            attempt.finish(None);
            return Ok(self.user_identity(&u));
        }
        let bad = || AuthError::BadCredentials {
            user: Some(user.to_string()),
        };
        if password.len() > MAX_PASSWORD_BYTES {
            attempt.finish(Some("bad_password"));
            return Err(bad());
        }
        // One check per user at a time; the user's limit is decided under this lock,
        // so the checks it lets through never exceed it.
        let lock = self
            .user_locks
            .get_with(user.to_string(), || Arc::new(Semaphore::new(1)));
        let user_permit = lock.acquire_owned().await.ok();
        if let Some(u) = self.verified.get(&key) {
            attempt.finish(None);
            return Ok(self.user_identity(&u));
        }
        match self.user_gate(client, user) {
            Err(e) => {
                attempt.finish(None);
                return Err(e);
            }
            Ok(true) => tokio::time::sleep(SLOW_DOWN).await,
            Ok(false) => {}
        }
        let hash = self
            .policy
            .load()
            .users
            .get(user)
            .and_then(|u| u.hash.clone());
        match self
            .check_password(attempt, key, password, hash, user_permit)
            .await
        {
            true => Ok(self.user_identity(user)),
            false => Err(bad()),
        }
    }

    /// Runs bcrypt on the blocking pool: one check per client at a time, at most
    /// `hashing_threads()` at once. The outcome is recorded (the failure counted, or the
    /// pair remembered as verified) before the permits, the user's included, are let
    /// go, and even when the request is gone by then. Unknown users (`hash` None) are
    /// checked against a dummy hash, so timing does not tell who exists.
    async fn check_password(
        &self,
        attempt: Attempt,
        key: [u8; 32],
        password: &str,
        hash: Option<String>,
        user_permit: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let lock = self
            .client_locks
            .get_with(attempt.client, || Arc::new(Semaphore::new(1)));
        let client_permit = lock.acquire_owned().await.ok();
        let pool_permit = self.hashing.clone().acquire_owned().await.ok();
        self.password_checks.fetch_add(1, Ordering::Relaxed);
        let pw = password.to_string();
        tokio::task::spawn_blocking(move || {
            let permits = (user_permit, client_permit, pool_permit);
            let ok = match hash {
                Some(hash) => bcrypt::verify(pw, &hash).unwrap_or(false),
                None => {
                    let _ = bcrypt::verify(pw, &DUMMY_HASH);
                    false
                }
            };
            if ok {
                let user: Arc<str> = Arc::from(attempt.user.as_str());
                attempt.auth.verified.insert(key, user);
                attempt.finish(None);
            } else {
                attempt.finish(Some("bad_password"));
            }
            drop(permits);
            ok
        })
        .await
        .unwrap_or(false)
    }

    fn user_identity(&self, user: &str) -> Identity {
        Identity {
            user: Some(user.to_string()),
            groups: self.groups_of(user),
            method: Method::Password,
            token_id: None,
            expires: None,
        }
    }

    fn token_identity(&self, t: &store::TokenInfo) -> Identity {
        let scopes = t
            .scopes
            .split_whitespace()
            .filter_map(|s| policy::parse_scope(s).ok())
            .collect();
        Identity {
            user: Some(t.user.clone()),
            groups: self.groups_of(&t.user),
            method: Method::ApiToken(scopes),
            token_id: Some(t.id.clone()),
            expires: t.expires,
        }
    }

    async fn api_token(
        self: &Arc<Self>,
        token: &str,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        self.check_blocked(client)?;
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
        Ok(self.token_identity(&t))
    }

    /// Makes an API token for `user` (see [`Store::create_token`]).
    pub fn create_token(
        &self,
        user: &str,
        scopes: &str,
        expires: Option<u64>,
    ) -> Result<(String, store::TokenInfo), store::StoreError> {
        let made = self.store.create_token(user, scopes, expires)?;
        self.live_tokens.invalidate_all();
        self.changed();
        Ok(made)
    }

    /// Revokes an API token; it, and every JWT issued for it, stop working at once.
    pub fn revoke_token(&self, id: &str) -> Result<bool, store::StoreError> {
        let found = self.store.revoke_token(id)?;
        self.tokens.invalidate_all();
        self.token_ids.invalidate(id);
        self.live_tokens.invalidate_all();
        self.changed();
        Ok(found)
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
    /// It lives `auth.token_ttl`, never past the credential it was issued for (an API
    /// token's expiry; a JWT's own `exp` when a JWT is renewed), and names that
    /// credential (`sub`, `tid`) so every use can check that it still stands.
    /// Returns the token and how long it is valid.
    pub fn issue(&self, id: &Identity, access: Vec<jwt::Access>) -> (String, Duration) {
        let p = self.policy.load();
        let now = store::now_secs();
        let exp = (now + p.cfg.token_ttl.as_secs()).min(id.expires.unwrap_or(u64::MAX));
        let claims = jwt::Claims {
            iss: p.cfg.service.clone(),
            sub: id.user.clone().unwrap_or_default(),
            aud: p.cfg.service.clone(),
            exp,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
            tid: id.token_id.clone(),
            cli: false,
        };
        (
            self.keys.sign(&claims),
            Duration::from_secs(exp.saturating_sub(now)),
        )
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
        self.changed();
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
        self.changed();
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

fn client_key(client: IpAddr) -> String {
    format!("ip:{client}")
}

fn user_key(user: &str) -> String {
    format!("user:{user}")
}

fn pair_key(client: IpAddr, user: &str) -> String {
    format!("ip-user:{client} {user}")
}

/// Password checks that may run at once: half the cores, at least one.
fn hashing_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
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
        tid: None,
        cli: true,
    })
}

/// The grants of the `[auth]` rules, one per repository pattern and subject.
pub fn rule_grants(cfg: &AuthConfig) -> Vec<Grant> {
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
    rules
}

/// The repository patterns `grants` let `user` (a member of `groups`) push to.
pub fn push_patterns(grants: &[Grant], user: &str, groups: &[String]) -> Vec<String> {
    let mut out: Vec<String> = grants
        .iter()
        .filter(|g| g.actions.contains(Action::Push))
        .filter(|g| match &g.subject {
            Subject::User(u) => u == user,
            Subject::Group(x) => groups.contains(x),
        })
        .map(|g| g.pattern.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One line saying who may push where by `grants` (rules and stored permissions), or
/// what to add when nobody may.
pub fn describe_push(grants: &[Grant], loopback_writes: bool) -> String {
    let mut who: Vec<String> = grants
        .iter()
        .filter(|g| g.actions.contains(Action::Push))
        .map(|g| format!("{} {} on {}", g.subject.kind(), g.subject.name(), g.pattern))
        .collect();
    who.sort();
    who.dedup();
    let loopback = match loopback_writes {
        true => {
            "; anonymous clients on loopback may push too (server.hosted_writes = \"loopback\")"
        }
        false => "",
    };
    if who.is_empty() {
        return format!(
            "no user may push: add a rule under [auth] (repos = [\"agents/*\"], users = [\"NAME\"], \
             actions = [\"pull\", \"push\"]) or run `agent registry permission add 'agents/*' \
             --user NAME -p push`, and a user with `agent-registry user add NAME`{loopback}"
        );
    }
    format!("a push needs the login of: {}{loopback}", who.join(", "))
}

/// Makes a bcrypt hash (cost 12) for config or htpasswd. Refuses passwords bcrypt
/// would cut short (over [`MAX_PASSWORD_BYTES`]).
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is {} bytes; bcrypt uses only the first {MAX_PASSWORD_BYTES}, so \
             choose one of at most {MAX_PASSWORD_BYTES} bytes",
            password.len()
        ));
    }
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

    #[test]
    fn hashes_are_made_only_for_passwords_bcrypt_reads_whole() {
        let at_most = "x".repeat(MAX_PASSWORD_BYTES);
        let hash = hash_password(&at_most).unwrap();
        assert!(bcrypt::verify(&at_most, &hash).unwrap());
        let err = hash_password(&format!("{at_most}y")).unwrap_err();
        assert!(err.contains("73 bytes") && err.contains("72"), "{err}");
    }

    #[tokio::test]
    async fn issued_tokens_never_outlive_the_credential_and_name_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::new(&AuthConfig::default(), dir.path()).unwrap();
        let now = store::now_secs();
        let mut id = Identity::anonymous();
        id.user = Some("ci".into());
        id.token_id = Some("tok_1".into());
        id.expires = Some(now + 30);
        let (t, ttl) = auth.issue(&id, Vec::new());
        assert!(ttl <= Duration::from_secs(30), "{ttl:?}");
        let c = auth.keys.verify(&t, &auth.service(), now).unwrap();
        assert_eq!(
            (c.exp, c.tid.as_deref(), c.cli),
            (now + 30, Some("tok_1"), false)
        );
        // Without an expiry, token_ttl.
        id.expires = None;
        let (_, ttl) = auth.issue(&id, Vec::new());
        assert_eq!(ttl, auth.token_ttl());
    }
}
