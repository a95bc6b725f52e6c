//! The seed's `agent` command lines (../shared/seed/registry.md, issue 17) run as written,
//! as the real `agent` binary, against the project's server with a user allowed to push.
//!
//! Names: the seed's plain `my-agent` is used as written. The README's rule (## Use it as
//! a mirror) is that a plain name goes to `mirror.default_upstream` until it is pushed here,
//! and a push to it by a user with push rights makes it a hosted repository
//! (`mirror.hosted_on_push`, on by default). The server here mirrors a fake Docker Hub as
//! its default upstream, so that rule is what is exercised, not a hosted-only server.
//!
//! Hosts: the seed's `myregistry.com` and `https://custom.registry.com` are replaced by
//! the test server's `host:port` and `http://host:port` (the only change to the lines);
//! `--profile production` and the default profile are profiles of `$AAC_HOME/config.yaml`
//! pointing at the test server. Left out (another issue, supply chain): `--security-scan`,
//! `image scan-results`, `policy set`; the signing lines (`--sign`, `--verify-signature`,
//! `image signatures`) run in tests/it/signing.rs.

use crate::auth::PASSWORD;
use crate::support::agent::{text, Home};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::server::{default_upstream, TestServer};
use agent_registry::config::{Action, HostedWrites, RuleConfig, Secret, UserConfig};
use std::path::Path;

fn user(name: &str) -> UserConfig {
    UserConfig {
        name: name.into(),
        password_hash: Some(Secret::new(bcrypt::hash(PASSWORD, 4).expect("bcrypt"))),
        groups: vec![],
    }
}

/// `ci` operates the registry (admin on everything, so push anywhere); `john` exists
/// with no rights until the seed's `permission add` gives him some.
fn server(upstream: &str) -> TestServer {
    TestServer::start_with(|c| {
        default_upstream(c, upstream);
        c.server.hosted_writes = HostedWrites::Auth;
        c.auth.users = vec![user("ci"), user("john")];
        c.auth.rules = vec![RuleConfig {
            repos: vec!["*".into()],
            users: vec!["ci".into()],
            groups: vec![],
            actions: vec![Action::Admin],
        }];
    })
}

fn agent_yaml(dir: &Path) {
    std::fs::write(dir.join("main.py"), "print('hello')\n").expect("main.py");
    std::fs::write(
        dir.join("agent.yaml"),
        "name: my-agent\nversion: 1.0.0\ndescription: the seed's agent\nauthors: ai-team\ncapabilities: [text-generation]\n",
    )
    .expect("agent.yaml");
}

/// Runs one seed line (split on spaces, quotes already removed) in `dir`; returns
/// stdout+stderr, and records the line in `failed` when it does not succeed.
fn line(home: &Home, dir: &Path, cmd: &str, failed: &mut Vec<String>) -> String {
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    let o = home
        .cmd(&args)
        .current_dir(dir)
        .output()
        .expect("run agent");
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    if !o.status.success() {
        failed.push(format!("`{cmd}`: {out}"));
    }
    out
}

