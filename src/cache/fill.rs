//! Single-flight fills: exactly one fetch per missing digest, however many readers.
//!
//! The first reader of a missing blob starts a `Fill`: a task, detached from every client,
//! that pulls bytes from a `Source` into a temp file while hashing them (write, hash and
//! the next receive overlap; readers wait for the write only). Every reader
//! (the first one, later ones, Range requests) reads that temp file by offset as bytes
//! arrive, through its own read handle, and is woken through a `watch` channel. When the
//! source is exhausted the digest is checked: on a match the file is committed under its
//! digest, on a mismatch every reader gets an error and nothing is kept.
//!
//! An interrupted source is reopened at the current offset (a Range request upstream) at
//! most `MAX_RESUMES` times, and the resumes share one `resume_budget` of dead time in all
//! (opening a resume, and any wait that ends in another break): a reader of a stalled
//! fill waits at most the stall that broke it (the upstream's idle timeout) plus that
//! budget before its body ends with an error.
//!
//! A fill streams through without the disk (a *relay*) when the cache is off or cannot
//! write, when the blob gets no room (larger than the cap or the free space), or from
//! the point where the disk filled up during the fill (the prefix stays readable from the
//! unlinked temp file). A relay keeps the bytes its readers have not read yet in memory,
//! bounded by `RELAY_WINDOW` (the fill waits up to `RELAY_WAIT` for a slow reader before
//! leaving it behind); a reader that joins after the window moved past its start gets
//! `None` from [`Fill::reader`] and fetches on its own. A reader that goes away does not
//! stop the fill.

use super::disk::{DiskTier, ObjKind, Room};
use crate::oci::Digest;
use crate::storage::{Commit, Storage};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Most bytes gathered from ready chunks into one write.
const WRITE_BATCH: usize = 1 << 20;
/// Batches up to this size are hashed on the fill's own task (about 10 µs of sha256).
const HASH_INLINE: usize = 16 << 10;
/// Reopens of an interrupted source before the fill fails.
const MAX_RESUMES: u32 = 3;
/// Bytes a relay holds ahead of its slowest reader.
pub const RELAY_WINDOW: u64 = 8 << 20;
/// How long a relay waits for a slow reader before leaving it behind.
pub const RELAY_WAIT: Duration = Duration::from_secs(10);
/// Why a relay stopped: every reader left (not a fault; not logged).
const ABANDONED: &str = "every reader left the stream-through";
/// Repeats of one warning (kind, digest) within this window are counted, not logged.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillErrorKind {
    /// The source does not have the blob.
    NotFound,
    /// The source could not be reached or failed (timeouts, 5xx, broken bodies).
    Unavailable,
    /// The bytes did not match the digest.
    Mismatch,
    /// This side failed (disk).
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FillError {
    pub kind: FillErrorKind,
    pub message: String,
}

impl FillErrorKind {
    /// The reason label of `agent_registry_fill_failures_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            FillErrorKind::NotFound => "not_found",
            FillErrorKind::Unavailable => "unavailable",
            FillErrorKind::Mismatch => "mismatch",
            FillErrorKind::Internal => "internal",
        }
    }
}

impl FillError {
    pub fn new(kind: FillErrorKind, message: impl Into<String>) -> FillError {
        FillError {
            kind,
            message: message.into(),
        }
    }
}

/// An opened source: the total length if known, and the bytes from the requested offset.
pub struct Opened {
    pub total: Option<u64>,
    pub stream: BoxStream<'static, Result<Bytes, FillError>>,
}

/// Opens the blob's bytes starting at an offset (0 first, later offsets to resume).
pub type Source = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<Opened, FillError>> + Send + Sync>;

/// How a fill runs, and what its log lines name.
#[derive(Debug, Clone)]
pub struct FillOpts {
    /// Dead time the resumes of a broken source share in all (the upstream's
    /// `idle_timeout`: the stall that broke the body took one already).
    pub resume_budget: Duration,
    /// Stream through without the disk from the start, and why (the cache is off or
    /// cannot write; the caller logs it).
    pub relay: Option<&'static str>,
    /// The repository asked for (log lines).
    pub repo: String,
}

impl Default for FillOpts {
    fn default() -> FillOpts {
        FillOpts {
            resume_budget: Duration::from_secs(60),
            relay: None,
            repo: String::new(),
        }
    }
}

/// What readers see of a fill.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The source answered and `total` is as known as it will be.
    pub started: bool,
    pub total: Option<u64>,
    /// Bytes received and readable by offset (from the temp file, then the relay).
    pub written: u64,
    /// Bytes from here on are relayed from memory, not the temp file (None: all on
    /// disk). `Some(0)` for a fill that streams through from the start.
    pub relay_from: Option<u64>,
    /// Set once: Ok when committed, Err when failed.
    pub outcome: Option<Result<(), FillError>>,
}

/// The memory side of a relaying fill: the bytes no registered reader is past yet, and
/// every reader's position.
#[derive(Default)]
struct Relay {
    /// A reader registered once (so a relay whose readers all left is abandoned).
    had_readers: bool,
    /// (offset, bytes), contiguous, ending at the fill's `written`.
    chunks: VecDeque<(u64, Bytes)>,
    /// The first offset still held.
    base: u64,
    /// The end of what was received.
    end: u64,
    readers: HashMap<u64, u64>,
    next_id: u64,
}

