//! The OCI distribution-spec conformance suite (opencontainers/distribution-spec
//! `conformance/`) ported to Rust, so this suite fails where the Go one would.
//!
//! - `workflows`: the classic suite's four workflows (pull, push, content discovery, content
//!   management), one test per section plus the whole suite in order on one namespace.
//! - `blobs`: the v1.1 suite's blob API checks for sha256 and sha512 (every upload flavour,
//!   mounts, cancel, ranges, bad digests, empty blobs).
//! - `data`: the v1.1 suite's data sets (images, indexes, artifacts, subjects, sha512, tag
//!   parameters, ...), each pushed, listed, pulled, queried and deleted.
//! - this file: shared helpers and the checks that fit no data set (ping, empty repository,
//!   manifest errors, Docker media types, pagination links, HEAD over HTTP/2).
//!
//! Where the Go suite accepts several answers, the tests accept exactly those; where this
//! registry is known to give one of them (it implements automatic mounts, filters
//! referrers, returns Docker-Content-Digest everywhere), the tests pin that answer.

mod blobs;
mod data;
mod workflows;

use crate::support::http::{Http, Resp};
use crate::support::random;
use crate::support::server::TestServer;
use agent_registry::oci::Algorithm;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCTET: &str = "application/octet-stream";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The error codes the suite accepts in an error body.
pub const SPEC_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

/// `alg:hex` of `bytes`.
pub fn digest_of(alg: Algorithm, bytes: &[u8]) -> String {
    let mut h = alg.hasher();
    h.update(bytes);
    h.finish().to_string()
}

pub fn sha256(bytes: &[u8]) -> String {
    digest_of(Algorithm::Sha256, bytes)
}

/// Standard base64 with padding (the encoding of the `data` descriptor field).
pub fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// JSON indented with tabs, as Go's `json.MarshalIndent(v, "", "\t")` writes it.
pub fn tab_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("json");
    out
}

/// Appends `key=value` to a (relative or absolute) URL that may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{url}{sep}{key}={value}")
}

/// Formats a response for assertion messages.
pub fn show(r: &Resp) -> String {
    format!(
        "{} {:?} {}",
        r.status,
        r.headers,
        String::from_utf8_lossy(&r.body[..r.body.len().min(400)])
    )
}

pub fn assert_status(r: &Resp, allowed: &[u16], what: &str) {
    assert!(
        allowed.contains(&r.status.as_u16()),
        "{what}: expected one of {allowed:?}, got {}",
        show(r)
    );
}

pub fn is_2xx(r: &Resp) -> bool {
    r.status.is_success()
}

/// A blob the tests push: its bytes and digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub content: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(content: Vec<u8>) -> Blob {
        Blob::with(Algorithm::Sha256, content)
    }

    pub fn with(alg: Algorithm, content: Vec<u8>) -> Blob {
        let digest = digest_of(alg, &content);
        Blob { content, digest }
    }

    pub fn len(&self) -> usize {
        self.content.len()
    }

    /// A descriptor of this blob with the given media type.
    pub fn desc(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.len()})
    }
}

/// POST to start a session; asserts 202 and a Location under the repository.
pub async fn start_session(http: &Http, repo: &str) -> String {
    let r = http
        .send(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "start upload: {}", show(&r));
    location(&r)
}

/// The Location header, asserted present and non-empty.
pub fn location(r: &Resp) -> String {
    let loc = r.header("location").unwrap_or_default().to_string();
    assert!(!loc.is_empty(), "no Location in {}", show(r));
    loc
}

/// The suite's "populate" step: POST for a session, then PUT the whole blob with its digest.
pub async fn post_then_put(http: &Http, repo: &str, blob: &Blob) -> Resp {
    let loc = start_session(http, repo).await;
    http.send(
        Method::PUT,
        &with_query(&loc, "digest", &blob.digest),
        &[("content-type", OCTET)],
        blob.content.clone(),
    )
    .await
}

