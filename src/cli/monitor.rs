//! `agent registry logs` (the server's recent log records, `GET /admin/logs`) and
//! `agent registry metrics` (`GET /metrics`, the seed's short metric names, counts over
//! a period from the access log, PromQL through Prometheus).

use super::admin::{enc, ok_json};
use super::http::Client;
use super::profile::Endpoint;
use anyhow::{anyhow, bail};
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

#[derive(Args)]
pub struct LogsArgs {
    /// Only records at this level or more severe (the server keeps no debug records:
    /// `debug` shows all it holds).
    #[arg(long, value_parser = ["error", "warn", "info", "debug"])]
    level: Option<String>,
    /// How far back, e.g. 10m, 1h, 7d (default: all the server still holds).
    #[arg(long)]
    since: Option<String>,
    /// Keep printing new records (polled every second) until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per record and line instead of text.
    #[arg(long)]
    json: bool,
    /// At most this many records (the newest) at first.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

/// How often `--follow` asks for new records.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub async fn logs(c: &Client, a: LogsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut base = format!("/admin/logs?limit={}", a.limit);
    if let Some(l) = &a.level {
        base.push_str(&format!("&level={}", enc(l)));
    }
    let mut path = base.clone();
    if let Some(s) = &a.since {
        crate::config::parse_duration(s).map_err(|e| anyhow!("invalid --since {s:?}: {e}"))?;
        path.push_str(&format!("&since={}", enc(s)));
    }
    let mut after = 0;
    loop {
        let v = ok_json(c, &c.get(&path).await?, "logs")?;
        let last_seq = v["last_seq"].as_u64().unwrap_or(0);
        if a.follow && after > 0 && last_seq < after {
            // Numbers restart with the server: start over with what the new one holds.
            eprintln!("agent: the registry restarted; its log starts again");
            after = 0;
            path = base.clone();
            continue;
        }
        let first_seq = v["first_seq"].as_u64().unwrap_or(0);
        if after > 0 && first_seq > after + 1 {
            eprintln!(
                "agent: {} log records left the registry's ring before they were shown",
                first_seq - after - 1
            );
        }
        let records = v["records"].as_array().cloned().unwrap_or_default();
        for r in &records {
            print_record(r, a.json, out)?;
        }
        out.flush()?;
        // Past the last record shown, or past everything the server has handed out when
        // none matched the level.
        let last_shown = records.last().and_then(|r| r["seq"].as_u64());
        after = last_shown.unwrap_or(last_seq).max(after);
        if !a.follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        path = format!("{base}&after={after}");
    }
}

fn print_record(r: &Value, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
        return Ok(());
    }
    let ms = r["ts_ms"].as_u64().unwrap_or(0);
    let time = crate::auth::store::rfc3339(ms / 1000);
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let fields = s("fields");
    writeln!(
        out,
        "{} {:<5} {}: {}{}{}",
        time,
        s("level").to_uppercase(),
        s("target"),
        s("message"),
        if fields.is_empty() { "" } else { " " },
        fields
    )?;
    Ok(())
}

#[derive(Args)]
pub struct MetricsArgs {
    /// Only this metric: a family name (e.g. agent_registry_pull_operations_total) or a
    /// short name: push_count, pull_count, request_count, error_count, bytes_sent,
    /// request_duration, storage_used, storage_free, auth_failures, rate_limited.
    #[arg(long)]
    metric: Option<String>,
    /// Count pushes, pulls, errors and bytes sent over this period (e.g. 24h) from the
    /// registry's access log (admin).
    #[arg(long)]
    period: Option<String>,
    /// A PromQL query, sent to the profile's prometheus_url or --prometheus.
    #[arg(long, conflicts_with_all = ["metric", "period"])]
    query: Option<String>,
    /// The Prometheus server for --query, e.g. http://prometheus:9090.
    #[arg(long, requires = "query")]
    prometheus: Option<String>,
}

/// The seed's short metric names and this registry's metric families.
pub const SHORT_NAMES: [(&str, &str); 10] = [
    ("push_count", crate::metrics::PUSH_OPERATIONS_TOTAL),
    ("pull_count", crate::metrics::PULL_OPERATIONS_TOTAL),
    ("request_count", crate::metrics::REQUESTS_TOTAL),
    ("error_count", crate::metrics::REQUESTS_TOTAL),
    ("bytes_sent", crate::metrics::SERVED_BYTES_TOTAL),
    ("request_duration", crate::metrics::REQUEST_DURATION_SECONDS),
    ("storage_used", crate::metrics::STORAGE_USED_BYTES),
    ("storage_free", crate::metrics::STORAGE_FREE_BYTES),
    ("auth_failures", crate::metrics::AUTH_FAILURES_TOTAL),
    ("rate_limited", crate::metrics::RATE_LIMITED_TOTAL),
];

/// The counts `--period` can give (from the access log).
const PERIOD_COUNTS: [&str; 4] = ["push_count", "pull_count", "error_count", "bytes_sent"];

/// A metric family for `name`: a short name's family, else `name` itself.
pub fn family(name: &str) -> &str {
    SHORT_NAMES
        .iter()
        .find(|(short, _)| *short == name)
        .map_or(name, |(_, f)| f)
}

