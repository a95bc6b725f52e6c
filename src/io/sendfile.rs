//! Zero-copy blob bodies on plain-HTTP/1 connections: the bytes of a file go from the
//! page cache to the socket with sendfile(2), never through user space.
//!
//! hyper writes response bodies from memory, so a file cannot be handed to it. Instead a
//! body on such a connection yields *placeholder* frames: slices of one static, never
//! written buffer, each recorded with the file range it stands for in the connection's
//! [`Slot`]. [`SendfileIo`], the connection's socket, recognises a placeholder slice by
//! its address when hyper writes it and sends the recorded range with sendfile(2) in its
//! place. hyper keeps doing all the framing (status line, headers, `Content-Length`,
//! keep-alive, pipelining); it only sees a write that took the placeholder's bytes.
//!
//! Invariants:
//! - Placeholders are only made for HTTP/1 requests on plain TCP connections served
//!   through `SendfileIo` (the request runs inside [`scope`]); TLS and HTTP/2 copy.
//! - hyper must queue body frames as they are (its vectored "queue" write strategy, forced
//!   with `writev(true)` in the server builder), never copy them into its own buffer.
//! - A placeholder slice is sent only when the oldest recorded range has exactly its
//!   length; anything else is an error that closes the connection, never zeros on the wire.
//! - A file that ends before its recorded range is an error, not a short body.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most bytes one placeholder frame stands for.
pub const FRAME: usize = 1 << 20;

/// Never written: all placeholders are slices of it (it lives in `.bss`, so it costs no
/// memory until read, and nothing reads it).
static PLACEHOLDER: [u8; FRAME] = [0; FRAME];

fn is_placeholder(b: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let p = b.as_ptr() as usize;
    !b.is_empty() && p >= start && p + b.len() <= start + FRAME
}

/// A file range a placeholder stands for.
struct Range {
    file: Arc<File>,
    pos: u64,
    len: usize,
}

/// The file ranges of the placeholder frames a connection has been given and not yet
/// written, oldest first.
#[derive(Default)]
pub struct Slot {
    ranges: Mutex<VecDeque<Range>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    /// A frame standing for `len` bytes of `file` from `pos`, at most [`FRAME`]: the
    /// connection sends those bytes from the file when it writes the frame.
    pub fn frame(&self, file: &Arc<File>, pos: u64, len: u64) -> Bytes {
        let len = usize::try_from(len).unwrap_or(FRAME).min(FRAME);
        if len == 0 {
            // hyper never writes an empty frame: a range for it would never be taken.
            return Bytes::new();
        }
        lock(&self.ranges).push_back(Range {
            file: file.clone(),
            pos,
            len,
        });
        Bytes::from_static(&PLACEHOLDER[..len])
    }
}

tokio::task_local! {
    static CONNECTION: Arc<Slot>;
}

/// The slot of the connection the current request arrived on, if its bodies may use
/// placeholders. Call it while handling the request (bodies are polled elsewhere).
pub fn current() -> Option<Arc<Slot>> {
    CONNECTION.try_with(Arc::clone).ok()
}

/// Runs a request's handler with `slot` as [`current`] (None: no placeholders).
pub async fn scope<F: Future>(slot: Option<Arc<Slot>>, handler: F) -> F::Output {
    match slot {
        Some(slot) => CONNECTION.scope(slot, handler).await,
        None => handler.await,
    }
}

/// A plain TCP connection that writes placeholder frames with sendfile(2).
pub struct SendfileIo {
    tcp: TcpStream,
    slot: Arc<Slot>,
}

impl SendfileIo {
    pub fn new(tcp: TcpStream) -> (SendfileIo, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        (
            SendfileIo {
                tcp,
                slot: slot.clone(),
            },
            slot,
        )
    }

