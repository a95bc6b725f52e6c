//! Proxied blobs. A small blob in the memory tier is served from memory; a blob on disk
//! from disk (shared by digest across every repository and upstream), pinned against
//! eviction while it streams. A missing one joins the single-flight fill of its digest:
//! the first client starts it, every other client (Range requests included) reads the
//! same in-progress fill as bytes arrive, and the bytes are committed only if they match.
//! With layer caching off, while the cache cannot write (full disk, read-only
//! directory), or for a blob that gets no room, the fill relays from memory instead of
//! the disk (still one upstream fetch for every concurrent client); a client that joins
//! a relay after it moved past its start streams on its own (`bypass`), verified.

use crate::app::App;
use crate::cache::{FillError, FillErrorKind, FillOpts, Opened, Source};
use crate::error::{Error, Result};
use crate::handlers::blobs::{blob_headers, parse_digest, serve_file, unsatisfiable};
use crate::handlers::{CacheStatus, Ctx};
use crate::metrics::Source as Served;
use crate::mirror::{upstream_blob_error, Proxy};
use crate::oci::{Digest, ErrorCode};
use crate::upstream::UpstreamError;
use crate::web::body::{status, stream, Body};
use crate::web::range::{parse_range, RangeReq};
use bytes::Bytes;
use futures_util::stream::BoxStream;
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
    let layers = app.config.cache.effective().layers;
    let up = p.upstream.name();
    // Bytes held here are served on this upstream's route only when the upstream is
    // known to have them; held but unknown (hosted content, another upstream's, a cache
    // from before provenance was recorded) is asked of the upstream first, so its
    // answer decides the status exactly as for a digest not held at all.
    let known = app.cache.origins.has(up, &digest)
        || (layers && app.storage.blobs.path(&digest).exists() && {
            confirm(app, p, &digest, head).await?;
            true
        });
    if layers && known {
        if let Some(b) = app.memory.blob(&digest) {
            ctx.cache = CacheStatus::Hit;
            ctx.served_from = Some(Served::Memory);
            app.cache.touch(&digest);
            return Ok(from_memory(&digest, b, headers, head));
        }
        let pin = app.cache.pin(&digest);
        if let Some(r) = serve_file(app, &digest, headers, head, Some(pin)).await? {
            ctx.cache = CacheStatus::Hit;
            app.cache.touch(&digest);
            keep_small_in_memory(app, &digest, &r);
            return Ok(r);
        }
        if app.cache.contains(&digest) {
            // Indexed but the file is gone (quarantined, removed by hand).
            app.cache.forget(&digest).await;
        }
    }
    if head && app.fills.get(&digest).is_none() {
        ctx.cache = CacheStatus::Bypass;
        return head_upstream(p, &digest).await;
    }
    // With layer caching off, or while the cache cannot write, the blob streams through
    // (a relay in memory), still one upstream fetch for all its concurrent clients.
    let relay = if !layers {
        Some("layer caching is off")
    } else if !app.cache.write.writable() {
        crate::cache::fill::stream_through(up, &p.repo, &digest, "the cache cannot write", None);
        Some("the cache cannot write")
    } else {
        None
    };
    if relay.is_some() && headers.contains_key(header::RANGE) && app.fills.get(&digest).is_none() {
        // A part of a blob that is not kept: asked of the upstream as a part.
        ctx.cache = CacheStatus::Bypass;
        return bypass(p, &digest, headers, head).await;
    }
    let opts = FillOpts {
        resume_budget: p.upstream.config().idle_timeout,
        relay,
        repo: p.repo.clone(),
    };
    let (fill, started) = match app
        .fills
        .join(
            &app.storage,
            &digest,
            up,
            fill_source(app, p, &digest, headers),
            opts,
        )
        .await
    {
        Ok(f) => f,
        Err(e) => return Err(fill_error(p, &digest, e)),
    };
    if !started && &*fill.origin != up && !app.cache.origins.has(up, &digest) {
        // Another upstream's fill: joined only once this upstream confirms the digest.
        confirm(app, p, &digest, head).await?;
    }
    ctx.cache = if started {
        CacheStatus::Miss
    } else {
        CacheStatus::Coalesced
    };
    let total = fill
        .started()
        .await
        .map_err(|e| fill_error(p, &digest, e))?;
    if fill.relaying() {
        ctx.cache = CacheStatus::Bypass;
    }
    let Some(size) = total else {
        // No length from the upstream: stream the whole blob, chunked.
        let Some(reader) = fill.reader(0, None) else {
            // A stream-through that moved past the start: a fetch of its own.
            return bypass(p, &digest, headers, head).await;
        };
        let mut r = Response::new(stream(reader));
        r.headers_mut().insert(
            "docker-content-digest",
            crate::web::body::hv(&digest.to_string()),
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
        let Some(reader) = fill.reader(start, Some(start + len)) else {
            // A stream-through that moved past `start` (a late joiner): a fetch of its own.
            return bypass(p, &digest, headers, head).await;
        };
        let mut r = Response::new(stream(reader));
        *r.status_mut() = code;
        r
    };
    blob_headers(&mut r, &digest, code, start, len, size);
    Ok(r)
}

