//! Pull policies enforced by the server (`[policy]`, `agent registry policy`): signatures
//! made by this project's `agent push --sign`, vulnerability reports attached by oras-py,
//! for hosted repositories and, at the edge, for a mirror in front of Debian's
//! `docker-registry`.

use crate::signing::{generate, push_signed};
use crate::support::agent::{text, Home};
use crate::support::http::{Http, Resp};
use crate::support::image as img;
use crate::support::server::TestServer;
use crate::support::tools;
use agent_registry::config::SignaturePolicy;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn send(host: &str, method: http::Method, path: &str) -> Resp {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Http::new(host).send(
        method,
        path,
        &[("accept", img::MANIFEST_V1)],
        bytes::Bytes::new(),
    ))
}

fn get(host: &str, path: &str) -> Resp {
    send(host, http::Method::GET, path)
}

fn rule(repos: &[&str], key: &Path, enforce: bool) -> SignaturePolicy {
    SignaturePolicy {
        repos: repos.iter().map(|s| s.to_string()).collect(),
        keys: vec![key.to_path_buf()],
        enforce,
    }
}

fn assert_refused(r: &Resp, want: &str) {
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.error_code(), "DENIED", "{:?}", r.body);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("refused by policy"), "{body}");
    assert!(body.contains(want), "{body}");
}

