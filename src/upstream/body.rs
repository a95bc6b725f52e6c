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

/// A token bucket of bytes per second shared by all transfers from one upstream, with
/// one second of burst. Readers take what they received and sleep off any debt before
/// reading on, so TCP backpressure holds the upstream to the rate.
pub struct Bandwidth {
    rate: f64,
    state: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl Bandwidth {
    pub fn new(bytes_per_second: u64) -> Bandwidth {
        let rate = bytes_per_second as f64;
        Bandwidth {
            rate,
            state: std::sync::Mutex::new((rate, std::time::Instant::now())),
        }
    }

    /// Takes `n` bytes; returns how long to wait before reading more.
    pub fn take(&self, n: usize) -> Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * self.rate;
        st.0 = (st.0 + refill).min(self.rate) - n as f64;
        st.1 = now;
        match st.0 < 0.0 {
            true => Duration::from_secs_f64(-st.0 / self.rate),
            false => Duration::ZERO,
        }
    }
}

/// The chunks of an upstream body. Yields `Err` once (then ends) when the body breaks
/// off or no chunk arrives within the idle timeout.
pub struct UpstreamBody {
    body: Incoming,
    upstream: String,
    what: String,
    idle: Duration,
    /// Created on the first poll (a timer needs the runtime), reset after every chunk.
    timer: Option<Pin<Box<Sleep>>>,
    /// The upstream's bandwidth cap, and the pause it imposes before the next read.
    bandwidth: Option<std::sync::Arc<Bandwidth>>,
    pace: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl UpstreamBody {
    pub(crate) fn new(
        resp: http::Response<Incoming>,
        upstream: &str,
        idle: Duration,
        bandwidth: Option<std::sync::Arc<Bandwidth>>,
    ) -> Self {
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
            bandwidth,
            pace: None,
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
        if let Some(pace) = this.pace.as_mut() {
            if pace.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pace = None;
            // The pause was ours, not the upstream's: the idle clock starts now.
            if let Some(t) = this.timer.as_mut() {
                t.as_mut().reset(Instant::now() + idle);
            }
        }
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
                    if let Some(bw) = &this.bandwidth {
                        let wait = bw.take(data.len());
                        if !wait.is_zero() {
                            this.pace = Some(Box::pin(tokio::time::sleep(wait)));
                        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_allows_a_second_of_burst_then_paces() {
        let bw = Bandwidth::new(1000);
        assert_eq!(bw.take(600), Duration::ZERO);
        assert_eq!(bw.take(400), Duration::ZERO);
        let wait = bw.take(500);
        let ms = wait.as_millis();
        assert!((480..=500).contains(&ms), "{wait:?}");
    }
}
