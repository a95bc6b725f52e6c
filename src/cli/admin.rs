//! `agent registry auth|permission|visibility|access-logs|audit|config|preheat`: the admin API.

use super::http::{Client, Reply};
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};
use std::io::Write;

#[derive(Subcommand)]
pub enum PermissionCommand {
    /// Grant USER or GROUP a permission on a repository (pattern with * allowed).
    Add {
        /// Repository or pattern (a tag such as :latest is ignored).
        repo: String,
        #[command(flatten)]
        who: Who,
        /// read (pull), write (push), delete or admin; repeatable or comma-separated.
        #[arg(long = "permission", short = 'p', required = true, action = clap::ArgAction::Append)]
        permissions: Vec<String>,
    },
    /// Take a permission (all of them without --permission) away.
    Remove {
        repo: String,
        #[command(flatten)]
        who: Who,
        #[arg(long = "permission", short = 'p', action = clap::ArgAction::Append)]
        permissions: Vec<String>,
    },
    /// List the rules from config and the permissions granted at run time.
    List {
        /// Only those that apply to this repository.
        repo: Option<String>,
        /// Print the registry's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Who {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    group: Option<String>,
}

#[derive(Args)]
pub struct LogArgs {
    /// Only this user (`-` for anonymous requests).
    #[arg(long)]
    user: Option<String>,
    /// How far back, e.g. 1h, 24h, 7d.
    #[arg(long, default_value = "24h")]
    since: String,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Part of the name (or description) to look for; NAME:TAG also picks the tag.
    query: Option<String>,
    /// Only this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only images with this capability, e.g. text-generation.
    #[arg(long)]
    capability: Option<String>,
    /// Only images whose author contains this.
    #[arg(long)]
    author: Option<String>,
    /// Created at or after this date (RFC 3339, e.g. 2026-01-01).
    #[arg(long)]
    since: Option<String>,
    /// Created at or before this date.
    #[arg(long)]
    until: Option<String>,
    /// At least this size, e.g. 100MB.
    #[arg(long)]
    min_size: Option<String>,
    /// At most this size.
    #[arg(long)]
    max_size: Option<String>,
    #[arg(long, default_value_t = 1)]
    page: u32,
    #[arg(long, default_value_t = 10)]
    per_page: u32,
    /// Print the registry's JSON.
    #[arg(long)]
    json: bool,
}

/// A `--since`/`--until` value: an RFC 3339 date (`2026-01-01`) or date and time
/// (`2026-01-01T12:00:00Z`), as the registry compares them.
fn check_date(flag: &str, v: &str) -> anyhow::Result<()> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = match v.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (v, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let date_ok = parts.len() == 3
        && digits(parts[0], 4)
        && digits(parts[1], 2)
        && digits(parts[2], 2)
        && (1..=12).contains(&parts[1].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&parts[2].parse::<u32>().unwrap_or(0));
    let time_ok = time.is_none_or(|t| {
        let hms = t.trim_end_matches(['Z', 'z']);
        let hms = hms.split(['+', '-']).next().unwrap_or(hms);
        let hms = hms.split('.').next().unwrap_or(hms);
        let f: Vec<&str> = hms.split(':').collect();
        (2..=3).contains(&f.len()) && f.iter().all(|x| digits(x, 2))
    });
    if !(date_ok && time_ok) {
        bail!("invalid {flag} {v:?}: expected a date such as 2026-01-31 or 2026-01-31T12:00:00Z");
    }
    Ok(())
}

pub async fn search(c: &Client, mut a: SearchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    for (flag, v) in [("--since", &a.since), ("--until", &a.until)] {
        if let Some(v) = v {
            check_date(flag, v)?;
        }
    }
    // `agent search my-agent:latest`: the name and the tag (a port stays in the name).
    if let Some(q) = a.query.clone() {
        if let Some((name, tag)) = q
            .rsplit_once(':')
            .filter(|(n, t)| !n.is_empty() && !t.is_empty() && !t.contains('/'))
        {
            if a.tag.as_deref().is_some_and(|t| t != tag) {
                bail!(
                    "{q:?} names tag {tag} but --tag says {}",
                    a.tag.as_deref().unwrap_or("")
                );
            }
            a.tag = Some(tag.to_string());
            a.query = Some(name.to_string());
        }
    }
    let mut params = vec![
        format!("page={}", a.page),
        format!("per_page={}", a.per_page),
    ];
    for (k, v) in [
        ("q", &a.query),
        ("tag", &a.tag),
        ("capability", &a.capability),
        ("author", &a.author),
        ("since", &a.since),
        ("until", &a.until),
        ("min_size", &a.min_size),
        ("max_size", &a.max_size),
    ] {
        if let Some(v) = v {
            params.push(format!("{k}={}", enc(v)));
        }
    }
    let v = ok_json(
        c,
        &c.get(&format!("/v2/_search?{}", params.join("&"))).await?,
        "search",
    )?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
    writeln!(
        out,
        "{:<32} {:<14} {:>8} {:<20} {:<16} {:<28} DESCRIPTION",
        "NAME", "TAG", "SIZE", "CREATED", "AUTHOR", "CAPABILITIES"
    )?;
    for r in v["images"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<32} {:<14} {:>8} {:<20} {:<16} {:<28} {}",
            s(r, "name"),
            s(r, "tag"),
            s(r, "size"),
            s(r, "created"),
            s(r, "author"),
            names(&r["capabilities"]),
            s(r, "description")
        )?;
    }
    let total = v["total"].as_u64().unwrap_or(0);
    let shown = v["images"].as_array().map_or(0, Vec::len);
    writeln!(
        out,
        "{shown} of {total} (page {})",
        v["page"].as_u64().unwrap_or(1)
    )?;
    Ok(())
}

