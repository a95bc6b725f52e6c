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
        tid: None,
        cli: false,
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
    // Within the old 30 s of leeway, but past the few seconds now allowed.
    let just_expired = auth.sign_claims(&claims(
        "writer",
        "agent-registry",
        now - 20,
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
        ("expired 20 s ago", just_expired),
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
    // A JWT from /token for the API token.
    let (status, jwt) = token_with(&http, &bearer, "repository:agents/a:pull").await;
    assert_eq!(status, StatusCode::OK);
    let jwt = format!("Bearer {jwt}");
    assert_eq!(get_as(&http, &path, &jwt).await.status, StatusCode::OK);
    // Revoked in the store, as `agent-registry token revoke` does from another process.
    assert!(store.revoke_token(&info.id).expect("revoke"));
    // Within the lookup cache's 10 s the revocation takes hold, for the JWT too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = get_as(&http, &path, &bearer).await;
        let j = get_as(&http, &path, &jwt).await;
        if r.status == StatusCode::UNAUTHORIZED && j.status == StatusCode::UNAUTHORIZED {
            let renewed = token_with(&http, &jwt, "repository:agents/a:pull").await;
            assert_eq!(renewed.0, StatusCode::UNAUTHORIZED);
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

/// Runs the `agent` CLI against `srv` with its credentials kept in `cfg_dir`.
pub fn agent(
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

/// The claims of a JWT, unverified (to read `exp`, `access`, `tid`).
fn claims_of(token: &str) -> serde_json::Value {
    let body = token.split('.').nth(1).expect("jwt body");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims json")
}

/// `/token` for `scope` with the `Authorization` header given: (status, token).
async fn token_with(http: &Http, authorization: &str, scope: &str) -> (StatusCode, String) {
    let path = format!("/token?service=agent-registry&scope={scope}");
    let r = get_as(http, &path, authorization).await;
    let t = match r.status.is_success() {
        true => r.json()["token"].as_str().expect("token").to_string(),
        false => String::new(),
    };
    (r.status, t)
}

/// The config in effect with `f` applied, installed as a SIGHUP would.
fn reload(srv: &TestServer, f: impl FnOnce(&mut Config)) {
    let mut cfg = srv.app.config_snapshot();
    f(&mut cfg);
    srv.app.reload(&cfg).expect("reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_revoked_api_tokens_removed_rules_and_deleted_users_stop_working() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let (m, _) = push_image(&http, "agents/priv", "v1", 21).await;
    set_visibility(&http, "agents/priv", "private").await;
    let path = format!("/v2/agents/priv/manifests/{m}");
    let scope = "repository:agents/priv:pull";

    // An API token that expires in 100 s: its JWTs (token_ttl 300 s) end with it, and
    // renewing one never moves `exp` later.
    let expires = agent_registry::auth::store::now_secs() + 100;
    let (api, info) = srv
        .app
        .auth
        .create_token("writer", "agents/*:pull", Some(expires))
        .expect("token");
    let (status, j1) = token_with(&http, &format!("Bearer {api}"), scope).await;
    assert_eq!(status, StatusCode::OK);
    let c1 = claims_of(&j1);
    assert_eq!(c1["tid"], info.id.as_str());
    assert!(c1["exp"].as_u64().expect("exp") <= expires, "{c1}");
    let b1 = format!("Bearer {j1}");
    assert_eq!(get_as(&http, &path, &b1).await.status, StatusCode::OK);
    let (status, j2) = token_with(&http, &b1, scope).await;
    assert_eq!(status, StatusCode::OK);
    let c2 = claims_of(&j2);
    assert!(c2["exp"].as_u64() <= c1["exp"].as_u64(), "{c1} {c2}");
    assert_eq!(c2["tid"], info.id.as_str());
    // A password JWT renewed with itself keeps its own `exp` too.
    let (_, jp) = token_with(&http, &basic("writer"), scope).await;
    let (_, jp2) = token_with(&http, &format!("Bearer {jp}"), scope).await;
    assert!(claims_of(&jp2)["exp"].as_u64() <= claims_of(&jp)["exp"].as_u64());

    // The API token revoked through the admin API: its JWTs neither work nor renew.
    let r = call(
        &http,
        "admin",
        Method::DELETE,
        &format!("/admin/tokens/{}", info.id),
        b"",
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    for j in [&j1, &j2] {
        let b = format!("Bearer {j}");
        let r = get_as(&http, &path, &b).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
        assert!(r
            .header("www-authenticate")
            .is_some_and(|c| c.contains("invalid_token")));
        assert_eq!(
            token_with(&http, &b, scope).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    // A runtime permission removed through the admin API: the JWT it backed loses it.
    let grant = br#"{"repo":"agents/priv","user":"reader","actions":["pull"]}"#;
    let r = call(
        &http,
        "admin",
        Method::POST,
        "/admin/permissions",
        grant,
        "application/json",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (_, jr) = token_with(&http, &basic("reader"), scope).await;
    let br = format!("Bearer {jr}");
    assert_eq!(get_as(&http, &path, &br).await.status, StatusCode::OK);
    let r = call(
        &http,
        "admin",
        Method::DELETE,
        "/admin/permissions",
        grant,
        "application/json",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        get_as(&http, &path, &br).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The writer's rule removed by a reload: the password JWT no longer pulls, and
    // renewing it yields a token that carries nothing.
    let bw = format!("Bearer {jp}");
    assert_eq!(get_as(&http, &path, &bw).await.status, StatusCode::OK);
    reload(&srv, |c| c.auth.rules.retain(|r| r.groups.is_empty()));
    let r = get_as(&http, &path, &bw).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let (status, renewed) = token_with(&http, &bw, scope).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims_of(&renewed)["access"], serde_json::json!([]));
    let r = get_as(&http, &path, &format!("Bearer {renewed}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The admin deleted by a reload: its JWT neither works nor renews.
    let (_, ja) = token_with(&http, &basic("admin"), scope).await;
    let ba = format!("Bearer {ja}");
    assert_eq!(get_as(&http, &path, &ba).await.status, StatusCode::OK);
    reload(&srv, |c| c.auth.users.retain(|u| u.name != "admin"));
    let r = get_as(&http, &path, &ba).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|c| c.contains("invalid_token")));
    assert_eq!(
        token_with(&http, &ba, scope).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_minted_with_a_password_or_api_token_never_a_bearer_jwt() {
    let srv = TestServer::start_with(configure);
    let http = Http::new(&srv.host());
    let body = br#"{"user":"writer","scopes":"agents/*:pull"}"#;
    let mint = |authorization: String| {
        let http = http.clone();
        async move {
            let h = [
                ("authorization", authorization.as_str()),
                ("content-type", "application/json"),
            ];
            http.send(Method::POST, "/admin/tokens", &h, body.to_vec())
                .await
        }
    };
    // An admin JWT reaches the admin API but cannot mint a lasting credential.
    let (status, jwt) = token_with(&http, &basic("admin"), "registry:*:*").await;
    assert_eq!(status, StatusCode::OK);
    let r = get_as(&http, "/admin/tokens", &format!("Bearer {jwt}")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = mint(format!("Bearer {jwt}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(r.error_code(), "DENIED");
    // A password can; so can an admin API token, whose expiry bounds the new one's.
    let r = mint(basic("admin")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.json()["info"]["expires"].is_null());
    let expires = agent_registry::auth::store::now_secs() + 600;
    let (api, _) = srv
        .app
        .auth
        .create_token("admin", "*:admin", Some(expires))
        .expect("token");
    let r = mint(format!("Bearer {api}")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["info"]["expires"].as_u64(), Some(expires));
}

/// Trusted proxy on loopback: `X-Forwarded-For` names the client.
fn behind_proxy(c: &mut Config, per_client: u32, per_user: u32) {
    configure(c);
    c.limits.trusted_proxies = vec![agent_registry::config::IpNet::parse("127.0.0.1").unwrap()];
    c.auth.failures_per_client = per_client;
    c.auth.failures_per_user = per_user;
}

/// GET `path` as `user` with `password` from client `from` (via the trusted proxy).
async fn login_from(http: &Http, from: &str, user: &str, password: &str) -> StatusCode {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let auth = format!("Basic {b}");
    let h = [("authorization", auth.as_str()), ("x-forwarded-for", from)];
    http.send(Method::GET, "/v2/", &h, Bytes::new())
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_are_checked_at_most_the_limit_and_others_get_in() {
    let srv = TestServer::start_with(|c| behind_proxy(c, 10, 5));
    let http = Http::new(&srv.host());
    let before = srv.app.auth.password_checks();
    let guesses: Vec<_> = (0..40)
        .map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                login_from(&http, "203.0.113.7", "writer", &format!("guess{i}")).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.expect("task").as_u16());
    }
    let checked = srv.app.auth.password_checks() - before;
    assert!(checked <= 5, "{checked} bcrypt checks for a limit of 5");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 401).count() <= 5,
        "{statuses:?}"
    );
    // Another user from another client is served, and so is the attacked user from a
    // client that never failed (slowed down, not refused).
    let wait = std::time::Duration::from_secs(20);
    let r = tokio::time::timeout(wait, login_from(&http, "198.51.100.2", "admin", PASSWORD));
    assert_eq!(r.await.expect("admin login waited"), StatusCode::OK);
    let r = tokio::time::timeout(wait, login_from(&http, "198.51.100.3", "writer", PASSWORD));
    assert_eq!(r.await.expect("writer login waited"), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_failures_count_per_client_and_never_lock_a_user_out() {
    // Per client: one forwarded client exhausting its budget does not block another.
    let srv = TestServer::start_with(|c| behind_proxy(c, 3, 100));
    let http = Http::new(&srv.host());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            login_from(&http, "203.0.113.7", "writer", "guess")
                .await
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    assert_eq!(
        login_from(&http, "198.51.100.2", "writer", "guess").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_from(&http, "198.51.100.2", "writer", PASSWORD).await,
        StatusCode::OK
    );
    // The audit log names the forwarded client, not the proxy.
    let audit = wait_for(&http, "/admin/audit?user=writer", |v| {
        v["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x["event"] == "auth_failure" && x["client"] == "203.0.113.7")
        })
    })
    .await;
    assert!(
        !audit.to_string().contains("\"client\":\"127.0.0.1\""),
        "{audit}"
    );
    drop(srv);

    // Per user: hammering a user from one address does not lock its owner out.
    let srv = TestServer::start_with(|c| behind_proxy(c, 100, 3));
    let http = Http::new(&srv.host());
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            login_from(&http, "203.0.113.7", "reader", "guess")
                .await
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    assert_eq!(
        login_from(&http, "198.51.100.9", "reader", PASSWORD).await,
        StatusCode::OK
    );
    // The attacker's address stays refused, even with the right password.
    assert_eq!(
        login_from(&http, "203.0.113.7", "reader", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_longer_than_bcrypt_reads_are_refused() {
    let long = "a".repeat(72);
    let hash = bcrypt::hash(&long, 4).expect("bcrypt");
    let srv = TestServer::start_with(|c| {
        configure(c);
        c.auth.users.push(UserConfig {
            name: "long".into(),
            password_hash: Some(Secret::new(hash)),
            groups: Vec::new(),
        });
    });
    let http = Http::new(&srv.host());
    let login = |pw: String| {
        let http = http.clone();
        async move {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("long:{pw}"));
            get_as(&http, "/admin/whoami", &format!("Basic {b}"))
                .await
                .status
        }
    };
    assert_eq!(login(long.clone()).await, StatusCode::OK);
    // bcrypt would accept this (it reads 72 bytes); the registry does not.
    assert_eq!(
        login(format!("{long}anything")).await,
        StatusCode::UNAUTHORIZED
    );
    // hash-password refuses to make a hash that would cut the password.
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n", "b".repeat(73)).as_bytes())
        .expect("write");
    let o = child.wait_with_output().expect("output");
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("73 bytes") && err.contains("72"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_logged_and_never_local() {
    // The proxy is on loopback; the loopback development mode must not reach through it.
    let srv = TestServer::start_with(|c| {
        behind_proxy(c, 100, 100);
        c.server.hosted_writes = HostedWrites::Loopback;
    });
    let http = Http::new(&srv.host());
    let start = |from: Option<&'static str>| {
        let http = http.clone();
        async move {
            let h: Vec<(&str, &str)> = from.map(|f| ("x-forwarded-for", f)).into_iter().collect();
            http.send(
                Method::POST,
                "/v2/agents/fwd/blobs/uploads/",
                &h,
                Bytes::new(),
            )
            .await
            .status
        }
    };
    assert_eq!(start(None).await, StatusCode::ACCEPTED);
    assert_eq!(start(Some("203.0.113.7")).await, StatusCode::UNAUTHORIZED);
    // The access log and the audit log name the forwarded client.
    let logs = wait_for(&http, "/admin/access-logs?since=1h", |v| {
        v.to_string().contains("\"client\":\"203.0.113.7\"")
    })
    .await;
    assert!(logs.to_string().contains("upload"), "{logs}");
    wait_for(&http, "/admin/audit?since=1h", |v| {
        v["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x["event"] == "denied" && x["client"] == "203.0.113.7")
        })
    })
    .await;
}
