//! The `agent` client CLI: argument parsing and the commands, each a thin call over `Client`.

pub mod http;

use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::time::Duration;

/// The registry used when neither --registry nor AGENT_REGISTRY_URL is given.
pub const DEFAULT_REGISTRY: &str = "http://localhost:5000";

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Client for agent-registry: push, pull and find AI agent images"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct Target {
    /// Registry URL.
    #[arg(long, env = "AGENT_REGISTRY_URL", default_value = DEFAULT_REGISTRY, global = true)]
    pub registry: String,
    /// How long to wait for the registry, e.g. 10s or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

#[derive(Subcommand)]
pub enum Command {
    /// Talk to a registry server.
    Registry {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: RegistryCommand,
    },
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Check that the registry answers the OCI API (GET /v2/).
    Ping,
    /// Show whether the registry is ready to serve (exit status 1 if not).
    Health {
        /// Print the detailed JSON report.
        #[arg(long)]
        detailed: bool,
    },
}

/// Runs the parsed command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Registry { target, command } => {
            let client = http::Client::new(&target.registry, target.timeout)?;
            match command {
                RegistryCommand::Ping => ping(&client, out).await,
                RegistryCommand::Health { detailed } => health(&client, detailed, out).await,
            }
        }
    }
}

async fn ping(client: &http::Client, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = client.get("/v2/").await?;
    // 401 still proves an OCI registry is there; it only wants credentials.
    let api = r.status.is_success() || r.status == ::http::StatusCode::UNAUTHORIZED;
    if !api {
        bail!(
            "registry {} answered GET /v2/ with HTTP {}: not an OCI registry endpoint",
            client.base(),
            r.status.as_u16()
        );
    }
    writeln!(
        out,
        "registry {} is reachable: HTTP {} in {} ms",
        client.base(),
        r.status.as_u16(),
        r.elapsed.as_millis()
    )?;
    Ok(())
}

async fn health(client: &http::Client, detailed: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let path = if detailed {
        "/health?detailed=1"
    } else {
        "/readyz"
    };
    let r = client.get(path).await?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| {
        anyhow!(
            "registry {} answered {path} with HTTP {} and no health report: {e}",
            client.base(),
            r.status.as_u16()
        )
    })?;
    if detailed {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let status = v["status"].as_str().unwrap_or("unknown");
        writeln!(out, "registry {}: {status}", client.base())?;
    }
    if !r.status.is_success() {
        bail!(
            "registry {} is not healthy (HTTP {})",
            client.base(),
            r.status.as_u16()
        );
    }
    Ok(())
}
