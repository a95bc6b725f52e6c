//! The access log: one line (target `access`) and one queued record per request,
//! written when the response body ends, with what was actually sent.

use crate::app::App;
use crate::web::body::Body;
use bytes::Bytes;
use http::Method;
use std::sync::Arc;
use std::time::Instant;

/// How a response body ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every byte was handed to the connection.
    Ok,
    /// The body broke off with an error (an upstream that failed mid-blob, a digest
    /// mismatch): the client got a truncated response.
    Failed,
    /// The connection dropped the body before its end (the client went away).
    Aborted,
}

impl Outcome {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

/// What the access log line of a request needs once its body has ended.
pub(super) struct Finished {
    pub(super) app: Arc<App>,
    pub(super) start: Instant,
    pub(super) client: std::net::IpAddr,
    pub(super) identity: Option<String>,
    pub(super) method: Method,
    pub(super) route: &'static str,
    pub(super) repo: Option<String>,
    pub(super) status: u16,
    /// The announced `Content-Length`.
    pub(super) length: Option<u64>,
    pub(super) cache: &'static str,
    pub(super) upstream: Option<String>,
}

impl Finished {
    /// One access-log line (target `access`) and one queued record.
    pub(super) fn log(self, outcome: Outcome, bytes: Option<u64>) {
        let elapsed = self.start.elapsed();
        let shown = bytes.map_or_else(|| "-".to_string(), |b| b.to_string());
        let fields = (
            self.identity.as_deref().unwrap_or("-"),
            self.repo.as_deref().unwrap_or("-"),
            self.upstream.as_deref().unwrap_or("-"),
        );
        let expected = self
            .length
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    client = %self.client,
                    identity = fields.0,
                    method = %self.method,
                    route = self.route,
                    repo = fields.1,
                    status = self.status,
                    bytes = %shown,
                    expected = %expected,
                    outcome = outcome.as_str(),
                    cache = self.cache,
                    upstream = fields.2,
                    duration_us = elapsed.as_micros() as u64,
                )
            };
        }
        // A body that broke off is a failure someone should see; a client that left
        // early is routine.
        match outcome {
            Outcome::Failed => line!(warn),
            Outcome::Ok | Outcome::Aborted => line!(info),
        }
        let auth = self.app.auth.clone();
        auth.log_access(crate::auth::store::AccessEntry {
            ts_ms: crate::auth::store::now_ms(),
            client: self.client,
            user: self.identity,
            method: self.method,
            route: self.route,
            repo: self.repo,
            status: self.status,
            bytes,
            duration_us: elapsed.as_micros() as u64,
            cache: self.cache,
            outcome: outcome.as_str(),
        });
    }
}

/// A response body that writes the request's access-log line when it ends: at its
/// last frame, at an error, or when the connection drops it early. Frames pass
/// through untouched (sendfile placeholders keep their address).
pub(super) struct AccessLogged {
    inner: Body,
    sent: u64,
    done: Option<Finished>,
}

impl AccessLogged {
    pub(super) fn wrap(inner: Body, done: Finished) -> Body {
        use http_body_util::BodyExt;
        AccessLogged {
            inner,
            sent: 0,
            done: Some(done),
        }
        .boxed_unsync()
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            done.log(outcome, Some(self.sent));
        }
    }
}

impl http_body::Body for AccessLogged {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(Outcome::Ok);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Outcome::Failed),
            Poll::Ready(None) => this.finish(Outcome::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for AccessLogged {
    fn drop(&mut self) {
        // hyper stops polling once it has sent the announced length; anything short of
        // that is a client that went away.
        let complete = self
            .done
            .as_ref()
            .is_some_and(|d| d.length == Some(self.sent));
        self.finish(if complete {
            Outcome::Ok
        } else {
            Outcome::Aborted
        });
    }
}