/// The reply's JSON, or a one-line error from its status and OCI error body.
pub(super) fn ok_json(c: &Client, r: &Reply, what: &str) -> anyhow::Result<Value> {
    if r.status.is_success() {
        return serde_json::from_slice(&r.body)
            .map_err(|e| anyhow!("{what}: the registry's answer is not JSON: {e}"));
    }
    if r.status == http::StatusCode::FORBIDDEN {
        bail!("{what}: permission denied: this needs admin on the registry");
    }
    Err(c.status_error(r, what))
}

fn body(v: &Value) -> Option<Vec<u8>> {
    serde_json::to_vec(v).ok()
}

pub(super) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub async fn auth_test(c: &Client, out: &mut dyn Write) -> anyhow::Result<()> {
    let v = ok_json(c, &c.get("/admin/whoami").await?, "auth test")?;
    match v["user"].as_str() {
        Some(u) => {
            let groups: Vec<&str> = v["groups"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let admin = if v["admin"].as_bool() == Some(true) {
                ", admin"
            } else {
                ""
            };
            let groups = match groups.is_empty() {
                true => "-".to_string(),
                false => groups.join(","),
            };
            writeln!(
                out,
                "authenticated as {u} at {} (groups: {groups}{admin}; credentials {})",
                c.base(),
                c.credentials_source()
            )?;
        }
        None => writeln!(out, "anonymous at {}: no credentials in use", c.base())?,
    }
    Ok(())
}

pub async fn permission(
    c: &Client,
    cmd: PermissionCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // {"repo", "user" | "group", "actions"}: what the admin API takes.
    let request = |repo: &str, w: &Who, permissions: &[String]| {
        let mut b = match (&w.user, &w.group) {
            (Some(u), _) => json!({ "user": u }),
            (_, Some(g)) => json!({ "group": g }),
            _ => json!({}),
        };
        b["repo"] = json!(repo);
        b["actions"] = json!(permissions
            .iter()
            .flat_map(|x| x.split(','))
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>());
        b
    };
    match cmd {
        PermissionCommand::Add {
            repo,
            who,
            permissions,
        } => {
            let b = request(&repo, &who, &permissions);
            let v = ok_json(
                c,
                &c.request(Method::POST, "/admin/permissions", body(&b))
                    .await?,
                "permission add",
            )?;
            writeln!(
                out,
                "{}: {} {} may now {}",
                v["repo"].as_str().unwrap_or(""),
                if who.user.is_some() { "user" } else { "group" },
                who.user.or(who.group).unwrap_or_default(),
                names(&v["actions"])
            )?;
        }
        PermissionCommand::Remove {
            repo,
            who,
            permissions,
        } => {
            let b = request(&repo, &who, &permissions);
            ok_json(
                c,
                &c.request(Method::DELETE, "/admin/permissions", body(&b))
                    .await?,
                "permission remove",
            )?;
            writeln!(out, "removed")?;
        }
        PermissionCommand::List { repo, json } => {
            let path = match &repo {
                Some(r) => format!("/admin/permissions?repo={}", enc(r)),
                None => "/admin/permissions".into(),
            };
            let v = ok_json(c, &c.get(&path).await?, "permission list")?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<32} {:<22} {:<28} SOURCE",
                "REPOSITORY", "SUBJECT", "PERMISSIONS"
            )?;
            for p in v["permissions"].as_array().into_iter().flatten() {
                let subject = match (p["user"].as_str(), p["group"].as_str()) {
                    (Some(u), _) => format!("user {u}"),
                    (_, Some(g)) => format!("group {g}"),
                    _ => "-".into(),
                };
                writeln!(
                    out,
                    "{:<32} {:<22} {:<28} {}",
                    p["repo"].as_str().unwrap_or(""),
                    subject,
                    names(&p["actions"]),
                    p["source"].as_str().unwrap_or("")
                )?;
            }
        }
    }
    Ok(())
}

