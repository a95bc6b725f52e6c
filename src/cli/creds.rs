//! Credentials of the `agent` CLI, and `agent login`/`logout`.
//!
//! For an [`Endpoint`], first wins:
//! 1. the `auth` of the profile chosen with `--profile` (on its own host only);
//! 2. `AGENT_REGISTRY_TOKEN` (an API token, sent as `Bearer`);
//! 3. `DOCKER_USERNAME` and `DOCKER_PASSWORD` (HTTP Basic);
//! 4. the `auth` of the profile `default` (on its own host only);
//! 5. stored logins for the registry's `host[:port]`, in these files, each in the
//!    `auth.json` format docker and podman share (`auths` with `auth` = base64
//!    `user:password` or `identitytoken`, `credHelpers`, `credsStore`):
//!    `agent login`'s own file ([`login_file`]: `$AAC_HOME/auth.json`, or
//!    `$AGENT_CONFIG_DIR/auth.json` when that is set), `$REGISTRY_AUTH_FILE` (else
//!    `$XDG_RUNTIME_DIR/containers/auth.json` and `~/.config/containers/auth.json`),
//!    then `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`).
//!
//! Credential helpers are run as `docker-credential-NAME get` with the registry's host
//! on stdin; they answer `{"Username": ..., "Secret": ...}` (`<token>` as the user name
//! makes the secret an identity token, sent as `Bearer`).

use super::http::{Client, Credentials};
use super::profile::{aac_home, Endpoint, ProfileAuth};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Credentials and where they came from (for messages; never the secret).
#[derive(Clone)]
pub struct Resolved {
    pub credentials: Credentials,
    pub source: String,
}

fn from_profile(a: &ProfileAuth) -> Credentials {
    match a {
        ProfileAuth::Token(t) => Credentials::Bearer(t.clone()),
        ProfileAuth::Username { username, password } => Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        },
        ProfileAuth::OAuth2 {
            client_id,
            client_secret,
        } => Credentials::OAuth2 {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
        },
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The credentials for `ep` (see the module documentation for the order).
pub fn resolve(ep: &Endpoint) -> anyhow::Result<Resolved> {
    let profile_auth = ep
        .profile
        .as_ref()
        .and_then(|p| p.auth.as_ref().map(|a| (p.name.clone(), from_profile(a))));
    if ep.profile_from_flag {
        if let Some((name, c)) = profile_auth.clone() {
            return Ok(Resolved {
                credentials: c,
                source: format!("profile {name}"),
            });
        }
    }
    if let Some(t) = env("AGENT_REGISTRY_TOKEN") {
        return Ok(Resolved {
            credentials: Credentials::Bearer(t),
            source: "AGENT_REGISTRY_TOKEN".into(),
        });
    }
    if let (Some(u), Some(p)) = (env("DOCKER_USERNAME"), env("DOCKER_PASSWORD")) {
        return Ok(Resolved {
            credentials: Credentials::Basic {
                username: u,
                password: p,
            },
            source: "DOCKER_USERNAME/DOCKER_PASSWORD".into(),
        });
    }
    if let Some((name, c)) = profile_auth {
        return Ok(Resolved {
            credentials: c,
            source: format!("profile {name}"),
        });
    }
    for file in auth_files()? {
        if let Some(c) = from_file(&file, &ep.host)? {
            return Ok(Resolved {
                credentials: c,
                source: file.display().to_string(),
            });
        }
    }
    Ok(Resolved {
        credentials: Credentials::None,
        source: "none".into(),
    })
}

/// The file `agent login` writes: `$AGENT_CONFIG_DIR/auth.json` if that is set, else
/// `$AAC_HOME/auth.json` (`~/.aac/auth.json`).
pub fn login_file() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("AGENT_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("auth.json"));
    }
    Ok(aac_home()?.join("auth.json"))
}

