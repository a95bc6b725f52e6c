//! Credentials of the `agent` CLI: `AGENT_REGISTRY_TOKEN` (an API token, sent as
//! Bearer) wins; otherwise what `agent login` kept for the registry in
//! `$AGENT_CONFIG_DIR/auth.json` (default `~/.config/agent/auth.json`, mode 0600).

use super::http::Client;
use super::Target;
use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

fn file() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("AGENT_CONFIG_DIR") {
        return Ok(PathBuf::from(dir).join("auth.json"));
    }
    let home = std::env::var("HOME").context("neither AGENT_CONFIG_DIR nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/agent/auth.json"))
}

/// registry URL -> base64(user:password), as Docker's config.json keeps it.
fn read_all() -> anyhow::Result<BTreeMap<String, String>> {
    let path = file()?;
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}: not a credentials file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_all(all: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let path = file()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(all)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn key(registry: &str) -> String {
    registry.trim_end_matches('/').to_string()
}

/// The `Authorization` header for `registry`, if any credentials are known.
pub fn authorization(registry: &str) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var("AGENT_REGISTRY_TOKEN") {
        if !t.is_empty() {
            return Ok(Some(format!("Bearer {t}")));
        }
    }
    Ok(read_all()?
        .get(&key(registry))
        .map(|b| format!("Basic {b}")))
}

pub async fn login(
    target: &Target,
    user: &str,
    password_stdin: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if !password_stdin {
        bail!("give the password on stdin with --password-stdin");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!("empty password on stdin");
    }
    let basic = B64.encode(format!("{user}:{password}"));
    let client = Client::new(&target.registry, target.timeout)?
        .with_authorization(Some(format!("Basic {basic}")));
    let r = client.get("/admin/whoami").await?;
    match r.status.as_u16() {
        200 => {}
        401 => bail!(
            "authentication failed: registry {} refused the credentials of {user}",
            client.base()
        ),
        429 => bail!("rate limit exceeded: too many failed logins, try again later"),
        s => bail!(
            "registry {} answered the login with HTTP {s}",
            client.base()
        ),
    }
    let mut all = read_all()?;
    all.insert(key(&target.registry), basic);
    write_all(&all)?;
    writeln!(out, "Login Succeeded: {user} at {}", client.base())?;
    Ok(())
}

pub fn logout(registry: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut all = read_all()?;
    match all.remove(&key(registry)) {
        Some(_) => {
            write_all(&all)?;
            writeln!(out, "Removed login credentials for {}", key(registry))?;
        }
        None => writeln!(out, "Not logged in to {}", key(registry))?,
    }
    Ok(())
}
