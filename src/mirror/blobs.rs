//! Proxied blobs. A blob on disk is served from disk (shared by digest across every
//! repository and upstream). A missing one joins the single-flight fill of its digest:
//! the first client starts it, every other client (Range requests included) reads the
//! same in-progress fill as bytes arrive, and the bytes are committed only if they match.

use super::{upstream_error, Proxy};
use crate::app::{App, CacheStatus, Ctx};
use crate::cache::{FillError, FillErrorKind, Opened, Source};
use crate::error::{Error, Result};
use crate::oci::{Digest, ErrorCode};
use crate::server::blobs::{
    blob_headers, parse_digest, parse_range, serve_file, unsatisfiable, RangeReq,
};
use crate::server::body::{status, stream, Body};
use crate::upstream::UpstreamError;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use std::sync::Arc;

pub async fn get(
    app: &Arc<App>,
    p: &Proxy,
    d: &str,
    headers: &HeaderMap,
    head: bool,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let digest = parse_digest(d)?;
    if let Some(r) = serve_file(app, &digest, headers, head).await? {
        ctx.cache = CacheStatus::Hit;
        return Ok(r);
    }
    if head && app.fills.get(&digest).is_none() {
        ctx.cache = CacheStatus::Bypass;
        return head_upstream(p, &digest).await;
    }
    let (fill, started) = app
        .fills
        .join(&app.storage, &digest, source(p, &digest))
        .await
        .map_err(|e| fill_error(p, &digest, e))?;
    ctx.cache = if started {
        CacheStatus::Miss
    } else {
        CacheStatus::Coalesced
    };
    let total = fill
        .started()
        .await
        .map_err(|e| fill_error(p, &digest, e))?;
    let Some(size) = total else {
        // No length from the upstream: stream the whole blob, chunked.
        let mut r = Response::new(stream(fill.reader(0, None)));
        r.headers_mut().insert(
            "docker-content-digest",
            crate::server::body::hv(&digest.to_string()),
        );
        return Ok(r);
    };
    let (code, start, len) = match parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    ) {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeReq::Unsatisfiable => return Ok(unsatisfiable(size)),
    };
    let mut r = if head {
        status(code)
    } else {
        let mut r = Response::new(stream(fill.reader(start, Some(start + len))));
        *r.status_mut() = code;
        r
    };
    blob_headers(&mut r, &digest, code, start, len, size);
    Ok(r)
}

/// A HEAD for a blob we do not hold: ask the upstream, start nothing.
async fn head_upstream(p: &Proxy, digest: &Digest) -> Result<Response<Body>> {
    let up = &p.upstream;
    let path = format!("/v2/{}/blobs/{digest}", p.repo);
    match up
        .send(Method::HEAD, &path, &p.repo, HeaderMap::new())
        .await
    {
        Ok(resp) => {
            let mut r = status(StatusCode::OK);
            let len = resp.headers().get(header::CONTENT_LENGTH).cloned();
            let h = r.headers_mut();
            if let Some(len) = len {
                h.insert(header::CONTENT_LENGTH, len);
            }
            h.insert(
                "docker-content-digest",
                crate::server::body::hv(&digest.to_string()),
            );
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            Ok(r)
        }
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Err(blob_unknown(p, digest)),
        Err(e) => Err(upstream_error(&e)),
    }
}

fn blob_unknown(p: &Proxy, digest: &Digest) -> Error {
    Error::not_found(
        ErrorCode::BlobUnknown,
        format!(
            "blob {digest} unknown in {} at upstream {}",
            p.repo,
            p.upstream.name()
        ),
    )
}

fn fill_error(p: &Proxy, digest: &Digest, e: FillError) -> Error {
    match e.kind {
        FillErrorKind::NotFound => blob_unknown(p, digest),
        // Unavailable messages come from the upstream client and name it already.
        FillErrorKind::Unavailable => {
            Error::client(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, e.message)
        }
        FillErrorKind::Mismatch => Error::client(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unknown,
            format!(
                "upstream {}: {} of {}: {}",
                p.upstream.name(),
                digest,
                p.repo,
                e.message
            ),
        ),
        FillErrorKind::Internal => Error::Internal(e.message),
    }
}

/// The fill's source: GET the blob from the upstream, from `offset` with a Range request
/// when resuming. An upstream that ignores Range has the first `offset` bytes skipped.
fn source(p: &Proxy, digest: &Digest) -> Source {
    let (up, repo, digest) = (p.upstream.clone(), p.repo.clone(), digest.clone());
    Arc::new(move |offset: u64| {
        let (up, repo, digest) = (up.clone(), repo.clone(), digest.clone());
        Box::pin(async move {
            let path = format!("/v2/{repo}/blobs/{digest}");
            let mut headers = HeaderMap::new();
            if offset > 0 {
                headers.insert(
                    header::RANGE,
                    crate::server::body::hv(&format!("bytes={offset}-")),
                );
            }
            let unavailable =
                |e: UpstreamError| FillError::new(FillErrorKind::Unavailable, e.to_string());
            let resp = match up.send(Method::GET, &path, &repo, headers).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.status(),
                        Some(StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED)
                    ) =>
                {
                    return Err(FillError::new(FillErrorKind::NotFound, e.to_string()))
                }
                Err(e) => return Err(unavailable(e)),
            };
            let len = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
            let range_start = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            let skip = match (offset, partial) {
                (0, _) => 0,
                (o, true) if range_start == Some(o) => 0,
                (_, true) => {
                    return Err(FillError::new(
                        FillErrorKind::Unavailable,
                        "upstream answered a different range",
                    ))
                }
                (o, false) => o,
            };
            let total = if offset == 0 { len } else { None };
            let mut skipped = 0u64;
            let body = up
                .body(resp)
                .map(|c| c.map_err(|e| FillError::new(FillErrorKind::Unavailable, e.to_string())))
                .filter_map(move |c| {
                    let out = match c {
                        Ok(b) if skipped < skip => {
                            let drop = ((skip - skipped) as usize).min(b.len());
                            skipped += drop as u64;
                            (drop < b.len()).then(|| Ok(b.slice(drop..)))
                        }
                        other => Some(other),
                    };
                    std::future::ready(out)
                });
            Ok(Opened {
                total,
                stream: body.boxed(),
            })
        })
    })
}
