//! Reading blob files for responses: positioned reads straight into each chunk's own
//! buffer (no zeroing, no intermediate copy as with `tokio::fs::File`), one blocking-pool
//! trip per chunk, and one byte budget shared by every response in flight so memory
//! stays flat however many clients download at once. Used for committed blobs
//! (`server::blobs`) and for fills in progress (`cache::fill`). Knows nothing about HTTP.

use bytes::Bytes;
use futures_util::Stream;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest read: fewer blocking-pool trips and syscalls per MiB while few clients read.
pub const CHUNK: usize = 1 << 20;
/// A remainder up to this size is read in one go rather than as a chunk and a small
/// tail (a "1 MiB" layer is usually a little over 1 MiB): one trip instead of two.
const LAST_CHUNK: usize = CHUNK + CHUNK / 4;
/// Smallest read, when very many clients read at once: memory grows by about this much
/// per extra download.
pub const MIN_CHUNK: usize = 32 << 10;
/// Bytes of chunks alive at once across all responses. Readers split it evenly (a chunk
/// holds its share until the connection has written it out); past it, reads are
/// `MIN_CHUNK`.
const BUDGET: usize = 32 << 20;

static READERS: AtomicUsize = AtomicUsize::new(0);

/// A response reading a file. While it lives it counts among the readers that split the
/// budget, so 4 downloads read 1 MiB at a time and 1,000 read 32 KiB at a time.
pub struct Reader(());

impl Reader {
    pub fn new() -> Reader {
        READERS.fetch_add(1, Ordering::Relaxed);
        Reader(())
    }
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        READERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The read size for one of `readers` readers: an even share of the budget, a power of two
/// between `MIN_CHUNK` and `CHUNK`.
fn fair_chunk(readers: usize) -> usize {
    let share = BUDGET / readers.max(1);
    let pow2 = match share.checked_next_power_of_two() {
        Some(p) if p == share => p,
        Some(p) => p / 2,
        None => CHUNK,
    };
    pow2.clamp(MIN_CHUNK, CHUNK)
}

fn budget() -> &'static Arc<Semaphore> {
    static BUDGET_SEM: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BUDGET_SEM.get_or_init(|| Arc::new(Semaphore::new(BUDGET)))
}

/// Large buffers, kept for reuse: a fresh 1 MiB allocation is mmapped and zeroed page by
/// page by the kernel, which cost more than the read itself. The budget bounds how many
/// exist at all (they are charged their whole capacity), so the pool never holds more
/// than the budget.
fn pool() -> &'static Mutex<Vec<Vec<u8>>> {
    static POOL: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(Vec::new()))
}

/// A buffer for `want` bytes: from the pool when it is large. Its capacity is what it
/// costs and what it is charged against the budget.
fn buffer(want: usize) -> Vec<u8> {
    if want <= CHUNK / 2 {
        return Vec::with_capacity(want);
    }
    let reused = pool().lock().unwrap_or_else(|p| p.into_inner()).pop();
    reused.unwrap_or_else(|| Vec::with_capacity(LAST_CHUNK))
}

/// The capacity `buffer(want)` will have.
fn cost(want: usize) -> usize {
    if want <= CHUNK / 2 {
        want
    } else {
        LAST_CHUNK
    }
}

/// A chunk's buffer and its share of the budget, released when the last `Bytes` goes.
struct Budgeted {
    buf: Vec<u8>,
    _share: OwnedSemaphorePermit,
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if buf.capacity() >= LAST_CHUNK {
            buf.clear();
            let mut pool = pool().lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < BUDGET / LAST_CHUNK {
                pool.push(buf);
            }
        }
    }
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads the next chunk of `file` at `pos`: at most `max` bytes, a fair share of the
/// budget (see `Reader`), `MIN_CHUNK` when the budget is spent. Blocking: call it on the
/// blocking pool. A file that ends early is an error (blob files never shrink; a short
/// read means damage).
pub fn read_chunk(file: &File, pos: u64, max: u64) -> io::Result<Bytes> {
    let size = fair_chunk(READERS.load(Ordering::Relaxed));
    read_chunk_in(budget(), size, file, pos, max)
}

