//! The v1.1 suite's data sets: content generated the way the suite generates it (images,
//! indexes, nested and empty indexes, artifacts, subjects present and missing, descriptor
//! `data`, non-distributable layers, unknown fields, no layers, large manifests, sha512,
//! tag parameters), then pushed, listed, HEAD and GET by tag and digest, queried through
//! the referrers API with and without an artifactType filter, and deleted.

use super::blobs::{assert_blob, assert_deleted, assert_pushed, push, Push, CHUNKED};
use super::*;
use agent_registry::oci::Algorithm;
use serde_json::Map;

const REPO: &str = "conformance/repo1";
const CONF1: &str = "application/vnd.example.oci.conformance.v1";
const CONF2: &str = "application/vnd.example.oci.conformance.v2";

/// Options of one generated manifest (the suite's `genWith...` options).
#[derive(Clone, Default)]
struct Gen {
    alg: Option<Algorithm>,
    artifact_type: Option<&'static str>,
    annotations: Option<Map<String, Value>>,
    unique_annotation: bool,
    subject: Option<Value>,
    tag: Option<&'static str>,
    layers: Option<usize>,
    layer_media_type: Option<&'static str>,
    layer_bytes: Option<Vec<u8>>,
    config_media_type: Option<&'static str>,
    config_bytes: Option<Vec<u8>>,
    data_field: bool,
    extra_field: bool,
    uncompressed: bool,
    platform: Option<Value>,
}

/// An artifact of `CONF1` with one layer, an empty JSON config, an annotation and a
/// random unique annotation (the suite's artifact options).
fn conf1_artifact() -> Gen {
    Gen {
        artifact_type: Some(CONF1),
        annotations: Some(note()),
        unique_annotation: true,
        config_media_type: Some(OCI_EMPTY),
        config_bytes: Some(b"{}".to_vec()),
        layers: Some(1),
        layer_media_type: Some(CONF1),
        ..Gen::default()
    }
}

/// The same artifact without annotations, tagged.
fn plain_artifact(tag: &'static str) -> Gen {
    Gen {
        tag: Some(tag),
        annotations: None,
        unique_annotation: false,
        ..conf1_artifact()
    }
}

fn note() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "org.opencontainers.conformance".into(),
        json!("hello conformance test"),
    );
    m
}

fn platform(arch: &str) -> Value {
    json!({"os": "linux", "architecture": arch})
}

/// Generated content and what the registry must answer about it.
struct Data {
    seed: u64,
    blobs: Vec<Blob>,
    /// In push order (children first), with their media type.
    manifests: Vec<(Blob, &'static str)>,
    tags: Vec<(String, String)>,
    /// subject digest -> expected referrer descriptors
    referrers: Vec<(String, Value)>,
    /// Push tags as `?tag=` on the digest push and expect OCI-Tag back.
    tag_param: bool,
}

impl Data {
    fn new(seed: u64) -> Data {
        Data {
            seed,
            blobs: Vec::new(),
            manifests: Vec::new(),
            tags: Vec::new(),
            referrers: Vec::new(),
            tag_param: false,
        }
    }

    fn next_random(&mut self, len: usize) -> Vec<u8> {
        self.seed += 1;
        random(len, self.seed)
    }

    fn text(&mut self) -> String {
        hex::encode(self.next_random(8))
    }

    fn add_blob(&mut self, g: &Gen, content: Vec<u8>, media_type: &str) -> Value {
        let b = Blob::with(g.alg.unwrap_or(Algorithm::Sha256), content);
        let mut d = b.desc(media_type);
        if g.data_field {
            d["data"] = json!(base64(&b.content));
        }
        if !self.blobs.iter().any(|x| x.digest == b.digest) {
            self.blobs.push(b);
        }
        d
    }

    fn layer(&mut self, g: &Gen, n: usize) -> Value {
        let mut content = format!("conformance layer {n}\n").into_bytes();
        content.extend(self.next_random(700));
        let mt = if g.uncompressed {
            OCI_LAYER
        } else {
            OCI_LAYER_GZ
        };
        self.add_blob(g, content, mt)
    }

