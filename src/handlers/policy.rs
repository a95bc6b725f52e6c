//! The pull policies at the manifest handlers: [`gate`] asks `crate::policy` for the
//! verdict on a manifest about to be served (hosted or mirrored), through a
//! [`crate::policy::Source`] that reads hosted storage ([`Hosted`]) or the upstream
//! through the mirror path and its cache ([`Mirrored`]); a refusal becomes `403 DENIED`,
//! an audit record and `agent_registry_policy_denied_total{policy}`.

use crate::app::App;
use crate::error::{Error, Result};
use crate::handlers::Ctx;
use crate::mirror::Proxy;
use crate::oci::{Digest, ErrorCode, RepoName};
use crate::policy::{Fetch, Source};
use crate::web::body::{Body, DOCKER_CONTENT_DIGEST};
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::Arc;

/// Passes `resp` (a manifest GET or HEAD's answer) when the policies allow its digest
/// in `repo` (the repository as routed), else refuses it.
pub async fn gate(
    app: &Arc<App>,
    repo: &str,
    resp: Response<Body>,
    src: &dyn Source,
    ctx: &Ctx,
) -> Result<Response<Body>> {
    if resp.status() != StatusCode::OK || !app.policy.applies(repo) {
        return Ok(resp);
    }
    let Some(digest) = resp
        .headers()
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
    else {
        return Err(Error::Internal(format!(
            "manifest of {repo} answered without a digest: the policy cannot judge it"
        )));
    };
    let bytes = match src.manifest(&digest.to_string()).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Error::Internal(format!(
                "manifest {digest} of {repo} vanished before the policy could judge it"
            )))
        }
        Err(e) => return Err(Error::Internal(format!("manifest {digest} of {repo}: {e}"))),
    };
    let decision = app.policy.check(repo, &digest, &bytes, src).await;
    let client = ctx.client.to_string();
    for w in &decision.warnings {
        tracing::warn!(repo, digest = %digest, policy = w.kind.as_str(), "{} (mode = warn: served)", w.message);
        crate::metrics::policy_warning(w.kind.as_str());
    }
    let Some(refused) = decision.refused else {
        return Ok(resp);
    };
    crate::metrics::policy_denied(refused.kind.as_str());
    app.auth.audit(
        "policy_denied",
        ctx.identity.as_deref(),
        Some(&client),
        Some(repo),
        Some(&refused.message),
    );
    Err(Error::client(
        StatusCode::FORBIDDEN,
        ErrorCode::Denied,
        refused.message,
    ))
}

/// The body of a response, at most `limit` bytes (`None` beyond).
async fn collect(resp: Response<Body>, limit: u64) -> std::result::Result<Option<Vec<u8>>, String> {
    let limited = http_body_util::Limited::new(resp.into_body(), limit as usize);
    match limited.collect().await {
        Ok(c) => Ok(Some(c.to_bytes().to_vec())),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Absent (404), or a registry without the API asked (400, 405): nothing, not a failure.
fn nothing(e: &Error) -> bool {
    matches!(
        e.status(),
        StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED
    )
}

fn referrer_list(bytes: &[u8]) -> Vec<Value> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default()
}

/// A hosted repository's manifests, blobs and referrers, from storage.
pub struct Hosted<'a> {
    pub app: &'a Arc<App>,
    pub name: &'a RepoName,
}

