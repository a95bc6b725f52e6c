//! `/admin/...`: the admin API (needs `admin` on `*`; `whoami` answers anyone).
//!
//! - `GET whoami`: who the credentials are.
//! - `GET config`: the effective configuration, secrets redacted (TOML).
//! - `GET permissions[?repo=]`, `POST permissions`, `DELETE permissions`: grants set at
//!   run time, body `{"repo", "user" | "group", "actions": [..]}`.
//! - `GET visibility?repo=`, `PUT visibility?repo=` with `{"visibility": "private"}`.
//! - `GET access-logs?user=&since=24h&limit=`, `GET audit?user=&since=&limit=`.
//! - `GET logs?level=warn&since=1h&after=<seq>&limit=`: the server's recent log records
//!   from the in-memory ring (`crate::logring`), oldest first.
//! - `GET tokens[?user=]`, `POST tokens` `{"user", "scopes", "expires"}` (with a password
//!   or an API token, never a bearer JWT), `DELETE tokens/<id>`.
//! - `GET cache/stats`, `POST cache/purge?repo=|digest=`, `POST gc[?dry_run=1]`
//!   (`admin_cache.rs`).
//! - `POST preheat` `{"images": [..], "platform": "all" | "OS/ARCH"}` (`preheat.rs`).
//! - `GET policy`, `PUT policy` `{"block_vulnerabilities": "high", "unscanned": "block"}`,
//!   `DELETE policy`: the pull policies in effect; the run-time override of the
//!   vulnerability settings (persisted, audited, a new policy version).

use crate::app::App;
use crate::auth::policy::{parse_scope, Actions, Subject};
use crate::auth::store::now_ms;
use crate::auth::Identity;
use crate::config::{parse_duration, Visibility};
use crate::error::{Error, Result};
use crate::handlers::admin_cache;
use crate::handlers::Ctx;
use crate::oci::{ErrorCode, RepoName};
use crate::web::body::{full, json, json_bytes, read_limited, Body, ReqBody};
use crate::web::{query, query_get};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

const MAX_BODY: u64 = 64 << 10;
/// The admin endpoints (for 405 on a wrong method).
const KNOWN: [&str; 13] = [
    "whoami",
    "policy",
    "logs",
    "config",
    "permissions",
    "visibility",
    "access-logs",
    "audit",
    "tokens",
    "cache/stats",
    "cache/purge",
    "gc",
    "preheat",
];
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 100_000;