    fn config(&mut self, g: &Gen, layers: &[Value]) -> Value {
        let p = g.platform.clone().unwrap_or_else(|| platform("amd64"));
        let mut c = json!({"author": "OCI Conformance Test", "architecture": p["architecture"],
            "os": p["os"], "rootfs": {"type": "layers",
            "diff_ids": layers.iter().map(|l| l["digest"].clone()).collect::<Vec<_>>()}});
        if g.extra_field {
            c[format!("x-{}", self.text())] = json!(self.text());
        }
        self.add_blob(g, serde_json::to_vec(&c).expect("json"), OCI_CONFIG)
    }

    /// Records a pushed manifest: its digest, a referrer entry, a tag.
    fn add_manifest(
        &mut self,
        g: &Gen,
        m: &Value,
        media_type: &'static str,
        at: Option<String>,
    ) -> Value {
        let body = serde_json::to_vec(m).expect("json");
        let b = Blob::with(g.alg.unwrap_or(Algorithm::Sha256), body);
        let mut d = b.desc(media_type);
        if g.data_field {
            d["data"] = json!(base64(&b.content));
        }
        if let Some(s) = &g.subject {
            let mut r = b.desc(media_type);
            if let Some(at) = at {
                r["artifactType"] = json!(at);
            }
            if let Some(a) = m.get("annotations") {
                r["annotations"] = a.clone();
            }
            let subject = s["digest"].as_str().expect("subject digest").to_string();
            self.referrers.push((subject, r));
        }
        if let Some(t) = g.tag {
            self.tags.retain(|(k, _)| k != t);
            self.tags.push((t.to_string(), b.digest.clone()));
        }
        self.manifests.push((b, media_type));
        d
    }

    fn annotate(&mut self, g: &Gen, m: &mut Value) {
        let mut notes = g.annotations.clone();
        if g.unique_annotation {
            let key = format!("org.example.{}", self.text());
            let value = self.text();
            notes.get_or_insert_with(Map::new).insert(key, json!(value));
        }
        if let Some(n) = notes {
            m["annotations"] = Value::Object(n);
        }
        if let Some(s) = &g.subject {
            m["subject"] = s.clone();
        }
        if let Some(at) = g.artifact_type {
            m["artifactType"] = json!(at);
        }
        if g.extra_field {
            m[format!("x-{}", self.text())] = json!({"unknown": self.text()});
        }
    }

