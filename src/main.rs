//! `agent-registry`: parse the command line, load and validate the config, serve; tells
//! systemd (`Type=notify`) when it is ready and when it stops.

use agent_registry::app::App;
use agent_registry::config::{process_env, Config, LogFormat};
use agent_registry::server::systemd;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "agent-registry",
    version,
    about = "OCI registry and pull-through caching mirror for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Config file (TOML). Without it the embedded default is used.
    #[arg(long, short = 'c', env = "AGENT_REGISTRY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Listen address, overrides server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory, overrides storage.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Set the url of the upstream NAME (a name or alias; other settings are kept)
        /// or add upstream NAME with default settings. Repeatable.
        #[arg(long = "upstream", value_name = "NAME=URL", action = clap::ArgAction::Append)]
        upstreams: Vec<String>,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Create, list and revoke API tokens (stored as hashes in the data directory).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Add, list and remove users kept in the data directory (auth.db); a running
    /// server sees the change within a second, without a restart.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Read a password from stdin and print its bcrypt hash for auth.users or htpasswd.
    HashPassword,
    /// The cache: stats and purge ask the running server; verify checks the data directory.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Garbage-collect hosted repositories in the running server and print what was freed.
    Gc {
        #[command(flatten)]
        config: ConfigArg,
        /// Report what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        admin: AdminArg,
    },
}

/// The config and the data directory, as `serve` takes them.
#[derive(clap::Args, Clone)]
struct StoreArg {
    #[command(flatten)]
    config: ConfigArg,
    /// Data directory, overrides storage.data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add user NAME (or set its password and groups) with a bcrypt hash of the password.
    Add {
        #[command(flatten)]
        store: StoreArg,
        name: String,
        /// Read the password from stdin; without it a terminal is asked (twice).
        #[arg(long)]
        password_stdin: bool,
        /// A group the user belongs to (rules may grant to groups). Repeatable.
        #[arg(long = "group", short = 'g', action = clap::ArgAction::Append)]
        groups: Vec<String>,
    },
    /// List the users of the data directory (not those of the config or htpasswd file).
    List {
        #[command(flatten)]
        store: StoreArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove user NAME from the data directory.
    Remove {
        #[command(flatten)]
        store: StoreArg,
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for USER; it is printed once and never again.
    Create {
        #[command(flatten)]
        store: StoreArg,
        /// The user the token acts as; it gets at most what the rules grant this user.
        #[arg(long)]
        user: String,
        /// PATTERN:ACTIONS, e.g. 'agents/*:pull,push'. Repeatable.
        #[arg(long = "scope", required = true, action = clap::ArgAction::Append)]
        scopes: Vec<String>,
        /// Lifetime such as 90d; without it the token does not expire.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens (never the tokens themselves).
    List {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        user: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (tok_...).
    Revoke {
        #[command(flatten)]
        store: StoreArg,
        id: String,
    },
}

#[derive(clap::Args, Clone)]
struct AdminArg {
    /// The server's URL (default: server.listen of the config, on loopback).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Print the cache's statistics (GET /admin/cache/stats).
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        admin: AdminArg,
    },
    /// Remove a digest, or a proxied repository's tags and images, from the cache.
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        admin: AdminArg,
        /// A digest (sha256:...) or a repository (library/alpine, docker.io/library/alpine).
        target: String,
    },
    /// Rehash every stored object; move those that no longer match to quarantine/.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Data directory, overrides storage.data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the config and exit non-zero with the file, key and problem if it is invalid.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the effective config (file + environment overrides), secrets redacted.
    Show {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(arg.config.as_deref(), &process_env)?)
}

fn init_logging(cfg: &Config) {
    let filter = std::env::var("AAC_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| cfg.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // Colour codes only on a terminal: journald and log files get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(agent_registry::logging::Buffered::stderr());
    // A panic's message must not overtake the lines logged before it.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        agent_registry::logging::flush();
        previous(info);
    }));
    // Next to the fmt layer: the recent records `GET /admin/logs` answers.
    let ring = agent_registry::logring::RingLayer::global();
    let registry = tracing_subscriber::registry().with(filter).with(ring);
    match cfg.log.format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// On every SIGHUP: reloads the config (`[mirror]`, `[upstreams]`, `[limits]`, `[auth]`
/// all at once, or nothing if the new file is invalid) and the TLS files; never returns.
async fn reload_on_hangup(
    running: &agent_registry::server::Running,
    load: &(dyn Fn() -> anyhow::Result<Config> + Sync),
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return std::future::pending().await;
    };
    while hangups.recv().await.is_some() {
        match load().and_then(|cfg| running.app.reload(&cfg).map_err(anyhow::Error::msg)) {
            Ok(restart) if restart.is_empty() => {
                tracing::info!("SIGHUP: configuration reloaded (mirror, upstreams, limits, auth)")
            }
            Ok(restart) => tracing::warn!(
                sections = ?restart,
                "SIGHUP: configuration reloaded; changes to these sections need a restart"
            ),
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "SIGHUP: the new configuration is invalid, keeping the previous one"
            ),
        }
        if !running.app.config.tls.enabled {
            continue;
        }
        match running.reload_tls() {
            Ok(()) => tracing::info!("SIGHUP: tls certificate reloaded"),
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: cannot reload tls, keeping the previous certificate"
            ),
        }
    }
    std::future::pending().await
}

