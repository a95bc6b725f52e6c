//! Who sees what across hosted and mirrored routes: a mirrored route serves only what
//! its upstream has (never hosted content, never another upstream's, in any routing
//! form, by status or body), a private plain-named repository looks exactly like a name
//! nobody pushed, a cancelled upload does not make a plain name hosted, provenance
//! survives a restart (and caches from before it are confirmed once), and the
//! permission matrix over every route x identity x repository kind with exact statuses.

use crate::auth::{basic, configure};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::http::{image_manifest, Http, Resp};
use crate::support::server::{default_upstream, TestServer};
use agent_registry::config::{Config, UpstreamConfig, Visibility};
use agent_registry::oci::Digest;
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};

const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";

/// `docker.io` (the default upstream, `library/` for plain names) and `ghcr.io`
/// (reached by the Host header), both `fake`; users and rules as in `auth.rs`.
fn mirror_with_users(c: &mut Config, fake: &str) {
    configure(c);
    default_upstream(c, fake);
    c.upstreams.retain(|u| u.name != "ghcr.io");
    c.upstreams.push(UpstreamConfig::new("ghcr.io", fake));
    c.mirror.route_by_host = true;
}

fn sha(b: &[u8]) -> String {
    Digest::sha256_of(b).to_string()
}

/// A request as `who` ("anonymous", a user, or a ready `Authorization` value).
async fn req(http: &Http, who: &str, m: Method, path: &str, extra: &[(&str, &str)]) -> Resp {
    req_body(http, who, m, path, extra, Bytes::new()).await
}

async fn req_body(
    http: &Http,
    who: &str,
    m: Method,
    path: &str,
    extra: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let auth = match who {
        "anonymous" => None,
        w if w.starts_with("Bearer ") || w.starts_with("Basic ") => Some(w.to_string()),
        user => Some(basic(user)),
    };
    let mut h: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    http.send(m, path, &h, body).await
}

