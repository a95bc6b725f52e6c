//! Proxied manifests. By digest: immutable, served from the cache without asking the
//! upstream. By tag: a cached tag -> digest mapping, fresh for `tag_ttl` (forever for
//! `immutable_tags`); when stale it is revalidated with a HEAD (which Docker Hub does not
//! count as a pull) and the manifest is fetched again only if the digest moved. One HEAD
//! per stale tag runs at a time, in the background: requests wait for it at most
//! `REVALIDATE_WAIT` (from its start), then get the stale mapping with a `Warning` header,
//! as they do at once when the upstream is unreachable, failing, rate-limiting or known
//! down (up to `max_stale`). Bytes are cached exactly as the upstream sent them.

use crate::app::App;
use crate::cache::memory::Manifest;
use crate::cache::ObjKind;
use crate::error::{Error, Result};
use crate::handlers::manifests::{respond, respond_bytes};
use crate::handlers::{CacheStatus, Ctx};
use crate::metrics::Source;
use crate::mirror::revalidate::{accept_headers, head_manifest, Joined, Waiting};
use crate::mirror::{upstream_error, Proxy};
use crate::oci::{manifest, Digest, ErrorCode, Reference};
use crate::storage::mirror_meta::{now_ms, TagRow};
use crate::storage::Commit;
use crate::web::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Response, StatusCode};
use std::sync::Arc;

const STALE_WARNING: &str = "110 - \"Response is Stale\"";

fn unknown(p: &Proxy, r: &str) -> Error {
    Error::not_found(
        ErrorCode::ManifestUnknown,
        format!(
            "manifest {r} unknown in {} at upstream {}",
            p.repo,
            p.upstream.name()
        ),
    )
}

/// A GET or HEAD, served when the pull policies allow it (`handlers::policy`): the
/// signature and reports are read through the mirror path (`serve`), so a verdict costs
/// at most their upstream round trips when cold, and a map lookup once cached.
pub async fn get(
    app: &Arc<App>,
    p: &Proxy,
    name: &crate::oci::RepoName,
    r: &str,
    head: bool,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let resp = serve(app, p, r, head, ctx).await?;
    if !app.policy.is_active() {
        return Ok(resp);
    }
    let repo = format!("{}/{}", p.upstream.name(), p.repo);
    if !app.policy.applies(&repo) {
        return Ok(resp);
    }
    let src = crate::handlers::policy::Mirrored {
        app,
        proxy: p,
        name,
        peer: ctx.peer,
        client: ctx.client,
    };
    crate::handlers::policy::gate(app, &repo, resp, &src, ctx).await
}

/// A GET or HEAD as the upstream and the cache answer it, before any policy.
pub async fn serve(
    app: &Arc<App>,
    p: &Proxy,
    r: &str,
    head: bool,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let reference = Reference::parse(r).map_err(|e| match e {
        crate::oci::NameError::Tag(_) => unknown(p, r),
        other => Error::bad_request(ErrorCode::DigestInvalid, other.to_string()),
    })?;
    match reference {
        Reference::Digest(d) => {
            let (m, status, from) = by_digest(app, p, &d).await?;
            ctx.cache = status;
            ctx.served_from = from;
            Ok(respond_bytes(&d, &m.media_type, m.bytes.clone(), None))
        }
        Reference::Tag(t) => by_tag(app, p, &t, head, ctx).await,
    }
}

/// The cached manifest `d`: from memory, else from disk (verified, then kept in memory),
/// else fetched from the upstream.
async fn by_digest(
    app: &Arc<App>,
    p: &Proxy,
    d: &Digest,
) -> Result<(Arc<Manifest>, CacheStatus, Option<Source>)> {
    let metadata = app.config.cache.effective().metadata;
    let up = p.upstream.name();
    // Held manifests are shared by digest across upstreams: served on this upstream's
    // route only when it is known to have the digest (else confirmed with a HEAD first,
    // whose refusal is the fetch's, so held and not held look the same).
    let known = app.cache.origins.has(up, d);
    let in_memory = app.memory.manifest(d).filter(|_| metadata);
    if let Some(m) = in_memory.as_ref().filter(|_| known) {
        app.cache.touch(d);
        return Ok((m.clone(), CacheStatus::Hit, Some(Source::Memory)));
    }
    let cached = match metadata {
        true => app.storage.meta.mirror_manifest(&d.to_string()).await?,
        false => None,
    };
    if !known && (in_memory.is_some() || cached.is_some()) {
        confirm(app, p, d).await?;
        if let Some(m) = in_memory {
            app.cache.touch(d);
            return Ok((m, CacheStatus::Hit, Some(Source::Memory)));
        }
    }
    if let Some((mt, _)) = cached {
        if let Ok(bytes) = tokio::fs::read(app.storage.blobs.path(d)).await {
            if d.matches(&bytes) {
                app.cache.touch(d);
                let bytes = Bytes::from(bytes);
                app.memory.put_manifest(d, &mt, bytes.clone());
                let m = Arc::new(Manifest {
                    media_type: mt,
                    bytes,
                });
                return Ok((m, CacheStatus::Hit, Some(Source::Disk)));
            } else {
                tracing::error!(digest = %d, "cached manifest does not match its digest; refetching");
            }
        }
    }
    let (got, mt, bytes) = fetch(app, p, &d.to_string()).await?;
    if got != *d {
        return Err(Error::client(
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unknown,
            format!(
                "upstream {}: manifest {d} in {}: the bytes have digest {got}",
                p.upstream.name(),
                p.repo
            ),
        ));
    }
    let m = Arc::new(Manifest {
        media_type: mt,
        bytes,
    });
    Ok((m, CacheStatus::Miss, None))
}

