//! A small async HTTP client for request-level tests (hyper-util's client, plain HTTP).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The first OCI error code in the body.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no OCI error in {:?}", self.body))
            .to_string()
    }
}

#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(host: &str) -> Http {
        Http {
            base: format!("http://{host}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn h2(host: &str) -> Http {
        Http {
            base: format!("http://{host}"),
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        };
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).expect("request");
        let resp = self
            .client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(Method::HEAD, path, &[], Bytes::new()).await
    }

    /// Uploads a blob monolithically (POST ?digest=), asserting 201. Returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = agent_registry::oci::Digest::sha256_of(data).to_string();
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[("content-type", "application/octet-stream")],
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "push blob: {:?}", r.body);
        d
    }

    /// PUTs a manifest, returning the response.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
        .await
    }
}

/// An OCI image manifest JSON over a config and layers (digest, size).
pub fn image_manifest(
    config: (&str, usize),
    layers: &[(&str, usize)],
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}))
        .collect();
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
    });
    if let Some((d, s)) = subject {
        m["subject"] = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": s});
        m["artifactType"] = serde_json::json!("application/vnd.example.sig");
    }
    serde_json::to_vec(&m).expect("json")
}

/// A streamed GET: the body is hashed as it arrives, never held whole.
pub struct Hashed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub digest: String,
    pub len: u64,
}

impl Http {
    /// GETs `path` and hashes the body as it streams; Err if the body breaks off.
    pub async fn get_hashed(&self, path: &str, headers: &[(&str, &str)]) -> Result<Hashed, String> {
        use sha2::Digest as _;
        let mut b = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).expect("request");
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let (parts, mut body) = resp.into_parts();
        let mut h = sha2::Sha256::new();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body broke off after {len} bytes: {e:?}"))?;
            if let Some(d) = frame.data_ref() {
                h.update(d);
                len += d.len() as u64;
            }
        }
        Ok(Hashed {
            status: parts.status,
            headers: parts.headers,
            digest: format!("sha256:{}", hex::encode(h.finalize())),
            len,
        })
    }
}
