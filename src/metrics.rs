//! Every metric name, once, with its description; the process-wide Prometheus recorder;
//! and the small recording functions the request path calls.
//!
//! Names follow `agent_registry_<thing>_<unit>[_total]`. Label values come only from closed
//! sets (`&'static str`) or configured upstream names, never from requests or error text.
//! Values that are cheap to read when asked (storage space, rate-limit headroom, the
//! memory tier) are set at scrape time by the caller of [`render`] (the `/metrics`
//! handler, through [`scrape_upstream`], [`scrape_storage`] and [`scrape_cache`]);
//! everything else is recorded as it happens. This module takes plain values (labels,
//! counts, byte sizes): it knows nothing of the state or the services that feed it. The recorder is installed once per process ([`install`]): tests run many
//! servers in one process and they all share it.

use ::metrics::{counter, gauge, histogram, Unit};
use http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const REQUESTS_TOTAL: &str = "agent_registry_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "agent_registry_request_duration_seconds";
pub const SERVED_BYTES_TOTAL: &str = "agent_registry_served_bytes_total";
pub const UPSTREAM_REQUESTS_TOTAL: &str = "agent_registry_upstream_requests_total";
pub const UPSTREAM_REQUEST_DURATION_SECONDS: &str =
    "agent_registry_upstream_request_duration_seconds";
