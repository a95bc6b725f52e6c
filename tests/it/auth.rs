//! Access control over HTTP: the permission matrix (every route, catalog and search
//! included, x role x visibility), the
//! token flow, forged and expired tokens, path tricks, brute-force limits, API tokens,
//! the audit and access logs, and the CLI.

use crate::support::http::{image_manifest, Http, Resp};
use crate::support::server::TestServer;
use agent_registry::auth::jwt::{Access, Claims};
use agent_registry::config::{Action, Config, HostedWrites, RuleConfig, Secret, UserConfig};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::process::Command;

pub const PASSWORD: &str = "correct horse battery staple";
const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";

fn user(name: &str, groups: &[&str]) -> UserConfig {
    UserConfig {
        name: name.into(),
        password_hash: Some(Secret::new(bcrypt::hash(PASSWORD, 4).expect("bcrypt"))),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn rule(repos: &[&str], users: &[&str], groups: &[&str], actions: &[Action]) -> RuleConfig {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
    RuleConfig {
        repos: s(repos),
        users: s(users),
        groups: s(groups),
        actions: actions.to_vec(),
    }
}

/// reader: pull on team/* only (so agents/* is public-only for it); writer (group ci):
/// pull, push, delete on agents/*; admin: admin on *. Writes need auth even on loopback.
pub fn configure(c: &mut Config) {
    c.server.hosted_writes = HostedWrites::Auth;
    c.auth.users = vec![
        user("reader", &[]),
        user("writer", &["ci"]),
        user("admin", &[]),
    ];
    c.auth.rules = vec![
        rule(&["team/*"], &["reader"], &[], &[Action::Pull]),
        rule(
            &["agents/*"],
            &[],
            &["ci"],
            &[Action::Pull, Action::Push, Action::Delete],
        ),
        rule(&["*"], &["admin"], &[], &[Action::Admin]),
    ];
}

pub fn basic(user: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}"));
    format!("Basic {b}")
}

async fn call(http: &Http, role: &str, m: Method, path: &str, body: &[u8], ctype: &str) -> Resp {
    let auth = basic(role);
    let mut h: Vec<(&str, &str)> = vec![("content-type", ctype)];
    if role != "anonymous" {
        h.push(("authorization", &auth));
    }
    http.send(m, path, &h, body.to_vec()).await
}

/// Pushes a one-layer image as admin; returns (manifest digest, layer digest).
async fn push_image(http: &Http, repo: &str, tag: &str, seed: u8) -> (String, String) {
    let admin = basic("admin");
    let auth = [("authorization", admin.as_str())];
    let mut digests = Vec::new();
    for data in [vec![seed; 100], vec![seed, seed + 1, 7]] {
        let d = agent_registry::oci::Digest::sha256_of(&data).to_string();
        let path = format!("/v2/{repo}/blobs/uploads/?digest={d}");
        let r = http.send(Method::POST, &path, &auth, data.clone()).await;
        assert_eq!(r.status, StatusCode::CREATED, "{path}: {:?}", r.body);
        digests.push((d, data.len()));
    }
    let m = image_manifest(
        (&digests[1].0, digests[1].1),
        &[(&digests[0].0, digests[0].1)],
        None,
    );
    let h = [("authorization", admin.as_str()), ("content-type", MEDIA)];
    let path = format!("/v2/{repo}/manifests/{tag}");
    let r = http.send(Method::PUT, &path, &h, m.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let md = agent_registry::oci::Digest::sha256_of(&m).to_string();
    (md, digests[0].0.clone())
}

async fn set_visibility(http: &Http, repo: &str, v: &str) {
    let admin = basic("admin");
    let h = [("authorization", admin.as_str())];
    let body = format!("{{\"visibility\":\"{v}\"}}");
    let r = http
        .send(
            Method::PUT,
            &format!("/admin/visibility?repo={repo}"),
            &h,
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

/// The body and Content-Type a matrix row sends: the manifest for a manifest PUT.
fn payload<'a>(route: &str, manifest: &'a [u8]) -> (&'a [u8], &'static str) {
    match route {
        "manifest PUT" => (manifest, MEDIA),
        _ => (b"", "application/octet-stream"),
    }
}

/// (status, OCI error code or "-", WWW-Authenticate with the repository name blanked):
/// what a client can observe of a refusal.
fn observable(r: &Resp, repo: &str) -> (u16, String, String) {
    let code = match r.status.is_client_error() && !r.body.is_empty() {
        true => r.error_code(),
        false => "-".into(),
    };
    let challenge = r
        .header("www-authenticate")
        .unwrap_or("")
        .replace(repo, "REPO");
    (r.status.as_u16(), code, challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_matrix_over_every_route_role_and_visibility() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let (pub_m, pub_l) = push_image(&http, "agents/pub", "v1", 1).await;
    let (priv_m, priv_l) = push_image(&http, "agents/priv", "v1", 3).await;
    set_visibility(&http, "agents/priv", "private").await;
    // Uploads in progress, one per repository, for the PATCH/PUT/GET/DELETE rows.
    let admin = basic("admin");
    let mut sessions = std::collections::HashMap::new();
    // A made-up session for the repository nobody pushed to (starting one would create it).
    sessions.insert(
        "agents/missing",
        "/v2/agents/missing/blobs/uploads/5d1a3a7e-94a4-4c5b-9b0b-6c1e2f3a4b5c".to_string(),
    );
    for repo in ["agents/pub", "agents/priv"] {
        let r = http
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &[("authorization", admin.as_str())],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        sessions.insert(repo, r.header("location").expect("location").to_string());
    }
    let new_manifest = {
        let l = pub_l.clone();
        image_manifest((&l, 100), &[(&l, 100)], None)
    };
    let roles = ["anonymous", "reader", "writer", "admin"];
    struct Case {
        route: &'static str,
        action: Action,
        method: Method,
        path: String,
    }
    let cases = |repo: &str, manifest: &str, layer: &str| -> Vec<Case> {
        let upload = sessions[repo].clone();
        let upload = upload
            .strip_prefix(&format!("http://{}", srv.host()))
            .map(str::to_string)
            .unwrap_or(upload);
        let sep = if upload.contains('?') { '&' } else { '?' };
        vec![
            Case { route: "manifest GET tag", action: Action::Pull, method: Method::GET, path: format!("/v2/{repo}/manifests/v1") },
            Case { route: "manifest HEAD digest", action: Action::Pull, method: Method::HEAD, path: format!("/v2/{repo}/manifests/{manifest}") },
            Case { route: "blob GET", action: Action::Pull, method: Method::GET, path: format!("/v2/{repo}/blobs/{layer}") },
            Case { route: "blob HEAD", action: Action::Pull, method: Method::HEAD, path: format!("/v2/{repo}/blobs/{layer}") },
            Case { route: "tags", action: Action::Pull, method: Method::GET, path: format!("/v2/{repo}/tags/list") },
            Case { route: "referrers", action: Action::Pull, method: Method::GET, path: format!("/v2/{repo}/referrers/{manifest}") },
            Case { route: "upload status", action: Action::Push, method: Method::GET, path: upload.clone() },
            Case { route: "upload PATCH", action: Action::Push, method: Method::PATCH, path: upload.clone() },
            Case { route: "upload start", action: Action::Push, method: Method::POST, path: format!("/v2/{repo}/blobs/uploads/") },
            Case { route: "mount", action: Action::Push, method: Method::POST, path: format!("/v2/{repo}/blobs/uploads/?mount={layer}&from=agents/pub") },
            Case { route: "manifest PUT", action: Action::Push, method: Method::PUT, path: format!("/v2/{repo}/manifests/v2") },
            Case { route: "upload PUT", action: Action::Push, method: Method::PUT, path: format!("{upload}{sep}digest=sha256:0000000000000000000000000000000000000000000000000000000000000000") },
            Case { route: "upload DELETE", action: Action::Push, method: Method::DELETE, path: upload },
            Case { route: "manifest DELETE", action: Action::Delete, method: Method::DELETE, path: format!("/v2/{repo}/manifests/{manifest}") },
            Case { route: "blob DELETE", action: Action::Delete, method: Method::DELETE, path: format!("/v2/{repo}/blobs/{layer}") },
        ]
    };
    let may = |role: &str, repo: &str, action: Action| -> bool {
        match role {
            "admin" => true,
            "writer" => true, // agents/* grant
            "reader" | "anonymous" => action == Action::Pull && repo == "agents/pub",
            _ => false,
        }
    };
    let mut failures = Vec::new();
    // Deletes go last (they change what the other rows see); run reads and writes per
    // role on fresh state by ordering: anonymous and reader first (they change nothing).
    for role in roles {
        for (repo, m, l) in [
            ("agents/pub", &pub_m, &pub_l),
            ("agents/priv", &priv_m, &priv_l),
            ("agents/missing", &pub_m, &pub_l),
        ] {
            if role == "writer" || role == "admin" {
                // Allowed everywhere; checked for deletes by the dedicated test below.
                continue;
            }
            for c in cases(repo, m, l) {
                let (body, ctype) = payload(c.route, &new_manifest);
                let r = call(&http, role, c.method.clone(), &c.path, body, ctype).await;
                let allowed = may(role, repo, c.action);
                let refused = matches!(r.status.as_u16(), 401 | 403);
                if allowed && refused {
                    failures.push(format!(
                        "{role} {} {repo}: denied ({}), should be allowed",
                        c.route, r.status
                    ));
                }
                if !allowed && !refused {
                    failures.push(format!(
                        "{role} {} {repo}: allowed ({}), should be denied",
                        c.route, r.status
                    ));
                }
                if !allowed && repo == "agents/priv" {
                    // The refusal must look exactly like the one for a missing repository.
                    let missing = cases("agents/missing", m, l)
                        .into_iter()
                        .find(|x| x.route == c.route)
                        .expect("same route");
                    let rm = call(&http, role, missing.method, &missing.path, body, ctype).await;
                    let (a, b) = (observable(&r, repo), observable(&rm, "agents/missing"));
                    if a != b {
                        failures.push(format!(
                            "{role} {}: private {a:?} differs from missing {b:?}",
                            c.route
                        ));
                    }
                }
            }
        }
    }
    // Writers and admins: every row allowed on both visibilities (deletes last).
    for role in ["writer", "admin"] {
        for (repo, m, l) in [
            ("agents/pub", &pub_m, &pub_l),
            ("agents/priv", &priv_m, &priv_l),
        ] {
            for c in cases(repo, m, l)
                .into_iter()
                .filter(|c| c.action != Action::Delete)
            {
                let (body, ctype) = payload(c.route, &new_manifest);
                let r = call(&http, role, c.method.clone(), &c.path, body, ctype).await;
                if matches!(r.status.as_u16(), 401 | 403) {
                    failures.push(format!("{role} {} {repo}: denied ({})", c.route, r.status));
                }
            }
        }
    }
    // The catalog lists only what the role may pull.
    for (role, want) in [
        ("anonymous", vec!["agents/pub"]),
        ("reader", vec!["agents/pub"]),
        ("writer", vec!["agents/priv", "agents/pub"]),
        ("admin", vec!["agents/priv", "agents/pub"]),
    ] {
        let r = call(&http, role, Method::GET, "/v2/_catalog", b"", "").await;
        assert_eq!(r.status, StatusCode::OK);
        let got: Vec<String> =
            serde_json::from_value(r.json()["repositories"].clone()).expect("list");
        assert_eq!(got, want, "catalog for {role}");
    }
    // The admin API: admin only; anonymous is challenged, users are refused.
    for (role, want) in [
        ("anonymous", 401),
        ("reader", 403),
        ("writer", 403),
        ("admin", 200),
    ] {
        for path in [
            "/admin/config",
            "/admin/permissions",
            "/admin/access-logs",
            "/admin/audit",
            "/admin/tokens",
            "/admin/visibility?repo=agents/priv",
            "/admin/cache/stats",
        ] {
            let r = call(&http, role, Method::GET, path, b"", "").await;
            if r.status.as_u16() != want {
                failures.push(format!("{role} GET {path}: {} (want {want})", r.status));
            }
        }
        let r = call(
            &http,
            role,
            Method::POST,
            "/admin/permissions",
            br#"{"repo":"agents/x","user":"reader","actions":["pull"]}"#,
            "application/json",
        )
        .await;
        let want_post = if role == "admin" { 200 } else { want };
        if r.status.as_u16() != want_post {
            failures.push(format!("{role} POST /admin/permissions: {}", r.status));
        }
    }
    // Deletes: refused to reader on both, allowed to writer.
    for (repo, m) in [("agents/pub", &pub_m), ("agents/priv", &priv_m)] {
        let path = format!("/v2/{repo}/manifests/{m}");
        let r = call(&http, "reader", Method::DELETE, &path, b"", "").await;
        assert!(
            matches!(r.status.as_u16(), 401 | 403),
            "reader delete {repo}: {}",
            r.status
        );
        let r = call(&http, "writer", Method::DELETE, &path, b"", "").await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "writer delete {repo}: {:?}",
            r.body
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// GET `path` with an `Authorization` header.
async fn get_as(http: &Http, path: &str, authorization: &str) -> Resp {
    http.send(
        Method::GET,
        path,
        &[("authorization", authorization)],
        Bytes::new(),
    )
    .await
}

/// A token from `/token` for `scope`, with or without credentials.
async fn token(http: &Http, role: &str, scope: &str) -> String {
    let auth = basic(role);
    let mut h = vec![];
    if role != "anonymous" {
        h.push(("authorization", auth.as_str()));
    }
    let path = format!("/token?service=agent-registry&scope={scope}");
    let r = http.send(Method::GET, &path, &h, Bytes::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["token"].as_str().expect("token").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_grants_only_what_the_rules_allow() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let (m, _) = push_image(&http, "agents/priv", "v1", 5).await;
    set_visibility(&http, "agents/priv", "private").await;
    // /v2/ challenges anonymous clients once users exist.
    let r = http.get("/v2/").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let c = r.header("www-authenticate").expect("challenge");
    assert!(
        c.starts_with("Bearer realm=\"http://")
            && c.contains("/token\",service=\"agent-registry\""),
        "{c}"
    );
    // The writer's token pulls; the reader's token for the same scope carries nothing.
    let path = format!("/v2/agents/priv/manifests/{m}");
    let w = token(&http, "writer", "repository:agents/priv:pull,push").await;
    let bearer = format!("Bearer {w}");
    let r = get_as(&http, &path, &bearer).await;
    assert_eq!(r.status, StatusCode::OK);
    let rd = token(&http, "reader", "repository:agents/priv:pull").await;
    let bearer = format!("Bearer {rd}");
    let r = get_as(&http, &path, &bearer).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let c = r.header("www-authenticate").expect("challenge");
    assert!(
        c.contains("scope=\"repository:agents/priv:pull\"")
            && c.contains("error=\"insufficient_scope\""),
        "{c}"
    );
    // Wrong password at /token: 401, counted.
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("writer:nope")
    );
    let r = get_as(&http, "/token?scope=repository:agents/priv:pull", &bad).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    // The OAuth2 POST form (containerd) works too.
    let form = format!("grant_type=password&username=writer&password={}&service=agent-registry&scope=repository:agents/priv:pull", PASSWORD.replace(' ', "+"));
    let r = http
        .send(
            Method::POST,
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let t = r.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let bearer = format!("Bearer {t}");
    let r = get_as(&http, &path, &bearer).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tampered_foreign_and_wrong_scope_tokens_are_refused() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let (m, _) = push_image(&http, "agents/priv", "v1", 9).await;
    set_visibility(&http, "agents/priv", "private").await;
    let path = format!("/v2/agents/priv/manifests/{m}");
    let now = agent_registry::auth::store::now_secs();
    let claims = |sub: &str, aud: &str, exp: u64, name: &str, actions: &[&str]| Claims {
        iss: "agent-registry".into(),
        sub: sub.into(),
        aud: aud.into(),
        exp,
        nbf: now - 10,
        iat: now - 10,
        jti: "t".into(),
        access: vec![Access {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }],
    };
    let get = |t: String| {
        let http = http.clone();
        let path = path.clone();
        async move {
            let h = format!("Bearer {t}");
            get_as(&http, &path, &h).await
        }
    };
    let auth = &srv.app.auth;
    // A good token works: the forging helper signs like /token does.
    let good = auth.sign_claims(&claims(
        "writer",
        "agent-registry",
        now + 300,
        "agents/priv",
        &["pull"],
    ));
    assert_eq!(get(good.clone()).await.status, StatusCode::OK);
    let expired = auth.sign_claims(&claims(
        "writer",
        "agent-registry",
        now - 120,
        "agents/priv",
        &["pull"],
    ));
    let wrong_aud = auth.sign_claims(&claims(
        "writer",
        "other-registry",
        now + 300,
        "agents/priv",
        &["pull"],
    ));
    let wrong_scope = auth.sign_claims(&claims(
        "writer",
        "agent-registry",
        now + 300,
        "agents/pub",
        &["pull"],
    ));
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&claims(
            "writer",
            "agent-registry",
            now + 300,
            "agents/priv",
            &["pull", "push", "delete"],
        ))
        .unwrap(),
    );
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let other_key = agent_registry::auth::jwt::Keys::from_bytes(&[42; 32]).sign(&claims(
        "writer",
        "agent-registry",
        now + 300,
        "agents/priv",
        &["pull"],
    ));
    for (what, t) in [
        ("expired", expired),
        ("audience", wrong_aud),
        ("scope", wrong_scope),
        ("tampered", tampered),
        ("foreign key", other_key),
        ("garbage", "x.y.z".into()),
    ] {
        let r = get(t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(r.error_code(), "UNAUTHORIZED", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_do_not_get_around_a_rule() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let (m, _) = push_image(&http, "agents/priv", "v1", 11).await;
    set_visibility(&http, "agents/priv", "private").await;
    // The reader may pull team/*; none of these reach agents/priv.
    for path in [
        format!("/v2/team/../agents/priv/manifests/{m}"),
        format!("/v2/team/..%2fagents/priv/manifests/{m}"),
        format!("/v2/team%2f..%2fagents/priv/manifests/{m}"),
        format!("/v2/team//agents/priv/manifests/{m}"),
        format!("/v2/Agents/Priv/manifests/{m}"),
        format!("/v2/AGENTS/priv/manifests/{m}"),
        format!("/v2/agents/priv/manifests/{m}"),
        format!("/v2/agents//priv/manifests/{m}"),
        format!("/v2/./agents/priv/manifests/{m}"),
        format!("/v2/agents/priv/./manifests/{m}"),
        format!("/v2/agents%2fpriv/manifests/{m}"),
    ] {
        let r = call(&http, "reader", Method::GET, &path, b"", "").await;
        assert!(!r.status.is_success(), "{path}: {}", r.status);
        // Nothing of the manifest leaks in any answer.
        assert!(
            !String::from_utf8_lossy(&r.body).contains("schemaVersion"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_and_counted_and_audited() {
    let srv = TestServer::start_with(|c| {
        configure(c);
        c.auth.failures_per_user = 3;
        c.auth.failures_per_client = 100;
    });
    let http = Http::new(&srv.host());
    let bad = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("writer:guess")
    );
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = get_as(&http, "/v2/agents/x/tags/list", &bad).await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.header("retry-after").is_some());
            assert_eq!(r.error_code(), "TOOMANYREQUESTS");
        }
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Even the right password waits out the block for this user.
    let r = call(
        &http,
        "writer",
        Method::GET,
        "/v2/agents/x/tags/list",
        b"",
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Another user from the same client is not blocked.
    let r = call(&http, "admin", Method::GET, "/admin/whoami", b"", "").await;
    assert_eq!(r.status, StatusCode::OK);
    let metrics = String::from_utf8_lossy(&http.get("/metrics").await.body).to_string();
    assert!(
        metrics.contains("agent_registry_auth_failures_total{reason=\"bad_password\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("agent_registry_auth_failures_total{reason=\"blocked\"}"));
    // The audit log has the failures, and never the password.
    let audit = wait_for(&http, "/admin/audit?user=writer", |v| {
        v["events"]
            .as_array()
            .is_some_and(|e| e.iter().filter(|x| x["event"] == "auth_failure").count() >= 3)
    })
    .await;
    assert!(!audit.to_string().contains("guess"));
}

/// GETs an admin endpoint as admin until `ok` holds (the log writer batches).
async fn wait_for(
    http: &Http,
    path: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = call(http, "admin", Method::GET, path, b"", "").await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
        let v = r.json();
        if ok(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{path}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_act_within_their_scope_and_revocation_sticks() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let store = &srv.app.auth.store;
    // Scope narrower than the writer's rights: pull only.
    let (t, info) = store
        .create_token("writer", "agents/*:pull", None)
        .expect("token");
    let bearer = format!("Bearer {t}");
    let (m, _) = push_image(&http, "agents/a", "v1", 13).await;
    let path = format!("/v2/agents/a/manifests/{m}");
    let r = get_as(&http, &path, &bearer).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = http
        .send(
            Method::POST,
            "/v2/agents/a/blobs/uploads/",
            &[("authorization", &bearer)],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "push beyond the token's scope"
    );
    // As a Basic password too (for clients that only speak Basic).
    let b = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("token:{t}"))
    );
    let r = get_as(&http, &path, &b).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(store.revoke_token(&info.id).expect("revoke"));
    // Within the lookup cache's 10 s the revocation takes hold.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = get_as(&http, &path, &bearer).await;
        if r.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revoked token still works"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_users_the_mirror_is_pull_only_and_v2_stays_open() {
    let srv = TestServer::start_with(|c| c.server.hosted_writes = HostedWrites::Auth);
    let http = Http::new(&srv.host());
    assert_eq!(http.get("/v2/").await.status, StatusCode::OK);
    let r = http
        .send(
            Method::POST,
            "/v2/agents/x/blobs/uploads/",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|c| c.contains("scope=\"repository:agents/x:pull,push\"")));
}

fn agent(
    srv: &TestServer,
    cfg_dir: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .env("AGENT_REGISTRY_URL", srv.url(""))
        .env("AGENT_CONFIG_DIR", cfg_dir)
        .env_remove("AGENT_REGISTRY_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("agent output")
}

#[test]
fn cli_login_permissions_access_logs_and_config_show() {
    let srv = TestServer::start_with(configure);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // A wrong password: one line with the cause, nothing stored.
    let o = agent(
        &srv,
        dir.path(),
        &["login", "-u", "admin", "--password-stdin"],
        Some("wrong\n"),
    );
    assert!(!o.status.success());
    assert!(
        out(&o).starts_with("agent: authentication failed"),
        "{}",
        out(&o)
    );
    assert!(!dir.path().join("auth.json").exists());
    let o = agent(
        &srv,
        dir.path(),
        &["login", "-u", "admin", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", out(&o));
    let mode = std::fs::metadata(dir.path().join("auth.json"))
        .expect("auth.json")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let o = agent(&srv, dir.path(), &["registry", "auth", "test"], None);
    assert!(out(&o).contains("authenticated as admin"), "{}", out(&o));
    // The seed's command: john may read my-agent.
    let o = agent(
        &srv,
        dir.path(),
        &[
            "registry",
            "permission",
            "add",
            "my-agent:latest",
            "--user",
            "john",
            "--permission",
            "read",
        ],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains("my-agent: user john may now pull"),
        "{}",
        out(&o)
    );
    let o = agent(
        &srv,
        dir.path(),
        &["registry", "permission", "list", "my-agent"],
        None,
    );
    assert!(
        out(&o).contains("my-agent")
            && out(&o).contains("user john")
            && out(&o).contains("runtime"),
        "{}",
        out(&o)
    );
    assert_eq!(
        srv.app.auth.rights("john", &[], "my-agent").names(),
        ["pull"]
    );
    let o = agent(
        &srv,
        dir.path(),
        &[
            "registry",
            "permission",
            "remove",
            "my-agent",
            "--user",
            "john",
        ],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(srv.app.auth.rights("john", &[], "my-agent").is_empty());
    // Config show: admin only, secrets redacted.
    let o = agent(&srv, dir.path(), &["registry", "config", "show"], None);
    assert!(o.status.success(), "{}", out(&o));
    let shown = out(&o);
    assert!(
        shown.contains("[auth]") && shown.contains("<redacted>") && !shown.contains("$2"),
        "{shown}"
    );
    // The access log answers the seed's query.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let o = agent(
            &srv,
            dir.path(),
            &[
                "registry",
                "access-logs",
                "--user",
                "admin",
                "--since",
                "24h",
            ],
            None,
        );
        assert!(o.status.success(), "{}", out(&o));
        if out(&o).contains("/admin") || out(&o).contains("admin ") && out(&o).lines().count() > 2 {
            assert!(
                out(&o)
                    .lines()
                    .skip(1)
                    .all(|l| l.split_whitespace().nth(1) == Some("admin")),
                "{}",
                out(&o)
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", out(&o));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A user without admin gets a one-line refusal.
    let other = tempfile::tempdir().expect("tempdir");
    let o = agent(
        &srv,
        other.path(),
        &["login", "-u", "reader", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = agent(&srv, other.path(), &["registry", "config", "show"], None);
    assert!(!o.status.success());
    assert_eq!(
        out(&o).trim(),
        "agent: config show: permission denied: this needs admin on the registry"
    );
}

#[test]
fn server_cli_tokens_are_shown_once_and_stored_hashed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_agent-registry"))
            .args(args)
            .env("AGENT_REGISTRY_STORAGE_DATA_DIR", &data)
            .output()
            .expect("agent-registry")
    };
    let o = run(&[
        "token",
        "create",
        "--user",
        "ci",
        "--scope",
        "agents/*:pull,push",
        "--expires",
        "90d",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(token.starts_with("agr_"), "{token}");
    let o = run(&["token", "list"]);
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        list.contains("ci") && list.contains("active") && !list.contains(&token),
        "{list}"
    );
    let id = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("id")
        .to_string();
    let o = run(&["token", "revoke", &id]);
    assert!(o.status.success());
    let o = run(&["token", "list", "--user", "ci"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("revoked"));
    // Both changes are in the audit log, without the token.
    let store = agent_registry::auth::store::Store::open(&data).expect("store");
    let events = store.audit_log(None, 0, 100).expect("audit");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["token_created", "token_revoked"]);
    assert!(events.iter().all(|e| !format!("{e:?}").contains(&token)));
    let o = run(&["token", "create", "--user", "ci", "--scope", "nocolon"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("PATTERN:ACTIONS"));
    // hash-password makes a hash the config accepts.
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret\n")
        .expect("write");
    let o = child.wait_with_output().expect("output");
    let hash = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(bcrypt::verify("s3cret", &hash).expect("bcrypt"));
}
