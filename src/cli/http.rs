//! The CLI's HTTP client: plain HTTP or HTTPS (rustls with the webpki roots), with a timeout.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

pub struct Client {
    base: String,
    timeout: Duration,
    inner: HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<Bytes>,
    >,
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Client {
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri = base
            .parse()
            .with_context(|| format!("invalid registry URL {base:?}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.host().is_some() => {}
            _ => {
                return Err(anyhow!(
                "invalid registry URL {base:?}: expected http://host[:port] or https://host[:port]"
            ))
            }
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Client {
            base,
            timeout,
            inner: HyperClient::builder(TokioExecutor::new()).build(https),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `path`; connection failures and timeouts become "failed to connect to registry".
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.send(http::Method::GET, path).await
    }

    /// Sends `method` to `path` without a body (the admin endpoints).
    pub async fn send(&self, method: http::Method, path: &str) -> anyhow::Result<Reply> {
        let url = format!("{}{}", self.base, path);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header("user-agent", concat!("agent/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .with_context(|| format!("invalid URL {url}"))?;
        let start = Instant::now();
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                anyhow!("failed to connect to registry {}: {msg}", self.base)
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| anyhow!("failed to read the reply of registry {}: {e}", self.base))?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                anyhow!(
                    "failed to connect to registry {}: no answer within {:?}",
                    self.base,
                    self.timeout
                )
            })??;
        Ok(Reply {
            status,
            body,
            elapsed: start.elapsed(),
        })
    }
}
