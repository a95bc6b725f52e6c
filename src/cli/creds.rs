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

/// Replaces the credentials file atomically. The temporary file gets a fresh random
/// name and is created with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600, so neither a
/// file nor a symlink planted beside it can lend it another mode or another target.
fn write_all(all: &BTreeMap<String, String>) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = file()?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("json.tmp.{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    let written = f
        .write_all(&serde_json::to_vec_pretty(all)?)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
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