/// PUT a manifest and assert a 2xx, returning the response.
pub async fn put_manifest_ok(
    http: &Http,
    repo: &str,
    reference: &str,
    mt: &str,
    body: &[u8],
) -> Resp {
    let r = http.put_manifest(repo, reference, mt, body).await;
    assert!(is_2xx(&r), "put manifest {repo}:{reference}: {}", show(&r));
    r
}

pub async fn delete(http: &Http, path: &str) -> Resp {
    http.send(Method::DELETE, path, &[], Bytes::new()).await
}

/// GET with headers.
pub async fn get_with(http: &Http, path: &str, headers: &[(&str, &str)]) -> Resp {
    http.send(Method::GET, path, headers, Bytes::new()).await
}

pub async fn head_with(http: &Http, path: &str, headers: &[(&str, &str)]) -> Resp {
    http.send(Method::HEAD, path, headers, Bytes::new()).await
}

/// The Accept header the v1.1 suite sends for manifests.
pub const ACCEPT_OCI: &[(&str, &str)] = &[("accept", OCI_INDEX), ("accept", OCI_MANIFEST)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_200_with_the_api_version_header() {
    let srv = TestServer::start();
    for http in [Http::new(&srv.host()), Http::h2(&srv.host())] {
        let r = http.get("/v2/").await;
        assert_eq!(r.status, StatusCode::OK, "{}", show(&r));
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let r = http.head("/v2/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty());
    }
}

/// v1.1 suite, "empty": a tag list of a repository with nothing in it is 200 with a tag
/// list or 404; referrers of a random subject are a valid, empty OCI index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_repository_tag_list_and_referrers() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let r = http.get("/v2/conformance/repo1/tags/list").await;
    assert_status(&r, &[200, 404], "tag list of an empty repository");
    if r.status == StatusCode::OK {
        assert!(r.json()["tags"].is_array(), "{}", show(&r));
    } else {
        assert_eq!(r.error_code(), "NAME_UNKNOWN");
    }
    let subject = sha256(&random(64, 1));
    let r = http
        .get(&format!("/v2/conformance/repo1/referrers/{subject}"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", show(&r));
    assert_eq!(r.header("content-type"), Some(OCI_INDEX));
    let v = r.json();
    assert_eq!(v["mediaType"], OCI_INDEX);
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["manifests"].as_array().map(Vec::len), Some(0), "{v}");
}

/// v1.1 suite, "missing-manifest" and "invalid-digest-format", plus the "bad digest image"
/// data set: unknown manifests are 404, a malformed digest reference is refused, and a body
/// that does not match the digest it is pushed under is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_errors() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let repo = "conformance/repo1";
    let missing = sha256(&random(1024, 7));
    let r = get_with(
        &http,
        &format!("/v2/{repo}/manifests/{missing}"),
        ACCEPT_OCI,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", show(&r));
    let r = get_with(
        &http,
        &format!("/v2/{repo}/manifests/missing-x7q2"),
        ACCEPT_OCI,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", show(&r));

    // A valid image, pushed under a malformed digest reference.
    let cfg = Blob::new(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let layer = Blob::new(random(300, 8));
    for b in [&cfg, &layer] {
        assert_eq!(
            post_then_put(&http, repo, b).await.status,
            StatusCode::CREATED
        );
    }
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": cfg.desc(OCI_CONFIG), "layers": [layer.desc(OCI_LAYER_GZ)]});
    let body = serde_json::to_vec(&m).expect("json");
    let r = http
        .put_manifest(repo, "sha256:baddigeststring", OCI_MANIFEST, &body)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", show(&r));
    assert!(SPEC_ERROR_CODES.contains(&r.error_code().as_str()));
    let r = get_with(
        &http,
        &format!("/v2/{repo}/manifests/sha256:baddigeststring"),
        ACCEPT_OCI,
    )
    .await;
    assert_status(&r, &[400, 404], "GET of a malformed digest");

    // Bad digest image: the digest of the body before two spaces were appended.
    let digest = sha256(&body);
    let mut padded = body.clone();
    padded.extend_from_slice(b"  ");
    let r = http
        .put_manifest(repo, &digest, OCI_MANIFEST, &padded)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", show(&r));
    let r = head_with(&http, &format!("/v2/{repo}/manifests/{digest}"), ACCEPT_OCI).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "nothing stored: {}",
        show(&r)
    );
}

/// Docker schema 2 manifests and manifest lists round-trip byte for byte, with their
/// Content-Type on GET and HEAD, by tag and by digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_schema2_manifest_and_list_round_trip() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let repo = "library/dockerish";
    let cfg = Blob::new(
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
    );
    let layer = Blob::new(random(777, 3));
    for b in [&cfg, &layer] {
        assert_eq!(
            post_then_put(&http, repo, b).await.status,
            StatusCode::CREATED
        );
    }
    // Three-space indentation and a trailing newline: nothing may be normalised.
    let manifest = format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{DOCKER_MANIFEST}\",\n   \"config\": {{\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": {},\n      \"digest\": \"{}\"\n   }},\n   \"layers\": [\n      {{\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": {},\n         \"digest\": \"{}\"\n      }}\n   ]\n}}\n",
        cfg.len(),
        cfg.digest,
        layer.len(),
        layer.digest
    )
    .into_bytes();
    let mdigest = sha256(&manifest);
    let r = put_manifest_ok(&http, repo, "arm64", DOCKER_MANIFEST, &manifest).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("docker-content-digest"), Some(mdigest.as_str()));
    let list = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{DOCKER_LIST}\",\"manifests\":[{{\"mediaType\":\"{DOCKER_MANIFEST}\",\"size\":{},\"digest\":\"{mdigest}\",\"platform\":{{\"architecture\":\"arm64\",\"os\":\"linux\",\"variant\":\"v8\"}}}}]}}",
        manifest.len()
    )
    .into_bytes();
    let ldigest = sha256(&list);
    put_manifest_ok(&http, repo, "latest", DOCKER_LIST, &list).await;
    for (reference, body, mt, digest) in [
        ("arm64", &manifest, DOCKER_MANIFEST, &mdigest),
        (mdigest.as_str(), &manifest, DOCKER_MANIFEST, &mdigest),
        ("latest", &list, DOCKER_LIST, &ldigest),
        (ldigest.as_str(), &list, DOCKER_LIST, &ldigest),
    ] {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let accept = [("accept", DOCKER_MANIFEST), ("accept", DOCKER_LIST)];
        let r = get_with(&http, &path, &accept).await;
        assert_eq!(r.status, StatusCode::OK, "{}", show(&r));
        assert_eq!(
            r.body.as_ref(),
            body.as_slice(),
            "{reference}: bytes differ"
        );
        assert_eq!(r.header("content-type"), Some(mt), "{reference}");
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        let len = body.len().to_string();
        assert_eq!(r.header("content-length"), Some(len.as_str()));
        let h = head_with(&http, &path, &accept).await;
        assert_eq!(h.status, StatusCode::OK);
        assert!(h.body.is_empty());
        assert_eq!(h.header("content-type"), Some(mt));
        assert_eq!(h.header("content-length"), Some(len.as_str()));
        assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    }
}

