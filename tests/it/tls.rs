//! HTTPS on the listener: HTTP/1.1 and h2 over TLS, curl and skopeo trusting a test CA,
//! client certificates (mTLS), and certificate reloads (on demand and by file polling)
//! that reach new connections while open ones keep working.
//!
//! Certificates are generated per test with rcgen: a CA, a server certificate for
//! 127.0.0.1 and localhost, and a client certificate, written as PEM into a tempdir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_registry::app::App;
use agent_registry::config::{Config, TlsConfig};
use agent_registry::server::Running;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::support::image;
use crate::support::server::TestServer;
use crate::support::tools::{self, run};

/// A CA with a server certificate (127.0.0.1, localhost) and a client certificate.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_cert: String,
    server_key: String,
    client_cert: CertificateDer<'static>,
    client_key: Vec<u8>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{name} test ca"));
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca.self_signed(&ca_key).expect("ca cert");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} leaf"));
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("leaf cert");
            (cert, key)
        };
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (server, server_key) = leaf(names, ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = leaf(
            vec!["agent.example".to_string()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client.der().clone(),
            client_key: client_key.serialize_der(),
        }
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir` (each by rename, as a
    /// deployment tool would) and returns the server's `[tls]` for them.
    fn install(&self, dir: &Path) -> TlsConfig {
        write_atomic(&dir.join("ca.pem"), &self.ca_pem);
        write_atomic(&dir.join("cert.pem"), &self.server_cert);
        write_atomic(&dir.join("key.pem"), &self.server_key);
        TlsConfig {
            enabled: true,
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client_ca_file: None,
            reload_interval: Duration::ZERO,
        }
    }

    /// A client config trusting only this CA, presenting this PKI's client certificate
    /// if `mtls`.
    fn client(&self, mtls: bool, alpn: &[&[u8]]) -> ClientConfig {
        client_config(self, mtls.then_some(self), alpn)
    }
}

/// A client config trusting only `trust`'s CA, presenting `identity`'s client certificate.
fn client_config(trust: &Pki, identity: Option<&Pki>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(trust.ca_der.clone()).expect("add test ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(id.client_key.clone()));
            builder
                .with_client_auth_cert(vec![id.client_cert.clone()], key)
                .expect("client cert")
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write pem");
    std::fs::rename(&tmp, path).expect("rename pem");
}

/// The embedded default with `tls`, on 127.0.0.1:0, hosted-only, data in `dir`.
fn config(dir: &Path, tls: TlsConfig) -> Config {
    let mut cfg = Config::embedded_default();
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.storage.data_dir = dir.join("data");
    cfg.mirror.default_upstream = None;
    cfg.tls = tls;
    cfg
}

/// A server on the test's runtime, for tests that need [`Running::reload_tls`].
async fn start(dir: &Path, tls: TlsConfig) -> Running {
    let app = App::new(config(dir, tls)).expect("open storage");
    Running::start(app).await.expect("start https server")
}

/// `GET https://127.0.0.1:PORT{path}` through hyper-rustls (a fresh pool, so a fresh
/// connection): the status and the HTTP version, or the error text.
async fn get(
    client_tls: ClientConfig,
    host: &str,
    path: &str,
    h2: bool,
) -> Result<(StatusCode, Version), String> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls)
        .https_only();
    let connector = match h2 {
        false => builder.enable_http1().build(),
        true => builder.enable_http2().build(),
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector);
    let uri = format!("https://{host}{path}");
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(uri.parse().expect("uri")),
    )
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| format!("{e:?}"))?;
    let (status, version) = (resp.status(), resp.version());
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, version))
}

/// An HTTP/1.1 connection held open by the test, to show it survives a reload.
struct Held {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    /// The certificate the server presented when this connection was made.
    server_cert: CertificateDer<'static>,
}

impl Held {
    async fn open(client_tls: ClientConfig, addr: std::net::SocketAddr) -> Held {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = connector.connect(name, tcp).await.expect("tls handshake");
        let server_cert = tls.get_ref().1.peer_certificates().expect("peer cert")[0].clone();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http1 handshake");
        tokio::spawn(conn);
        Held { send, server_cert }
    }

    async fn get(&mut self, path: &str) -> StatusCode {
        self.send.ready().await.expect("connection still open");
        let req = Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::new())
            .expect("request");
        let resp = self
            .send
            .send_request(req)
            .await
            .expect("request on held connection");
        let status = resp.status();
        resp.into_body().collect().await.expect("body");
        status
    }
}

