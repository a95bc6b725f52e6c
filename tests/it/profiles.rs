//! The `agent` client's registry selection, credentials and HTTP layer, run as the real
//! binary against the project's server (and, for faults, the fake upstream and a small
//! header-recording server): profiles of `$AAC_HOME/config.yaml`, docker and podman
//! credential files and helpers, redirects, retries, the seed's five errors, OAuth2
//! client credentials, and `agent-registry user add` on a running server.

use crate::auth::{configure, PASSWORD};
use crate::support::fake_upstream::{AuthMode, FakeUpstream};
use crate::support::server::TestServer;
use agent_registry::cli::http::{Client, Credentials, Retry};
use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A home directory of its own for each test: nothing of the machine's leaks in.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("home"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn config(&self, yaml: &str) -> PathBuf {
        self.write(".aac/config.yaml", yaml)
    }

    /// `agent ARGS` with HOME here and every registry variable cleared, then `env`.
    fn agent(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent"));
        cmd.args(args).env("HOME", self.path());
        for k in [
            "AAC_HOME",
            "AGENT_CONFIG_DIR",
            "AGENT_REGISTRY_URL",
            "AGENT_REGISTRY_TOKEN",
            "DOCKER_USERNAME",
            "DOCKER_PASSWORD",
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "XDG_RUNTIME_DIR",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent");
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(s.as_bytes())
                .expect("stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("agent output")
    }
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn profiles_choose_the_server_and_the_credentials() {
    let a = TestServer::start_with(configure);
    let b = TestServer::start_with(configure);
    let (token, _) = a
        .app
        .auth
        .create_token("writer", "agents/*:pull,push", None)
        .expect("token");
    let home = Home::new();
    // A bare host:port on loopback is http; `${VAR}` comes from the environment.
    home.config(&format!(
        "registries:\n  default:\n    url: \"{}\"\n    auth:\n      type: token\n      token: \"${{A_TOKEN}}\"\n  b:\n    url: \"http://{}\"\n    auth:\n      type: username\n      username: admin\n      password: \"${{B_PASSWORD}}\"\n",
        a.host(),
        b.host()
    ));
    let env = [("A_TOKEN", token.as_str()), ("B_PASSWORD", PASSWORD)];
    let a_url = format!("http://{}", a.host());
    let b_url = format!("http://{}", b.host());

    let o = home.agent(&["registry", "auth", "test"], &env, None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("authenticated as writer at {a_url}")),
        "{}",
        out(&o)
    );
    let o = home.agent(&["registry", "auth", "test", "--profile", "b"], &env, None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("authenticated as admin at {b_url}")),
        "{}",
        out(&o)
    );
    assert!(
        out(&o).contains("credentials from profile b)"),
        "{}",
        out(&o)
    );
    // --registry beats the profile's URL, and the profile's credentials stay with its host.
    let o = home.agent(
        &[
            "registry",
            "auth",
            "test",
            "--profile",
            "b",
            "--registry",
            &a.host(),
        ],
        &env,
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("anonymous at {a_url}")),
        "{}",
        out(&o)
    );
    // AGENT_REGISTRY_URL beats the default profile; its token is not sent to B.
    let o = home.agent(
        &["registry", "auth", "test"],
        &[env[0], env[1], ("AGENT_REGISTRY_URL", &b_url)],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("anonymous at {b_url}")),
        "{}",
        out(&o)
    );
    // AGENT_REGISTRY_TOKEN beats the default profile's credentials.
    let (admin_token, _) = a
        .app
        .auth
        .create_token("admin", "*:admin", None)
        .expect("token");
    let o = home.agent(
        &["registry", "auth", "test"],
        &[env[0], ("AGENT_REGISTRY_TOKEN", &admin_token)],
        None,
    );
    assert!(
        out(&o).contains(&format!("authenticated as admin at {a_url}")),
        "{}",
        out(&o)
    );
    // An unset variable in the profile in use names the key and the file.
    let o = home.agent(&["registry", "auth", "test", "--profile", "b"], &[], None);
    assert_eq!(o.status.code(), Some(1));
    let file = home.path().join(".aac/config.yaml");
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "agent: {}: registries.b.auth.password: environment variable B_PASSWORD is not set",
            file.display()
        )
    );
    // AAC_HOME moves ~/.aac.
    let elsewhere = tempfile::tempdir().expect("aac home");
    std::fs::write(
        elsewhere.path().join("config.yaml"),
        format!("registries:\n  default:\n    url: {}\n", b.host()),
    )
    .expect("config");
    let o = home.agent(
        &["registry", "auth", "test"],
        &[("AAC_HOME", elsewhere.path().to_str().expect("utf8"))],
        None,
    );
    assert!(
        out(&o).contains(&format!("anonymous at {b_url}")),
        "{}",
        out(&o)
    );
}