pub const UPSTREAM_RATELIMIT_REMAINING: &str = "agent_registry_upstream_ratelimit_remaining";
pub const UPSTREAM_STATE: &str = "agent_registry_upstream_state";
pub const UPSTREAM_CIRCUIT_OPENINGS_TOTAL: &str = "agent_registry_upstream_circuit_openings_total";
pub const UPSTREAM_RATE_LIMITS_TOTAL: &str = "agent_registry_upstream_rate_limits_total";
pub const UPSTREAM_REFUSED_TOTAL: &str = "agent_registry_upstream_refused_total";
pub const FILLS_IN_FLIGHT: &str = "agent_registry_fills_in_flight";
pub const FILL_WAITERS_TOTAL: &str = "agent_registry_fill_waiters_total";
pub const SENDFILE_BYTES_TOTAL: &str = "agent_registry_sendfile_bytes_total";
pub const FILL_FAILURES_TOTAL: &str = "agent_registry_fill_failures_total";
pub const PUSH_OPERATIONS_TOTAL: &str = "agent_registry_push_operations_total";
pub const PULL_OPERATIONS_TOTAL: &str = "agent_registry_pull_operations_total";
pub const STORAGE_USED_BYTES: &str = "agent_registry_storage_used_bytes";
pub const STORAGE_FREE_BYTES: &str = "agent_registry_storage_free_bytes";
pub const CACHE_ENTRIES: &str = "agent_registry_cache_entries";
pub const CACHE_BYTES: &str = "agent_registry_cache_bytes";
pub const CACHE_MAX_BYTES: &str = "agent_registry_cache_max_bytes";
pub const CACHE_EVICTIONS_TOTAL: &str = "agent_registry_cache_evictions_total";
pub const CACHE_EVICTED_BYTES_TOTAL: &str = "agent_registry_cache_evicted_bytes_total";
pub const CACHE_WRITE_DISABLED: &str = "agent_registry_cache_write_disabled";
pub const GC_RUNS_TOTAL: &str = "agent_registry_gc_runs_total";
pub const GC_FREED_BYTES_TOTAL: &str = "agent_registry_gc_freed_bytes_total";
pub const RATE_LIMITED_TOTAL: &str = "agent_registry_rate_limited_total";
pub const AUTH_FAILURES_TOTAL: &str = "agent_registry_auth_failures_total";
pub const AUTH_DENIED_TOTAL: &str = "agent_registry_auth_denied_total";
pub const TOKENS_ISSUED_TOTAL: &str = "agent_registry_tokens_issued_total";
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "agent_registry_access_log_dropped_total";
pub const PARENT_FALLBACKS_TOTAL: &str = "agent_registry_parent_fallbacks_total";
pub const PREHEAT_BLOBS_TOTAL: &str = "agent_registry_preheat_blobs_total";
pub const PREFETCH_FILLS_TOTAL: &str = "agent_registry_prefetch_fills_total";
pub const PEER_FETCHES_TOTAL: &str = "agent_registry_peer_fetches_total";
pub const PEER_REQUESTS_TOTAL: &str = "agent_registry_peer_requests_total";
pub const POLICY_DENIED_TOTAL: &str = "agent_registry_policy_denied_total";
pub const POLICY_WARNINGS_TOTAL: &str = "agent_registry_policy_warnings_total";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, kind, unit, labels and help text (the README table lists the same;
/// its meaning column is the help text, checked by a test).
#[derive(Debug, Clone, Copy)]
pub struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    labels: &'static [&'static str],
    help: &'static str,
) -> Def {
    Def {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// Every metric this process exports (one row each; kept as a table).
#[rustfmt::skip]
pub const ALL: &[Def] = &[
    def(REQUESTS_TOTAL, C, Unit::Count, &["route", "method", "status_class", "cache"],
        "Requests answered; route is one of base, catalog, search, tags, manifest, blob, upload, referrers, health, metrics, token, admin, not_found; status_class 1xx..5xx; cache hit, miss, coalesced, stale, revalidated, bypass, or none for hosted and non-repository requests"),
    def(REQUEST_DURATION_SECONDS, H, Unit::Seconds, &["route", "method"],
        "Time from the request to the response head (buckets 0.5 ms .. 30 s)"),
    def(SERVED_BYTES_TOTAL, C, Unit::Bytes, &["source"],
        "Bytes of 200/206 GET responses for repositories by origin: upstream (a miss or coalesced fill), disk (a cache hit, stale or revalidated, or hosted content), memory; disk against upstream is the egress saved"),
    def(UPSTREAM_REQUESTS_TOTAL, C, Unit::Count, &["upstream", "outcome"],
        "Requests to an upstream (retries, redirects and the 401 round trip count once); outcome: ok, not_found, client_error, server_error, timeout, connect_error, rate_limited, auth_error"),
    def(UPSTREAM_REQUEST_DURATION_SECONDS, H, Unit::Seconds, &["upstream"],
        "Time until an upstream's response head, retries and auth included"),
    def(UPSTREAM_RATELIMIT_REMAINING, G, Unit::Count, &["upstream"],
        "The last ratelimit-remaining an upstream sent (Docker Hub's pulls left); absent until one was seen"),
    def(UPSTREAM_STATE, G, Unit::Count, &["upstream"],
        "An upstream's health: 0 healthy, 1 rate-limited (waiting out a 429), 2 down (circuit open, requests fail fast), 3 half-open (one probe in flight)"),
    def(UPSTREAM_CIRCUIT_OPENINGS_TOTAL, C, Unit::Count, &["upstream"],
        "Times an upstream was marked down after consecutive failures or a timeout (a failed half-open probe does not count again)"),
    def(UPSTREAM_RATE_LIMITS_TOTAL, C, Unit::Count, &["upstream"],
        "429 answers from an upstream; each one holds back requests until its Retry-After"),
    def(UPSTREAM_REFUSED_TOTAL, C, Unit::Count, &["upstream", "reason"],
        "Requests not sent to an upstream because it is rate_limited or down (circuit open or half-open)"),
    def(FILLS_IN_FLIGHT, G, Unit::Count, &[],
        "Blob fills from an upstream in progress"),
    def(FILL_WAITERS_TOTAL, C, Unit::Count, &[],
        "Requests that joined a fill in progress instead of fetching the blob again"),
    def(SENDFILE_BYTES_TOTAL, C, Unit::Bytes, &[],
        "Response bytes sent from files with sendfile(2): blob bodies on plain-HTTP/1 connections (server.sendfile)"),
    def(FILL_FAILURES_TOTAL, C, Unit::Count, &["reason"],
        "Fills that failed: not_found, unavailable, mismatch (digest), internal (disk); a blob that does not fit streams through and is not a failure"),
    def(PUSH_OPERATIONS_TOTAL, C, Unit::Count, &[],
        "Successful manifest PUTs (a pushed image or artifact)"),
    def(PULL_OPERATIONS_TOTAL, C, Unit::Count, &[],
        "Successful manifest GETs, hosted or proxied (a pulled image)"),
    def(STORAGE_USED_BYTES, G, Unit::Bytes, &[],
        "Used bytes of the filesystem holding storage.data_dir (statvfs at scrape time)"),
    def(STORAGE_FREE_BYTES, G, Unit::Bytes, &[],
        "Bytes still available to the registry on that filesystem"),
    def(CACHE_ENTRIES, G, Unit::Count, &["tier"],
        "Entries in a cache tier: memory (manifests, tag rows, referrers, small blobs), disk (cached blobs and manifests)"),
    def(CACHE_BYTES, G, Unit::Bytes, &["tier"],
        "Bytes held by a cache tier (memory, disk)"),
    def(CACHE_MAX_BYTES, G, Unit::Bytes, &["tier"],
        "The byte cap of a cache tier (cache.memory.max_size, cache.max_size)"),
    def(CACHE_EVICTIONS_TOTAL, C, Unit::Count, &["tier"],
        "Objects evicted or purged from the disk tier"),
    def(CACHE_EVICTED_BYTES_TOTAL, C, Unit::Bytes, &["tier"],
        "Bytes evicted or purged from the disk tier"),
    def(CACHE_WRITE_DISABLED, G, Unit::Count, &[],
        "1 while the cache cannot write (full disk, read-only directory) and serves through without caching"),
    def(GC_RUNS_TOTAL, C, Unit::Count, &["mode"],
        "Garbage collections of hosted repositories, run or dry_run"),
    def(GC_FREED_BYTES_TOTAL, C, Unit::Bytes, &[],
        "Bytes of hosted blobs and manifests deleted by garbage collection"),
    def(RATE_LIMITED_TOTAL, C, Unit::Count, &[],
        "Requests refused with 429 by the per-client rate limits of [limits] (manifest and blob requests over their quota)"),
    def(AUTH_FAILURES_TOTAL, C, Unit::Count, &["reason"],
        "Failed authentications: bad_password, bad_token, blocked (brute-force limit)"),
    def(AUTH_DENIED_TOTAL, C, Unit::Count, &["action"],
        "Requests the access rules refused, by action (pull, push, delete, admin)"),
    def(TOKENS_ISSUED_TOTAL, C, Unit::Count, &[],
        "Bearer tokens issued by /token"),
    def(ACCESS_LOG_DROPPED_TOTAL, C, Unit::Count, &[],
        "Access/audit records dropped because the log writer fell behind"),
    def(PARENT_FALLBACKS_TOTAL, C, Unit::Count, &["upstream"],
        "Requests sent to the origin upstream because the parent mirror was unreachable (mirror.parent_fallback)"),
    def(PREHEAT_BLOBS_TOTAL, C, Unit::Count, &[],
        "Blobs a preheat made sure are cached (admin API, CLI or [[preheat]]), filled or already held"),
    def(PREFETCH_FILLS_TOTAL, C, Unit::Count, &["outcome"],
        "Layer prefetches after a manifest miss (mirror.prefetch_layers): done, failed, or skipped (held or in flight already)"),
    def(PEER_FETCHES_TOTAL, C, Unit::Count, &["outcome"],
        "Cold blobs this cluster node asked of their owner node instead of the upstream: ok, not_found, refused (the owner rejected the secret), error (down, slow or broken off; the node then fetched from the upstream itself)"),
    def(PEER_REQUESTS_TOTAL, C, Unit::Count, &["outcome"],
        "Peer requests this node received from other cluster nodes: accepted (served through its own fill), refused (a missing or wrong signature)"),
    def(POLICY_DENIED_TOTAL, C, Unit::Count, &["policy"],
        "Manifest pulls refused with 403 by a pull policy: signature (no signature verifies with the policy's keys) or vulnerability (a finding at or above block_vulnerabilities, or no report under unscanned = block)"),
    def(POLICY_WARNINGS_TOTAL, C, Unit::Count, &["policy"],
        "Manifest pulls a mode = warn signature rule objected to and served anyway"),
];

/// Histogram buckets for latencies: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Installs the process-wide recorder on the first call and describes every metric;
/// later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        STARTED.get_or_init(Instant::now);
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        describe();
        let h = handle.clone();
        let upkeep = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                h.run_upkeep();
            });
        if let Err(e) = upkeep {
            tracing::warn!(error = %e, "metrics upkeep thread not started");
        }
        handle
    })
}

