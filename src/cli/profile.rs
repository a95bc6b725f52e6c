//! Which registry a command talks to, and as whom: the profiles of
//! `$AAC_HOME/config.yaml` (default `~/.aac/config.yaml`), the flags `--profile` and
//! `--registry`, and the environment.
//!
//! ```yaml
//! registries:
//!   default:
//!     url: "https://myregistry.com"
//!     auth: { type: token, token: "${AGENT_REGISTRY_TOKEN}" }
//!   production:
//!     url: prod.registry.com          # a bare host[:port] is https (http on loopback)
//!     insecure: false                 # true: http for a bare host:port
//!     auth: { type: oauth2, client_id: "${ID}", client_secret: "${SECRET}" }
//!   development:
//!     url: "https://dev.registry.com"
//!     auth: { type: username, username: "${DEV_USERNAME}", password: "${DEV_PASSWORD}" }
//!     signing:                        # agent push --sign / agent pull --verify-signature
//!       key: "${HOME}/keys/cosign.key"      # default for --sign's --key
//!       public_keys: [keys/cosign.pub]      # default for --verify-signature's --key
//!     scan: { command: "trivy image --quiet --input {image} --format {format}" }
//! ```
//!
//! Relative `signing` paths are relative to the directory of config.yaml.
//! `scan.command` is the scanner `agent push --security-scan` runs (see
//! [`super::scanning`] for its placeholders).
//!
//! Precedence, first wins. URL: `--registry`, the profile named by `--profile`,
//! `AGENT_REGISTRY_URL`, the profile `default`, `http://localhost:5000`. Credentials
//! (see [`super::creds`]): those of the profile named by `--profile`,
//! `AGENT_REGISTRY_TOKEN`, `DOCKER_USERNAME`/`DOCKER_PASSWORD`, those of the profile
//! `default`, then the stored logins (`agent login`, `podman login`, `docker login`).
//! A profile's credentials are only used while the URL is the profile's own host.

use anyhow::{anyhow, bail, Context};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The registry used when no flag, environment variable or profile names one.
pub const DEFAULT_REGISTRY: &str = "http://localhost:5000";

/// `$AAC_HOME`, else `~/.aac`: the client's configuration, logins and image store.
pub fn aac_home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("AAC_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither AAC_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".aac"))
}

/// How a profile authenticates (`auth.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileAuth {
    /// `type: token`: an API token, sent as `Bearer`.
    Token(String),
    /// `type: username`: HTTP Basic.
    Username { username: String, password: String },
    /// `type: oauth2`: the client-credentials grant against the registry's `/token`.
    OAuth2 {
        client_id: String,
        client_secret: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub url: Option<String>,
    pub insecure: bool,
    pub auth: Option<ProfileAuth>,
    pub prometheus_url: Option<String>,
    /// `scan.command`: the vulnerability scanner of `agent push --security-scan`.
    pub scan_command: Option<String>,
    pub signing: Signing,
}

/// A profile's `signing` section: the keys `agent push --sign` and
/// `agent pull --verify-signature` use when no `--key` is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signing {
    /// The private key to sign with (PEM; password from `COSIGN_PASSWORD`).
    pub key: Option<String>,
    /// The public keys a signature must verify with (any one of them).
    pub public_keys: Vec<String>,
}

/// The parsed config file; a profile's `${VAR}`s are expanded when it is used.
pub struct ConfigFile {
    pub path: PathBuf,
    raw: BTreeMap<String, Value>,
}

