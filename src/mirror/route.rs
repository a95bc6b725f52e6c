//! Which upstream serves a repository name: containerd's `?ns=`, a path prefix naming an
//! upstream (`/v2/docker.io/library/x/...`), the `Host` header (optional), or the default
//! upstream for plain names (Docker's `registry-mirrors`). Configured hosted prefixes
//! are never proxied. Only configured upstreams are ever contacted: an unknown `ns` is an
//! error, never a host to dial.

use super::Mirror;
use crate::error::{Error, Result};
use crate::oci::{ErrorCode, RepoName};
use crate::upstream::Upstream;
use std::sync::Arc;

/// A proxied repository: the upstream and the repository name on the upstream's side.
#[derive(Clone)]
pub struct Proxy {
    pub upstream: Arc<Upstream>,
    pub repo: String,
    /// The `ns` the client sent, echoed in `OCI-Namespace`.
    pub ns: Option<String>,
    /// Chosen only because the name is plain and this is the default upstream; a
    /// repository hosted here under the same name takes precedence.
    pub via_default: bool,
}

pub enum Target {
    Hosted(RepoName),
    Proxy(Proxy),
}

impl Mirror {
    /// Decides where `name` lives. `ns` is containerd's query parameter, `host` the Host header.
    pub fn resolve(&self, name: &RepoName, ns: Option<&str>, host: Option<&str>) -> Result<Target> {
        let n = name.as_str();
        if let Some(ns) = ns {
            let up = self.by_name.get(ns).ok_or_else(|| {
                Error::not_found(
                    ErrorCode::NameUnknown,
                    format!("namespace {ns:?} is not a configured upstream"),
                )
            })?;
            // containerd with `override_path = true` sends both the path prefix and `ns`
            // (`/v2/docker.io/library/x/...?ns=docker.io`): the prefix is dropped when it
            // names the same upstream (or an alias of it); a registry host naming another
            // upstream is an error.
            let repo = match n.split_once('/') {
                Some((first, rest)) => match self.by_name.get(first) {
                    Some(named) if Arc::ptr_eq(named, up) => rest,
                    // A host-like first segment (Docker's rule: a `.`, a `:` or
                    // `localhost`) names a registry; any other is part of the repository.
                    Some(named) if first.contains(['.', ':']) || first == "localhost" => {
                        return Err(Error::not_found(
                            ErrorCode::NameUnknown,
                            format!(
                                "the path names upstream {} but namespace {ns:?} is upstream {}",
                                named.name(),
                                up.name()
                            ),
                        ))
                    }
                    _ => n,
                },
                None => n,
            };
            return Ok(Target::Proxy(proxy(up, repo, Some(ns.to_string()))));
        }
        if let Some((first, rest)) = n.split_once('/') {
            if let Some(up) = self.by_name.get(first) {
                return Ok(Target::Proxy(proxy(up, rest, None)));
            }
        }
        if self
            .hosted_prefixes
            .iter()
            .any(|p| n.starts_with(p.as_str()))
        {
            return Ok(Target::Hosted(name.clone()));
        }
        if self.route_by_host {
            let host = host.map(|h| {
                h.rsplit_once(':')
                    .map_or(h, |(a, _)| a)
                    .to_ascii_lowercase()
            });
            if let Some(up) = host.as_deref().and_then(|h| self.by_name.get(h)) {
                return Ok(Target::Proxy(proxy(up, n, None)));
            }
        }
        match &self.default {
            Some(up) => Ok(Target::Proxy(Proxy {
                via_default: true,
                ..proxy(up, n, None)
            })),
            None => Ok(Target::Hosted(name.clone())),
        }
    }
}

fn proxy(up: &Arc<Upstream>, repo: &str, ns: Option<String>) -> Proxy {
    let repo = if up.config().library_prefix && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo.to_string()
    };
    Proxy {
        upstream: up.clone(),
        repo,
        ns,
        via_default: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn mirror(default: Option<&str>, by_host: bool) -> Mirror {
        let mut cfg = Config::embedded_default();
        cfg.mirror.default_upstream = default.map(str::to_string);
        cfg.mirror.route_by_host = by_host;
        Mirror::new(&cfg).expect("mirror")
    }

    /// (upstream, upstream repo) or "hosted:<name>" for a request.
    fn check(m: &Mirror, name: &str, ns: Option<&str>, host: Option<&str>, expected: &str) {
        let n = RepoName::parse(name).expect("name");
        let got = match m.resolve(&n, ns, host) {
            Ok(Target::Hosted(h)) => format!("hosted:{h}"),
            Ok(Target::Proxy(p)) => format!("{} {}", p.upstream.name(), p.repo),
            Err(e) => format!("error:{e}"),
        };
        assert_eq!(got, expected, "{name} ns={ns:?} host={host:?}");
    }

    #[test]
    fn routes_names_to_upstreams() {
        let m = mirror(Some("docker.io"), false);
        check(&m, "alpine", None, None, "docker.io library/alpine");
        check(&m, "bitnami/redis", None, None, "docker.io bitnami/redis");
        check(
            &m,
            "library/alpine",
            Some("docker.io"),
            None,
            "docker.io library/alpine",
        );
        check(&m, "org/app", Some("ghcr.io"), None, "ghcr.io org/app");
        check(&m, "ghcr.io/org/app", None, None, "ghcr.io org/app");
        check(
            &m,
            "docker.io/alpine",
            None,
            None,
            "docker.io library/alpine",
        );
        check(&m, "quay.io/coreos/etcd", None, None, "quay.io coreos/etcd");
        check(
            &m,
            "agents/summarizer",
            None,
            None,
            "hosted:agents/summarizer",
        );
        // Aliases route like names.
        check(
            &m,
            "hub/library/alpine",
            None,
            None,
            "docker.io library/alpine",
        );
        // containerd's override_path sends the prefix and ns together: they must agree.
        check(
            &m,
            "docker.io/library/alpine",
            Some("docker.io"),
            None,
            "docker.io library/alpine",
        );
        check(
            &m,
            "hub/library/alpine",
            Some("docker.io"),
            None,
            "docker.io library/alpine",
        );
        // An alias that is no host name stays part of the name on the upstream.
        check(&m, "hub/app", Some("ghcr.io"), None, "ghcr.io hub/app");
        check(
            &m,
            "ghcr.io/org/app",
            Some("docker.io"),
            None,
            "error:the path names upstream ghcr.io but namespace \"docker.io\" is upstream docker.io",
        );
        let e = "error:namespace \"evil.example.com\" is not a configured upstream";
        check(&m, "x/y", Some("evil.example.com"), None, e);
        // Host routing is off unless configured.
        check(&m, "org/app", None, Some("ghcr.io"), "docker.io org/app");
    }

    #[test]
    fn without_default_plain_names_are_hosted_and_host_routing_is_opt_in() {
        let m = mirror(None, true);
        check(&m, "team/app", None, None, "hosted:team/app");
        check(&m, "org/app", None, Some("ghcr.io:443"), "ghcr.io org/app");
        check(
            &m,
            "org/app",
            None,
            Some("unknown.example"),
            "hosted:org/app",
        );
    }
}
