//! A cluster of mirror nodes (`[cluster]`): real servers on 127.0.0.1 in front of the
//! fake upstream. A cold blob is fetched from the upstream once for the whole cluster
//! (through its owner node); a node whose owner is down, stalled or refusing fills
//! itself; peer requests are authenticated by the shared secret.

use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::Http;
use crate::support::random;
use crate::support::server::{default_upstream, TestServer};
use agent_registry::cluster::{sign, PEER_HEADER};
use agent_registry::config::Secret;
use agent_registry::oci::Digest;
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "correct horse battery staple";

/// Free addresses on 127.0.0.1 (bound and released, so the nodes can know each
/// other's URLs before they start).
fn addrs(n: usize) -> Vec<SocketAddr> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter().map(|l| l.local_addr().expect("addr")).collect()
}

fn url(a: &SocketAddr) -> String {
    format!("http://{a}")
}

/// A node at `addr` mirroring `fake` as docker.io, with `peers` (URLs).
fn node(fake: &FakeUpstream, addr: SocketAddr, peers: &[String]) -> TestServer {
    node_with(fake, addr, peers, |_| {})
}

/// [`node`] with the config changed by `f`.
fn node_with(
    fake: &FakeUpstream,
    addr: SocketAddr,
    peers: &[String],
    f: impl FnOnce(&mut agent_registry::config::Config),
) -> TestServer {
    let (up, peers) = (fake.url(), peers.to_vec());
    TestServer::start_with(move |cfg| {
        cfg.server.listen = addr;
        let u = default_upstream(cfg, &up);
        u.first_byte_timeout = Duration::from_secs(5);
        cfg.cache.memory.blob_threshold = 0;
        cfg.cluster.self_url = Some(url(&addr));
        cfg.cluster.peers = peers;
        cfg.cluster.secret = Some(Secret::new(SECRET));
        cfg.cluster.peer_timeout = Duration::from_secs(1);
        f(cfg);
    })
}

/// Nodes at `addrs`, each knowing all of them.
fn cluster(fake: &FakeUpstream, addrs: &[SocketAddr]) -> Vec<TestServer> {
    let urls: Vec<String> = addrs.iter().map(url).collect();
    addrs.iter().map(|a| node(fake, *a, &urls)).collect()
}

/// The index in `urls` of the owner of `digest`.
fn owner(urls: &[String], digest: &str) -> usize {
    let o = sign::owner(urls.iter().map(String::as_str), digest).expect("owner");
    urls.iter().position(|u| u == o).expect("member")
}

/// A blob in the fake (as library/big) of `len` bytes whose owner among `urls` passes
/// `want`; returns its digest.
fn blob_owned(
    fake: &FakeUpstream,
    urls: &[String],
    len: usize,
    want: impl Fn(usize) -> bool,
) -> String {
    for seed in 0..1000 {
        let bytes = random(len, seed);
        let d = Digest::sha256_of(&bytes).to_string();
        if want(owner(urls, &d)) {
            return fake.add_blob("library/big", bytes);
        }
    }
    panic!("no blob with such an owner");
}