impl Relay {
    fn slowest(&self) -> Option<u64> {
        self.readers.values().copied().min()
    }

    /// Drops what every reader is past; with no reader, keeps the last window; `floor`:
    /// drop below it whatever readers say (they were left behind).
    fn trim(&mut self, floor: u64) {
        let keep = self
            .slowest()
            .unwrap_or(self.end.saturating_sub(RELAY_WINDOW))
            .max(floor);
        while let Some((at, b)) = self.chunks.front() {
            if at + b.len() as u64 > keep {
                break;
            }
            self.chunks.pop_front();
        }
        self.base = self.chunks.front().map_or(self.end, |(at, _)| *at);
    }

    /// Up to `want` bytes at `pos`; None when `pos` was dropped already.
    fn read(&self, pos: u64, want: u64) -> Option<Bytes> {
        if pos < self.base {
            return None;
        }
        let i = self
            .chunks
            .partition_point(|(at, b)| at + b.len() as u64 <= pos);
        let (at, b) = self.chunks.get(i)?;
        let off = (pos - at) as usize;
        let n = (b.len() - off).min(usize::try_from(want).unwrap_or(usize::MAX));
        Some(b.slice(off..off + n))
    }
}

pub struct Fill {
    pub digest: Digest,
    /// The upstream the bytes come from (recorded as the object's provenance).
    pub origin: Arc<str>,
    /// The temp file (None: a relay from the start). Readers keep reading the prefix
    /// through it after the file was unlinked (a disk that filled during the fill).
    file: Option<Arc<std::fs::File>>,
    progress: watch::Receiver<Progress>,
    tier: Option<Arc<DiskTier>>,
    relay: Mutex<Relay>,
    /// Readers moved on (a relay waiting for room is woken).
    advanced: Notify,
}

/// The table of fills in progress, one per digest.
#[derive(Default)]
pub struct Fills {
    inner: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// The disk tier that admits what fills commit (none in unit tests: commit all).
    tier: OnceLock<Arc<DiskTier>>,
}

impl Fills {
    /// Commits from now on go through `tier` (room reserved first, then admitted).
    pub fn attach(&self, tier: Arc<DiskTier>) {
        let _ = self.tier.set(tier);
    }

    /// Joins the fill of `digest`, starting it with `source` (the upstream `origin`) if
    /// none is running. Returns the fill and whether this call started it; a joined
    /// fill may come from another upstream (see [`Fill::origin`]).
    pub async fn join(
        self: &Arc<Self>,
        storage: &Arc<Storage>,
        digest: &Digest,
        origin: &str,
        source: Source,
        opts: FillOpts,
    ) -> Result<(Arc<Fill>, bool), FillError> {
        if let Some(f) = self.get(digest) {
            crate::metrics::fill_joined();
            return Ok((f, false));
        }
        let internal =
            |e: io::Error| FillError::new(FillErrorKind::Internal, format!("cache temp file: {e}"));
        let tier = self.tier.get().cloned();
        let mut relay = opts.relay;
        let temp = match relay {
            Some(_) => None,
            None => match storage.blobs.temp().await {
                Ok(t) => Some(t),
                // The cache cannot write: stream this one through.
                Err(e) if tier.as_ref().is_some_and(|t| t.write.failed(&e)) => {
                    relay = Some("the cache cannot write");
                    None
                }
                Err(e) => return Err(internal(e)),
            },
        };
        let file = match &temp {
            Some(t) => Some(Arc::new(std::fs::File::open(t.path()).map_err(internal)?)),
            None => None,
        };
        let (tx, rx) = watch::channel(Progress {
            relay_from: relay.map(|_| 0),
            ..Progress::default()
        });
        let origin: Arc<str> = origin.into();
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            origin: origin.clone(),
            file,
            progress: rx,
            tier: tier.clone(),
            relay: Mutex::new(Relay::default()),
            advanced: Notify::new(),
        });
        {
            let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = m.get(digest) {
                // Lost the race: someone started it meanwhile; our temp file is dropped.
                crate::metrics::fill_joined();
                return Ok((f.clone(), false));
            }
            m.insert(digest.clone(), fill.clone());
            crate::metrics::fill_started();
        }
        if relay.is_some() && opts.relay.is_none() {
            stream_through(&origin, &opts.repo, digest, "the cache cannot write", None);
        }
        let (fills, storage, f) = (self.clone(), storage.clone(), fill.clone());
        tokio::spawn(async move {
            let outcome = run(&storage, &f, source, temp, &tx, tier, &opts).await;
            if let Err(e) = &outcome {
                failed(&f.origin, &opts.repo, &f.digest, e);
            }
            // Remove from the table only after the commit, so a new reader finds either
            // this fill or the committed blob.
            fills
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&f.digest);
            // A relay its readers all left is not a failure.
            let failure = outcome.as_ref().err().filter(|e| e.message != ABANDONED);
            crate::metrics::fill_finished(failure.map(|e| e.kind.as_str()));
            tx.send_modify(|p| {
                if p.outcome.is_none() {
                    p.outcome = Some(outcome);
                }
            });
        });
        Ok((fill, true))
    }

    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// Fills in progress.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a warning of `kind` about `digest` may be logged now: at most one per
