//! Response and request body types, and small response builders.

use crate::error::Error;
use crate::oci::errors::error_body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::Frame;
use std::io;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: bytes in memory or a stream from a file or an upstream.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;
/// Every request body, whatever the transport (hyper's `Incoming`, or `Full` in tests).
pub type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn stream<S>(s: S) -> Body
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// The data frames of a request body as a stream (trailers are ignored).
pub fn data_stream(body: ReqBody) -> impl Stream<Item = Result<Bytes, BoxError>> + Unpin {
    BodyStream::new(body).try_filter_map(|f| std::future::ready(Ok(f.into_data().ok())))
}

/// Reads a whole request body, failing once it exceeds `limit` bytes.
pub async fn read_limited(body: ReqBody, limit: u64) -> Result<Option<Bytes>, BoxError> {
    let mut s = data_stream(body);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if buf.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

pub fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// [`hv`] of a string made for the header: its buffer becomes the value, uncopied.
pub fn hv_owned(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

// Header names the registry sends on hot paths, made once: a name given as a string is
// copied into a new allocation on every insert.
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const DOCKER_DISTRIBUTION_API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
pub const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A response with the given status and an empty body.
pub fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = code;
    r
}

/// A JSON response.
pub fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_bytes(
        code,
        serde_json::to_vec(value).unwrap_or_default(),
        "application/json",
    )
}

pub fn json_bytes(code: StatusCode, bytes: Vec<u8>, content_type: &str) -> Response<Body> {
    let len = bytes.len();
    let mut r = Response::new(full(bytes));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, hv(content_type));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// The only place an error becomes a response: the OCI error envelope, with the
/// message kept generic for internal faults (the details go to the log).
pub fn error_response(e: &Error, head: bool) -> Response<Body> {
    let (status, body) = match e {
        Error::Client {
            status,
            code,
            message,
        } => (*status, error_body(*code, message)),
        Error::TooManyRequests { message, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            error_body(crate::oci::ErrorCode::Toomanyrequests, message),
        ),
        Error::Unauthorized { message, .. } => (
            StatusCode::UNAUTHORIZED,
            error_body(crate::oci::ErrorCode::Unauthorized, message),
        ),
        Error::Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body(crate::oci::ErrorCode::Unknown, "internal server error"),
        ),
    };
    let mut r = json_bytes(status, body, "application/json");
    if head {
        *r.body_mut() = empty();
    }
    if let Error::TooManyRequests { retry_after, .. } = e {
        r.headers_mut()
            .insert(header::RETRY_AFTER, retry_after_secs(*retry_after).into());
    }
    match e {
        Error::Unauthorized { challenge, .. } => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, hv(challenge));
        }
        _ if status == StatusCode::UNAUTHORIZED => {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"agent-registry\""),
            );
        }
        _ => {}
    }
    r
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}