/// A small blob from the memory tier, with `Range`.
fn from_memory(digest: &Digest, b: Bytes, headers: &HeaderMap, head: bool) -> Response<Body> {
    let size = b.len() as u64;
    let (code, start, len) = match parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    ) {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeReq::Unsatisfiable => return unsatisfiable(size),
    };
    let mut r = if head {
        status(code)
    } else {
        let part = b.slice(start as usize..(start + len) as usize);
        let mut r = Response::new(stream(futures_util::stream::iter([Ok(part)])));
        *r.status_mut() = code;
        r
    };
    blob_headers(&mut r, digest, code, start, len, size);
    r
}

/// After a disk hit on a whole blob under the memory threshold, loads it into the
/// memory tier in the background (verified against its digest first).
fn keep_small_in_memory(app: &Arc<App>, digest: &Digest, r: &Response<Body>) {
    let threshold = app.config.cache.memory.blob_threshold;
    let len = r
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if r.status() != StatusCode::OK || len.is_none_or(|l| l > threshold) {
        return;
    }
    let (app, digest) = (app.clone(), digest.clone());
    tokio::spawn(async move {
        if let Ok(bytes) = tokio::fs::read(app.storage.blobs.path(&digest)).await {
            if bytes.len() as u64 <= threshold && digest.matches(&bytes) {
                app.memory.put_blob(&digest, bytes.into());
            }
        }
    });
}

/// Streams a blob from the upstream without caching it. A whole body is hashed on the
/// way and its last chunk held back until the digest matched, as for fills; a Range is
/// asked of the upstream and passed on.
async fn bypass(
    p: &Proxy,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>> {
    if head {
        return head_upstream(p, digest).await;
    }
    let src = source(p, digest);
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let opened = src(0).await.map_err(|e| fill_error(p, digest, e))?;
    let Some(size) = opened.total else {
        let mut r = Response::new(stream(verified(opened.stream, digest.clone())));
        r.headers_mut().insert(
            "docker-content-digest",
            crate::web::body::hv(&digest.to_string()),
        );
        return Ok(r);
    };
    let (code, start, len) = match parse_range(range, size) {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeReq::Unsatisfiable => return Ok(unsatisfiable(size)),
    };
    let body = if code == StatusCode::OK {
        stream(verified(opened.stream, digest.clone()))
    } else {
        // A part: reopen at the offset (the source skips bytes if the upstream ignores
        // Range) and stop after `len` bytes.
        drop(opened);
        let part = src(start).await.map_err(|e| fill_error(p, digest, e))?;
        stream(take(part.stream, len))
    };
    let mut r = Response::new(body);
    *r.status_mut() = code;
    blob_headers(&mut r, digest, code, start, len, size);
    Ok(r)
}

type Chunks = BoxStream<'static, std::result::Result<Bytes, FillError>>;

/// The bytes of `s`, the last chunk held back until the whole body matched `digest`.
fn verified(
    s: Chunks,
    digest: Digest,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let hasher = digest.algorithm().hasher();
    let state = (s, Some(hasher), None::<Bytes>, digest);
    futures_util::stream::unfold(state, |(mut s, hasher, held, digest)| async move {
        let mut hasher = hasher?;
        match s.next().await {
            Some(Ok(b)) => {
                hasher.update(&b);
                // Pass on the previous chunk; hold this one.
                match held {
                    Some(prev) => Some((Ok(prev), (s, Some(hasher), Some(b), digest))),
                    None => Some((Ok(Bytes::new()), (s, Some(hasher), Some(b), digest))),
                }
            }
            Some(Err(e)) => Some((
                Err(std::io::Error::other(e.message)),
                (s, None, None, digest),
            )),
            None => {
                if hasher.finish() != digest {
                    let e = std::io::Error::other(format!(
                        "blob {digest}: digest mismatch from upstream"
                    ));
                    return Some((Err(e), (s, None, None, digest)));
                }
                held.map(|b| (Ok(b), (s, None, None, digest)))
            }
        }
    })
    .filter(|c| std::future::ready(!matches!(c, Ok(b) if b.is_empty())))
}

/// At most `len` bytes of `s`.
fn take(
    s: Chunks,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold((s, len), |(mut s, left)| async move {
        if left == 0 {
            return None;
        }
        match s.next().await? {
            Ok(b) => {
                let n = (b.len() as u64).min(left);
                Some((Ok(b.slice(..n as usize)), (s, left - n)))
            }
            Err(e) => Some((Err(std::io::Error::other(e.message)), (s, 0))),
        }
    })
}

/// Asks the upstream whether it has `digest` (a HEAD), for bytes held here that it is
/// not yet known to have; records the answer when yes. A refusal is the error the same
/// request gets for a digest not held here: the fill's for a GET, `head_upstream`'s for
/// a HEAD, so the two cases cannot be told apart.
async fn confirm(app: &App, p: &Proxy, digest: &Digest, head: bool) -> Result<()> {
    let up = &p.upstream;
    let path = format!("/v2/{}/blobs/{digest}", p.repo);
    match up
        .send(Method::HEAD, &path, &p.repo, HeaderMap::new())
        .await
    {
        Ok(_) => {
            app.cache.record_origin(up.name(), digest).await;
            Ok(())
        }
        Err(e) if head && e.status() == Some(StatusCode::NOT_FOUND) => Err(blob_unknown(p, digest)),
        Err(e) if head => Err(upstream_blob_error(&e)),
        Err(e) => Err(fill_error(p, digest, fetch_error(e))),
    }
}

/// How the fill's source classifies an upstream failure.
fn fetch_error(e: UpstreamError) -> FillError {
    match e.status() {
        Some(StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
            FillError::new(FillErrorKind::NotFound, e.to_string())
        }
        _ => FillError::new(FillErrorKind::Unavailable, e.to_string()),
    }
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
                crate::web::body::hv(&digest.to_string()),
            );
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            Ok(r)
        }
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Err(blob_unknown(p, digest)),
        Err(e) => Err(upstream_blob_error(&e)),
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
        // Unavailable messages come from the upstream client and name it already. While
        // the upstream is rate-limited or down the client may come back after the wait.
        FillErrorKind::Unavailable => match p.upstream.health().retry_after(&p.repo) {
            Some(retry_after) => Error::Unavailable {
                retry_after,
                message: e.message,
            },
            None => Error::client(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, e.message),
        },
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

