//! The `[tls]` section: the typed [`TlsConfig`], and turning its PEM files into a rustls
//! `ServerConfig` (used once at load to prove the files work, and again by every reload
//! in `server/tls.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use super::base::{invalid, ConfigError};
use super::merge::Origins;
use super::units::{format_duration, parse_duration};

/// HTTPS on the listener, optionally requiring client certificates (mTLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM certificate chain, leaf first. Set when `enabled`.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC). Set when `enabled`.
    pub key_file: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate signed by it.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files' metadata is polled for a change; zero turns polling off
    /// (SIGHUP still reloads).
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            enabled: false,
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: None,
            reload_interval: Duration::from_secs(30),
        }
    }
}

/// A file of `[tls]` that cannot be used: `key` is the config key naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct TlsFileError {
    /// `tls.cert_file`, `tls.key_file` or `tls.client_ca_file`.
    pub key: &'static str,
    /// Starts with the file's path: `/etc/x.pem: no certificate found`.
    pub problem: String,
}

impl TlsConfig {
    /// The files whose change should trigger a reload.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert_file.as_path(), self.key_file.as_path()];
        files.extend(self.client_ca_file.as_deref());
        files
    }

    /// Reads the PEM files and builds the server's rustls config: ALPN `h2` and
    /// `http/1.1`, the ring provider, and client verification when `client_ca_file` is set.
    pub fn server_config(&self) -> Result<ServerConfig, TlsFileError> {
        let certs = read_certs(&self.cert_file, "tls.cert_file")?;
        let key = read_key(&self.key_file)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError {
                key: "tls.cert_file",
                problem: format!("tls setup: {e}"),
            })?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let problem = |p: String| TlsFileError {
                    key: "tls.client_ca_file",
                    problem: format!("{}: {p}", path.display()),
                };
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "tls.client_ca_file")? {
                    roots.add(cert).map_err(|e| problem(e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| problem(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            let problem = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "does not match the certificate in {}",
                    self.cert_file.display()
                ),
                other => other.to_string(),
            };
            TlsFileError {
                key: "tls.key_file",
                problem: format!("{}: {problem}", self.key_file.display()),
            }
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let problem = |p: String| TlsFileError {
        key,
        problem: format!("{}: {p}", path.display()),
    };
    let bytes = read(path).map_err(problem)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("invalid PEM: {e}")))?;
    match certs.is_empty() {
        true => Err(problem("no certificate found".into())),
        false => Ok(certs),
    }
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let problem = |p: String| TlsFileError {
        key: "tls.key_file",
        problem: format!("{}: {p}", path.display()),
    };
    let bytes = read(path).map_err(problem)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            problem("no private key found (expected PKCS#8, RSA or EC PEM)".into())
        }
        other => problem(format!("invalid PEM: {other}")),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err("is a directory, expected a PEM file".into()),
        _ => std::fs::read(path).map_err(|e| format!("cannot read: {e}")),
    }
}

// The file schema (`Serialize` renders the effective config).

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    enabled: bool,
    cert_file: String,
    key_file: String,
    client_ca_file: String,
    reload_interval: String,
}

/// The section as `config show` writes it.
pub(super) fn show_tls(t: &TlsConfig) -> RawTls {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    RawTls {
        enabled: t.enabled,
        cert_file: path(&t.cert_file),
        key_file: path(&t.key_file),
        client_ca_file: t.client_ca_file.as_deref().map(path).unwrap_or_default(),
        reload_interval: format_duration(t.reload_interval),
    }
}