/// Pushes a one-layer image as admin (config = layer, so one blob); returns
/// (manifest digest, layer digest).
async fn push(http: &Http, repo: &str, tag: &str, layer: &[u8]) -> (String, String) {
    let l = sha(layer);
    let r = req_body(
        http,
        "admin",
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={l}"),
        &[("content-type", "application/octet-stream")],
        Bytes::copy_from_slice(layer),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{repo}: {:?}", r.body);
    let m = image_manifest((&l, layer.len()), &[(&l, layer.len())], None);
    let r = req_body(
        http,
        "admin",
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", MEDIA)],
        Bytes::from(m.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{repo}: {:?}", r.body);
    (sha(&m), l)
}

async fn visibility(http: &Http, repo: &str, v: &str) {
    let body = Bytes::from(format!("{{\"visibility\":\"{v}\"}}"));
    let path = format!("/admin/visibility?repo={repo}");
    let r = req_body(http, "admin", Method::PUT, &path, &[], body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// Puts an image (manifest + one layer) on the fake upstream; returns (manifest, layer).
fn upstream_image(fake: &FakeUpstream, repo: &str, tag: &str, layer: &[u8]) -> (String, String) {
    let l = fake.add_blob(repo, layer.to_vec());
    let m = image_manifest((&l, layer.len()), &[(&l, layer.len())], None);
    let md = fake.add_manifest(repo, tag, MEDIA, m);
    (md, l)
}

/// (status, OCI error code or "-", WWW-Authenticate with `blank` blanked).
fn observable(r: &Resp, blank: &[&str]) -> (u16, String, String) {
    let code = match r.status.is_client_error() && !r.body.is_empty() {
        true => r.error_code(),
        false => "-".into(),
    };
    let mut c = r.header("www-authenticate").unwrap_or("").to_string();
    for b in blank {
        c = c.replace(b, "X");
    }
    (r.status.as_u16(), code, c)
}

/// A mirrored route in one of the routing forms: (label, name, query, extra headers).
type Form = (
    &'static str,
    String,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

fn forms(repo_plain: &str) -> Vec<Form> {
    vec![
        ("plain", repo_plain.to_string(), "", vec![]),
        ("prefix", format!("docker.io/{repo_plain}"), "", vec![]),
        ("ns", "agents/secret/x".to_string(), "?ns=docker.io", vec![]),
        (
            "host",
            repo_plain.to_string(),
            "",
            vec![("host", "ghcr.io")],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_routes_never_serve_hosted_content() {
    let fake = FakeUpstream::start();
    let url = fake.url();
    let srv = TestServer::start_with(|c| mirror_with_users(c, &url));
    let http = Http::new(&srv.host());
    let (m, l) = push(&http, "agents/secret/x", "v1", b"private layer bytes").await;
    visibility(&http, "agents/secret/x", "private").await;
    // A referrer of the private manifest, so the referrers route has something to leak.
    let subject = image_manifest((&l, 19), &[(&l, 19)], Some((&m, 0)));
    let r = req_body(
        &http,
        "admin",
        Method::PUT,
        "/v2/agents/secret/x/manifests/sig",
        &[("content-type", MEDIA)],
        Bytes::from(subject),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // Nobody has this digest anywhere: what a miss looks like.
    let nowhere = sha(b"stored nowhere");
    let mut failures = Vec::new();
    for who in ["anonymous", "reader", "admin"] {
        for (form, name, q, extra) in forms("library/anything") {
            for (route, method, kind, what) in [
                ("blob GET", Method::GET, "blobs", &l),
                ("blob HEAD", Method::HEAD, "blobs", &l),
                ("manifest GET", Method::GET, "manifests", &m),
                ("manifest HEAD", Method::HEAD, "manifests", &m),
                ("blob GET of a manifest", Method::GET, "blobs", &m),
                ("referrers", Method::GET, "referrers", &m),
            ] {
                let path = format!("/v2/{name}/{kind}/{what}{q}");
                let r = req(&http, who, method.clone(), &path, &extra).await;
                let miss = format!("/v2/{name}/{kind}/{nowhere}{q}");
                let rm = req(&http, who, method.clone(), &miss, &extra).await;
                if r.status.is_success() {
                    failures.push(format!(
                        "{who} {form} {route}: {} served hosted content",
                        r.status
                    ));
                }
                let (a, b) = (observable(&r, &[what]), observable(&rm, &[&nowhere]));
                let body = |r: &Resp| {
                    String::from_utf8_lossy(&r.body)
                        .replace(what, "X")
                        .replace(&nowhere, "X")
                };
                if a != b || body(&r) != body(&rm) {
                    failures.push(format!(
                        "{who} {form} {route}: hosted digest {a:?} {:?} differs from a missing one {b:?} {:?}",
                        body(&r),
                        body(&rm)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The exact answer: the upstream's 404, whoever asks and however it is routed.
    for who in ["anonymous", "reader", "admin"] {
        for (_, name, q, extra) in forms("library/anything") {
            let path = format!("/v2/{name}/blobs/{l}{q}");
            let r = req(&http, who, Method::GET, &path, &extra).await;
            assert_eq!(
                (r.status, r.error_code().as_str()),
                (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
                "{who} {path}"
            );
        }
    }

    // When the upstream has the same bytes, the stored copy serves its route: confirmed
    // with one HEAD, never downloaded again, and known from then on.
    let shared = b"private layer bytes".to_vec();
    fake.add_blob("library/shared", shared.clone());
    fake.reset_counters();
    let path = format!("/v2/library/shared/blobs/{l}");
    for _ in 0..2 {
        let r = req(&http, "anonymous", Method::GET, &path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(&r.body[..], &shared[..]);
    }
    assert_eq!(fake.blob_gets(&l), 0, "deduplicated by digest");
    assert_eq!(
        fake.hits("HEAD", &format!("/v2/library/shared/blobs/{l}")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_route_serves_only_what_that_upstream_has() {
    let a = FakeUpstream::start();
    let b = FakeUpstream::start();
    let (ua, ub) = (a.url(), b.url());
    let srv = TestServer::start_with(|c| {
        default_upstream(c, &ua);
        c.upstreams.push(UpstreamConfig::new("ghcr.io", &ub));
    });
    let http = Http::new(&srv.host());
    let (m, l) = upstream_image(&a, "library/app", "v1", b"only upstream a has this");
    for path in [
        format!("/v2/library/app/manifests/{m}"),
        format!("/v2/library/app/blobs/{l}"),
    ] {
        let r = http.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    }
    // Fetched from docker.io, held here, but ghcr.io does not have it.
    for (path, code) in [
        (
            format!("/v2/ghcr.io/org/app/manifests/{m}"),
            "MANIFEST_UNKNOWN",
        ),
        (format!("/v2/ghcr.io/org/app/blobs/{l}"), "BLOB_UNKNOWN"),
        (format!("/v2/org/app/blobs/{l}?ns=ghcr.io"), "BLOB_UNKNOWN"),
    ] {
        let r = http.get(&path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.error_code(), code, "{path}");
        let r = http.head(&path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "HEAD {path}");
    }
    // Once it has them, they are served from what is held: asked, not downloaded.
    let (m2, l2) = upstream_image(&b, "org/app", "v1", b"only upstream a has this");
    assert_eq!((&m2, &l2), (&m, &l));
    b.reset_counters();
    for path in [
        format!("/v2/ghcr.io/org/app/manifests/{m}"),
        format!("/v2/ghcr.io/org/app/blobs/{l}"),
    ] {
        let r = http.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    }
    assert_eq!(b.blob_gets(&l), 0);
    assert_eq!(b.hits("GET", &format!("/v2/org/app/manifests/{m}")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_one_upstream_is_not_joined_for_another() {
    let a = FakeUpstream::start();
    let b = FakeUpstream::start();
    let (ua, ub) = (a.url(), b.url());
    let srv = TestServer::start_with(|c| {
        default_upstream(c, &ua);
        c.upstreams.push(UpstreamConfig::new("ghcr.io", &ub));
    });
    let layer = crate::support::random(256 << 10, 7);
    let l = a.add_blob("library/slow", layer.clone());
    // Upstream a's body stalls halfway, so its fill is in progress for a while.
    a.set(|s| s.stall_after = Some((128 << 10, std::time::Duration::from_secs(2))));
    let host = srv.host();
    let path = format!("/v2/library/slow/blobs/{l}");
    let first = tokio::spawn(async move { Http::new(&host).get(&path).await });
    let http = Http::new(&srv.host());
    for _ in 0..100 {
        if srv.app.fills.get(&l.parse().expect("digest")).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        srv.app.fills.get(&l.parse().expect("digest")).is_some(),
        "fill started"
    );
    // ghcr.io does not have it: its route does not join a's fill.
    let started = std::time::Instant::now();
    let r = http.get(&format!("/v2/ghcr.io/org/slow/blobs/{l}")).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "served another upstream's fill"
    );
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
    let r = http.head(&format!("/v2/ghcr.io/org/slow/blobs/{l}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "did not wait on the fill"
    );
    // Once it has the digest, the same request joins the fill: no download of its own.
    b.add_blob("org/slow", layer.clone());
    let r = http.get(&format!("/v2/ghcr.io/org/slow/blobs/{l}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &layer[..]);
    assert_eq!(b.blob_gets(&l), 0);
    let r = first.await.expect("first");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &layer[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_provenance_survives_a_restart_and_old_caches_are_confirmed_once() {
    let fake = FakeUpstream::start();
    let url = fake.url();
    let srv = TestServer::start_with(|c| {
        default_upstream(c, &url);
    });
    let http = Http::new(&srv.host());
    let (m, l) = upstream_image(&fake, "library/app", "v1", b"provenance across restarts");
    let paths = [
        format!("/v2/library/app/manifests/{m}"),
        format!("/v2/library/app/blobs/{l}"),
    ];
    for p in &paths {
        assert_eq!(http.get(p).await.status, StatusCode::OK, "{p}");
    }
    // Let the background manifest admission land before stopping.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dir = srv.stop();
    let url2 = url.clone();
    let srv = TestServer::restart_on_with(dir, |c| {
        default_upstream(c, &url2);
    });
    let http = Http::new(&srv.host());
    fake.reset_counters();
    for p in &paths {
        assert_eq!(http.get(p).await.status, StatusCode::OK, "{p}");
    }
    assert_eq!(fake.total_hits(), 0, "provenance was persisted");
    // A cache from before provenance: rows without an upstream.
    let dir = srv.stop();
    let db = rusqlite::Connection::open(dir.path().join("data/meta.db")).expect("meta.db");
    let n = db
        .execute("DELETE FROM cache_origins", [])
        .expect("cache_origins");
    assert!(n >= 2, "{n} provenance rows");
    drop(db);
    let srv = TestServer::restart_on_with(dir, |c| {
        default_upstream(c, &url);
    });
    let http = Http::new(&srv.host());
    fake.reset_counters();
    for _ in 0..2 {
        for p in &paths {
            assert_eq!(http.get(p).await.status, StatusCode::OK, "{p}");
        }
    }
    assert_eq!(
        fake.hits("HEAD", &format!("/v2/library/app/manifests/{m}")),
        1
    );
    assert_eq!(fake.hits("HEAD", &format!("/v2/library/app/blobs/{l}")), 1);
    // Confirmed once, never downloaded again.
    assert_eq!(
        fake.hits("GET", &format!("/v2/library/app/manifests/{m}")),
        0
    );
    assert_eq!(fake.blob_gets(&l), 0);
}

/// The `access` claim of a JWT, names blanked.
fn access_claim(token: &str, blank: &str) -> String {
    let payload = token.split('.').nth(1).expect("jwt payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("claims");
    v["access"].to_string().replace(blank, "X")
}

async fn token_for(http: &Http, who: &str, scope: &str) -> String {
    let path = format!("/token?service=agent-registry&scope={scope}");
    let r = req(http, who, Method::GET, &path, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["token"].as_str().expect("token").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_plain_name_looks_like_one_nobody_pushed() {
    let fake = FakeUpstream::start();
    let url = fake.url();
    let srv = TestServer::start_with(|c| mirror_with_users(c, &url));
    let http = Http::new(&srv.host());
    let (m, l) = push(&http, "plainpriv", "v1", b"a plain private layer").await;
    visibility(&http, "plainpriv", "private").await;
    let mut failures = Vec::new();
    for who in [
        "anonymous",
        "reader",
        "writer",
        "anonymous jwt",
        "reader jwt",
    ] {
        if let Some(base) = who.strip_suffix(" jwt") {
            let a = token_for(&http, base, "repository:plainpriv:pull").await;
            let b = token_for(&http, base, "repository:plainmissing:pull").await;
            let (a, b) = (
                access_claim(&a, "plainpriv"),
                access_claim(&b, "plainmissing"),
            );
            if a != b {
                failures.push(format!("{who}: token grants differ: {a} vs {b}"));
            }
        }
        for (route, method, tail) in [
            ("manifest GET tag", Method::GET, "manifests/v1".to_string()),
            (
                "manifest HEAD tag",
                Method::HEAD,
                "manifests/v1".to_string(),
            ),
            ("manifest GET digest", Method::GET, format!("manifests/{m}")),
            ("blob GET", Method::GET, format!("blobs/{l}")),
            ("blob HEAD", Method::HEAD, format!("blobs/{l}")),
            ("tags", Method::GET, "tags/list".to_string()),
            ("referrers", Method::GET, format!("referrers/{m}")),
            ("bad digest", Method::GET, "blobs/sha256:zz".to_string()),
        ] {
            let mut seen = Vec::new();
            for name in ["plainpriv", "plainmissing"] {
                let id = match who.strip_suffix(" jwt") {
                    Some(base) => {
                        let t = token_for(&http, base, &format!("repository:{name}:pull")).await;
                        format!("Bearer {t}")
                    }
                    None => who.to_string(),
                };
                let r = req(
                    &http,
                    &id,
                    method.clone(),
                    &format!("/v2/{name}/{tail}"),
                    &[],
                )
                .await;
                seen.push((
                    observable(&r, &[name]),
                    String::from_utf8_lossy(&r.body).replace(name, "X"),
                ));
            }
            if seen[0] != seen[1] {
                failures.push(format!(
                    "{who} {route}: private {:?} vs never pushed {:?}",
                    seen[0], seen[1]
                ));
            }
            if matches!(seen[0].0 .0, 200..=299) {
                failures.push(format!("{who} {route}: private plain repository readable"));
            }
        }
    }
    // Whoever may pull it sees the repository, and the upstream's 404 for the other.
    let r = req(
        &http,
        "admin",
        Method::GET,
        "/v2/plainpriv/manifests/v1",
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = req(
        &http,
        "admin",
        Method::GET,
        "/v2/plainmissing/manifests/v1",
        &[],
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_does_not_shadow_the_upstream() {
    let fake = FakeUpstream::start();
    let url = fake.url();
    let srv = TestServer::start_with(|c| mirror_with_users(c, &url));
    let http = Http::new(&srv.host());
    upstream_image(&fake, "library/tool", "v1", b"the upstream's tool");
    let tag = "/v2/tool/manifests/v1";
    assert_eq!(
        req(&http, "admin", Method::GET, tag, &[]).await.status,
        StatusCode::OK
    );
    // Started, patched, asked about, cancelled: nothing stored.
    let r = req(&http, "admin", Method::POST, "/v2/tool/blobs/uploads/", &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let loc = r.header("location").expect("location").to_string();
    let data = Bytes::from_static(b"half a layer");
    let r = req_body(
        &http,
        "admin",
        Method::PATCH,
        &loc,
        &[("content-type", "application/octet-stream")],
        data,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let r = req(&http, "admin", Method::GET, &loc, &[]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    let r = req(&http, "admin", Method::DELETE, &loc, &[]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    // An upload started and abandoned.
    let r = req(&http, "admin", Method::POST, "/v2/tool/blobs/uploads/", &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    // A mount that found nothing to mount (202: an upload starts instead).
    let none = sha(b"not anywhere");
    let r = req(
        &http,
        "admin",
        Method::POST,
        &format!("/v2/tool/blobs/uploads/?mount={none}"),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(!srv.app.storage.is_hosted("tool"), "no content was stored");
    for who in ["admin", "anonymous", "reader"] {
        let r = req(&http, who, Method::GET, tag, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{who}: still the upstream's: {:?}",
            r.body
        );
    }
    // A stored blob does make it hosted (and then it shadows the upstream, by design).
    let r = req_body(
        &http,
        "admin",
        Method::POST,
        &format!("/v2/tool/blobs/uploads/?digest={}", sha(b"a real layer")),
        &[("content-type", "application/octet-stream")],
        Bytes::from_static(b"a real layer"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(srv.app.storage.is_hosted("tool"));
    let r = req(&http, "admin", Method::GET, tag, &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// A bearer JWT for `user` over every repository of the matrix (and the catalog), as
/// renewed by presenting the first one at `/token`.
async fn renewed_jwt(http: &Http, user: &str) -> String {
    let mut path = "/token?service=agent-registry&scope=registry:catalog:*".to_string();
    for name in [
        "agents/pub",
        "agents/priv",
        "plainpriv",
        "up",
        "docker.io/library/up",
        "library/up",
    ] {
        path.push_str(&format!("&scope=repository:{name}:pull,push,delete"));
    }
    let mut auth = basic(user);
    for _ in 0..2 {
        let r = req(http, &auth, Method::GET, &path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "token: {:?}", r.body);
        let token = r.json()["token"].as_str().expect("token").to_string();
        auth = format!("Bearer {token}");
    }
    auth
}

/// A repository kind of the matrix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    HostedPublic,
    HostedPrivate,
    PlainPrivate,
    /// Mirrored, routed by: the default upstream, a path prefix, `?ns=`, the Host header.
    Plain,
    Prefix,
    Ns,
    Host,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::HostedPublic,
        Kind::HostedPrivate,
        Kind::PlainPrivate,
        Kind::Plain,
        Kind::Prefix,
        Kind::Ns,
        Kind::Host,
    ];

    fn hosted(self) -> bool {
        matches!(
            self,
            Kind::HostedPublic | Kind::HostedPrivate | Kind::PlainPrivate
        )
    }

    /// (name in the path, query, extra headers)
    fn route(
        self,
    ) -> (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
    ) {
        match self {
            Kind::HostedPublic => ("agents/pub", "", vec![]),
            Kind::HostedPrivate => ("agents/priv", "", vec![]),
            Kind::PlainPrivate => ("plainpriv", "", vec![]),
            Kind::Plain => ("up", "", vec![]),
            Kind::Prefix => ("docker.io/library/up", "", vec![]),
            Kind::Ns => ("library/up", "?ns=docker.io", vec![]),
            Kind::Host => ("library/up", "", vec![("host", "ghcr.io")]),
        }
    }
}

/// What the matrix expects `who` to get for `action` on `kind`: Ok(status of the
/// allowed request) or Err(status of the refusal).
struct Rules {
    /// `anonymous_pull_mirrored` / `anonymous_pull_public` on.
    open: bool,
}

impl Rules {
    fn refusal(who: &str) -> u16 {
        match who {
            // A bearer JWT is refused with a challenge for the scope it lacks.
            "anonymous" | "revoked" | "renewed" => 401,
            _ => 403,
        }
    }

    /// Whether `who` gets past the access check.
    fn may(&self, who: &str, kind: Kind, pull: bool) -> bool {
        // The writer's JWT, renewed, is worth exactly the writer on its scopes.
        let who = if who == "renewed" { "writer" } else { who };
        match (who, kind) {
            ("revoked", _) => false,
            ("admin", _) => true,
            // Explicitly mirrored names are only ever pulled (writes are 405 after it).
            (_, Kind::Prefix | Kind::Ns | Kind::Host) => who != "anonymous" || self.open,
            ("writer", Kind::HostedPublic | Kind::HostedPrivate) => true,
            (_, Kind::HostedPublic) => pull && (who != "anonymous" || self.open),
            // A plain name: pulled from the upstream by anyone allowed mirrored content,
            // written (which would make it hosted) only with a grant.
            (_, Kind::Plain) => pull && (who != "anonymous" || self.open),
            _ => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix_over_every_route_identity_and_repository_kind() {
    for open in [true, false] {
        matrix(open).await;
    }
}

async fn matrix(open: bool) {
    let fake = FakeUpstream::start();
    let url = fake.url();
    let srv = TestServer::start_with(|c| {
        mirror_with_users(c, &url);
        // The revoked token's every request is a failed authentication.
        c.auth.failures_per_client = 100_000;
        c.auth.failures_per_user = 100_000;
        if !open {
            c.auth.anonymous_pull_mirrored = false;
            c.auth.anonymous_pull_public = false;
            c.auth.default_visibility = Visibility::Private;
        }
    });
    let http = Http::new(&srv.host());
    let rules = Rules { open };
    let mut images = std::collections::HashMap::new();
    images.insert(
        Kind::HostedPublic,
        push(&http, "agents/pub", "v1", b"public layer").await,
    );
    images.insert(
        Kind::HostedPrivate,
        push(&http, "agents/priv", "v1", b"private layer").await,
    );
    images.insert(
        Kind::PlainPrivate,
        push(&http, "plainpriv", "v1", b"plain private layer").await,
    );
    visibility(&http, "agents/pub", "public").await;
    visibility(&http, "agents/priv", "private").await;
    visibility(&http, "plainpriv", "private").await;
    let up = upstream_image(&fake, "library/up", "v1", b"mirrored layer");
    for k in [Kind::Plain, Kind::Prefix, Kind::Ns, Kind::Host] {
        images.insert(k, up.clone());
    }
    let pub_layer = images[&Kind::HostedPublic].1.clone();
    let plain_layer = images[&Kind::PlainPrivate].1.clone();
    let (token, info) = srv
        .app
        .auth
        .store
        .create_token("writer", "agents/*:pull,push,delete", None)
        .expect("token");
    assert!(srv.app.auth.store.revoke_token(&info.id).expect("revoke"));
    let revoked = format!("Bearer {token}");
    let renewed = renewed_jwt(&http, "writer").await;
    let who_auth = |who: &str| -> String {
        match who {
            "revoked" => revoked.clone(),
            "renewed" => renewed.clone(),
            w => w.to_string(),
        }
    };
    let identities = [
        "anonymous",
        "reader",
        "writer",
        "admin",
        "revoked",
        "renewed",
    ];
    let failures = std::cell::RefCell::new(Vec::new());
    let check = |what: String, got: &Resp, want: u16| {
        if got.status.as_u16() != want {
            failures.borrow_mut().push(format!(
                "{what}: {} (want {want}) {:?}",
                got.status,
                String::from_utf8_lossy(&got.body)
            ));
        }
    };

    // Reads.
    for who in identities {
        for kind in Kind::ALL {
            let (name, q, extra) = kind.route();
            let (m, l) = &images[&kind];
            let a = who_auth(who);
            for (route, method, tail) in [
                ("manifest GET tag", Method::GET, "manifests/v1".to_string()),
                (
                    "manifest HEAD tag",
                    Method::HEAD,
                    "manifests/v1".to_string(),
                ),
                ("manifest GET digest", Method::GET, format!("manifests/{m}")),
                (
                    "manifest HEAD digest",
                    Method::HEAD,
                    format!("manifests/{m}"),
                ),
                ("blob GET", Method::GET, format!("blobs/{l}")),
                ("blob HEAD", Method::HEAD, format!("blobs/{l}")),
                ("tags", Method::GET, "tags/list".to_string()),
                ("referrers", Method::GET, format!("referrers/{m}")),
            ] {
                let path = format!("/v2/{name}/{tail}{q}");
                let r = req(&http, &a, method, &path, &extra).await;
                // Whoever may not pull a plain-named hosted repository gets what the
                // default upstream answers for that name (it has none: 404), as for a
                // name nobody pushed; without mirrored access either, the refusal.
                let upstream_view = kind == Kind::PlainPrivate
                    && !matches!(who, "admin" | "revoked")
                    && (who != "anonymous" || open);
                let want = match rules.may(who, kind, true) {
                    false if upstream_view => 404,
                    false => Rules::refusal(who),
                    // The fake upstream has no referrers API.
                    true if route == "referrers" && !kind.hosted() => 404,
                    true => 200,
                };
                check(format!("open={open} {who} {kind:?} {route}"), &r, want);
            }
        }
    }

    // Catalog and search list only what the caller may pull.
    for who in identities {
        let want: Vec<&str> = match who {
            "admin" => vec!["agents/priv", "agents/pub", "plainpriv"],
            "writer" | "renewed" => vec!["agents/priv", "agents/pub"],
            "reader" => vec!["agents/pub"],
            "anonymous" if open => vec!["agents/pub"],
            _ => vec![],
        };
        let a = who_auth(who);
        let r = req(&http, &a, Method::GET, "/v2/_catalog", &[]).await;
        let s = req(&http, &a, Method::GET, "/v2/_search", &[]).await;
        if who == "revoked" {
            check(format!("open={open} {who} catalog"), &r, 401);
            check(format!("open={open} {who} search"), &s, 401);
            continue;
        }
        check(format!("open={open} {who} catalog"), &r, 200);
        check(format!("open={open} {who} search"), &s, 200);
        // The catalog also names the mirrored repositories pulled through, for whoever
        // may pull mirrored content.
        let mut want_catalog = want.clone();
        if who != "anonymous" || open {
            want_catalog.extend(["docker.io/library/up", "ghcr.io/library/up"]);
            want_catalog.sort();
        }
        let got: Vec<String> = serde_json::from_value(r.json()["repositories"].clone())
            .unwrap_or_else(|e| panic!("{who} catalog {e}: {:?}", r.body));
        if got != want_catalog {
            failures.borrow_mut().push(format!(
                "open={open} {who} catalog lists {got:?}, want {want_catalog:?}"
            ));
        }
        let mut found: Vec<String> = s.json()["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["name"].as_str().unwrap_or("").to_string())
            .collect();
        found.sort();
        found.dedup();
        if found != want {
            failures.borrow_mut().push(format!(
                "open={open} {who} search finds {found:?}, want {want:?}"
            ));
        }
    }

    // The base, the token endpoint and the admin API.
    for who in identities {
        let a = who_auth(who);
        let (base, tok, adm) = match who {
            "revoked" => (401, 401, 401),
            "anonymous" => (401, 200, 401),
            "admin" => (200, 200, 200),
            "renewed" => (200, 200, 401),
            _ => (200, 200, 403),
        };
        let r = req(&http, &a, Method::GET, "/v2/", &[]).await;
        check(format!("open={open} {who} /v2/"), &r, base);
        let path = "/token?service=agent-registry&scope=repository:agents/pub:pull";
        let r = req(&http, &a, Method::GET, path, &[]).await;
        check(format!("open={open} {who} /token"), &r, tok);
        for path in [
            "/admin/config",
            "/admin/permissions",
            "/admin/access-logs",
            "/admin/logs?level=warn&since=1h",
            "/admin/audit",
            "/admin/tokens",
            "/admin/visibility?repo=agents/priv",
            "/admin/cache/stats",
        ] {
            let r = req(&http, &a, Method::GET, path, &[]).await;
            check(format!("open={open} {who} GET {path}"), &r, adm);
        }
    }

    // Writes: uploads (start, PATCH, status, PUT, cancel), mounts, manifest PUT.
    let octet = [("content-type", "application/octet-stream")];
    for who in identities {
        for kind in Kind::ALL {
            if who == "admin" && kind == Kind::Plain {
                // A push there would make the name hosted, by design (see the test of
                // cancelled uploads); the other identities are refused.
                continue;
            }
            let (name, q, extra) = kind.route();
            let a = who_auth(who);
            let sep = if q.is_empty() { '?' } else { '&' };
            let tag = |s: &str| format!("open={open} {who} {kind:?} {s}");
            let with = |h: &[(&'static str, &'static str)]| {
                let mut v = extra.clone();
                v.extend_from_slice(h);
                v
            };
            let may = rules.may(who, kind, false);
            let allowed = |ok: u16| match (may, kind.hosted()) {
                (false, _) => Rules::refusal(who),
                (true, false) => 405,
                (true, true) => ok,
            };
            // The session the PATCH/GET/PUT/DELETE rows use: the caller's own when it
            // may push here, else one the admin started (or a made-up one).
            let start = format!("/v2/{name}/blobs/uploads/{q}");
            let r = req(&http, &a, Method::POST, &start, &extra).await;
            check(tag("upload start"), &r, allowed(202));
            let session = match (r.status == StatusCode::ACCEPTED, kind.hosted()) {
                (true, _) => r.header("location").expect("location").to_string(),
                (false, true) => {
                    let r = req(&http, "admin", Method::POST, &start, &[]).await;
                    r.header("location").expect("location").to_string()
                }
                (false, false) => {
                    format!("/v2/{name}/blobs/uploads/5d1a3a7e-94a4-4c5b-9b0b-6c1e2f3a4b5c{q}")
                }
            };
            let data = format!("matrix {open} {who} {kind:?}").into_bytes();
            let r = req_body(
                &http,
                &a,
                Method::PATCH,
                &session,
                &with(&octet),
                data.clone().into(),
            )
            .await;
            check(tag("upload PATCH"), &r, allowed(202));
            let r = req(&http, &a, Method::GET, &session, &extra).await;
            check(tag("upload GET"), &r, allowed(204));
            let s2 = if session.contains('?') { '&' } else { '?' };
            let put = format!("{session}{s2}digest={}", sha(&data));
            let r = req(&http, &a, Method::PUT, &put, &with(&octet)).await;
            check(tag("upload PUT"), &r, allowed(201));
            let r = req(&http, &a, Method::POST, &start, &extra).await;
            let cancel = match r.status == StatusCode::ACCEPTED {
                true => r.header("location").expect("location").to_string(),
                false => session.clone(),
            };
            let r = req(&http, &a, Method::DELETE, &cancel, &extra).await;
            check(tag("upload DELETE"), &r, allowed(204));
            // Mounts: `from` must be readable; without `from` only an admin mounts.
            let from_pub =
                format!("/v2/{name}/blobs/uploads/{q}{sep}mount={pub_layer}&from=agents/pub");
            let r = req(&http, &a, Method::POST, &from_pub, &extra).await;
            check(tag("mount from agents/pub"), &r, allowed(201));
            let from_priv =
                format!("/v2/{name}/blobs/uploads/{q}{sep}mount={plain_layer}&from=plainpriv");
            let r = req(&http, &a, Method::POST, &from_priv, &extra).await;
            let readable = who == "admin";
            check(
                tag("mount from plainpriv"),
                &r,
                allowed(if readable { 201 } else { 202 }),
            );
            let anywhere = format!("/v2/{name}/blobs/uploads/{q}{sep}mount={plain_layer}");
            let r = req(&http, &a, Method::POST, &anywhere, &extra).await;
            check(
                tag("mount without from"),
                &r,
                allowed(if who == "admin" { 201 } else { 202 }),
            );
            // A manifest over the pushed blob (in this repository when allowed).
            let m = image_manifest(
                (&sha(&data), data.len()),
                &[(&sha(&data), data.len())],
                None,
            );
            let path = format!("/v2/{name}/manifests/matrix{q}");
            let r = req_body(
                &http,
                &a,
                Method::PUT,
                &path,
                &with(&[("content-type", MEDIA)]),
                m.into(),
            )
            .await;
            check(tag("manifest PUT"), &r, allowed(201));
        }
    }

    // Deletes last: refusals first, then the allowed ones.
    for who in [
        "anonymous",
        "reader",
        "revoked",
        "renewed",
        "writer",
        "admin",
    ] {
        for kind in Kind::ALL {
            if who == "admin" && kind == Kind::Plain {
                continue;
            }
            if who == "renewed" && rules.may(who, kind, false) {
                continue; // allowed deletes are the writer's, below
            }
            let (name, q, extra) = kind.route();
            let (m, l) = &images[&kind];
            let a = who_auth(who);
            let want = match (rules.may(who, kind, false), kind.hosted()) {
                (false, _) => Rules::refusal(who),
                (true, false) => 405,
                (true, true) => 202,
            };
            if who == "admin" && kind.hosted() && kind != Kind::PlainPrivate {
                continue; // deleted by the writer already
            }
            let path = format!("/v2/{name}/manifests/{m}{q}");
            let r = req(&http, &a, Method::DELETE, &path, &extra).await;
            check(
                format!("open={open} {who} {kind:?} manifest DELETE"),
                &r,
                want,
            );
            let path = format!("/v2/{name}/blobs/{l}{q}");
            let r = req(&http, &a, Method::DELETE, &path, &extra).await;
            check(format!("open={open} {who} {kind:?} blob DELETE"), &r, want);
        }
    }
    let failures = failures.into_inner();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