/// Every file credentials are read from, in order.
pub fn auth_files() -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![login_file()?];
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    match std::env::var_os("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        Some(f) => files.push(PathBuf::from(f)),
        None => {
            if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").filter(|x| !x.is_empty()) {
                files.push(PathBuf::from(x).join("containers/auth.json"));
            }
            if let Some(h) = &home {
                files.push(h.join(".config/containers/auth.json"));
            }
        }
    }
    match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => files.push(PathBuf::from(d).join("config.json")),
        None => {
            if let Some(h) = &home {
                files.push(h.join(".docker/config.json"));
            }
        }
    }
    Ok(files)
}

/// `host[:port]` of an `auths` key (`https://index.docker.io/v1/`, `quay.io/ns`,
/// `localhost:5000`), Docker Hub's names folded into `docker.io`.
fn key_host(key: &str) -> String {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| anyhow!("{}: not a credentials file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The credentials `path` holds for `host`, if any.
fn from_file(path: &std::path::Path, host: &str) -> anyhow::Result<Option<Credentials>> {
    let Some(v) = read_json(path)? else {
        return Ok(None);
    };
    let want = key_host(host);
    let where_ = || path.display().to_string();
    if let Some(helper) = v["credHelpers"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| key_host(k) == want))
        .and_then(|(_, h)| h.as_str())
    {
        return helper_get(helper, host)
            .with_context(|| format!("{}: credHelpers.{host}", where_()))?
            .ok_or_else(|| {
                anyhow!(
                    "{}: credential helper docker-credential-{helper} has no credentials for {host}",
                    where_()
                )
            })
            .map(Some);
    }
    // An exact key first, then any key on the same host (podman allows host/namespace).
    if let Some(auths) = v["auths"].as_object() {
        let entry = auths.get(host).or_else(|| {
            auths
                .iter()
                .find(|(k, _)| key_host(k) == want)
                .map(|(_, e)| e)
        });
        if let Some(e) = entry {
            if let Some(t) = e["identitytoken"].as_str().filter(|t| !t.is_empty()) {
                return Ok(Some(Credentials::Bearer(t.to_string())));
            }
            if let Some(a) = e["auth"].as_str().filter(|a| !a.is_empty()) {
                let decoded = B64
                    .decode(a.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: auths.{host}.auth: not base64 of user:password",
                            where_()
                        )
                    })?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| {
                    anyhow!(
                        "{}: auths.{host}.auth: not base64 of user:password",
                        where_()
                    )
                })?;
                return Ok(Some(Credentials::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                }));
            }
        }
    }
    if let Some(store) = v["credsStore"].as_str().filter(|s| !s.is_empty()) {
        return helper_get(store, host).with_context(|| format!("{}: credsStore", where_()));
    }
    Ok(None)
}

/// `docker-credential-NAME get`: the server (`host`) on stdin, JSON on stdout.
/// `Ok(None)` when the helper has nothing for it.
fn helper_get(name: &str, host: &str) -> anyhow::Result<Option<Credentials>> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid credential helper name {name:?}");
    }
    let program = format!("docker-credential-{name}");
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its answer below.
        let _ = stdin.write_all(host.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let msg = format!(
            "{}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if msg.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!("{program} get failed ({}): {msg}", out.status);
    }
    let v: Value = serde_json::from_str(&stdout)
        .map_err(|e| anyhow!("{program} get: the answer is not JSON: {e}"))?;
    let user = v["Username"].as_str().unwrap_or_default();
    let Some(secret) = v["Secret"].as_str().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(match user {
        "<token>" => Credentials::Bearer(secret.to_string()),
        u => Credentials::Basic {
            username: u.to_string(),
            password: secret.to_string(),
        },
    }))
}

/// Replaces `path` atomically. The temporary file gets a fresh random name and is
/// created with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600, so neither a file nor a
/// symlink planted beside it can lend it another mode or another target.
fn write_file(path: &std::path::Path, v: &Value) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
        .write_all(&serde_json::to_vec_pretty(v)?)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// The login file as JSON with an `auths` map (an older flat `{URL: base64}` file