/// Loads the config the way `serve` was told to: file, environment, then the flags.
fn load_for_serve(
    config: &ConfigArg,
    upstreams: &[String],
    listen: Option<SocketAddr>,
    data_dir: Option<&PathBuf>,
) -> anyhow::Result<Config> {
    let mut cfg = load(config)?;
    for spec in upstreams {
        cfg.apply_upstream_flag(spec)?;
    }
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if let Some(d) = data_dir {
        cfg.storage.data_dir = d.clone();
    }
    Ok(cfg)
}

async fn serve(
    cfg: Config,
    reload: &(dyn Fn() -> anyhow::Result<Config> + Sync),
) -> anyhow::Result<()> {
    init_logging(&cfg);
    let origin = cfg.origin.clone();
    let data = cfg.storage.data_dir.clone();
    let app = App::new(cfg).with_context(|| format!("opening storage in {}", data.display()))?;
    let running = agent_registry::server::Running::start(app.clone())
        .await
        .with_context(|| format!("starting the server on {}", app.config.server.listen))?;
    let scheme = if app.config.tls.enabled {
        "https"
    } else {
        "http"
    };
    // Before "listening", so it is in the log by the time the port is announced.
    if app.auth.has_identities() && app.auth.realm().is_empty() {
        tracing::warn!(
            "auth.realm is not set: the token endpoint URL in 401 challenges follows the \
             request's Host header, so a client can be sent to log in elsewhere; set \
             auth.realm to this registry's public URL (e.g. https://registry.example.com/token)"
        );
    }
    {
        let (rules, perms) = app.auth.all_grants();
        let mut grants = rules;
        grants.extend(perms);
        let loopback =
            app.config.server.hosted_writes == agent_registry::config::HostedWrites::Loopback;
        tracing::info!(
            "pushes: {}",
            agent_registry::auth::describe_push(&grants, loopback)
        );
    }
    tracing::info!(
        addr = %running.addr,
        config = %origin,
        data_dir = %data.display(),
        "agent-registry listening on {scheme}://{}",
        running.addr
    );
    if let Some(a) = running.admin_addr {
        tracing::info!(addr = %a, "admin listener (health, metrics, /admin) on http://{a}");
    }
    if !app.auth.has_identities() {
        tracing::info!(
            "no users or API tokens: serving as a pull-only mirror; add users under [auth] \
             (agent-registry hash-password makes the bcrypt hash), run agent-registry user \
             add NAME, or agent-registry token create --user NAME --scope 'agents/*:pull,push'"
        );
    }
    // The start-up lines are out before systemd (or a test) hears we are ready.
    agent_registry::logging::flush();
    systemd::notify("READY=1");
    tokio::select! {
        _ = shutdown_signal() => {},
        _ = reload_on_hangup(&running, reload) => {},
    }
    tracing::info!(
        drain_timeout = ?app.config.server.drain_timeout,
        "shutting down: draining in-flight requests"
    );
    systemd::notify("STOPPING=1");
    running.stop().await;
    Ok(())
}

/// The config (with `--data-dir` applied) and the data directory's auth store.
fn token_store(arg: &StoreArg) -> anyhow::Result<(Config, agent_registry::auth::store::Store)> {
    let mut cfg = load(&arg.config)?;
    if let Some(d) = &arg.data_dir {
        cfg.storage.data_dir = d.clone();
    }
    let dir = &cfg.storage.data_dir;
    let st = agent_registry::auth::store::Store::open(dir)
        .with_context(|| format!("opening the auth store in {}", dir.display()))?;
    Ok((cfg, st))
}

