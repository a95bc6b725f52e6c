//! Response and request body types, small response builders, and [`TimedBody`], the
//! read deadline and rate floor every request body is served with.

use crate::error::Error;
use crate::oci::errors::error_body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, BodyStream, Empty, Full, StreamBody};
use hyper::body::Frame;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

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
        Error::Unavailable { message, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            error_body(crate::oci::ErrorCode::Unknown, message),
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
    if let Error::TooManyRequests { retry_after, .. } | Error::Unavailable { retry_after, .. } = e {
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

/// How slow a request body may be (`limits.body_idle_timeout`, `limits.body_min_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Longest wait for the next bytes; also the window the rate is averaged over.
    pub idle: Duration,
    /// Bytes per second over each `idle` of waiting; 0 = no floor.
    pub min_rate: u64,
}

/// Why a request body was cut.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimeout {
    #[error("no bytes for {0:?} (limits.body_idle_timeout)")]
    Idle(Duration),
    #[error("{bytes} bytes in {waited:?}, below limits.body_min_rate of {min_rate} bytes/s")]
    TooSlow {
        bytes: u64,
        waited: Duration,
        min_rate: u64,
    },
}

/// A request body with a read deadline and a rate floor. The clocks run only while the
/// handler waits for bytes that have not arrived (`poll_frame` pending): time the
/// handler spends elsewhere (writing a chunk to disk) is the server's, not the
/// client's, and a body nobody reads is never cut (hyper closes its connection after
/// the response). Once cut, the body yields a [`BodyTimeout`] error; the handler's
/// error response goes out and hyper closes the connection, the body being unfinished.
pub struct TimedBody<B> {
    inner: B,
    limits: BodyLimits,
    /// When the current wait for bytes began.
    pending_since: Option<Instant>,
    /// Waiting time of the current rate window before the current wait, and where the
    /// current wait starts counting for it.
    window_waited: Duration,
    counted_from: Instant,
    window_bytes: u64,
    timer: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, limits: BodyLimits) -> TimedBody<B> {
        TimedBody {
            inner,
            limits,
            pending_since: None,
            window_waited: Duration::ZERO,
            counted_from: Instant::now(),
            window_bytes: 0,
            timer: None,
            failed: false,
        }
    }

    /// Waiting time in the current rate window.
    fn waited(&self, now: Instant) -> Duration {
        match self.pending_since {
            Some(_) => self.window_waited + now.saturating_duration_since(self.counted_from),
            None => self.window_waited,
        }
    }

    /// At the end of a rate window: whether it brought enough bytes; starts the next.
    fn check_rate(&mut self, now: Instant) -> Result<(), BodyTimeout> {
        let waited = self.waited(now);
        if self.limits.min_rate == 0 || waited < self.limits.idle {
            return Ok(());
        }
        let need = self.limits.min_rate as f64 * waited.as_secs_f64();
        if (self.window_bytes as f64) < need {
            return Err(BodyTimeout::TooSlow {
                bytes: self.window_bytes,
                waited,
                min_rate: self.limits.min_rate,
            });
        }
        self.window_waited = Duration::ZERO;
        self.window_bytes = 0;
        self.counted_from = now;
        Ok(())
    }

    /// The body is waiting: `Err` once a clock has run out, else when to look again.
    fn deadline(&mut self, now: Instant) -> Result<Instant, BodyTimeout> {
        let since = *self.pending_since.get_or_insert(now);
        if self.counted_from < since {
            self.counted_from = since;
        }
        if now.saturating_duration_since(since) >= self.limits.idle {
            return Err(BodyTimeout::Idle(self.limits.idle));
        }
        self.check_rate(now)?;
        let idle = since + self.limits.idle;
        Ok(match self.limits.min_rate {
            0 => idle,
            _ => idle.min(now + self.limits.idle.saturating_sub(self.waited(now))),
        })
    }
}

impl<B> hyper::body::Body for TimedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                if this.pending_since.take().is_some() {
                    this.window_waited += now.saturating_duration_since(this.counted_from);
                }
                this.timer = None;
                if let Some(data) = frame.data_ref() {
                    this.window_bytes += data.len() as u64;
                }
                match this.check_rate(now) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(e) => this.fail(e),
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                let deadline = match this.deadline(Instant::now()) {
                    Ok(d) => d,
                    Err(e) => return this.fail(e),
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> TimedBody<B> {
    fn fail(&mut self, e: BodyTimeout) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::debug!(reason = %e, "request body cut");
        self.failed = true;
        self.timer = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::sync::mpsc;

    /// A request body fed frame by frame from the test.
    fn fed(limits: BodyLimits) -> (mpsc::Sender<Bytes>, TimedBody<ReqBody>) {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let b = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (
            tx,
            TimedBody::new(StreamBody::new(frames).boxed_unsync(), limits),
        )
    }

    #[tokio::test]
    async fn only_time_spent_waiting_for_the_client_counts() {
        let idle = Duration::from_millis(300);
        let (tx, mut body) = fed(BodyLimits { idle, min_rate: 0 });
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The handler is busy for longer than the idle timeout; the client's next bytes
        // come soon after it asks again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            later.send(Bytes::from_static(b"second")).await.unwrap();
        });
        assert!(body.frame().await.unwrap().is_ok());
        // Then silence: cut after the idle timeout, and the body ends there.
        let start = Instant::now();
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(start.elapsed() >= idle, "{:?}", start.elapsed());
        assert!(e.to_string().contains("limits.body_idle_timeout"), "{e}");
        assert!(body.frame().await.is_none());
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_below_the_rate_floor_is_cut_at_the_end_of_a_window() {
        let idle = Duration::from_millis(400);
        let (tx, mut body) = fed(BodyLimits {
            idle,
            min_rate: 10_000,
        });
        tokio::spawn(async move {
            // 100 bytes every 50ms: 2000 bytes/s, never a pause near the idle timeout.
            while tx.send(Bytes::from(vec![0u8; 100])).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let start = Instant::now();
        let e = loop {
            match body.frame().await.unwrap() {
                Ok(_) => assert!(start.elapsed() < Duration::from_secs(5), "never cut"),
                Err(e) => break e,
            }
        };
        assert!(start.elapsed() >= idle, "{:?}", start.elapsed());
        assert!(e.to_string().contains("limits.body_min_rate"), "{e}");
    }
}
