//! `GET /v2/`, the health endpoints and `GET /metrics`: `/healthz` (alive), `/readyz`
//! (storage writable, not draining), `/health` (JSON detail: storage space, fills, and
//! each upstream's reachability, probed at most every 10 s, and its health state:
//! healthy, rate_limited, open or half_open, since when, until when, the last error).
//! Upstream trouble never makes the server unready: stale content is still served.

use crate::app::App;
use crate::upstream::{Upstream, UpstreamError};
use crate::web::body::{full, json, Body};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest an upstream probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a probe's answer is reused, so a health poller cannot hammer upstreams.
const PROBE_TTL: Duration = Duration::from_secs(10);

/// The Prometheus text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn base() -> Response<Body> {
    json(StatusCode::OK, &json!({}))
}

pub fn healthz() -> Response<Body> {
    json(StatusCode::OK, &json!({ "status": "ok" }))
}

/// Checks that the data directory accepts a write.
async fn storage_writable(app: &App) -> Result<(), String> {
    let probe = app.config.storage.data_dir.join("tmp").join(".ready-probe");
    tokio::fs::write(&probe, b"ok")
        .await
        .and(tokio::fs::remove_file(&probe).await)
        .map_err(|e| e.to_string())
}

pub async fn readyz(app: &Arc<App>) -> Response<Body> {
    let storage = storage_writable(app).await;
    let ready = storage.is_ok() && !app.is_draining();
    json(
        status_code(ready),
        &json!({
            "status": if ready { "ready" } else { "not ready" },
            "draining": app.is_draining(),
            "storage": storage.err().unwrap_or_else(|| "writable".into()),
        }),
    )
}

fn status_code(ready: bool) -> StatusCode {
    if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `/health` and `/health?detailed=1`: readiness plus what an operator asks next.
/// Upstream reachability is reported but does not make the server unready (stale
/// content can still be served).
pub async fn detailed(app: &Arc<App>) -> Response<Body> {
    let (writable, upstreams) = tokio::join!(storage_writable(app), probe_all(app));
    let data_dir = &app.config.storage.data_dir;
    let space = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || crate::metrics::fs_space(&dir))
            .await
            .ok()
            .and_then(Result::ok)
    };
    let draining = app.is_draining();
    let ready = writable.is_ok() && !draining;
    json(
        status_code(ready),
        &json!({
            "status": if ready { "ready" } else { "not ready" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": crate::metrics::uptime().as_secs(),
            "draining": draining,
            "storage": {
                "data_dir": data_dir.display().to_string(),
                "writable": writable.is_ok(),
                "error": writable.err(),
                "free_bytes": space.map(|s| s.free_bytes),
                "total_bytes": space.map(|s| s.total_bytes),
            },
            "fills_in_flight": app.fills.len(),
            "upstreams": upstreams,
        }),
    )
}

