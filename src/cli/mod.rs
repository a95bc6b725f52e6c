//! The `agent` client CLI: argument parsing and the commands, each a thin call over `Client`.

pub mod admin;
pub mod creds;
pub mod http;
pub mod images;
pub mod monitor;
pub mod policy;
pub mod profile;
pub mod scanning;
pub mod server_admin;
pub mod signing;
pub mod transfer;

use anyhow::{anyhow, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::time::Duration;

pub use profile::DEFAULT_REGISTRY;

#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about = "Client for agent-registry: push, pull and find AI agent images",
    after_help = "Exit status: 0 success, 1 error, 2 usage error.\n\
                  Registry: --registry, else the profile of --profile, else AGENT_REGISTRY_URL, \
                  else the profile `default` of $AAC_HOME/config.yaml (~/.aac/config.yaml), \
                  else http://localhost:5000."
)]
pub struct Cli {
    #[command(flatten)]
    pub target: Target,
    #[command(subcommand)]
    pub command: Command,
}

/// Which registry, as whom, and how patiently: accepted by every command.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Registry URL or bare host[:port] (https, or http on loopback or an insecure profile).
    #[arg(long, global = true)]
    pub registry: Option<String>,
    /// Profile under `registries:` in $AAC_HOME/config.yaml (default ~/.aac/config.yaml).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// How long to wait for each attempt, e.g. 10s or 1m.
    #[arg(long, default_value = "10s", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,
    /// Retries after connection errors, 5xx and 429 (exponential backoff with jitter).
    #[arg(long, default_value_t = 3, global = true)]
    pub retries: u32,
}

impl Target {
    /// The registry the flags, the environment and the profiles select.
    pub fn endpoint(&self) -> anyhow::Result<profile::Endpoint> {
        profile::select(self.profile.as_deref(), self.registry.as_deref())
    }

    pub fn retry(&self) -> http::Retry {
        http::Retry {
            retries: self.retries,
            ..http::Retry::default()
        }
    }