#[test]
fn a_bad_config_names_the_key_and_the_file() {
    let home = Home::new();
    let file = home
        .config("registries:\n  prod:\n    url: prod.example.com\n    auth:\n      type: magic\n");
    let o = home.agent(&["registry", "ping"], &[], None);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        format!(
            "agent: {}: registries.prod.auth.type: unknown auth type \"magic\" (expected token, username or oauth2)",
            file.display()
        )
    );
    home.config("registries:\n  prod:\n    url: prod.example.com\n    tiemout: 3\n");
    let o = home.agent(&["registry", "ping", "--profile", "prod"], &[], None);
    assert!(
        stderr(&o).contains("registries.prod.tiemout: unknown key"),
        "{}",
        out(&o)
    );
    home.config("registries:\n  - url: x\n");
    let o = home.agent(&["registry", "ping"], &[], None);
    assert!(
        stderr(&o).contains(&format!("{}: registries: expected a map", file.display())),
        "{}",
        out(&o)
    );
    let o = home.agent(&["registry", "ping", "--profile", "nope"], &[], None);
    assert_eq!(o.status.code(), Some(1));
}

fn helper_script(home: &Home, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = home.path().join("bin");
    let p = home.write(&format!("bin/docker-credential-{name}"), body);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

#[test]
fn credentials_from_docker_podman_files_and_credential_helpers() {
    let srv = TestServer::start_with(configure);
    let host = srv.host();
    let whoami = |home: &Home, env: &[(&str, &str)]| {
        let url = format!("http://{host}");
        let mut e = env.to_vec();
        e.push(("AGENT_REGISTRY_URL", &url));
        out(&home.agent(&["registry", "auth", "test"], &e, None))
    };

    // docker login's ~/.docker/config.json, keyed by host:port or a URL.
    let home = Home::new();
    home.write(
        ".docker/config.json",
        &format!(
            r#"{{"auths":{{"http://{host}/v2/":{{"auth":"{}"}}}}}}"#,
            b64(&format!("writer:{PASSWORD}"))
        ),
    );
    assert!(
        whoami(&home, &[]).contains("authenticated as writer"),
        "{}",
        whoami(&home, &[])
    );

    // podman's auth.json wins over docker's, and REGISTRY_AUTH_FILE replaces its place.
    home.write(
        ".config/containers/auth.json",
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("reader:{PASSWORD}"))
        ),
    );
    assert!(whoami(&home, &[]).contains("authenticated as reader"));
    let custom = home.write(
        "custom-auth.json",
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("admin:{PASSWORD}"))
        ),
    );
    let custom = custom.to_str().expect("utf8");
    assert!(whoami(&home, &[("REGISTRY_AUTH_FILE", custom)]).contains("authenticated as admin"));
    // Credentials for another host are never used here.
    let other = Home::new();
    other.write(
        ".docker/config.json",
        &format!(
            r#"{{"auths":{{"registry.example.com":{{"auth":"{}"}}}}}}"#,
            b64(&format!("writer:{PASSWORD}"))
        ),
    );
    assert!(
        whoami(&other, &[]).contains("anonymous at"),
        "{}",
        whoami(&other, &[])
    );

    // credHelpers: docker-credential-NAME get, the host on stdin, JSON on stdout.
    let home = Home::new();
    let calls = home.path().join("calls");
    let bin = helper_script(
        &home,
        "itest",
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r host\necho \"$host\" >> '{}'\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"admin\",\"Secret\":\"{PASSWORD}\"}}' \"$host\"\n",
            calls.display()
        ),
    );
    home.write(
        ".docker/config.json",
        &format!(r#"{{"credHelpers":{{"{host}":"itest"}}}}"#),
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let got = whoami(&home, &[("PATH", &path)]);
    assert!(got.contains("authenticated as admin"), "{got}");
    assert_eq!(
        std::fs::read_to_string(&calls).expect("helper ran").trim(),
        host
    );

    // credsStore: asked for every host; "credentials not found" means anonymous.
    let home = Home::new();
    let bin = helper_script(
        &home,
        "store",
        &format!(
            "#!/bin/sh\nread -r host\nif [ \"$host\" = '{host}' ]; then printf '{{\"Username\":\"writer\",\"Secret\":\"{PASSWORD}\"}}'; exit 0; fi\necho 'credentials not found in native keychain'; exit 1\n"
        ),
    );
    home.write(".docker/config.json", r#"{"credsStore":"store"}"#);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let got = whoami(&home, &[("PATH", &path)]);
    assert!(got.contains("authenticated as writer"), "{got}");

    // agent login writes $AAC_HOME/auth.json (0600, auths format), read before the others.
    let home = Home::new();
    home.write(
        ".docker/config.json",
        &format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64(&format!("reader:{PASSWORD}"))
        ),
    );
    let url = format!("http://{host}");
    let o = home.agent(
        &[
            "login",
            "-u",
            "writer",
            "--password-stdin",
            "--registry",
            &host,
        ],
        &[],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(o.status.success(), "{}", out(&o));
    let file = home.path().join(".aac/auth.json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("auth.json")).expect("json");
    assert_eq!(
        v["auths"][&host]["auth"],
        b64(&format!("writer:{PASSWORD}"))
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(whoami(&home, &[]).contains("authenticated as writer"));
    let o = home.agent(&["logout", "--registry", &url], &[], None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(whoami(&home, &[]).contains("authenticated as reader"));
    // DOCKER_USERNAME/DOCKER_PASSWORD beat the stored logins.
    assert!(whoami(
        &home,
        &[("DOCKER_USERNAME", "admin"), ("DOCKER_PASSWORD", PASSWORD)]
    )
    .contains("authenticated as admin"));
}

#[test]
fn podman_login_credentials_work_for_agent() {
    if !crate::support::tools::require("podman") {
        return;
    }
    let srv = TestServer::start_with(configure);
    let home = Home::new();
    let auth_file = home.path().join("podman-auth.json");
    let podman = crate::support::tools::Podman::new();
    let mut cmd = podman.cmd();
    cmd.env("REGISTRY_AUTH_FILE", &auth_file)
        .args([
            "login",
            "--tls-verify=false",
            "-u",
            "writer",
            "--password-stdin",
        ])
        .arg(srv.host())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("podman");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("stdin");
    }
    let o = child.wait_with_output().expect("podman login");
    assert!(o.status.success(), "podman login: {}", out(&o));
    let url = format!("http://{}", srv.host());
    let o = home.agent(
        &["registry", "auth", "test", "--registry", &url],
        &[("REGISTRY_AUTH_FILE", auth_file.to_str().expect("utf8"))],
        None,
    );
    assert!(out(&o).contains("authenticated as writer"), "{}", out(&o));
}

/// A tiny HTTP server that answers every request with `answer(path)` and records each
/// request's path, query and Authorization header.
/// (path and query, Authorization) of each request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub struct Recorder {
    pub addr: std::net::SocketAddr,
    seen: Seen,
    _rt: tokio::runtime::Runtime,
}

pub type Answer = dyn Fn(&str) -> (u16, Vec<(String, String)>, String) + Send + Sync;

impl Recorder {
    pub fn start(answer: Arc<Answer>) -> Recorder {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen: Seen = Arc::default();
        let s = seen.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((stream, _)) = listener.accept().await {
                let (s, answer) = (s.clone(), answer.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (s, answer) = (s.clone(), answer.clone());
                            async move {
                                let pq = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.as_str().to_string())
                                    .unwrap_or_default();
                                let auth = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                s.lock().expect("seen").push((pq.clone(), auth));
                                let (status, headers, body) = answer(&pq);
                                let mut resp = http::Response::builder().status(status);
                                for (k, v) in headers {
                                    resp = resp.header(k, v);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    resp.body(http_body_util::Full::new(Bytes::from(body)))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            _rt: rt,
        }
    }

    pub fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().expect("seen").clone()
    }
}

#[test]
fn a_redirect_to_another_host_never_carries_authorization() {
    let elsewhere = Recorder::start(Arc::new(|_: &str| (200, vec![], "{}".into())));
    let target = format!("http://{}/v2/", elsewhere.addr);
    let origin = Recorder::start(Arc::new(move |p: &str| match p {
        // A same-origin hop first, then off to another host.
        "/v2/" => (
            307,
            vec![("location".into(), "/v2/hop".into())],
            String::new(),
        ),
        _ => (
            307,
            vec![("location".into(), target.clone())],
            String::new(),
        ),
    }));
    let home = Home::new();
    let o = home.agent(
        &["registry", "ping", "--registry", &origin.addr.to_string()],
        &[("AGENT_REGISTRY_TOKEN", "agr_secret")],
        None,
    );
    assert!(o.status.success(), "{}", out(&o));
    let bearer = Some("Bearer agr_secret".to_string());
    assert_eq!(
        origin.seen(),
        vec![
            ("/v2/".to_string(), bearer.clone()),
            ("/v2/hop".to_string(), bearer)
        ]
    );
    assert_eq!(elsewhere.seen(), vec![("/v2/".to_string(), None)]);
}

#[test]
fn retries_honour_retry_after_back_off_on_5xx_and_never_repeat_4xx() {
    let fake = FakeUpstream::start();
    let home = Home::new();
    let url = fake.url();
    let agent = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--registry", url.as_str()]);
        let t = Instant::now();
        let o = home.agent(&a, &[], None);
        (o, t.elapsed())
    };

    // 429 twice with Retry-After: 1, then 200: three requests, at least 2 s apart in all.
    fake.set(|s| {
        s.too_many = 2;
        s.retry_after = Some("1".into());
    });
    let (o, took) = agent(&["registry", "ping"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(fake.hits("GET", "/v2/"), 3);
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After not honoured: {took:?}"
    );

    // A Retry-After beyond the cap is not waited for: the 429 is the answer at once.
    fake.reset_counters();
    fake.set(|s| {
        s.too_many = 1;
        s.retry_after = Some("3600".into());
    });
    let (o, took) = agent(&["registry", "ping"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fake.hits("GET", "/v2/"), 1);
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A burst of 503s is ridden out with backoff.
    fake.reset_counters();
    fake.set(|s| {
        s.too_many = 0;
        s.retry_after = None;
        s.server_errors = 3;
    });
    let (o, _) = agent(&["registry", "ping"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(fake.hits("GET", "/v2/"), 4);
    // A longer one gives up after --retries.
    fake.reset_counters();
    fake.set(|s| s.server_errors = 10);
    let (o, _) = agent(&["registry", "ping", "--retries", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fake.hits("GET", "/v2/"), 3);
    fake.set(|s| s.server_errors = 0);

    // 401 and 404 are answers, never retried.
    fake.reset_counters();
    fake.set(|s| s.auth = AuthMode::Basic("u".into(), "p".into()));
    let (o, _) = agent(&["registry", "auth", "test"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("agent: authentication failed: "),
        "{}",
        out(&o)
    );
    assert_eq!(fake.hits("GET", "/admin/whoami"), 1);
    fake.reset_counters();
    fake.set(|s| s.auth = AuthMode::Anonymous);
    let (o, _) = agent(&["registry", "metrics"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(fake.hits("GET", "/metrics"), 1, "{}", out(&o));
}

fn client(srv: &TestServer, retries: u32) -> Client {
    Client::new(&format!("http://{}", srv.host()), Duration::from_secs(30))
        .expect("client")
        .with_retry(Retry {
            retries,
            ..Retry::default()
        })
}

fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    assert_eq!(s.lines().count(), 1, "{s}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_errors_are_provoked_for_real() {
    // Wrong password.
    let srv = TestServer::start_with(configure);
    let home = Home::new();
    let checks = srv.app.auth.password_checks();
    let o = tokio::task::block_in_place(|| {
        home.agent(
            &[
                "login",
                "-u",
                "writer",
                "--password-stdin",
                "--registry",
                &srv.host(),
            ],
            &[],
            Some("wrong password\n"),
        )
    });
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with("agent: authentication failed: login: "),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // Refused credentials are not tried again at /token: one failed login, not two.
    assert_eq!(srv.app.auth.password_checks() - checks, 1);

    // A missing image.
    let c = client(&srv, 3).with_credentials(Credentials::Basic {
        username: "writer".into(),
        password: PASSWORD.into(),
    });
    let r = c
        .get("/v2/agents/missing/manifests/latest")
        .await
        .expect("reply");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.attempts, 1, "a 404 is not retried");
    let e = one_line(&c.status_error(&r, "pull agents/missing:latest"));
    assert!(
        e.starts_with("image not found in registry: pull agents/missing:latest: "),
        "{e}"
    );

    // Nothing listening: retried, then named.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let o = tokio::task::block_in_place(|| {
        home.agent(
            &[
                "registry",
                "ping",
                "--registry",
                &format!("127.0.0.1:{port}"),
            ],
            &[],
            None,
        )
    });
    let e = stderr(&o);
    assert!(
        e.starts_with(&format!(
            "agent: failed to connect to registry http://127.0.0.1:{port}: "
        )) && e.contains("(after 4 attempts)"),
        "{e}"
    );

    // The server's own rate limiter: retried after its Retry-After, or named when
    // retries are off.
    let limited = TestServer::start_with(|cfg| {
        cfg.limits.enabled = true;
        cfg.limits.allow.clear();
        cfg.limits.manifests = agent_registry::config::Rate::new(1, 1);
    });
    let c = client(&limited, 0);
    let path = "/v2/agents/none/manifests/latest";
    let first = c.get(path).await.expect("first");
    assert_ne!(first.status, StatusCode::TOO_MANY_REQUESTS);
    let r = c.get(path).await.expect("second");
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let e = one_line(&c.status_error(&r, "pull agents/none:latest"));
    assert!(
        e.starts_with("rate limit exceeded: pull agents/none:latest: "),
        "{e}"
    );
    let patient = client(&limited, 3);
    let r = patient.get(path).await.expect("patient");
    assert_ne!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.attempts >= 2,
        "the 429 was waited out: {} attempts",
        r.attempts
    );

    // A full disk on a push.
    let root = tempfile::tempdir().expect("tempdir");
    let mnt = root.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    if crate::cache::tmpfs(&mnt, "6m").is_none() {
        return;
    }
    let _unmount = crate::cache::Unmount(mnt.clone());
    let full = TestServer::start_with({
        let data = mnt.join("data");
        move |cfg| cfg.storage.data_dir = data
    });
    let c = client(&full, 3);
    // As in garbage::uploads: one small push first, so the metadata database has its
    // pages before the disk fills (see the report: without it the server answers 500).
    crate::support::http::Http::new(&full.host())
        .push_blob("agents/big", b"small")
        .await;
    let r = c
        .send(Method::POST, "/v2/agents/big/blobs/uploads/")
        .await
        .expect("start upload");
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.headers["location"]
        .to_str()
        .expect("location")
        .to_string();
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut last = None;
    for i in 0..256u64 {
        let mut h = http::HeaderMap::new();
        let range = format!("{}-{}", i * 65536, (i + 1) * 65536 - 1);
        h.insert("content-range", range.parse().expect("range"));
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/octet-stream"),
        );
        let r = c
            .execute(Method::PATCH, &loc, h, chunk.clone())
            .await
            .expect("patch");
        if r.status != StatusCode::ACCEPTED {
            last = Some(r);
            break;
        }
    }
    let r = last.expect("6 MiB filled by 16 MiB of chunks");
    assert_eq!(
        r.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{} after {} attempts",
        String::from_utf8_lossy(&r.body),
        r.attempts
    );
    assert_eq!(r.attempts, 1, "507 is not retried");
    let e = one_line(&c.status_error(&r, "push agents/big"));
    assert!(
        e.starts_with("insufficient storage space: push agents/big: "),
        "{e}"
    );
}

#[test]
fn oauth2_client_credentials_against_the_real_server() {
    let srv = TestServer::start_with(configure);
    let (token, info) = srv
        .app
        .auth
        .create_token("writer", "agents/*:pull,push", None)
        .expect("token");
    let home = Home::new();
    home.config(&format!(
        "registries:\n  ci:\n    url: {}\n    auth:\n      type: oauth2\n      client_id: \"${{OAUTH_CLIENT_ID}}\"\n      client_secret: \"${{OAUTH_CLIENT_SECRET}}\"\n",
        srv.host()
    ));
    let env = [
        ("OAUTH_CLIENT_ID", info.id.as_str()),
        ("OAUTH_CLIENT_SECRET", token.as_str()),
    ];
    let o = home.agent(&["registry", "auth", "test", "--profile", "ci"], &env, None);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("authenticated as writer"), "{}", out(&o));
    // The id must name the token.
    let o = home.agent(
        &["registry", "auth", "test", "--profile", "ci"],
        &[("OAUTH_CLIENT_ID", "tok_000000000000"), env[1]],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("agent: authentication failed: token: "),
        "{}",
        out(&o)
    );
    // The same pair as HTTP Basic, from curl.
    if crate::support::tools::require("curl") {
        let o = crate::support::tools::command("curl")
            .args(["-sS", "-u", &format!("{}:{token}", info.id)])
            .args(["-d", "grant_type=client_credentials"])
            .arg(format!("http://{}/token", srv.host()))
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("token JSON");
        assert!(v["access_token"].is_string(), "{v}");
    }
    // The grant gives what the API token may: push on agents/*, nothing on team/*.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = Client::new(&format!("http://{}", srv.host()), Duration::from_secs(30))
            .expect("client");
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={token}&scope=repository%3Aagents%2Fx%3Apull%2Cpush+repository%3Ateam%2Fy%3Apull",
            info.id
        );
        let mut h = http::HeaderMap::new();
        h.insert(
            "content-type",
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let r = c
            .execute(Method::POST, "/token", h, Bytes::from(form))
            .await
            .expect("token");
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        let jwt = v["access_token"].as_str().expect("access_token");
        let payload = jwt.split('.').nth(1).expect("payload");
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("b64"),
        )
        .expect("claims");
        assert_eq!(claims["sub"], "writer");
        let access = claims["access"].as_array().expect("access");
        assert_eq!(access.len(), 1, "{access:?}");
        assert_eq!(access[0]["name"], "agents/x");
        assert_eq!(access[0]["actions"], serde_json::json!(["pull", "push"]));

        // An OAuth2 client answers a 401 challenge with a scoped token.
        let c = Client::new(&format!("http://{}", srv.host()), Duration::from_secs(30))
            .expect("client")
            .with_credentials(Credentials::OAuth2 {
                client_id: info.id.clone(),
                client_secret: token.clone(),
            });
        let r = c
            .send(Method::POST, "/v2/agents/x/blobs/uploads/")
            .await
            .expect("upload");
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&r.body));
    });
}

