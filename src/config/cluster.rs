//! The `[cluster]` section: this node's URL, its peers (a list, or a DNS name
//! re-resolved), the shared secret that authenticates peer requests, and how long a
//! peer may take to start answering.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::base::{positive, ConfigError, Secret};
use super::merge::Origins;
use super::units::{format_duration, parse_duration};

/// Mirror nodes that share cold blobs: each digest has one owner among the members
/// (rendezvous hashing); the others fetch it from the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node as its peers reach it (`http://10.0.0.1:5000`), no trailing slash.
    pub self_url: Option<String>,
    /// The other nodes (may include `self_url`, which is skipped).
    pub peers: Vec<String>,
    /// `NAME:PORT`: the members are every address `NAME` resolves to, re-resolved
    /// every 10 s (a Kubernetes headless Service), as `http://ADDR:PORT`.
    pub peers_dns: Option<(String, u16)>,
    /// Shared by the nodes; set whenever peers are.
    pub secret: Option<Secret>,
    /// A peer that has not sent a response head within this time is skipped (and
    /// marked down briefly): the node fills from the upstream itself.
    pub peer_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            self_url: None,
            peers: Vec::new(),
            peers_dns: None,
            secret: None,
            peer_timeout: Duration::from_secs(5),
        }
    }
}

impl ClusterConfig {
    /// Whether this node has peers at all.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.peers_dns.is_some()
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    #[serde(rename = "self")]
    self_url: String,
    peers: Vec<String>,
    peers_dns: String,
    secret: Secret,
    peer_timeout: String,
}

/// `http://host:port` or `https://...`, without a path; returned without a trailing `/`.
fn node_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let uri: http::Uri = s.parse().map_err(|_| format!("invalid url {s:?}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.path() == "/" || uri.path().is_empty() => {
            Ok(s.to_string())
        }
        _ => Err(format!(
            "{s:?} is not an http:// or https:// url of a node (scheme, host and port only)"
        )),
    }
}

fn dns_name(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not NAME:PORT");
    let (name, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    match name.is_empty() || port == 0 {
        true => Err(bad()),
        false => Ok((name.to_string(), port)),
    }
}

pub(super) fn build_cluster(raw: RawCluster, o: &Origins) -> Result<ClusterConfig, ConfigError> {
    let self_url = match raw.self_url.trim() {
        "" => None,
        s => Some(o.check("cluster.self", node_url(s))?),
    };
    let peers = raw
        .peers
        .iter()
        .map(|p| o.check("cluster.peers", node_url(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let peers_dns = match raw.peers_dns.trim() {
        "" => None,
        s => Some(o.check("cluster.peers_dns", dns_name(s))?),
    };
    let peer_timeout = o.check(
        "cluster.peer_timeout",
        positive(parse_duration(&raw.peer_timeout)),
    )?;
    let secret = match raw.secret.expose().is_empty() {
        true => None,
        false => Some(raw.secret),
    };
    let c = ClusterConfig {
        self_url,
        peers,
        peers_dns,
        secret,
        peer_timeout,
    };
    if c.enabled() {
        if !c.peers.is_empty() && c.peers_dns.is_some() {
            o.check::<()>(
                "cluster.peers_dns",
                Err("set cluster.peers or cluster.peers_dns, not both".into()),
            )?;
        }
        if c.self_url.is_none() {
            o.check::<()>(
                "cluster.self",
                Err("required when peers are set: this node's url as its peers reach it".into()),
            )?;
        }
        if c.secret.is_none() {
            o.check::<()>(
                "cluster.secret",
                Err("required when peers are set: it authenticates peer requests".into()),
            )?;
        }
    }
    Ok(c)
}

pub(super) fn show_cluster(c: &ClusterConfig) -> RawCluster {
    RawCluster {
        self_url: c.self_url.clone().unwrap_or_default(),
        peers: c.peers.clone(),
        peers_dns: c
            .peers_dns
            .as_ref()
            .map(|(n, p)| format!("{n}:{p}"))
            .unwrap_or_default(),
        secret: c.secret.clone().unwrap_or_default(),
        peer_timeout: format_duration(c.peer_timeout),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str) -> Result<Config, String> {
        Config::from_toml_str(toml, "test.toml", &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn peers_need_self_and_a_secret() {
        let c = load("[cluster]\nself = \"http://10.0.0.1:5000/\"\npeers = [\"http://10.0.0.2:5000\"]\nsecret = \"s\"\n")
            .unwrap();
        assert_eq!(c.cluster.self_url.as_deref(), Some("http://10.0.0.1:5000"));
        assert_eq!(c.cluster.peers, ["http://10.0.0.2:5000"]);
        assert!(c.cluster.enabled());
        let e = load("[cluster]\nself = \"http://a:1\"\npeers = [\"http://b:1\"]\n").unwrap_err();
        assert!(
            e.contains("cluster.secret") && e.contains("required"),
            "{e}"
        );
        let e = load("[cluster]\npeers = [\"http://b:1\"]\nsecret = \"s\"\n").unwrap_err();
        assert!(e.contains("cluster.self"), "{e}");
        assert!(!load("").unwrap().cluster.enabled());
    }

    #[test]
    fn urls_and_dns_names_are_checked() {
        let e = load("[cluster]\nself = \"ftp://a:1\"\n").unwrap_err();
        assert!(e.contains("cluster.self"), "{e}");
        let e =
            load("[cluster]\nself = \"http://a:1\"\npeers = [\"http://b:1/v2\"]\nsecret = \"s\"\n")
                .unwrap_err();
        assert!(e.contains("cluster.peers"), "{e}");
        let e =
            load("[cluster]\nself = \"http://a:1\"\npeers_dns = \"registry\"\nsecret = \"s\"\n")
                .unwrap_err();
        assert!(e.contains("NAME:PORT"), "{e}");
        let c = load("[cluster]\nself = \"http://a:1\"\npeers_dns = \"registry.ns.svc:5000\"\nsecret = \"s\"\n")
            .unwrap();
        assert_eq!(c.cluster.peers_dns, Some(("registry.ns.svc".into(), 5000)));
        let e = load("[cluster]\nself = \"http://a:1\"\npeers = [\"http://b:1\"]\npeers_dns = \"r:1\"\nsecret = \"s\"\n")
            .unwrap_err();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn the_secret_is_redacted_in_the_effective_config() {
        let c = load(
            "[cluster]\nself = \"http://a:1\"\npeers = [\"http://b:1\"]\nsecret = \"hunter2\"\n",
        )
        .unwrap();
        let shown = c.to_toml_redacted();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[cluster]"), "{shown}");
    }
}
