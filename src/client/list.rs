//! `agent images`: the store's images as rows, and docker-style filters over them.

use super::ignore::match_path;
use super::store::{ref_name, Store};
use crate::oci::Digest;
use anyhow::{anyhow, bail};
use serde::Serialize;
use std::collections::BTreeMap;

/// One image of the store as `agent images` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    /// The image ID: the config digest of the (host platform) image.
    pub id: String,
    /// The manifest (or index) digest.
    pub digest: String,
    pub media_type: String,
    /// `None` for an untagged manifest.
    pub repository: Option<String>,
    pub tag: Option<String>,
    /// Config plus layers, compressed, in bytes.
    pub size: u64,
    /// The config's `created`, RFC 3339.
    pub created: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageRow {
    /// `repository:tag`, for substring filters.
    pub fn reference(&self) -> String {
        match (&self.repository, &self.tag) {
            (Some(r), Some(t)) => format!("{r}:{t}"),
            (Some(r), None) => r.clone(),
            _ => String::new(),
        }
    }

    /// Seconds since the epoch of `created`.
    pub fn created_secs(&self) -> Option<i64> {
        self.created.as_deref().and_then(parse_rfc3339)
    }
}

/// Splits a reference into repository and tag (a `:` after the last `/`).
pub fn split_ref(r: &str) -> (String, Option<String>) {
    let r = r.split('@').next().unwrap_or(r);
    let slash = r.rfind('/').map(|i| i + 1).unwrap_or(0);
    match r[slash..].rfind(':') {
        Some(i) => (
            r[..slash + i].to_string(),
            Some(r[slash + i + 1..].to_string()),
        ),
        None => (r.to_string(), None),
    }
}

/// Every entry of the store's index, tagged ones first; untagged ones only with `all`.
/// Sorted newest first, then by reference, like docker.
pub fn list(store: &Store, all: bool) -> anyhow::Result<Vec<ImageRow>> {
    let idx = store.index()?;
    let mut rows = Vec::new();
    for d in &idx.manifests {
        let name = ref_name(d);
        if name.is_none() && !all {
            continue;
        }
        let (pd, pm) = match store.platform_manifest(d) {
            Ok(x) => x,
            Err(_) => continue, // not readable (e.g. a blob removed by hand): not listed
        };
        let config = pm.config.as_ref();
        let (created, labels) = match config.and_then(|c| c.digest.parse::<Digest>().ok()) {
            Some(cd) => {
                let v: serde_json::Value = store
                    .read_blob(&cd)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                let labels = v["config"]["Labels"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                (v["created"].as_str().map(str::to_string), labels)
            }
            None => (None, BTreeMap::new()),
        };
        let size = config.map(|c| c.size).unwrap_or(pd.size)
            + pm.layers.iter().map(|l| l.size).sum::<u64>();
        let (repository, tag) = match name {
            Some(n) => {
                let (r, t) = split_ref(n);
                (Some(r), t)
            }
            None => (None, None),
        };
        rows.push(ImageRow {
            id: config
                .map(|c| c.digest.clone())
                .unwrap_or_else(|| pd.digest.clone()),
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            repository,
            tag,
            size,
            created,
            labels,
        });
    }
    rows.sort_by(|a, b| {
        b.created_secs()
            .cmp(&a.created_secs())
            .then_with(|| a.repository.is_none().cmp(&b.repository.is_none()))
            .then_with(|| a.reference().cmp(&b.reference()))
            .then_with(|| a.digest.cmp(&b.digest))
    });
    Ok(rows)
}

/// One `--filter`: docker's `reference=`, `label=`, `before=`, `since=`, `dangling=`, or
/// any other text as a substring of `repository:tag`.
#[derive(Debug, Clone)]
pub enum Filter {
    Substring(String),
    Reference(String),
    Label(String, Option<String>),
    Before(i64),
    Since(i64),
    Dangling(bool),
}

impl Filter {
    /// Parses a filter; `before=`/`since=` name an image of the store.
    pub fn parse(s: &str, rows: &[ImageRow], store: &Store) -> anyhow::Result<Filter> {
        let Some((k, v)) = s.split_once('=') else {
            return Ok(Filter::Substring(s.to_string()));
        };
        Ok(match k {
            "reference" => Filter::Reference(v.to_string()),
            "label" => match v.split_once('=') {
                Some((k, v)) => Filter::Label(k.to_string(), Some(v.to_string())),
                None => Filter::Label(v.to_string(), None),
            },
            "before" | "since" => {
                let d = store.resolve(v)?;
                let t = rows
                    .iter()
                    .find(|r| r.digest == d.digest)
                    .and_then(ImageRow::created_secs)
                    .ok_or_else(|| anyhow!("image {v} has no creation time"))?;
                if k == "before" {
                    Filter::Before(t)
                } else {
                    Filter::Since(t)
                }
            }
            "dangling" => match v {
                "true" | "1" => Filter::Dangling(true),
                "false" | "0" => Filter::Dangling(false),
                _ => bail!("invalid filter dangling={v}: use true or false"),
            },
            _ => Filter::Substring(s.to_string()),
        })
    }

    pub fn matches(&self, r: &ImageRow) -> bool {
        match self {
            Filter::Substring(s) => r.reference().contains(s.as_str()),
            Filter::Reference(p) => {
                let Some(repo) = &r.repository else {
                    return false;
                };
                match_path(p, &r.reference()) || match_path(p, repo)
            }
            Filter::Label(k, v) => match (r.labels.get(k), v) {
                (Some(x), Some(v)) => x == v,
                (Some(_), None) => true,
                (None, _) => false,
            },
            Filter::Before(t) => r.created_secs().is_some_and(|c| c < *t),
            Filter::Since(t) => r.created_secs().is_some_and(|c| c > *t),
            Filter::Dangling(d) => r.repository.is_none() == *d,
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        rest = &r[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for secs in [0u64, 1_700_000_000, 951_782_400] {
            let s = crate::auth::store::rfc3339(secs);
            assert_eq!(parse_rfc3339(&s), Some(secs as i64), "{s}");
        }
        assert_eq!(
            parse_rfc3339("2024-01-01T01:00:00.123456789+01:00"),
            Some(1_704_067_200)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_ref("a/b:1"), ("a/b".into(), Some("1".into())));
        assert_eq!(
            split_ref("localhost:5000/x:v1"),
            ("localhost:5000/x".into(), Some("v1".into()))
        );
        assert_eq!(
            split_ref("localhost:5000/x"),
            ("localhost:5000/x".into(), None)
        );
    }
}
