//! The tiered cache against the fault-switch upstream: the byte cap holds while far more
//! is pulled, eviction follows the policy and keeps images whole, readers never see
//! wrong bytes while eviction runs, layers can stream through, a disk smaller than the
//! cap makes room by eviction, a read-only cache directory streams through and recovers,
//! and the admin endpoints. Restarts and the commands are in `cache_restart.rs`.

use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{image_manifest, Http};
use crate::support::random;
use crate::support::server::{default_upstream, TestServer};
use agent_registry::config::{CacheConfig, Policy};
use agent_registry::oci::Digest;
use http::{Method, StatusCode};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::{Duration, Instant};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// A mirror of `fake` as docker.io with the cache settings changed by `f`.
pub(crate) fn mirror(fake: &FakeUpstream, f: impl FnOnce(&mut CacheConfig)) -> TestServer {
    let url = fake.url();
    TestServer::start_with(move |cfg| {
        let up = default_upstream(cfg, &url);
        up.tag_ttl = Duration::from_secs(60);
        up.first_byte_timeout = Duration::from_secs(5);
        f(&mut cfg.cache);
    })
}

pub(crate) struct Image {
    pub repo: String,
    pub manifest: String,
    pub blobs: Vec<String>,
}

/// An image of a config and one layer of `layer` bytes in `repo`, tagged `latest`.
pub(crate) fn image(fake: &FakeUpstream, repo: &str, layer: usize, seed: u64) -> Image {
    let up = format!("library/{repo}");
    let config = fake.add_blob(&up, format!("{{\"seed\":{seed}}}").into_bytes());
    let l = fake.add_blob(&up, random(layer, seed));
    let cfg_len = format!("{{\"seed\":{seed}}}").len();
    let m = image_manifest((&config, cfg_len), &[(&l, layer)], None);
    let d = fake.add_manifest(&up, "latest", OCI, m);
    Image {
        repo: repo.to_string(),
        manifest: d,
        blobs: vec![config, l],
    }
}

/// Pulls the image (manifest by tag, then every blob), checking every digest.
pub(crate) async fn pull(http: &Http, img: &Image) {
    let r = http
        .get_hashed(&format!("/v2/{}/manifests/latest", img.repo), &[])
        .await
        .expect("manifest");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.digest, img.manifest);
    for b in &img.blobs {
        let r = http
            .get_hashed(&format!("/v2/{}/blobs/{b}", img.repo), &[])
            .await
            .expect("blob body");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.digest, b);
    }
}

