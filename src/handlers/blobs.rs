//! `/v2/<name>/blobs/<digest>`: GET and HEAD (with `Range`), DELETE.

use crate::app::App;
use crate::error::{Error, Result};
use crate::io::file;
use crate::oci::{Digest, ErrorCode, RepoName};
use crate::web::body::{empty, full, hv, hv_owned, status, stream, Body, DOCKER_CONTENT_DIGEST};
use crate::web::range::{parse_range, RangeReq};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use std::sync::Arc;

pub fn parse_digest(d: &str) -> Result<Digest> {
    d.parse().map_err(|e: crate::oci::DigestError| {
        Error::bad_request(ErrorCode::DigestInvalid, e.to_string())
    })
}

pub async fn get(
    app: &Arc<App>,
    name: &RepoName,
    d: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>> {
    let digest = parse_digest(d)?;
    let unknown = || {
        Error::not_found(
            ErrorCode::BlobUnknown,
            format!("blob {digest} unknown in {name}"),
        )
    };
    if app
        .storage
        .meta
        .blob_in_repo(name.as_str(), &digest.to_string())
        .await?
        .is_none()
    {
        return Err(unknown());
    }
    serve_file(app, &digest, headers, head, None)
        .await?
        .ok_or_else(unknown)
}

/// Serves a committed blob from disk, honouring `Range`. None if it is not on disk.
/// The file is opened once and streamed from that handle, so an eviction that unlinks
/// it mid-stream cannot cut the body; `pin` (a cache pin) lives as long as the body.
///
/// One blocking-pool trip opens the file, learns its size and reads the first chunk, so a
/// blob of up to `file::CHUNK` bytes costs one trip in all and goes out as one frame.
pub async fn serve_file(
    app: &App,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
    pin: Option<crate::cache::Pin>,
) -> Result<Option<Response<Body>>> {
    let path = app.storage.blobs.path(digest);
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // With sendfile the bytes never pass through memory; otherwise the first chunk is
    // read in the same blocking trip as the open.
    let splice = match head {
        true => None,
        false => crate::io::sendfile::current(),
    };
    let room = (!head && splice.is_none()).then(file::reserve);
    let opened = match room {
        // Nothing to read: open and stat (page-cache metadata, microseconds) right here
        // rather than paying two thread hand-offs through the blocking pool.
        None => open_blob(&path, range.as_deref(), None)?,
        room => tokio::task::spawn_blocking(move || open_blob(&path, range.as_deref(), room))
            .await
            .map_err(std::io::Error::other)??,
    };
    let Some(Opened {
        file,
        size,
        range,
        first,
        reader,
    }) = opened
    else {
        return Ok(None);
    };
    let (code, start, len) = match range {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeReq::Unsatisfiable => return Ok(Some(unsatisfiable(size))),
    };
    let body = match first {
        _ if head || len == 0 => empty(),
        Some(first) if first.len() as u64 == len => full(first),
        first => {
            let file = Arc::new(file);
            let chunks = file::chunks(file, start, start + len, first, reader, splice);
            // The pin lives as long as the body streams.
            stream(futures_util::StreamExt::map(chunks, move |c| {
                let _held = &pin;
                c
            }))
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    blob_headers(&mut resp, digest, code, start, len, size);
    Ok(Some(resp))
}

/// A blob file opened for a response.
struct Opened {
    file: std::fs::File,
    size: u64,
    range: RangeReq,
    /// The first chunk of the requested bytes (None for HEAD, unsatisfiable ranges and
    /// sendfile).
    first: Option<bytes::Bytes>,
    /// Counted among the readers into memory when `room` was given.
    reader: Option<file::Reader>,
}

/// Blocking: open, stat, resolve the range, read the first chunk into `room` (None for
/// HEAD and sendfile). None if not on disk.
fn open_blob(
    path: &std::path::Path,
    range: Option<&str>,
    room: Option<file::Reservation>,
) -> std::io::Result<Option<Opened>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let range = parse_range(range, size);
    let reader = room.is_some().then(file::Reader::new);
    let first = match (room, &range) {
        (None, _) | (_, RangeReq::Unsatisfiable) => None,
        (Some(_), RangeReq::Full) if size == 0 => Some(bytes::Bytes::new()),
        (Some(room), RangeReq::Full) => Some(room.read(&file, 0, size)?),
        (Some(room), RangeReq::Part(s, e)) => Some(room.read(&file, *s, e - s + 1)?),
    };
    Ok(Some(Opened {
        file,
        size,
        range,
        first,
        reader,
    }))
}

pub fn unsatisfiable(size: u64) -> Response<Body> {
    let mut r = status(StatusCode::RANGE_NOT_SATISFIABLE);
    r.headers_mut()
        .insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
    r
}

/// Headers of a blob response: length, digest, ranges.
pub fn blob_headers(
    resp: &mut Response<Body>,
    digest: &Digest,
    code: StatusCode,
    start: u64,
    len: u64,
    size: u64,
) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(DOCKER_CONTENT_DIGEST, hv_owned(digest.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv_owned(format!("\"{digest}\"")));
    if code == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{}/{size}", start + len - 1)),
        );
    }
}

pub async fn delete(app: &Arc<App>, name: &RepoName, d: &str) -> Result<Response<Body>> {
    let digest = parse_digest(d)?;
    if !app
        .storage
        .meta
        .unlink_blob(name.as_str(), &digest.to_string())
        .await?
    {
        return Err(Error::not_found(
            ErrorCode::BlobUnknown,
            format!("blob {digest} unknown in {name}"),
        ));
    }
    Ok(status(StatusCode::ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(h: &str, size: u64, expected: RangeReq) {
        assert_eq!(parse_range(Some(h), size), expected, "{h} of {size}");
    }

    #[test]
    fn ranges() {
        check("bytes=0-9", 100, RangeReq::Part(0, 9));
        check("bytes=90-", 100, RangeReq::Part(90, 99));
        check("bytes=-10", 100, RangeReq::Part(90, 99));
        check("bytes=-200", 100, RangeReq::Part(0, 99));
        check("bytes=50-500", 100, RangeReq::Part(50, 99));
        check("bytes=100-", 100, RangeReq::Unsatisfiable);
        check("bytes=100-200", 100, RangeReq::Unsatisfiable);
        check("bytes=9-1", 100, RangeReq::Unsatisfiable);
        check("bytes=x-1", 100, RangeReq::Unsatisfiable);
        check("bytes=-0", 100, RangeReq::Unsatisfiable);
        check("bytes=0-0", 0, RangeReq::Unsatisfiable);
        check("bytes=0-1,5-6", 100, RangeReq::Full);
        check("items=0-1", 100, RangeReq::Full);
        assert_eq!(parse_range(None, 5), RangeReq::Full);
    }
}
