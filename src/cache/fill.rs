//! Single-flight fills: exactly one fetch per missing digest, however many readers.
//!
//! The first reader of a missing blob starts a `Fill`: a task, detached from every client,
//! that pulls bytes from a `Source` into a temp file while hashing them (write, hash and
//! the next receive overlap; readers wait for the write only). Every reader
//! (the first one, later ones, Range requests) reads that temp file by offset as bytes
//! arrive, through its own read handle, and is woken through a `watch` channel. When the
//! source is exhausted the digest is checked: on a match the file is committed under its
//! digest, on a mismatch every reader gets an error and nothing is kept. An interrupted
//! source is reopened at the current offset (a Range request upstream) a few times
//! before the fill fails. A reader that goes away does not stop the fill.

use super::disk::{DiskTier, ObjKind};
use crate::oci::Digest;
use crate::server::file;
use crate::storage::{Commit, Storage};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Most bytes gathered from ready chunks into one write.
const WRITE_BATCH: usize = 1 << 20;
/// Batches up to this size are hashed on the fill's own task (about 10 µs of sha256).
const HASH_INLINE: usize = 16 << 10;
/// Reopens of an interrupted source before the fill fails.
const MAX_RESUMES: u32 = 3;

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
    /// The cache's filesystem has no room for the blob; reported before any reader got
    /// a byte, so readers can stream it through instead.
    NoSpace,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FillError {
    pub kind: FillErrorKind,
    pub message: String,
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

/// What readers see of a fill.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The source answered and `total` is as known as it will be.
    pub started: bool,
    pub total: Option<u64>,
    /// Bytes in the temp file, readable by offset.
    pub written: u64,
    /// Set once: Ok when committed, Err when failed.
    pub outcome: Option<Result<(), FillError>>,
}