/// Waits until the cache admitted every object of `img` (commits run after the reply).
pub(crate) async fn settled(srv: &TestServer, img: &Image) {
    let all: Vec<Digest> = std::iter::once(&img.manifest)
        .chain(&img.blobs)
        .map(|d| d.parse().expect("digest"))
        .collect();
    // Up to 20 s: on a loaded 2-core box the commits queue behind other tests' I/O.
    for _ in 0..2000 {
        if srv.app.fills.is_empty() && all.iter().all(|d| srv.app.cache.contains(d)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing: Vec<String> = all
        .iter()
        .filter(|d| !srv.app.cache.contains(d))
        .map(|d| format!("{d} (on disk: {})", on_disk(srv, &d.to_string())))
        .collect();
    panic!(
        "image {} was not cached: fills in flight {}, not indexed {missing:?}, stats {:?}",
        img.repo,
        srv.app.fills.len(),
        srv.app.cache.stats()
    );
}

pub(crate) fn on_disk(srv: &TestServer, digest: &str) -> bool {
    let d: Digest = digest.parse().expect("digest");
    srv.app.storage.blobs.path(&d).exists()
}

/// Bytes under `blobs/` (committed objects only; temp files of fills are elsewhere).
pub(crate) fn disk_bytes(data: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&data.join("blobs"))
}

pub(crate) const MIB: usize = 1 << 20;

async fn fill_past_the_cap(policy: Policy) {
    let fake = FakeUpstream::start();
    let cap = 6 * MIB as u64;
    let srv = mirror(&fake, |c| {
        c.max_size = cap;
        c.policy = policy;
        c.memory.blob_threshold = 0;
    });
    let http = Http::new(&srv.host());
    let hot = image(&fake, "hot", MIB, 1000);
    let cold: Vec<Image> = (0..16)
        .map(|i| image(&fake, &format!("cold{i}"), MIB, i))
        .collect();
    pull(&http, &hot).await;
    settled(&srv, &hot).await;
    for (i, img) in cold.iter().enumerate() {
        pull(&http, img).await;
        settled(&srv, img).await;
        // Production pulls: the hot image's manifest is asked for again and again.
        if i % 2 == 0 {
            pull(&http, &hot).await;
        }
        let bytes = disk_bytes(srv.data_dir());
        assert!(bytes <= cap, "{bytes} bytes on disk over the cap {cap}");
        let stats = srv.app.cache.stats();
        assert!(stats.bytes <= cap, "{stats:?}");
    }
    let stats = srv.app.cache.stats();
    assert!(stats.evictions > 0, "{stats:?}");
    // The policy's order: one-off images leave oldest first (a prefix of the pull
    // order), and the image pulled again and again stays.
    let present: Vec<bool> = cold.iter().map(|i| on_disk(&srv, &i.manifest)).collect();
    let first_kept = present
        .iter()
        .position(|p| *p)
        .expect("some cold image kept");
    assert!(first_kept > 0, "{present:?}");
    assert!(present[first_kept..].iter().all(|p| *p), "{present:?}");
    assert!(on_disk(&srv, &hot.manifest) && on_disk(&srv, &hot.blobs[1]));
    // Images go whole: a manifest on disk has its blobs on disk.
    for img in cold.iter().chain([&hot]) {
        if on_disk(&srv, &img.manifest) {
            assert!(img.blobs.iter().all(|b| on_disk(&srv, b)), "{}", img.repo);
        }
    }
    // With the upstream down, every image whose manifest is served is complete.
    fake.set(|s| s.server_errors = 1_000_000);
    for img in cold.iter().chain([&hot]) {
        let m = http
            .get(&format!("/v2/{}/manifests/{}", img.repo, img.manifest))
            .await;
        if m.status != StatusCode::OK {
            continue;
        }
        for b in &img.blobs {
            let r = http.get(&format!("/v2/{}/blobs/{b}", img.repo)).await;
            assert_eq!(r.status, StatusCode::OK, "{} served without {b}", img.repo);
        }
    }
    fake.set(|s| s.server_errors = 0);
    // The failures marked the upstream down: come back after its Retry-After, as clients do.
    let path = format!("/v2/{}/manifests/latest", cold[0].repo);
    crate::upstream_health::get_after_retry_after(&http, &path).await;
    // Evicted images are fetched again from the upstream and pull fine.
    let before = fake.blob_gets(&cold[0].blobs[1]);
    pull(&http, &cold[0]).await;
    assert_eq!(fake.blob_gets(&cold[0].blobs[1]), before + 1);
    // Whether the refetched one-off image stays cached is the policy's call (under
    // S3-FIFO its new manifest may make way for its own layers); the cap holds either way.
    for _ in 0..2000 {
        if srv.app.fills.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(disk_bytes(srv.data_dir()) <= cap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3fifo_fill_past_the_cap_stays_under_it_in_policy_order() {
    fill_past_the_cap(Policy::S3Fifo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_fill_past_the_cap_stays_under_it_in_policy_order() {
    fill_past_the_cap(Policy::Lru).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_of_many_blobs_while_eviction_runs_get_exact_bytes() {
    let fake = FakeUpstream::start();
    let cap = 4 * MIB as u64;
    let srv = mirror(&fake, |c| {
        c.max_size = cap;
        c.memory.blob_threshold = 64 << 10;
    });
    let blobs: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            let len = [40_000, 300_000, 700_000, 1_100_000][i % 4];
            let b = random(len, 500 + i as u64);
            (fake.add_blob("library/stress", b.clone()), b)
        })
        .collect();
    let blobs = std::sync::Arc::new(blobs);
    let http = Http::new(&srv.host());
    let tasks: Vec<_> = (0..12u64)
        .map(|t| {
            let (http, blobs) = (http.clone(), blobs.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..40 {
                    let (d, bytes) = &blobs[rng.gen_range(0..blobs.len())];
                    let path = format!("/v2/stress/blobs/{d}");
                    if rng.gen_bool(0.3) {
                        let s = rng.gen_range(0..bytes.len() - 1);
                        let e = rng.gen_range(s..bytes.len());
                        let range = format!("bytes={s}-{e}");
                        let r = http
                            .send(Method::GET, &path, &[("range", &range)], Vec::new())
                            .await;
                        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
                        assert_eq!(r.body.as_ref(), &bytes[s..=e], "range {range} of {d}");
                    } else {
                        let r = http.get_hashed(&path, &[]).await.expect("whole body");
                        assert_eq!(r.status, StatusCode::OK);
                        assert_eq!(&r.digest, d);
                        assert_eq!(r.len, bytes.len() as u64);
                    }
                }
            })
        })
        .collect();
    let sampler = {
        let dir = srv.data_dir().to_path_buf();
        tokio::spawn(async move {
            let mut max = 0;
            for _ in 0..200 {
                max = max.max(disk_bytes(&dir));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    for t in tasks {
        t.await.expect("reader");
    }
    let stats = srv.app.cache.stats();
    assert!(stats.evictions > 0, "eviction ran: {stats:?}");
    assert!(stats.bytes <= cap, "{stats:?}");
    // Evicted files may linger only while a reader still streams them.
    let max = sampler.await.expect("sampler");
    assert!(
        max <= cap + 2 * 1_100_000 * 12,
        "disk peaked at {max} bytes"
    );
    for _ in 0..200 {
        if disk_bytes(srv.data_dir()) <= cap {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(disk_bytes(srv.data_dir()) <= cap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_caching_off_streams_through_and_stores_nothing() {
    let fake = FakeUpstream::start();
    let srv = mirror(&fake, |c| c.strategies.layers = false);
    let http = Http::new(&srv.host());
    let img = image(&fake, "thru", MIB, 7);
    pull(&http, &img).await;
    pull(&http, &img).await;
    assert_eq!(fake.blob_gets(&img.blobs[1]), 2, "fetched each time");
    assert!(!on_disk(&srv, &img.blobs[1]));
    let r = http
        .send(
            Method::GET,
            &format!("/v2/thru/blobs/{}", img.blobs[1]),
            &[("range", "bytes=10-19")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &random(MIB, 7)[10..20]);
    assert_eq!(r.header("x-cache"), Some("bypass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_stats_purge_and_gc() {
    let fake = FakeUpstream::start();
    let srv = mirror(&fake, |_| {});
    let http = Http::new(&srv.host());
    let a = image(&fake, "a", 100_000, 1);
    let b = image(&fake, "b", 100_000, 2);
    for img in [&a, &b] {
        pull(&http, img).await;
        settled(&srv, img).await;
    }
    let r = http.get("/admin/cache/stats").await;
    assert_eq!(r.status, StatusCode::OK);
    let s = r.json();
    assert_eq!(s["entries"], 6, "{s}");
    assert_eq!(s["manifests"], 2, "{s}");
    assert_eq!(s["policy"], "s3-fifo");
    // A digest: the layer goes, and the manifest that uses it goes first.
    let r = http
        .send(
            Method::POST,
            &format!("/admin/cache/purge?digest={}", a.blobs[1]),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let removed = r.json()["removed"].clone();
    assert!(
        removed.as_array().is_some_and(|v| v.len() == 3),
        "{removed}"
    );
    assert!(!on_disk(&srv, &a.manifest) && !on_disk(&srv, &a.blobs[1]));
    // A repository: its tags and images.
    let r = http
        .send(
            Method::POST,
            "/admin/cache/purge?repo=library/b",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["tags"], 1);
    assert!(!on_disk(&srv, &b.manifest) && !on_disk(&srv, &b.blobs[1]));
    assert_eq!(srv.app.cache.stats().entries, 0);
    // Pulls still work (from the upstream again).
    pull(&http, &b).await;
    let r = http
        .send(Method::POST, "/admin/cache/purge", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = http
        .send(Method::POST, "/admin/gc?dry_run=1", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["dry_run"], true);
    assert_eq!(
        http.get("/admin/gc").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// A tmpfs of `size` at `dir` (root only); None with a message when not root.
pub fn tmpfs(dir: &Path, size: &str) -> Option<()> {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        assert!(
            std::env::var("REQUIRE_INTEROP").as_deref() != Ok("1"),
            "REQUIRE_INTEROP=1 but not root: cannot mount a tmpfs for the ENOSPC test"
        );
        eprintln!("skipping: mounting a small tmpfs needs root");
        return None;
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .expect("mount");
    assert!(status.success(), "mount tmpfs");
    Some(())
}

pub struct Unmount(pub std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        // Quiet: the guard may find it unmounted already.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_smaller_than_the_cap_evicts_to_make_room_and_never_turns_caching_off() {
    let fake = FakeUpstream::start();
    let root = tempfile::tempdir().expect("tempdir");
    let mnt = root.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    if tmpfs(&mnt, "12m").is_none() {
        return;
    }
    let _unmount = Unmount(mnt.clone());
    let url = fake.url();
    let data = mnt.join("data");
    let srv = TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url);
        cfg.storage.data_dir = data;
        cfg.cache.max_size = 1 << 30; // far more than the disk holds
        cfg.cache.memory.blob_threshold = 0;
    });
    let http = Http::new(&srv.host());
    let blobs: Vec<String> = (0..6)
        .map(|i| fake.add_blob("library/full", random(3 * MIB, 900 + i)))
        .collect();
    // 18 MiB through a 12 MiB disk: each blob gets its room on the disk by evicting the
    // oldest, so every one is cached in turn and caching never goes off.
    for d in &blobs {
        let r = http
            .get_hashed(&format!("/v2/full/blobs/{d}"), &[])
            .await
            .expect("served while the disk is full");
        assert_eq!(&r.digest, d);
        for _ in 0..300 {
            if srv.app.fills.is_empty() && on_disk(&srv, d) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(on_disk(&srv, d), "{d} cached: {:?}", srv.app.cache.stats());
    }
    let stats = srv.app.cache.stats();
    assert!(!stats.write_disabled, "{stats:?}");
    assert!(stats.entries >= 1 && stats.entries < 6, "{stats:?}");
    assert!(stats.evictions >= 1, "{stats:?}");
    let metrics = http.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.lines()
            .any(|l| l == "agent_registry_cache_write_disabled 0"),
        "{text}"
    );
    // Every blob still pulls, cached or not.
    for d in &blobs {
        let r = http
            .get_hashed(&format!("/v2/full/blobs/{d}"), &[])
            .await
            .expect("body");
        assert_eq!(&r.digest, d);
    }
    drop(srv);
}

/// Runs `mount` with `args` on `dir`; panics on failure.
fn mount(args: &[&str], dir: &Path) {
    let ok = std::process::Command::new("mount")
        .args(args)
        .arg(dir)
        .arg(dir)
        .status()
        .expect("mount")
        .success();
    assert!(ok, "mount {args:?} {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_cache_directory_streams_through_and_recovers() {
    let fake = FakeUpstream::start();
    let root = tempfile::tempdir().expect("tempdir");
    // Root only (a bind mount), like the tmpfs test.
    if tmpfs(root.path(), "64m").is_none() {
        return;
    }
    let _unmount = Unmount(root.path().to_path_buf());
    let url = fake.url();
    let data = root.path().join("data");
    let srv = TestServer::start_with(move |cfg| {
        default_upstream(cfg, &url);
        cfg.storage.data_dir = data;
        cfg.cache.memory.blob_threshold = 0;
    });
    let http = Http::new(&srv.host());
    let cached = fake.add_blob("library/ro", random(MIB, 1));
    let fresh = fake.add_blob("library/ro", random(MIB, 2));
    let r = http
        .get_hashed(&format!("/v2/ro/blobs/{cached}"), &[])
        .await
        .expect("body");
    assert_eq!(r.digest, cached);
    for _ in 0..200 {
        if on_disk(&srv, &cached) && srv.app.fills.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The cache's write directory turns read-only (a bind mount of itself, remounted ro).
    let tmp = srv.data_dir().join("tmp");
    mount(&["--bind"], &tmp);
    let _unbind = Unmount(tmp.clone());
    mount(&["-o", "remount,bind,ro"], &tmp);
    // Cached content is served; new content streams through, verified, not kept.
    for d in [&cached, &fresh, &fresh] {
        let r = http
            .get_hashed(&format!("/v2/ro/blobs/{d}"), &[])
            .await
            .expect("served from a read-only cache");
        assert_eq!(&r.digest, d);
    }
    assert!(srv.app.cache.stats().write_disabled);
    assert!(!on_disk(&srv, &fresh));
    // Writable again: the bind mount goes (a rename across it would fail with EXDEV).
    let ok = std::process::Command::new("umount")
        .arg(&tmp)
        .status()
        .expect("umount")
        .success();
    assert!(ok, "umount {}", tmp.display());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get_hashed(&format!("/v2/ro/blobs/{fresh}"), &[])
            .await
            .expect("body");
        assert_eq!(r.digest, fresh);
        if on_disk(&srv, &fresh) {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", srv.app.cache.stats());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!srv.app.cache.stats().write_disabled);
    drop(srv);
}