fn describe() {
    for d in ALL {
        match d.kind {
            Kind::Counter => ::metrics::describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => ::metrics::describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => ::metrics::describe_histogram!(d.name, d.unit, d.help),
        }
    }
    // Label-less series exist from the start, so a scrape shows 0 rather than nothing.
    for name in [
        FILL_WAITERS_TOTAL,
        SENDFILE_BYTES_TOTAL,
        PUSH_OPERATIONS_TOTAL,
        PULL_OPERATIONS_TOTAL,
        RATE_LIMITED_TOTAL,
        AUTH_FAILURES_TOTAL,
        PREHEAT_BLOBS_TOTAL,
    ] {
        counter!(name).increment(0);
    }
    gauge!(FILLS_IN_FLIGHT).increment(0.0);
    gauge!(CACHE_WRITE_DISABLED).set(0.0);
    counter!(GC_FREED_BYTES_TOTAL).increment(0);
}

/// The cache stopped (true) or resumed (false) writing.
pub fn cache_write_disabled(disabled: bool) {
    gauge!(CACHE_WRITE_DISABLED).set(if disabled { 1.0 } else { 0.0 });
}

/// A garbage collection finished.
pub fn gc_run(dry_run: bool, freed_bytes: u64) {
    let mode = if dry_run { "dry_run" } else { "run" };
    counter!(GC_RUNS_TOTAL, "mode" => mode).increment(1);
    if !dry_run {
        counter!(GC_FREED_BYTES_TOTAL).increment(freed_bytes);
    }
}

