//! `GET /v2/_search`: hosted images by name, tag, capability, author, date and size, in
//! the seed's result shape. Only repositories the client may pull are searched.
//!
//! What an image says about itself comes from its manifest annotations and its config's
//! labels (`org.opencontainers.image.description`, `.authors`, `.created`, and
//! `ai.agent.capabilities`, a comma-separated list). Manifests are content-addressed, so
//! what was read from one is kept by digest and never goes stale.

use crate::app::App;
use crate::auth::Identity;
use crate::config::parse_size;
use crate::error::{Error, Result};
use crate::oci::{Digest, ErrorCode};
use crate::web::body::{json, Body};
use crate::web::{query, query_get};
use http::{Response, StatusCode, Uri};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tokio::io::AsyncReadExt;

/// Manifests and configs larger than this are not read for metadata.
const MAX_DOC: u64 = 4 << 20;
const MAX_PER_PAGE: usize = 100;

/// What search knows about one manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageMeta {
    pub description: Option<String>,
    pub author: Option<String>,
    pub capabilities: Vec<String>,
    pub created: Option<String>,
    /// Config plus layers (for an index: its largest image).
    pub size: u64,
}

fn cache() -> &'static moka::sync::Cache<String, Arc<ImageMeta>> {
    static CACHE: OnceLock<moka::sync::Cache<String, Arc<ImageMeta>>> = OnceLock::new();
    CACHE.get_or_init(|| moka::sync::Cache::new(100_000))
}

struct Filters {
    q: Option<String>,
    tag: Option<String>,
    capability: Option<String>,
    author: Option<String>,
    since: Option<String>,
    until: Option<String>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    page: usize,
    per_page: usize,
}

fn bad(m: String) -> Error {
    Error::bad_request(ErrorCode::Unsupported, m)
}

impl Filters {
    fn parse(uri: &Uri) -> Result<Filters> {
        let q = query(uri);
        let get = |k: &str| {
            query_get(&q, k)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let size = |k: &str| -> Result<Option<u64>> {
            get(k)
                .map(|v| parse_size(&v).map_err(|e| bad(format!("{k}: {e}"))))
                .transpose()
        };
        let number = |k: &str, default: usize| -> Result<usize> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("{k}: {v:?} is not a whole number from 1"))),
            }
        };
        Ok(Filters {
            q: get("q").or_else(|| get("name")).map(|s| s.to_lowercase()),
            tag: get("tag"),
            capability: get("capability").map(|s| s.to_lowercase()),
            author: get("author").map(|s| s.to_lowercase()),
            since: get("since"),
            until: get("until"),
            min_size: size("min_size")?,
            max_size: size("max_size")?,
            page: number("page", 1)?,
            per_page: number("per_page", 10)?.min(MAX_PER_PAGE),
        })
    }

    fn keep(&self, repo: &str, tag: &str, m: &ImageMeta) -> bool {
        let lower = |s: &Option<String>| s.as_deref().unwrap_or("").to_lowercase();
        self.q.as_ref().is_none_or(|q| {
            repo.contains(q.as_str()) || lower(&m.description).contains(q.as_str())
        }) && self.tag.as_ref().is_none_or(|t| t == tag)
            && self
                .capability
                .as_ref()
                .is_none_or(|c| m.capabilities.iter().any(|x| x.to_lowercase() == *c))
            && self
                .author
                .as_ref()
                .is_none_or(|a| lower(&m.author).contains(a.as_str()))
            // RFC 3339 timestamps in UTC order as strings; a bare date works as a prefix.
            && self
                .since
                .as_ref()
                .is_none_or(|s| m.created.as_deref().is_some_and(|c| c >= s.as_str()))
            && self
                .until
                .as_ref()
                .is_none_or(|u| m.created.as_deref().is_some_and(|c| c <= u.as_str()))
            && self.min_size.is_none_or(|n| m.size >= n)
            && self.max_size.is_none_or(|n| m.size <= n)
    }
}