/// becomes `auths` keyed by host).
fn read_login_file() -> anyhow::Result<(PathBuf, Value)> {
    let path = login_file()?;
    let mut v = read_json(&path)?.unwrap_or_else(|| json!({}));
    if !v.is_object() {
        bail!("{}: not a credentials file", path.display());
    }
    let legacy = v.get("auths").is_none()
        && v.as_object()
            .is_some_and(|m| !m.is_empty() && m.values().all(Value::is_string));
    if legacy {
        let mut auths = serde_json::Map::new();
        for (k, b) in v.as_object().into_iter().flatten() {
            auths.insert(
                super::profile::host_of(k.trim_end_matches('/')),
                json!({ "auth": b }),
            );
        }
        v = json!({ "auths": auths });
    }
    if !v["auths"].is_object() {
        v["auths"] = json!({});
    }
    Ok((path, v))
}

/// Reads a line from the terminal with echo off.
pub fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    eprint!("{prompt}");
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("turning echo off")?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn login(
    ep: &Endpoint,
    timeout: Duration,
    user: Option<&str>,
    password_stdin: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let terminal = std::io::stdin().is_terminal();
    let user = match user {
        Some(u) => u.to_string(),
        None if terminal && !password_stdin => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the user name")?;
            line.trim().to_string()
        }
        None => bail!("give the user name with --username (-u)"),
    };
    if user.is_empty() || user.contains(':') {
        bail!("invalid user name {user:?}");
    }
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if terminal {
        prompt_hidden("Password: ")?
    } else {
        bail!("stdin is not a terminal: give the password on stdin with --password-stdin");
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let creds = Credentials::Basic {
        username: user.clone(),
        password: password.clone(),
    };
    let client = Client::new(&ep.url, timeout)?.with_credentials(creds);
    let mut r = client.get("/admin/whoami").await?;
    if r.status == http::StatusCode::NOT_FOUND {
        // Not this project's server: any OCI registry answers /v2/.
        r = client.get("/v2/").await?;
    }
    if !r.status.is_success() {
        return Err(client.status_error(&r, "login"));
    }
    let (path, mut v) = read_login_file()?;
    v["auths"][&ep.host] = json!({ "auth": B64.encode(format!("{user}:{password}")) });
    write_file(&path, &v)?;
    writeln!(
        out,
        "Login Succeeded: {user} at {} (saved in {})",
        ep.url,
        path.display()
    )?;
    Ok(())
}

pub fn logout(ep: &Endpoint, out: &mut dyn Write) -> anyhow::Result<()> {
    let (path, mut v) = read_login_file()?;
    let removed = v["auths"]
        .as_object_mut()
        .and_then(|m| m.remove(&ep.host))
        .is_some();
    if removed {
        write_file(&path, &v)?;
        writeln!(out, "Removed login credentials for {}", ep.host)?;
    } else {
        writeln!(out, "Not logged in to {}", ep.host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_keys_match_by_host() {
        assert_eq!(key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(key_host("quay.io/ns"), "quay.io");
        assert_eq!(key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(key_host("LOCALHOST:5000"), "localhost:5000");
    }

    #[test]
    fn reads_auth_and_identitytoken_entries() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        let b = B64.encode("ann:pw:with:colons");
        std::fs::write(
            &f,
            format!(
                r#"{{"auths":{{"http://a.example:5000/":{{"auth":"{b}"}},"b.example":{{"identitytoken":"idt"}}}}}}"#
            ),
        )
        .unwrap();
        match from_file(&f, "a.example:5000").unwrap() {
            Some(Credentials::Basic { username, password }) => {
                assert_eq!(
                    (username.as_str(), password.as_str()),
                    ("ann", "pw:with:colons")
                )
            }
            _ => panic!("no basic credentials"),
        }
        assert!(matches!(
            from_file(&f, "b.example").unwrap(),
            Some(Credentials::Bearer(t)) if t == "idt"
        ));
        assert!(from_file(&f, "c.example").unwrap().is_none());
        assert!(from_file(&dir.path().join("none.json"), "a")
            .unwrap()
            .is_none());
    }
}