/// Asks the upstream whether it has manifest `d` (a HEAD: Docker Hub does not count it
/// as a pull) and records it when yes; refused exactly as `fetch` would be.
async fn confirm(app: &App, p: &Proxy, d: &Digest) -> Result<()> {
    let up = &p.upstream;
    let path = format!("/v2/{}/manifests/{d}", p.repo);
    match up
        .send(Method::HEAD, &path, &p.repo, accept_headers())
        .await
    {
        Ok(_) => {
            app.cache.record_origin(up.name(), d).await;
            Ok(())
        }
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Err(unknown(p, &d.to_string())),
        Err(e) => Err(upstream_error(&e)),
    }
}

/// The tag row: memory first, then SQLite (which stays the source of truth). None when
/// metadata caching is off.
async fn tag_row(app: &App, p: &Proxy, tag: &str) -> Result<Option<TagRow>> {
    if !app.config.cache.effective().metadata {
        return Ok(None);
    }
    let up = p.upstream.name();
    if let Some(row) = app.memory.tag(up, &p.repo, tag) {
        return Ok(Some((*row).clone()));
    }
    let row = app.storage.meta.mirror_tag(up, &p.repo, tag).await?;
    if let Some(r) = &row {
        app.memory.put_tag(up, &p.repo, tag, r.clone());
    }
    Ok(row)
}

/// Records a tag row: in memory at once, in SQLite in the background. The mirror's
/// metadata is a cache: the client does not wait for its durability, and a row lost in a
/// crash only costs a revalidation. Older rows never overwrite newer ones.
async fn save_tag(app: &Arc<App>, p: &Proxy, tag: &str, row: &TagRow) -> Result<()> {
    if !app.config.cache.effective().metadata {
        return Ok(());
    }
    let up = p.upstream.name().to_string();
    app.memory.put_tag(&up, &p.repo, tag, row.clone());
    let (app, repo, tag, row) = (app.clone(), p.repo.clone(), tag.to_string(), row.clone());
    tokio::spawn(async move {
        if let Err(e) = app.storage.meta.put_mirror_tag(&up, &repo, &tag, row).await {
            tracing::warn!(upstream = %up, repo = %repo, tag = %tag, error = %e, "tag mapping not persisted");
        }
    });
    Ok(())
}