pub async fn handle(app: &Arc<App>, id: &Identity, uri: &Uri) -> Result<Response<Body>> {
    let f = Filters::parse(uri)?;
    let meta = &app.storage.meta;
    let mut hits = Vec::new();
    for repo in meta.repositories(None, u64::MAX).await? {
        if !app.may_read(id, &repo) {
            continue;
        }
        let tags = meta.tags(&repo, None, u64::MAX).await?.unwrap_or_default();
        for tag in tags {
            let Some(digest) = meta.tag(&repo, &tag).await? else {
                continue;
            };
            let m = image_meta(app, &digest).await?;
            if f.keep(&repo, &tag, &m) {
                hits.push((repo.clone(), tag, m));
            }
        }
    }
    let total = hits.len();
    let start = (f.page - 1).saturating_mul(f.per_page);
    let mut images = Vec::new();
    for (repo, tag, m) in hits.into_iter().skip(start).take(f.per_page) {
        let downloads = downloads(app, &repo).await;
        images.push(json!({
            "name": repo,
            "tag": tag,
            "description": m.description.clone().unwrap_or_default(),
            "author": m.author.clone().unwrap_or_default(),
            "capabilities": m.capabilities,
            "size": human_size(m.size),
            "size_bytes": m.size,
            "created": m.created.clone().unwrap_or_default(),
            "downloads": downloads,
            "rating": Value::Null,
        }));
    }
    Ok(json(
        StatusCode::OK,
        &json!({ "images": images, "total": total, "page": f.page, "per_page": f.per_page }),
    ))
}

/// Successful manifest pulls of `repo` counted by the access log (all time).
async fn downloads(app: &Arc<App>, repo: &str) -> u64 {
    let (store, repo) = (app.auth.store.clone(), repo.to_string());
    tokio::task::spawn_blocking(move || store.pulls(&repo).unwrap_or(0))
        .await
        .unwrap_or(0)
}

/// `150MB` (decimal units, as the seed writes them).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    match u {
        0 => format!("{n}B"),
        _ if v < 10.0 => format!("{v:.1}{}", UNITS[u]),
        _ => format!("{v:.0}{}", UNITS[u]),
    }
}

async fn read_doc(app: &App, digest: &str) -> Option<Value> {
    let d: Digest = digest.parse().ok()?;
    let (mut file, len) = app.storage.blobs.open_file(&d).await.ok()??;
    if len > MAX_DOC {
        return None;
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.read_to_end(&mut buf).await.ok()?;
    serde_json::from_slice(&buf).ok()
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn descriptor_size(v: &Value) -> u64 {
    v["size"].as_u64().unwrap_or(0)
}

/// Reads (once per digest) what a manifest and its config say about the image.
async fn image_meta(app: &App, digest: &str) -> Result<Arc<ImageMeta>> {
    if let Some(m) = cache().get(digest) {
        return Ok(m);
    }
    let mut out = ImageMeta::default();
    if let Some(doc) = read_doc(app, digest).await {
        let mut keys = strings(&doc["annotations"]);
        if let Some(children) = doc["manifests"].as_array() {
            // An index: its largest image's size and labels stand for it.
            let mut best: Option<Arc<ImageMeta>> = None;
            for c in children.iter().filter_map(|c| c["digest"].as_str()) {
                let m = Box::pin(image_meta(app, c)).await?;
                if best.as_ref().is_none_or(|b| m.size > b.size) {
                    best = Some(m);
                }
            }
            if let Some(b) = best {
                out = (*b).clone();
            }
        } else {
            let layers: u64 = doc["layers"]
                .as_array()
                .map(|l| l.iter().map(descriptor_size).sum())
                .unwrap_or(0);
            out.size = descriptor_size(&doc["config"]) + layers;
            if let Some(cfg) = doc["config"]["digest"].as_str() {
                if let Some(config) = read_doc(app, cfg).await {
                    for (k, v) in strings(&config["config"]["Labels"]) {
                        keys.entry(k).or_insert(v);
                    }
                    if let Some(c) = config["created"].as_str() {
                        keys.entry("created".into()).or_insert(c.to_string());
                    }
                }
            }
        }
        let pick = |names: &[&str]| names.iter().find_map(|n| keys.get(*n).cloned());
        out.description =
            pick(&["org.opencontainers.image.description", "description"]).or(out.description);
        out.author =
            pick(&["org.opencontainers.image.authors", "author", "maintainer"]).or(out.author);
        out.created = pick(&["org.opencontainers.image.created", "created"]).or(out.created);
        if let Some(c) = pick(&[
            "ai.agent.capabilities",
            "agent.capabilities",
            "capabilities",
        ]) {
            out.capabilities = c
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
    }
    let m = Arc::new(out);
    cache().insert(digest.to_string(), m.clone());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_read_like_the_seed() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(150_000_000), "150MB");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(2_000_000_000), "2.0GB");
    }
}