/// The sha256 of what `srv` committed for `digest`, waiting for the commit.
async fn stored(srv: &TestServer, digest: &str) -> Option<String> {
    let d: Digest = digest.parse().expect("digest");
    for _ in 0..500 {
        if srv.app.fills.get(&d).is_none() {
            if let Ok(b) = std::fs::read(srv.app.storage.blobs.path(&d)) {
                return Some(Digest::sha256_of(&b).to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_cold_gets_spread_over_three_nodes_make_one_upstream_get() {
    let fake = FakeUpstream::start();
    let bytes = random(64 << 20, 7);
    let digest = fake.add_blob("library/big", bytes);
    let nodes = cluster(&fake, &addrs(3));
    let path = format!("/v2/big/blobs/{digest}");
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (http, path) = (Http::new(&nodes[i % 3].host()), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task").expect("complete body");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.digest, digest);
        assert_eq!(r.len, 64 << 20);
    }
    assert_eq!(
        fake.blob_gets(&digest),
        1,
        "one upstream GET for the cluster"
    );
    for n in &nodes {
        // Every node filled its own disk, verified.
        assert_eq!(stored(n, &digest).await.as_deref(), Some(digest.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_owner_stopped_the_other_nodes_fill_themselves() {
    let fake = FakeUpstream::start();
    let a = addrs(3);
    let urls: Vec<String> = a.iter().map(url).collect();
    // Two blobs of node 0: one fetched while it is up, one after it stopped.
    let first = blob_owned(&fake, &urls, 4 << 20, |o| o == 0);
    let second = blob_owned(&fake, &urls, 4 << 20, |o| o == 0);
    let mut nodes = cluster(&fake, &a);
    for n in &nodes[1..] {
        let r = Http::new(&n.host())
            .get_hashed(&format!("/v2/big/blobs/{first}"), &[])
            .await
            .expect("body");
        assert_eq!(
            (r.status, r.digest.as_str()),
            (StatusCode::OK, first.as_str())
        );
    }
    assert_eq!(fake.blob_gets(&first), 1, "the owner fetched it for both");

    let _dir = nodes.remove(0).stop();
    let path = format!("/v2/big/blobs/{second}");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (http, path) = (Http::new(&nodes[i % 2].host()), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.expect("task").expect("complete body");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.digest, second);
    }
    let gets = fake.blob_gets(&second);
    assert!((1..=2).contains(&gets), "{gets} upstream GETs");
    for n in &nodes {
        assert_eq!(stored(n, &second).await.as_deref(), Some(second.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_stopped_mid_transfer_its_peers_clients_complete_from_the_upstream() {
    let fake = FakeUpstream::start();
    let a = addrs(2);
    let urls: Vec<String> = a.iter().map(url).collect();
    let digest = blob_owned(&fake, &urls, 8 << 20, |o| o == 0);
    // The owner closes its connections at once when stopped (no drain).
    let owner = node_with(&fake, a[0], &urls, |c| {
        c.server.drain_timeout = Duration::ZERO
    });
    let other = node(&fake, a[1], &urls);
    // About 2 s for the blob, so the owner stops in the middle of it.
    fake.set(|s| s.pace = Some(4096));
    let path = format!("/v2/big/blobs/{digest}");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (http, path) = (Http::new(&other.host()), path.clone());
            tokio::spawn(async move { http.get_hashed(&path, &[]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let d: Digest = digest.parse().expect("digest");
    assert!(owner.app.fills.get(&d).is_some(), "the owner is filling it");
    tokio::task::spawn_blocking(move || drop(owner.stop()))
        .await
        .expect("stop");
    for c in clients {
        let r = c.await.expect("task").expect("complete body");
        assert_eq!(
            (r.status, r.digest.as_str()),
            (StatusCode::OK, digest.as_str())
        );
    }
    // The owner's GET, then this node's resume from where the owner broke off.
    assert_eq!(fake.blob_gets(&digest), 2);
    assert_eq!(
        stored(&other, &digest).await.as_deref(),
        Some(digest.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_that_never_answers_is_skipped_after_the_peer_timeout() {
    let fake = FakeUpstream::start();
    // A black hole: connections are accepted and never answered.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_url = url(&hole.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in hole.incoming().flatten() {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
    }
    let a = addrs(1);
    let urls = vec![url(&a[0]), hole_url.clone()];
    let digest = blob_owned(&fake, &urls, 1 << 20, |o| o == 1);
    let n = node(&fake, a[0], &urls);
    let t0 = Instant::now();
    let r = Http::new(&n.host())
        .get_hashed(&format!("/v2/big/blobs/{digest}"), &[])
        .await
        .expect("body");
    assert_eq!(
        (r.status, r.digest.as_str()),
        (StatusCode::OK, digest.as_str())
    );
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the owner was asked first"
    );
    assert_eq!(fake.blob_gets(&digest), 1);
    // Marked down: the next cold blob it owns is not asked of it.
    let next = blob_owned(&fake, &urls, 1 << 20, |o| o == 1);
    let t0 = Instant::now();
    let r = Http::new(&n.host())
        .get_hashed(&format!("/v2/big/blobs/{next}"), &[])
        .await
        .expect("body");
    assert_eq!(r.digest, next);
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_requests_without_the_secret_are_refused_and_fill_nothing() {
    let fake = FakeUpstream::start();
    let digest = fake.add_blob("library/big", random(100_000, 3));
    let a = addrs(2);
    let nodes = cluster(&fake, &a);
    let plain = TestServer::start_with(|cfg| {
        default_upstream(cfg, &fake.url());
    });
    let target = format!("/v2/library/big/blobs/{digest}?ns=docker.io");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let wrong = sign::sign(b"another secret", now, "GET", &target);
    let stale = sign::sign(SECRET.as_bytes(), now - 3600, "GET", &target);
    let other_path = sign::sign(SECRET.as_bytes(), now, "GET", "/v2/library/big/blobs/x");
    for value in ["", SECRET, &wrong, &stale, &other_path] {
        for srv in [&nodes[0], &plain] {
            let r = Http::new(&srv.host())
                .send(Method::GET, &target, &[(PEER_HEADER, value)], Vec::new())
                .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{value:?}");
            assert_eq!(r.error_code(), "UNAUTHORIZED");
        }
    }
    assert_eq!(fake.total_hits(), 0, "a refused peer request fills nothing");
    // The same request signed with the secret is served (through the node's own fill).
    let good = sign::sign(SECRET.as_bytes(), now, "GET", &target);
    let r = Http::new(&nodes[0].host())
        .send(Method::GET, &target, &[(PEER_HEADER, &good)], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(Digest::sha256_of(&r.body).to_string(), digest);
    assert_eq!(fake.blob_gets(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_serves_a_blob_its_owner_holds_without_an_upstream_get() {
    let fake = FakeUpstream::start();
    let a = addrs(4);
    let urls: Vec<String> = a.iter().map(url).collect();
    // A blob one of the three owns also among four (rendezvous hashing moves keys only
    // to the new node).
    let digest = blob_owned(&fake, &urls, 8 << 20, |o| o != 3);
    let three = cluster(&fake, &a[..3]);
    let path = format!("/v2/big/blobs/{digest}");
    let o = owner(&urls, &digest);
    let r = Http::new(&three[o].host())
        .get_hashed(&path, &[])
        .await
        .expect("body");
    assert_eq!(r.digest, digest);
    assert_eq!(
        stored(&three[o], &digest).await.as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(fake.blob_gets(&digest), 1);

    let fourth = node(&fake, a[3], &urls);
    let r = Http::new(&fourth.host())
        .get_hashed(&path, &[])
        .await
        .expect("body");
    assert_eq!(
        (r.status, r.digest.as_str()),
        (StatusCode::OK, digest.as_str())
    );
    assert_eq!(
        fake.blob_gets(&digest),
        1,
        "served by its owner, not the upstream"
    );
    assert_eq!(
        stored(&fourth, &digest).await.as_deref(),
        Some(digest.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_that_starts_with_an_upstream_alias_reaches_the_owner_unchanged() {
    let fake = FakeUpstream::start();
    let a = addrs(2);
    let urls: Vec<String> = a.iter().map(url).collect();
    // Docker Hub's `docker/...` organisation, with `docker` an alias of docker.io.
    let bytes = (0..1000)
        .map(|seed| random(100_000, seed))
        .find(|b| owner(&urls, &Digest::sha256_of(b).to_string()) == 0)
        .expect("a blob node 0 owns");
    let digest = fake.add_blob("docker/compose", bytes);
    let alias = |c: &mut agent_registry::config::Config| {
        if let Some(u) = c.upstreams.iter_mut().find(|u| u.name == "docker.io") {
            u.aliases = vec!["docker".into()];
        }
    };
    let _owner = node_with(&fake, a[0], &urls, alias);
    let other = node_with(&fake, a[1], &urls, alias);
    let r = Http::new(&other.host())
        .get_hashed(&format!("/v2/docker.io/docker/compose/blobs/{digest}"), &[])
        .await
        .expect("body");
    assert_eq!(
        (r.status, r.digest.as_str()),
        (StatusCode::OK, digest.as_str())
    );
    assert_eq!(
        fake.blob_gets(&digest),
        1,
        "asked of the owner as docker/compose"
    );
    assert_eq!(
        fake.hits("GET", &format!("/v2/library/compose/blobs/{digest}")),
        0
    );
}