pub async fn metrics(
    c: &Client,
    ep: &Endpoint,
    timeout: Duration,
    a: MetricsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if let Some(q) = &a.query {
        let prom = a
            .prometheus
            .clone()
            .or_else(|| ep.profile.as_ref().and_then(|p| p.prometheus_url.clone()))
            .ok_or_else(|| {
                anyhow!(
                    "no Prometheus configured: set prometheus_url in the profile or pass --prometheus"
                )
            })?;
        return prom_query(&prom, q, timeout, out).await;
    }
    if let Some(p) = &a.period {
        return period_counts(c, p, a.metric.as_deref(), out).await;
    }
    let fam = a.metric.as_deref().map(family);
    let lines = super::fetch_metrics(c, fam).await?;
    // error_count is the requests answered 4xx or 5xx.
    let errors_only = a.metric.as_deref() == Some("error_count");
    for l in lines {
        if errors_only
            && !l.starts_with('#')
            && !(l.contains("status_class=\"4xx\"") || l.contains("status_class=\"5xx\""))
        {
            continue;
        }
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// Counts over the period from `/admin/access-logs`: pushes are manifest PUTs answered
/// 201, pulls manifest GETs answered 200 whose body went out whole, errors the
/// requests answered 400 or more, bytes sent the GET response bytes.
async fn period_counts(
    c: &Client,
    period: &str,
    metric: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    crate::config::parse_duration(period)
        .map_err(|e| anyhow!("invalid --period {period:?}: {e}"))?;
    let wanted: Vec<&str> = match metric {
        None => PERIOD_COUNTS.to_vec(),
        Some(m) if PERIOD_COUNTS.contains(&m) => vec![m],
        Some(m) => bail!(
            "--period counts {} only, not {m:?}",
            PERIOD_COUNTS.join(", ")
        ),
    };
    const MAX: u64 = 100_000;
    let path = format!("/admin/access-logs?since={}&limit={MAX}", enc(period));
    let v = ok_json(c, &c.get(&path).await?, "metrics --period")?;
    let rows = v["requests"].as_array().cloned().unwrap_or_default();
    let (mut pushes, mut pulls, mut errors, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for r in &rows {
        let method = r["method"].as_str().unwrap_or("");
        let route = r["route"].as_str().unwrap_or("");
        let status = r["status"].as_u64().unwrap_or(0);
        let ok = matches!(r["outcome"].as_str(), None | Some("ok"));
        if route == "manifest" && method == "PUT" && status == 201 {
            pushes += 1;
        }
        if route == "manifest" && method == "GET" && status == 200 && ok {
            pulls += 1;
        }
        if status >= 400 {
            errors += 1;
        }
        if method == "GET" {
            bytes += r["bytes"].as_u64().unwrap_or(0);
        }
    }
    // The access log answers at most MAX records: past that the counts are lower bounds.
    let at_least = if rows.len() as u64 >= MAX { ">=" } else { "" };
    for name in wanted {
        let n = match name {
            "push_count" => pushes,
            "pull_count" => pulls,
            "error_count" => errors,
            _ => bytes,
        };
        writeln!(out, "{name} {at_least}{n} (last {period})")?;
    }
    Ok(())
}

/// `GET /api/v1/query` on Prometheus; prints each sample as `name{labels} value`.
async fn prom_query(
    prom: &str,
    q: &str,
    timeout: Duration,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Never the registry's credentials: Prometheus is another host.
    let c = Client::new(prom, timeout).map_err(|e| anyhow!("prometheus: {e}"))?;
    let r = c.get(&format!("/api/v1/query?query={}", enc(q))).await?;
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
        anyhow!(
            "prometheus {prom} answered HTTP {} and no JSON: {e}",
            r.status.as_u16()
        )
    })?;
    if v["status"] != "success" {
        bail!(
            "prometheus {prom}: query {q:?} failed: {}: {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or("unknown error")
        );
    }
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => {
            for s in data["result"].as_array().into_iter().flatten() {
                let value = s["value"][1]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| {
                        s["values"].as_array().map(|vs| {
                            vs.iter()
                                .filter_map(|p| p[1].as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                    })
                    .unwrap_or_default();
                writeln!(out, "{} {value}", series(&s["metric"]))?;
            }
        }
        _ => writeln!(out, "{}", data["result"][1].as_str().unwrap_or(""))?,
    }
    Ok(())
}

/// `name{k="v",...}` of a Prometheus result's metric object.
fn series(m: &Value) -> String {
    let name = m["__name__"].as_str().unwrap_or("");
    let labels: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
        .collect();
    if labels.is_empty() {
        if name.is_empty() {
            "{}".to_string()
        } else {
            name.to_string()
        }
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_map_to_exported_families() {
        assert_eq!(family("push_count"), "agent_registry_push_operations_total");
        assert_eq!(family("pull_count"), "agent_registry_pull_operations_total");
        assert_eq!(
            family("agent_registry_cache_bytes"),
            "agent_registry_cache_bytes"
        );
        let m: Value = serde_json::json!({"__name__": "up", "job": "registry"});
        assert_eq!(series(&m), "up{job=\"registry\"}");
    }
}