fn names(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub async fn visibility(
    c: &Client,
    repo: &str,
    set: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let path = format!("/admin/visibility?repo={}", enc(repo));
    let r = match set {
        Some(v) => {
            c.request(Method::PUT, &path, body(&json!({ "visibility": v })))
                .await?
        }
        None => c.get(&path).await?,
    };
    let v = ok_json(c, &r, "visibility")?;
    writeln!(
        out,
        "{}: {}",
        v["repo"].as_str().unwrap_or(repo),
        v["visibility"].as_str().unwrap_or("?")
    )?;
    Ok(())
}

pub async fn logs(c: &Client, kind: &str, a: LogArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut path = format!("/admin/{kind}?since={}&limit={}", enc(&a.since), a.limit);
    if let Some(u) = &a.user {
        path.push_str(&format!("&user={}", enc(u)));
    }
    let v = ok_json(c, &c.get(&path).await?, kind)?;
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let time = |r: &Value| crate::auth::store::rfc3339(r["ts_ms"].as_u64().unwrap_or(0) / 1000);
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("-").to_string();
    if kind == "audit" {
        writeln!(
            out,
            "{:<20} {:<20} {:<12} {:<16} {:<24} DETAIL",
            "TIME", "EVENT", "USER", "CLIENT", "REPOSITORY"
        )?;
        for r in v["events"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "{:<20} {:<20} {:<12} {:<16} {:<24} {}",
                time(r),
                s(r, "event"),
                s(r, "user"),
                s(r, "client"),
                s(r, "repo"),
                s(r, "detail")
            )?;
        }
    } else {
        writeln!(
            out,
            "{:<20} {:<12} {:<16} {:<7} {:<9} {:<32} {:>6} {:>12} {:>9} CACHE (OUTCOME)",
            "TIME", "USER", "CLIENT", "METHOD", "ROUTE", "REPOSITORY", "STATUS", "BYTES", "MS"
        )?;
        for r in v["requests"].as_array().into_iter().flatten() {
            let bytes = r["bytes"].as_u64().map_or("-".into(), |b| b.to_string());
            let ms = r["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0;
            // Only a body that did not end whole says how it ended.
            let outcome = match r["outcome"].as_str() {
                None | Some("ok") => String::new(),
                Some(o) => format!(" ({o})"),
            };
            writeln!(
                out,
                "{:<20} {:<12} {:<16} {:<7} {:<9} {:<32} {:>6} {:>12} {:>9.1} {}{}",
                time(r),
                s(r, "user"),
                s(r, "client"),
                s(r, "method"),
                s(r, "route"),
                s(r, "repo"),
                r["status"].as_u64().unwrap_or(0),
                bytes,
                ms,
                s(r, "cache"),
                outcome
            )?;
        }
    }
    Ok(())
}

pub async fn config_show(c: &Client, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = c.get("/admin/config").await?;
    if !r.status.is_success() {
        ok_json(c, &r, "config show")?;
    }
    write!(out, "{}", String::from_utf8_lossy(&r.body))?;
    Ok(())
}

#[derive(Args)]
pub struct PreheatArgs {
    /// Images, e.g. docker.io/library/alpine:3.20 (a name the registry mirrors).
    #[arg(required = true)]
    images: Vec<String>,
    /// The children of a multi-platform image to fill: all, or OS/ARCH[/VARIANT].
    #[arg(long, default_value = "all")]
    platform: String,
    /// Print the registry's JSON report per image instead of a line.
    #[arg(long)]
    json: bool,
}

/// `agent registry preheat`: one `POST /admin/preheat` per image, a line per result.
pub async fn preheat(c: &Client, a: PreheatArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (total, mut failed) = (a.images.len(), 0);
    for (i, image) in a.images.iter().enumerate() {
        eprintln!("preheating {image} ({}/{total})", i + 1);
        let b = json!({ "images": [image], "platform": a.platform });
        let r = c.request(Method::POST, "/admin/preheat", body(&b)).await?;
        let v = ok_json(c, &r, "preheat")?;
        let report = &v["images"][0];
        let error = report["error"].as_str();
        if error.is_some() {
            failed += 1;
        }
        if a.json {
            writeln!(out, "{}", serde_json::to_string(report)?)?;
            continue;
        }
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        match error {
            Some(e) => writeln!(out, "{image}: failed: {e}")?,
            None => writeln!(
                out,
                "{image}: {} manifests, {} blobs, {}",
                n("manifests"),
                n("blobs"),
                crate::config::format_size(n("bytes"))
            )?,
        }
    }
    if failed > 0 {
        bail!("preheat failed for {failed} of {total} images");
    }
    Ok(())
}
