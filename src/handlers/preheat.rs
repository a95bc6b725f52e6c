//! Preheat and prefetch: filling a mirrored image into the cache before anyone pulls it.
//!
//! - `POST /admin/preheat` with `{"images": [...], "platform": "all" | "OS/ARCH"}` fills
//!   every manifest (the index and the chosen children) and every blob of each image and
//!   answers per image `{image, manifests, blobs, bytes, error?}`.
//! - [`keep_warm`]: the `[[preheat]]` lists, filled at start and every `interval`.
//! - [`prefetch_layers`]: after a manifest miss (`mirror.prefetch_layers`), the fills of
//!   its config and layers start in the background, at most
//!   `mirror.prefetch_concurrency` at once.
//!
//! Everything goes through the mirror handlers (`handlers/mirror/`) exactly as a client's
//! pull does, so single-flight fills, the cache cap, provenance and tag TTLs apply.

use crate::app::App;
use crate::config::{Platform, PreheatConfig};
use crate::error::{Error, Result};
use crate::handlers::mirror::{blobs, manifests};
use crate::handlers::{CacheStatus, Ctx};
use crate::mirror::{Proxy, Target};
use crate::oci::{manifest, Digest, ErrorCode, RepoName};
use crate::web::body::{json, Body, ReqBody};
use futures_util::StreamExt;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Blobs of one image filled at once.
const BLOBS_AT_ONCE: usize = 4;
/// Most images in one request.
const MAX_IMAGES: usize = 1000;

/// What a preheat did for one image.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub image: String,
    /// Manifests fetched or found cached (an index and its chosen children).
    pub manifests: u64,
    /// Blobs filled or found cached.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreheatRequest {
    images: Vec<String>,
    #[serde(default)]
    platform: Option<String>,
}

/// `POST /admin/preheat`: 200 with `{"images": [Report...]}` once every image is done
/// (an image that failed has its `error`; the others are still filled).
pub async fn handle(app: &Arc<App>, req: Request<ReqBody>) -> Result<Response<Body>> {
    let body = crate::web::body::read_limited(req.into_body(), 1 << 20)
        .await
        .map_err(|e| bad(format!("reading the body: {e}")))?
        .ok_or_else(|| Error::bad_request(ErrorCode::SizeInvalid, "body too large"))?;
    let r: PreheatRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
    if r.images.is_empty() || r.images.len() > MAX_IMAGES {
        return Err(bad(format!(
            "images: expected 1 to {MAX_IMAGES} image references, found {}",
            r.images.len()
        )));
    }
    let platform = Platform::parse(r.platform.as_deref().unwrap_or("all"))
        .map_err(|e| bad(format!("platform: {e}")))?;
    let mut reports = Vec::new();
    for image in &r.images {
        reports.push(preheat(app, image, &platform).await);
    }
    let value = serde_json::json!({ "images": reports });
    Ok(json(StatusCode::OK, &value))
}

fn bad(message: String) -> Error {
    Error::bad_request(ErrorCode::Unsupported, message)
}

/// Fills one image; the report says how far it got.
pub async fn preheat(app: &Arc<App>, image: &str, platform: &Platform) -> Report {
    let mut report = Report {
        image: image.to_string(),
        ..Report::default()
    };
    if let Err(e) = fill_image(app, image, platform, &mut report).await {
        report.error = Some(e.to_string());
    }
    report
}

