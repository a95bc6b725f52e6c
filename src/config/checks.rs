//! Checks of single upstream values (host names, urls, CA files, regexes) and of the
//! upstreams together (aliases), with error texts that say what to write instead.

use super::base::{ConfigError, EMBEDDED, REDACTED};
use super::merge::{join, one_line, Origins};
use super::upstream::UpstreamConfig;

/// An alias may not be another upstream's name or alias. The error goes to whichever
/// side a config file or flag set, so adding `[upstreams.hub]` blames that table rather
/// than docker.io's default alias `hub`.
pub(super) fn check_aliases(upstreams: &[UpstreamConfig], o: &Origins) -> Result<(), ConfigError> {
    let embedded = format!("config {EMBEDDED}");
    for (i, u) in upstreams.iter().enumerate() {
        for alias in &u.aliases {
            let other = upstreams
                .iter()
                .enumerate()
                .find(|(j, v)| *j != i && v.answers_to(alias));
            let Some((_, v)) = other else { continue };
            let (u_key, v_prefix) = (
                join(&join("upstreams", &u.name), "aliases"),
                join("upstreams", &v.name),
            );
            let by_name = v.name.eq_ignore_ascii_case(alias);
            let v_key = if by_name {
                v_prefix
            } else {
                join(&v_prefix, "aliases")
            };
            if o.origin(&u_key) == embedded && o.origin(&v_key) != embedded {
                let what = if by_name { "name" } else { "alias" };
                let problem = format!("{what} {alias:?} is also an alias of upstream {:?}", u.name);
                return o.check(&v_key, Err(problem));
            }
            let what = if by_name { "the name" } else { "an alias" };
            return o.check(
                &u_key,
                Err(format!(
                    "alias {alias:?} is also {what} of upstream {:?}",
                    v.name
                )),
            );
        }
    }
    Ok(())
}

/// A registry host name: lowercase DNS labels of `[a-z0-9-]`, optionally `:port`.
pub(super) fn host_name(s: &str) -> Result<(), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let port_ok = port.is_none_or(|p| {
        p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0)
    });
    match host.len() <= 253 && host.split('.').all(label) && port_ok {
        true => Ok(()),
        false => Err(format!(
            "invalid registry host name {s:?}: expected lowercase letters, digits, '.' and '-' with an optional :port, e.g. \"registry.example.com\" or \"localhost:5000\""
        )),
    }
}

/// Checks an upstream url and returns it as `scheme://authority` (lowercase, no slash).
pub(super) fn parse_url(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must be set, e.g. \"https://registry.example.com\"".into());
    }
    if s.contains('@') {
        // Do not echo it: the part before `@` is likely a password.
        return Err("must not contain credentials: use username and password (or token)".into());
    }
    let bad = |why: &str| format!("invalid url {s:?}: {why}");
    let expected = "expected scheme://host[:port], e.g. \"https://registry.example.com\"";
    let uri: http::Uri = s.parse().map_err(|_| bad(expected))?;
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("expected http:// or https://"));
    }
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| bad("missing host"))?;
    let port = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or("");
    if let Some(port) = port.strip_prefix(':') {
        let valid =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !valid {
            return Err(bad(&format!("invalid port {port:?}")));
        }
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "must not have a path or query (the registry API lives at /v2/)",
        ));
    }
    Ok(format!(
        "{scheme}://{}",
        authority.as_str().to_ascii_lowercase()
    ))
}

pub(super) fn readable_file(path: &std::path::Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(format!("{shown} is a directory, expected a PEM file")),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("cannot read {shown}: {e}")),
        Err(e) => Err(format!("cannot read {shown}: {e}")),
    }
}

pub(super) fn regex_problem(pattern: &str, e: &regex::Error) -> String {
    let why = match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map(str::to_string),
        _ => None,
    };
    let why = why.unwrap_or_else(|| one_line(&e.to_string()));
    format!("invalid regex {pattern:?}: {why}")
}

/// `NAME=https://user:pass@host` with the user info replaced, for error messages.
pub(super) fn redact_userinfo(spec: &str) -> String {
    let Some((head, url)) = spec.split_once("://") else {
        return spec.to_string();
    };
    let end = url.find('/').unwrap_or(url.len());
    match url[..end].rfind('@') {
        Some(at) => format!("{head}://{REDACTED}@{}", &url[at + 1..]),
        None => spec.to_string(),
    }
}
