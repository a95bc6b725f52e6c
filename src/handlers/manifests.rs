//! `/v2/<name>/manifests/<reference>`: GET, HEAD, PUT, DELETE for hosted repositories.

use crate::app::App;
use crate::error::{Error, Result};
use crate::oci::{manifest, Digest, ErrorCode, Reference, RepoName};
use crate::storage::{Commit, NewManifest};
use crate::web::body::{
    empty, full, hv, hv_owned, read_limited, status, Body, ReqBody, DOCKER_CONTENT_DIGEST,
};
use crate::web::{location, query};
use http::{header, HeaderValue, Request, Response, StatusCode};
use std::sync::Arc;

fn reference(r: &str) -> Result<Reference> {
    Reference::parse(r).map_err(|e| match e {
        crate::oci::NameError::Tag(_) => {
            Error::bad_request(ErrorCode::ManifestInvalid, format!("invalid tag {r:?}"))
        }
        other => Error::bad_request(ErrorCode::DigestInvalid, other.to_string()),
    })
}

/// A reference to read or delete. A tag outside the tag grammar can name nothing, so it
/// is unknown (404, as the conformance suite expects), not invalid; a malformed digest
/// stays a 400 DIGEST_INVALID.
fn existing_reference(name: &RepoName, r: &str) -> Result<Reference> {
    match Reference::parse(r) {
        Err(crate::oci::NameError::Tag(_)) => Err(unknown(name, r)),
        _ => reference(r),
    }
}

fn unknown(name: &RepoName, r: &str) -> Error {
    Error::not_found(
        ErrorCode::ManifestUnknown,
        format!("manifest {r} unknown in {name}"),
    )
}

/// Resolves a reference to a digest string in `name`.
async fn resolve(app: &App, name: &RepoName, r: &str) -> Result<String> {
    match existing_reference(name, r)? {
        Reference::Tag(t) => app
            .storage
            .meta
            .tag(name.as_str(), &t)
            .await?
            .ok_or_else(|| unknown(name, r)),
        Reference::Digest(d) => Ok(d.to_string()),
    }
}

/// A GET or HEAD, served when the pull policies allow it (`handlers::policy`).
pub async fn get(
    app: &Arc<App>,
    name: &RepoName,
    r: &str,
    head: bool,
    ctx: &crate::handlers::Ctx,
) -> Result<Response<Body>> {
    let resp = serve(app, name, r, head).await?;
    let src = crate::handlers::policy::Hosted { app, name };
    crate::handlers::policy::gate(app, name.as_str(), resp, &src, ctx).await
}

async fn serve(app: &Arc<App>, name: &RepoName, r: &str, head: bool) -> Result<Response<Body>> {
    let digest = resolve(app, name, r).await?;
    let row = app
        .storage
        .meta
        .manifest(name.as_str(), &digest)
        .await?
        .ok_or_else(|| unknown(name, r))?;
    let d: Digest = digest
        .parse()
        .map_err(|_| Error::Internal(format!("stored digest {digest} is malformed")))?;
    respond(app, &d, &row.media_type, row.size, head, None).await
}

/// Serves stored manifest bytes (hosted or cached) with their media type, re-verified
/// against the digest: bytes that do not match are never served.
pub async fn respond(
    app: &App,
    d: &Digest,
    media_type: &str,
    size: u64,
    head: bool,
    warning: Option<&str>,
) -> Result<Response<Body>> {
    if head {
        let mut r = status(StatusCode::OK);
        headers(&mut r, d, media_type, size, warning);
        return Ok(r);
    }
    let bytes = tokio::fs::read(app.storage.blobs.path(d))
        .await
        .map_err(|e| Error::Internal(format!("stored manifest {d}: {e}")))?;
    if !d.matches(&bytes) {
        return Err(Error::Internal(format!(
            "stored manifest {d}: bytes do not match"
        )));
    }
    Ok(respond_bytes(d, media_type, bytes.into(), warning))
}

/// A manifest response from bytes already verified.
pub fn respond_bytes(
    d: &Digest,
    media_type: &str,
    bytes: bytes::Bytes,
    warning: Option<&str>,
) -> Response<Body> {
    let size = bytes.len() as u64;
    let mut r = Response::new(full(bytes));
    // Room for these and the ones dispatch adds, without growing.
    *r.headers_mut() = http::HeaderMap::with_capacity(8);
    headers(&mut r, d, media_type, size, warning);
    r
}

fn headers(r: &mut Response<Body>, d: &Digest, media_type: &str, size: u64, warning: Option<&str>) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(DOCKER_CONTENT_DIGEST, hv_owned(d.to_string()));
    h.insert(header::ETAG, hv_owned(format!("\"{d}\"")));
    if let Some(w) = warning {
        h.insert(header::WARNING, hv(w));
    }
}

