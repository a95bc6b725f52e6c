//! The connector of one upstream: TCP (connect timeout, nodelay) and rustls with the
//! webpki roots plus the PEM CAs of `ca_file`, or no verification at all for labs that
//! set `insecure_skip_verify`. ALPN offers h2 and http/1.1; plain http:// works too.

use super::error::UpstreamError;
use crate::config::UpstreamConfig;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

pub(crate) type Connector = HttpsConnector<HttpConnector>;

pub(crate) fn connector(cfg: &UpstreamConfig) -> Result<Connector, UpstreamError> {
    let problem = |problem: String| UpstreamError::Config {
        upstream: cfg.name.clone(),
        problem,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(format!("tls setup: {e}")))?;
    let tls = if cfg.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            let shown = path.display();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| problem(format!("ca_file {shown}: {e}")))?;
            let mut added = 0;
            for cert in certs {
                let cert = cert.map_err(|e| problem(format!("ca_file {shown}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| problem(format!("ca_file {shown}: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(problem(format!(
                    "ca_file {shown}: no PEM certificates found"
                )));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };

    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(cfg.connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp))
}

/// FOR LABS ONLY (`insecure_skip_verify = true`): accepts any certificate for any name,
/// so anyone on the path can impersonate the upstream. Handshake signatures are still
/// checked, which proves only that the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_config_errors() {
        let dir = std::env::temp_dir().join(format!("upstream-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let mut cfg = UpstreamConfig::new("lab", "https://lab.example");
        cfg.ca_file = Some(empty);
        let msg = connector(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("upstream lab: ca_file") && msg.contains("no PEM certificates"),
            "{msg}"
        );
        cfg.ca_file = Some(dir.join("missing.pem"));
        assert!(connector(&cfg).is_err());
        cfg.ca_file = None;
        cfg.insecure_skip_verify = true;
        assert!(connector(&cfg).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