/// Retries `get` until it succeeds or `within` passes; the last result.
async fn eventually_ok(
    client_tls: impl Fn() -> ClientConfig,
    host: &str,
    within: Duration,
) -> Result<(StatusCode, Version), String> {
    let deadline = Instant::now() + within;
    loop {
        let result = get(client_tls(), host, "/v2/", false).await;
        if result.is_ok() || Instant::now() >= deadline {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("a");
    let running = start(dir.path(), pki.install(dir.path())).await;
    let host = running.addr.to_string();

    let h1 = get(pki.client(false, &[]), &host, "/v2/", false).await;
    assert_eq!(h1, Ok((StatusCode::OK, Version::HTTP_11)));
    let h2 = get(pki.client(false, &[]), &host, "/v2/", true).await;
    assert_eq!(h2, Ok((StatusCode::OK, Version::HTTP_2)));

    // ALPN really picks the protocol: the server answers h2 when offered first, else http/1.1.
    for (offer, want) in [
        (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let tcp = tokio::net::TcpStream::connect(running.addr)
            .await
            .expect("connect");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client(false, offer)));
        let name = ServerName::try_from("localhost").expect("name");
        let tls = connector.connect(name, tcp).await.expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want));
    }

    // A client that does not trust the CA is refused; plain HTTP gets no answer.
    let stranger = Pki::new("stranger");
    let refused = get(stranger.client(false, &[]), &host, "/v2/", false).await;
    assert!(refused.is_err(), "{refused:?}");
    let plain = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{host}/v2/").parse().expect("uri");
    let plain = tokio::time::timeout(Duration::from_secs(15), plain.get(uri)).await;
    assert!(
        matches!(plain, Ok(Err(_))),
        "plain http over tls: {plain:?}"
    );
    // The failed handshakes did not stall the accept loop.
    let again = get(pki.client(false, &[]), &host, "/v2/", true).await;
    assert_eq!(again, Ok((StatusCode::OK, Version::HTTP_2)));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_block_other_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("a");
    let running = start(dir.path(), pki.install(dir.path())).await;
    // Connect and say nothing: the handshake waits for a ClientHello that never comes.
    let _silent = tokio::net::TcpStream::connect(running.addr)
        .await
        .expect("connect");
    let host = running.addr.to_string();
    let ok = get(pki.client(false, &[]), &host, "/v2/", false).await;
    assert_eq!(ok, Ok((StatusCode::OK, Version::HTTP_11)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("a");
    let mut tls = pki.install(dir.path());
    tls.client_ca_file = Some(dir.path().join("ca.pem"));
    let running = start(dir.path(), tls).await;
    let host = running.addr.to_string();

    let without = get(pki.client(false, &[]), &host, "/v2/", false).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let with = get(pki.client(true, &[]), &host, "/v2/", false).await;
    assert_eq!(with, Ok((StatusCode::OK, Version::HTTP_11)));
    let with = get(pki.client(true, &[]), &host, "/v2/", true).await;
    assert_eq!(with, Ok((StatusCode::OK, Version::HTTP_2)));

    // A client certificate from another CA is refused too.
    let other = Pki::new("other");
    let foreign = client_config(&pki, Some(&other), &[]);
    let foreign = get(foreign, &host, "/v2/", false).await;
    assert!(
        foreign.is_err(),
        "client certificate from another ca: {foreign:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_tls_switches_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (Pki::new("old"), Pki::new("new"));
    let running = start(dir.path(), old.install(dir.path())).await;
    let host = running.addr.to_string();

    let mut held = Held::open(old.client(false, &[]), running.addr).await;
    assert_eq!(held.get("/v2/").await, StatusCode::OK);

    new.install(dir.path());
    // reload_interval is 0: nothing changes until the reload.
    let before = get(old.client(false, &[]), &host, "/v2/", false).await;
    assert_eq!(before, Ok((StatusCode::OK, Version::HTTP_11)));
    running
        .reload_tls()
        .expect("reload with a valid new certificate");

    let fresh = get(new.client(false, &[]), &host, "/v2/", false).await;
    assert_eq!(fresh, Ok((StatusCode::OK, Version::HTTP_11)));
    let fresh = get(new.client(false, &[]), &host, "/v2/", true).await;
    assert_eq!(fresh, Ok((StatusCode::OK, Version::HTTP_2)));
    let stale = get(old.client(false, &[]), &host, "/v2/", false).await;
    assert!(stale.is_err(), "old ca after the reload: {stale:?}");

    // The connection opened before the reload still works, with the old certificate.
    assert_eq!(held.get("/v2/").await, StatusCode::OK);
    let held_new = Held::open(new.client(false, &[]), running.addr).await;
    assert_ne!(held.server_cert, held_new.server_cert);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_new_certificate_keeps_the_old_one_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("a");
    let running = start(dir.path(), pki.install(dir.path())).await;
    let host = running.addr.to_string();
    let cert = dir.path().join("cert.pem");

    write_atomic(&cert, "this is not a certificate\n");
    let err = running.reload_tls().expect_err("garbage certificate");
    assert_eq!(
        err,
        format!("tls.cert_file: {}: no certificate found", cert.display())
    );
    let still = get(pki.client(false, &[]), &host, "/v2/", false).await;
    assert_eq!(still, Ok((StatusCode::OK, Version::HTTP_11)));

    // A key that does not belong to the certificate is refused the same way.
    let other = Pki::new("other");
    write_atomic(&cert, &pki.server_cert);
    write_atomic(&dir.path().join("key.pem"), &other.server_key);
    let err = running.reload_tls().expect_err("mismatched key");
    let key = dir.path().join("key.pem");
    assert_eq!(
        err,
        format!(
            "tls.key_file: {}: does not match the certificate in {}",
            key.display(),
            cert.display()
        )
    );
    let still = get(pki.client(false, &[]), &host, "/v2/", true).await;
    assert_eq!(still, Ok((StatusCode::OK, Version::HTTP_2)));
    running.stop().await;

    // A server without tls has nothing to reload.
    let plain = start(&dir.path().join("plain"), TlsConfig::default()).await;
    assert_eq!(plain.reload_tls(), Err("tls is not enabled".to_string()));
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_are_reloaded_by_polling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (Pki::new("old"), Pki::new("new"));
    let mut tls = old.install(dir.path());
    tls.reload_interval = Duration::from_millis(100);
    let running = start(dir.path(), tls).await;
    let host = running.addr.to_string();
    let mut held = Held::open(old.client(false, &[]), running.addr).await;

    // A broken file is noticed, fails to load, and the old certificate keeps serving.
    write_atomic(&dir.path().join("cert.pem"), "garbage\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = get(old.client(false, &[]), &host, "/v2/", false).await;
    assert_eq!(still, Ok((StatusCode::OK, Version::HTTP_11)));

    new.install(dir.path());
    let switched = eventually_ok(|| new.client(false, &[]), &host, Duration::from_secs(10)).await;
    assert_eq!(switched, Ok((StatusCode::OK, Version::HTTP_11)));
    let stale = get(old.client(false, &[]), &host, "/v2/", false).await;
    assert!(stale.is_err(), "old ca after the poll reloaded: {stale:?}");
    assert_eq!(held.get("/v2/").await, StatusCode::OK);
    running.stop().await;
}

/// A TLS test server on its own thread (for the blocking tool tests) and its PKI dir.
fn tool_server(pki: &Pki) -> (TestServer, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("tempdir");
    let tls = pki.install(certs.path());
    let server = TestServer::start_with(|cfg| cfg.tls = tls);
    (server, certs)
}

#[test]
fn curl_with_cacert_speaks_h2_and_http1() {
    if !tools::require("curl") {
        return;
    }
    let pki = Pki::new("curl");
    let (server, certs) = tool_server(&pki);
    let ca = certs.path().join("ca.pem");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = run(tools::command("curl")
            .args([
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg(flag)
            .arg("--cacert")
            .arg(&ca)
            .arg(format!("https://{}/v2/", server.host())));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {version}")
        );
    }
    // Without the CA curl refuses the certificate.
    let out = tools::output(
        tools::command("curl")
            .args(["-sS", "-o", "/dev/null"])
            .arg(format!("https://{}/v2/", server.host())),
    );
    assert!(!out.status.success(), "curl trusted an unknown ca");
}

#[test]
fn skopeo_pushes_and_pulls_over_https_with_a_cert_dir() {
    if !tools::require("skopeo") {
        return;
    }
    let pki = Pki::new("skopeo");
    let (server, certs) = tool_server(&pki);
    let cert_dir = certs.path().join("skopeo");
    std::fs::create_dir(&cert_dir).expect("cert dir");
    std::fs::write(cert_dir.join("ca.crt"), &pki.ca_pem).expect("ca.crt");
    let work = tempfile::tempdir().expect("tempdir");
    let (src, out) = (work.path().join("src"), work.path().join("out"));
    let info = image::single_image(&src, "v1", 41, &[3000, 70_000]);
    let dest = format!("docker://{}/agents/tls:v1", server.host());

    let skopeo = || {
        let mut cmd = tools::command("skopeo");
        cmd.arg("--insecure-policy");
        cmd
    };
    run(skopeo()
        .args(["copy", "--dest-cert-dir"])
        .arg(&cert_dir)
        .arg(format!("oci:{}:v1", src.display()))
        .arg(&dest));
    run(skopeo()
        .args(["copy", "--src-cert-dir"])
        .arg(&cert_dir)
        .arg(&dest)
        .arg(format!("oci:{}:v1", out.display())));
    let desc = image::tagged_descriptor(&out, "v1");
    assert_eq!(desc["digest"], info.manifest_digest.as_str(), "{desc}");
    for (digest, _) in &info.blobs {
        assert!(
            image::read_blob(&out, digest) == image::read_blob(&src, digest),
            "blob {digest} differs after the https round trip"
        );
    }
    // Without the CA skopeo refuses the registry.
    let refused = tools::output(skopeo().args(["inspect", "--raw"]).arg(&dest));
    assert!(!refused.status.success(), "skopeo trusted an unknown ca");
}