pub async fn put(
    app: &Arc<App>,
    name: &RepoName,
    r: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>> {
    let reference = reference(r)?;
    let limit = app.config.server.max_manifest_size;
    let too_big = || {
        Error::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::SizeInvalid,
            format!("manifest larger than the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let q = query(req.uri());
    let body = read_limited(req.into_body(), limit)
        .await
        .map_err(|e| Error::bad_request(ErrorCode::ManifestInvalid, format!("request body: {e}")))?
        .ok_or_else(too_big)?;
    let info = manifest::parse(&body, &content_type)
        .map_err(|e| Error::bad_request(ErrorCode::ManifestInvalid, e.to_string()))?;
    let digest = match &reference {
        Reference::Digest(d) => {
            if !d.matches(&body) {
                return Err(Error::bad_request(
                    ErrorCode::DigestInvalid,
                    format!("manifest body does not match digest {d}"),
                ));
            }
            d.clone()
        }
        Reference::Tag(_) => Digest::sha256_of(&body),
    };
    // Every tag is checked before anything is stored, so a bad `?tag=` leaves no trace.
    let mut tags: Vec<String> = Vec::new();
    if let Reference::Tag(t) = &reference {
        tags.push(t.clone());
    }
    for (k, v) in &q {
        if k == "tag" {
            if !crate::oci::name::valid_tag(v) {
                return Err(Error::bad_request(
                    ErrorCode::ManifestInvalid,
                    format!("invalid tag {v:?}"),
                ));
            }
            tags.push(v.clone());
        }
    }
    let meta = &app.storage.meta;
    let blobs: Vec<String> = info.blobs.iter().map(ToString::to_string).collect();
    let children: Vec<String> = info.children.iter().map(ToString::to_string).collect();
    // From the check to the commit, no garbage collection or eviction deletes a file:
    // a blob this manifest references cannot vanish under it.
    let _write = app.storage.write_lock.read().await;
    // A descriptor is checked against what the repository holds: present, and of the
    // size it declares (a client trusts that size when it reads the blob).
    let (blob_sizes, child_sizes) = info.sizes.split_at(blobs.len().min(info.sizes.len()));
    let pairs = |ds: &[String], sizes: &[u64]| -> Vec<(String, u64)> {
        ds.iter().cloned().zip(sizes.iter().copied()).collect()
    };
    let mut unmatched = meta
        .unmatched(name.as_str(), pairs(&blobs, blob_sizes), false)
        .await?;
    unmatched.extend(
        meta.unmatched(name.as_str(), pairs(&children, child_sizes), true)
            .await?,
    );
    match unmatched.first() {
        Some((d, _, None)) => {
            return Err(Error::bad_request(
                ErrorCode::ManifestBlobUnknown,
                format!("manifest references {d}, which is not in {name}"),
            ))
        }
        Some((d, declared, Some(stored))) => {
            return Err(Error::bad_request(
                ErrorCode::ManifestInvalid,
                format!(
                    "manifest gives {d} a size of {declared} bytes, but it has {stored} in {name}"
                ),
            ))
        }
        None => {}
    }
    match app.storage.blobs.put_bytes(&digest, &body).await? {
        Commit::Stored { .. } => {}
        Commit::Mismatch { actual } => {
            return Err(Error::Internal(format!(
                "manifest stored as {actual}, expected {digest}"
            )))
        }
    }
    let subject = info.subject.as_ref().map(ToString::to_string);
    meta.put_manifest(NewManifest {
        repo: name.to_string(),
        digest: digest.to_string(),
        media_type: info.media_type.clone(),
        size: body.len() as u64,
        artifact_type: info.artifact_type.clone(),
        subject: subject.clone(),
        annotations: info
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_string(a).ok()),
        refs: blobs.into_iter().chain(children).collect(),
        tags: tags.clone(),
    })
    .await?;
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::CREATED;
    location(&mut resp, &format!("/v2/{name}/manifests/{digest}"));
    let h = resp.headers_mut();
    h.insert(DOCKER_CONTENT_DIGEST, hv_owned(digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(s) = subject {
        h.insert("oci-subject", hv(&s));
    }
    // One OCI-Tag per applied tag, so a client that pushed by digest with `?tag=` knows
    // the tags were honoured.
    for t in &tags {
        h.append("oci-tag", hv(t));
    }
    Ok(resp)
}

pub async fn delete(app: &Arc<App>, name: &RepoName, r: &str) -> Result<Response<Body>> {
    let meta = &app.storage.meta;
    let found = match existing_reference(name, r)? {
        Reference::Tag(t) => meta.delete_tag(name.as_str(), &t).await?,
        Reference::Digest(d) => meta.delete_manifest(name.as_str(), &d.to_string()).await?,
    };
    if !found {
        return Err(unknown(name, r));
    }
    Ok(status(StatusCode::ACCEPTED))
}
