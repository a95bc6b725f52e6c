//! The server's recent log records, kept in memory for `GET /admin/logs` and `agent
//! registry logs`: a tracing-subscriber [`Layer`] next to the fmt layer appends each
//! record (time, level, target, message, the other fields as text) to a bounded ring
//! with a sequence number; the oldest records leave first past [`MAX_RECORDS`] records
//! or [`MAX_BYTES`] bytes of text.
//!
//! Access-log lines (target `access`) are the bulk of the log and have their own
//! queryable log (`/admin/access-logs`), so they never enter the ring, nor do debug and
//! trace records; the layer decides that from the event's level and target before it
//! formats anything, so a request pays no more than that check for its access line.

use serde::Serialize;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// At most this many records are kept.
pub const MAX_RECORDS: usize = 10_000;
/// At most this many bytes of text (target, message, fields) are kept.
pub const MAX_BYTES: usize = 8 << 20;
/// One record's message and fields are cut to this many bytes each.
const MAX_TEXT: usize = 16 << 10;

/// One log record as `/admin/logs` answers it.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub seq: u64,
    pub ts_ms: u64,
    pub level: &'static str,
    pub target: String,
    pub message: String,
    /// The event's other fields, `key=value` separated by spaces.
    pub fields: String,
}

impl Record {
    fn size(&self) -> usize {
        self.target.len() + self.message.len() + self.fields.len() + 64
    }
}

/// A level's rank: error 1, warn 2, info 3, debug 4, trace 5 (a record passes `level`
/// when its rank is at most that of `level`). The ring keeps no debug or trace records
/// (see [`RingLayer::keeps`]), so asking for `debug` answers every record it holds.
pub fn rank(level: &str) -> Option<u8> {
    match level.to_ascii_lowercase().as_str() {
        "error" => Some(1),
        "warn" | "warning" => Some(2),
        "info" => Some(3),
        "debug" => Some(4),
        "trace" => Some(5),
        _ => None,
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

struct Inner {
    records: VecDeque<Record>,
    bytes: usize,
    next_seq: u64,
}

/// A bounded ring of log records.
pub struct Ring {
    inner: Mutex<Inner>,
    max_records: usize,
    max_bytes: usize,
}

/// What a query answers: the matching records oldest first, and the newest sequence
/// number the ring has handed out (0 before the first record), to poll `after` from.
#[derive(Debug, Serialize)]
pub struct Page {
    pub records: Vec<Record>,
    pub last_seq: u64,
    /// The oldest sequence number still held (records before it were dropped).
    pub first_seq: u64,
}

/// Which records a query wants.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    /// Most verbose level wanted (see [`rank`]).
    pub max_rank: u8,
    pub since_ms: u64,
    /// Only records with a larger sequence number.
    pub after: u64,
    pub limit: usize,
}

static GLOBAL: Ring = Ring::new(MAX_RECORDS, MAX_BYTES);

/// The process's ring, filled by [`RingLayer`].
pub fn global() -> &'static Ring {
    &GLOBAL
}

impl Ring {
    pub const fn new(max_records: usize, max_bytes: usize) -> Ring {
        Ring {
            inner: Mutex::new(Inner {
                records: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
            }),
            max_records,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a record (its `seq` is assigned here), dropping the oldest past the bounds.
    pub fn push(&self, mut r: Record) {
        let size = r.size();
        let mut g = self.lock();
        r.seq = g.next_seq;
        g.next_seq += 1;
        g.bytes += size;
        g.records.push_back(r);
        while g.records.len() > self.max_records
            || (g.bytes > self.max_bytes && g.records.len() > 1)
        {
            if let Some(old) = g.records.pop_front() {
                g.bytes -= old.size();
            }
        }
    }

    /// The records matching `q`, oldest first. With `after` set these are the oldest
    /// `limit` ones after it (so a follower pages forward without gaps); without, the
    /// newest `limit` ones.
    pub fn query(&self, q: &Query) -> Page {
        let g = self.lock();
        let last_seq = g.next_seq - 1;
        let first_seq = g.records.front().map_or(g.next_seq, |r| r.seq);
        let want = |r: &&Record| {
            r.seq > q.after
                && r.ts_ms >= q.since_ms
                && rank(r.level).is_some_and(|k| k <= q.max_rank)
        };
        let records: Vec<Record> = if q.after > 0 {
            g.records
                .iter()
                .filter(want)
                .take(q.limit)
                .cloned()
                .collect()
        } else {
            let mut v: Vec<Record> = g
                .records
                .iter()
                .rev()
                .filter(want)
                .take(q.limit)
                .cloned()
                .collect();
            v.reverse();
            v
        };
        Page {
            records,
            last_seq,
            first_seq,
        }
    }
}

/// Collects an event's `message` and its other fields as text.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

fn cut(s: &mut String) {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.sep();
            let _ = write!(self.rest, "{}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.sep();
            let _ = write!(self.rest, "{}={value:?}", field.name());
        }
    }
}

impl Fields {
    fn sep(&mut self) {
        if !self.rest.is_empty() {
            self.rest.push(' ');
        }
    }
}

/// The layer that fills a [`Ring`]: info, warn and error records, except target `access`.
pub struct RingLayer {
    ring: &'static Ring,
}

impl RingLayer {
    /// A layer filling the process's ring ([`global`]).
    pub fn global() -> RingLayer {
        RingLayer { ring: &GLOBAL }
    }

