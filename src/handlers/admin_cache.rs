//! The admin endpoints of the cache and garbage collection, behind `App::require_admin`:
//! `GET /admin/cache/stats`, `POST /admin/cache/purge?repo=...|digest=...` and
//! `POST /admin/gc?dry_run=1`. Each answers JSON.

use crate::app::App;
use crate::cache::admin;
use crate::error::{Error, Result};
use crate::oci::ErrorCode;
use crate::web::body::{json_bytes, Body};
use crate::web::{query, query_get};
use http::{Response, StatusCode, Uri};
use std::sync::Arc;

fn json<T: serde::Serialize>(v: &T) -> Result<Response<Body>> {
    let body = serde_json::to_vec(v).map_err(|e| Error::Internal(format!("admin json: {e}")))?;
    Ok(json_bytes(StatusCode::OK, body, "application/json"))
}

fn internal(e: crate::storage::StorageError) -> Error {
    Error::Internal(e.to_string())
}

pub fn stats(app: &Arc<App>) -> Result<Response<Body>> {
    json(&app.cache.stats())
}

pub async fn purge(app: &Arc<App>, uri: &Uri) -> Result<Response<Body>> {
    let q = query(uri);
    let target = match (query_get(&q, "repo"), query_get(&q, "digest")) {
        (Some(r), None) if !r.is_empty() => r.to_string(),
        (None, Some(d)) => {
            d.parse::<crate::oci::Digest>()
                .map_err(|e| Error::bad_request(ErrorCode::DigestInvalid, e.to_string()))?;
            d.to_string()
        }
        _ => {
            return Err(Error::bad_request(
                ErrorCode::Unsupported,
                "purge needs exactly one of ?repo=<name> or ?digest=<digest>",
            ))
        }
    };
    json(
        &admin::purge(&app.tiers(), &target)
            .await
            .map_err(internal)?,
    )
}

pub async fn gc(app: &Arc<App>, uri: &Uri) -> Result<Response<Body>> {
    let q = query(uri);
    let dry_run = matches!(query_get(&q, "dry_run"), Some("1" | "true"));
    json(&admin::gc(&app.tiers(), dry_run).await.map_err(internal)?)
}
