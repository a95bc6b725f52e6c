//! Bad input gets a spec error (never a 500) and leaves the store consistent: every file
//! under `blobs/` hashes to its name, `tmp/` drains to empty, and what was pushed before
//! is still served byte for byte.
//!
//! This file: the store checks, a raw HTTP/1.1 client (for requests a well-behaved client
//! will not send: undecoded dot segments, truncated bodies, lying lengths), bad digests on
//! every digest route, bad repository names against a planted file, and writes from a
//! non-loopback peer. `uploads` and `manifests` hold the rest.

mod manifests;
mod uploads;

use crate::support::http::{image_manifest, Http, Resp};
use crate::support::server::TestServer;
use agent_registry::dispatch::Handle;
use agent_registry::oci::{Algorithm, Digest};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub fn sha256(b: &[u8]) -> String {
    Digest::sha256_of(b).to_string()
}

pub fn digest_of(alg: Algorithm, b: &[u8]) -> String {
    let mut h = alg.hasher();
    h.update(b);
    h.finish().to_string()
}

pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn show(r: &Resp) -> String {
    format!(
        "{} {:?} {}",
        r.status,
        r.headers,
        String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
    )
}

// ---------------------------------------------------------------- store checks

/// Files under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Polls until `dir` has no files (requests that broke off finish on the server's own
/// time), failing after 10 s.
pub async fn wait_empty(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = files(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never emptied: {left:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every file under `blobs/` is `<alg>/<first two hex>/<hex>` and hashes to that digest,
/// and `tmp/` is empty.
pub async fn assert_store_consistent(data: &Path) {
    let root = data.join("blobs");
    for f in files(&root) {
        let rel: Vec<String> = f
            .strip_prefix(&root)
            .expect("under blobs")
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel.len(), 3, "unexpected blob path {}", f.display());
        let alg = match rel[0].as_str() {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => panic!("unknown algorithm directory {other}"),
        };
        assert_eq!(&rel[2][..2], rel[1], "{}", f.display());
        let content = std::fs::read(&f).expect("read blob");
        assert_eq!(
            digest_of(alg, &content),
            format!("{}:{}", rel[0], rel[2]),
            "{} does not hash to its name",
            f.display()
        );
    }
    wait_empty(&data.join("tmp")).await;
}

/// The committed file of a digest, if any.
pub fn blob_file(data: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    data.join("blobs").join(alg).join(&hex[..2]).join(hex)
}

/// Something pushed before the bad requests, which must still be served as it was.
pub struct Known {
    pub path: String,
    pub content: Vec<u8>,
}

impl Known {
    pub fn blob(repo: &str, content: &[u8]) -> Known {
        Known {
            path: format!("/v2/{repo}/blobs/{}", sha256(content)),
            content: content.to_vec(),
        }
    }

    pub fn manifest(repo: &str, reference: &str, content: &[u8]) -> Known {
        Known {
            path: format!("/v2/{repo}/manifests/{reference}"),
            content: content.to_vec(),
        }
    }
}

pub async fn assert_still_served(http: &Http, known: &[Known]) {
    for k in known {
        let r = http.get(&k.path).await;
        assert_eq!(r.status, StatusCode::OK, "{}: {}", k.path, show(&r));
        assert_eq!(r.body.as_ref(), k.content.as_slice(), "{}", k.path);
    }
}

/// Pushes a small image (config + one layer + manifest tagged `tag`) and returns what
/// must stay served.
pub async fn push_image(http: &Http, repo: &str, tag: &str, seed: u8) -> Vec<Known> {
    let cfg = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = bytes(3000, seed);
    let c = http.push_blob(repo, &cfg).await;
    let l = http.push_blob(repo, &layer).await;
    let m = image_manifest((&c, cfg.len()), &[(&l, layer.len())], None);
    let r = http.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    vec![
        Known::blob(repo, &cfg),
        Known::blob(repo, &layer),
        Known::manifest(repo, tag, &m),
        Known::manifest(repo, &sha256(&m), &m),
    ]
}

// ---------------------------------------------------------------- raw HTTP/1.1

/// A response read off a raw connection.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }
}

/// A request head with `Host`, `Connection: close` and the given headers.
pub fn head(method: &str, target: &str, headers: &[(&str, String)]) -> String {
    let mut h = format!("{method} {target} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

fn parse(buf: &[u8]) -> Option<Raw> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(Raw {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Sends `request` (head and body as given, however wrong) and, with `close_write`, shuts
/// the write side as a client that died would; then reads until the server closes. The
/// response is None when the server closed without one.
pub async fn raw(addr: &str, request: &[u8], close_write: bool) -> Option<Raw> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    if close_write {
        s.shutdown().await.expect("shutdown");
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("server kept the connection open")
        .ok()?;
    parse(&buf)
}

/// A whole request with a correct Content-Length.
pub async fn raw_request(addr: &str, method: &str, target: &str, body: &[u8]) -> Raw {
    let mut req = head(
        method,
        target,
        &[("Content-Length", body.len().to_string())],
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req, false).await.expect("a response")
}

// ---------------------------------------------------------------- digests

const DIGEST_ROUTE_OK: &[u16] = &[400, 404];

/// Digests that must never be accepted: malformed, unknown algorithm, uppercase hex,
/// wrong length, path tricks.
fn bad_digests() -> Vec<String> {
    let h = |n: usize| "a".repeat(n);
    vec![
        format!("sha256:{}", h(63)),
        format!("sha256:{}", h(65)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha256:{}", "aB".repeat(32)),
        format!("sha512:{}", h(64)),
        format!("sha256:{}", h(128)),
        format!("md5:{}", h(32)),
        format!("sha384:{}", h(96)),
        format!("SHA256:{}", h(64)),
        format!("sha256:{}", "z".repeat(64)),
        "sha256:".to_string(),
        format!(":{}", h(64)),
        "sha256:%2e%2e%2f%2e%2e%2fsecret".to_string(),
        format!("sha256:{}%00", h(64)),
        format!("sha256::{}", h(64)),
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564".to_string(),
    ]
}

/// Every route that takes a digest, with every bad digest: 400 DIGEST_INVALID or 404,
/// never a 500, nothing stored, and the session used for the PUT still usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_digests_on_every_digest_route() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let known = push_image(&http, "g/r", "v1", 1).await;
    let session = {
        let r = http
            .send(Method::POST, "/v2/g/r/blobs/uploads/", &[], Bytes::new())
            .await;
        r.header("location").expect("Location").to_string()
    };
    let body = bytes(100, 9);
    let manifest = image_manifest((&sha256(b"{}"), 2), &[], None);
    for d in bad_digests() {
        let cases: Vec<(Method, String, Vec<u8>, &[u16])> = vec![
            (
                Method::GET,
                format!("/v2/g/r/blobs/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::HEAD,
                format!("/v2/g/r/blobs/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::DELETE,
                format!("/v2/g/r/blobs/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::GET,
                format!("/v2/g/r/manifests/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::HEAD,
                format!("/v2/g/r/manifests/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::DELETE,
                format!("/v2/g/r/manifests/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::PUT,
                format!("/v2/g/r/manifests/{d}"),
                manifest.clone(),
                DIGEST_ROUTE_OK,
            ),
            (
                Method::GET,
                format!("/v2/g/r/referrers/{d}"),
                vec![],
                DIGEST_ROUTE_OK,
            ),
            (
                Method::POST,
                format!("/v2/g/r/blobs/uploads/?digest={d}"),
                body.clone(),
                DIGEST_ROUTE_OK,
            ),
            (
                Method::PUT,
                format!("{session}?digest={d}"),
                body.clone(),
                DIGEST_ROUTE_OK,
            ),
            // A mount is a hint: a bad one may fall back to a new session.
            (
                Method::POST,
                format!("/v2/g/r/blobs/uploads/?mount={d}&from=g/r"),
                vec![],
                &[202, 400, 404],
            ),
        ];
        for (method, path, body, allowed) in cases {
            let what = format!("{method} {path}");
            let ct = if path.contains("/manifests/") {
                OCI_MANIFEST
            } else {
                "application/octet-stream"
            };
            let r = http
                .send(method.clone(), &path, &[("content-type", ct)], body)
                .await;
            assert!(allowed.contains(&r.status.as_u16()), "{what}: {}", show(&r));
            if r.status == StatusCode::BAD_REQUEST && method != Method::HEAD {
                assert_eq!(r.error_code(), "DIGEST_INVALID", "{what}");
            }
            if r.status == StatusCode::NOT_FOUND && method != Method::HEAD {
                let code = r.error_code();
                assert!(
                    [
                        "BLOB_UNKNOWN",
                        "MANIFEST_UNKNOWN",
                        "BLOB_UPLOAD_UNKNOWN",
                        "UNSUPPORTED",
                        "NAME_UNKNOWN"
                    ]
                    .contains(&code.as_str()),
                    "{what}: {code}"
                );
            }
        }
        assert_store_consistent(srv.data_dir()).await;
    }
    // The same digests in a manifest body are the manifest's fault.
    for d in bad_digests().into_iter().filter(|d| !d.contains('%')) {
        let m = image_manifest((&d, 2), &[], None);
        let r = http.put_manifest("g/r", "bad", OCI_MANIFEST, &m).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{d}: {}", show(&r));
        assert!(["MANIFEST_INVALID", "DIGEST_INVALID"].contains(&r.error_code().as_str()));
    }
    // The session the bad PUTs were aimed at still finishes.
    let r = http
        .send(
            Method::PUT,
            &format!("{session}?digest={}", sha256(&body)),
            &[],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    assert_still_served(&http, &known).await;
    assert_store_consistent(srv.data_dir()).await;
}

// ---------------------------------------------------------------- repository names

/// Names that break the grammar, several of them aimed at the parent of the data
/// directory, where a file and a content-addressed copy of it are planted.
fn bad_names() -> Vec<String> {
    vec![
        "UPPER".into(),
        "library/Alpine".into(),
        "..".into(),
        "../..".into(),
        "a/..".into(),
        "a/../..".into(),
        "../data".into(),
        "%2e%2e".into(),
        "a/%2e%2e/%2e%2e".into(),
        "%2e%2e%2fsecret".into(),
        "a%2f..%2f..".into(),
        "%2f".into(),
        "a%2fb".into(),
        "a//b".into(),
        "/a".into(),
        "//a".into(),
        "a/".into(),
        "./a".into(),
        "a/./b".into(),
        "-a".into(),
        "a_.b".into(),
        "a%00b".into(),
        "a".repeat(256),
        format!("{}/{}", "a".repeat(128), "b".repeat(127)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_repository_names_never_reach_outside_the_data_dir() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let known = push_image(&http, "ok/repo", "v1", 2).await;
    let root = srv.root();
    assert_eq!(
        srv.data_dir().parent(),
        Some(root.as_path()),
        "data dir layout"
    );
    // The trap: a secret next to the data dir, and the same bytes laid out as a blob one
    // level above `blobs/`, where a traversal off by one directory would find it.
    let secret = b"TOP SECRET: outside the data dir".to_vec();
    let secret_digest = sha256(&secret);
    std::fs::write(root.join("secret"), &secret).expect("plant");
    let trap = blob_file(&root, &secret_digest);
    std::fs::create_dir_all(trap.parent().expect("parent")).expect("mkdir");
    std::fs::write(&trap, &secret).expect("plant blob");
    let before: Vec<PathBuf> = files(&root)
        .into_iter()
        .filter(|p| !p.starts_with(srv.data_dir()))
        .collect();
    let manifest = image_manifest((&secret_digest, secret.len()), &[], None);
    let addr = srv.host();
    for name in bad_names() {
        let cases: Vec<(&str, String, Vec<u8>)> = vec![
            ("GET", format!("/v2/{name}/tags/list"), vec![]),
            ("GET", format!("/v2/{name}/manifests/latest"), vec![]),
            ("HEAD", format!("/v2/{name}/manifests/latest"), vec![]),
            (
                "PUT",
                format!("/v2/{name}/manifests/latest"),
                manifest.clone(),
            ),
            ("DELETE", format!("/v2/{name}/manifests/latest"), vec![]),
            ("GET", format!("/v2/{name}/blobs/{secret_digest}"), vec![]),
            ("HEAD", format!("/v2/{name}/blobs/{secret_digest}"), vec![]),
            (
                "DELETE",
                format!("/v2/{name}/blobs/{secret_digest}"),
                vec![],
            ),
            (
                "GET",
                format!("/v2/{name}/referrers/{secret_digest}"),
                vec![],
            ),
            ("POST", format!("/v2/{name}/blobs/uploads/"), vec![]),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={secret_digest}"),
                secret.clone(),
            ),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?mount={secret_digest}&from=ok/repo"),
                vec![],
            ),
            (
                "GET",
                format!("/v2/{name}/blobs/uploads/{}", uuid::Uuid::new_v4()),
                vec![],
            ),
        ];
        for (method, target, body) in cases {
            let r = raw_request(&addr, method, &target, &body).await;
            let what = format!("{method} {target}");
            assert!([400, 404].contains(&r.status), "{what}: {r:?}");
            if method != "HEAD" {
                let code = r.error_code();
                let ok = ["NAME_INVALID", "NAME_UNKNOWN", "UNSUPPORTED"];
                assert!(
                    code.as_deref().is_some_and(|c| ok.contains(&c)),
                    "{what}: {r:?}"
                );
                if r.status == 400 {
                    assert_eq!(code.as_deref(), Some("NAME_INVALID"), "{what}");
                }
            }
            assert!(
                !r.body.windows(10).any(|w| w == b"TOP SECRET"),
                "{what} leaked the planted file"
            );
        }
        assert_store_consistent(srv.data_dir()).await;
    }
    let after: Vec<PathBuf> = files(&root)
        .into_iter()
        .filter(|p| !p.starts_with(srv.data_dir()))
        .collect();
    assert_eq!(before, after, "files appeared next to the data dir");
    assert_eq!(std::fs::read(root.join("secret")).expect("secret"), secret);
    assert_eq!(std::fs::read(&trap).expect("trap"), secret);
    assert!(
        !blob_file(srv.data_dir(), &secret_digest).exists(),
        "secret stored"
    );
    assert_still_served(&http, &known).await;
    assert_store_consistent(srv.data_dir()).await;
    // No bad name made it into the metadata either.
    let r = http.get("/v2/_catalog").await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["ok/repo"]));
}

// ---------------------------------------------------------------- non-loopback writes

async fn handle(
    srv: &TestServer,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", OCI_MANIFEST)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    // Handled in process: no traffic goes to this address.
    let peer = "10.0.0.1:1234".parse().expect("addr");
    let resp = srv.app.handle(req, peer).await;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Until access control exists, writes are for loopback clients only: every write from
/// another peer is a 401 with an OCI error body and changes nothing; pulls still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_from_a_non_loopback_peer_are_unauthorized_and_pulls_work() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let known = push_image(&http, "team/app", "v1", 3).await;
    let session = http
        .send(
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await
        .header("location")
        .expect("Location")
        .to_string();
    let blob = bytes(64, 4);
    let d = sha256(&blob);
    let manifest = known[2].content.clone();
    let layer = known[1].path.clone();
    let writes = [
        (
            Method::POST,
            "/v2/team/app/blobs/uploads/".to_string(),
            vec![],
        ),
        (
            Method::POST,
            format!("/v2/team/app/blobs/uploads/?digest={d}"),
            blob.clone(),
        ),
        (
            Method::POST,
            format!(
                "/v2/other/app/blobs/uploads/?mount={}&from=team/app",
                sha256(&known[1].content)
            ),
            vec![],
        ),
        (Method::PATCH, session.clone(), blob.clone()),
        (Method::PUT, format!("{session}?digest={d}"), blob.clone()),
        (Method::DELETE, session.clone(), vec![]),
        (
            Method::PUT,
            "/v2/team/app/manifests/v2".to_string(),
            manifest.clone(),
        ),
        (
            Method::DELETE,
            "/v2/team/app/manifests/v1".to_string(),
            vec![],
        ),
        (
            Method::DELETE,
            format!("/v2/team/app/manifests/{}", sha256(&manifest)),
            vec![],
        ),
        (Method::DELETE, layer.clone(), vec![]),
    ];
    for (method, path, body) in writes {
        let (status, headers, body) = handle(&srv, method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("OCI error body");
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{method} {path}");
        assert!(v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(headers.contains_key("www-authenticate"), "{method} {path}");
    }
    // Reads from the same peer are served.
    for k in &known {
        let (status, _, body) = handle(&srv, Method::GET, &k.path, vec![]).await;
        assert_eq!(status, StatusCode::OK, "GET {}", k.path);
        assert_eq!(body.as_ref(), k.content.as_slice());
        let (status, headers, body) = handle(&srv, Method::HEAD, &k.path, vec![]).await;
        assert_eq!(status, StatusCode::OK, "HEAD {}", k.path);
        assert!(body.is_empty());
        assert!(headers.contains_key("docker-content-digest"));
    }
    for path in ["/v2/", "/v2/team/app/tags/list", "/v2/_catalog"] {
        let (status, _, _) = handle(&srv, Method::GET, path, vec![]).await;
        assert_eq!(status, StatusCode::OK, "GET {path}");
    }
    // Nothing changed: the session is untouched, the tag and blobs are still there.
    let r = http.get(&session).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range"), Some("0-0"));
    assert_eq!(
        http.head(&format!("/v2/team/app/blobs/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.get("/v2/other/app/tags/list").await.status,
        StatusCode::NOT_FOUND
    );
    let r = http.get("/v2/team/app/tags/list").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["v1"]));
    assert_still_served(&http, &known).await;
    assert_store_consistent(srv.data_dir()).await;
}