/// Warns on stderr when no rule or stored permission lets `user` push anywhere.
fn warn_unless_may_push(
    cfg: &Config,
    st: &agent_registry::auth::store::Store,
    user: &str,
    groups: &[String],
) {
    use agent_registry::auth::{push_patterns, rule_grants};
    let mut grants = rule_grants(&cfg.auth);
    grants.extend(st.permissions().unwrap_or_default());
    let patterns = push_patterns(&grants, user, groups);
    if patterns.is_empty() {
        eprintln!(
            "agent-registry: warning: no rule lets {user} push anywhere: add a rule under \
             [auth] in {} (repos = [\"agents/*\"], users = [\"{user}\"], actions = \
             [\"pull\", \"push\"]) or run `agent registry permission add 'agents/*' --user \
             {user} -p pull,push` as an admin",
            cfg.origin
        );
    } else {
        eprintln!("{user} may push to {}", patterns.join(", "));
    }
}

/// Groups of `user` in the config and in auth.db.
fn groups_of(cfg: &Config, st: &agent_registry::auth::store::Store, user: &str) -> Vec<String> {
    let mut g: Vec<String> = cfg
        .auth
        .users
        .iter()
        .filter(|u| u.name == user)
        .flat_map(|u| u.groups.clone())
        .collect();
    for u in st.users().unwrap_or_default() {
        if u.name == user {
            g.extend(u.groups);
        }
    }
    g
}

fn read_new_password(from_stdin: bool) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("stdin is not a terminal: give the password on stdin with --password-stdin");
    }
    let pw = agent_registry::cli::creds::prompt_hidden("Password: ")?;
    if agent_registry::cli::creds::prompt_hidden("Password again: ")? != pw {
        anyhow::bail!("the passwords differ");
    }
    Ok(pw)
}

