//! Closing idle and slow connections: [`IdleIo`] wraps a socket and stamps every read and
//! write into a shared [`Activity`]; [`Activity::expired`] resolves once the connection
//! has had no request in flight and no bytes moving for the keep-alive timeout, or once
//! an HTTP/1 request head has been arriving for longer than the header timeout. A request
//! is in flight from its dispatch until its response body has been sent
//! ([`InFlightBody`]); a request body that stalls is cut by `body::TimedBody`.
//!
//! The header clock runs from the connection's start until its first request is
//! dispatched, and again from the first byte of each later request. (hyper's own
//! `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, which would cut idle keep-alive connections after the header timeout; it is
//! set no shorter than the keep-alive timeout and this clock does the header part.)
//! HTTP/2 connections, recognised by their preface, have no header clock.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When a connection last moved bytes, and how many of its requests are being handled.
pub struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds since `start` + 1 when a request head began arriving; 0: none.
    head_since: AtomicU64,
    /// The connection speaks HTTP/2 (no header clock).
    h2: AtomicBool,
    /// Whether the first bytes were looked at for the HTTP/2 preface.
    sniffed: AtomicBool,
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            // The first request's head is due from the start.
            head_since: AtomicU64::new(1),
            h2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived: a request head starts unless one is in flight or being read.
    fn bytes_read(&self, first: &[u8]) {
        if !self.sniffed.swap(true, Ordering::Relaxed) && first.starts_with(H2_PREFACE) {
            self.h2.store(true, Ordering::Relaxed);
            self.head_since.store(0, Ordering::Relaxed);
        }
        if self.h2.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        let _ = self.head_since.compare_exchange(
            0,
            self.now_ms() + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// How long the current request head has been arriving, if one is.
    fn head_for(&self) -> Option<Duration> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(
                self.now_ms().saturating_sub(since - 1),
            )),
        }
    }

    /// Records activity now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        self.touch();
        RequestGuard(self.clone())
    }

    /// Resolves when no request is in flight and nothing was read or written for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        self.expired(timeout, None).await;
    }

    /// Resolves (with why) when the connection was idle for `idle_timeout`, or when a
    /// request head has been arriving for longer than `header_timeout`.
    pub async fn expired(
        &self,
        idle_timeout: Duration,
        header_timeout: Option<Duration>,
    ) -> &'static str {
        loop {
            let idle = self.idle_for();
            if idle >= idle_timeout && self.in_flight.load(Ordering::Relaxed) == 0 {
                return "idle";
            }
            let mut wait = match idle_timeout.checked_sub(idle) {
                Some(left) if !left.is_zero() => left,
                _ => idle_timeout,
            };
            if let (Some(limit), Some(head)) = (header_timeout, self.head_for()) {
                if head >= limit {
                    return "header_timeout";
                }
                wait = wait.min(limit - head);
            } else if header_timeout.is_some() {
                // A head may start at any moment: look again soon.
                wait = wait.min(Duration::from_millis(250));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counts one request in flight; see [`Activity::request`].
pub struct RequestGuard(Arc<Activity>);

/// A response body that keeps its request counted in flight until the body has been
/// sent whole (or dropped): a response in progress is never idle, however slowly the
/// client reads it. (The socket's write readiness is no measure of that: the kernel
/// wakes a writer only once a good part of the send buffer has drained, which for a
/// slow reader can take longer than the keep-alive timeout.)
pub struct InFlightBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
}

impl<B> InFlightBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> InFlightBody<B> {
        InFlightBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records its reads and writes in an [`Activity`].
pub struct IdleIo<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> IdleIo<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> IdleIo<I> {
        IdleIo { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            self.activity.bytes_read(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
