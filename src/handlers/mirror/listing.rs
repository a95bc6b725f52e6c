//! Proxied lists: `tags/list` passed through (falling back to the last answer, or the
//! tags we hold, when the upstream is down) and the referrers API, cached for `tag_ttl`.
//! An upstream without the referrers API answers 404, which is passed on so clients use
//! the `sha256-<hex>` tag fallback, itself an ordinary proxied tag.

use crate::app::App;
use crate::error::{Error, Result};
use crate::handlers::blobs::parse_digest;
use crate::handlers::{CacheStatus, Ctx};
use crate::mirror::{upstream_error, Proxy};
use crate::oci::{manifest::OCI_INDEX, ErrorCode, RepoName};
use crate::storage::mirror_meta::now_ms;
use crate::web::body::{hv, json_bytes, Body};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, Method, Response, StatusCode, Uri};
use std::sync::Arc;

/// Largest list body taken from an upstream.
const LIST_LIMIT: usize = 16 << 20;

/// GETs `path` from the upstream and reads the body; returns the Link header too.
async fn fetch_list(
    p: &Proxy,
    path: &str,
    what: &str,
) -> std::result::Result<(Bytes, Option<String>), FetchError> {
    let up = &p.upstream;
    let resp = up
        .send(Method::GET, path, &p.repo, HeaderMap::new())
        .await
        .map_err(FetchError::Upstream)?;
    let link = resp
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = up.body(resp);
    let mut buf = bytes::BytesMut::new();
    while let Some(c) = body.next().await {
        let c = c.map_err(FetchError::Upstream)?;
        if buf.len() + c.len() > LIST_LIMIT {
            return Err(FetchError::TooBig(what.to_string()));
        }
        buf.extend_from_slice(&c);
    }
    Ok((buf.freeze(), link))
}

enum FetchError {
    Upstream(crate::upstream::UpstreamError),
    TooBig(String),
}

pub async fn tags(
    app: &Arc<App>,
    name: &RepoName,
    p: &Proxy,
    uri: &Uri,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let up = &p.upstream;
    let query = uri.query().unwrap_or("");
    let path = match query {
        "" => format!("/v2/{}/tags/list", p.repo),
        q => format!("/v2/{}/tags/list?{q}", p.repo),
    };
    let what = format!("tags of {}", p.repo);
    let meta = &app.storage.meta;
    let search = app.config.cache.effective().search;
    match fetch_list(p, &path, &what).await {
        Ok((body, link)) => {
            if search {
                meta.put_mirror_list(up.name(), &p.repo, "tags", query, body.to_vec())
                    .await?;
            }
            ctx.cache = CacheStatus::Miss;
            let mut r = json_bytes(StatusCode::OK, body.to_vec(), "application/json");
            if let Some(l) = link {
                // The upstream's next-page link names its repository; clients follow ours.
                let l = l.replace(&format!("/v2/{}/", p.repo), &format!("/v2/{name}/"));
                r.headers_mut().insert(header::LINK, hv(&l));
            }
            Ok(r)
        }
        Err(FetchError::Upstream(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
            Err(Error::not_found(
                ErrorCode::NameUnknown,
                format!("repository {} unknown at upstream {}", p.repo, up.name()),
            ))
        }
        Err(FetchError::Upstream(e)) if e.is_unavailable() => {
            ctx.cache = CacheStatus::Stale;
            let last = match search {
                true => meta.mirror_list(up.name(), &p.repo, "tags", query).await?,
                false => None,
            };
            if let Some((body, _)) = last {
                return Ok(stale(json_bytes(StatusCode::OK, body, "application/json")));
            }
            let tags = meta.mirror_tags(up.name(), &p.repo).await?;
            if tags.is_empty() || !query.is_empty() {
                return Err(upstream_error(&e));
            }
            let body = serde_json::json!({ "name": name.as_str(), "tags": tags });
            Ok(stale(json_bytes(
                StatusCode::OK,
                serde_json::to_vec(&body).unwrap_or_default(),
                "application/json",
            )))
        }
        Err(FetchError::Upstream(e)) => Err(upstream_error(&e)),
        Err(FetchError::TooBig(w)) => Err(Error::client(
            StatusCode::BAD_GATEWAY,
            ErrorCode::SizeInvalid,
            format!("upstream {}: {w}: list too large", up.name()),
        )),
    }
}

fn stale(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::WARNING, hv("110 - \"Response is Stale\""));
    r
}

pub async fn referrers(
    app: &Arc<App>,
    p: &Proxy,
    d: &str,
    uri: &Uri,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let digest = parse_digest(d)?;
    let up = &p.upstream;
    let query = uri.query().unwrap_or("");
    let key = format!("{digest}?{query}");
    let meta = &app.storage.meta;
    let search = app.config.cache.effective().search;
    // Memory first, then SQLite; nothing when search caching is off.
    let mem_key = format!("{}\0{}\0referrers\0{key}", up.name(), p.repo);
    let cached = match (search, app.memory.list(&mem_key)) {
        (false, _) => None,
        (true, Some(l)) => Some((l.0.to_vec(), l.1)),
        (true, None) => {
            let row = meta
                .mirror_list(up.name(), &p.repo, "referrers", &key)
                .await?;
            if let Some((body, at)) = &row {
                app.memory
                    .put_list(&mem_key, Bytes::from(body.clone()), *at);
            }
            row
        }
    };
    let ttl = up.config().tag_ttl.min(app.config.cache.ttl);
    let filtered = query.contains("artifactType=");
    let respond = |body: Vec<u8>| {
        let mut r = json_bytes(StatusCode::OK, body, OCI_INDEX);
        if filtered {
            r.headers_mut()
                .insert("oci-filters-applied", hv("artifactType"));
        }
        r
    };
    if let Some((body, at)) = &cached {
        if (now_ms().saturating_sub(*at) as u128) < ttl.as_millis() {
            ctx.cache = CacheStatus::Hit;
            return Ok(respond(body.clone()));
        }
    }
    let path = match query {
        "" => format!("/v2/{}/referrers/{digest}", p.repo),
        q => format!("/v2/{}/referrers/{digest}?{q}", p.repo),
    };
    let what = format!("referrers of {digest} in {}", p.repo);
    match fetch_list(p, &path, &what).await {
        Ok((body, _)) => {
            if search {
                meta.put_mirror_list(up.name(), &p.repo, "referrers", &key, body.to_vec())
                    .await?;
                app.memory.put_list(&mem_key, body.clone(), now_ms());
            }
            ctx.cache = CacheStatus::Miss;
            Ok(respond(body.to_vec()))
        }
        Err(FetchError::Upstream(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
            Err(Error::not_found(
                ErrorCode::NameUnknown,
                format!("upstream {} has no referrers API for {}", up.name(), p.repo),
            ))
        }
        Err(FetchError::Upstream(e)) if e.is_unavailable() && cached.is_some() => {
            ctx.cache = CacheStatus::Stale;
            Ok(stale(respond(cached.map(|c| c.0).unwrap_or_default())))
        }
        Err(FetchError::Upstream(e)) => Err(upstream_error(&e)),
        Err(FetchError::TooBig(w)) => Err(Error::client(
            StatusCode::BAD_GATEWAY,
            ErrorCode::SizeInvalid,
            format!("upstream {}: {w}: list too large", up.name()),
        )),
    }
}