#[test]
fn the_seeds_command_lines_run_as_written() {
    let up = FakeUpstream::start();
    let srv = server(&up.url());
    let host = srv.host();
    let url = format!("http://{host}");
    let home = Home::new();
    std::fs::write(
        home.dir.path().join("config.yaml"),
        format!(
            "registries:\n  default:\n    url: {url}\n    auth:\n      type: username\n      username: ci\n      password: \"{PASSWORD}\"\n  production:\n    url: {host}\n    auth:\n      type: username\n      username: ci\n      password: \"{PASSWORD}\"\n  john:\n    url: {host}\n    auth:\n      type: username\n      username: john\n      password: \"{PASSWORD}\"\n"
        ),
    )
    .expect("config.yaml");
    let ctx = tempfile::tempdir().expect("ctx");
    agent_yaml(ctx.path());
    let dir = ctx.path();
    let mut failed = Vec::new();
    let mut run = |cmd: &str| line(&home, dir, cmd, &mut failed);

    // CI/CD (GitHub Actions), with a fixed SHA for ${{ github.sha }}.
    run("agent build -t my-agent:3f2a9c1 .");
    run("agent push my-agent:3f2a9c1");
    home.ok(&["tag", "my-agent:3f2a9c1", "my-agent:latest"]);
    run("agent push my-agent:latest");

    // Pushing.
    run(&format!("agent push my-agent:latest --registry {host}"));
    for t in ["1.0.0", "1.0.1", "1.1.0", "2.0.0", "dev", "staging"] {
        home.ok(&["tag", "my-agent:latest", &format!("my-agent:{t}")]);
    }
    for t in [
        "1.0.0", "1.0.1", "1.1.0", "2.0.0", "latest", "dev", "staging",
    ] {
        run(&format!("agent push my-agent:{t}"));
    }
    run("agent push my-agent --all-tags");
    run("agent push my-agent:latest --profile production");
    run(&format!("agent push my-agent:latest --registry {url}"));

    // Pulling and listing.
    home.ok(&["rmi", "my-agent:latest"]);
    run("agent pull my-agent:latest");
    run(&format!("agent pull my-agent:latest --registry {host}"));
    let quiet = run("agent pull my-agent:latest --quiet");
    let images = run("agent images");
    let filtered = run("agent images --filter my-agent");
    run("agent images --all");

    // Search.
    let found = run("agent search my-agent");
    run("agent search my-agent:latest");
    let by_cap = run("agent search --capability text-generation");
    let by_author = run("agent search --author ai-team");

    // Monitoring.
    run("agent registry metrics");
    run("agent registry metrics --metric push_count --period 24h");
    let mut none = Vec::new();
    let query = line(
        &home,
        dir,
        "agent registry metrics --query rate(push_operations_total[5m])",
        &mut none,
    );
    run("agent registry health");
    run("agent registry health --detailed");
    run("agent registry health --timeout 30s");

    // Administration and troubleshooting.
    run("agent registry auth test");
    let info = run("agent registry image info my-agent:latest");
    run("agent registry logs --level error --since 1h");
    run("agent push my-agent:latest --visibility private");
    // Up to here the plain name was hosted by the push: the fake Docker Hub was never
    // asked for its manifests. (john's refused pull below is answered as the upstream
    // would answer a never-pushed name, so that one does ask it: README, Security.)
    let proxied: u64 = ["latest", "1.0.0", "3f2a9c1"]
        .iter()
        .map(|t| up.hits("GET", &format!("/v2/library/my-agent/manifests/{t}")))
        .sum();
    let before = home.run(&["pull", "my-agent:latest", "--profile", "john"]);
    run("agent registry permission add my-agent:latest --user john --permission read");
    // john reads the private image now (his pull is what the access log shows him doing).
    let john = home.run(&["pull", "my-agent:latest", "--profile", "john"]);
    let john_pulled = john.status.success();
    let mut john_log = String::new();
    for _ in 0..100 {
        john_log = run("agent registry access-logs --user john --since 24h");
        if john_log.contains("my-agent") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run("agent registry ping");
    run("agent registry config show");
    run("agent registry logs --level debug");

    assert!(
        failed.is_empty(),
        "seed lines failed:\n{}",
        failed.join("\n")
    );
    // --quiet: no progress, only the image ID (README).
    assert!(
        quiet.trim().starts_with("sha256:") && quiet.trim().lines().count() == 1,
        "--quiet printed: {quiet}"
    );
    assert!(images.contains("my-agent"), "{images}");
    assert!(filtered.contains("my-agent"), "{filtered}");
    for out in [&found, &by_cap, &by_author] {
        assert!(out.contains("my-agent"), "{out}");
    }
    assert!(info.contains("sha256:"), "{info}");
    let vis = home.ok(&["registry", "visibility", "my-agent"]);
    assert!(vis.contains("private"), "--visibility private: {vis}");
    assert!(
        !before.status.success(),
        "john pulled a private image unasked"
    );
    assert!(
        john_pulled,
        "john could not pull after `permission add`: {}",
        text(&john.stderr)
    );
    assert!(john_log.contains("my-agent"), "{john_log}");
    assert_eq!(
        none.len(),
        1,
        "--query without Prometheus succeeded: {query}"
    );
    assert!(query.contains("no Prometheus configured"), "{query}");
    assert_eq!(proxied, 0, "manifests of the hosted my-agent were proxied");
}

/// The README's GitHub Actions job (Integration): an API token made for `ci` in
/// `AGENT_REGISTRY_TOKEN` and the server in `AGENT_REGISTRY_URL`, no profile, no login;
/// then the pull-only token of the Kubernetes and Compose examples, as the Basic
/// password a docker-registry secret or `docker login` sends.
#[test]
fn the_readme_ci_job_pushes_with_a_token_from_the_environment() {
    let up = FakeUpstream::start();
    let srv = server(&up.url());
    let url = format!("http://{}", srv.host());
    let (push, _) = srv
        .app
        .auth
        .create_token("ci", "agents/*:pull,push", None)
        .expect("token");
    let (pull, _) = srv
        .app
        .auth
        .create_token("ci", "agents/*:pull", None)
        .expect("token");
    let ctx = tempfile::tempdir().expect("ctx");
    agent_yaml(ctx.path());
    let home = Home::new();
    let sha = "3f2a9c1";
    for args in [
        vec!["build", "-t", "agents/my-agent:3f2a9c1", "."],
        vec!["push", "agents/my-agent:3f2a9c1"],
        vec!["tag", "agents/my-agent:3f2a9c1", "agents/my-agent:latest"],
        vec!["push", "agents/my-agent:latest"],
    ] {
        let o = home
            .cmd(&args)
            .current_dir(ctx.path())
            .env("AGENT_REGISTRY_URL", &url)
            .env("AGENT_REGISTRY_TOKEN", &push)
            .output()
            .expect("agent");
        assert!(
            o.status.success(),
            "{args:?} ({sha}): {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
    }

    // Another machine with the pull-only token as a Basic password (user name "token").
    let node = Home::new();
    let o = node
        .cmd(&["pull", "agents/my-agent:latest", "--registry", &url])
        .env("DOCKER_USERNAME", "token")
        .env("DOCKER_PASSWORD", &pull)
        .output()
        .expect("agent");
    assert!(o.status.success(), "{}", text(&o.stderr));
    // ...which cannot push.
    let o = node
        .cmd(&["push", "agents/my-agent:latest", "--registry", &url])
        .env("DOCKER_USERNAME", "token")
        .env("DOCKER_PASSWORD", &pull)
        .output()
        .expect("agent");
    assert!(!o.status.success(), "a pull-only token pushed");
}