/// GETs a manifest by tag or digest from the upstream, verifies it, stores it. Returns
/// its digest, media type and bytes.
async fn fetch(app: &Arc<App>, p: &Proxy, reference: &str) -> Result<(Digest, String, Bytes)> {
    let up = &p.upstream;
    let path = format!("/v2/{}/manifests/{reference}", p.repo);
    let what = format!("GET manifest {reference} of {}", p.repo);
    let resp = match up.send(Method::GET, &path, &p.repo, accept_headers()).await {
        Ok(r) => r,
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Err(unknown(p, reference)),
        Err(e) => return Err(upstream_error(&e)),
    };
    let mt = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let claimed = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok());
    let limit = app.config.server.max_manifest_size;
    let mut body = up.body(resp);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| upstream_error(&e))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(Error::client(
                StatusCode::BAD_GATEWAY,
                ErrorCode::SizeInvalid,
                format!(
                    "upstream {}: {what}: manifest larger than {limit} bytes",
                    up.name()
                ),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    let bytes = buf.freeze();
    let digest = match reference.parse::<Digest>() {
        Ok(d) => {
            let mut h = d.algorithm().hasher();
            h.update(&bytes);
            h.finish()
        }
        Err(_) => match &claimed {
            Some(c) if !c.matches(&bytes) => {
                return Err(Error::client(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::Unknown,
                    format!(
                        "upstream {}: {what}: body does not match its Docker-Content-Digest {c}",
                        up.name()
                    ),
                ))
            }
            Some(c) => c.clone(),
            None => Digest::sha256_of(&bytes),
        },
    };
    // The media type comes from the upstream's Content-Type, else from the body.
    let mt = if mt.is_empty() || mt.starts_with("text/") || mt == "application/octet-stream" {
        manifest::parse(&bytes, "")
            .map(|i| i.media_type)
            .map_err(|e| {
                Error::client(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::ManifestInvalid,
                    format!("upstream {}: {what}: {e}", up.name()),
                )
            })?
    } else {
        mt.split(';').next().unwrap_or("").trim().to_string()
    };
    // Verified: serve from memory now, make the disk copy in the background.
    if app.config.cache.effective().metadata {
        app.cache.origins.note(up.name(), &digest);
        app.memory.put_manifest(&digest, &mt, bytes.clone());
        let (bg, d, m, b) = (app.clone(), digest.clone(), mt.clone(), bytes.clone());
        let origin = up.name().to_string();
        tokio::spawn(async move { keep_on_disk(&bg, &d, &m, &b, &origin).await });
    }
    crate::handlers::preheat::prefetch_layers(app, p, &mt, &bytes);
    Ok((digest, mt, bytes))
}

/// Stores a verified manifest in the disk tier, with what it references, so eviction
/// takes its blobs only with or after it.
async fn keep_on_disk(app: &Arc<App>, d: &Digest, mt: &str, b: &Bytes, origin: &str) {
    if !app.cache.write.writable() {
        return;
    }
    let refs = manifest::parse(b, mt)
        .map(|i| i.blobs.into_iter().chain(i.children).collect())
        .unwrap_or_default();
    let Some(room) = app.cache.reserve(b.len() as u64).await else {
        return;
    };
    match app.storage.blobs.put_bytes(d, b).await {
        Ok(Commit::Stored { .. }) => {}
        Ok(Commit::Mismatch { actual }) => {
            tracing::error!(digest = %d, actual = %actual, "manifest bytes changed before caching");
            return;
        }
        Err(e) => {
            if !app.cache.write.failed(&e) {
                tracing::warn!(digest = %d, error = %e, "manifest served but not cached");
            }
            return;
        }
    }
    let key = d.to_string();
    if let Err(e) = app
        .storage
        .meta
        .put_mirror_manifest(&key, mt, b.len() as u64)
        .await
    {
        tracing::warn!(digest = %d, error = %e, "manifest media type not persisted");
        return;
    }
    let sum = blake3::hash(b).to_hex().to_string();
    app.cache
        .admit(
            d,
            b.len() as u64,
            ObjKind::Manifest,
            refs,
            Some(sum),
            room,
            Some(origin),
        )
        .await;
}

async fn by_tag(
    app: &Arc<App>,
    p: &Proxy,
    tag: &str,
    head: bool,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let up = &p.upstream;
    let cfg = up.config();
    let cached = tag_row(app, p, tag).await?;
    let now = now_ms();
    // cache.ttl bounds every upstream's tag_ttl.
    let ttl = cfg.tag_ttl.min(app.config.cache.ttl);
    if let Some(row) = &cached {
        let age = now.saturating_sub(row.fetched_ms) as u128;
        if age < ttl.as_millis() || cfg.immutable_tags.iter().any(|re| re.is_match(tag)) {
            ctx.cache = CacheStatus::Hit;
            return serve_row(app, p, row, head, None, ctx).await;
        }
    }
    // Stale or unknown: ask the upstream. A HEAD when we hold a mapping (or the client only
    // wants headers), a GET otherwise. A stale mapping is revalidated by one background
    // HEAD per tag, waited for at most REVALIDATE_WAIT while the row may still be served.
    let path = format!("/v2/{}/manifests/{tag}", p.repo);
    let answer = match &cached {
        Some(row) => {
            let servable =
                (now.saturating_sub(row.fetched_ms) as u128) < (ttl + cfg.max_stale).as_millis();
            let waiting = revalidation(app, p, tag, row);
            match waiting.wait(servable).await {
                Some(answer) => answer,
                None => {
                    tracing::debug!(upstream = up.name(), repo = %p.repo, tag, "revalidation still running, serving stale tag");
                    ctx.cache = CacheStatus::Stale;
                    return serve_row(app, p, row, head, Some(STALE_WARNING), ctx).await;
                }
            }
        }
        None if head => head_manifest(up, &path, &p.repo).await,
        None => Ok((None, None, None)),
    };
    match answer {
        Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
            if let (Some(row), true) = (&cached, cfg.serve_stale_on_404) {
                ctx.cache = CacheStatus::Stale;
                return serve_row(app, p, row, head, Some(STALE_WARNING), ctx).await;
            }
            app.storage
                .meta
                .delete_mirror_tag(up.name(), &p.repo, tag)
                .await?;
            app.memory.remove_tag(up.name(), &p.repo, tag);
            Err(unknown(p, tag))
        }
        Err(e) if e.is_unavailable() => match &cached {
            Some(row)
                if (now.saturating_sub(row.fetched_ms) as u128)
                    < (ttl + cfg.max_stale).as_millis() =>
            {
                // The upstream's state change is logged once by its health, not per request.
                tracing::debug!(upstream = up.name(), repo = %p.repo, tag, error = %e, "upstream unavailable, serving stale tag");
                ctx.cache = CacheStatus::Stale;
                serve_row(app, p, row, head, Some(STALE_WARNING), ctx).await
            }
            _ => Err(upstream_error(&e)),
        },
        Err(e) => Err(upstream_error(&e)),
        Ok((Some(d), _, _)) if cached.as_ref().is_some_and(|r| r.digest == d.to_string()) => {
            let Some(mut row) = cached.clone() else {
                return Err(Error::Internal(format!(
                    "revalidated {d} without a cached row"
                )));
            };
            // The revalidation restarted the row's clock (and saved it) itself.
            row.fetched_ms = now;
            ctx.cache = CacheStatus::Revalidated;
            serve_row(app, p, &row, head, None, ctx).await
        }
        Ok((Some(d), Some(mt), Some(len))) if head => {
            // A HEAD from the client on a tag we do not hold: remember the mapping; the
            // manifest itself is fetched by digest when it is asked for.
            let row = TagRow {
                digest: d.to_string(),
                media_type: mt,
                size: len,
                fetched_ms: now,
            };
            save_tag(app, p, tag, &row).await?;
            ctx.cache = CacheStatus::Miss;
            serve_row(app, p, &row, true, None, ctx).await
        }
        Ok(_) => {
            let (d, mt, bytes) = fetch(app, p, tag).await?;
            let row = TagRow {
                digest: d.to_string(),
                media_type: mt,
                size: bytes.len() as u64,
                fetched_ms: now,
            };
            save_tag(app, p, tag, &row).await?;
            ctx.cache = CacheStatus::Miss;
            Ok(respond_bytes(&d, &row.media_type, bytes, None))
        }
    }
}