/// `[[preheat]]`: fills every list at start and then every `interval`, one log line per
/// run. Runs until the server stops (the caller owns the task).
pub async fn keep_warm(app: Arc<App>) {
    let lists = app.config.preheat.clone();
    let tasks: Vec<_> = lists
        .into_iter()
        .map(|list| tokio::spawn(keep_list_warm(app.clone(), list)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn keep_list_warm(app: Arc<App>, list: PreheatConfig) {
    let mut tick = tokio::time::interval(list.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let (mut blobs, mut bytes, mut failed) = (0, 0, Vec::new());
        for image in &list.images {
            let r = preheat(&app, image, &list.platform).await;
            (blobs, bytes) = (blobs + r.blobs, bytes + r.bytes);
            if let Some(e) = r.error {
                failed.push(format!("{image}: {e}"));
            }
        }
        let took = started.elapsed();
        match failed.is_empty() {
            true => tracing::info!(
                images = list.images.len(),
                blobs,
                bytes,
                ?took,
                "preheat run"
            ),
            false => {
                tracing::warn!(images = list.images.len(), blobs, bytes, ?took, failed = %failed.join("; "), "preheat run with failures")
            }
        }
    }
}

/// `host/repo:tag`, `repo@sha256:...`, `repo` (`latest`): the repository and reference.
pub fn split_image(image: &str) -> std::result::Result<(&str, &str), String> {
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (
            n.rsplit_once(':')
                .filter(|(_, t)| !t.contains('/'))
                .map_or(n, |(n, _)| n),
            d,
        ),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t),
            _ => (image, "latest"),
        },
    };
    if name.is_empty() || reference.is_empty() {
        return Err(format!("invalid image reference {image:?}"));
    }
    Ok((name, reference))
}

fn internal_ctx(repo: &str) -> Ctx {
    let unspecified = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Ctx {
        route: "preheat",
        repo: Some(repo.to_string()),
        peer: unspecified,
        client: unspecified.ip(),
        cache: CacheStatus::Miss,
        upstream: None,
        ns: None,
        identity: None,
        served_from: None,
    }
}

async fn fill_image(
    app: &Arc<App>,
    image: &str,
    platform: &Platform,
    report: &mut Report,
) -> Result<()> {
    if !app.config.cache.effective().layers {
        return Err(Error::client(
            StatusCode::CONFLICT,
            ErrorCode::Unsupported,
            "this registry does not cache layers (cache strategies): nothing to preheat",
        ));
    }
    let (name, reference) = split_image(image).map_err(bad)?;
    let repo = RepoName::parse(name)
        .map_err(|e| Error::bad_request(ErrorCode::NameInvalid, e.to_string()))?;
    let p = match app.mirror().resolve(&repo, None, None)? {
        Target::Proxy(p) => p,
        Target::Hosted(_) => {
            return Err(Error::not_found(
                ErrorCode::NameUnknown,
                format!("{name} is not a mirrored repository (no upstream routes it)"),
            ))
        }
    };
    let (mt, bytes) = manifest_bytes(app, &p, reference).await?;
    report.manifests += 1;
    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    if manifest::is_index(&mt) {
        for child in children(&bytes, platform) {
            let (cmt, cbytes) = manifest_bytes(app, &p, &child.to_string()).await?;
            report.manifests += 1;
            blobs.extend(image_blobs(&cbytes, &cmt)?);
        }
    } else {
        blobs.extend(image_blobs(&bytes, &mt)?);
    }
    let mut fills = futures_util::stream::iter(blobs)
        .map(|d| {
            let p = p.clone();
            async move { fill_blob(app, &p, &d).await }
        })
        .buffer_unordered(BLOBS_AT_ONCE);
    let mut first_error = None;
    while let Some(r) = fills.next().await {
        match r {
            Ok(n) => {
                report.blobs += 1;
                report.bytes += n;
                crate::metrics::preheat_blob();
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The index entries `platform` wants.
fn children(index: &[u8], platform: &Platform) -> Vec<Digest> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<manifest::Descriptor>,
    }
    serde_json::from_slice::<Index>(index)
        .map(|i| i.manifests)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| platform.wants(m.platform.as_ref()))
        .filter_map(|m| m.digest.parse().ok())
        .collect()
}

fn image_blobs(bytes: &[u8], mt: &str) -> Result<Vec<Digest>> {
    manifest::parse(bytes, mt).map(|i| i.blobs).map_err(|e| {
        Error::client(
            StatusCode::BAD_GATEWAY,
            ErrorCode::ManifestInvalid,
            e.to_string(),
        )
    })
}

/// A manifest through the mirror (cached, revalidated or fetched): its media type and bytes.
async fn manifest_bytes(
    app: &Arc<App>,
    p: &Proxy,
    reference: &str,
) -> Result<(String, bytes::Bytes)> {
    let mut ctx = internal_ctx(&p.repo);
    // Warming the cache is not a pull: pull policies judge what is served, not what is held.
    let resp = manifests::serve(app, p, reference, false, &mut ctx).await?;
    let mt = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Internal(format!("reading manifest {reference} of {}: {e}", p.repo)))?
        .to_bytes();
    Ok((mt, bytes))
}