/// Parses `Link: <url>; rel="next"` into the URL.
fn next_link(r: &Resp) -> Option<String> {
    let link = r.header("link")?;
    let (url, rel) = link.split_once(';')?;
    assert_eq!(rel.trim(), "rel=\"next\"", "{link}");
    let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
    Some(url.to_string())
}

/// Tag lists and the catalog page with `n` and `last`; every page but the last carries a
/// `Link: <...>; rel="next"` that, followed, yields the rest in order and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_list_and_catalog_pages_follow_link_headers() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let cfg = Blob::new(b"{}".to_vec());
    let repos = ["pages/a", "pages/b", "pages/c", "pages/d", "pages/e"];
    let mut tags: Vec<String> = (0..7).map(|i| format!("v{i}")).collect();
    tags.push("latest".into());
    tags.sort();
    for repo in repos {
        assert_eq!(
            post_then_put(&http, repo, &cfg).await.status,
            StatusCode::CREATED
        );
        let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": cfg.desc(OCI_EMPTY), "layers": []}))
        .expect("json");
        for t in &tags {
            put_manifest_ok(&http, repo, t, OCI_MANIFEST, &m).await;
        }
    }
    // Tags of one repository, 3 at a time.
    let mut seen = Vec::new();
    let mut url = "/v2/pages/c/tags/list?n=3".to_string();
    let mut pages = 0;
    loop {
        let r = http.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", show(&r));
        let v = r.json();
        assert_eq!(v["name"], "pages/c");
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).expect("tags");
        assert!(page.len() <= 3, "{page:?}");
        seen.extend(page);
        pages += 1;
        match next_link(&r) {
            Some(next) => {
                assert!(next.starts_with("/v2/pages/c/tags/list?"), "{next}");
                assert!(next.contains("n=3"), "{next}");
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(seen, tags);
    assert_eq!(pages, 3);
    // `last` alone lists everything after it.
    let r = http.get("/v2/pages/c/tags/list?last=v3").await;
    assert_eq!(r.json()["tags"], json!(["v4", "v5", "v6"]));
    assert!(r.header("link").is_none());

    // The catalog, 2 at a time.
    let mut seen = Vec::new();
    let mut url = "/v2/_catalog?n=2".to_string();
    loop {
        let r = http.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", show(&r));
        let page: Vec<String> =
            serde_json::from_value(r.json()["repositories"].clone()).expect("repositories");
        assert!(page.len() <= 2);
        seen.extend(page);
        match next_link(&r) {
            Some(next) => {
                assert!(next.starts_with("/v2/_catalog?"), "{next}");
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(seen, repos);
    // A page that holds everything has no Link.
    let r = http.get("/v2/_catalog?n=5").await;
    assert!(r.header("link").is_none(), "{}", show(&r));
    assert_eq!(r.json()["repositories"], json!(repos));
}

/// HEAD on blobs and manifests over HTTP/1.1 and HTTP/2: 200, the length and digest of
/// what GET would send, and no body; HEAD of something missing is a bodiless 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_blob_and_manifest_over_h1_and_h2() {
    let srv = TestServer::start();
    for (i, http) in [Http::new(&srv.host()), Http::h2(&srv.host())]
        .into_iter()
        .enumerate()
    {
        let repo = format!("heads/r{i}");
        let blob = Blob::new(random(4097, 11 + i as u64));
        assert_eq!(
            post_then_put(&http, &repo, &blob).await.status,
            StatusCode::CREATED
        );
        let m = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": blob.desc(OCI_EMPTY), "layers": []}))
        .expect("json");
        put_manifest_ok(&http, &repo, "t", OCI_MANIFEST, &m).await;
        let mdigest = sha256(&m);
        let cases = [
            (
                format!("/v2/{repo}/blobs/{}", blob.digest),
                blob.len(),
                blob.digest.clone(),
            ),
            (format!("/v2/{repo}/manifests/t"), m.len(), mdigest.clone()),
            (
                format!("/v2/{repo}/manifests/{mdigest}"),
                m.len(),
                mdigest.clone(),
            ),
        ];
        for (path, len, digest) in cases {
            let r = head_with(&http, &path, ACCEPT_OCI).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", show(&r));
            assert!(r.body.is_empty(), "{path}: HEAD has a body");
            assert_eq!(
                r.header("content-length"),
                Some(len.to_string().as_str()),
                "{path}"
            );
            assert_eq!(
                r.header("docker-content-digest"),
                Some(digest.as_str()),
                "{path}"
            );
        }
        let missing = sha256(b"hello world");
        for path in [
            format!("/v2/{repo}/blobs/{missing}"),
            format!("/v2/{repo}/manifests/{missing}"),
            format!("/v2/{repo}/manifests/nope"),
        ] {
            let r = head_with(&http, &path, &[]).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
            assert!(r.body.is_empty());
        }
    }
}