fn read_chunk_in(
    budget: &Arc<Semaphore>,
    size: usize,
    file: &File,
    pos: u64,
    max: u64,
) -> io::Result<Bytes> {
    let want = match max {
        m if m <= (size + size / 4) as u64 => m as usize,
        _ => size,
    };
    let share = match want {
        w if w <= MIN_CHUNK => None,
        w => u32::try_from(cost(w))
            .ok()
            .and_then(|n| budget.clone().try_acquire_many_owned(n).ok()),
    };
    let (want, mut buf) = match share {
        Some(_) => (want, buffer(want)),
        None => (want.min(MIN_CHUNK), Vec::with_capacity(want.min(MIN_CHUNK))),
    };
    while buf.len() < want {
        let at = pos + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ended at {at}, {} bytes short", want - buf.len()),
                ))
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The spare capacity may exceed `want`; never hand out bytes past the range.
    buf.truncate(want);
    Ok(match share {
        Some(share) => Bytes::from_owner(Budgeted { buf, _share: share }),
        None => Bytes::from(buf),
    })
}

/// `read_chunk` on the blocking pool.
pub async fn read_chunk_async(file: Arc<File>, pos: u64, max: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || read_chunk(&file, pos, max))
        .await
        .map_err(io::Error::other)?
}

/// Bytes `[pos, end)` of `file` as a stream of chunks, starting with `first` (already read
/// from `pos` by `reader`, if given).
pub fn chunks(
    file: Arc<File>,
    pos: u64,
    end: u64,
    first: Option<Bytes>,
    reader: Reader,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = (file, pos, first, reader);
    futures_util::stream::try_unfold(state, move |(file, pos, first, reader)| async move {
        if pos >= end {
            return Ok(None);
        }
        let chunk = match first {
            Some(b) => b,
            None => read_chunk_async(file.clone(), pos, end - pos).await?,
        };
        let next = pos + chunk.len() as u64;
        Ok(Some((chunk, (file, next, None, reader))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;
    use std::io::Write;

    fn file_of(data: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(data).unwrap();
        let h = Arc::new(File::open(f.path()).unwrap());
        (f, h)
    }

    #[tokio::test]
    async fn streams_exact_ranges() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12345)).map(|i| (i % 253) as u8).collect();
        let (_t, file) = file_of(&data);
        let ranges = [
            (0, data.len()),
            (1, 2),
            (CHUNK - 1, CHUNK + 1),
            (7, data.len() - 3),
            (0, LAST_CHUNK),
            (0, LAST_CHUNK + 1),
        ];
        for (s, e) in ranges {
            let got: Vec<Bytes> = chunks(file.clone(), s as u64, e as u64, None, Reader::new())
                .try_collect()
                .await
                .unwrap();
            assert!(got.iter().all(|c| c.len() <= LAST_CHUNK && !c.is_empty()));
            assert_eq!(got.concat(), data[s..e], "{s}..{e}");
        }
    }

    #[tokio::test]
    async fn a_short_file_is_an_error_not_a_short_body() {
        let (_t, file) = file_of(b"0123456789");
        let r: io::Result<Vec<Bytes>> =
            chunks(file, 5, 20, None, Reader::new()).try_collect().await;
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn readers_split_the_budget() {
        assert_eq!(fair_chunk(0), CHUNK);
        assert_eq!(fair_chunk(4), CHUNK);
        assert_eq!(fair_chunk(50), 512 << 10);
        assert_eq!(fair_chunk(200), 128 << 10);
        assert_eq!(fair_chunk(1000), MIN_CHUNK);
        assert_eq!(fair_chunk(100_000), MIN_CHUNK);
    }

    #[test]
    fn past_the_budget_chunks_get_small_and_the_budget_comes_back() {
        let data = vec![1u8; CHUNK];
        let (_t, file) = file_of(&data);
        let budget = Arc::new(Semaphore::new(4 * LAST_CHUNK));
        let read = || read_chunk_in(&budget, CHUNK, &file, 0, CHUNK as u64).unwrap();
        let held: Vec<Bytes> = (0..4).map(|_| read()).collect();
        assert!(held.iter().all(|c| c.len() == CHUNK && c[..] == data[..]));
        let small = read();
        assert_eq!(small.len(), MIN_CHUNK);
        assert_eq!(small[..], data[..MIN_CHUNK]);
        // A slice keeps its chunk's share until it goes too.
        let slice = held[0].slice(10..20);
        drop(held);
        assert_eq!(budget.available_permits(), 3 * LAST_CHUNK);
        drop(slice);
        assert_eq!(budget.available_permits(), 4 * LAST_CHUNK);
        assert_eq!(read()[..], data[..]);
    }
}
