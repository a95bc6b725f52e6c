//! Stale tags revalidated in the background: one HEAD per (upstream, repository, tag) at
//! a time, every request that finds the mapping stale waiting on the same answer for at
//! most [`REVALIDATE_WAIT`] from the revalidation's start.

use crate::oci::Digest;
use crate::upstream::{Upstream, UpstreamError};
use http::{header, HeaderMap, HeaderValue, Method};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the mirror asks upstreams for; nothing is converted, so every format is accepted.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

pub fn accept_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT));
    h
}

/// Which tag a revalidation is for: (upstream, repository, tag).
pub type Key = (String, String, String);

/// What [`Revalidations::join`] found.
pub enum Joined {
    /// One is running: wait on it.
    Running(Waiting),
    /// The caller started it and answers through the sender.
    Started(Waiting, watch::Sender<Option<HeadAnswer>>),
}

/// A HEAD's answer: the digest, media type and length the upstream states.
pub type HeadAnswer =
    std::result::Result<(Option<Digest>, Option<String>, Option<u64>), UpstreamError>;

/// How long a request waits for the revalidation of a stale tag (counted from the
/// revalidation's start) before the stale mapping is served with `Warning: 110`.
pub const REVALIDATE_WAIT: Duration = Duration::from_millis(500);

/// Revalidations in flight, one per (upstream, repository, tag): every request that finds
/// the mapping stale while one runs waits on the same HEAD.
#[derive(Default)]
pub struct Revalidations {
    inflight: Mutex<HashMap<Key, Waiting>>,
}

/// A revalidation to wait on: when it started and its answer once there.
#[derive(Clone)]
pub struct Waiting {
    started: Instant,
    answer: watch::Receiver<Option<HeadAnswer>>,
}

impl Revalidations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Waiting>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The revalidation of `key` in flight, or a new one the caller must run: it sends
    /// the answer through the sender it gets, after calling [`Revalidations::done`].
    pub fn join(&self, key: Key) -> Joined {
        let mut inflight = self.lock();
        if let Some(w) = inflight.get(&key) {
            return Joined::Running(w.clone());
        }
        let (tx, rx) = watch::channel(None);
        let waiting = Waiting {
            started: Instant::now(),
            answer: rx,
        };
        inflight.insert(key, waiting.clone());
        Joined::Started(waiting, tx)
    }

    /// Takes `key`'s revalidation out of the table (before its answer is sent).
    pub fn done(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Revalidations running now (for tests and /health).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The revalidation's answer; None when it has not come within [`REVALIDATE_WAIT`] of the
/// revalidation's start and the stale row may be served (`servable`), else waits for it.
impl Waiting {
    pub async fn wait(self, servable: bool) -> Option<HeadAnswer> {
        let mut w = self;
        let done = async {
            match w.answer.wait_for(|a| a.is_some()).await {
                Ok(a) => a.clone(),
                Err(_) => None,
            }
        };
        let answer = match servable {
            true => tokio::time::timeout_at((w.started + REVALIDATE_WAIT).into(), done)
                .await
                .ok()?,
            false => done.await,
        };
        // A revalidation task that died (a panic) leaves no answer: ask again directly.
        Some(answer.unwrap_or_else(|| {
            Err(UpstreamError::Request {
                upstream: String::new(),
                what: String::new(),
                message: "the revalidation ended without an answer".into(),
            })
        }))
    }
}

/// HEAD for a manifest: the digest, media type and length its headers state.
pub async fn head_manifest(up: &Upstream, path: &str, repo: &str) -> HeadAnswer {
    up.send(Method::HEAD, path, repo, accept_headers())
        .await
        .map(|r| {
            let h = r.headers();
            let digest = h
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            let mt = h
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
            let len = h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (digest, mt, len)
        })
}
