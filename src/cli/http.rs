//! The CLI's HTTP client: plain HTTP or HTTPS (rustls with the webpki roots), with a timeout.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use std::time::{Duration, Instant};

pub struct Client {
    base: String,
    timeout: Duration,
    /// The `Authorization` header value sent with every request.
    authorization: Option<String>,
    inner: HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
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
            authorization: None,
            inner: HyperClient::builder(TokioExecutor::new()).build(https),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `authorization` (a whole header value) with every request.
    pub fn with_authorization(mut self, authorization: Option<String>) -> Client {
        self.authorization = authorization;
        self
    }

    /// GETs `path`; connection failures and timeouts become "failed to connect to registry".
    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// Sends `method` to `path` without a body.
    pub async fn send(&self, method: Method, path: &str) -> anyhow::Result<Reply> {
        self.request(method, path, None).await
    }

    /// Sends `method` to `path` with an optional JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("user-agent", concat!("agent/", env!("CARGO_PKG_VERSION")));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        if json.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
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
