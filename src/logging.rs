//! The server's log writer: formatted lines are appended to a buffer in memory and a
//! writer thread hands them to stderr in large writes, as nginx's `access_log ...
//! buffer= flush=` does. A request never waits for the log's file descriptor (a pipe to
//! journald, a slow disk): the buffer is flushed every [`FLUSH_EVERY`], at once for a
//! warning or an error, and by the process on its way out ([`flush`]).
//!
//! Bounded: past [`HIGH_WATER`] bytes waiting (the reader of stderr is stuck), the
//! thread that logs writes the buffer itself, so memory stays bounded and no line is
//! dropped; the request path only pays then.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// The writer thread is woken early once this much is waiting.
const WAKE_AT: usize = 64 << 10;
/// Past this much waiting the logging thread writes the buffer itself.
const HIGH_WATER: usize = 4 << 20;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Held while bytes are written to the sink, so lines leave in order.
    sink: Mutex<Box<dyn Write + Send>>,
}

struct State {
    buf: Vec<u8>,
    urgent: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Moves what is waiting to the sink. The sink lock is taken before the buffer is
    /// swapped, so two flushes never reorder lines.
    fn flush(&self) {
        let mut sink = lock(&self.sink);
        let taken = {
            let mut st = lock(&self.state);
            st.urgent = false;
            std::mem::take(&mut st.buf)
        };
        if taken.is_empty() {
            return;
        }
        // A log that cannot be written (stderr closed) is dropped; nothing to tell.
        let _ = sink.write_all(&taken);
        let _ = sink.flush();
        drop(sink);
        // Give the allocation back for the next round unless it grew past the norm.
        let mut taken = taken;
        taken.clear();
        if taken.capacity() <= WAKE_AT * 4 {
            let mut st = lock(&self.state);
            if st.buf.is_empty() && st.buf.capacity() < taken.capacity() {
                st.buf = taken;
            }
        }
    }
}

/// A `MakeWriter` for tracing-subscriber's fmt layer; clones share one buffer.
#[derive(Clone)]
pub struct Buffered {
    shared: Arc<Shared>,
}

static GLOBAL: OnceLock<Buffered> = OnceLock::new();

impl Buffered {
    /// The process's buffered stderr, with its writer thread (made on first use).
    pub fn stderr() -> Buffered {
        GLOBAL
            .get_or_init(|| Buffered::start(Box::new(io::stderr())))
            .clone()
    }

    /// A buffer in front of `sink`, flushed by a thread of its own.
    pub fn start(sink: Box<dyn Write + Send>) -> Buffered {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(WAKE_AT),
                urgent: false,
            }),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || loop {
                let Some(shared) = weak.upgrade() else { return };
                {
                    let st = lock(&shared.state);
                    if st.buf.len() < WAKE_AT && !st.urgent {
                        let _ = shared
                            .wake
                            .wait_timeout(st, FLUSH_EVERY)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
                shared.flush();
            });
        if spawned.is_err() {
            // No thread: every line is written by its caller (see `LineWriter::drop`).
            lock(&shared.state).urgent = true;
        }
        Buffered { shared }
    }

    pub fn flush(&self) {
        self.shared.flush();
    }
}

/// Writes what the log buffer holds now (call before exiting).
pub fn flush() {
    if let Some(b) = GLOBAL.get() {
        b.flush();
    }
}

/// One event's output: appended to the buffer as the formatter writes it; on drop the
/// writer thread is woken when the line is a warning or error or the buffer is large.
pub struct LineWriter<'a> {
    shared: &'a Arc<Shared>,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        lock(&self.shared.state).buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        let waiting = {
            let mut st = lock(&self.shared.state);
            st.urgent |= self.urgent;
            st.buf.len()
        };
        if waiting >= HIGH_WATER {
            self.shared.flush();
        } else if self.urgent || waiting >= WAKE_AT {
            self.shared.wake.notify_one();
        }
    }
}

impl Buffered {
    /// A writer for one line; `urgent` wakes the writer thread at the line's end.
    fn writer(&self, urgent: bool) -> LineWriter<'_> {
        LineWriter {
            shared: &self.shared,
            urgent,
        }
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        self.writer(false)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter<'a> {
        self.writer(*meta.level() <= Level::WARN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink the test can read, counting the writes it got.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut s = lock(&self.0);
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(b: &Buffered, text: &str, urgent: bool) {
        b.writer(urgent).write_all(text.as_bytes()).unwrap();
    }

    fn wait_for(sink: &Sink, n: usize, within: Duration) -> Vec<u8> {
        let end = Instant::now() + within;
        loop {
            let s = lock(&sink.0).0.clone();
            if s.len() >= n || Instant::now() > end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn lines_arrive_in_order_in_few_writes() {
        let sink = Sink::default();
        let b = Buffered::start(Box::new(sink.clone()));
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        for i in 0..1000 {
            line(&b, &format!("line {i}\n"), false);
        }
        let got = wait_for(&sink, want.len(), Duration::from_secs(5));
        assert_eq!(String::from_utf8(got).unwrap(), want);
        let writes = lock(&sink.0).1;
        assert!(writes < 100, "{writes} writes for 1000 lines");
    }

    #[test]
    fn an_error_line_is_written_without_waiting_for_the_period() {
        let sink = Sink::default();
        let b = Buffered::start(Box::new(sink.clone()));
        // Let the writer thread go to sleep for its period first.
        std::thread::sleep(Duration::from_millis(5));
        let t = Instant::now();
        line(&b, "boom\n", true);
        let got = wait_for(&sink, 5, Duration::from_secs(5));
        assert_eq!(got, b"boom\n");
        assert!(t.elapsed() < FLUSH_EVERY, "{:?}", t.elapsed());
    }

    #[test]
    fn flush_writes_what_waits_and_a_stuck_reader_bounds_the_buffer() {
        let sink = Sink::default();
        let b = Buffered::start(Box::new(sink.clone()));
        line(&b, "last words\n", false);
        b.flush();
        assert_eq!(lock(&sink.0).0, b"last words\n");
        // The writer thread held up (the sink lock taken): the loggers write themselves
        // past the high-water mark, so the buffer never holds much more than it.
        let held = lock(&b.shared.sink);
        let chunk = "x".repeat(1 << 10) + "\n";
        let writer = {
            let b = b.clone();
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                for _ in 0..(HIGH_WATER >> 10) + 10 {
                    line(&b, &chunk, false);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(lock(&b.shared.state).buf.len() <= HIGH_WATER + chunk.len());
        drop(held);
        writer.join().unwrap();
        b.flush();
        let total = lock(&sink.0).0.len();
        assert_eq!(
            total,
            "last words\n".len() + ((HIGH_WATER >> 10) + 10) * chunk.len()
        );
    }
}