/// `WARN_EVERY`; returns how many were held back since the last one.
fn warn_due(kind: &'static str, digest: &Digest) -> Option<u64> {
    /// (kind, digest) -> (last logged, held back since).
    type Seen = HashMap<(&'static str, Digest), (Instant, u64)>;
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    if seen.len() > 10_000 {
        seen.retain(|_, (at, _)| now.duration_since(*at) < WARN_EVERY);
    }
    match seen.get_mut(&(kind, digest.clone())) {
        Some((at, held)) if now.duration_since(*at) < WARN_EVERY => {
            *held += 1;
            None
        }
        Some((at, held)) => {
            *at = now;
            Some(std::mem::take(held))
        }
        None => {
            seen.insert((kind, digest.clone()), (now, 0));
            Some(0)
        }
    }
}

/// One warning (rate-limited) for a blob that streams through instead of being cached.
pub fn stream_through(upstream: &str, repo: &str, digest: &Digest, why: &str, size: Option<u64>) {
    if let Some(suppressed) = warn_due("stream_through", digest) {
        tracing::warn!(upstream, repo, digest = %digest, size, suppressed, reason = why, "blob streams through without caching: {why}");
    }
}

/// One warning (rate-limited) for a fill that failed: a digest mismatch, or a source that
/// broke off for good after its resumes. Missing blobs are the upstream's answer, not
/// a fault.
fn failed(upstream: &str, repo: &str, digest: &Digest, e: &FillError) {
    if e.message == ABANDONED {
        return;
    }
    let kind = match e.kind {
        FillErrorKind::Mismatch => "digest_mismatch",
        FillErrorKind::Unavailable => "fill_failed",
        FillErrorKind::Internal => "fill_internal",
        FillErrorKind::NotFound => return,
    };
    if let Some(suppressed) = warn_due(kind, digest) {
        match e.kind {
            FillErrorKind::Mismatch => {
                tracing::warn!(upstream, repo, digest = %digest, suppressed, error = %e, "blob digest mismatch: nothing served complete, nothing cached")
            }
            _ => {
                tracing::warn!(upstream, repo, digest = %digest, suppressed, error = %e, "blob fill failed")
            }
        }
    }
}

/// A batch from a fill's source: the first chunk waited for, then every chunk already
/// there, up to `WRITE_BATCH` bytes (one write call, one wake-up for the readers).
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
    /// After these chunks the source ended (Ok) or broke off (Err).
    end: Option<Result<(), FillError>>,
}

async fn next_batch(stream: &mut BoxStream<'static, Result<Bytes, FillError>>) -> Batch {
    let mut b = Batch::default();
    let take = |b: &mut Batch, item: Option<Result<Bytes, FillError>>| match item {
        Some(Ok(c)) => {
            b.len += c.len();
            b.chunks.push(c);
        }
        Some(Err(e)) => b.end = Some(Err(e)),
        None => b.end = Some(Ok(())),
    };
    take(&mut b, stream.next().await);
    while b.end.is_none() && b.len < WRITE_BATCH {
        match stream.next().now_or_never() {
            Some(item) => take(&mut b, item),
            None => break,
        }
    }
    b
}

/// The next batch; once the fill is resuming (`left` is the resume budget left) the
/// wait is capped by the budget, and a wait that ends in a break is charged to it.
/// Returns the batch and the dead time to charge.
async fn recv(
    stream: &mut BoxStream<'static, Result<Bytes, FillError>>,
    left: Option<Duration>,
) -> (Batch, Duration) {
    let Some(left) = left else {
        return (next_batch(stream).await, Duration::ZERO);
    };
    let t0 = Instant::now();
    match tokio::time::timeout(left, next_batch(stream)).await {
        Ok(b) if matches!(b.end, Some(Err(_))) => (b, t0.elapsed()),
        Ok(b) => (b, Duration::ZERO),
        Err(_) => {
            let b = Batch {
                end: Some(Err(FillError::new(
                    FillErrorKind::Unavailable,
                    format!(
                        "no bytes for {} ms, the rest of the resume budget",
                        left.as_millis()
                    ),
                ))),
                ..Batch::default()
            };
            (b, left)
        }
    }
}

/// The digest's hasher and the blake3 checksum `cache verify` compares against.
struct Sums {
    hasher: crate::oci::Hasher,
    checksum: blake3::Hasher,
}

impl Sums {
    fn update(&mut self, batch: &[Bytes]) {
        for c in batch {
            self.hasher.update(c);
            self.checksum.update(c);
        }
    }
}

/// The hashing lane of a fill: each batch is fed to both sums on the blocking pool
/// while it is written and the next one is received (one pass over bytes still in
/// memory). A batch's hash starts once the previous batch's is done (the sums pass from
/// one to the next), so at most one hash runs per fill and the fill never gets more
/// than one batch ahead of its hashing.
enum Hashing {
    Idle(Box<Sums>),
    Busy(tokio::task::JoinHandle<Box<Sums>>),
}