/// Types and validates `[tls]`; when enabled, the files must load into a server config.
pub(super) fn build_tls(raw: RawTls, o: &Origins) -> Result<TlsConfig, ConfigError> {
    let set = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s));
    let tls = TlsConfig {
        enabled: raw.enabled,
        cert_file: set(&raw.cert_file).unwrap_or_default(),
        key_file: set(&raw.key_file).unwrap_or_default(),
        client_ca_file: set(&raw.client_ca_file),
        reload_interval: o.check("tls.reload_interval", parse_duration(&raw.reload_interval))?,
    };
    if !tls.enabled {
        return Ok(tls);
    }
    for (key, path) in [
        ("tls.cert_file", &tls.cert_file),
        ("tls.key_file", &tls.key_file),
    ] {
        if path.as_os_str().is_empty() {
            // Blame whoever turned TLS on: the empty path is usually the default's.
            let problem = "must be set when tls.enabled is true".to_string();
            return Err(invalid(&o.origin("tls.enabled"), key, problem));
        }
    }
    match tls.server_config() {
        Ok(_) => Ok(tls),
        Err(e) => o.check(e.key, Err(e.problem)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        super::super::tests::load_at(text, "/x.toml", env)
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca.self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
            write("ca.pem", ca.pem()).unwrap();
            write("cert.pem", cert.pem()).unwrap();
            write("key.pem", key.serialize_pem()).unwrap();
            write("other-key.pem", other.serialize_pem()).unwrap();
            write("garbage.pem", "not pem at all\n".into()).unwrap();
            Files { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn toml(&self, cert: &str, key: &str, ca: &str) -> String {
            let p = |n: &str| match n {
                "" => String::new(),
                n => self.path(n),
            };
            format!(
                "[tls]\nenabled = true\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
                p(cert),
                p(key),
                p(ca)
            )
        }
    }

    #[test]
    fn default_is_disabled() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.tls, TlsConfig::default());
        assert_eq!(Config::builtin().tls, TlsConfig::default());
    }

    #[test]
    fn valid_files_load_with_and_without_client_ca() {
        let f = Files::new();
        let c = load(&f.toml("cert.pem", "key.pem", ""), &[]).unwrap();
        assert!(c.tls.enabled);
        assert_eq!(c.tls.client_ca_file, None);
        let server = c.tls.server_config().unwrap();
        assert_eq!(
            server.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let c = load(&f.toml("cert.pem", "key.pem", "ca.pem"), &[]).unwrap();
        assert_eq!(c.tls.client_ca_file, Some(PathBuf::from(f.path("ca.pem"))));
        // What `config show` prints reads back the same.
        let back = Config::from_toml_str(&c.to_toml_redacted(), "shown", &|_| None).unwrap();
        assert_eq!(back.tls, c.tls);
    }

    #[test]
    fn bad_files_name_the_key_and_the_file() {
        let f = Files::new();
        let cases = [
            (
                ("garbage.pem", "key.pem", ""),
                format!(
                    "key tls.cert_file: {}: no certificate found",
                    f.path("garbage.pem")
                ),
            ),
            (
                ("key.pem", "key.pem", ""),
                format!(
                    "key tls.cert_file: {}: no certificate found",
                    f.path("key.pem")
                ),
            ),
            (
                ("cert.pem", "garbage.pem", ""),
                format!(
                    "key tls.key_file: {}: no private key found (expected PKCS#8, RSA or EC PEM)",
                    f.path("garbage.pem")
                ),
            ),
            (
                ("cert.pem", "other-key.pem", ""),
                format!(
                    "key tls.key_file: {}: does not match the certificate in {}",
                    f.path("other-key.pem"),
                    f.path("cert.pem")
                ),
            ),
            (
                ("cert.pem", "key.pem", "garbage.pem"),
                format!(
                    "key tls.client_ca_file: {}: no certificate found",
                    f.path("garbage.pem")
                ),
            ),
            (
                ("missing.pem", "key.pem", ""),
                format!(
                    "key tls.cert_file: {}: cannot read: No such file or directory (os error 2)",
                    f.path("missing.pem")
                ),
            ),
        ];
        for ((cert, key, ca), want) in cases {
            let got = load(&f.toml(cert, key, ca), &[]).unwrap_err();
            assert_eq!(got, format!("config /x.toml: {want}"));
        }
        let dir = format!(
            "[tls]\nenabled = true\ncert_file = {:?}\nkey_file = \"k\"\n",
            f.dir.path()
        );
        assert!(load(&dir, &[])
            .unwrap_err()
            .ends_with("is a directory, expected a PEM file"));
    }

    #[test]
    fn enabling_without_files_blames_whoever_enabled_it() {
        let env = [("AGENT_REGISTRY_TLS_ENABLED", "true")];
        assert_eq!(
            load("", &env).unwrap_err(),
            "environment AGENT_REGISTRY_TLS_ENABLED: key tls.cert_file: must be set when tls.enabled is true"
        );
        assert_eq!(
            load("tls.enabled = true", &[]).unwrap_err(),
            "config /x.toml: key tls.cert_file: must be set when tls.enabled is true"
        );
        assert_eq!(
            load("tls.reload_interval = \"5\"", &[]).unwrap_err(),
            "config /x.toml: key tls.reload_interval: invalid duration \"5\": add a unit (ms, s, m, h, d, w)"
        );
        // A disabled section is not checked beyond its types.
        assert!(load("tls.cert_file = \"/nonexistent.pem\"", &[]).is_ok());
    }

    #[test]
    fn env_overrides_reach_the_section() {
        let f = Files::new();
        let (cert, key) = (f.path("cert.pem"), f.path("key.pem"));
        let env = [
            ("AGENT_REGISTRY_TLS_ENABLED", "true"),
            ("AGENT_REGISTRY_TLS_CERT_FILE", cert.as_str()),
            ("AGENT_REGISTRY_TLS_KEY_FILE", key.as_str()),
            ("AGENT_REGISTRY_TLS_RELOAD_INTERVAL", "0s"),
        ];
        let c = load("", &env).unwrap();
        assert!(c.tls.enabled);
        assert_eq!(
            (c.tls.cert_file, c.tls.key_file),
            (PathBuf::from(cert), PathBuf::from(key))
        );
        assert_eq!(c.tls.reload_interval, Duration::ZERO);
    }
}