    /// A client for the selected registry with the credentials found for it.
    pub fn client(&self) -> anyhow::Result<http::Client> {
        http::Client::for_endpoint(&self.endpoint()?, self.timeout, self.retry())
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

#[derive(Subcommand)]
pub enum Command {
    /// Talk to a registry server.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Log in to a registry: check the credentials and keep them (in auth.json format)
    /// for later commands.
    Login {
        /// User name (asked for on a terminal when missing).
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// Read the password (or an API token) from stdin; without it a terminal is asked.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the credentials `agent login` kept for a registry.
    Logout,
    /// Push a local image (or every tag of a name) to the registry.
    Push(transfer::PushArgs),
    /// Pull an image from the registry into the local store.
    Pull(transfer::PullArgs),
    /// Find hosted agent images by name, tag, capability, author, date and size.
    Search {
        #[command(flatten)]
        args: admin::SearchArgs,
    },
    // Local images (src/cli/images.rs): build, images, load, save, tag, rmi, image prune.
    #[command(flatten)]
    Local(images::LocalCommand),
    /// Signing keys for `agent push --sign` (cosign-compatible).
    Key {
        #[command(subcommand)]
        command: signing::KeyCommand,
    },
    /// Print a shell completion script: agent completion bash > /etc/bash_completion.d/agent
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Check that the registry answers the OCI API (GET /v2/).
    Ping,
    /// Show whether the registry is ready to serve (exit status 1 if not); `degraded`
    /// (exit status 0) names the upstreams that are down, rate-limited or unreachable.
    Health {
        /// Print the detailed JSON report.
        #[arg(long)]
        detailed: bool,
    },
    /// Print the registry's Prometheus metrics (GET /metrics), counts over a period, or
    /// the answer of a PromQL query to Prometheus.
    Metrics(monitor::MetricsArgs),
    /// The server's recent log records, oldest first (admin).
    Logs(monitor::LogsArgs),
    /// Check the credentials in use and show who they are.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Grant and revoke access to repositories (admin).
    Permission {
        #[command(subcommand)]
        command: admin::PermissionCommand,
    },
    /// Show or set a repository's visibility, public or private (admin).
    Visibility {
        /// Repository (a tag is ignored).
        repo: String,
        /// public or private; without it the current visibility is shown.
        visibility: Option<String>,
    },
    /// Inspect images in the registry.
    Image {
        #[command(subcommand)]
        command: transfer::RemoteImageCommand,
    },
    /// Requests recorded by the registry (admin).
    AccessLogs(admin::LogArgs),
    /// Logins, failures, token and permission changes, denied requests (admin).
    Audit(admin::LogArgs),
    /// Pull policies the registry enforces: vulnerability threshold, signatures (admin).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// The registry's configuration (admin).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Fill mirrored images into the registry's cache: every manifest and blob (admin).
    /// Prints one line per image as it is done; exit status 1 if any failed.
    Preheat(admin::PreheatArgs),
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Authenticate and print the identity (exit status 1 when the credentials fail).
    Test,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration, secrets redacted.
    Show,
}

/// Runs the parsed command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let target = cli.target;
    match cli.command {
        Command::Registry {
            command:
                RegistryCommand::Image {
                    command:
                        transfer::RemoteImageCommand::Info {
                            image,
                            platform,
                            json,
                        },
                },
        } => transfer::info(&target, &image, platform.as_deref(), json, out).await,
        Command::Registry {
            command:
                RegistryCommand::Image {
                    command: transfer::RemoteImageCommand::Signatures { image, keys, json },
                },
        } => transfer::signatures(&target, &image, &keys, json, out).await,
        Command::Registry {
            command:
                RegistryCommand::Image {
                    command: transfer::RemoteImageCommand::ScanResults { image, json },
                },
        } => scanning::scan_results(&target, &image, json, out).await,
        Command::Registry {
            command: RegistryCommand::Preheat(args),
        } => {
            // One image may take long: each request gets at least an hour.
            let timeout = target.timeout.max(std::time::Duration::from_secs(3600));
            let client = http::Client::for_endpoint(&target.endpoint()?, timeout, target.retry())?;
            admin::preheat(&client, args, out).await
        }
        Command::Registry { command } => {
            let client = target.client()?;
            match command {
                RegistryCommand::Ping => ping(&client, out).await,
                RegistryCommand::Health { detailed } => health(&client, detailed, out).await,
                RegistryCommand::Metrics(args) => {
                    monitor::metrics(&client, &target.endpoint()?, target.timeout, args, out).await
                }
                RegistryCommand::Logs(args) => monitor::logs(&client, args, out).await,
                RegistryCommand::Auth {
                    command: AuthCommand::Test,
                } => admin::auth_test(&client, out).await,
                RegistryCommand::Permission { command } => {
                    admin::permission(&client, command, out).await
                }
                RegistryCommand::Visibility { repo, visibility } => {
                    admin::visibility(&client, &repo, visibility.as_deref(), out).await
                }
                RegistryCommand::AccessLogs(args) => {
                    admin::logs(&client, "access-logs", args, out).await
                }
                RegistryCommand::Image { .. } | RegistryCommand::Preheat(_) => {
                    bail!("internal error: image commands and preheat are routed above")
                }
                RegistryCommand::Audit(args) => admin::logs(&client, "audit", args, out).await,
                RegistryCommand::Config {
                    command: ConfigCommand::Show,
                } => admin::config_show(&client, out).await,
                RegistryCommand::Policy { command } => policy::run(&client, command, out).await,
            }
        }
        Command::Login {
            username,
            password_stdin,
        } => {
            let ep = target.endpoint()?;
            creds::login(
                &ep,
                target.timeout,
                target.retry(),
                username.as_deref(),
                password_stdin,
                out,
            )
            .await
        }
        Command::Logout => creds::logout(&target.endpoint()?, out),
        Command::Search { args } => admin::search(&target.client()?, args, out).await,
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "agent", out);
            Ok(())
        }
        Command::Key { command } => signing::key(command, out),
        Command::Push(a) => transfer::push(&target, a, out).await,
        Command::Pull(a) => transfer::pull(&target, a, out).await,
        Command::Local(command) => {
            // A base image missing from the store is pulled through the registry first.
            if let images::LocalCommand::Build(a) = &command {
                transfer::pull_missing_base(&target, &a.dir).await?;
            }
            images::run(command, out)
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
    let path = "/health?detailed=1";
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
        let troubled = unwell_upstreams(&v);
        match (status, troubled.is_empty()) {
            ("ready", false) => writeln!(
                out,
                "registry {}: degraded: {}",
                client.base(),
                troubled.join("; ")
            )?,
            _ => writeln!(out, "registry {}: {status}", client.base())?,
        }
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

/// The upstreams of a detailed health report that are not healthy or did not answer
/// the probe, each as `upstream NAME STATE: ERROR`.
fn unwell_upstreams(report: &serde_json::Value) -> Vec<String> {
    let Some(upstreams) = report["upstreams"].as_array() else {
        return Vec::new();
    };
    upstreams
        .iter()
        .filter_map(|u| {
            let name = u["name"].as_str().unwrap_or("?");
            let state = u["state"].as_str().unwrap_or("healthy");
            let reachable = u["reachable"].as_bool().unwrap_or(true);
            let what = match (state, reachable) {
                ("healthy", true) => return None,
                ("healthy", false) => "unreachable".to_string(),
                ("rate_limited", _) => "rate-limited".to_string(),
                ("open", _) => "down".to_string(),
                ("half_open", _) => "down (probing)".to_string(),
                (other, _) => other.to_string(),
            };
            let until = u["retry_at"]
                .as_str()
                .map(|t| format!(" until {t}"))
                .unwrap_or_default();
            let error = u["last_error"]
                .as_str()
                .or(u["error"].as_str())
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            Some(format!("upstream {name} {what}{until}{error}"))
        })
        .collect()
}

/// The lines of `GET /metrics`, all of them or those of family `name`.
async fn fetch_metrics(client: &http::Client, name: Option<&str>) -> anyhow::Result<Vec<String>> {
    let r = client.get("/metrics").await?;
    if !r.status.is_success() {
        bail!(
            "registry {} answered GET /metrics with HTTP {}",
            client.base(),
            r.status.as_u16()
        );
    }
    let text = String::from_utf8_lossy(&r.body);
    let Some(name) = name else {
        return Ok(text.lines().map(str::to_string).collect());
    };
    let lines: Vec<String> = text
        .lines()
        .filter(|l| in_family(l, name))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        bail!(
            "registry {} exports no metric {name} (a metric appears once it has a value)",
            client.base()
        );
    }
    Ok(lines)
}

/// True for the `# HELP`/`# TYPE` lines and the samples of metric family `name`
/// (a histogram's samples end in `_bucket`, `_sum`, `_count`).
fn in_family(line: &str, name: &str) -> bool {
    let sample = match line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
    {
        Some(rest) => return rest.split(' ').next() == Some(name),
        None => line,
    };
    let Some(rest) = sample.strip_prefix(name) else {
        return false;
    };
    let rest = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| rest.strip_prefix(s))
        .unwrap_or(rest);
    rest.starts_with('{') || rest.starts_with(' ')
}

#[cfg(test)]
mod tests {
    use super::in_family;

    #[test]
    fn metric_family_lines() {
        let n = "agent_registry_request_duration_seconds";
        for (line, expected) in [
            ("# HELP agent_registry_request_duration_seconds Time", true),
            (
                "# TYPE agent_registry_request_duration_seconds histogram",
                true,
            ),
            (
                "agent_registry_request_duration_seconds_bucket{le=\"1\"} 3",
                true,
            ),
            (
                "agent_registry_request_duration_seconds_sum{route=\"blob\"} 0.5",
                true,
            ),
            ("agent_registry_request_duration_seconds_count 2", true),
            ("agent_registry_request_duration_seconds_other 2", false),
            ("# TYPE agent_registry_requests_total counter", false),
            ("agent_registry_requests_total{route=\"blob\"} 1", false),
        ] {
            assert_eq!(in_family(line, n), expected, "{line}");
        }
    }
}