/// Time since the recorder was installed (the server's start).
pub fn uptime() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}

/// Where the bytes of a response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Disk,
    Upstream,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Disk => "disk",
            Source::Upstream => "upstream",
        }
    }
}

pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// One finished request, as the metrics see it.
pub struct Finished<'a> {
    /// The route label (`web::route::LABELS`).
    pub route: &'static str,
    pub method: &'a Method,
    pub status: StatusCode,
    /// How the cache served it (`hit`, `miss`, ...), `none` when not proxied.
    pub cache: &'static str,
    /// The body bytes of a successful GET of a repository's object, and where they came from.
    pub served: Option<(Source, u64)>,
    pub elapsed: Duration,
}

/// Records one finished request (called once per request, by dispatch).
pub fn request(r: Finished<'_>) {
    let method = method_label(r.method);
    let pull_or_push = match (r.route, method, r.status) {
        ("manifest", "GET", StatusCode::OK) => Some(PULL_OPERATIONS_TOTAL),
        ("manifest", "PUT", StatusCode::CREATED) => Some(PUSH_OPERATIONS_TOTAL),
        _ => None,
    };
    let labels = [r.route, method, status_class(r.status), r.cache];
    SERIES.with_borrow_mut(|series| {
        series.requests(labels).increment(1);
        series
            .duration([r.route, method])
            .record(r.elapsed.as_secs_f64());
        if let Some(name) = pull_or_push {
            series.operations(name).increment(1);
        }
        if let Some((source, n)) = r.served {
            series.served(source.as_str()).increment(n);
        }
    });
}

