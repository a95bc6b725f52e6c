//! Criterion benches of the request path's hot pieces: routing, digest parsing, sha256
//! throughput while streaming, manifest parsing. `cargo bench --bench hot_paths`.

use agent_registry::oci::{manifest, Algorithm, Digest};
use agent_registry::server::router;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

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

fn hashing(c: &mut Criterion) {
    let data = vec![7u8; 1 << 20];
    let mut g = c.benchmark_group("digest_verify_1MiB");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        g.bench_function(alg.as_str(), |b| {
            b.iter(|| {
                let mut h = alg.hasher();
                for chunk in data.chunks(64 * 1024) {
                    h.update(chunk);
                }
                black_box(h.finish())
            })
        });
    }
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

criterion_group!(benches, routing, hashing, manifests);
criterion_main!(benches);