/// `GET /metrics`: every metric in the text exposition format.
pub fn metrics(app: &App) -> Response<Body> {
    for up in &app.mirror().upstreams {
        let state = up.health().state() as u8;
        crate::metrics::scrape_upstream(up.name(), state, up.ratelimit_remaining());
    }
    crate::metrics::scrape_storage(&app.config.storage.data_dir);
    let s = app.cache.stats();
    crate::metrics::scrape_cache(crate::metrics::CacheGauges {
        memory_entries: s.memory_entries,
        memory_bytes: s.memory_bytes,
        memory_max_bytes: s.memory_max_bytes,
        disk_entries: s.entries,
        disk_bytes: s.bytes,
        disk_max_bytes: s.max_bytes,
        disk_evictions: s.evictions,
        disk_evicted_bytes: s.evicted_bytes,
        write_disabled: s.write_disabled,
    });
    let mut r = Response::new(full(crate::metrics::render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    r
}

/// One upstream's last probe.
#[derive(Clone)]
struct Probe {
    at: Instant,
    report: Value,
}

type Slot = Arc<tokio::sync::Mutex<Option<Probe>>>;

/// Probe results by (upstream name, url). A slot's lock is held while its probe runs, so
/// concurrent health requests wait for one probe instead of each sending their own.
fn slot(up: &Upstream) -> Slot {
    static SLOTS: Mutex<Option<HashMap<(String, String), Slot>>> = Mutex::new(None);
    let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    slots
        .get_or_insert_with(HashMap::new)
        .entry((up.name().to_string(), up.config().url.clone()))
        .or_default()
        .clone()
}

/// Each upstream's probe, with its health state added after the probe (which may have
/// been the half-open probe that changed it).
async fn probe_all(app: &App) -> Vec<Value> {
    let mirror = app.mirror();
    let probes = mirror.upstreams.iter().map(|up| async move {
        let mut report = cached_probe(up).await;
        if let (Value::Object(r), Value::Object(s)) = (&mut report, state(up)) {
            r.extend(s);
        }
        report
    });
    futures_util::future::join_all(probes).await
}

async fn cached_probe(up: &Upstream) -> Value {
    let slot = slot(up);
    let mut last = slot.lock().await;
    if let Some(p) = last.as_ref().filter(|p| p.at.elapsed() < PROBE_TTL) {
        return p.report.clone();
    }
    let report = probe(up).await;
    *last = Some(Probe {
        at: Instant::now(),
        report: report.clone(),
    });
    report
}

/// `GET /v2/` through the upstream client (its auth, retries and metrics); a 2xx or a
/// 401 means the registry is there.
async fn probe(up: &Upstream) -> Value {
    let start = Instant::now();
    let sent = up.send(Method::GET, "/v2/", "", HeaderMap::new());
    let answer = tokio::time::timeout(PROBE_TIMEOUT, sent).await;
    let latency_ms = start.elapsed().as_millis() as u64;
    let (reachable, status, error) = match answer {
        Ok(Ok(resp)) => (true, Some(resp.status()), None),
        Ok(Err(e)) => {
            let status = answered(&e);
            match status {
                Some(StatusCode::UNAUTHORIZED) => (true, status, None),
                _ => (false, status, Some(e.to_string())),
            }
        }
        Err(_) => (
            false,
            None,
            Some(format!(
                "upstream {}: GET /v2/: no answer within {PROBE_TIMEOUT:?}",
                up.name()
            )),
        ),
    };
    json!({
        "name": up.name(),
        "url": without_userinfo(&up.config().url),
        "reachable": reachable,
        "latency_ms": latency_ms,
        "status": status.map(|s| s.as_u16()),
        "error": error,
    })
}

/// The upstream's health as its requests left it (not cached: it is cheap and changes).
fn state(up: &Upstream) -> Value {
    let r = up.health().report();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    json!({
        "state": r.state.as_str(),
        "since": httpdate::fmt_http_date(r.since),
        "since_unix": secs(r.since),
        "retry_at": r.retry_at.map(httpdate::fmt_http_date),
        "consecutive_failures": r.consecutive_failures,
        "last_error": r.last_error,
        "rate_limited_repositories": r.limited_repositories,
    })
}

/// The status the upstream itself answered with, if it answered.
fn answered(e: &UpstreamError) -> Option<StatusCode> {
    match e {
        UpstreamError::Status { status, .. } => Some(*status),
        UpstreamError::TooManyRequests { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
        UpstreamError::Auth { status, .. } => *status,
        _ => None,
    }
}

/// `https://user:pass@host/x` -> `https://host/x`: credentials never leave in a report.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_dropped() {
        for (input, expected) in [
            (
                "https://u:p@registry.example/v2",
                "https://registry.example/v2",
            ),
            ("https://registry.example", "https://registry.example"),
            ("http://127.0.0.1:5000/a@b", "http://127.0.0.1:5000/a@b"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(without_userinfo(input), expected, "{input}");
        }
    }
}