fn denied_count(host: &str, policy: &str) -> f64 {
    let m = get(host, "/metrics");
    let text = String::from_utf8_lossy(&m.body).to_string();
    let prefix = format!("agent_registry_policy_denied_total{{policy=\"{policy}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// The audit records of event `event` once there are `n` (anonymous loopback clients
/// are admins; records are written in the background).
fn audited(host: &str, event: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = get(host, "/admin/audit?since=1h").json();
        let found: Vec<Value> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == event)
            .cloned()
            .collect();
        if found.len() >= n || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn hosted_signature_policy_serves_signed_images_and_refuses_the_rest() {
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    let (other_key, _) = generate(&home, keys.path(), "other");
    let srv = TestServer::start_with(|c| {
        c.policy.signatures = vec![rule(&["agents/prod/*"], &public, true)];
    });
    let host = srv.host();

    img::single_image(&home.images(), "agents/prod/app:1", 61, &[700]);
    let (signed, _) = push_signed(&home, &host, "agents/prod/app:1", &key);
    let r = get(&host, "/v2/agents/prod/app/manifests/1");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("docker-content-digest"), Some(signed.as_str()));
    // A pull by the `agent` client goes through too.
    let puller = Home::new();
    puller.ok(&["pull", &format!("{host}/agents/prod/app:1")]);

    // Unsigned: refused on GET and HEAD, audited, counted.
    let before = denied_count(&host, "signature");
    img::single_image(&home.images(), "agents/prod/app:2", 62, &[700]);
    home.ok(&["push", "agents/prod/app:2", "--registry", &host]);
    assert_refused(&get(&host, "/v2/agents/prod/app/manifests/2"), "not signed");
    let head = send(&host, http::Method::HEAD, "/v2/agents/prod/app/manifests/2");
    assert_eq!(head.status, 403);
    // The recorder is the process's, shared with the policy tests running beside this one:
    // at least this test's two refusals were counted.
    assert!(denied_count(&host, "signature") >= before + 2.0);
    let records = audited(&host, "policy_denied", 2);
    assert!(
        records.iter().any(|e| e["repo"] == "agents/prod/app"
            && e["detail"].as_str().unwrap().contains("not signed")),
        "{records:?}"
    );
    let o = Home::new().run(&["pull", &format!("{host}/agents/prod/app:2")]);
    assert!(!o.status.success(), "{}", text(&o.stdout));

    // The signature of image 1 put under image 2's .sig tag: it names another digest.
    let info2 = img::single_image(&home.images(), "agents/prod/app:2", 62, &[700]);
    let sig1 = get(
        &host,
        &format!("/v2/agents/prod/app/manifests/sha256-{}.sig", &signed[7..]),
    );
    assert_eq!(sig1.status, 200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = rt.block_on(Http::new(&host).send(
        http::Method::PUT,
        &format!(
            "/v2/agents/prod/app/manifests/sha256-{}.sig",
            &info2.manifest_digest[7..]
        ),
        &[("content-type", img::MANIFEST_V1)],
        sig1.body.clone(),
    ));
    assert_eq!(put.status, 201, "{:?}", put.body);
    assert_refused(
        &get(&host, "/v2/agents/prod/app/manifests/2"),
        &format!("the signature is for {signed}"),
    );

    // Signed with a key the policy does not list.
    img::single_image(&home.images(), "agents/prod/app:3", 63, &[700]);
    push_signed(&home, &host, "agents/prod/app:3", &other_key);
    assert_refused(
        &get(&host, "/v2/agents/prod/app/manifests/3"),
        "does not verify",
    );

    // Outside the rule's repositories nothing is required.
    img::single_image(&home.images(), "agents/dev/app:1", 64, &[700]);
    home.ok(&["push", "agents/dev/app:1", "--registry", &host]);
    assert_eq!(get(&host, "/v2/agents/dev/app/manifests/1").status, 200);
}

#[test]
fn warn_mode_serves_and_counts() {
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (_, public) = generate(&home, keys.path(), "cosign");
    let srv = TestServer::start_with(|c| {
        c.policy.signatures = vec![rule(&["agents/*"], &public, false)];
    });
    let host = srv.host();
    img::single_image(&home.images(), "agents/warned:1", 65, &[300]);
    home.ok(&["push", "agents/warned:1", "--registry", &host]);
    let r = get(&host, "/v2/agents/warned/manifests/1");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m = String::from_utf8_lossy(&get(&host, "/metrics").body).to_string();
    assert!(
        m.contains("agent_registry_policy_warnings_total{policy=\"signature\"}"),
        "{m}"
    );
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scan")
        .join(name)
}

/// oras-py attaches `report` (SARIF) to `repo:tag` as a referrer.
fn oras_attach(host: &str, repo: &str, tag: &str, report: &str) {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("report.sarif"), report).unwrap();
    let script = work.path().join("attach.py");
    std::fs::write(&script, crate::scanning::ORAS_ATTACH).unwrap();
    let o = tools::command("python3")
        .arg(&script)
        .args([host, repo, tag])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "oras-py: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn vulnerability_policy_reads_reports_attached_by_oras_py() {
    if !tools::require("oras") {
        return;
    }
    let srv = TestServer::start();
    let host = srv.host();
    let reg = ["--registry", host.as_str()];
    let home = Home::new();
    // The Trivy SARIF fixture with its critical finding made high: 2 high findings.
    let sarif = std::fs::read_to_string(fixture("trivy.sarif.json"))
        .unwrap()
        .replace("\"9.8\"", "\"7.5\"")
        .replace("\"CRITICAL\"", "\"HIGH\"");
    img::single_image(&home.images(), "agents/vuln:1", 71, &[500]);
    home.ok(&["push", "agents/vuln:1", "--registry", &host]);
    oras_attach(&host, "agents/vuln", "1", &sarif);
    img::single_image(&home.images(), "agents/vuln:2", 72, &[500]);
    home.ok(&["push", "agents/vuln:2", "--registry", &host]);

    // No policy yet: both served.
    assert_eq!(get(&host, "/v2/agents/vuln/manifests/1").status, 200);

    // policy set (admin: anonymous loopback), show, then enforced on the next request.
    let before = denied_count(&host, "vulnerability");
    let set = |args: &[&str]| {
        let mut a = vec!["registry", "policy", "set"];
        a.extend_from_slice(args);
        a.extend_from_slice(&reg);
        home.ok(&a)
    };
    set(&["--block-vulnerabilities", "high"]);
    let shown = home.json(&["registry", "policy", "show", "--json", reg[0], reg[1]]);
    assert_eq!(shown["block_vulnerabilities"], "high", "{shown}");
    assert_eq!(shown["unscanned"], "allow", "{shown}");
    assert_refused(
        &get(&host, "/v2/agents/vuln/manifests/1"),
        "2 high vulnerabilities at or above high in report sha256:",
    );
    // (The recorder is shared with concurrent tests: at least this refusal.)
    assert!(denied_count(&host, "vulnerability") >= before + 1.0);
    // No report, unscanned = "allow": served.
    assert_eq!(get(&host, "/v2/agents/vuln/manifests/2").status, 200);

    // Under "critical" the high findings pass.
    set(&["--block-vulnerabilities", "critical"]);
    assert_eq!(get(&host, "/v2/agents/vuln/manifests/1").status, 200);

    // unscanned = "block" refuses the image with no report, not the one with one.
    set(&["--unscanned", "block"]);
    assert_refused(
        &get(&host, "/v2/agents/vuln/manifests/2"),
        "has no vulnerability report",
    );
    assert_eq!(get(&host, "/v2/agents/vuln/manifests/1").status, 200);
    assert_eq!(audited(&host, "policy_set", 3).len(), 3);

    // clear: the config's (none) applies again.
    home.ok(&["registry", "policy", "clear", reg[0], reg[1]]);
    assert_eq!(get(&host, "/v2/agents/vuln/manifests/2").status, 200);
    assert_eq!(audited(&host, "policy_cleared", 1).len(), 1);
    let out = home.ok(&["registry", "policy", "show", reg[0], reg[1]]);
    assert!(out.contains("Block vulnerabilities: none"), "{out}");
}

#[test]
fn a_policy_set_at_run_time_survives_a_restart_and_needs_admin() {
    let srv = TestServer::start_with(crate::auth::configure);
    let host = srv.host();
    let dir = tempfile::tempdir().unwrap();
    let as_user = |user: &str, args: &[&str]| {
        let mut a = vec!["registry", "policy"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--registry", &host]);
        tools::command(env!("CARGO_BIN_EXE_agent"))
            .args(&a)
            .env("AAC_HOME", dir.path())
            .env("DOCKER_USERNAME", user)
            .env("DOCKER_PASSWORD", crate::auth::PASSWORD)
            .output()
            .unwrap()
    };
    let o = as_user("reader", &["set", "--block-vulnerabilities", "high"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("permission denied: this needs admin"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(srv.app.policy.vulnerabilities().block, None);
    let o = as_user("admin", &["set", "--block-vulnerabilities", "high"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let version = srv.app.policy.version();
    let dir2 = srv.stop();
    let again = TestServer::restart_on_with(dir2, crate::auth::configure);
    assert_eq!(
        again.app.policy.vulnerabilities().block,
        Some(agent_registry::scan::Severity::High)
    );
    let _ = version;
}

/// The edge: a mirror in front of CNCF distribution (Debian's `docker-registry`, no
/// referrers API) that only serves images the policy's key signed. The image and its
/// signature are pushed there by this project's `agent push --sign`; the mirror fetches
/// the `.sig` tag through its own path, verifies before serving, and caches the verdict.
/// Then the upstream is compromised: the `.sig` is replaced by one signed with another
/// key. A cached verdict is only reused under the same policy version, so the test
/// changes the version (`policy set`), and also pulls a new digest signed by the forger:
/// both are refused.
#[test]
fn edge_mirror_serves_only_images_signed_with_the_policy_key() {
    let Some(dist) = crate::support::distribution::Distribution::start() else {
        return;
    };
    let up = dist.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    let (forger, _) = generate(&home, keys.path(), "forger");
    img::single_image(&home.images(), "myorg/app:1", 81, &[600]);
    let (digest, sig_tag) = push_signed(&home, &up, "myorg/app:1", &key);
    let srv = TestServer::start_with(|c| {
        let u = crate::support::server::default_upstream(c, &dist.url());
        u.tag_ttl = std::time::Duration::from_millis(1);
        c.policy.signatures = vec![rule(&["docker.io/myorg/*"], &public, true)];
    });
    let m = srv.host();

    // Signed: served, by tag and by digest, through the mirror.
    let before = dist.hits("GET", &sig_tag);
    let r = get(&m, "/v2/myorg/app/manifests/1");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        dist.hits("GET", &sig_tag),
        before + 1,
        "the signature was fetched once"
    );
    // Warm: the verdict is cached, the signature is not fetched again.
    for _ in 0..3 {
        let r = get(&m, &format!("/v2/myorg/app/manifests/{digest}"));
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(
        dist.hits("GET", &sig_tag),
        before + 1,
        "warm pulls fetched the signature"
    );

    // An image pushed upstream unsigned: refused.
    img::single_image(&home.images(), "myorg/app:2", 82, &[600]);
    home.ok(&["push", "myorg/app:2", "--registry", &up]);
    assert_refused(&get(&m, "/v2/myorg/app/manifests/2"), "not signed");

    // A new digest signed with the forger's key: refused.
    img::single_image(&home.images(), "myorg/app:3", 83, &[600]);
    push_signed(&home, &up, "myorg/app:3", &forger);
    assert_refused(&get(&m, "/v2/myorg/app/manifests/3"), "does not verify");

    // The upstream's .sig of image 1 replaced by a forged one: sign with the forger (the
    // client adds a layer to the existing signature manifest), then put back a manifest
    // with only the forged layer.
    push_signed(&home, &up, "myorg/app:1", &forger);
    let merged = get(&up, &format!("/v2/myorg/app/manifests/{sig_tag}")).json();
    let mut forged = merged.clone();
    let layers = forged["layers"].as_array().unwrap().clone();
    assert_eq!(layers.len(), 2, "{merged}");
    forged["layers"] = Value::Array(vec![layers[1].clone()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = rt.block_on(Http::new(&up).send(
        http::Method::PUT,
        &format!("/v2/myorg/app/manifests/{sig_tag}"),
        &[("content-type", img::MANIFEST_V1)],
        bytes::Bytes::from(serde_json::to_vec(&forged).unwrap()),
    ));
    assert_eq!(put.status, 201, "{:?}", put.body);
    // Under the same policy version the verdict made before the compromise stands (a
    // map lookup); a new version judges again, with the forged signature.
    srv.app
        .policy
        .set(Some(agent_registry::policy::Override {
            block_vulnerabilities: None,
            unscanned: Some(agent_registry::policy::Unscanned::Allow),
        }))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_refused(
        &get(&m, &format!("/v2/myorg/app/manifests/{digest}")),
        "does not verify",
    );
    assert_refused(&get(&m, "/v2/myorg/app/manifests/1"), "does not verify");
}

/// A signed index approves its children for the policy version; a child asked for
/// before its index was judged must carry its own signature.
#[test]
fn a_verified_index_approves_its_children() {
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    let srv = TestServer::start_with(|c| {
        c.policy.signatures = vec![rule(&["agents/prod/*"], &public, true)];
    });
    let host = srv.host();
    img::multi_arch_image(&home.images(), "agents/prod/multi:1", 66);
    let (index, _) = push_signed(&home, &host, "agents/prod/multi:1", &key);
    let idx = get(&host, &format!("/v2/agents/prod/multi/manifests/{index}"));
    let children: Vec<String> = idx.json()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(children.len(), 2);
    // Restart the verdicts (a new policy version): the child alone is unsigned.
    srv.app
        .policy
        .set(Some(agent_registry::policy::Override {
            block_vulnerabilities: None,
            unscanned: Some(agent_registry::policy::Unscanned::Allow),
        }))
        .unwrap();
    let child = format!("/v2/agents/prod/multi/manifests/{}", children[0]);
    assert_refused(&get(&host, &child), "not signed");
    // The index verifies and approves both children.
    assert_eq!(get(&host, "/v2/agents/prod/multi/manifests/1").status, 200);
    for c in &children {
        let r = get(&host, &format!("/v2/agents/prod/multi/manifests/{c}"));
        assert_eq!(r.status, 200, "{c}: {:?}", r.body);
    }
}
