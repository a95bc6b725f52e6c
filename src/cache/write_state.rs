//! Whether the cache may write: a disk that is really full (ENOSPC or EDQUOT on a write
//! whose room was reserved) or a read-only or unwritable cache directory (EROFS, EACCES,
//! EPERM) turns caching off, said once in the log and in
//! `agent_registry_cache_write_disabled`; requests stream through meanwhile. Every few
//! seconds a request probes (free space and a test write in `tmp/`) and caching resumes
//! by itself when the probe succeeds.
//!
//! An object that merely does not fit never turns caching off: fills reserve their
//! length against the filesystem's free space here ([`WriteState::claim`], minus what
//! other fills in flight reserved), and one that does not fit streams through alone.

use crate::storage::Storage;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a disabled cache probes whether it can write again.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Free bytes the probe wants before caching resumes.
const MIN_FREE: u64 = 1 << 20;

pub struct WriteState {
    disabled: AtomicBool,
    /// Bytes reserved on the filesystem by fills in flight (not yet written in full).
    claimed: Mutex<u64>,
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
            claimed: Mutex::new(0),
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
        if space.free_bytes < MIN_FREE {
            return Err(io::Error::other("no free space"));
        }
        let path = self.tmp.join(format!("probe-{}", uuid::Uuid::new_v4()));
        let r = std::fs::write(&path, [0u8; 4096]);
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Reserves `size` bytes of the filesystem's free space (keeping a margin, and minus
    /// what other fills in flight reserved). `Err(short)`: how many bytes are missing;
    /// nothing is reserved then, and caching stays on for whatever fits. Give the bytes
    /// back with [`WriteState::release`].
    pub fn claim(&self, size: u64) -> Result<(), u64> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let free = match crate::metrics::fs_space(&self.tmp) {
            Ok(s) => s.free_bytes,
            // Unknown: the write itself will tell.
            Err(_) => u64::MAX,
        };
        let want = size.saturating_add(MIN_FREE).saturating_add(*claimed);
        if free < want {
            return Err(want - free);
        }
        *claimed += size;
        Ok(())
    }

    /// Gives back bytes reserved with [`WriteState::claim`].
    pub fn release(&self, size: u64) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        *claimed = claimed.saturating_sub(size);
    }

    /// Reports a failed cache write. Returns true if it means the cache cannot write,
    /// in which case caching is off until a probe succeeds (logged once).
    pub fn failed(&self, e: &io::Error) -> bool {
        if !is_unwritable(e) {
            return false;
        }
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if !self.disabled.swap(true, Ordering::SeqCst) {
            tracing::warn!(error = %e, "cache writes disabled: serving through without caching until the cache directory is writable again");
            crate::metrics::cache_write_disabled(true);
        }
        true
    }
}