impl Hashing {
    /// The sums over every batch handed in so far.
    async fn finish(self) -> Result<Box<Sums>, FillError> {
        match self {
            Hashing::Idle(s) => Ok(s),
            Hashing::Busy(h) => h
                .await
                .map_err(|e| FillError::new(FillErrorKind::Internal, format!("hashing: {e}"))),
        }
    }

    /// Waits for the previous batch's hash, then starts hashing `batch` (a small batch,
    /// such as a whole config blob, right here: cheaper than a trip to the pool).
    async fn feed(self, batch: Vec<Bytes>) -> Result<Hashing, FillError> {
        let mut sums = self.finish().await?;
        if batch.iter().map(Bytes::len).sum::<usize>() <= HASH_INLINE {
            sums.update(&batch);
            return Ok(Hashing::Idle(sums));
        }
        Ok(Hashing::Busy(tokio::task::spawn_blocking(move || {
            sums.update(&batch);
            sums
        })))
    }
}

async fn run(
    storage: &Storage,
    fill: &Arc<Fill>,
    source: Source,
    mut temp: Option<crate::storage::TempBlob>,
    tx: &watch::Sender<Progress>,
    tier: Option<Arc<DiskTier>>,
    opts: &FillOpts,
) -> Result<(), FillError> {
    let (digest, origin) = (&fill.digest, &*fill.origin);
    // Nothing evicts this digest while it is being filled.
    let _pin = tier.as_ref().map(|t| t.pin(digest));
    let mut room: Option<Room> = None;
    let mut hashing = Hashing::Idle(Box::new(Sums {
        hasher: digest.algorithm().hasher(),
        checksum: blake3::Hasher::new(),
    }));
    let mut total: Option<u64> = None;
    let mut written: u64 = 0;
    let mut opened_once = false;
    let mut resumes = 0;
    // Dead time left for the resumes; None until the source first broke off.
    let mut left: Option<Duration> = None;
    loop {
        let t0 = Instant::now();
        let open = match left {
            None => source(written).await,
            Some(l) => match tokio::time::timeout(l, source(written)).await {
                Ok(r) => r,
                Err(_) => Err(FillError::new(
                    FillErrorKind::Unavailable,
                    format!(
                        "resume not answered within {} ms, the rest of the resume budget",
                        l.as_millis()
                    ),
                )),
            },
        };
        if let Some(l) = left.as_mut() {
            *l = l.saturating_sub(t0.elapsed());
        }
        let broke = match open {
            Ok(opened) => {
                if !opened_once {
                    opened_once = true;
                    total = opened.total;
                    // Room for the whole blob before its bytes land, so the cache's
                    // committed and reserved bytes stay under the cap and the disk
                    // does not run full under a fill; no room: this blob alone
                    // streams through.
                    if let (Some(t), Some(tier), Some(_)) = (total, &tier, &temp) {
                        match tier.reserve_room(t).await {
                            Ok(r) => room = Some(r),
                            Err(why) => {
                                temp = None;
                                tx.send_modify(|p| p.relay_from = Some(0));
                                stream_through(origin, &opts.repo, digest, why.as_str(), Some(t));
                            }
                        }
                    }
                    tx.send_modify(|p| {
                        p.started = true;
                        p.total = total;
                    });
                }
                let mut stream = opened.stream;
                let mut broke = None;
                let (mut next, dead) = recv(&mut stream, left).await;
                charge(&mut left, dead);
                loop {
                    let Batch { chunks, len, end } = std::mem::take(&mut next);
                    if total.is_some_and(|t| written + len as u64 > t) {
                        return Err(FillError::new(
                            FillErrorKind::Mismatch,
                            format!("blob {digest}: source sent more than its declared length"),
                        ));
                    }
                    if !chunks.is_empty() {
                        // The batch is written and hashed on the blocking pool side by
                        // side while the next one is received. Readers get it once it
                        // is written, without waiting for its hash (the last byte still
                        // waits for the whole digest), and the runtime threads stay
                        // free to serve them.
                        let more = end.is_none();
                        let relaying = temp.is_none();
                        let at = written;
                        let copy = chunks.clone();
                        let kept = chunks.clone();
                        let write = async {
                            match temp.as_mut() {
                                Some(t) => t.write_chunks(copy).await?,
                                None => fill.relay_push(at, copy),
                            }
                            tx.send_modify(|p| p.written = at + len as u64);
                            io::Result::Ok(())
                        };
                        let ahead = async {
                            if !more {
                                return None;
                            }
                            if relaying {
                                fill.wait_for_readers().await;
                                if fill.abandoned() {
                                    // Nothing is kept and nobody reads: stop fetching.
                                    let b = Batch {
                                        end: Some(Err(FillError::new(
                                            FillErrorKind::Unavailable,
                                            ABANDONED,
                                        ))),
                                        ..Batch::default()
                                    };
                                    return Some((b, Duration::ZERO));
                                }
                            }
                            Some(recv(&mut stream, left).await)
                        };
                        let (wrote, fed, following) =
                            tokio::join!(write, hashing.feed(chunks), ahead);
                        hashing = fed?;
                        if let Err(e) = wrote {
                            let full = tier.as_ref().is_some_and(|t| t.write.failed(&e));
                            if !full {
                                return Err(FillError::new(
                                    FillErrorKind::Internal,
                                    format!("cache write: {e}"),
                                ));
                            }
                            // The disk filled up under the fill: the readers go on from
                            // memory; the prefix stays readable through the unlinked
                            // temp file's open descriptor.
                            temp = None;
                            room = None;
                            tx.send_modify(|p| p.relay_from = Some(at));
                            fill.relay_push(at, kept);
                            tx.send_modify(|p| p.written = at + len as u64);
                            let why = format!("the disk filled up during the fill ({e})");
                            stream_through(origin, &opts.repo, digest, &why, total);
                        }
                        written = at + len as u64;
                        if let Some(r) = room.as_mut() {
                            r.landed(len as u64);
                        }
                        if let Some((f, dead)) = following {
                            next = f;
                            charge(&mut left, dead);
                        }
                    }
                    match end {
                        None => {}
                        Some(Ok(())) => break,
                        Some(Err(e)) => {
                            broke = Some(e);
                            break;
                        }
                    }
                }
                match (broke, total) {
                    (Some(e), _) => Some(e),
                    (None, Some(t)) if written < t => Some(FillError::new(
                        FillErrorKind::Unavailable,
                        format!("blob {digest}: body ended at {written} of {t} bytes"),
                    )),
                    (None, _) => None,
                }
            }
            Err(e) if !opened_once || e.kind == FillErrorKind::NotFound => return Err(e),
            Err(e) => Some(e),
        };
        match broke {
            None => break,
            Some(e) if e.message == ABANDONED => return Err(e),
            Some(e) if e.kind == FillErrorKind::Unavailable => {
                // The stall that broke the body took its own (idle) timeout; from here
                // on every resume draws on one shared budget.
                let l = *left.get_or_insert(opts.resume_budget);
                if resumes >= MAX_RESUMES || l.is_zero() {
                    return Err(FillError::new(
                        FillErrorKind::Unavailable,
                        format!(
                            "blob {digest}: upstream stopped sending at {written} of {} bytes; gave up after {resumes} resume(s) within the resume budget of {} ms: {e}",
                            total.map_or_else(|| "?".to_string(), |t| t.to_string()),
                            opts.resume_budget.as_millis()
                        ),
                    ));
                }
                resumes += 1;
                tracing::info!(upstream = origin, repo = %opts.repo, digest = %digest, offset = written, error = %e, "blob fill interrupted, resuming");
                let pause = Duration::from_millis(50 << resumes).min(l);
                tokio::time::sleep(pause).await;
                charge(&mut left, pause);
            }
            Some(e) => return Err(e),
        }
    }
    let Sums { hasher, checksum } = *hashing.finish().await?;
    let actual = hasher.clone().finish();
    if actual != *digest {
        return Err(FillError::new(
            FillErrorKind::Mismatch,
            format!("blob {digest}: digest mismatch, source sent {actual}"),
        ));
    }
    // Verified: readers may have the last byte now; making the copy durable (fsync,
    // rename) does not hold up the clients.
    tx.send_modify(|p| p.outcome = Some(Ok(())));
    let Some(temp) = temp else {
        // Streamed through: nothing to keep.
        return Ok(());
    };
    let Some(tier) = tier else {
        // No disk tier (unit tests): commit everything.
        if let Err(e) = storage.blobs.commit_file(temp, digest, Some(hasher)).await {
            tracing::warn!(digest = %digest, error = %e, "blob served but not cached");
        }
        return Ok(());
    };
    let reservation = match room {
        Some(r) => Some(r.reservation),
        // The length was not known up front.
        None => tier.reserve(temp.len()).await,
    };
    let Some(reservation) = reservation else {
        tracing::debug!(digest = %digest, size = temp.len(), "blob served but not cached: no room in the cache");
        return Ok(());
    };
    match storage.blobs.commit_file(temp, digest, Some(hasher)).await {
        Ok(Commit::Stored { size }) => {
            let sum = checksum.finalize().to_hex().to_string();
            tier.admit(
                digest,
                size,
                ObjKind::Blob,
                Vec::new(),
                Some(sum),
                reservation,
                Some(origin),
            )
            .await;
        }
        // The clients got verified bytes; only the cached copy is lost (e.g. a full disk).
        Ok(Commit::Mismatch { actual }) => {
            tracing::error!(digest = %digest, actual = %actual, "blob changed on disk before commit; not cached")
        }
        Err(e) => {
            if !tier.write.failed(&e) {
                tracing::warn!(digest = %digest, error = %e, "blob served but not cached");
            }
        }
    }
    Ok(())
}

