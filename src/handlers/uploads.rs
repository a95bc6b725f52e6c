//! `/v2/<name>/blobs/uploads/`: monolithic, POST-then-PUT and chunked uploads, status,
//! cancel, and cross-repository mounts.

use crate::app::App;
use crate::error::{Error, Result};
use crate::handlers::blobs::parse_digest;
use crate::oci::{ErrorCode, RepoName};
use crate::storage::uploads::UploadError;
use crate::storage::Ingest;
use crate::web::body::{data_stream, hv, status, Body, ReqBody, DOCKER_CONTENT_DIGEST};
use crate::web::{location, query, query_get};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;
use uuid::Uuid;

pub fn parse_id(s: &str) -> Result<Uuid> {
    s.parse().map_err(|_| {
        Error::not_found(
            ErrorCode::BlobUploadUnknown,
            format!("upload {s:?} unknown"),
        )
    })
}

/// `Range: 0-<last byte>` as the distribution API reports progress ("0-0" when empty).
fn progress(resp: &mut Response<Body>, name: &RepoName, id: Uuid, offset: u64) {
    location(resp, &format!("/v2/{name}/blobs/uploads/{id}"));
    let h = resp.headers_mut();
    h.insert(
        header::RANGE,
        hv(&format!("0-{}", offset.saturating_sub(1))),
    );
    h.insert("docker-upload-uuid", hv(&id.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
}

fn created(name: &RepoName, digest: &str) -> Response<Body> {
    let mut r = status(StatusCode::CREATED);
    location(&mut r, &format!("/v2/{name}/blobs/{digest}"));
    let h = r.headers_mut();
    h.insert(DOCKER_CONTENT_DIGEST, hv(digest));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn range_error(msg: String) -> Error {
    Error::client(
        StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::BlobUploadInvalid,
        msg,
    )
}

/// The first and last byte a chunk claims with `Content-Range: <start>-<end>`, checked
/// against its `Content-Length` (storage checks the body itself). Public for the fuzz
/// targets only (`fuzz/`).
#[doc(hidden)]
pub fn chunk_range(h: &HeaderMap) -> Result<Option<(u64, u64)>> {
    let Some(v) = h.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    let spec = s
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or("");
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| range_error(format!("malformed Content-Range {s:?}")))?;
    let (start, end) = match (a.trim().parse::<u64>(), b.trim().parse::<u64>()) {
        // `end + 1` must exist: no chunk ends on the last u64.
        (Ok(a), Ok(b)) if a <= b && b < u64::MAX => (a, b),
        _ => return Err(range_error(format!("malformed Content-Range {s:?}"))),
    };
    let len = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = len {
        if len != end - start + 1 {
            return Err(range_error(format!(
                "Content-Range {s:?} does not match Content-Length {len}"
            )));
        }
    }
    Ok(Some((start, end)))
}

pub async fn start(
    app: &Arc<App>,
    name: &RepoName,
    req: Request<ReqBody>,
    mount_allowed: bool,
) -> Result<Response<Body>> {
    let q = query(req.uri());
    let storage = &app.storage;
    // A mount the client may not make starts a plain upload, as the spec allows.
    if let Some(m) = query_get(&q, "mount").filter(|_| mount_allowed) {
        if let Ok(digest) = m.parse::<crate::oci::Digest>() {
            let d = digest.to_string();
            let source = match query_get(&q, "from").map(RepoName::parse) {
                Some(Ok(from)) => storage.meta.blob_in_repo(from.as_str(), &d).await?,
                Some(Err(_)) => None,
                // Automatic mount: the registry already holds the blob somewhere.
                None => storage.blobs.stat(&digest).await?,
            };
            // The file must be there too: a link without bytes is never mounted.
            let _write = storage.write_lock.read().await;
            if let (Some(size), Some(_)) = (source, storage.blobs.stat(&digest).await?) {
                storage.meta.link_blob(name.as_str(), &d, size).await?;
                return Ok(created(name, &d));
            }
        }
    }
    if let Some(d) = query_get(&q, "digest") {
        let digest = parse_digest(d)?;
        let body = data_stream(req.into_body());
        return match storage.ingest(&digest, body, Some(name.as_str())).await? {
            Ingest::Stored { .. } => Ok(created(name, &digest.to_string())),
            Ingest::Mismatch { actual } => Err(Error::bad_request(
                ErrorCode::DigestInvalid,
                format!("digest mismatch: uploaded content has digest {actual}, not {digest}"),
            )),
        };
    }
    let id = storage.upload_start(name.as_str()).await?;
    let mut r = status(StatusCode::ACCEPTED);
    progress(&mut r, name, id, 0);
    Ok(r)
}

pub async fn progress_of(app: &Arc<App>, name: &RepoName, id: Uuid) -> Result<Response<Body>> {
    let offset = app.storage.upload_offset(name.as_str(), id).await?;
    let mut r = status(StatusCode::NO_CONTENT);
    progress(&mut r, name, id, offset);
    Ok(r)
}

pub async fn patch(
    app: &Arc<App>,
    name: &RepoName,
    id: Uuid,
    req: Request<ReqBody>,
) -> Result<Response<Body>> {
    let range = chunk_range(req.headers())?;
    let body = data_stream(req.into_body());
    let offset = app
        .storage
        .upload_append(name.as_str(), id, range, body)
        .await;
    let offset = match offset {
        Ok(o) => o,
        Err(e) => return Err(abandon_when_full(app, name, id, e).await),
    };
    let mut r = status(StatusCode::ACCEPTED);
    progress(&mut r, name, id, offset);
    Ok(r)
}

pub async fn finish(
    app: &Arc<App>,
    name: &RepoName,
    id: Uuid,
    req: Request<ReqBody>,
) -> Result<Response<Body>> {
    let q = query(req.uri());
    let d = query_get(&q, "digest").ok_or_else(|| {
        Error::bad_request(
            ErrorCode::DigestInvalid,
            "the digest query parameter is required",
        )
    })?;
    let digest = parse_digest(d)?;
    let range = chunk_range(req.headers())?;
    let body = data_stream(req.into_body());
    let done = app
        .storage
        .upload_finish(name.as_str(), id, &digest, range, body)
        .await;
    if let Err(e) = done {
        return Err(abandon_when_full(app, name, id, e).await);
    }
    Ok(created(name, &digest.to_string()))
}

/// An upload whose data no longer fits on the disk is cancelled at once: its partial data
/// is freed for the pushes that fit, and the client gets 507 (it starts over later).
async fn abandon_when_full(app: &Arc<App>, name: &RepoName, id: Uuid, e: UploadError) -> Error {
    if e.is_out_of_space() {
        if let Err(c) = app.storage.upload_abandon(name.as_str(), id).await {
            tracing::warn!(repo = name.as_str(), upload = %id, error = %c, "could not free an upload on a full disk");
        }
    }
    e.into()
}

pub async fn cancel(app: &Arc<App>, name: &RepoName, id: Uuid) -> Result<Response<Body>> {
    app.storage.upload_cancel(name.as_str(), id).await?;
    Ok(status(StatusCode::NO_CONTENT))
}