    /// Sends the file range behind the placeholder `b` (or its rest, after a partial
    /// write); returns the bytes sent.
    fn poll_send_placeholder(&mut self, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut ranges = lock(&self.slot.ranges);
            let Some(range) = ranges.front_mut() else {
                return Poll::Ready(Err(io::Error::other(
                    "placeholder frame without a file range",
                )));
            };
            if range.len != b.len() {
                return Poll::Ready(Err(io::Error::other(format!(
                    "placeholder frame of {} bytes, file range of {}",
                    b.len(),
                    range.len
                ))));
            }
            let mut pos = range.pos;
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.tcp, &*range.file, Some(&mut pos), range.len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("file ended at {}, {} bytes short", range.pos, range.len),
                    )))
                }
                Ok(n) => {
                    range.pos += n as u64;
                    range.len -= n;
                    if range.len == 0 {
                        ranges.pop_front();
                    }
                    crate::metrics::sendfile_bytes(n);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for SendfileIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if is_placeholder(buf) {
            return self.poll_send_placeholder(cx, buf);
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    /// Plain slices before the first placeholder go out with one writev; a placeholder at
    /// the front goes out with sendfile. A short count makes hyper call again with the rest.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs.iter().position(|b| is_placeholder(b)) {
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
            Some(0) => self.poll_send_placeholder(cx, &bufs[0]),
            Some(i) => Pin::new(&mut self.tcp).poll_write_vectored(cx, &bufs[..i]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::file::file_of;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (SendfileIo, Arc<Slot>, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (io, slot) = SendfileIo::new(server);
        (io, slot, client)
    }

    #[tokio::test]
    async fn placeholders_become_file_bytes_between_plain_writes() {
        let data: Vec<u8> = (0..3 * FRAME + 777).map(|i| (i % 251) as u8).collect();
        let (_t, file) = file_of(&data);
        let (mut io, slot, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // Head, then the file in frames (a range that starts mid-file), then a trailer,
        // written the way hyper does: vectored, advancing by what each write took.
        let mut frames: Vec<Bytes> = vec![Bytes::from_static(b"HEAD\r\n")];
        let (start, end) = (5u64, data.len() as u64);
        let mut pos = start;
        while pos < end {
            let f = slot.frame(&file, pos, end - pos);
            pos += f.len() as u64;
            frames.push(f);
        }
        frames.push(Bytes::from_static(b"TAIL"));
        let mut queue: VecDeque<Bytes> = frames.into();
        while !queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = queue.iter().map(|b| IoSlice::new(b)).collect();
            let mut n = io.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            while n > 0 {
                let front = queue.front_mut().unwrap();
                let take = n.min(front.len());
                bytes::Buf::advance(front, take);
                n -= take;
                if front.is_empty() {
                    queue.pop_front();
                }
            }
        }
        io.shutdown().await.unwrap();
        drop(io);
        let got = reader.await.unwrap();
        let mut want = b"HEAD\r\n".to_vec();
        want.extend_from_slice(&data[start as usize..]);
        want.extend_from_slice(b"TAIL");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
        assert!(lock(&slot.ranges).is_empty());
    }

    #[tokio::test]
    async fn a_short_file_or_a_stray_placeholder_is_an_error() {
        let (_t, file) = file_of(b"0123456789");
        let (mut io, slot, _client) = pair().await;
        let f = slot.frame(&file, 4, 20);
        // Six bytes go out, then the file has no more.
        let e = io.write_all(&f).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");

        let (mut io, _slot, _client) = pair().await;
        let stray = Bytes::from_static(&PLACEHOLDER[..10]);
        assert!(io.write(&stray).await.is_err());

        let (mut io, slot, _client) = pair().await;
        let f = slot.frame(&file, 0, 10);
        assert!(
            io.write(&f[..5]).await.is_err(),
            "length must match the range"
        );

        // An empty frame records nothing, so it cannot put the ranges out of step.
        let (_io, slot, _client) = pair().await;
        assert!(slot.frame(&file, 3, 0).is_empty());
        assert!(lock(&slot.ranges).is_empty());
    }

    #[test]
    fn only_the_static_buffer_is_a_placeholder() {
        assert!(is_placeholder(&PLACEHOLDER[..1]));
        assert!(is_placeholder(&PLACEHOLDER[FRAME - 1..]));
        assert!(!is_placeholder(&PLACEHOLDER[..0]));
        assert!(!is_placeholder(&[0u8; 64]));
    }
}