pub struct Fill {
    pub digest: Digest,
    /// The upstream the bytes come from (recorded as the object's provenance).
    pub origin: Arc<str>,
    file: Arc<std::fs::File>,
    progress: watch::Receiver<Progress>,
    tier: Option<Arc<DiskTier>>,
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
    ) -> Result<(Arc<Fill>, bool), FillError> {
        if let Some(f) = self.get(digest) {
            crate::metrics::fill_joined();
            return Ok((f, false));
        }
        let internal =
            |e: io::Error| FillError::new(FillErrorKind::Internal, format!("cache temp file: {e}"));
        let tier = self.tier.get().cloned();
        let temp = storage.blobs.temp().await.map_err(|e| {
            if let Some(t) = &tier {
                t.write.failed(&e);
            }
            internal(e)
        })?;
        let file = std::fs::File::open(temp.path()).map_err(internal)?;
        let (tx, rx) = watch::channel(Progress::default());
        let origin: Arc<str> = origin.into();
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            origin: origin.clone(),
            file: Arc::new(file),
            progress: rx,
            tier: tier.clone(),
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
        let (fills, storage, digest) = (self.clone(), storage.clone(), digest.clone());
        tokio::spawn(async move {
            let outcome = run(&storage, &digest, &origin, source, temp, &tx, tier).await;
            // Remove from the table only after the commit, so a new reader finds either
            // this fill or the committed blob.
            fills
                .inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&digest);
            crate::metrics::fill_finished(outcome.as_ref().err().map(|e| e.kind));
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
    digest: &Digest,
    origin: &str,
    source: Source,
    mut temp: crate::storage::TempBlob,
    tx: &watch::Sender<Progress>,
    tier: Option<Arc<DiskTier>>,
) -> Result<(), FillError> {
    // Nothing evicts this digest while it is being filled.
    let _pin = tier.as_ref().map(|t| t.pin(digest));
    let mut reservation = None;
    let mut hashing = Hashing::Idle(Box::new(Sums {
        hasher: digest.algorithm().hasher(),
        checksum: blake3::Hasher::new(),
    }));
    let mut total: Option<u64> = None;
    let mut resumes = 0;
    loop {
        let written = temp.len();
        let broke = match source(written).await {
            Ok(opened) => {
                if written == 0 {
                    total = opened.total;
                    if let (Some(t), Some(tier)) = (total, &tier) {
                        if !tier.write.has_room(t) {
                            return Err(FillError::new(
                                FillErrorKind::NoSpace,
                                format!("blob {digest}: no room for {t} bytes in the cache"),
                            ));
                        }
                    }
                    tx.send_modify(|p| {
                        p.started = true;
                        p.total = total;
                    });
                    // Room for the whole blob before its bytes land, so the cache's
                    // committed and reserved bytes stay under the cap.
                    if let (Some(t), Some(tier)) = (total, &tier) {
                        reservation = tier.reserve(t).await;
                    }
                }
                let mut stream = opened.stream;
                let mut broke = None;
                let mut next = next_batch(&mut stream).await;
                loop {
                    let Batch { chunks, len, end } = std::mem::take(&mut next);
                    if total.is_some_and(|t| temp.len() + len as u64 > t) {
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
                        let copy = chunks.clone();
                        let write = async {
                            temp.write_chunks(copy).await?;
                            let n = temp.len();
                            tx.send_modify(|p| p.written = n);
                            io::Result::Ok(())
                        };
                        let ahead = async {
                            if more {
                                Some(next_batch(&mut stream).await)
                            } else {
                                None
                            }
                        };
                        let (written, fed, following) =
                            tokio::join!(write, hashing.feed(chunks), ahead);
                        hashing = fed?;
                        if let Err(e) = written {
                            if let Some(t) = &tier {
                                t.write.failed(&e);
                            }
                            return Err(FillError::new(
                                FillErrorKind::Internal,
                                format!("cache write: {e}"),
                            ));
                        }
                        if let Some(f) = following {
                            next = f;
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
                    (None, Some(t)) if temp.len() < t => Some(FillError::new(
                        FillErrorKind::Unavailable,
                        format!("blob {digest}: body ended at {} of {t} bytes", temp.len()),
                    )),
                    (None, _) => None,
                }
            }
            Err(e) if written == 0 || e.kind == FillErrorKind::NotFound => return Err(e),
            Err(e) => Some(e),
        };
        match broke {
            None => break,
            Some(e) if e.kind == FillErrorKind::Unavailable && resumes < MAX_RESUMES => {
                resumes += 1;
                tracing::warn!(digest = %digest, offset = temp.len(), error = %e, "blob fill interrupted, resuming");
                tokio::time::sleep(Duration::from_millis(50 << resumes)).await;
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
    let Some(tier) = tier else {
        // No disk tier (unit tests): commit everything.
        if let Err(e) = storage.blobs.commit_file(temp, digest, Some(hasher)).await {
            tracing::warn!(digest = %digest, error = %e, "blob served but not cached");
        }
        return Ok(());
    };
    let reservation = match reservation {
        Some(r) => Some(r),
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

impl Fill {
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
    pub fn reader(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        // The reader's pin keeps the committed file from eviction until it is done.
        let pin = self.tier.as_ref().map(|t| t.pin(&self.digest));
        // Called while handling the request: on a plain-HTTP/1 connection the bytes go
        // out with sendfile(2) from the temp file, and take none of the read budget.
        let splice = crate::server::sendfile::current();
        let reader = splice.is_none().then(file::Reader::new);
        let state = (
            self.clone(),
            self.progress.clone(),
            start,
            false,
            (pin, reader, splice),
        );
        futures_util::stream::unfold(
            state,
            move |(fill, mut rx, pos, done, (pin, reader, splice))| async move {
                if done {
                    return None;
                }
                loop {
                    let (written, outcome, total) = {
                        let p = rx.borrow_and_update();
                        (p.written, p.outcome.clone(), p.total)
                    };
                    if let Some(Err(e)) = &outcome {
                        let err = io::Error::other(e.message.clone());
                        return Some((Err(err), (fill, rx, pos, true, (pin, reader, splice))));
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
                        let read = file::next_chunk(splice.as_ref(), &fill.file, pos, want).await;
                        return match read {
                            Ok(b) => {
                                let next = pos + b.len() as u64;
                                Some((Ok(b), (fill, rx, next, false, (pin, reader, splice))))
                            }
                            Err(e) => Some((Err(e), (fill, rx, pos, true, (pin, reader, splice)))),
                        };
                    }
                    if matches!(outcome, Some(Ok(()))) && pos >= written {
                        // Committed and everything read (length unknown up front).
                        return None;
                    }
                    if rx.changed().await.is_err() {
                        return Some((
                            Err(io::Error::other("fill ended without an outcome")),
                            (fill, rx, pos, true, (pin, reader, splice)),
                        ));
                    }
                }
            },
        )
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
        let chunks: Vec<Bytes> = fill.reader(start, end).try_collect().await?;
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
                let (fill, _) = fills.join(&storage, &digest, "up", src).await.unwrap();
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
            .join(&storage, &digest, "up", src.clone())
            .await
            .unwrap();
        assert!(started);
        let (fill2, started2) = fills.join(&storage, &digest, "up", src).await.unwrap();
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
        let (fill, _) = fills.join(&storage, &digest, "up", src).await.unwrap();
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
        let (fill, _) = fills.join(&storage, &digest, "up", src).await.unwrap();
        let mut r = Box::pin(fill.reader(0, None));
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
}
