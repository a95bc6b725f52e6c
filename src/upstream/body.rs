//! Upstream response bodies: [`UpstreamBody`] streams chunks with the idle timeout
//! between them; `read_small` reads short bodies (errors, tokens) with a size cap.

use super::error::{TimeoutPhase, UpstreamError};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The request a response answers (`GET /v2/...`), carried in its extensions so body
/// errors can name it.
#[derive(Debug, Clone)]
pub(crate) struct Sent(pub String);

/// The chunks of an upstream body. Yields `Err` once (then ends) when the body breaks
/// off or no chunk arrives within the idle timeout.
pub struct UpstreamBody {
    body: Incoming,
    upstream: String,
    what: String,
    idle: Duration,
    /// Created on the first poll (a timer needs the runtime), reset after every chunk.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl UpstreamBody {
    pub(crate) fn new(resp: http::Response<Incoming>, upstream: &str, idle: Duration) -> Self {
        let (parts, body) = resp.into_parts();
        let what = parts
            .extensions
            .get::<Sent>()
            .map(|s| s.0.clone())
            .unwrap_or_else(|| "response body".to_string());
        UpstreamBody {
            body,
            upstream: upstream.to_string(),
            what,
            idle,
            timer: None,
            done: false,
        }
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for UpstreamBody {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let idle = this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        loop {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    timer.as_mut().reset(Instant::now() + idle);
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let e = UpstreamError::Body {
                        upstream: this.upstream.clone(),
                        what: this.what.clone(),
                        message: super::wire::chain(&e),
                    };
                    return this.fail(e);
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let e = UpstreamError::Timeout {
                    upstream: this.upstream.clone(),
                    what: this.what.clone(),
                    phase: TimeoutPhase::Idle,
                    after: idle,
                };
                this.fail(e)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.done || self.body.is_end_stream() {
            true => (0, Some(0)),
            false => (0, None),
        }
    }
}

/// Reads a body of at most `limit` bytes; `Ok(None)` when it is longer (the rest is
/// dropped with the connection). Errors name `what`.
pub(crate) async fn read_small(
    body: Incoming,
    limit: usize,
    upstream: &str,
    what: &str,
    idle: Duration,
) -> Result<Option<Bytes>, UpstreamError> {
    let mut body = body;
    let mut out = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    upstream: upstream.to_string(),
                    what: what.to_string(),
                    phase: TimeoutPhase::Idle,
                    after: idle,
                })
            }
            Ok(None) => return Ok(Some(out.freeze())),
            Ok(Some(Err(e))) => {
                return Err(UpstreamError::Body {
                    upstream: upstream.to_string(),
                    what: what.to_string(),
                    message: super::wire::chain(&e),
                })
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Ok(None);
            }
            out.extend_from_slice(&data);
        }
    }
}
