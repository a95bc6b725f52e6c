//! Manifest media types and the few fields the registry reads from a manifest:
//! the blobs and child manifests it references, its `subject` and `artifactType`.

use super::digest::Digest;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Media types whose `manifests` entries are child manifests.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// A content descriptor as it appears in manifests and in the referrers index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone)]
pub struct ManifestInfo {
    /// The media type to store and serve: the request's Content-Type, else the body's `mediaType`.
    pub media_type: String,
    /// Blobs that must exist in the repository (config and layers without foreign `urls`).
    pub blobs: Vec<Digest>,
    /// Child manifests of an index that must exist in the repository.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// The `size` each descriptor of `blobs` and `children` declares, in that order.
    pub sizes: Vec<u64>,
    /// `artifactType`, else the config media type (what the referrers API reports).
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn digest_of(d: &Descriptor, field: &str) -> Result<Digest, ManifestError> {
    d.digest
        .parse()
        .map_err(|e| ManifestError(format!("{field}: {e}")))
}

/// Parses a manifest body. `content_type` is the request's Content-Type (may be empty).
pub fn parse(body: &[u8], content_type: &str) -> Result<ManifestInfo, ManifestError> {
    // serde reads a struct from a JSON array too (`[2, "..."]`); a manifest is an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ManifestError("manifest is not a JSON object".into()));
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| ManifestError(format!("manifest is not valid JSON: {e}")))?;
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let media_type = match (&raw.media_type, ct) {
        (Some(m), c) if !c.is_empty() && m != c => {
            return Err(ManifestError(format!(
                "mediaType {m:?} does not match Content-Type {c:?}"
            )))
        }
        (_, c) if !c.is_empty() => c.to_string(),
        (Some(m), _) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ManifestError(
                "manifest has neither a Content-Type nor a mediaType".into(),
            ))
        }
    };
    if let Some(v) = raw.schema_version {
        if v != 2 && (media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST) {
            return Err(ManifestError(format!("unsupported schemaVersion {v}")));
        }
    }
    let mut blobs = Vec::new();
    let mut children = Vec::new();
    let mut blob_sizes = Vec::new();
    let mut child_sizes = Vec::new();
    if (media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST)
        && (raw.config.is_none() || raw.layers.is_none())
    {
        return Err(ManifestError(
            "image manifest needs config and layers".into(),
        ));
    }
    if is_index(&media_type) && raw.manifests.is_none() {
        return Err(ManifestError("index needs manifests".into()));
    }
    if let Some(c) = &raw.config {
        blobs.push(digest_of(c, "config")?);
        blob_sizes.push(c.size);
    }
    for (i, l) in raw.layers.iter().flatten().enumerate() {
        let d = digest_of(l, &format!("layers[{i}]"))?;
        if l.urls.is_empty() {
            blobs.push(d);
            blob_sizes.push(l.size);
        }
    }
    for (i, m) in raw.manifests.iter().flatten().enumerate() {
        children.push(digest_of(m, &format!("manifests[{i}]"))?);
        child_sizes.push(m.size);
    }
    let subject = match &raw.subject {
        Some(s) => Some(digest_of(s, "subject")?),
        None => None,
    };
    let artifact_type = raw
        .artifact_type
        .clone()
        .or_else(|| raw.config.as_ref().map(|c| c.media_type.clone()));
    blob_sizes.extend(child_sizes);
    Ok(ManifestInfo {
        media_type,
        blobs,
        children,
        subject,
        sizes: blob_sizes,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_refs() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"x","digest":"{}","size":3}},{{"mediaType":"foreign","digest":"{}","size":3,"urls":["http://x"]}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}}}"#,
            d('a'),
            d('b'),
            d('c'),
            d('e')
        );
        let m = parse(body.as_bytes(), OCI_MANIFEST).unwrap();
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.sizes, vec![2, 3]);
        assert_eq!(m.subject.unwrap().to_string(), d('e'));
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn rejects() {
        assert!(parse(b"not json", OCI_MANIFEST).is_err());
        assert!(parse(b"{}", "").is_err());
        assert!(parse(b"{\"schemaVersion\":2}", OCI_MANIFEST).is_err());
        let mismatch = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(mismatch.as_bytes(), OCI_MANIFEST).is_err());
        let bad = format!(
            r#"{{"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"x","digest":"sha256:zz","size":1}}]}}"#
        );
        assert!(parse(bad.as_bytes(), OCI_INDEX).is_err());
        // Found by the `manifest` fuzz target: a JSON array read as the struct's fields,
        // and an empty mediaType, were stored with an empty media type.
        assert!(parse(b"[2,\"\"]", "").is_err());
        assert!(parse(b" [2,\"x\"]", "").is_err());
        assert!(parse(b"{\"mediaType\":\"\"}", "").is_err());
        // Any artifact type is accepted as long as it is JSON.
        let art = parse(b"{\"hello\":1}", "application/vnd.example+json").unwrap();
        assert!(art.blobs.is_empty());
    }
}