fn user_command(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            store,
            name,
            password_stdin,
            groups,
        } => {
            let valid = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
            if !valid {
                anyhow::bail!(
                    "invalid user name {name:?}: use letters, digits and . _ - @ (at most 128)"
                );
            }
            if let Some(g) = groups.iter().find(|g| g.is_empty() || g.contains(',')) {
                anyhow::bail!("invalid group name {g:?}");
            }
            let (cfg, st) = token_store(&store)?;
            if cfg
                .auth
                .users
                .iter()
                .any(|u| u.name == name && u.password_hash.is_some())
            {
                anyhow::bail!(
                    "user {name} has a password in {} (auth.users), which wins: change it there",
                    cfg.origin
                );
            }
            let pw = read_new_password(password_stdin)?;
            if pw.is_empty() {
                anyhow::bail!("empty password");
            }
            let hash = agent_registry::auth::hash_password(&pw).map_err(anyhow::Error::msg)?;
            st.put_user(&name, &hash, &groups)?;
            audit_cli(
                &st,
                "user_added",
                format!("{name} groups={}", groups.join(",")),
            );
            println!(
                "user {name} saved in {} (groups: {}); a running server uses it within a second",
                cfg.storage.data_dir.join("auth.db").display(),
                if groups.is_empty() {
                    "-".to_string()
                } else {
                    groups.join(",")
                }
            );
            let all = groups_of(&cfg, &st, &name);
            warn_unless_may_push(&cfg, &st, &name, &all);
            Ok(())
        }
        UserCommand::List { store, json } => {
            let (_, st) = token_store(&store)?;
            let users = st.users()?;
            if json {
                let v: Vec<serde_json::Value> = users
                    .iter()
                    .map(|u| serde_json::json!({ "name": u.name, "groups": u.groups }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("{:<24} GROUPS", "USER");
            for u in users {
                println!("{:<24} {}", u.name, u.groups.join(","));
            }
            Ok(())
        }
        UserCommand::Remove { store, name } => {
            let (_, st) = token_store(&store)?;
            match st.remove_user(&name)? {
                true => {
                    audit_cli(&st, "user_removed", name.clone());
                    println!("removed user {name}");
                    Ok(())
                }
                false => anyhow::bail!("no user {name} in the data directory"),
            }
        }
    }
}

/// Records a token change made from the command line in the audit log.
fn audit_cli(st: &agent_registry::auth::store::Store, event: &str, detail: String) {
    use agent_registry::auth::store::{now_ms, AuditRecord};
    let record = AuditRecord {
        ts_ms: now_ms(),
        event: event.to_string(),
        user: std::env::var("USER").ok(),
        client: Some("agent-registry cli".into()),
        repo: None,
        detail: Some(detail),
    };
    if let Err(e) = st.append(&[], &[record]) {
        eprintln!("agent-registry: warning: could not write the audit log: {e}");
    }
}

fn token_command(command: TokenCommand) -> anyhow::Result<()> {
    use agent_registry::auth::{policy::parse_scope, store};
    match command {
        TokenCommand::Create {
            store,
            user,
            scopes,
            expires,
        } => {
            for s in &scopes {
                parse_scope(s).map_err(anyhow::Error::msg)?;
            }
            let expires = match expires {
                Some(e) => {
                    let d = agent_registry::config::parse_duration(&e)
                        .map_err(|p| anyhow::anyhow!("--expires: {p}"))?;
                    Some(store::now_secs() + d.as_secs())
                }
                None => None,
            };
            let (cfg, st) = token_store(&store)?;
            let (token, info) = st.create_token(&user, &scopes.join(" "), expires)?;
            audit_cli(
                &st,
                "token_created",
                format!("{} for {}", info.id, info.user),
            );
            eprintln!(
                "created {} for {} ({}), expires {}; the token is shown only now:",
                info.id,
                info.user,
                info.scopes,
                info.expires.map_or("never".into(), store::rfc3339)
            );
            println!("{token}");
            let groups = groups_of(&cfg, &st, &user);
            warn_unless_may_push(&cfg, &st, &user, &groups);
            Ok(())
        }
        TokenCommand::List { store, user, json } => {
            let (_, st) = token_store(&store)?;
            if json {
                let tokens = st.tokens(user.as_deref())?;
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            println!(
                "{:<18} {:<16} {:<10} {:<21} SCOPES",
                "ID", "USER", "STATE", "EXPIRES"
            );
            let now = store::now_secs();
            for t in st.tokens(user.as_deref())? {
                let state = match (t.revoked, t.expires) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= now => "expired",
                    _ => "active",
                };
                let exp = t.expires.map_or("never".into(), store::rfc3339);
                println!(
                    "{:<18} {:<16} {:<10} {:<21} {}",
                    t.id, t.user, state, exp, t.scopes
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { store, id } => {
            let (_, st) = token_store(&store)?;
            match st.revoke_token(&id)? {
                true => {
                    audit_cli(&st, "token_revoked", id.clone());
                    println!("revoked {id} (running servers stop accepting it within 10s)");
                    Ok(())
                }
                false => anyhow::bail!("no active token {id}"),
            }
        }
    }
}

fn hash_password() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\r', '\n']);
    if pw.is_empty() {
        anyhow::bail!("empty password on stdin");
    }
    println!(
        "{}",
        agent_registry::auth::hash_password(pw).map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// Runs `f` on a small runtime (the admin and verify commands).
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(f)
}

fn admin(
    config: &ConfigArg,
    url: &AdminArg,
    method: http::Method,
    path: &str,
) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let base = agent_registry::cli::server_admin::base_url(&cfg, url.url.as_deref());
    block_on(async {
        println!(
            "{}",
            agent_registry::cli::server_admin::call(&cfg, &base, method, path).await?
        );
        Ok(())
    })
}

fn verify(config: &ConfigArg, data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let dir = data_dir.unwrap_or(cfg.storage.data_dir);
    block_on(async {
        let report = agent_registry::cache::admin::verify(&dir)
            .await
            .with_context(|| format!("verifying {}", dir.display()))?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        match report.quarantined.len() {
            0 => Ok(()),
            n => anyhow::bail!("{n} objects did not match their digest and were quarantined"),
        }
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            upstreams,
        } => {
            let reload = || load_for_serve(&config, &upstreams, listen, data_dir.as_ref());
            reload().and_then(|cfg| {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .context("starting the runtime")?;
                let result = runtime.block_on(serve(cfg, &reload));
                // Connections still open after the drain deadline are cut here; blocking
                // tasks (file I/O) get a moment, but never hold up the exit.
                runtime.shutdown_timeout(std::time::Duration::from_secs(2));
                result
            })
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => load(&config).map(|c| {
            println!("config {}: ok", c.origin);
        }),
        Command::Config {
            command: ConfigCommand::Show { config },
        } => load(&config).map(|c| {
            print!("{}", c.to_toml_redacted());
        }),
        Command::Token { command } => token_command(command),
        Command::User { command } => user_command(command),
        Command::HashPassword => hash_password(),
        Command::Cache { command } => match command {
            CacheCommand::Stats { config, admin: a } => {
                admin(&config, &a, http::Method::GET, "/admin/cache/stats")
            }
            CacheCommand::Purge {
                config,
                admin: a,
                target,
            } => admin(
                &config,
                &a,
                http::Method::POST,
                &agent_registry::cli::server_admin::purge_path(&target),
            ),
            CacheCommand::Verify { config, data_dir } => verify(&config, data_dir),
        },
        Command::Gc {
            config,
            dry_run,
            admin: a,
        } => {
            let path = if dry_run {
                "/admin/gc?dry_run=1"
            } else {
                "/admin/gc"
            };
            admin(&config, &a, http::Method::POST, path)
        }
    };
    // Log lines still in the buffer go out before the last word.
    agent_registry::logging::flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-registry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
