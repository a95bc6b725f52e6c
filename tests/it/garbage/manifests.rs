//! Bad manifests: not JSON, the wrong shape, a media type that contradicts the
//! Content-Type, references to blobs the repository does not have, a digest in the URL
//! that is not the body's, bad tags, and bodies over the size limit. Each is refused with
//! the spec's code and changes nothing: the tag still points at the old manifest, no new
//! manifest is stored, and the store stays consistent.

use super::*;
use serde_json::json;

const REPO: &str = "bad/manifests";

fn to_vec(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn desc(mt: &str, content: &[u8]) -> serde_json::Value {
    json!({"mediaType": mt, "digest": sha256(content), "size": content.len()})
}

/// `d` declaring `size` bytes.
fn sized(d: &serde_json::Value, size: u64) -> serde_json::Value {
    let mut d = d.clone();
    d["size"] = json!(size);
    d
}

/// One bad manifest PUT: a 400 with one of `codes`.
struct Case {
    what: &'static str,
    reference: String,
    ct: &'static str,
    body: Vec<u8>,
    codes: &'static [&'static str],
}

impl Case {
    fn new(
        what: &'static str,
        reference: impl Into<String>,
        ct: &'static str,
        body: Vec<u8>,
        codes: &'static [&'static str],
    ) -> Case {
        Case {
            what,
            reference: reference.into(),
            ct,
            body,
            codes,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_and_change_nothing() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let known = push_image(&http, REPO, "good", 20).await;
    // A blob that exists, but only in another repository.
    let elsewhere = bytes(500, 21);
    http.push_blob("other/repo", &elsewhere).await;
    let cfg = b"{\"seed\":20}".to_vec();
    let cfg_desc = desc("application/vnd.oci.image.config.v1+json", &cfg);
    let layer = desc(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &bytes(3000, 20),
    );
    let missing = desc(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        b"never pushed",
    );
    // Not byte-equal to the pushed "good" manifest: these must be new digests.
    let image = |config: serde_json::Value, layers: Vec<serde_json::Value>| {
        to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
            "layers": layers, "annotations": {"attempt": "bad"}}),
        )
    };
    let valid = image(cfg_desc.clone(), vec![layer.clone()]);
    let mut bad_layer = layer.clone();
    bad_layer["digest"] = json!("sha256:not-hex");

    // Every case is a 400 with one of the listed codes.
    let cases: Vec<Case> = vec![
        Case::new(
            "not JSON",
            "good",
            OCI_MANIFEST,
            b"blablabla".to_vec(),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "truncated JSON",
            "good",
            OCI_MANIFEST,
            valid[..valid.len() - 3].to_vec(),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "JSON array",
            "good",
            OCI_MANIFEST,
            b"[]".to_vec(),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "empty body",
            "good",
            OCI_MANIFEST,
            vec![],
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "media type mismatch",
            "good",
            OCI_INDEX,
            valid.clone(),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "no media type anywhere",
            "good",
            "",
            to_vec(&json!({"schemaVersion": 2, "config": cfg_desc, "layers": []})),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "schema version 1",
            "good",
            OCI_MANIFEST,
            to_vec(
                &json!({"schemaVersion": 1, "mediaType": OCI_MANIFEST, "config": cfg_desc, "layers": []}),
            ),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "image without layers field",
            "good",
            OCI_MANIFEST,
            to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg_desc})),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "index without manifests",
            "good",
            OCI_INDEX,
            to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX})),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "malformed layer digest",
            "good",
            OCI_MANIFEST,
            image(cfg_desc.clone(), vec![bad_layer]),
            &["MANIFEST_INVALID", "DIGEST_INVALID"],
        ),
        Case::new(
            "missing layer",
            "good",
            OCI_MANIFEST,
            image(cfg_desc.clone(), vec![layer.clone(), missing.clone()]),
            &["MANIFEST_BLOB_UNKNOWN"],
        ),
        Case::new(
            "missing config",
            "good",
            OCI_MANIFEST,
            image(missing.clone(), vec![layer.clone()]),
            &["MANIFEST_BLOB_UNKNOWN"],
        ),
        Case::new(
            "layer only in another repository",
            "good",
            OCI_MANIFEST,
            image(
                cfg_desc.clone(),
                vec![desc("application/octet-stream", &elsewhere)],
            ),
            &["MANIFEST_BLOB_UNKNOWN"],
        ),
        Case::new(
            "layer with a size other than the blob's",
            "good",
            OCI_MANIFEST,
            image(cfg_desc.clone(), vec![sized(&layer, 1)]),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "config with a size other than the blob's",
            "good",
            OCI_MANIFEST,
            image(sized(&cfg_desc, 4096), vec![layer.clone()]),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "index child with a size other than the manifest's",
            "good",
            OCI_INDEX,
            to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [sized(&desc(OCI_MANIFEST, &known[2].content), known[2].content.len() as u64 + 1)]})),
            &["MANIFEST_INVALID"],
        ),
        Case::new(
            "index with a missing child",
            "good",
            OCI_INDEX,
            to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": [desc(OCI_MANIFEST, b"no such manifest")]})),
            &["MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNKNOWN"],
        ),
        Case::new(
            "digest in the URL is not the body's",
            sha256(b"something else"),
            OCI_MANIFEST,
            valid.clone(),
            &["DIGEST_INVALID"],
        ),
        Case::new(
            "sha512 digest in the URL is not the body's",
            digest_of(Algorithm::Sha512, b"something else"),
            OCI_MANIFEST,
            valid.clone(),
            &["DIGEST_INVALID"],
        ),
        Case::new(
            "invalid tag",
            "-bad",
            OCI_MANIFEST,
            valid.clone(),
            &["MANIFEST_INVALID", "TAG_INVALID"],
        ),
        Case::new(
            "tag too long",
            "t".repeat(129),
            OCI_MANIFEST,
            valid.clone(),
            &["MANIFEST_INVALID", "TAG_INVALID"],
        ),
        Case::new(
            "invalid tag parameter",
            format!("{}?tag=ok&tag=.bad", sha256(&valid)),
            OCI_MANIFEST,
            valid.clone(),
            &["MANIFEST_INVALID", "TAG_INVALID"],
        ),
    ];
    for Case {
        what,
        reference,
        ct,
        body,
        codes,
    } in cases
    {
        let attempted = sha256(&body);
        let headers: Vec<(&str, &str)> = if ct.is_empty() {
            vec![]
        } else {
            vec![("content-type", ct)]
        };
        let r = http
            .send(
                Method::PUT,
                &format!("/v2/{REPO}/manifests/{reference}"),
                &headers,
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", show(&r));
        let code = r.error_code();
        assert!(codes.contains(&code.as_str()), "{what}: {code}");
        // Nothing changed.
        let r = http.get(&format!("/v2/{REPO}/manifests/{attempted}")).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{what}: the bad manifest was stored"
        );
        let r = http.get(&format!("/v2/{REPO}/tags/list")).await;
        assert_eq!(r.json()["tags"], json!(["good"]), "{what}");
        assert_still_served(&http, &known).await;
        assert_store_consistent(srv.data_dir()).await;
        if what == "invalid tag parameter" {
            assert!(
                !blob_file(srv.data_dir(), &attempted).exists(),
                "{what}: bytes stored"
            );
        }
    }
    // The valid body still goes in under its own digest.
    let r = http
        .put_manifest(REPO, &sha256(&valid), OCI_MANIFEST, &valid)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
}

