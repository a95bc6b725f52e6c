//! Reading blob files for responses: positioned reads straight into each chunk's own
//! buffer (no zeroing, no intermediate copy as with `tokio::fs::File`), one blocking-pool
//! trip per chunk, and one byte budget shared by every response in flight so memory
//! stays flat however many clients download at once. Used for committed blobs
//! (`server::blobs`) and for fills in progress (`cache::fill`). Knows nothing about HTTP.

use crate::io::sendfile::Slot;
use bytes::Bytes;
use futures_util::Stream;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest read: fewer blocking-pool trips and syscalls per MiB while few clients read.
/// A remainder up to a quarter more is read in one go rather than as a chunk and a small
/// tail (a "1 MiB" layer is usually a little over 1 MiB): one trip instead of two.
pub const CHUNK: usize = 1 << 20;
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

/// The byte budget and the buffers kept under it.
struct Budget {
    bytes: Arc<Semaphore>,
    pools: Vec<Mutex<Vec<Kept>>>,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        Budget {
            bytes: Arc::new(Semaphore::new(bytes)),
            pools: (0..CLASSES).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn pool(&self, size: usize) -> Option<&Mutex<Vec<Kept>>> {
        let class = (size / MIN_CHUNK).checked_ilog2()? as usize;
        (size > MIN_CHUNK && size.is_power_of_two() && size <= CHUNK)
            .then(|| &self.pools[class - 1])
    }
}

fn budget() -> &'static Budget {
    static GLOBAL: OnceLock<Budget> = OnceLock::new();
    GLOBAL.get_or_init(|| Budget::new(BUDGET))
}

/// Size classes of pooled buffers: the chunk sizes above `MIN_CHUNK`.
const CLASSES: usize = (CHUNK / MIN_CHUNK).trailing_zeros() as usize;

/// Capacity of a buffer for chunks of `size`: room for a remainder read in one go.
fn capacity(size: usize) -> usize {
    size + size / 4
}

/// A pooled buffer keeps its share of the budget.
type Kept = (Vec<u8>, OwnedSemaphorePermit);

// Buffers kept for reuse, one list per chunk size. A fresh large allocation is mmapped
// and zeroed page by page by the kernel (more costly than the read itself), and large
// buffers allocated and freed on many blocking-pool threads fragment the allocator's
// per-thread arenas. A pooled buffer stays charged to the budget, so buffers in use and
// in the pools together never exceed it; a reader that finds the budget spent while
// other sizes sit in the pools frees those first.

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Room for the next chunk, taken on the async side (so buffers come from the few
/// runtime threads' allocator arenas and their pools), filled on the blocking pool.
pub struct Reservation {
    budget: &'static Budget,
    size: usize,
    buf: Vec<u8>,
    share: Option<OwnedSemaphorePermit>,
}

/// Reserves the next chunk for a response: a fair share of the budget (see `Reader`),
/// `MIN_CHUNK` when the budget is spent.
pub fn reserve() -> Reservation {
    reserve_in(budget(), fair_chunk(READERS.load(Ordering::Relaxed)))
}

fn reserve_in(budget: &'static Budget, size: usize) -> Reservation {
    let Some(pool) = budget.pool(size) else {
        return Reservation::small();
    };
    if let Some((buf, share)) = lock(pool).pop() {
        return Reservation::pooled(budget, size, buf, share);
    }
    let Ok(cost) = u32::try_from(capacity(size)) else {
        return Reservation::small();
    };
    let mut share = budget.bytes.clone().try_acquire_many_owned(cost).ok();
    if share.is_none() {
        // Buffers of other sizes may hold the budget: release them and try once more.
        for other in &budget.pools {
            lock(other).clear();
        }
        share = budget.bytes.clone().try_acquire_many_owned(cost).ok();
    }
    match share {
        Some(share) => {
            let buf = Vec::with_capacity(capacity(size));
            Reservation::pooled(budget, size, buf, share)
        }
        None => Reservation::small(),
    }
}

impl Reservation {
    fn small() -> Reservation {
        Reservation {
            budget: budget(),
            size: MIN_CHUNK,
            buf: Vec::with_capacity(capacity(MIN_CHUNK)),
            share: None,
        }
    }

    fn pooled(
        budget: &'static Budget,
        size: usize,
        buf: Vec<u8>,
        share: OwnedSemaphorePermit,
    ) -> Reservation {
        Reservation {
            budget,
            size,
            buf,
            share: Some(share),
        }
    }
}

/// An unused reservation gives its buffer back.
impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(share) = self.share.take() {
            drop(Pooled {
                budget: self.budget,
                size: self.size,
                buf: std::mem::take(&mut self.buf),
                share: Some(share),
            });
        }
    }
}

/// A chunk's buffer and its share of the budget; the buffer goes back to its pool when
/// the last `Bytes` of it is dropped.
struct Pooled {
    budget: &'static Budget,
    size: usize,
    buf: Vec<u8>,
    share: Option<OwnedSemaphorePermit>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if let (Some(pool), Some(share)) = (self.budget.pool(self.size), self.share.take()) {
            buf.clear();
            lock(pool).push((buf, share));
        }
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Reservation {
    /// Reads the chunk of `file` at `pos`: the reserved size, or all of a remainder of
    /// `max` bytes that fits the buffer. Blocking: call it on the blocking pool. A file
    /// that ends early is an error (blob files never shrink; a short read means damage).
    pub fn read(mut self, file: &File, pos: u64, max: u64) -> io::Result<Bytes> {
        let size = self.size;
        let mut buf = std::mem::take(&mut self.buf);
        let share = self.share.take();
        let want = match max {
            m if m <= capacity(size) as u64 => m as usize,
            _ => size,
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
            Some(share) => Bytes::from_owner(Pooled {
                budget: self.budget,
                size,
                buf,
                share: Some(share),
            }),
            None => Bytes::from(buf),
        })
    }
}

