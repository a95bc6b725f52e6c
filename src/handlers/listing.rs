//! Listings: `/v2/<name>/tags/list`, `/v2/_catalog` (both paginated with `n`, `last`
//! and a `Link` header) and the referrers API `/v2/<name>/referrers/<digest>`.

use crate::app::App;
use crate::error::{Error, Result};
use crate::handlers::blobs::parse_digest;
use crate::oci::{manifest::OCI_INDEX, ErrorCode, RepoName};
use crate::web::body::{hv, json, json_bytes, Body};
use crate::web::{query, query_get};
use http::{header, Response, StatusCode, Uri};
use serde_json::json;
use std::sync::Arc;

/// `n` and `last` from the query; `n` absent means everything.
fn page(uri: &Uri) -> Result<(Option<u64>, Option<String>)> {
    let q = query(uri);
    let n =
        match query_get(&q, "n") {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                Error::bad_request(ErrorCode::Unsupported, format!("invalid n {v:?}"))
            })?),
            None => None,
        };
    Ok((n, query_get(&q, "last").map(str::to_string)))
}

/// Trims `items` (fetched with one extra) to `n` and adds a `Link` to the next page.
fn paginate(
    mut items: Vec<String>,
    n: Option<u64>,
    path: &str,
    key: &str,
    extra: serde_json::Value,
) -> Response<Body> {
    let more = n.is_some_and(|n| items.len() as u64 > n);
    if let Some(n) = n {
        items.truncate(n as usize);
    }
    let mut body = extra;
    body[key] = json!(items);
    let mut r = json(StatusCode::OK, &body);
    if let (true, Some(n), Some(last)) = (more, n, items.last()) {
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        r.headers_mut().insert(
            header::LINK,
            hv(&format!("<{path}?n={n}&last={last}>; rel=\"next\"")),
        );
    }
    r
}

fn fetch_count(n: Option<u64>) -> u64 {
    n.map_or(u64::MAX, |n| n.saturating_add(1))
}

pub async fn tags(app: &Arc<App>, name: &RepoName, uri: &Uri) -> Result<Response<Body>> {
    let (n, last) = page(uri)?;
    let tags = app
        .storage
        .meta
        .tags(name.as_str(), last, fetch_count(n))
        .await?
        .ok_or_else(|| {
            Error::not_found(ErrorCode::NameUnknown, format!("repository {name} unknown"))
        })?;
    Ok(paginate(
        tags,
        n,
        &format!("/v2/{name}/tags/list"),
        "tags",
        json!({ "name": name.as_str() }),
    ))
}

/// Hosted repositories and the mirrored ones we hold tags of (`<upstream>/<repo>`).
/// The repositories `visible` lets the client see (those it may pull).
pub async fn catalog(
    app: &Arc<App>,
    uri: &Uri,
    visible: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Response<Body>> {
    let (n, last) = page(uri)?;
    let meta = &app.storage.meta;
    // Filtering after a page was read would shorten it: read all names past `last`.
    let mut repos = meta.repositories(last.clone(), u64::MAX).await?;
    repos.extend(
        meta.mirror_repositories()
            .await?
            .into_iter()
            .filter(|r| last.as_ref().is_none_or(|l| r > l)),
    );
    repos.retain(|r| visible(r));
    repos.sort();
    repos.dedup();
    Ok(paginate(
        repos,
        n,
        "/v2/_catalog",
        "repositories",
        json!({}),
    ))
}

pub async fn referrers(
    app: &Arc<App>,
    name: &RepoName,
    d: &str,
    uri: &Uri,
) -> Result<Response<Body>> {
    let digest = parse_digest(d)?;
    let q = query(uri);
    let filter = query_get(&q, "artifactType");
    let rows = app
        .storage
        .meta
        .referrers(name.as_str(), &digest.to_string())
        .await?;
    let manifests: Vec<serde_json::Value> = rows
        .into_iter()
        .filter(|r| filter.is_none_or(|f| r.artifact_type.as_deref() == Some(f)))
        .map(|r| {
            let mut v = json!({ "mediaType": r.media_type, "digest": r.digest, "size": r.size });
            if let Some(a) = r.artifact_type {
                v["artifactType"] = json!(a);
            }
            if let Some(a) = r
                .annotations
                .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
            {
                v["annotations"] = a;
            }
            v
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut r = json_bytes(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
        OCI_INDEX,
    );
    if filter.is_some() {
        r.headers_mut()
            .insert("oci-filters-applied", hv("artifactType"));
    }
    Ok(r)
}