    fn manifest(&mut self, g: &Gen, config: Value, layers: Vec<Value>) -> Value {
        let at = g
            .artifact_type
            .map(str::to_string)
            .or_else(|| config["mediaType"].as_str().map(str::to_string));
        let mut m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config, "layers": layers});
        self.annotate(g, &mut m);
        self.add_manifest(g, &m, OCI_MANIFEST, at)
    }

    /// An image (or artifact) with its layers and config.
    fn image(&mut self, g: &Gen) -> Value {
        let mut layers = Vec::new();
        for n in 0..g.layers.unwrap_or(2) {
            let layer = match (g.layer_media_type, &g.layer_bytes) {
                (None, _) => self.layer(g, n),
                (Some(mt), _) if mt.starts_with("application/vnd.oci.image.layer.v1.") => {
                    self.layer(g, n)
                }
                (Some(mt), Some(bytes)) => self.add_blob(g, bytes.clone(), mt),
                (Some(mt), None) => {
                    let content = self.next_random(2048);
                    self.add_blob(g, content, mt)
                }
            };
            layers.push(layer);
        }
        let config = match g.config_media_type {
            None | Some(OCI_CONFIG) => self.config(g, &layers),
            Some(mt) => {
                let bytes = g.config_bytes.clone().unwrap_or_default();
                self.add_blob(g, bytes, mt)
            }
        };
        self.manifest(g, config, layers)
    }

    fn index(&mut self, g: &Gen, children: Vec<(Value, Option<Value>)>) -> Value {
        let manifests: Vec<Value> = children
            .into_iter()
            .map(|(mut d, p)| {
                if let Some(p) = p {
                    d["platform"] = p;
                }
                d
            })
            .collect();
        let mut m = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        self.annotate(g, &mut m);
        let at = g.artifact_type.map(str::to_string);
        self.add_manifest(g, &m, OCI_INDEX, at)
    }

    /// An index over one image per platform; the images get the same options, but the
    /// tag ends on the index (as in the suite, where the index overwrites it).
    fn image_index(&mut self, g: &Gen, platforms: &[&str]) -> Value {
        let mut children = Vec::new();
        for arch in platforms {
            let child = Gen {
                platform: Some(platform(arch)),
                tag: None,
                ..g.clone()
            };
            children.push((self.image(&child), Some(platform(arch))));
        }
        self.index(g, children)
    }

    fn tags_of(&self, digest: &str) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|(_, d)| d == digest)
            .map(|(t, _)| t.as_str())
            .collect()
    }

    /// Push, list, HEAD, GET, referrers, delete: the suite's run over one data set.
    async fn run(&self, http: &Http) {
        // push: blobs through every flavour in turn, manifests by digest, then tags
        let flavours = [Push::PostOnly, Push::PostPut, CHUNKED, Push::Stream];
        for (i, b) in self.blobs.iter().enumerate() {
            let r = push(http, REPO, b, flavours[i % flavours.len()]).await;
            assert_pushed(http, &r, b, "data blob").await;
        }
        for (m, mt) in &self.manifests {
            let mut path = format!("/v2/{REPO}/manifests/{}", m.digest);
            let tags = if self.tag_param {
                self.tags_of(&m.digest)
            } else {
                Vec::new()
            };
            for t in &tags {
                path = with_query(&path, "tag", t);
            }
            let r = http
                .send(
                    Method::PUT,
                    &path,
                    &[("content-type", mt)],
                    m.content.clone(),
                )
                .await;
            self.assert_manifest_put(http, &r, m, mt).await;
            let applied: Vec<&str> = r
                .headers
                .get_all("oci-tag")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            for t in tags {
                assert!(applied.contains(&t), "OCI-Tag lacks {t}: {}", show(&r));
            }
        }
        if !self.tag_param {
            for (tag, digest) in &self.tags {
                let (m, mt) = self.find(digest);
                let r = http.put_manifest(REPO, tag, mt, &m.content).await;
                self.assert_manifest_put(http, &r, m, mt).await;
            }
        }
        self.check_tag_list(http).await;
        // HEAD and GET
        for (tag, digest) in &self.tags {
            self.assert_manifest(http, tag, digest).await;
        }
        for (m, _) in &self.manifests {
            self.assert_manifest(http, &m.digest, &m.digest).await;
        }
        for b in &self.blobs {
            assert_blob(http, REPO, b).await;
        }
        self.check_referrers(http).await;
        // delete: tags, manifests last to first, blobs; each gone at once
        for (tag, _) in &self.tags {
            let path = format!("/v2/{REPO}/manifests/{tag}");
            let r = delete(http, &path).await;
            assert_eq!(
                r.status,
                StatusCode::ACCEPTED,
                "delete tag {tag}: {}",
                show(&r)
            );
            let r = head_with(http, &path, ACCEPT_OCI).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "tag {tag} after delete");
        }
        for (m, _) in self.manifests.iter().rev() {
            let path = format!("/v2/{REPO}/manifests/{}", m.digest);
            let r = delete(http, &path).await;
            assert_eq!(
                r.status,
                StatusCode::ACCEPTED,
                "delete manifest: {}",
                show(&r)
            );
            let r = head_with(http, &path, ACCEPT_OCI).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "manifest after delete");
        }
        for b in &self.blobs {
            assert_deleted(http, REPO, &b.digest).await;
        }
    }

    fn find(&self, digest: &str) -> &(Blob, &'static str) {
        self.manifests
            .iter()
            .find(|(m, _)| m.digest == digest)
            .expect("tagged manifest")
    }

    fn subject_of(m: &Blob) -> Option<String> {
        let v: Value = serde_json::from_slice(&m.content).expect("manifest json");
        v["subject"]["digest"].as_str().map(str::to_string)
    }

    async fn assert_manifest_put(&self, http: &Http, r: &Resp, m: &Blob, mt: &str) {
        assert_eq!(r.status, StatusCode::CREATED, "PUT manifest: {}", show(r));
        assert_eq!(r.header("docker-content-digest"), Some(m.digest.as_str()));
        if let Some(s) = Self::subject_of(m) {
            assert_eq!(r.header("oci-subject"), Some(s.as_str()), "{}", show(r));
        }
        let got = get_with(http, &location(r), ACCEPT_OCI).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "manifest Location: {}",
            show(&got)
        );
        assert_eq!(got.header("content-type"), Some(mt));
        assert_eq!(
            got.header("content-length"),
            Some(m.len().to_string().as_str())
        );
        assert_eq!(
            got.body.as_ref(),
            m.content.as_slice(),
            "manifest Location bytes"
        );
    }

    async fn assert_manifest(&self, http: &Http, reference: &str, digest: &str) {
        let (m, mt) = self.find(digest);
        let path = format!("/v2/{REPO}/manifests/{reference}");
        let len = m.len().to_string();
        let h = head_with(http, &path, ACCEPT_OCI).await;
        assert_eq!(h.status, StatusCode::OK, "HEAD {reference}: {}", show(&h));
        assert!(h.body.is_empty());
        assert_eq!(h.header("content-type"), Some(*mt), "HEAD {reference}");
        assert_eq!(
            h.header("content-length"),
            Some(len.as_str()),
            "HEAD {reference}"
        );
        assert_eq!(h.header("docker-content-digest"), Some(digest));
        let g = get_with(http, &path, ACCEPT_OCI).await;
        assert_eq!(g.status, StatusCode::OK, "GET {reference}");
        assert_eq!(g.header("content-type"), Some(*mt), "GET {reference}");
        assert_eq!(
            g.header("content-length"),
            Some(len.as_str()),
            "GET {reference}"
        );
        assert_eq!(g.header("docker-content-digest"), Some(digest));
        assert_eq!(g.body.as_ref(), m.content.as_slice(), "GET {reference}");
    }

    async fn check_referrers(&self, http: &Http) {
        let mut subjects: Vec<&String> = self.referrers.iter().map(|(s, _)| s).collect();
        subjects.sort();
        subjects.dedup();
        for subject in subjects {
            let goals: Vec<&Value> = self
                .referrers
                .iter()
                .filter(|(s, _)| s == subject)
                .map(|(_, g)| g)
                .collect();
            let path = format!("/v2/{REPO}/referrers/{subject}");
            let list = referrers(http, &path).await;
            for goal in &goals {
                assert!(
                    list.iter().any(|d| same(d, goal)),
                    "{goal} missing from {list:?}"
                );
            }
            let mut types: Vec<&str> = goals
                .iter()
                .map(|g| g["artifactType"].as_str().unwrap_or(""))
                .collect();
            types.sort();
            types.dedup();
            for at in types {
                let url = with_query(&path, "artifactType", at);
                let r = http.get(&url).await;
                let filters = r.header("oci-filters-applied").unwrap_or("").to_string();
                assert!(
                    filters.split(',').any(|f| f.trim() == "artifactType"),
                    "OCI-Filters-Applied: {}",
                    show(&r)
                );
                let list = referrers(http, &url).await;
                for d in &list {
                    assert_eq!(
                        d["artifactType"].as_str().unwrap_or(""),
                        at,
                        "filter {at}: {d}"
                    );
                }
                for goal in goals
                    .iter()
                    .filter(|g| g["artifactType"].as_str().unwrap_or("") == at)
                {
                    assert!(
                        list.iter().any(|d| same(d, goal)),
                        "{goal} missing, filter {at}"
                    );
                }
            }
        }
    }
}