/// Label values as the addresses of their `&'static str`s: a cheap key (two equal
/// strings at different addresses only make two handles of the same series).
type LabelKey<const N: usize> = [usize; N];

fn label_key<const N: usize>(labels: [&'static str; N]) -> LabelKey<N> {
    labels.map(|l| l.as_ptr() as usize ^ l.len().rotate_left(48))
}

/// A multiply-xor hasher for the few words of a [`LabelKey`].
#[derive(Default)]
struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    /// A key's words arrive as one slice of bytes (integers hash as a slice): taken a
    /// word at a time.
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.write_u64(u64::from_ne_bytes(word));
        }
        for b in words.remainder() {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Handles<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<WordHasher>>;

/// Handles of the per-request series, per thread. Looking a series up in the registry
/// hashes its name and labels and builds its key: about ten allocations a request for
/// these four series, against one hash of a few words here. Before the recorder is
/// installed nothing is kept (a handle taken then would record nowhere).
#[derive(Default)]
struct Series {
    requests: Handles<LabelKey<4>, ::metrics::Counter>,
    durations: Handles<LabelKey<2>, ::metrics::Histogram>,
    operations: Handles<LabelKey<1>, ::metrics::Counter>,
    served: Handles<LabelKey<1>, ::metrics::Counter>,
}

thread_local! {
    static SERIES: std::cell::RefCell<Series> = std::cell::RefCell::default();
}

/// `make()` once per key after the recorder is installed; before it, every time.
fn handle<K: Eq + std::hash::Hash, V: Clone>(
    map: &mut Handles<K, V>,
    key: K,
    make: impl FnOnce() -> V,
) -> V {
    if HANDLE.get().is_none() {
        return make();
    }
    map.entry(key).or_insert_with(make).clone()
}

impl Series {
    fn requests(&mut self, [route, method, class, cache]: [&'static str; 4]) -> ::metrics::Counter {
        let key = label_key([route, method, class, cache]);
        handle(&mut self.requests, key, || {
            counter!(REQUESTS_TOTAL, "route" => route, "method" => method,
                "status_class" => class, "cache" => cache)
        })
    }

    fn duration(&mut self, [route, method]: [&'static str; 2]) -> ::metrics::Histogram {
        let key = label_key([route, method]);
        handle(
            &mut self.durations,
            key,
            || histogram!(REQUEST_DURATION_SECONDS, "route" => route, "method" => method),
        )
    }

    fn operations(&mut self, name: &'static str) -> ::metrics::Counter {
        handle(&mut self.operations, label_key([name]), || counter!(name))
    }

    fn served(&mut self, source: &'static str) -> ::metrics::Counter {
        handle(
            &mut self.served,
            label_key([source]),
            || counter!(SERVED_BYTES_TOTAL, "source" => source),
        )
    }
}

/// An upstream's circuit opened.
pub fn upstream_circuit_opened(upstream: &str) {
    counter!(UPSTREAM_CIRCUIT_OPENINGS_TOTAL, "upstream" => upstream.to_string()).increment(1);
}

/// An upstream answered 429.
pub fn upstream_rate_limited(upstream: &str) {
    counter!(UPSTREAM_RATE_LIMITS_TOTAL, "upstream" => upstream.to_string()).increment(1);
}

/// A request was not sent because of the upstream's state.
/// `reason`: `rate_limited` or `down`.
pub fn upstream_refused(upstream: &str, reason: &'static str) {
    counter!(UPSTREAM_REFUSED_TOTAL, "upstream" => upstream.to_string(), "reason" => reason)
        .increment(1);
}

/// Records one `Upstream::send` (time to the response head, retries included) with its
/// outcome label (`ok`, `not_found`, `timeout`, ...).
pub fn upstream_request(upstream: &str, outcome: &'static str, elapsed: Duration) {
    counter!(UPSTREAM_REQUESTS_TOTAL, "upstream" => upstream.to_string(), "outcome" => outcome)
        .increment(1);
    histogram!(UPSTREAM_REQUEST_DURATION_SECONDS, "upstream" => upstream.to_string())
        .record(elapsed.as_secs_f64());
}

pub fn fill_started() {
    gauge!(FILLS_IN_FLIGHT).increment(1.0);
}

/// A fill left the table: with the reason label of its failure when it failed
/// (`not_found`, `unavailable`, `mismatch`, `internal`).
pub fn fill_finished(failure: Option<&'static str>) {
    gauge!(FILLS_IN_FLIGHT).decrement(1.0);
    if let Some(reason) = failure {
        counter!(FILL_FAILURES_TOTAL, "reason" => reason).increment(1);
    }
}

/// A request went to the origin because `upstream`'s parent mirror was unreachable.
pub fn parent_fallback(upstream: &str) {
    counter!(PARENT_FALLBACKS_TOTAL, "upstream" => upstream.to_string()).increment(1);
}

/// A preheat made sure a blob is cached.
pub fn preheat_blob() {
    counter!(PREHEAT_BLOBS_TOTAL).increment(1);
}

/// A layer prefetch ended: `done`, `failed` or `skipped`.
pub fn prefetch_fill(outcome: &'static str) {
    counter!(PREFETCH_FILLS_TOTAL, "outcome" => outcome).increment(1);
}

/// A request joined a fill in progress.
pub fn fill_joined() {
    counter!(FILL_WAITERS_TOTAL).increment(1);
}

/// A blob asked of its owner node (`ok`, `not_found`, `refused`, `error`).
pub fn peer_fetch(outcome: &'static str) {
    counter!(PEER_FETCHES_TOTAL, "outcome" => outcome).increment(1);
}

/// A peer request received (`accepted`, `refused`).
pub fn peer_request(outcome: &'static str) {
    counter!(PEER_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
}

/// Bytes sent with sendfile(2).
pub fn sendfile_bytes(n: usize) {
    counter!(SENDFILE_BYTES_TOTAL).increment(n as u64);
}

/// A failed authentication; `reason` is one of a closed set.
pub fn auth_failure_reason(reason: &'static str) {
    counter!(AUTH_FAILURES_TOTAL, "reason" => reason).increment(1);
}

pub fn auth_denied(action: crate::config::Action) {
    counter!(AUTH_DENIED_TOTAL, "action" => action.as_str()).increment(1);
}

pub fn token_issued() {
    counter!(TOKENS_ISSUED_TOTAL).increment(1);
}

pub fn access_log_dropped() {
    counter!(ACCESS_LOG_DROPPED_TOTAL).increment(1);
}

/// A manifest refused by a pull policy; `policy` is `signature` or `vulnerability`.
pub fn policy_denied(policy: &'static str) {
    counter!(POLICY_DENIED_TOTAL, "policy" => policy).increment(1);
}

/// A manifest served despite a `mode = "warn"` rule's objection.
pub fn policy_warning(policy: &'static str) {
    counter!(POLICY_WARNINGS_TOTAL, "policy" => policy).increment(1);
}

pub fn rate_limited() {
    counter!(RATE_LIMITED_TOTAL).increment(1);
}

/// Space on the filesystem holding `path`.
#[derive(Debug, Clone, Copy)]
pub struct FsSpace {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Available to unprivileged writers (what the registry can still use).
    pub free_bytes: u64,
}

pub fn fs_space(path: &Path) -> std::io::Result<FsSpace> {
    let s = rustix::fs::statvfs(path)?;
    let unit = s.f_frsize.max(1);
    Ok(FsSpace {
        total_bytes: s.f_blocks.saturating_mul(unit),
        used_bytes: s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(unit),
        free_bytes: s.f_bavail.saturating_mul(unit),
    })
}

/// An upstream's state at scrape time (`upstream::health::State` as a number) and the
/// pulls its rate limit has left, if it said.
pub fn scrape_upstream(upstream: &str, state: u8, ratelimit_remaining: Option<u64>) {
    gauge!(UPSTREAM_STATE, "upstream" => upstream.to_string()).set(f64::from(state));
    if let Some(n) = ratelimit_remaining {
        gauge!(UPSTREAM_RATELIMIT_REMAINING, "upstream" => upstream.to_string()).set(n as f64);
    }
}

/// The data directory's filesystem at scrape time.
pub fn scrape_storage(data_dir: &Path) {
    match fs_space(data_dir) {
        Ok(s) => {
            gauge!(STORAGE_USED_BYTES).set(s.used_bytes as f64);
            gauge!(STORAGE_FREE_BYTES).set(s.free_bytes as f64);
        }
        Err(e) => tracing::warn!(error = %e, "statvfs of the data directory failed"),
    }
}

/// The cache tiers at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheGauges {
    pub memory_entries: u64,
    pub memory_bytes: u64,
    pub memory_max_bytes: u64,
    pub disk_entries: u64,
    pub disk_bytes: u64,
    pub disk_max_bytes: u64,
    /// Totals since start.
    pub disk_evictions: u64,
    pub disk_evicted_bytes: u64,
    pub write_disabled: bool,
}

pub fn scrape_cache(s: CacheGauges) {
    gauge!(CACHE_ENTRIES, "tier" => "memory").set(s.memory_entries as f64);
    gauge!(CACHE_BYTES, "tier" => "memory").set(s.memory_bytes as f64);
    gauge!(CACHE_MAX_BYTES, "tier" => "memory").set(s.memory_max_bytes as f64);
    gauge!(CACHE_ENTRIES, "tier" => "disk").set(s.disk_entries as f64);
    gauge!(CACHE_BYTES, "tier" => "disk").set(s.disk_bytes as f64);
    gauge!(CACHE_MAX_BYTES, "tier" => "disk").set(s.disk_max_bytes as f64);
    counter!(CACHE_EVICTIONS_TOTAL, "tier" => "disk").absolute(s.disk_evictions);
    counter!(CACHE_EVICTED_BYTES_TOTAL, "tier" => "disk").absolute(s.disk_evicted_bytes);
    gauge!(CACHE_WRITE_DISABLED).set(if s.write_disabled { 1.0 } else { 0.0 });
}

/// Renders every metric in the text exposition format (the scrape-time gauges are set
/// by the caller first).
pub fn render() -> String {
    install().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_tell_label_values_apart() {
        // A value that is a prefix of another may share its address.
        let s: &'static str = "GETX";
        assert_ne!(label_key([&s[..3]]), label_key([s]));
        assert_ne!(label_key(["a", "b"]), label_key(["b", "a"]));
        assert_eq!(label_key([s, "x"]), label_key([s, "x"]));
        let mut series = Series::default();
        install();
        for labels in [
            ["manifest", "GET", "2xx", "hit"],
            ["manifest", "GET", "2xx", "hit"],
            ["blob", "GET", "2xx", "hit"],
        ] {
            series.requests(labels).increment(0);
        }
        assert_eq!(series.requests.len(), 2, "one handle per label set");
    }

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for d in ALL {
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(d.name.starts_with("agent_registry_"), "{}", d.name);
            let total = d.name.ends_with("_total");
            assert_eq!(total, d.kind == Kind::Counter, "{}", d.name);
            if d.kind == Kind::Histogram {
                assert!(d.name.ends_with("_seconds"), "{}", d.name);
            }
            assert!(!d.help.is_empty());
        }
    }

    #[test]
    fn statvfs_of_a_directory() {
        let s = fs_space(Path::new(".")).expect("statvfs");
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes);
    }
}