    pub fn new(ring: &'static Ring) -> RingLayer {
        RingLayer { ring }
    }

    /// Whether a record of this level and target is kept (no formatting happens before).
    pub fn keeps(level: &Level, target: &str) -> bool {
        *level <= Level::INFO && target != "access"
    }
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !Self::keeps(meta.level(), meta.target()) {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        cut(&mut f.message);
        cut(&mut f.rest);
        self.ring.push(Record {
            seq: 0,
            ts_ms: now_ms(),
            level: level_name(meta.level()),
            target: meta.target().to_string(),
            message: f.message,
            fields: f.rest,
        });
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    fn q(max_rank: u8, after: u64, limit: usize) -> Query {
        Query {
            max_rank,
            since_ms: 0,
            after,
            limit,
        }
    }

    #[test]
    fn the_layer_keeps_info_and_up_without_access_lines() {
        static RING: Ring = Ring::new(100, 1 << 20);
        let sub = tracing_subscriber::registry().with(RingLayer::new(&RING));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "access", status = 200, "GET");
            tracing::debug!("too verbose");
            tracing::warn!(repo = "team/app", attempt = 3, "upstream slow");
            tracing::error!("disk full");
            tracing::info!("listening");
        });
        let p = RING.query(&q(3, 0, 100));
        let got: Vec<(&str, &str, &str)> = p
            .records
            .iter()
            .map(|r| (r.level, r.message.as_str(), r.fields.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("warn", "upstream slow", "repo=\"team/app\" attempt=3"),
                ("error", "disk full", ""),
                ("info", "listening", ""),
            ]
        );
        assert_eq!(p.records[0].seq + 2, p.records[2].seq);
        assert_eq!(p.last_seq, p.records[2].seq);
        // The level filter: warn and error only.
        let warn: Vec<_> = RING.query(&q(2, 0, 100)).records;
        assert_eq!(warn.len(), 2);
        // `debug` (the seed's `agent registry logs --level debug`): all the ring holds.
        let debug = rank("debug").expect("debug is a level");
        assert_eq!(RING.query(&q(debug, 0, 100)).records.len(), 3);
        // After a sequence number: only the newer ones.
        let after = RING.query(&q(3, p.records[0].seq, 100)).records;
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].message, "disk full");
    }

    #[test]
    fn bounded_by_count_and_bytes_oldest_leave_first() {
        let ring = Ring::new(3, 1 << 20);
        let rec = |m: &str| Record {
            seq: 0,
            ts_ms: 1,
            level: "info",
            target: "t".into(),
            message: m.into(),
            fields: String::new(),
        };
        for m in ["a", "b", "c", "d", "e"] {
            ring.push(rec(m));
        }
        let p = ring.query(&q(3, 0, 10));
        let msgs: Vec<&str> = p.records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["c", "d", "e"]);
        assert_eq!((p.first_seq, p.last_seq), (3, 5));
        // Without `after` a limit keeps the newest; with it, the oldest after it.
        let newest: Vec<String> = ring
            .query(&q(3, 0, 2))
            .records
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(newest, ["d", "e"]);
        let next: Vec<String> = ring
            .query(&q(3, 3, 1))
            .records
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(next, ["d"]);

        let ring = Ring::new(1000, 500);
        for _ in 0..100 {
            ring.push(rec(&"x".repeat(100)));
        }
        let held = ring.query(&q(3, 0, 1000)).records.len();
        assert!(held > 0 && held * 164 <= 500, "{held} records held");
        assert!(ring.lock().bytes <= 500);
    }
}
