//! No credential ever reaches a log line or `config show`: the real binary at debug
//! level, in text and JSON, pulls through an upstream that demands basic auth, and also
//! fails against one that refuses the credentials.

use crate::support::fake_upstream::{base64, AuthMode, FakeUpstream};
use crate::support::http::Http;
use std::process::{Command, Stdio};
use std::time::Duration;

const USER: &str = "ci-robot";
const PASSWORD: &str = "pa55-Very-Secret-7f3a";
/// A client's password for this registry, and a wrong one it tries.
const CLIENT_PASSWORD: &str = "client-Secret-91bd";
const WRONG_PASSWORD: &str = "wrong-Guess-5e2c";

struct Proc {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path, config: &str, format: &str) -> (Proc, String) {
    let cfg = dir.join(format!("{format}.toml"));
    std::fs::write(&cfg, config).expect("config");
    let log = dir.join(format!("{format}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join(format!("data-{format}")))
        .env("UPSTREAM_PASSWORD", PASSWORD)
        .env("RUST_LOG", "debug")
        .env("AGENT_REGISTRY_LOG_FORMAT", format)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let addr = crate::support::server::wait_listening(&log, Duration::from_secs(20));
    (Proc { child, log }, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_or_config_show() {
    let good = FakeUpstream::start();
    good.set(|s| s.auth = AuthMode::Basic(USER.into(), PASSWORD.into()));
    let blob = good.add_blob("team/app", b"layer".to_vec());
    let m = crate::support::http::image_manifest((&blob, 5), &[], None);
    good.add_manifest(
        "team/app",
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        m,
    );
    // This one demands other credentials: ours are refused (an auth failure to log).
    let bad = FakeUpstream::start();
    bad.set(|s| s.auth = AuthMode::Basic("someone".into(), "else".into()));
    let hash = bcrypt::hash(CLIENT_PASSWORD, 4).expect("bcrypt");
    let config = format!(
        "[auth]\nusers = [{{ name = \"alice\", password_hash = \"{hash}\" }}]\n\
         [mirror]\ndefault_upstream = \"good.test\"\n\
         [upstreams.\"good.test\"]\nurl = \"{}\"\nusername = \"{USER}\"\npassword = \"${{UPSTREAM_PASSWORD}}\"\n\
         [upstreams.\"bad.test\"]\nurl = \"{}\"\nusername = \"{USER}\"\npassword = \"${{UPSTREAM_PASSWORD}}\"\n",
        good.url(),
        bad.url()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut forbidden = vec![
        PASSWORD.to_string(),
        base64(&format!("{USER}:{PASSWORD}")),
        CLIENT_PASSWORD.to_string(),
        WRONG_PASSWORD.to_string(),
        base64(&format!("alice:{CLIENT_PASSWORD}")),
        base64(&format!("alice:{WRONG_PASSWORD}")),
        hash.clone(),
    ];
    for format in ["text", "json"] {
        let (proc_, addr) = start(dir.path(), &config, format);
        let http = Http::new(&addr);
        // A client logs in (and once fails to): neither password nor token is logged.
        let good_basic = format!("Basic {}", base64(&format!("alice:{CLIENT_PASSWORD}")));
        let bad_basic = format!("Basic {}", base64(&format!("alice:{WRONG_PASSWORD}")));
        let r = http
            .send(
                http::Method::GET,
                "/token?scope=repository:team/app:pull",
                &[("authorization", &bad_basic)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 401);
        let r = http
            .send(
                http::Method::GET,
                "/token?scope=repository:team/app:pull",
                &[("authorization", &good_basic)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 200);
        let token = r.json()["token"].as_str().expect("token").to_string();
        let bearer = format!("Bearer {token}");
        let r = http
            .send(
                http::Method::GET,
                "/v2/team/app/manifests/v1",
                &[("authorization", &bearer)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 200);
        forbidden.push(token);
        let r = http.get("/v2/team/app/manifests/v1").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            http.get(&format!("/v2/team/app/blobs/{blob}")).await.status,
            200
        );
        let r = http.get("/v2/bad.test/team/app/manifests/v1").await;
        assert!(r.status.is_client_error() || r.status.is_server_error());
        for s in &forbidden {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(s.as_str()),
                "error body leaks"
            );
        }
        // A graceful stop: the buffered log is written out on the way (a kill -9 may
        // lose its last 50 ms).
        let term = Command::new("kill")
            .args(["-TERM", &proc_.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(term.success());
        let mut proc_ = proc_;
        let exited = proc_.child.wait().expect("wait");
        assert!(exited.success(), "{exited:?}");
        let log = std::fs::read_to_string(dir.path().join(format!("{format}.log"))).expect("log");
        assert!(log.contains("access"), "the access log was written: {log}");
        assert!(
            log.contains("auth_failure") && log.contains("alice"),
            "the audit log: {log}"
        );
        for s in &forbidden {
            assert!(
                !log.contains(s.as_str()),
                "{format} log contains a credential"
            );
        }
    }
    // config show redacts.
    let out = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
        .args(["config", "show", "--config"])
        .arg(dir.path().join("text.toml"))
        .env("UPSTREAM_PASSWORD", PASSWORD)
        .output()
        .expect("config show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("<redacted>") && !shown.contains(PASSWORD) && !shown.contains(&hash),
        "{shown}"
    );
}

/// Logs written to a file or journald (not a terminal) carry no colour codes.
#[test]
fn logs_off_a_terminal_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (proc_, _addr) = start(dir.path(), "", "text");
    let log = proc_.log();
    drop(proc_);
    assert!(log.contains("INFO"), "the log was written: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file: {log:?}"
    );
}