impl Source for Hosted<'_> {
    fn manifest<'a>(&'a self, reference: &'a str) -> Fetch<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let meta = &self.app.storage.meta;
            let repo = self.name.as_str();
            let digest = match reference.parse::<Digest>() {
                Ok(d) => d,
                Err(_) => match meta.tag(repo, reference).await.map_err(|e| e.to_string())? {
                    Some(d) => d
                        .parse()
                        .map_err(|_| format!("stored digest {d} is malformed"))?,
                    None => return Ok(None),
                },
            };
            if meta
                .manifest(repo, &digest.to_string())
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Ok(None);
            }
            read_checked(self.app, &digest, u64::MAX).await
        })
    }

    fn blob<'a>(&'a self, digest: &'a Digest, limit: u64) -> Fetch<'a, Option<Vec<u8>>> {
        Box::pin(read_checked(self.app, digest, limit))
    }

    fn referrers<'a>(&'a self, digest: &'a Digest) -> Fetch<'a, Vec<Value>> {
        Box::pin(async move {
            let uri = Uri::from_static("/");
            match crate::handlers::listing::referrers(
                self.app,
                self.name,
                &digest.to_string(),
                &uri,
            )
            .await
            {
                Ok(r) => Ok(collect(r, 16 << 20)
                    .await?
                    .map(|b| referrer_list(&b))
                    .unwrap_or_default()),
                Err(e) if nothing(&e) => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// A stored object's bytes, checked against its digest.
async fn read_checked(
    app: &App,
    d: &Digest,
    limit: u64,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let path = app.storage.blobs.path(d);
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() > limit => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("stored object {d}: {e}")),
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| format!("stored object {d}: {e}"))?;
    match d.matches(&bytes) {
        true => Ok(Some(bytes)),
        false => Err(format!("stored object {d}: bytes do not match")),
    }
}

/// A mirrored repository's manifests, blobs and referrers, through the mirror path
/// (its cache first, else the upstream): what a client pulling them would get.
pub struct Mirrored<'a> {
    pub app: &'a Arc<App>,
    pub proxy: &'a Proxy,
    pub name: &'a RepoName,
    pub peer: std::net::SocketAddr,
    pub client: std::net::IpAddr,
}

impl Mirrored<'_> {
    fn ctx(&self, route: &'static str) -> Ctx {
        Ctx {
            route,
            repo: Some(self.name.to_string()),
            peer: self.peer,
            client: self.client,
            cache: crate::handlers::CacheStatus::Bypass,
            upstream: Some(self.proxy.upstream.name().to_string()),
            ns: self.proxy.ns.clone(),
            identity: None,
            served_from: None,
        }
    }
}

impl Source for Mirrored<'_> {
    fn manifest<'a>(&'a self, reference: &'a str) -> Fetch<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let mut ctx = self.ctx("manifest");
            let limit = self.app.config.server.max_manifest_size;
            match crate::handlers::mirror::manifests::serve(
                self.app, self.proxy, reference, false, &mut ctx,
            )
            .await
            {
                Ok(r) => collect(r, limit).await,
                Err(e) if e.status() == StatusCode::NOT_FOUND => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// A small blob (a signature payload, a report): from the cache when held, else
    /// straight from the upstream (the repository's upstream, its auth and health), not
    /// kept: the verdict is what is cached.
    fn blob<'a>(&'a self, digest: &'a Digest, limit: u64) -> Fetch<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            if let Ok(Some(b)) = read_checked(self.app, digest, limit).await {
                return Ok(Some(b));
            }
            let up = &self.proxy.upstream;
            let repo = &self.proxy.repo;
            let path = format!("/v2/{repo}/blobs/{digest}");
            let resp = match up
                .send(http::Method::GET, &path, repo, HeaderMap::new())
                .await
            {
                Ok(r) => r,
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(None),
                Err(e) => return Err(format!("upstream {}: blob {digest}: {e}", up.name())),
            };
            let mut body = up.body(resp);
            let mut buf: Vec<u8> = Vec::new();
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                let chunk =
                    chunk.map_err(|e| format!("upstream {}: blob {digest}: {e}", up.name()))?;
                if (buf.len() + chunk.len()) as u64 > limit {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk);
            }
            match digest.matches(&buf) {
                true => Ok(Some(buf)),
                false => Err(format!(
                    "upstream {}: blob {digest}: bytes do not match",
                    up.name()
                )),
            }
        })
    }

    fn referrers<'a>(&'a self, digest: &'a Digest) -> Fetch<'a, Vec<Value>> {
        Box::pin(async move {
            let mut ctx = self.ctx("referrers");
            let uri = Uri::from_static("/");
            match crate::handlers::mirror::listing::referrers(
                self.app,
                self.proxy,
                &digest.to_string(),
                &uri,
                &mut ctx,
            )
            .await
            {
                Ok(r) if r.status().is_success() => Ok(collect(r, 16 << 20)
                    .await?
                    .map(|b| referrer_list(&b))
                    .unwrap_or_default()),
                Ok(_) => Ok(Vec::new()),
                Err(e) if nothing(&e) => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
