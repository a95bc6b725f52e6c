//! `agent registry logs` against the real server binary (its log records reach the ring
//! through the layer `init_logging` installs), and `agent registry metrics` with the
//! seed's short names, `--period` and `--query` (against Debian's Prometheus).

use crate::support::http::{image_manifest, Http};
use crate::support::server::TestServer;
use crate::support::tools;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `agent` binary with a home of its own (no profiles, no stored credentials).
fn agent_cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
    c.args(args)
        .env_remove("AGENT_REGISTRY_URL")
        .env_remove("AGENT_REGISTRY_TOKEN")
        .env_remove("DOCKER_USERNAME")
        .env_remove("DOCKER_PASSWORD")
        .env("AAC_HOME", home.join("aac"))
        .env("HOME", home)
        .env("DOCKER_CONFIG", home.join("docker"))
        .env("REGISTRY_AUTH_FILE", home.join("auth.json"));
    c
}

fn agent(home: &Path, args: &[&str]) -> Output {
    agent_cmd(home, args).output().expect("run agent")
}

/// Runs `agent` until its output contains `want` (the server logs and the access log
/// are written asynchronously); returns the last output.
fn agent_until(home: &Path, args: &[&str], want: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = agent(home, args);
        if text(&o.stdout).contains(want) || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real `agent-registry serve`, killed on drop.
struct Server {
    child: Child,
    log: PathBuf,
    config: PathBuf,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Anonymous loopback clients are admins (`hosted_writes = "loopback"`).
const CONFIG: &str = "[server]\nhosted_writes = \"loopback\"\n[mirror]\ndefault_upstream = \"\"\n[log]\nlevel = \"info\"\n";

impl Server {
    fn start(dir: &Path) -> Server {
        let config = dir.join("registry.toml");
        std::fs::write(&config, CONFIG).expect("config");
        let log = dir.join("registry.log");
        let child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .env_remove("RUST_LOG")
            .env_remove("AAC_LOG_LEVEL")
            .env_remove("AGENT_REGISTRY_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn agent-registry");
        let mut s = Server {
            child,
            log,
            config,
            url: String::new(),
        };
        let addr = crate::support::server::wait_listening(&s.log, Duration::from_secs(30));
        s.url = format!("http://{addr}");
        s
    }

    /// Rewrites the config file and sends SIGHUP (the server logs the reload's outcome).
    fn reload(&self, config: &str) {
        std::fs::write(&self.config, config).expect("config");
        let st = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }
}

const RESTART_WARNING: &str = "changes to these sections need a restart";
const INVALID_ERROR: &str = "the new configuration is invalid";

#[test]
fn registry_logs_show_a_provoked_warning_by_level_and_since() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(dir.path());
    let home = dir.path();
    let reg = srv.url.as_str();

    // Everything the ring holds: the start-up lines, but no access line for the request.
    let o = agent_until(
        home,
        &["registry", "logs", "--registry", reg],
        "listening on",
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let all = text(&o.stdout);
    assert!(all.contains(" INFO "), "{all}");
    assert!(!all.contains(" access:"), "access lines stay out: {all}");

    // The start-up records grow old, then a warning is provoked: a reload that changes
    // a section only a restart applies.
    std::thread::sleep(Duration::from_millis(4000));
    srv.reload(&CONFIG.replace("level = \"info\"", "level = \"warn\""));
    let args = ["registry", "logs", "--level", "warn", "--registry", reg];
    let o = agent_until(home, &args, RESTART_WARNING);
    let warn = text(&o.stdout);
    assert!(warn.contains(RESTART_WARNING), "{warn}");
    assert!(warn.contains(" WARN "), "{warn}");
    assert!(warn.contains("sections=[\"log\"]"), "{warn}");
    assert!(
        !warn.contains("listening on"),
        "--level warn keeps info out: {warn}"
    );

    // --since: the new warning is in the last 3s, the start-up lines are not.
    let o = agent(
        home,
        &["registry", "logs", "--since", "3s", "--registry", reg],
    );
    let recent = text(&o.stdout);
    assert!(recent.contains(RESTART_WARNING), "{recent}");
    assert!(!recent.contains("listening on"), "{recent}");
    let o = agent(
        home,
        &["registry", "logs", "--since", "1x", "--registry", reg],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("--since") && err.contains("\"1x\""), "{err}");

    // An error: an invalid config on reload; --level error shows it and not the warning.
    srv.reload("this is [not toml");
    let args = ["registry", "logs", "--level", "error", "--registry", reg];
    let o = agent_until(home, &args, INVALID_ERROR);
    let errors = text(&o.stdout);
    assert!(errors.contains(" ERROR "), "{errors}");
    assert!(!errors.contains(RESTART_WARNING), "{errors}");

    // --level debug (the seed's line): debug records are not kept, so every record the
    // ring holds, info included.
    let o = agent(
        home,
        &["registry", "logs", "--level", "debug", "--registry", reg],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let debug = text(&o.stdout);
    for want in ["listening on", RESTART_WARNING, INVALID_ERROR] {
        assert!(debug.contains(want), "{want}: {debug}");
    }

    // --json: one record per line, oldest first, numbered.
    let o = agent(home, &["registry", "logs", "--json", "--registry", reg]);
    let seqs: Vec<u64> = text(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            assert!(v["level"].is_string() && v["target"].is_string(), "{l}");
            v["seq"].as_u64().expect("seq")
        })
        .collect();
    assert!(seqs.len() >= 3, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn registry_logs_follow_picks_up_a_new_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = Server::start(dir.path());
    let out = dir.path().join("follow.out");
    let mut follower = agent_cmd(
        dir.path(),
        &[
            "registry",
            "logs",
            "--follow",
            "--json",
            "--registry",
            &srv.url,
        ],
    )
    .stdout(std::fs::File::create(&out).expect("out"))
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn agent");
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = std::fs::read_to_string(&out).unwrap_or_default();
            if t.contains(want) || Instant::now() > deadline {
                return t;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = wait_for("listening on");
    assert!(first.contains("listening on"), "{first}");
    // A record made after the follower's first answer.
    srv.reload(CONFIG);
    let t = wait_for("configuration reloaded");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(t.contains("configuration reloaded"), "{t}");
    let seqs: Vec<u64> = t
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "no record twice: {seqs:?}"
    );
}

#[test]
fn registry_logs_refused_without_admin() {
    let srv = TestServer::start_with(crate::auth::configure);
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = format!("http://{}", srv.host());
    let as_user = |user: &str| {
        agent_cmd(dir.path(), &["registry", "logs", "--registry", &reg])
            .env("DOCKER_USERNAME", user)
            .env("DOCKER_PASSWORD", crate::auth::PASSWORD)
            .output()
            .expect("run agent")
    };
    // A reader may pull but is no admin.
    let o = as_user("reader");
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert!(text(&o.stdout).is_empty(), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(
        err.contains("logs: permission denied: this needs admin"),
        "{err}"
    );
    // Nor is an anonymous client.
    let o = agent(dir.path(), &["registry", "logs", "--registry", &reg]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("authentication failed"),
        "{}",
        text(&o.stderr)
    );
    // The admin is answered.
    let o = as_user("admin");
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Pushes a one-blob image to `repo:v1` and pulls its manifest.
async fn push_and_pull(http: &Http, repo: &str) {
    let blob = b"metrics layer".to_vec();
    let d = http.push_blob(repo, &blob).await;
    let m = image_manifest((&d, blob.len()), &[(&d, blob.len())], None);
    let r = http.put_manifest(repo, "v1", MEDIA, &m).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = http
        .send(
            http::Method::GET,
            &format!("/v2/{repo}/manifests/v1"),
            &[("accept", MEDIA)],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_metrics_period_and_short_names() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().to_path_buf();
    let reg = format!("http://{}", srv.host());
    push_and_pull(&http, "team/metrics").await;
    // A miss: one error.
    assert_eq!(
        http.get("/v2/team/metrics/manifests/nope").await.status,
        404
    );

    let args = ["registry", "metrics", "--period", "1h", "--registry", &reg];
    let o = tokio::task::spawn_blocking({
        let home = home.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            agent_until(&home, &a, "error_count 1 ")
        }
    })
    .await
    .expect("join");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("push_count 1 (last 1h)"), "{out}");
    assert!(out.contains("pull_count 1 (last 1h)"), "{out}");
    assert!(out.contains("error_count 1 (last 1h)"), "{out}");
    assert!(out.contains("bytes_sent "), "{out}");

    // One count only; a metric --period cannot count is refused by name.
    let o = agent(
        &home,
        &[
            "registry",
            "metrics",
            "--metric",
            "push_count",
            "--period",
            "1h",
            "--registry",
            &reg,
        ],
    );
    assert_eq!(text(&o.stdout).trim(), "push_count 1 (last 1h)");
    let o = agent(
        &home,
        &[
            "registry",
            "metrics",
            "--metric",
            "storage_used",
            "--period",
            "1h",
            "--registry",
            &reg,
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("storage_used"),
        "{}",
        text(&o.stderr)
    );

    // A short name without --period: the registry's own family from GET /metrics.
    let o = agent(
        &home,
        &[
            "registry",
            "metrics",
            "--metric",
            "push_count",
            "--registry",
            &reg,
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("# TYPE agent_registry_push_operations_total counter"),
        "{out}"
    );
    assert!(
        out.lines()
            .all(|l| l.contains("agent_registry_push_operations_total")),
        "{out}"
    );
}

#[test]
fn registry_metrics_query_without_prometheus_is_a_clear_error() {
    let srv = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = format!("http://{}", srv.host());
    let o = agent(
        dir.path(),
        &["registry", "metrics", "--query", "up", "--registry", &reg],
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(
            "no Prometheus configured: set prometheus_url in the profile or pass --prometheus"
        ),
        "{}",
        text(&o.stderr)
    );
}

/// Debian's Prometheus scraping the test server every second, queried through the
/// profile's `prometheus_url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_metrics_query_against_prometheus() {
    if !tools::require("prometheus") {
        return;
    }
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: registry\n    \
             scrape_interval: 1s\n    static_configs:\n      - targets: [\"{}\"]\n",
            srv.host()
        ),
    )
    .expect("prometheus config");
    let prom_bin = tools::which("prometheus").expect("prometheus");
    let mut prom = Command::new(prom_bin)
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prom.log")).expect("log"))
        .spawn()
        .expect("spawn prometheus");
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prom = Kill(&mut prom);

    // The profile names the registry and its Prometheus.
    let aac = dir.path().join("aac");
    std::fs::create_dir_all(&aac).expect("aac");
    std::fs::write(
        aac.join("config.yaml"),
        format!(
            "registries:\n  default:\n    url: http://{}\n    prometheus_url: http://127.0.0.1:{port}\n",
            srv.host()
        ),
    )
    .expect("profile");
    push_and_pull(&http, "team/prom").await;
    let query =
        "agent_registry_requests_total{route=\"manifest\",method=\"GET\",status_class=\"2xx\"}";
    let home = dir.path().to_path_buf();
    let o = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = agent(&home, &["registry", "metrics", "--query", query]);
            let out = text(&o.stdout);
            let pulled = out.lines().any(|l| {
                l.starts_with("agent_registry_requests_total{")
                    && l.contains("job=\"registry\"")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
            });
            if pulled || Instant::now() > deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .expect("join");
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        out.contains("route=\"manifest\"") && out.contains("job=\"registry\""),
        "no pull in Prometheus: {out} {}",
        std::fs::read_to_string(dir.path().join("prom.log")).unwrap_or_default()
    );

    // A bad query is Prometheus's error, named.
    let o = agent(dir.path(), &["registry", "metrics", "--query", "rate(("]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("prometheus"),
        "{}",
        text(&o.stderr)
    );
}