/// Takes `dead` off the resume budget (if the fill is resuming).
fn charge(left: &mut Option<Duration>, dead: Duration) {
    if let Some(l) = left.as_mut() {
        *l = l.saturating_sub(dead);
    }
}

/// A reader's place in a fill (registered for the relay's bookkeeping); leaves on drop.
struct Seat {
    fill: Arc<Fill>,
    id: u64,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.fill.lock_relay().readers.remove(&self.id);
        self.fill.advanced.notify_waiters();
    }
}

impl Fill {
    fn lock_relay(&self) -> std::sync::MutexGuard<'_, Relay> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the fill streams through (part or all of it relayed from memory, nothing
    /// cached).
    pub fn relaying(&self) -> bool {
        self.progress.borrow().relay_from.is_some()
    }

    /// A relay whose readers have all gone (it keeps nothing, so it has no use).
    fn abandoned(&self) -> bool {
        let r = self.lock_relay();
        r.had_readers && r.readers.is_empty()
    }

    /// Appends received bytes to the relay (the disk is not used from `at` on).
    fn relay_push(&self, at: u64, chunks: Vec<Bytes>) {
        let mut r = self.lock_relay();
        if r.chunks.is_empty() {
            r.base = at;
        }
        let mut pos = at;
        for c in chunks {
            let n = c.len() as u64;
            r.chunks.push_back((pos, c));
            pos += n;
        }
        r.end = pos;
        r.trim(0);
    }

