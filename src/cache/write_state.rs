//! Whether the cache may write: a full disk (ENOSPC, EDQUOT) or a read-only or
//! unwritable cache directory (EROFS, EACCES, EPERM) turns caching off, said once in the
//! log and in `agent_registry_cache_write_disabled`; requests stream through meanwhile.
//! Every few seconds a request probes (free space and a test write in `tmp/`) and
//! caching resumes by itself when the probe succeeds.

use crate::storage::Storage;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a disabled cache probes whether it can write again.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Free bytes the probe wants before caching resumes.
const MIN_FREE: u64 = 1 << 20;

pub struct WriteState {
    disabled: AtomicBool,
    /// Free bytes the probe wants before writes resume (the blob that did not fit).
    needed: AtomicU64,
    last_probe: Mutex<Instant>,
    tmp: PathBuf,
}

/// Whether `e` means the cache cannot write (as opposed to a one-off failure).
pub fn is_unwritable(e: &io::Error) -> bool {
    const EPERM: i32 = 1;
    const EACCES: i32 = 13;
    const ENOSPC: i32 = 28;
    const EROFS: i32 = 30;
    const EDQUOT: i32 = 122;
    matches!(
        e.raw_os_error(),
        Some(EPERM | EACCES | ENOSPC | EROFS | EDQUOT)
    ) || matches!(
        e.kind(),
        io::ErrorKind::StorageFull
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::PermissionDenied
    )
}

impl WriteState {
    pub fn new(storage: &Storage) -> WriteState {
        WriteState {
            disabled: AtomicBool::new(false),
            needed: AtomicU64::new(MIN_FREE),
            last_probe: Mutex::new(Instant::now()),
            tmp: storage.blobs.tmp_dir().to_path_buf(),
        }
    }

    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::SeqCst)
    }

    /// Whether the cache may write now; a disabled cache probes every few seconds.
    pub fn writable(&self) -> bool {
        if !self.disabled() {
            return true;
        }
        {
            let mut last = self.last_probe.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < PROBE_EVERY {
                return false;
            }
            *last = Instant::now();
        }
        if self.probe().is_ok() && self.disabled.swap(false, Ordering::SeqCst) {
            tracing::warn!("cache writes resumed: the cache directory is writable again");
            crate::metrics::cache_write_disabled(false);
        }
        !self.disabled()
    }

    fn probe(&self) -> io::Result<()> {
        let space = crate::metrics::fs_space(&self.tmp)?;
        if space.free_bytes < self.needed.load(Ordering::SeqCst).max(MIN_FREE) {
            return Err(io::Error::other("no free space"));
        }
        let path = self.tmp.join(format!("probe-{}", uuid::Uuid::new_v4()));
        let r = std::fs::write(&path, [0u8; 4096]);
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Whether the filesystem has room for `size` more bytes (and a margin). If not, the
    /// cache stops writing until that much is free again.
    pub fn has_room(&self, size: u64) -> bool {
        let want = size.saturating_add(MIN_FREE);
        match crate::metrics::fs_space(&self.tmp) {
            Ok(s) if s.free_bytes < want => {
                self.needed.store(want, Ordering::SeqCst);
                self.failed(&io::Error::from(io::ErrorKind::StorageFull));
                false
            }
            _ => true,
        }
    }

    /// Reports a failed cache write. Returns true if it means the cache cannot write,
    /// in which case caching is off until a probe succeeds (logged once).
    pub fn failed(&self, e: &io::Error) -> bool {
        if !is_unwritable(e) {
            return false;
        }
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if e.kind() != io::ErrorKind::StorageFull || e.raw_os_error().is_some() {
            self.needed.store(MIN_FREE, Ordering::SeqCst);
        }
        if !self.disabled.swap(true, Ordering::SeqCst) {
            tracing::warn!(error = %e, "cache writes disabled: serving through without caching until the cache directory is writable again");
            crate::metrics::cache_write_disabled(true);
        }
        true
    }
}