/// Whether blob `d` is held for `p`'s upstream (what `blobs::get` serves as a hit).
fn held(app: &App, p: &Proxy, d: &Digest) -> Option<u64> {
    if !app.cache.origins.has(p.upstream.name(), d) {
        return None;
    }
    std::fs::metadata(app.storage.blobs.path(d))
        .ok()
        .map(|m| m.len())
}

/// Makes sure blob `d` is cached: a hit is only counted; a miss is fetched through the
/// blob handler (joining a fill in flight) and its body read to the end. Its size.
async fn fill_blob(app: &Arc<App>, p: &Proxy, d: &Digest) -> Result<u64> {
    if let Some(n) = held(app, p, d) {
        return Ok(n);
    }
    let mut ctx = internal_ctx(&p.repo);
    let resp = blobs::get(app, p, &d.to_string(), &HeaderMap::new(), false, &mut ctx).await?;
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Error::client(
                StatusCode::BAD_GATEWAY,
                ErrorCode::BlobUnknown,
                format!("blob {d} of {}: {e}", p.repo),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    // The body ends before the fill commits: done means cached.
    if let Some(fill) = app.fills.get(d) {
        fill.finished().await.map_err(|e| {
            Error::client(
                StatusCode::BAD_GATEWAY,
                ErrorCode::BlobUnknown,
                format!("blob {d} of {}: {}", p.repo, e.message),
            )
        })?;
    }
    Ok(n)
}

/// `mirror.prefetch_layers`: after manifest `bytes` (media type `mt`) came from the
/// upstream, starts background fills of its config and layers that are neither held
/// nor in flight, each holding one of the mirror's prefetch permits while it runs.
pub fn prefetch_layers(app: &Arc<App>, p: &Proxy, mt: &str, bytes: &[u8]) {
    let mirror = app.mirror();
    // Nothing to warm when layers are not kept (or cannot be written now).
    let keeps = app.config.cache.effective().layers && app.cache.write.writable();
    if !mirror.prefetch_layers || !keeps || manifest::is_index(mt) {
        return;
    }
    let Ok(info) = manifest::parse(bytes, mt) else {
        return;
    };
    for d in info.blobs {
        if held(app, p, &d).is_some() || app.fills.get(&d).is_some() {
            crate::metrics::prefetch_fill("skipped");
            continue;
        }
        let (app, p, permits) = (app.clone(), p.clone(), mirror.prefetch.clone());
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            // A client may have fetched it while this waited for a permit.
            if held(&app, &p, &d).is_some() || app.fills.get(&d).is_some() {
                crate::metrics::prefetch_fill("skipped");
                return;
            }
            match fill_blob(&app, &p, &d).await {
                Ok(_) => crate::metrics::prefetch_fill("done"),
                Err(e) => {
                    tracing::debug!(upstream = p.upstream.name(), repo = %p.repo, digest = %d, error = %e, "prefetch failed");
                    crate::metrics::prefetch_fill("failed");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_references() {
        fn ok(s: &str) -> (&str, &str) {
            split_image(s).expect(s)
        }
        assert_eq!(
            ok("docker.io/library/alpine:3.20"),
            ("docker.io/library/alpine", "3.20")
        );
        assert_eq!(ok("localhost:5000/app"), ("localhost:5000/app", "latest"));
        assert_eq!(ok("localhost:5000/app:v1"), ("localhost:5000/app", "v1"));
        assert_eq!(ok("alpine"), ("alpine", "latest"));
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        assert_eq!(ok(&format!("ghcr.io/o/a@{d}")), ("ghcr.io/o/a", d));
        assert_eq!(ok(&format!("ghcr.io/o/a:1@{d}")), ("ghcr.io/o/a", d));
        assert!(split_image("x:").is_err());
    }
}
