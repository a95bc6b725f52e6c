//! The `agent` and `agent-registry` command lines: help, version, ping, health, config
//! check and show, each run as the real binary.

use crate::support::server::TestServer;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .env_remove("AGENT_REGISTRY_URL")
        .output()
        .expect("run agent")
}

fn registry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(args)
        .env_remove("AGENT_REGISTRY_CONFIG")
        .output()
        .expect("run agent-registry")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_and_version() {
    let o = agent(&["--help"]);
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("registry"), "{}", text(&o.stdout));
    let o = agent(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout).trim(),
        format!("agent {}", env!("CARGO_PKG_VERSION"))
    );
    let o = registry(&["--version"]);
    assert!(o.status.success());
    assert!(text(&o.stdout).starts_with("agent-registry "));
}

#[test]
fn ping_and_health_against_a_running_server() {
    // No upstreams: the detailed report probes each one, and no test may reach the internet.
    let srv = TestServer::start_with(|cfg| cfg.upstreams.clear());
    let url = format!("http://{}", srv.host());
    let o = agent(&["registry", "ping", "--registry", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("is reachable: HTTP 200"),
        "{}",
        text(&o.stdout)
    );

    // The URL may also come from the environment.
    let o = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["registry", "health"])
        .env("AGENT_REGISTRY_URL", &url)
        .output()
        .expect("run agent");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(": ready"), "{}", text(&o.stdout));

    let o = agent(&[
        "registry",
        "health",
        "--detailed",
        "--registry",
        &url,
        "--timeout",
        "30s",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("detailed health is JSON");
    assert_eq!(v["status"], "ready");
}

#[test]
fn ping_names_the_failure() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let o = agent(&[
        "registry",
        "ping",
        "--registry",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.starts_with("agent: failed to connect to registry http://127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let o = agent(&["registry", "ping", "--registry", "not a url"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("invalid registry URL"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn config_check_and_show() {
    let o = registry(&["config", "check"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ok"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten = \"0.0.0.0:99999\"\n").expect("write");
    let o = registry(&["config", "check", "--config", bad.to_str().expect("utf8")]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(bad.to_str().expect("utf8")) && err.contains("server.listen"),
        "{err}"
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[storage]\ndata_dirr = \"/x\"\n").expect("write");
    let o = registry(&["config", "check", "--config", typo.to_str().expect("utf8")]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("unknown key storage.data_dirr"),
        "{}",
        text(&o.stderr)
    );

    // Environment overrides show up in the effective config.
    let o = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(["config", "show"])
        .env("AGENT_REGISTRY_SERVER_LISTEN", "127.0.0.1:7000")
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("listen = \"127.0.0.1:7000\""),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn completions_print_scripts_the_shells_accept() {
    let o = agent(&["completion", "bash"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let script = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(script.path(), &o.stdout).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(script.path())
        .output()
        .expect("bash -n");
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&o.stdout).contains("agent"), "{}", text(&o.stdout));
    for shell in ["zsh", "fish"] {
        let o = agent(&["completion", shell]);
        assert!(o.status.success(), "{shell}: {}", text(&o.stderr));
        assert!(text(&o.stdout).contains("registry"), "{shell}");
    }
}

#[test]
fn exit_status_is_two_for_usage_errors_and_one_for_failures() {
    let o = agent(&["registry", "no-such-command"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = agent(&["completion", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    let o = agent(&["registry", "ping", "--registry", "ftp://x"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
}

#[test]
fn search_takes_name_and_tag_and_refuses_a_bad_since() {
    let rec = crate::profiles::Recorder::start(std::sync::Arc::new(|_: &str| {
        (
            200,
            vec![],
            r#"{"images":[],"total":0,"page":1,"per_page":10}"#.to_string(),
        )
    }));
    let url = format!("http://{}", rec.addr);
    let o = agent(&["search", "my-agent:latest", "--registry", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let seen = rec.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].0.contains("q=my%2Dagent") && seen[0].0.contains("tag=latest"),
        "{}",
        seen[0].0
    );
    for bad in ["yesterday", "2026-13-01", "2026-01-01T25"] {
        let o = agent(&["search", "x", "--since", bad, "--registry", &url]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(
            text(&o.stderr).starts_with(&format!("agent: invalid --since \"{bad}\"")),
            "{}",
            text(&o.stderr)
        );
    }
    assert_eq!(rec.seen().len(), 1, "a bad --since sends nothing");
    let o = agent(&[
        "search",
        "x",
        "--since",
        "2026-01-31T12:00:00Z",
        "--registry",
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn permission_list_prints_json() {
    let srv = TestServer::start_with(crate::auth::configure);
    let (token, _) = srv
        .app
        .auth
        .create_token("admin", "*:admin", None)
        .expect("token");
    let o = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["registry", "permission", "list", "--json"])
        .env("AGENT_REGISTRY_URL", srv.url(""))
        .env("AGENT_REGISTRY_TOKEN", &token)
        .output()
        .expect("agent");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let perms = v["permissions"].as_array().expect("permissions");
    assert!(
        perms
            .iter()
            .any(|p| p["group"] == "ci" && p["repo"] == "agents/*"),
        "{v}"
    );
}

/// `agent-registry serve` on a free port with `config`; returns its log once it listens.
fn startup_log(config: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config).expect("config");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("AGENT_REGISTRY_MIRROR_DEFAULT_UPSTREAM", "")
        .env("RUST_LOG", "info")
        .env_remove("AGENT_REGISTRY_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("listening on") || std::time::Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn the_startup_log_says_what_a_push_needs() {
    let log = startup_log("[server]\nhosted_writes = \"auth\"\n");
    assert!(
        log.contains("pushes: no user may push: add a rule"),
        "{log}"
    );
    let log = startup_log(
        "[server]\nhosted_writes = \"auth\"\n\n[[auth.rules]]\nrepos = [\"agents/*\"]\ngroups = [\"ci\"]\nactions = [\"pull\", \"push\"]\n",
    );
    assert!(
        log.contains("pushes: a push needs the login of: group ci on agents/*"),
        "{log}"
    );
}
