//! `App`: the shared state of a running server, behind one `Arc`: the configuration (with
//! its reloadable sections), storage, the mirror's upstreams, the cache tiers and fills,
//! the rate limits and auth. It composes the services and answers questions about them
//! (may this identity read that repository?); it neither routes nor serves requests:
//! that is `dispatch/` and `handlers/`, above it.

use crate::auth::{Auth, Identity, RepoKind};
use crate::cache::memory::MemoryTier;
use crate::cache::DiskTier;
use crate::config::{Action, Config};
use crate::limits::Limits;
use crate::mirror::{Mirror, Target};
use crate::oci::RepoName;
use crate::storage::Storage;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct App {
    /// The configuration the server started with. `[mirror]`, `[upstreams]`, `[limits]`
    /// and `[auth]` may since have been reloaded: see [`App::config_snapshot`].
    pub config: Config,
    pub storage: Arc<Storage>,
    /// Upstreams and routing; replaced whole by [`App::reload`].
    mirror: ArcSwap<Mirror>,
    /// Blob fills in flight, shared by every generation of `mirror`.
    pub fills: Arc<crate::cache::Fills>,
    /// Small hot objects (manifests, tag rows, referrers, small blobs) kept in RAM,
    /// capped at `cache.memory.max_size`.
    pub memory: MemoryTier,
    /// The disk tier's index: what proxied content is cached, capped at `cache.max_size`.
    pub cache: Arc<DiskTier>,
    /// Per-client request rate limits (`[limits]`); replaced by [`App::reload`].
    limits: ArcSwap<Limits>,
    /// The reloadable sections as last loaded.
    live: ArcSwap<Config>,
    /// Users, rules, tokens, the audit and access logs.
    pub auth: Arc<Auth>,
    /// `[cluster]`: the peer nodes and digest owners; `None` without peers.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Pull policies (`[policy]` and the run-time override) and their verdict cache.
    pub policy: Arc<crate::policy::Policies>,
    draining: AtomicBool,
}
/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Policy(String),
}

impl App {
    pub fn new(config: Config) -> std::result::Result<Arc<App>, StartError> {
        crate::metrics::install();
        let storage = Arc::new(Storage::open(&config.storage.data_dir)?);
        let mirror = Mirror::new(&config)?;
        let limits = Limits::new(&config.limits);
        let auth = Auth::new(&config.auth, &config.storage.data_dir).map_err(StartError::Auth)?;
        let memory = MemoryTier::new(config.cache.memory.max_size);
        let cache = DiskTier::open(storage.clone(), memory.clone(), &config.cache)
            .map_err(crate::storage::StorageError::from)?;
        let fills = Arc::new(crate::cache::Fills::default());
        fills.attach(cache.clone());
        let cluster = crate::cluster::Cluster::new(&config.cluster).map_err(StartError::Cluster)?;
        let policy = crate::policy::from_config(&config.policy, &config.storage.data_dir)
            .map_err(StartError::Policy)?;
        Ok(Arc::new(App {
            live: ArcSwap::from_pointee(config.clone()),
            config,
            storage,
            mirror: ArcSwap::from_pointee(mirror),
            fills,
            memory,
            cache,
            limits: ArcSwap::from_pointee(limits),
            auth: Arc::new(auth),
            cluster,
            policy: Arc::new(policy),
            draining: AtomicBool::new(false),
        }))
    }

    /// The configuration in effect: the started one with the reloaded sections.
    pub fn config_snapshot(&self) -> Config {
        let live = self.live.load();
        let mut c = self.config.clone();
        c.mirror = live.mirror.clone();
        c.upstreams = live.upstreams.clone();
        c.limits = live.limits.clone();
        c.auth = live.auth.clone();
        c
    }

    /// The storage and cache tiers, for the cache's admin operations and upkeep.
    pub fn tiers(&self) -> crate::cache::admin::Tiers {
        crate::cache::admin::Tiers {
            storage: self.storage.clone(),
            disk: self.cache.clone(),
            memory: self.memory.clone(),
            config: self.config.cache.clone(),
        }
    }

    /// The upstreams and routing in effect.
    pub fn mirror(&self) -> Arc<Mirror> {
        self.mirror.load_full()
    }

    /// The `[limits]` in effect (the server reads the body and connection limits here).
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Applies `new`'s `[mirror]`, `[upstreams]`, `[limits]` and `[auth]` all at once, or
    /// none of them when any part fails to build (the old ones keep serving). Returns
    /// the keys that changed but need a restart to take effect.
    pub fn reload(&self, new: &Config) -> std::result::Result<Vec<&'static str>, String> {
        let mirror = Mirror::reusing(new, Some(&self.mirror())).map_err(|e| e.to_string())?;
        let policy = crate::auth::AuthPolicy::build(&new.auth)?;
        let limits = Limits::new(&new.limits);
        self.mirror.store(Arc::new(mirror));
        self.limits.store(Arc::new(limits));
        self.auth.install(policy);
        self.live.store(Arc::new(new.clone()));
        let old = &self.config;
        let mut restart = Vec::new();
        if new.server != old.server {
            restart.push("server");
        }
        if new.storage != old.storage {
            restart.push("storage");
        }
        if new.log != old.log {
            restart.push("log");
        }
        if new.cache != old.cache {
            restart.push("cache");
        }
        if new.preheat != old.preheat {
            restart.push("preheat");
        }
        if new.policy != old.policy {
            restart.push("policy");
        }
        if new.tls.enabled != old.tls.enabled || new.tls.client_ca_file != old.tls.client_ca_file {
            restart.push("tls");
        }
        Ok(restart)
    }

    /// Marks the server as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// How the rules see `name`, whatever the action. A plain name that a push could make
    /// hosted is judged as hosted even while it is not: a pull of it from the upstream
    /// needs no grant (`Auth::allowed` lets it through as mirrored content), and a grant
    /// given or withheld for it (the token endpoint's) must not tell a private hosted
    /// repository from a name nobody pushed.
    fn repo_kind(&self, name: &RepoName) -> RepoKind {
        let exists = self.storage.is_hosted(name.as_str());
        let mirror = self.mirror();
        match mirror.resolve(name, None, None) {
            Ok(Target::Proxy(p)) if !(p.via_default && mirror.hosted_on_push) => RepoKind::Mirrored,
            _ => RepoKind::Hosted { exists },
        }
    }

    /// Whether `id` may pull `repo` (filters listings, checks mounts).
    pub fn may_read(&self, id: &Identity, repo: &str) -> bool {
        match RepoName::parse(repo) {
            Ok(name) => {
                let kind = self.repo_kind(&name);
                self.auth.allowed(id, repo, kind, Action::Pull)
            }
            Err(_) => false,
        }
    }

    /// Of `wanted`, what `id` may do on `name` (the token endpoint's grants).
    pub fn grantable(&self, id: &Identity, name: &RepoName, wanted: &[Action]) -> Vec<Action> {
        let kind = self.repo_kind(name);
        wanted
            .iter()
            .copied()
            .filter(|a| self.auth.allowed(id, name.as_str(), kind, *a))
            .collect()
    }

    /// The client's address: the peer, or behind a trusted proxy (`limits.trusted_proxies`)
    /// the one `X-Forwarded-For` names. Failed logins are counted against it.
    pub fn client_ip(&self, peer: std::net::IpAddr, headers: &http::HeaderMap) -> std::net::IpAddr {
        self.limits.load().client_ip(peer, headers)
    }
}