impl Data {
    /// Every tag listed, and `last` cuts the sorted list in two.
    async fn check_tag_list(&self, http: &Http) {
        let r = http.get(&format!("/v2/{REPO}/tags/list")).await;
        if self.tags.is_empty() {
            assert!([200, 404].contains(&r.status.as_u16()), "{}", show(&r));
            return;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", show(&r));
        let listed: Vec<String> = serde_json::from_value(r.json()["tags"].clone()).expect("tags");
        for (t, _) in &self.tags {
            assert!(listed.contains(t), "tag {t} not listed in {listed:?}");
        }
        if listed.len() >= 2 {
            let mut sorted = listed.clone();
            sorted.sort();
            let end = sorted.len() / 2;
            let last = &sorted[end - 1];
            let r = http
                .get(&with_query(&format!("/v2/{REPO}/tags/list"), "last", last))
                .await;
            let part: Vec<String> = serde_json::from_value(r.json()["tags"].clone()).expect("tags");
            assert_eq!(part, sorted[end..].to_vec(), "tags after {last}");
        }
    }
}

async fn referrers(http: &Http, url: &str) -> Vec<Value> {
    let r = http.get(url).await;
    assert_eq!(r.status, StatusCode::OK, "{url}: {}", show(&r));
    assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{url}");
    let v = r.json();
    assert_eq!(v["mediaType"], OCI_INDEX);
    assert_eq!(v["schemaVersion"], 2);
    v["manifests"].as_array().cloned().expect("manifests")
}

/// Same digest, media type, size and artifact type, and every goal annotation present.
fn same(d: &Value, goal: &Value) -> bool {
    let at = |v: &Value| v["artifactType"].as_str().unwrap_or("").to_string();
    let notes_ok = match goal["annotations"].as_object() {
        None => true,
        Some(want) => want.iter().all(|(k, v)| d["annotations"][k] == *v),
    };
    d["digest"] == goal["digest"]
        && d["mediaType"] == goal["mediaType"]
        && d["size"] == goal["size"]
        && at(d) == at(goal)
        && notes_ok
}

async fn run(data: Data) {
    let srv = TestServer::start();
    data.run(&Http::new(&srv.host())).await;
}

fn tagged(tag: &'static str) -> Gen {
    Gen {
        tag: Some(tag),
        ..Gen::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_image() {
    let mut d = Data::new(100);
    d.image(&tagged("image"));
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_image_uncompressed() {
    let mut d = Data::new(200);
    d.image(&Gen {
        uncompressed: true,
        ..tagged("image-uncompressed")
    });
    run(d).await;
}

/// 390 annotations of 10000 bytes: a manifest of almost 4 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_large_manifest() {
    let mut d = Data::new(300);
    let mut notes = Map::new();
    for i in 0..390 {
        notes.insert(format!("large-annotation-{i}"), json!("A".repeat(10000)));
    }
    d.image(&Gen {
        annotations: Some(notes),
        ..tagged("large-manifest")
    });
    assert!(d.manifests[0].0.len() > 3_900_000);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_index() {
    let mut d = Data::new(400);
    d.image_index(&tagged("index"), &["amd64", "arm64"]);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nested_index() {
    let mut d = Data::new(500);
    let a = d.image_index(&Gen::default(), &["amd64", "arm64"]);
    let b = d.image_index(&Gen::default(), &["amd64", "arm64"]);
    d.index(&tagged("index-of-index"), vec![(a, None), (b, None)]);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_empty_index() {
    let mut d = Data::new(600);
    d.image_index(&tagged("index"), &[]);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_artifact() {
    let mut d = Data::new(700);
    d.image(&plain_artifact("artifact"));
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_artifact_index() {
    let mut d = Data::new(800);
    d.image_index(&plain_artifact("artifact-index"), &["amd64", "arm64"]);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_artifact_without_layers() {
    let mut d = Data::new(900);
    d.image(&Gen {
        tag: Some("artifact-without-layers"),
        artifact_type: Some(CONF1),
        config_media_type: Some(OCI_EMPTY),
        config_bytes: Some(b"{}".to_vec()),
        layers: Some(1),
        layer_bytes: Some(b"{}".to_vec()),
        layer_media_type: Some(OCI_EMPTY),
        ..Gen::default()
    });
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_artifacts_with_subject() {
    let mut d = Data::new(1000);
    let subject = d.image(&tagged("image"));
    d.image(&Gen {
        subject: Some(subject.clone()),
        ..Gen::default()
    });
    d.image(&Gen {
        subject: Some(subject.clone()),
        tag: Some("tagged-artifact1"),
        ..conf1_artifact()
    });
    d.image(&Gen {
        subject: Some(subject),
        tag: Some("tagged-artifact2"),
        artifact_type: Some(CONF2),
        layer_media_type: Some(OCTET),
        ..conf1_artifact()
    });
    assert_eq!(d.referrers.len(), 3);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_index_with_subject() {
    let mut d = Data::new(1100);
    let subject = d.image_index(&tagged("index"), &["amd64", "arm64"]);
    let g = Gen {
        subject: Some(subject),
        tag: Some("tagged-artifact"),
        ..conf1_artifact()
    };
    d.image_index(&g, &["amd64", "arm64"]);
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_missing_subject() {
    let mut d = Data::new(1200);
    let subject = json!({"mediaType": OCI_MANIFEST, "size": 123,
        "digest": sha256(b"missing content")});
    d.image(&Gen {
        subject: Some(subject),
        tag: Some("tagged-artifact"),
        ..conf1_artifact()
    });
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_descriptor_data_field() {
    let mut d = Data::new(1300);
    d.image(&Gen {
        data_field: true,
        ..tagged("data-field")
    });
    run(d).await;
}

/// Two layers carry `urls` and are never pushed: the registry must not ask for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_non_distributable_layers() {
    let mut d = Data::new(1400);
    let g = tagged("non-distributable-image");
    let mut layers = Vec::new();
    for (mt, size) in [
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            123456,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            12345,
        ),
    ] {
        let digest = sha256(&d.next_random(256));
        let hex = digest.trim_start_matches("sha256:").to_string();
        layers.push(json!({"mediaType": mt, "digest": digest, "size": size,
            "urls": [format!("https://store.example.com/blobs/sha256/{hex}")]}));
    }
    layers.push(d.layer(&g, 2));
    let config = d.config(&g, &layers);
    d.manifest(&g, config, layers);
    assert_eq!(
        d.blobs.len(),
        2,
        "only the config and the normal layer are pushed"
    );
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_custom_fields() {
    let mut d = Data::new(1500);
    d.image_index(
        &Gen {
            extra_field: true,
            ..tagged("custom-fields")
        },
        &["amd64", "arm64"],
    );
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_no_layers() {
    let mut d = Data::new(1600);
    d.image(&Gen {
        layers: Some(0),
        ..tagged("no-layers")
    });
    run(d).await;
}

/// sha512 everywhere: blobs, configs, manifests and the index that lists them, pushed by
/// digest only (a tag push names no algorithm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sha512() {
    let mut d = Data::new(1700);
    let top = d.image_index(
        &Gen {
            alg: Some(Algorithm::Sha512),
            ..Gen::default()
        },
        &["amd64", "arm64"],
    );
    assert!(top["digest"]
        .as_str()
        .is_some_and(|s| s.starts_with("sha512:")));
    assert!(d.blobs.iter().all(|b| b.digest.starts_with("sha512:")));
    run(d).await;
}

async fn tag_param(alg: Algorithm, name: &'static str, seed: u64) {
    let mut d = Data::new(seed);
    d.image_index(
        &Gen {
            alg: Some(alg),
            ..tagged(name)
        },
        &["amd64", "arm64"],
    );
    let digests: Vec<String> = d.manifests.iter().map(|(m, _)| m.digest.clone()).collect();
    for (i, digest) in digests.into_iter().enumerate() {
        d.tags.push((format!("{name}-{i}"), digest));
    }
    d.tag_param = true;
    run(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_tag_param_sha256() {
    tag_param(Algorithm::Sha256, "tag-param-sha256", 1800).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_tag_param_sha512() {
    tag_param(Algorithm::Sha512, "tag-param-sha512", 1900).await;
}
