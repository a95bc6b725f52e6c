//! Criterion benches of the request path's hot pieces: routing, digest parsing, digest
//! verification throughput (sha2 as used, against ring), manifest parsing, memory-tier and
//! disk-tier lookups, and whole warm requests through `dispatch::Handle::handle` (tag resolution from
//! the memory tier, a manifest by digest, a 1 MiB blob from disk).
//! `cargo bench --bench hot_paths [-- <filter>]`.

use agent_registry::app::App;
use agent_registry::config::Config;
use agent_registry::dispatch::Handle;
use agent_registry::oci::{manifest, Algorithm, Digest};
use agent_registry::storage::mirror_meta::{now_ms, TagRow};
use agent_registry::web::route as router;
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Empty};
use std::net::SocketAddr;
use std::sync::Arc;

fn routing(c: &mut Criterion) {
    let paths = [
        "/v2/library/alpine/manifests/3.20",
        "/v2/a/b/c/d/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "/v2/agents/summarizer/blobs/uploads/5f0c1e2a-8f1e-4c2b-9a51-1b2c3d4e5f60",
        "/v2/_catalog",
    ];
    c.bench_function("route_parse", |b| {
        b.iter(|| {
            for p in paths {
                black_box(router::parse(black_box(p)));
            }
        })
    });
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    c.bench_function("digest_parse", |b| {
        b.iter(|| black_box(d).parse::<Digest>())
    });
}

/// Verifying 1 MiB in the 64 KiB pieces a body arrives in: the project's hasher (sha2,
/// which picks SHA-NI or AVX2 at run time), sha2 directly, and ring's assembly.
fn hashing(c: &mut Criterion) {
    let data = vec![7u8; 1 << 20];
    let mut g = c.benchmark_group("digest_verify_1MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        g.bench_function(format!("hasher_{}", alg.as_str()), |b| {
            b.iter(|| {
                let mut h = alg.hasher();
                for chunk in data.chunks(64 * 1024) {
                    h.update(chunk);
                }
                black_box(h.finish())
            })
        });
    }
    g.bench_function("sha2_sha256", |b| {
        use sha2::Digest as _;
        b.iter(|| {
            let mut h = sha2::Sha256::new();
            for chunk in data.chunks(64 * 1024) {
                h.update(chunk);
            }
            black_box(h.finalize())
        })
    });
    g.bench_function("ring_sha256", |b| {
        b.iter(|| {
            let mut h = ring::digest::Context::new(&ring::digest::SHA256);
            for chunk in data.chunks(64 * 1024) {
                h.update(chunk);
            }
            black_box(h.finish())
        })
    });
    g.finish();
}

const REPO: &str = "bench/app";

/// A mirror of an upstream that is never reached: everything the benches ask for is
/// cached first. Returns the app, a tagged manifest's digest and a cached 1 MiB blob.
fn mirror(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> (Arc<App>, Digest, Digest) {
    let mut cfg = Config::embedded_default();
    cfg.storage.data_dir = dir.join("data");
    cfg.apply_upstream_flag("docker.io=http://127.0.0.1:9")
        .expect("upstream flag");
    let app = App::new(cfg).expect("app");
    let body = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":100}},"layers":[]}}"#,
        manifest::OCI_MANIFEST,
        "ab".repeat(32)
    ));
    let mdig = Digest::sha256_of(&body);
    let blob = Bytes::from(vec![5u8; 1 << 20]);
    let bdig = Digest::sha256_of(&blob);
    rt.block_on(async {
        let row = TagRow {
            digest: mdig.to_string(),
            media_type: manifest::OCI_MANIFEST.to_string(),
            size: body.len() as u64,
            fetched_ms: now_ms(),
        };
        app.storage
            .meta
            .put_mirror_tag("docker.io", REPO, "v1", row.clone())
            .await
            .expect("tag row");
        app.memory.put_tag("docker.io", REPO, "v1", row);
        app.memory
            .put_manifest(&mdig, manifest::OCI_MANIFEST, body.clone());
        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(blob)]);
        app.storage.ingest(&bdig, chunks, None).await.expect("blob");
    });
    (app, mdig, bdig)
}