#[test]
fn user_add_on_a_running_server_lets_the_user_log_in_without_a_restart() {
    let srv = TestServer::start_with(configure);
    let data = srv.data_dir().to_str().expect("utf8").to_string();
    let registry = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-registry"))
            .args(args)
            .env_remove("AGENT_REGISTRY_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent-registry");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("stdin");
        child.wait_with_output().expect("output")
    };
    let home = Home::new();
    let login = |user: &str, pw: &str| {
        home.agent(
            &[
                "login",
                "-u",
                user,
                "--password-stdin",
                "--registry",
                &srv.host(),
            ],
            &[],
            Some(&format!("{pw}\n")),
        )
    };
    let o = login("carol", "carol's long password");
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));

    let o = registry(
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--group",
            "ci",
            "--data-dir",
            &data,
        ],
        "carol's long password\n",
    );
    assert!(o.status.success(), "{}", out(&o));
    // The embedded default config has no rules: the user is told.
    assert!(
        stderr(&o).contains("warning: no rule lets carol push anywhere"),
        "{}",
        out(&o)
    );
    let o = login("carol", "carol's long password");
    assert!(o.status.success(), "{}", out(&o));
    // Group ci may push to agents/* on this server: carol's groups came along.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = client(&srv, 0).with_credentials(Credentials::Basic {
            username: "carol".into(),
            password: "carol's long password".into(),
        });
        let r = c
            .send(Method::POST, "/v2/agents/carol/blobs/uploads/")
            .await
            .expect("upload");
        assert_eq!(r.status, StatusCode::ACCEPTED);
    });

    // token create takes --data-dir too, warns the same way, and the running server
    // accepts the token at once.
    let o = registry(
        &[
            "token",
            "create",
            "--user",
            "carol",
            "--scope",
            "agents/*:pull,push",
            "--data-dir",
            &data,
        ],
        "",
    );
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        stderr(&o).contains("warning: no rule lets carol push anywhere"),
        "{}",
        out(&o)
    );
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let o = registry(&["token", "list", "--json", "--data-dir", &data], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("token list --json");
    assert_eq!(v[0]["user"], "carol", "{v}");
    let o = registry(&["user", "list", "--json", "--data-dir", &data], "");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("user list --json");
    assert_eq!(
        v,
        serde_json::json!([{ "name": "carol", "groups": ["ci"] }])
    );
    let o = home.agent(
        &["registry", "auth", "test", "--registry", &srv.host()],
        &[("AGENT_REGISTRY_TOKEN", &token)],
        None,
    );
    assert!(out(&o).contains("authenticated as carol"), "{}", out(&o));

    // A password bcrypt would cut is refused.
    let long = "x".repeat(73);
    let o = registry(
        &[
            "user",
            "add",
            "dave",
            "--password-stdin",
            "--data-dir",
            &data,
        ],
        &format!("{long}\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("at most 72 bytes"), "{}", out(&o));

    // Removing the user locks it out, again without a restart.
    let o = registry(&["user", "remove", "carol", "--data-dir", &data], "");
    assert!(o.status.success(), "{}", out(&o));
    std::thread::sleep(Duration::from_millis(1100));
    let o = login("carol", "carol's long password");
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
}

#[test]
fn login_asks_for_the_password_on_a_terminal_without_echo() {
    if !crate::support::tools::require("script") {
        return;
    }
    let srv = TestServer::start_with(configure);
    let home = Home::new();
    // script(1) gives agent a terminal; the password is typed once the prompt is up.
    let cmd = format!(
        "{} login -u writer --registry {}",
        env!("CARGO_BIN_EXE_agent"),
        srv.host()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("HOME", home.path())
        .env_remove("AAC_HOME")
        .env_remove("AGENT_CONFIG_DIR")
        .env_remove("AGENT_REGISTRY_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_millis(1500));
    {
        use std::io::Write;
        stdin
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("type");
    }
    let o = child.wait_with_output().expect("script output");
    drop(stdin);
    let text = out(&o);
    assert!(text.contains("Password:"), "{text}");
    assert!(text.contains("Login Succeeded: writer"), "{text}");
    assert!(!text.contains(PASSWORD), "the password was echoed: {text}");
    assert!(home.path().join(".aac/auth.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_a_blob_after_retrying_its_head() {
    use http_body_util::BodyExt;
    let fake = FakeUpstream::start();
    let data = crate::support::random(3 << 20, 7);
    let digest = fake.add_blob("agents/big", data.clone());
    fake.set(|s| s.server_errors = 2);
    let c = Client::new(&fake.url(), Duration::from_secs(30)).expect("client");
    let path = format!("/v2/agents/big/blobs/{digest}");
    let mut r = c
        .open(Method::GET, &path, http::HeaderMap::new(), Bytes::new())
        .await
        .expect("open");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.attempts, 3);
    let mut got = Vec::new();
    while let Some(frame) = r.body.frame().await {
        if let Ok(chunk) = frame.expect("frame").into_data() {
            got.extend_from_slice(&chunk);
        }
    }
    assert_eq!(
        agent_registry::oci::Digest::sha256_of(&got).to_string(),
        digest
    );
    assert_eq!(fake.blob_gets(&digest), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_reused_until_they_expire() {
    let fake = FakeUpstream::start();
    fake.set(|s| {
        s.auth = AuthMode::Bearer {
            expires_in: Some(11),
            credentials: Some(("ann".into(), "pw".into())),
            reject_tokens: false,
        }
    });
    let c = Client::new(&fake.url(), Duration::from_secs(30))
        .expect("client")
        .with_credentials(Credentials::Basic {
            username: "ann".into(),
            password: "pw".into(),
        });
    for _ in 0..3 {
        let r = c.get("/v2/").await.expect("ping");
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(fake.token_requests(), 1, "one token while it lives");
    // The token goes first once known: one 401 round trip in all.
    assert_eq!(fake.hits("GET", "/v2/"), 4);
    // expires_in 11: kept 1 s (10 s before its end), then fetched anew.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.get("/v2/").await.expect("ping");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(fake.token_requests(), 2);
    let basic = format!("Basic {}", b64("ann:pw"));
    assert!(fake
        .token_auth()
        .iter()
        .all(|a| a.as_deref() == Some(basic.as_str())));
}
