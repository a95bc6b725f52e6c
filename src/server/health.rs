//! `GET /v2/` and the health endpoints: `/healthz` (alive), `/readyz` (storage writable,
//! not draining), `/health` (JSON detail).

use crate::app::App;
use crate::server::body::{json, Body};
use http::{Response, StatusCode};
use serde_json::json;
use std::sync::Arc;

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
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        code,
        &json!({
            "status": if ready { "ready" } else { "not ready" },
            "draining": app.is_draining(),
            "storage": storage.err().unwrap_or_else(|| "writable".into()),
        }),
    )
}

pub async fn detailed(app: &Arc<App>) -> Response<Body> {
    readyz(app).await
}