/// Over `server.max_manifest_size`, a manifest is a 413 SIZE_INVALID whether it declares
/// its length or streams it chunked; at the limit it is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_over_the_size_limit_is_413() {
    let srv = TestServer::start_with(|c| c.server.max_manifest_size = 1024);
    let http = Http::new(&srv.host());
    let cfg = b"{}".to_vec();
    let c = http.push_blob("big/m", &cfg).await;
    let sized = |n: usize| {
        let mut m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": c, "size": 2},
            "layers": [], "annotations": {"pad": ""}});
        let base = to_vec(&m).len();
        m["annotations"]["pad"] = json!("p".repeat(n - base));
        let v = to_vec(&m);
        assert_eq!(v.len(), n);
        v
    };
    let at_limit = sized(1024);
    let over = sized(1025);
    let big = sized(4000);

    let r = http
        .put_manifest("big/m", "over", OCI_MANIFEST, &over)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", show(&r));
    assert_eq!(r.error_code(), "SIZE_INVALID");
    let r = http.put_manifest("big/m", "big", OCI_MANIFEST, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", show(&r));
    assert_eq!(r.error_code(), "SIZE_INVALID");

    // Chunked transfer: no length to reject up front.
    let mut req = head(
        "PUT",
        "/v2/big/m/manifests/chunked",
        &[
            ("Transfer-Encoding", "chunked".to_string()),
            ("Content-Type", OCI_MANIFEST.to_string()),
        ],
    )
    .into_bytes();
    for part in big.chunks(700) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw(&srv.host(), &req, false).await.expect("a response");
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_code().as_deref(), Some("SIZE_INVALID"));

    for (tag, body) in [("over", &over), ("big", &big), ("chunked", &big)] {
        let r = http.get(&format!("/v2/big/m/manifests/{tag}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{tag}");
        assert!(
            !blob_file(srv.data_dir(), &sha256(body)).exists(),
            "{tag} stored"
        );
    }
    let r = http
        .put_manifest("big/m", "limit", OCI_MANIFEST, &at_limit)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", show(&r));
    let r = http.get("/v2/big/m/manifests/limit").await;
    assert_eq!(r.body.as_ref(), at_limit.as_slice());
    assert_store_consistent(srv.data_dir()).await;
}