/// Reads the chunk at `pos` (at most `max` bytes) on the blocking pool.
pub async fn read_chunk(file: Arc<File>, pos: u64, max: u64) -> io::Result<Bytes> {
    let room = reserve();
    tokio::task::spawn_blocking(move || room.read(&file, pos, max))
        .await
        .map_err(io::Error::other)?
}

/// The next chunk of a response from `file` at `pos` (at most `max` bytes): read into
/// memory, or with `splice` a placeholder the connection sends with sendfile(2).
pub async fn next_chunk(
    splice: Option<&Arc<Slot>>,
    file: &Arc<File>,
    pos: u64,
    max: u64,
) -> io::Result<Bytes> {
    match splice {
        Some(slot) => Ok(slot.frame(file, pos, max)),
        None => read_chunk(file.clone(), pos, max).await,
    }
}

/// Bytes `[pos, end)` of `file` as a stream of chunks, starting with `first` (already read
/// from `pos`, if given); placeholders for sendfile(2) with `splice`. `reader` counts the
/// response among those reading into memory (None with `splice`: it takes no budget).
pub fn chunks(
    file: Arc<File>,
    pos: u64,
    end: u64,
    first: Option<Bytes>,
    reader: Option<Reader>,
    splice: Option<Arc<Slot>>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let state = (file, pos, first, reader);
    futures_util::stream::try_unfold(state, move |(file, pos, first, reader)| {
        let splice = splice.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let chunk = match first {
                Some(b) => b,
                None => next_chunk(splice.as_ref(), &file, pos, end - pos).await?,
            };
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (file, next, None, reader))))
        }
    })
}

/// A temp file holding `data` and a read handle on it (tests here and in `sendfile`).
#[cfg(test)]
pub(crate) fn file_of(data: &[u8]) -> (tempfile::NamedTempFile, Arc<File>) {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    let h = Arc::new(File::open(f.path()).unwrap());
    (f, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    #[tokio::test]
    async fn streams_exact_ranges() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12345)).map(|i| (i % 253) as u8).collect();
        let (_t, file) = file_of(&data);
        let ranges = [
            (0, data.len()),
            (1, 2),
            (CHUNK - 1, CHUNK + 1),
            (7, data.len() - 3),
            (0, capacity(CHUNK)),
            (0, capacity(CHUNK) + 1),
        ];
        for (s, e) in ranges {
            let got: Vec<Bytes> = chunks(
                file.clone(),
                s as u64,
                e as u64,
                None,
                Some(Reader::new()),
                None,
            )
            .try_collect()
            .await
            .unwrap();
            assert!(got
                .iter()
                .all(|c| c.len() <= capacity(CHUNK) && !c.is_empty()));
            assert_eq!(got.concat(), data[s..e], "{s}..{e}");
        }
    }

    #[tokio::test]
    async fn a_short_file_is_an_error_not_a_short_body() {
        let (_t, file) = file_of(b"0123456789");
        let r: io::Result<Vec<Bytes>> = chunks(file, 5, 20, None, Some(Reader::new()), None)
            .try_collect()
            .await;
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
        let b = budget();
        for size in [64 << 10, 128 << 10, 256 << 10, 512 << 10, CHUNK] {
            assert!(b.pool(size).is_some(), "{size}");
        }
        assert!(b.pool(MIN_CHUNK).is_none());
        assert!(b.pool(3 << 16).is_none());
        assert!(b.pool(2 * CHUNK).is_none());
    }

    #[test]
    fn past_the_budget_chunks_get_small_and_the_budget_comes_back() {
        let data = vec![1u8; CHUNK];
        let (_t, file) = file_of(&data);
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(4 * capacity(CHUNK))));
        let read = || {
            reserve_in(budget, CHUNK)
                .read(&file, 0, CHUNK as u64)
                .unwrap()
        };
        let held: Vec<Bytes> = (0..4).map(|_| read()).collect();
        assert!(held.iter().all(|c| c.len() == CHUNK && c[..] == data[..]));
        let small = read();
        assert_eq!(small.len(), MIN_CHUNK);
        assert_eq!(small[..], data[..MIN_CHUNK]);
        drop(held);
        // Returned buffers stay charged: they are reused, not reallocated.
        assert_eq!(budget.bytes.available_permits(), 0);
        assert_eq!(read()[..], data[..]);
    }

    #[test]
    fn pooled_buffers_of_another_size_give_way() {
        let data = vec![2u8; CHUNK];
        let (_t, file) = file_of(&data);
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(2 * capacity(CHUNK))));
        let big: Vec<Bytes> = (0..2)
            .map(|_| {
                reserve_in(budget, CHUNK)
                    .read(&file, 0, CHUNK as u64)
                    .unwrap()
            })
            .collect();
        drop(big);
        let size = 256 << 10;
        let r = reserve_in(budget, size);
        assert_eq!(r.size, size);
        let c = r.read(&file, 0, CHUNK as u64).unwrap();
        assert_eq!(c[..], data[..size]);
    }
}