/// One GET through `dispatch::Handle::handle`, body read to the end; returns status and body length.
async fn get(app: &Arc<App>, path: &str) -> (u16, usize) {
    let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, manifest::OCI_MANIFEST)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = app.handle(req, peer).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.len())
}

fn lookups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, mdig, bdig) = mirror(&rt, dir.path());
    let mut g = c.benchmark_group("lookup");
    g.bench_function("memory_tier_manifest", |b| {
        b.iter(|| black_box(app.memory.manifest(black_box(&mdig))))
    });
    g.bench_function("memory_tier_tag", |b| {
        b.iter(|| black_box(app.memory.tag("docker.io", black_box(REPO), "v1")))
    });
    g.bench_function("sqlite_tag_row", |b| {
        b.iter(|| rt.block_on(app.storage.meta.mirror_tag("docker.io", REPO, "v1")))
    });
    g.bench_function("disk_tier_blob_stat", |b| {
        b.iter(|| rt.block_on(app.storage.blobs.stat(black_box(&bdig))))
    });
    g.finish();

    let mut g = c.benchmark_group("warm_request");
    let by_tag = format!("/v2/{REPO}/manifests/v1");
    let by_digest = format!("/v2/{REPO}/manifests/{mdig}");
    let blob = format!("/v2/{REPO}/blobs/{bdig}");
    assert_eq!(rt.block_on(get(&app, &by_tag)).0, 200);
    assert_eq!(rt.block_on(get(&app, &by_digest)).0, 200);
    assert_eq!(rt.block_on(get(&app, &blob)), (200, 1 << 20));
    g.bench_function("manifest_by_tag", |b| {
        b.iter(|| rt.block_on(get(&app, &by_tag)))
    });
    g.bench_function("manifest_by_digest", |b| {
        b.iter(|| rt.block_on(get(&app, &by_digest)))
    });
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("blob_1MiB_from_disk", |b| {
        b.iter(|| rt.block_on(get(&app, &blob)))
    });
    g.finish();
}

fn manifests(c: &mut Criterion) {
    let layer = |i: u8| {
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":1024}}"#,
            format!("{i:02x}").repeat(32)
        )
    };
    let layers: Vec<String> = (0..10).map(layer).collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":100}},"layers":[{}]}}"#,
        manifest::OCI_MANIFEST,
        "ab".repeat(32),
        layers.join(",")
    );
    c.bench_function("manifest_parse_10_layers", |b| {
        b.iter(|| manifest::parse(black_box(body.as_bytes()), manifest::OCI_MANIFEST))
    });
}

/// The queryable access log: one batch of entries (the log writer's largest) written as
/// the writer does, into a table that grows as the benchmark runs.
fn access_log(c: &mut Criterion) {
    use agent_registry::auth::store::{now_ms, AccessEntry, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("auth.db");
    let entry = |i: u64| AccessEntry {
        ts_ms: now_ms() + i,
        client: [127, 0, 0, 1].into(),
        user: None,
        method: http::Method::GET,
        route: "manifest",
        repo: Some(format!("bench/tiny-{:02}", i % 50)),
        status: 200,
        bytes: Some(2500),
        duration_us: 40,
        cache: "hit",
        outcome: "ok",
    };
    const BATCH: u64 = 8192;
    let mut g = c.benchmark_group("access_log");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH));
    // Time moves on between batches, as it does for the writer: the time-keyed row ids
    // grow at the table's right edge.
    let mut next = 0u64;
    g.bench_function("append_batch_of_8192", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                (next..next + BATCH).map(entry).collect::<Vec<_>>()
            },
            |batch| store.append(black_box(&batch), &[]).expect("append"),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, routing, hashing, manifests, lookups, access_log);
criterion_main!(benches);