/// Where a fill of `digest` gets its bytes: from the digest's owner node when this node
/// is in a cluster and does not own it, else from the upstream. A peer request (its
/// header was verified by dispatch) always fills from the upstream: it never recurses.
fn fill_source(app: &App, p: &Proxy, digest: &Digest, headers: &HeaderMap) -> Source {
    let upstream = source(p, digest);
    let Some(cluster) = app.cluster.clone() else {
        return upstream;
    };
    if headers.contains_key(crate::cluster::PEER_HEADER) {
        return upstream;
    }
    if cluster.owner(&digest.to_string()).is_none() {
        return upstream;
    }
    peer_source(cluster, p, digest, upstream)
}

/// A fill's source that asks the digest's owner node first (its own fill serves every
/// node, one upstream GET for the cluster), and the upstream when there is no live
/// owner but this node, or the owner fails, refuses, is slow or does not have it. A
/// resume asks the owner again from the offset unless it was marked down meanwhile.
/// The fill verifies the digest whatever the source.
fn peer_source(
    cluster: Arc<crate::cluster::Cluster>,
    p: &Proxy,
    digest: &Digest,
    upstream: Source,
) -> Source {
    let ns: String = form_urlencoded::byte_serialize(p.upstream.name().as_bytes()).collect();
    // The path names the upstream too, so the owner strips exactly that prefix and
    // keeps a repository whose first part is an upstream alias (`docker/compose`).
    let prefixed = format!("{}/{}", p.upstream.name(), p.repo);
    let name = match crate::oci::RepoName::parse(&prefixed) {
        Ok(_) => prefixed,
        Err(_) => p.repo.clone(),
    };
    let target = format!("/v2/{name}/blobs/{digest}?ns={ns}");
    let key = digest.to_string();
    let idle = p.upstream.config().idle_timeout;
    Arc::new(move |offset: u64| {
        let (cluster, upstream, target, key) = (
            cluster.clone(),
            upstream.clone(),
            target.clone(),
            key.clone(),
        );
        Box::pin(async move {
            let Some(owner) = cluster.owner(&key) else {
                return upstream(offset).await;
            };
            match cluster.fetch(&owner, &target, offset, idle).await {
                Ok(b) => Ok(Opened {
                    total: b.total,
                    stream: b
                        .stream
                        .map(|c| c.map_err(|m| FillError::new(FillErrorKind::Unavailable, m)))
                        .boxed(),
                }),
                Err(e) => {
                    tracing::debug!(peer = %owner, error = ?e, "blob from the upstream instead of its owner node");
                    upstream(offset).await
                }
            }
        })
    })
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
                    crate::web::body::hv(&format!("bytes={offset}-")),
                );
            }
            let resp = match up.send(Method::GET, &path, &repo, headers).await {
                Ok(r) => r,
                Err(e) => return Err(fetch_error(e)),
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
