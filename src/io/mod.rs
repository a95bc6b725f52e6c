//! File-to-socket I/O: positioned chunk reads of blob files under a shared memory budget
//! (`file.rs`), and sendfile(2) for plain-TCP HTTP/1 connections (`sendfile.rs`). A
//! caller hands over a file and a range; [`Out`] decides how the bytes reach the socket.

pub mod file;
pub mod sendfile;

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::sync::Arc;

/// How the response being produced on this task sends file bytes: sendfile(2)
/// placeholders on a plain-HTTP/1 connection (no byte in user space, no read budget),
/// else chunks read into memory under the read budget.
pub struct Out {
    splice: Option<Arc<sendfile::Slot>>,
    /// Counts the response among those reading into memory (None with sendfile).
    _reader: Option<file::Reader>,
}

impl Out {
    /// The way out of the response the current task is handling.
    pub fn current() -> Out {
        let splice = sendfile::current();
        let reader = splice.is_none().then(file::Reader::new);
        Out {
            splice,
            _reader: reader,
        }
    }

    /// The next chunk of the response from `file` at `pos`, at most `max` bytes.
    pub async fn chunk(&self, file: &Arc<File>, pos: u64, max: u64) -> io::Result<Bytes> {
        file::next_chunk(self.splice.as_ref(), file, pos, max).await
    }
}
