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