    /// Waits while the relay holds a full window its slowest reader has not read, at
    /// most `RELAY_WAIT`; then whoever is that far behind is left behind.
    async fn wait_for_readers(&self) {
        let deadline = tokio::time::Instant::now() + RELAY_WAIT;
        loop {
            let notified = self.advanced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut r = self.lock_relay();
                let behind = r.slowest().map_or(0, |s| r.end.saturating_sub(s));
                if behind <= RELAY_WINDOW {
                    return;
                }
                if tokio::time::Instant::now() >= deadline {
                    // Left behind: their next read finds their bytes gone (an error).
                    let floor = r.end.saturating_sub(RELAY_WINDOW);
                    r.readers.retain(|_, pos| *pos >= floor);
                    r.trim(floor);
                    return;
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Waits until the fill's task ended (its blob committed and the fill out of the
    /// table, so a new reader finds the cached blob): its outcome.
    pub async fn finished(&self) -> Result<(), FillError> {
        let mut rx = self.progress.clone();
        // The task drops the only sender last, after the commit and the table removal.
        while rx.changed().await.is_ok() {}
        let outcome = rx.borrow().outcome.clone();
        outcome.unwrap_or_else(|| {
            Err(FillError::new(
                FillErrorKind::Internal,
                "fill ended without an outcome",
            ))
        })
    }

    /// Waits until the source answered; returns the total length if known.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.progress.clone();
        loop {
            {
                let p = rx.borrow_and_update();
                if let Some(Err(e)) = &p.outcome {
                    return Err(e.clone());
                }
                if p.started {
                    return Ok(p.total);
                }
            }
            if rx.changed().await.is_err() {
                return Err(FillError::new(
                    FillErrorKind::Internal,
                    "fill ended without an outcome",
                ));
            }
        }
    }

    /// Bytes `[start, end)` (to the end when None) as they arrive. Ends with an error if
    /// the fill fails, so the client's response breaks off instead of ending short.
    /// None: the fill streams through and no longer holds `start` (a late joiner; it
    /// fetches on its own).
    pub fn reader(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> Option<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        let seat = {
            let mut r = self.lock_relay();
            let relay_from = self.progress.borrow().relay_from;
            let on_disk = self.file.is_some() && relay_from.is_none_or(|f| start < f);
            if !on_disk && start < r.base {
                return None;
            }
            let id = r.next_id;
            r.next_id += 1;
            r.readers.insert(id, start);
            r.had_readers = true;
            Seat {
                fill: self.clone(),
                id,
            }
        };
        // The reader's pin keeps the committed file from eviction until it is done.
        let pin = self.tier.as_ref().map(|t| t.pin(&self.digest));
        // Called while handling the request: how the file's bytes reach the socket
        // (sendfile(2) on plain HTTP/1, else reads under the budget) is `io::Out`'s choice.
        let out = crate::io::Out::current();
        let state = (seat, self.progress.clone(), start, false, (pin, out));
        Some(futures_util::stream::unfold(
            state,
            move |(seat, mut rx, pos, done, (pin, out))| async move {
                if done {
                    return None;
                }
                let fill = seat.fill.clone();
                loop {
                    let (written, outcome, total, relay_from) = {
                        let p = rx.borrow_and_update();
                        (p.written, p.outcome.clone(), p.total, p.relay_from)
                    };
                    if let Some(Err(e)) = &outcome {
                        let err = io::Error::other(e.message.clone());
                        return Some((Err(err), (seat, rx, pos, true, (pin, out))));
                    }
                    let limit = end.or(total);
                    if limit.is_some_and(|l| pos >= l) {
                        return None;
                    }
                    // The last byte of the blob is held back until the digest is verified, so a
                    // reader of a corrupt fill never sees a complete response.
                    let avail = match (&outcome, total) {
                        (None, Some(t)) => written.min(t.saturating_sub(1)),
                        _ => written,
                    };
                    if pos < avail {
                        let want = limit.map_or(avail, |l| avail.min(l)) - pos;
                        let read = match (&fill.file, relay_from) {
                            (Some(f), None) => {
                                out.chunk(f, pos, want).await
                            }
                            (Some(f), Some(from)) if pos < from => {
                                out.chunk(f, pos, want.min(from - pos)).await
                            }
                            _ => fill.lock_relay().read(pos, want).ok_or_else(|| {
                                io::Error::other(format!(
                                    "blob {}: this reader fell more than {RELAY_WINDOW} bytes behind a stream-through",
                                    fill.digest
                                ))
                            }),
                        };
                        return match read {
                            Ok(b) => {
                                let next = pos + b.len() as u64;
                                if let Some(p) = fill.lock_relay().readers.get_mut(&seat.id) {
                                    *p = next;
                                }
                                if relay_from.is_some() {
                                    fill.advanced.notify_waiters();
                                }
                                Some((Ok(b), (seat, rx, next, false, (pin, out))))
                            }
                            Err(e) => Some((Err(e), (seat, rx, pos, true, (pin, out)))),
                        };
                    }
                    if matches!(outcome, Some(Ok(()))) && pos >= written {
                        // Committed and everything read (length unknown up front).
                        return None;
                    }
                    if rx.changed().await.is_err() {
                        return Some((
                            Err(io::Error::other("fill ended without an outcome")),
                            (seat, rx, pos, true, (pin, out)),
                        ));
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    struct Src {
        data: Arc<Vec<u8>>,
        calls: Arc<Mutex<Vec<u64>>>,
    }

    /// A source over `data` that serves 64 KiB chunks slowly, breaks off once at
    /// `break_at` (first call only) and flips a byte when `corrupt`.
    fn source(data: Vec<u8>, break_at: Option<u64>, corrupt: bool) -> (Source, Src) {
        let data = Arc::new(data);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let src = Src {
            data: data.clone(),
            calls: calls.clone(),
        };
        let s: Source = Arc::new(move |offset| {
            let data = data.clone();
            let calls = calls.clone();
            Box::pin(async move {
                let first = {
                    let mut c = calls.lock().unwrap();
                    c.push(offset);
                    c.len() == 1
                };
                let total = data.len() as u64;
                let stop = if first {
                    break_at.unwrap_or(total)
                } else {
                    total
                };
                let chunks: Vec<Result<Bytes, FillError>> = (offset..stop)
                    .step_by(64 * 1024)
                    .map(|at| {
                        let end = (at + 64 * 1024).min(stop);
                        let mut b = data[at as usize..end as usize].to_vec();
                        if corrupt && at == 0 {
                            b[0] ^= 1;
                        }
                        Ok(Bytes::from(b))
                    })
                    .chain((stop < total).then(|| {
                        Err(FillError::new(
                            FillErrorKind::Unavailable,
                            "connection reset",
                        ))
                    }))
                    .collect();
                let stream = futures_util::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    c
                });
                Ok(Opened {
                    total: Some(total),
                    stream: stream.boxed(),
                })
            })
        });
        (s, src)
    }

    /// Commits happen after readers are served: wait for the blob to land.
    async fn committed(storage: &Storage, digest: &Digest) -> bool {
        for _ in 0..500 {
            if storage.blobs.stat(digest).await.unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    async fn read_all(fill: &Arc<Fill>, start: u64, end: Option<u64>) -> io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = fill
            .reader(start, end)
            .expect("readable")
            .try_collect()
            .await?;
        Ok(chunks.concat())
    }

    fn setup() -> (tempfile::TempDir, Arc<Storage>, Arc<Fills>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(dir.path()).unwrap());
        (dir, storage, Arc::new(Fills::default()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_for_many_readers_and_ranges() {
        let (_dir, storage, fills) = setup();
        let bytes = data(3 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, probe) = source(bytes.clone(), None, false);
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let (storage, fills, digest, src) =
                (storage.clone(), fills.clone(), digest.clone(), src.clone());
            tasks.push(tokio::spawn(async move {
                let (fill, _) = fills
                    .join(&storage, &digest, "up", src, FillOpts::default())
                    .await
                    .unwrap();
                assert_eq!(fill.started().await.unwrap(), Some(3 << 20));
                if i % 2 == 0 {
                    (0, None, read_all(&fill, 0, None).await.unwrap())
                } else {
                    let s = i * 100_000;
                    (
                        s,
                        Some(s + 500_000),
                        read_all(&fill, s, Some(s + 500_000)).await.unwrap(),
                    )
                }
            }));
        }
        for t in tasks {
            let (s, e, got) = t.await.unwrap();
            let e = e.unwrap_or(bytes.len() as u64);
            assert_eq!(got, bytes[s as usize..e as usize]);
        }
        assert_eq!(probe.calls.lock().unwrap().as_slice(), &[0]);
        assert!(committed(&storage, &digest).await);
        assert_eq!(storage.blobs.stat(&digest).await.unwrap(), Some(3 << 20));
        assert_eq!(probe.data.len(), 3 << 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mismatch_cuts_every_reader_off_and_keeps_nothing() {
        let (dir, storage, fills) = setup();
        let bytes = data(1 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, _) = source(bytes, None, true);
        let (fill, started) = fills
            .join(&storage, &digest, "up", src.clone(), FillOpts::default())
            .await
            .unwrap();
        assert!(started);
        let (fill2, started2) = fills
            .join(&storage, &digest, "up", src, FillOpts::default())
            .await
            .unwrap();
        assert!(!started2);
        assert!(read_all(&fill, 0, None).await.is_err());
        assert!(read_all(&fill2, 0, None).await.is_err());
        assert_eq!(storage.blobs.stat(&digest).await.unwrap(), None);
        assert!(fills.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interrupted_source_resumes_at_offset() {
        let (_dir, storage, fills) = setup();
        let bytes = data(2 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, probe) = source(bytes.clone(), Some(640 * 1024), false);
        let (fill, _) = fills
            .join(&storage, &digest, "up", src, FillOpts::default())
            .await
            .unwrap();
        assert_eq!(read_all(&fill, 0, None).await.unwrap(), bytes);
        assert_eq!(probe.calls.lock().unwrap().as_slice(), &[0, 640 * 1024]);
        assert!(committed(&storage, &digest).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_leaving_does_not_stop_the_fill() {
        let (_dir, storage, fills) = setup();
        let bytes = data(2 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, _) = source(bytes, None, false);
        let (fill, _) = fills
            .join(&storage, &digest, "up", src, FillOpts::default())
            .await
            .unwrap();
        let mut r = Box::pin(fill.reader(0, None).expect("readable"));
        let first = r.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(r);
        drop(fill);
        for _ in 0..500 {
            if storage.blobs.stat(&digest).await.unwrap().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fill did not complete after its only reader left");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_streams_from_memory_and_refuses_a_start_it_no_longer_holds() {
        let (dir, storage, fills) = setup();
        let bytes = data(20 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, probe) = source(bytes.clone(), None, false);
        let opts = FillOpts {
            relay: Some("test"),
            ..FillOpts::default()
        };
        let (fill, started) = fills
            .join(&storage, &digest, "up", src, opts)
            .await
            .unwrap();
        assert!(started && fill.relaying());
        fill.started().await.unwrap();
        let mut r = Box::pin(fill.reader(0, None).expect("the start is held"));
        let mut got = Vec::new();
        while got.len() < 12 << 20 {
            got.extend_from_slice(&r.next().await.unwrap().unwrap());
        }
        // The only reader is past 12 MiB: the relay let go of the start.
        assert!(fill.reader(0, None).is_none());
        // A part still ahead is joined.
        let tail = (bytes.len() - 1000) as u64;
        let part = read_all(&fill, tail, None).await.unwrap();
        assert_eq!(part, bytes[tail as usize..]);
        while let Some(c) = r.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, bytes);
        assert_eq!(probe.calls.lock().unwrap().as_slice(), &[0]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(fills.is_empty());
        assert_eq!(
            storage.blobs.stat(&digest).await.unwrap(),
            None,
            "nothing kept"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_holds_its_readers_pace_within_the_window() {
        let (_dir, storage, fills) = setup();
        let bytes = data(24 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, _) = source(bytes.clone(), None, false);
        let opts = FillOpts {
            relay: Some("test"),
            ..FillOpts::default()
        };
        let (fill, _) = fills
            .join(&storage, &digest, "up", src, opts)
            .await
            .unwrap();
        fill.started().await.unwrap();
        let mut r = Box::pin(fill.reader(0, None).expect("held"));
        let first = r.next().await.unwrap().unwrap();
        // The reader pauses: the relay waits for it instead of running ahead.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (held, end) = {
            let rl = fill.lock_relay();
            (
                rl.chunks.iter().map(|(_, b)| b.len() as u64).sum::<u64>(),
                rl.end,
            )
        };
        assert!(end < 12 << 20, "ran ahead to {end}");
        assert!(held <= RELAY_WINDOW + (2 << 20), "holds {held}");
        let mut got = first.to_vec();
        while let Some(c) = r.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, bytes);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_leaves_a_stuck_reader_behind_after_the_wait() {
        let (_dir, storage, fills) = setup();
        let bytes = data(24 << 20);
        let digest = Digest::sha256_of(&bytes);
        let (src, _) = source(bytes.clone(), None, false);
        let opts = FillOpts {
            relay: Some("test"),
            ..FillOpts::default()
        };
        let (fill, _) = fills
            .join(&storage, &digest, "up", src, opts)
            .await
            .unwrap();
        fill.started().await.unwrap();
        let mut stuck = Box::pin(fill.reader(0, None).expect("held"));
        stuck.next().await.unwrap().unwrap();
        // The other reader gets everything, once the relay stops waiting for the stuck one.
        let t0 = std::time::Instant::now();
        assert_eq!(read_all(&fill, 0, None).await.unwrap(), bytes);
        assert!(t0.elapsed() >= RELAY_WAIT - Duration::from_secs(1));
        // The stuck one finds its bytes gone: an error, never a short body.
        let mut failed = false;
        while let Some(c) = stuck.next().await {
            if c.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a reader left behind ends with an error");
    }
}