impl ConfigFile {
    /// `$AAC_HOME/config.yaml`; `None` when there is no such file.
    pub fn load() -> anyhow::Result<Option<ConfigFile>> {
        let path = aac_home()?.join("config.yaml");
        match std::fs::read_to_string(&path) {
            Ok(text) => ConfigFile::parse(&path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn parse(path: &Path, text: &str) -> anyhow::Result<ConfigFile> {
        let err = |key: &str, msg: String| anyhow!("{}: {key}: {msg}", path.display());
        let doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| anyhow!("{}: not valid YAML: {e}", path.display()))?;
        let mut raw = BTreeMap::new();
        match doc {
            Value::Null => {}
            Value::Mapping(top) => match top.get("registries") {
                None | Some(Value::Null) => {}
                Some(Value::Mapping(m)) => {
                    for (k, v) in m {
                        let Some(name) = k.as_str() else {
                            return Err(err("registries", "profile names must be strings".into()));
                        };
                        raw.insert(name.to_string(), v.clone());
                    }
                }
                Some(_) => return Err(err("registries", "expected a map of profiles".into())),
            },
            _ => {
                return Err(anyhow!(
                    "{}: expected a map with a `registries` key",
                    path.display()
                ))
            }
        }
        let file = ConfigFile {
            path: path.to_path_buf(),
            raw,
        };
        // Shape errors show at once, whichever profile is used; unset variables only
        // matter in the profile in use.
        for name in file.raw.keys() {
            file.profile_with(name, &|_| Some(String::new()))?;
        }
        Ok(file)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.raw.keys().map(String::as_str)
    }

    /// Profile `name` with its `${VAR}`s expanded from the environment; `Ok(None)` if
    /// there is no such profile.
    pub fn profile(&self, name: &str) -> anyhow::Result<Option<Profile>> {
        if !self.raw.contains_key(name) {
            return Ok(None);
        }
        self.profile_with(name, &|v| std::env::var(v).ok())
            .map(Some)
    }

    fn profile_with(
        &self,
        name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Profile> {
        let file = self.path.display();
        let at = format!("registries.{name}");
        let err = |key: &str, msg: &str| anyhow!("{file}: {key}: {msg}");
        let Some(v) = self.raw.get(name) else {
            return Err(err(&at, "no such profile"));
        };
        let map = match v {
            Value::Mapping(m) => m,
            _ => return Err(err(&at, "expected a map with url and auth")),
        };
        let string = |key: &str, v: &Value| -> anyhow::Result<String> {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(err(key, "expected a string")),
            };
            expand(&s, env).map_err(|m| err(key, &m))
        };
        let mut p = Profile {
            name: name.to_string(),
            url: None,
            insecure: false,
            auth: None,
            prometheus_url: None,
            signing: Signing::default(),
            scan_command: None,
        };
        for (k, v) in map {
            let k = k.as_str().unwrap_or("?");
            let key = format!("{at}.{k}");
            match k {
                "url" => {
                    let u = string(&key, v)?;
                    // Checked here so the error names the key; variables may make it empty.
                    if !u.is_empty() {
                        normalize_url(&u, false).map_err(|e| err(&key, &e.to_string()))?;
                    }
                    p.url = Some(u).filter(|u| !u.is_empty());
                }
                "insecure" => {
                    p.insecure = v
                        .as_bool()
                        .ok_or_else(|| err(&key, "expected true or false"))?
                }
                "prometheus_url" => p.prometheus_url = Some(string(&key, v)?),
                "auth" => p.auth = auth(&key, v, &string, &err)?,
                "signing" => p.signing = signing(&key, v, &self.path, &string, &err)?,
                "scan" => p.scan_command = scan_command(&key, v, &string, &err)?,
                _ => {
                    return Err(err(
                        &key,
                        "unknown key (expected url, auth, insecure, prometheus_url, scan, signing)",
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// A profile's `signing` section; relative paths are taken from the config file's directory.
fn signing(
    at: &str,
    v: &Value,
    file: &Path,
    string: &dyn Fn(&str, &Value) -> anyhow::Result<String>,
    err: &dyn Fn(&str, &str) -> anyhow::Error,
) -> anyhow::Result<Signing> {
    let map = match v {
        Value::Null => return Ok(Signing::default()),
        Value::Mapping(m) => m,
        _ => return Err(err(at, "expected a map with key and public_keys")),
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    let path = |s: String| -> String {
        match s.is_empty() || Path::new(&s).is_absolute() {
            true => s,
            false => dir.join(s).display().to_string(),
        }
    };
    let mut out = Signing::default();
    for (k, v) in map {
        let k = k.as_str().unwrap_or("?");
        let key = format!("{at}.{k}");
        match (k, v) {
            ("key", v) => out.key = Some(path(string(&key, v)?)).filter(|s| !s.is_empty()),
            ("public_keys", Value::Sequence(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let p = path(string(&format!("{key}[{i}]"), item)?);
                    if !p.is_empty() {
                        out.public_keys.push(p);
                    }
                }
            }
            ("public_keys", _) => return Err(err(&key, "expected a list of files")),
            _ => return Err(err(&key, "unknown key (expected key, public_keys)")),
        }
    }
    Ok(out)
}

/// `scan: { command: "..." }`.
fn scan_command(
    at: &str,
    v: &Value,
    string: &dyn Fn(&str, &Value) -> anyhow::Result<String>,
    err: &dyn Fn(&str, &str) -> anyhow::Error,
) -> anyhow::Result<Option<String>> {
    let map = match v {
        Value::Null => return Ok(None),
        Value::Mapping(m) => m,
        _ => return Err(err(at, "expected a map with command")),
    };
    let mut command = None;
    for (k, v) in map {
        let k = k.as_str().unwrap_or("?");
        let key = format!("{at}.{k}");
        match k {
            "command" => command = Some(string(&key, v)?).filter(|c| !c.trim().is_empty()),
            _ => return Err(err(&key, "unknown key (expected command)")),
        }
    }
    Ok(command)
}

fn auth(
    at: &str,
    v: &Value,
    string: &dyn Fn(&str, &Value) -> anyhow::Result<String>,
    err: &dyn Fn(&str, &str) -> anyhow::Error,
) -> anyhow::Result<Option<ProfileAuth>> {
    let map = match v {
        Value::Null => return Ok(None),
        Value::Mapping(m) => m,
        _ => return Err(err(at, "expected a map with type and its settings")),
    };
    let mut fields = BTreeMap::new();
    for (k, v) in map {
        let k = k.as_str().unwrap_or("?").to_string();
        let key = format!("{at}.{k}");
        fields.insert(k, (string(&key, v)?, key));
    }
    let Some((kind, kind_key)) = fields.remove("type") else {
        return Err(err(
            &format!("{at}.type"),
            "missing (token, username or oauth2)",
        ));
    };
    let mut take = |k: &str| -> anyhow::Result<String> {
        match fields.remove(k) {
            Some((v, _)) => Ok(v),
            None => Err(err(
                &format!("{at}.{k}"),
                &format!("missing (auth type {kind} needs it)"),
            )),
        }
    };
    let a = match kind.as_str() {
        "token" => ProfileAuth::Token(take("token")?),
        "username" | "basic" => ProfileAuth::Username {
            username: take("username")?,
            password: take("password")?,
        },
        "oauth2" => ProfileAuth::OAuth2 {
            client_id: take("client_id")?,
            client_secret: take("client_secret")?,
        },
        other => {
            return Err(err(
                &kind_key,
                &format!("unknown auth type {other:?} (expected token, username or oauth2)"),
            ))
        }
    };
    if let Some((_, key)) = fields.into_values().next() {
        return Err(err(&key, &format!("unknown key for auth type {kind}")));
    }
    Ok(Some(a))
}

/// Expands `${VAR}` from `env` (`$$` is a literal `$`); an unset variable is an error.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let var = &r[..end];
            let valid = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("invalid variable name {var:?}"));
            }
            let value = env(var).ok_or_else(|| format!("environment variable {var} is not set"))?;
            out.push_str(&value);
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `host` (no port, IPv6 without brackets) is this machine.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.to_ascii_lowercase().ends_with(".localhost")
        || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]` from a URL or a bare `host[:port]`: a bare host gets `https`,
/// or `http` when it is loopback or `insecure`. A path other than `/` is refused.
pub fn normalize_url(s: &str, insecure: bool) -> anyhow::Result<String> {
    let s = s.trim();
    let full = if s.contains("://") {
        s.to_string()
    } else {
        let host = s.split('/').next().unwrap_or(s);
        let bare = match host.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
            _ => host,
        };
        let scheme = if insecure || is_loopback(bare) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{s}")
    };
    let bad = || {
        anyhow!("invalid registry URL {s:?}: expected host[:port], http://host[:port] or https://host[:port]")
    };
    let uri: http::Uri = full.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http") | Some("https"), Some(a)) if uri.host().is_some_and(|h| !h.is_empty()) => {
            if a.as_str().contains('@') {
                bail!("invalid registry URL {s:?}: put credentials in a profile or `agent login`, not in the URL");
            }
            if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                bail!("invalid registry URL {s:?}: a registry URL has no path");
            }
            Ok(format!(
                "{}://{}",
                uri.scheme_str().unwrap_or("https"),
                a.as_str().to_ascii_lowercase()
            ))
        }
        _ => Err(bad()),
    }
}

/// `host[:port]` of a normalized URL: the key credentials are stored under.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

/// Where a command talks to and what it knows about it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub url: String,
    /// `host[:port]`.
    pub host: String,
    /// Where the URL came from: `--registry`, `AGENT_REGISTRY_URL`, `profile NAME`, `default`.
    pub url_source: String,
    /// The profile whose credentials apply, if any, and whether `--profile` chose it.
    pub profile: Option<Profile>,
    pub profile_from_flag: bool,
}

/// Resolves the flags, the environment and the profiles into an endpoint (see the
/// module documentation for the order).
pub fn select(profile_flag: Option<&str>, registry_flag: Option<&str>) -> anyhow::Result<Endpoint> {
    select_with(
        profile_flag,
        registry_flag,
        std::env::var("AGENT_REGISTRY_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .as_deref(),
        ConfigFile::load()?.as_ref(),
    )
}

pub fn select_with(
    profile_flag: Option<&str>,
    registry_flag: Option<&str>,
    env_url: Option<&str>,
    file: Option<&ConfigFile>,
) -> anyhow::Result<Endpoint> {
    let (profile, from_flag) = match (profile_flag, file) {
        (Some(name), Some(f)) => match f.profile(name)? {
            Some(p) => (Some(p), true),
            None => bail!(
                "{}: no profile {name:?} under registries (profiles: {})",
                f.path.display(),
                f.names().collect::<Vec<_>>().join(", ")
            ),
        },
        (Some(name), None) => bail!(
            "no profile {name:?}: {} does not exist",
            aac_home()?.join("config.yaml").display()
        ),
        (None, Some(f)) => (f.profile("default")?, false),
        (None, None) => (None, false),
    };
    let insecure = profile.as_ref().is_some_and(|p| p.insecure);
    let profile_url = profile.as_ref().and_then(|p| p.url.clone());
    let pname = profile.as_ref().map(|p| p.name.clone()).unwrap_or_default();
    let (raw, source) = match (registry_flag, from_flag, env_url, &profile_url) {
        (Some(r), ..) => (r.to_string(), "--registry".to_string()),
        (None, true, _, Some(u)) => (u.clone(), format!("profile {pname}")),
        (None, _, Some(e), _) => (e.to_string(), "AGENT_REGISTRY_URL".to_string()),
        (None, _, None, Some(u)) => (u.clone(), format!("profile {pname}")),
        _ => (DEFAULT_REGISTRY.to_string(), "default".to_string()),
    };
    let url = normalize_url(&raw, insecure).map_err(|e| anyhow!("{e} (from {source})"))?;
    let host = host_of(&url);
    // A profile's credentials belong to its own host only.
    let profile = profile.filter(|p| {
        p.url
            .as_deref()
            .and_then(|u| normalize_url(u, p.insecure).ok())
            .is_none_or(|u| host_of(&u) == host)
    });
    Ok(Endpoint {
        url,
        host,
        url_source: source,
        profile_from_flag: from_flag && profile.is_some(),
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(v: &str) -> Option<String> {
        match v {
            "TOKEN" => Some("s3cret".into()),
            "HOST" => Some("reg.example.com".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_names_the_unset_one() {
        assert_eq!(expand("a${TOKEN}b", &env).unwrap(), "as3cretb");
        assert_eq!(expand("$$x$y", &env).unwrap(), "$x$y");
        assert_eq!(
            expand("${NOPE}", &env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(expand("${TOKEN", &env).is_err());
        assert!(expand("${1X}", &env).is_err());
    }

    #[test]
    fn bare_hosts_get_https_unless_loopback_or_insecure() {
        let n = |s, i| normalize_url(s, i).unwrap();
        assert_eq!(n("reg.example.com", false), "https://reg.example.com");
        assert_eq!(
            n("reg.example.com:5000", true),
            "http://reg.example.com:5000"
        );
        assert_eq!(n("localhost:5000", false), "http://localhost:5000");
        assert_eq!(n("127.0.0.1:5000", false), "http://127.0.0.1:5000");
        assert_eq!(n("[::1]:5000", false), "http://[::1]:5000");
        assert_eq!(
            n("http://Reg.example.com/", false),
            "http://reg.example.com"
        );
        assert!(normalize_url("not a url", false).is_err());
        assert!(normalize_url("ftp://x", false).is_err());
        assert!(normalize_url("https://x/v2/", false).is_err());
        assert!(normalize_url("https://u:p@x", false).is_err());
        assert_eq!(
            host_of("https://reg.example.com:443"),
            "reg.example.com:443"
        );
    }

    #[test]
    fn precedence_flag_env_profile_default() {
        let f = ConfigFile::parse(
            Path::new("/c.yaml"),
            "registries:\n  default:\n    url: d.example.com\n    auth: {type: token, token: x}\n  prod:\n    url: p.example.com\n",
        )
        .unwrap();
        let s = |p, r, e| select_with(p, r, e, Some(&f)).unwrap();
        assert_eq!(s(None, None, None).url, "https://d.example.com");
        assert!(s(None, None, None).profile.is_some());
        assert_eq!(
            s(None, None, Some("e.example.com")).url,
            "https://e.example.com"
        );
        // The default profile's credentials stay with its host.
        assert!(s(None, None, Some("e.example.com")).profile.is_none());
        assert_eq!(
            s(Some("prod"), None, Some("e.example.com")).url,
            "https://p.example.com"
        );
        assert_eq!(
            s(Some("prod"), Some("localhost:1"), None).url,
            "http://localhost:1"
        );
        assert_eq!(
            select_with(None, None, None, None).unwrap().url,
            DEFAULT_REGISTRY
        );
        let e = select_with(Some("nope"), None, None, Some(&f)).unwrap_err();
        assert!(e.to_string().contains("no profile \"nope\""), "{e}");
    }

    #[test]
    fn signing_paths_are_taken_from_the_config_directory() {
        let f = ConfigFile::parse(
            Path::new("/h/config.yaml"),
            "registries:\n  p:\n    signing:\n      key: k/cosign.key\n      public_keys: [a.pub, /etc/b.pub]\n",
        )
        .unwrap();
        let p = f.profile("p").unwrap().unwrap();
        assert_eq!(p.signing.key.as_deref(), Some("/h/k/cosign.key"));
        assert_eq!(p.signing.public_keys, ["/h/a.pub", "/etc/b.pub"]);
        let e = |t: &str| {
            ConfigFile::parse(Path::new("/h/config.yaml"), t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e("registries:\n  p:\n    signing: {public_keys: a.pub}\n")
            .starts_with("/h/config.yaml: registries.p.signing.public_keys: expected a list"),);
        assert!(e("registries:\n  p:\n    signing: {keys: [a]}\n")
            .starts_with("/h/config.yaml: registries.p.signing.keys: unknown key"));
    }

    #[test]
    fn scan_command_is_read_and_checked() {
        let f = ConfigFile::parse(
            Path::new("/c.yaml"),
            "registries:\n  default:\n    scan: {command: 'trivy image --input {image} --format {format}'}\n",
        )
        .unwrap();
        assert_eq!(
            f.profile("default")
                .unwrap()
                .unwrap()
                .scan_command
                .as_deref(),
            Some("trivy image --input {image} --format {format}")
        );
        let e = ConfigFile::parse(
            Path::new("/c.yaml"),
            "registries:\n  p:\n    scan: {cmd: x}\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(
            e,
            "/c.yaml: registries.p.scan.cmd: unknown key (expected command)"
        );
    }

    #[test]
    fn config_errors_name_the_key_and_the_file() {
        let e = |t: &str| {
            ConfigFile::parse(Path::new("/h/config.yaml"), t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            e("registries:\n  p:\n    auth: {type: magic}\n"),
            "/h/config.yaml: registries.p.auth.type: unknown auth type \"magic\" (expected token, username or oauth2)"
        );
        assert!(e("registries:\n  p:\n    urll: x\n")
            .starts_with("/h/config.yaml: registries.p.urll: unknown key"));
        assert!(
            e("registries:\n  p:\n    auth: {type: username, username: u}\n")
                .starts_with("/h/config.yaml: registries.p.auth.password: missing")
        );
        assert!(e("registries:\n  p:\n    url: 'not a url'\n")
            .starts_with("/h/config.yaml: registries.p.url: invalid registry URL"));
        assert!(e("registries: [1]\n").starts_with("/h/config.yaml: registries: expected a map"));
        // An unset variable only matters for the profile in use.
        let f = ConfigFile::parse(
            Path::new("/h/config.yaml"),
            "registries:\n  p:\n    auth: {type: token, token: '${SURELY_UNSET_VAR_X}'}\n",
        )
        .unwrap();
        assert_eq!(
            f.profile("p").unwrap_err().to_string(),
            "/h/config.yaml: registries.p.auth.token: environment variable SURELY_UNSET_VAR_X is not set"
        );
    }
}