pub async fn handle(
    app: &Arc<App>,
    id: &Identity,
    path: &str,
    req: Request<ReqBody>,
    ctx: &Ctx,
) -> Result<Response<Body>> {
    let m = req.method().clone();
    let q = query(req.uri());
    let client = ctx.client.to_string();
    match (path, &m) {
        ("whoami", &Method::GET) => Ok(json(
            StatusCode::OK,
            &json!({
                "user": id.user,
                "anonymous": id.is_anonymous(),
                "groups": id.groups,
                "admin": app.auth.is_admin(id),
            }),
        )),
        ("policy", &Method::GET) => Ok(json(StatusCode::OK, &policy_view(app))),
        ("policy", &Method::PUT) => {
            let body: PolicyBody = read_json(req).await?;
            let o = crate::policy::Override {
                block_vulnerabilities: body.block_vulnerabilities,
                unscanned: match body.unscanned.as_deref() {
                    None => None,
                    Some(u) => Some(crate::policy::Unscanned::parse(u).map_err(|e| bad(&e))?),
                },
            };
            if o == crate::policy::Override::default() {
                return Err(bad("policy: set block_vulnerabilities or unscanned"));
            }
            let detail = serde_json::to_string(&o).unwrap_or_default();
            let version = app.policy.set(Some(o)).map_err(|e| bad(&e))?;
            app.auth.audit(
                "policy_set",
                id.user.as_deref(),
                Some(&client),
                None,
                Some(&format!("{detail} (version {version})")),
            );
            Ok(json(StatusCode::OK, &policy_view(app)))
        }
        ("policy", &Method::DELETE) => {
            let version = app.policy.set(None).map_err(Error::Internal)?;
            app.auth.audit(
                "policy_cleared",
                id.user.as_deref(),
                Some(&client),
                None,
                Some(&format!("version {version}")),
            );
            Ok(json(StatusCode::OK, &policy_view(app)))
        }
        ("cache/stats", &Method::GET) => admin_cache::stats(app),
        ("cache/purge", &Method::POST) => {
            let r = admin_cache::purge(app, req.uri()).await;
            let target = req.uri().query().unwrap_or("");
            app.auth.audit(
                "cache_purged",
                id.user.as_deref(),
                Some(&client),
                None,
                Some(target),
            );
            r
        }
        ("preheat", &Method::POST) => {
            app.auth
                .audit("preheat", id.user.as_deref(), Some(&client), None, None);
            crate::handlers::preheat::handle(app, req).await
        }
        ("gc", &Method::POST) => {
            let r = admin_cache::gc(app, req.uri()).await;
            app.auth.audit(
                "gc",
                id.user.as_deref(),
                Some(&client),
                None,
                req.uri().query(),
            );
            r
        }
        ("config", &Method::GET) => {
            let mut r = Response::new(full(app.config_snapshot().to_toml_redacted()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/toml; charset=utf-8"),
            );
            Ok(r)
        }
        ("permissions", &Method::GET) => {
            let repo = query_get(&q, "repo").map(strip_tag);
            let (rules, perms) = app.auth.all_grants();
            let show = |src: &str, g: &crate::auth::policy::Grant| {
                json!({
                    "repo": g.pattern,
                    g.subject.kind(): g.subject.name(),
                    "actions": g.actions.names(),
                    "source": src,
                })
            };
            let keep = |g: &&crate::auth::policy::Grant| {
                repo.as_deref()
                    .is_none_or(|r| crate::auth::policy::matches(&g.pattern, r) || g.pattern == r)
            };
            let mut out: Vec<serde_json::Value> = rules
                .iter()
                .filter(keep)
                .map(|g| show("config", g))
                .collect();
            out.extend(perms.iter().filter(keep).map(|g| show("runtime", g)));
            Ok(json(StatusCode::OK, &json!({ "permissions": out })))
        }
        ("permissions", &Method::POST) | ("permissions", &Method::DELETE) => {
            let body: PermissionBody = read_json(req).await?;
            let repo = strip_tag(&body.repo);
            check_pattern(&repo)?;
            let subject = match (body.user, body.group) {
                (Some(u), None) => Subject::User(u),
                (None, Some(g)) => Subject::Group(g),
                _ => return Err(bad("give exactly one of \"user\" and \"group\"")),
            };
            let actions = match body.actions.is_empty() {
                true => None,
                false => Some(Actions::parse(&body.actions.join(",")).map_err(|e| bad(&e))?),
            };
            let who = format!("{} {}", subject.kind(), subject.name());
            if m == Method::POST {
                let actions = actions.ok_or_else(|| bad("\"actions\" must not be empty"))?;
                let now = app
                    .auth
                    .add_permission(&repo, &subject, actions)
                    .map_err(internal)?;
                let detail = format!("{who}: {}", now.names().join(","));
                app.auth.audit(
                    "permission_added",
                    id.user.as_deref(),
                    Some(&client),
                    Some(&repo),
                    Some(&detail),
                );
                Ok(json(
                    StatusCode::OK,
                    &json!({ "repo": repo, subject.kind(): subject.name(), "actions": now.names() }),
                ))
            } else {
                let found = app
                    .auth
                    .remove_permission(&repo, &subject, actions)
                    .map_err(internal)?;
                if !found {
                    return Err(Error::not_found(
                        ErrorCode::NameUnknown,
                        format!("no permission for {who} on {repo}"),
                    ));
                }
                app.auth.audit(
                    "permission_removed",
                    id.user.as_deref(),
                    Some(&client),
                    Some(&repo),
                    Some(&who),
                );
                Ok(json(StatusCode::OK, &json!({ "removed": true })))
            }
        }
        ("visibility", &Method::GET) | ("visibility", &Method::PUT) => {
            let repo = query_get(&q, "repo").ok_or_else(|| bad("missing ?repo="))?;
            let name = RepoName::parse(&strip_tag(repo))
                .map_err(|e| Error::bad_request(ErrorCode::NameInvalid, e.to_string()))?;
            if m == Method::PUT {
                let body: VisibilityBody = read_json(req).await?;
                let v = Visibility::parse(&body.visibility).map_err(|e| bad(&e))?;
                app.auth
                    .set_visibility(name.as_str(), v)
                    .map_err(internal)?;
                app.auth.audit(
                    "visibility_changed",
                    id.user.as_deref(),
                    Some(&client),
                    Some(name.as_str()),
                    Some(v.as_str()),
                );
            }
            let v = app.auth.visibility(name.as_str());
            Ok(json(
                StatusCode::OK,
                &json!({ "repo": name.as_str(), "visibility": v.as_str(), "exists": app.storage.is_hosted(name.as_str()) }),
            ))
        }
        ("logs", &Method::GET) => recent_logs(&q),
        ("access-logs", &Method::GET) | ("audit", &Method::GET) => {
            let user = query_get(&q, "user").map(str::to_string);
            let since = match query_get(&q, "since") {
                Some(s) => parse_duration(s).map_err(|e| bad(&format!("since: {e}")))?,
                None => std::time::Duration::from_secs(24 * 3600),
            };
            let limit = match query_get(&q, "limit") {
                Some(l) => l
                    .parse::<u32>()
                    .map_err(|_| bad("limit: not a number"))?
                    .min(MAX_LIMIT),
                None => DEFAULT_LIMIT,
            };
            let since_ms = now_ms().saturating_sub(since.as_millis() as u64);
            let store = app.auth.store.clone();
            let audit = path == "audit";
            let value = tokio::task::spawn_blocking(move || {
                let u = user.as_deref();
                match audit {
                    true => store
                        .audit_log(u, since_ms, limit)
                        .map(|r| json!({ "events": r })),
                    false => store
                        .access_log(u, since_ms, limit)
                        .map(|r| json!({ "requests": r })),
                }
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(internal)?;
            Ok(json(StatusCode::OK, &value))
        }
        ("tokens", &Method::GET) => {
            let tokens = app
                .auth
                .store
                .tokens(query_get(&q, "user"))
                .map_err(internal)?;
            Ok(json(StatusCode::OK, &json!({ "tokens": tokens })))
        }
        ("tokens", &Method::POST) => {
            // A bearer JWT is short-lived by design: it must not mint a credential that
            // outlives it. Minting needs a password or an API token.
            if !matches!(
                id.method,
                crate::auth::Method::Password | crate::auth::Method::ApiToken(_)
            ) {
                return Err(Error::client(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Denied,
                    "creating API tokens needs a password or an API token, not a bearer token",
                ));
            }
            let body: TokenBody = read_json(req).await?;
            for s in body.scopes.split_whitespace() {
                parse_scope(s).map_err(|e| bad(&e))?;
            }
            let expires = match body.expires.as_deref() {
                None | Some("") | Some("never") => None,
                Some(d) => Some(
                    crate::auth::store::now_secs()
                        + parse_duration(d)
                            .map_err(|e| bad(&format!("expires: {e}")))?
                            .as_secs(),
                ),
            };
            // Made with an API token that expires: the new one expires no later.
            let expires = match (expires, id.expires) {
                (Some(e), Some(bound)) => Some(e.min(bound)),
                (e, bound) => e.or(bound),
            };
            let (token, info) = app
                .auth
                .create_token(&body.user, &body.scopes, expires)
                .map_err(internal)?;
            app.auth.audit(
                "token_created",
                id.user.as_deref(),
                Some(&client),
                None,
                Some(&format!("{} for {}", info.id, info.user)),
            );
            Ok(json(
                StatusCode::CREATED,
                &json!({ "token": token, "info": info }),
            ))
        }
        (p, &Method::DELETE) if p.starts_with("tokens/") => {
            let tid = &p["tokens/".len()..];
            if !app.auth.revoke_token(tid).map_err(internal)? {
                return Err(Error::not_found(
                    ErrorCode::Unsupported,
                    format!("no live token {tid}"),
                ));
            }
            app.auth.audit(
                "token_revoked",
                id.user.as_deref(),
                Some(&client),
                None,
                Some(tid),
            );
            Ok(json(StatusCode::OK, &json!({ "revoked": tid })))
        }
        (p, m) if KNOWN.contains(&p) || p.starts_with("tokens/") => Err(Error::client(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("method {m} not allowed on /admin/{p}"),
        )),
        _ => Err(Error::not_found(
            ErrorCode::Unsupported,
            "no such admin endpoint",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    block_vulnerabilities: Option<String>,
    #[serde(default)]
    unscanned: Option<String>,
}

/// The policies in effect, what the config says and what was set at run time.
fn policy_view(app: &App) -> serde_json::Value {
    let p = &app.policy;
    let v = p.vulnerabilities();
    let c = p.configured();
    let o = p.runtime();
    let sev = |s: Option<crate::scan::Severity>| s.map(|s| s.to_string()).unwrap_or_default();
    json!({
        "version": p.version(),
        "block_vulnerabilities": sev(v.block),
        "unscanned": v.unscanned.as_str(),
        "configured": {
            "block_vulnerabilities": sev(c.block),
            "unscanned": c.unscanned.as_str(),
        },
        "runtime": o,
        "signatures": p.signature_rules().iter().map(|r| json!({
            "repos": r.repos,
            "keys": r.key_files,
            "mode": if r.enforce { "enforce" } else { "warn" },
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermissionBody {
    repo: String,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisibilityBody {
    visibility: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    user: String,
    scopes: String,
    expires: Option<String>,
}

/// `my-agent:latest` -> `my-agent`: permissions are per repository.
fn strip_tag(repo: &str) -> String {
    match repo.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name.to_string(),
        _ => repo.to_string(),
    }
}

/// A repository name, or a pattern of name characters and `*`.
fn check_pattern(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c));
    match ok {
        true => Ok(()),
        false => Err(Error::bad_request(
            ErrorCode::NameInvalid,
            format!("invalid repository or pattern {p:?}"),
        )),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<ReqBody>) -> Result<T> {
    let body = read_limited(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| bad(&format!("reading the body: {e}")))?
        .ok_or_else(|| Error::bad_request(ErrorCode::SizeInvalid, "body too large"))?;
    serde_json::from_slice(&body).map_err(|e| bad(&format!("invalid JSON body: {e}")))
}

/// `GET /admin/logs`: `level` (error, warn, info, debug, trace; default info), `since` (a duration;
/// default all the ring holds), `after` (a sequence number), `limit`.
fn recent_logs(q: &[(String, String)]) -> Result<Response<Body>> {
    let max_rank = match query_get(q, "level") {
        Some(l) => crate::logring::rank(l).ok_or_else(|| {
            bad(&format!(
                "level: {l:?} is not error, warn, info, debug or trace"
            ))
        })?,
        None => 3,
    };
    let since_ms = match query_get(q, "since") {
        Some(s) => {
            let d = parse_duration(s).map_err(|e| bad(&format!("since: {e}")))?;
            now_ms().saturating_sub(d.as_millis() as u64)
        }
        None => 0,
    };
    let after = match query_get(q, "after") {
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| bad("after: not a sequence number"))?,
        None => 0,
    };
    let limit = match query_get(q, "limit") {
        Some(l) => l
            .parse::<u32>()
            .map_err(|_| bad("limit: not a number"))?
            .min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let page = crate::logring::global().query(&crate::logring::Query {
        max_rank,
        since_ms,
        after,
        limit: limit as usize,
    });
    let body = serde_json::to_vec(&page).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(json_bytes(StatusCode::OK, body, "application/json"))
}

fn bad(message: &str) -> Error {
    Error::bad_request(ErrorCode::Unsupported, message.to_string())
}

fn internal(e: crate::auth::store::StoreError) -> Error {
    Error::Internal(e.to_string())
}
