//! `agent-registry cache stats|purge` and `agent-registry gc`: calls to the running
//! server's admin endpoints (so the server's in-memory cache index and its hosted-write
//! lock stay in charge), printed as pretty JSON.
//!
//! They authenticate as the server itself: whoever can read the data directory's token
//! signing key signs a short-lived admin token with it (`AGENT_REGISTRY_TOKEN`, an API
//! token of an admin, is used when the key is not readable).

use super::http::Client;
use crate::config::Config;
use anyhow::{anyhow, bail};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The admin base URL: `url` if given, else the configured listen address, with an
/// unspecified address (0.0.0.0, ::) replaced by loopback.
pub fn base_url(cfg: &Config, url: Option<&str>) -> String {
    if let Some(u) = url {
        return u.to_string();
    }
    let mut addr = cfg.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let scheme = if cfg.tls.enabled { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// Sends `method path` to the admin endpoint and returns the pretty-printed JSON answer.
pub async fn call(
    cfg: &Config,
    base: &str,
    method: http::Method,
    path: &str,
) -> anyhow::Result<String> {
    // A collection or purge of a large cache may take a while.
    let client =
        Client::new(base, Duration::from_secs(3600))?.with_authorization(authorization(cfg));
    let reply = client.send(method, path).await?;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    if !reply.status.is_success() {
        bail!("{base}{path}: {}: {}", reply.status, text.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{base}{path}: answer is not JSON: {e}"))?;
    Ok(serde_json::to_string_pretty(&v)?)
}

/// The query string for a purge target: a digest or a repository name.
pub fn purge_path(target: &str) -> String {
    let key = match target.parse::<crate::oci::Digest>() {
        Ok(_) => "digest",
        Err(_) => "repo",
    };
    let value: String = form_urlencoded::byte_serialize(target.as_bytes()).collect();
    format!("/admin/cache/purge?{key}={value}")
}

/// A bearer token for the admin API: signed with the server's own key when this process
/// can read it, else `AGENT_REGISTRY_TOKEN`.
fn authorization(cfg: &Config) -> Option<String> {
    let key = cfg.storage.data_dir.join("auth");
    if key.join("token-signing.key").exists() {
        if let Ok(keys) = crate::auth::jwt::Keys::load_or_create(&key) {
            return Some(format!(
                "Bearer {}",
                crate::auth::admin_token(&keys, &cfg.auth.service)
            ));
        }
    }
    std::env::var("AGENT_REGISTRY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"))
}