/// Joins the revalidation of `tag` or starts it: a HEAD upstream in its own task, so it
/// goes on when the requests that wanted it have been answered stale. A HEAD naming the
/// row's digest restarts the row's clock there and then.
fn revalidation(app: &Arc<App>, p: &Proxy, tag: &str, row: &TagRow) -> Waiting {
    let mirror = app.mirror();
    let key = (
        p.upstream.name().to_string(),
        p.repo.clone(),
        tag.to_string(),
    );
    let (waiting, tx) = match mirror.revalidations.join(key.clone()) {
        Joined::Running(w) => return w,
        Joined::Started(w, tx) => (w, tx),
    };
    let (app, p, tag, row) = (app.clone(), p.clone(), tag.to_string(), row.clone());
    tokio::spawn(async move {
        let path = format!("/v2/{}/manifests/{tag}", p.repo);
        let answer = head_manifest(&p.upstream, &path, &p.repo).await;
        if let Ok((Some(d), _, _)) = &answer {
            if row.digest == d.to_string() {
                let mut row = row;
                row.fetched_ms = now_ms();
                if let Err(e) = save_tag(&app, &p, &tag, &row).await {
                    tracing::warn!(upstream = p.upstream.name(), repo = %p.repo, tag = %tag, error = %e, "revalidated tag not saved");
                }
            }
        }
        // Out of the table first: a request that finds it gone starts afresh and sees the
        // saved row.
        mirror.revalidations.done(&key);
        let _ = tx.send(Some(answer));
    });
    waiting
}

/// Serves the manifest a tag row points at, fetching it by digest if only the mapping is known.
async fn serve_row(
    app: &Arc<App>,
    p: &Proxy,
    row: &TagRow,
    head: bool,
    warning: Option<&str>,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let d: Digest = row.digest.parse().map_err(|_| {
        Error::Internal(format!(
            "cached tag maps to malformed digest {}",
            row.digest
        ))
    })?;
    if head {
        return respond(app, &d, &row.media_type, row.size, true, warning).await;
    }
    let (m, _, from) = by_digest(app, p, &d).await?;
    ctx.served_from = from.or(ctx.served_from);
    Ok(respond_bytes(&d, &m.media_type, m.bytes.clone(), warning))
}
