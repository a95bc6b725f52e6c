//! `agent-registry`: parse the command line, load and validate the config, serve; tells
//! systemd (`Type=notify`) when it is ready and when it stops.

use agent_registry::app::App;
use agent_registry::config::{process_env, Config, LogFormat};
use agent_registry::server::systemd;
use anyhow::Context;
use clap::{Parser, Subcommand};
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
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

/// Reloads the TLS files on every SIGHUP; never returns.
async fn reload_on_hangup(running: &agent_registry::server::Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return std::future::pending().await;
    };
    while hangups.recv().await.is_some() {
        if !running.app.config.tls.enabled {
            tracing::info!("SIGHUP: tls is not enabled, nothing to reload");
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

async fn serve(
    mut cfg: Config,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if let Some(d) = data_dir {
        cfg.storage.data_dir = d;
    }
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
    tracing::info!(
        addr = %running.addr,
        config = %origin,
        data_dir = %data.display(),
        "agent-registry listening on {scheme}://{}",
        running.addr
    );
    systemd::notify("READY=1");
    tokio::select! {
        _ = shutdown_signal() => {},
        _ = reload_on_hangup(&running) => {},
    }
    tracing::info!(
        drain_timeout = ?app.config.server.drain_timeout,
        "shutting down: draining in-flight requests"
    );
    systemd::notify("STOPPING=1");
    running.stop().await;
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
    let base = agent_registry::cli::admin::base_url(&cfg, url.url.as_deref());
    block_on(async {
        println!(
            "{}",
            agent_registry::cli::admin::call(&base, method, path).await?
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
        } => load(&config).and_then(|mut cfg| {
            for spec in &upstreams {
                cfg.apply_upstream_flag(spec)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let result = runtime.block_on(serve(cfg, listen, data_dir));
            // Connections still open after the drain deadline are cut here; blocking
            // tasks (file I/O) get a moment, but never hold up the exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            result
        }),
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
                &agent_registry::cli::admin::purge_path(&target),
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
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent-registry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
