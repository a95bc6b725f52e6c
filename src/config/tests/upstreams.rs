//! Tests of `[mirror]`, `[upstreams."<host>"]`, `--upstream` and the example configs.

use super::{check, load};
use crate::config::*;
use std::path::PathBuf;
use std::time::Duration;

fn names(c: &Config) -> Vec<&str> {
    c.upstreams.iter().map(|u| u.name.as_str()).collect()
}

const DEFAULT_NAMES: [&str; 7] = [
    "docker.io",
    "gcr.io",
    "ghcr.io",
    "mcr.microsoft.com",
    "public.ecr.aws",
    "quay.io",
    "registry.k8s.io",
];

#[test]
fn default_has_seven_upstreams() {
    let c = Config::embedded_default();
    assert_eq!(names(&c), DEFAULT_NAMES);
    let docker = c.upstream("docker.io").unwrap();
    assert_eq!(docker.url, "https://registry-1.docker.io");
    assert_eq!(
        docker.aliases,
        ["docker", "hub", "registry-1.docker.io", "index.docker.io"]
    );
    assert!(docker.library_prefix);
    for u in &c.upstreams[1..] {
        let mut want = UpstreamConfig::new(&u.name, &format!("https://{}", u.name));
        want.library_prefix = false;
        assert_eq!(u, &want);
    }
    let ghcr = c.upstream("ghcr.io").unwrap();
    assert_eq!(
        (ghcr.tag_ttl, ghcr.max_stale, ghcr.max_concurrency),
        (
            Duration::from_secs(300),
            Duration::from_secs(7 * 86_400),
            64
        )
    );
    assert_eq!(
        c.upstream("HUB").map(|u| u.name.as_str()),
        Some("docker.io")
    );
    assert!(c.upstream("example.com").is_none());
    let mirror = MirrorConfig {
        default_upstream: Some("docker.io".into()),
        hosted_prefixes: vec!["agents/".into()],
        route_by_host: false,
        hosted_on_push: true,
        parent: None,
        prefetch_layers: false,
        prefetch_concurrency: 4,
    };
    assert_eq!(c.mirror, mirror);
}

/// docker.io in the embedded file documents every upstream key; the others give only `url`.
#[test]
fn default_file_writes_out_docker_io() {
    let default: toml::Table = DEFAULT_CONFIG_TOML.parse().unwrap();
    let upstreams = default["upstreams"].as_table().unwrap();
    let template = super::super::upstream::template();
    let mut want: Vec<&String> = template.keys().collect();
    let mut docker: Vec<&String> = upstreams["docker.io"].as_table().unwrap().keys().collect();
    want.sort();
    docker.sort();
    assert_eq!(docker, want);
    for (name, table) in upstreams.iter().filter(|(n, _)| *n != "docker.io") {
        let keys: Vec<&String> = table.as_table().unwrap().keys().collect();
        assert_eq!(keys, ["url"], "{name}");
    }
}

#[test]
fn user_file_adds_overrides_and_disables() {
    let text = r#"
[upstreams."registry.example.com:5000"]
url = "HTTPS://Registry.Example.com:5000/"
aliases = ["corp"]
immutable_tags = ['^v?\d+\.\d+\.\d+$', '^sha-[0-9a-f]+$']

[upstreams."docker.io"]
tag_ttl = "1m"

[upstreams."quay.io"]
enabled = false
"#;
    let c = load(text, &[]).unwrap();
    let mut want = DEFAULT_NAMES.to_vec();
    want.retain(|n| *n != "quay.io");
    want.push("registry.example.com:5000");
    want.sort();
    assert_eq!(names(&c), want);
    let docker = c.upstream("docker.io").unwrap();
    let mut expected = Config::embedded_default()
        .upstream("docker.io")
        .unwrap()
        .clone();
    expected.tag_ttl = Duration::from_secs(60);
    assert_eq!(docker, &expected);
    let corp = c.upstream("corp").unwrap();
    assert_eq!(
        (corp.name.as_str(), corp.url.as_str()),
        (
            "registry.example.com:5000",
            "https://registry.example.com:5000"
        )
    );
    assert!(!corp.library_prefix && corp.username.is_none());
    assert_eq!(corp.max_concurrency, 64);
    assert!(corp.is_immutable("v1.2.3") && corp.is_immutable("sha-abc123"));
    assert!(!corp.is_immutable("latest") && !corp.is_immutable("v1.2"));
    assert!(!docker.is_immutable("v1.2.3"));
}

#[test]
fn mirror_section_and_env_overrides() {
    let text =
        "[mirror]\ndefault_upstream = \"ghcr.io\"\nhosted_prefixes = [\"agents/\", \"team/a/\"]\n";
    let c = load(text, &[]).unwrap();
    assert_eq!(c.mirror.default_upstream.as_deref(), Some("ghcr.io"));
    assert_eq!(c.mirror.hosted_prefixes, ["agents/", "team/a/"]);
    // An alias names its upstream; "" is no default upstream.
    let c = load("mirror.default_upstream = \"hub\"", &[]).unwrap();
    assert_eq!(c.mirror.default_upstream.as_deref(), Some("docker.io"));
    let env = [
        ("AGENT_REGISTRY_MIRROR_DEFAULT_UPSTREAM", ""),
        ("AGENT_REGISTRY_MIRROR_ROUTE_BY_HOST", "true"),
        ("AGENT_REGISTRY_MIRROR_HOSTED_PREFIXES", r#"["a/", "b/"]"#),
        // Upstreams get no derived overrides: this is ignored.
        ("AGENT_REGISTRY_UPSTREAMS_DOCKER.IO", "x"),
    ];
    let c = load("mirror.default_upstream = \"quay.io\"", &env).unwrap();
    let want = MirrorConfig {
        default_upstream: None,
        hosted_prefixes: vec!["a/".into(), "b/".into()],
        route_by_host: true,
        hosted_on_push: true,
        parent: None,
        prefetch_layers: false,
        prefetch_concurrency: 4,
    };
    assert_eq!(c.mirror, want);
    // A mirror with no default may drop docker.io.
    let c = load(
        "mirror.default_upstream = \"\"\nupstreams.\"docker.io\".enabled = false",
        &[],
    )
    .unwrap();
    assert!(c.upstream("docker.io").is_none() && c.upstream("hub").is_none());
}

/// One case a line: `<toml text> => <error after "config /etc/ar.toml: ">`; `\n` is a newline.
const FILE_ERRORS: &str = r#"
upstreams."docker.io".tag_tll = "1m"                 => unknown key upstreams."docker.io".tag_tll
upstreams."a.io".urll = "https://a.io"                => unknown key upstreams."a.io".urll
mirror.rout_by_host = true                            => unknown key mirror.rout_by_host
upstreams = 1                                         => key upstreams: expected table, found integer
upstreams."a.io" = 1                                  => key upstreams."a.io": expected table, found integer
upstreams."Foo.io".url = "https://foo.io"             => key upstreams."Foo.io": invalid registry host name "Foo.io": expected lowercase letters, digits, '.' and '-' with an optional :port, e.g. "registry.example.com" or "localhost:5000"
upstreams."a.io:0".url = "https://a.io"               => key upstreams."a.io:0": invalid registry host name "a.io:0": expected lowercase letters, digits, '.' and '-' with an optional :port, e.g. "registry.example.com" or "localhost:5000"
upstreams."a.io".enabled = true                       => key upstreams."a.io".url: must be set, e.g. "https://registry.example.com"
upstreams."a.io".url = "ftp://a.io"                   => key upstreams."a.io".url: invalid url "ftp://a.io": expected http:// or https://
upstreams."a.io".url = "a.io"                         => key upstreams."a.io".url: invalid url "a.io": expected http:// or https://
upstreams."a.io".url = "https://a.io/v2/"             => key upstreams."a.io".url: invalid url "https://a.io/v2/": must not have a path or query (the registry API lives at /v2/)
upstreams."a.io".url = "https://a.io:99999"           => key upstreams."a.io".url: invalid url "https://a.io:99999": invalid port "99999"
upstreams."a.io".url = "https://"                     => key upstreams."a.io".url: invalid url "https://": expected scheme://host[:port], e.g. "https://registry.example.com"
upstreams."a.io".url = "https://a .io"                => key upstreams."a.io".url: invalid url "https://a .io": expected scheme://host[:port], e.g. "https://registry.example.com"
upstreams."a.io".url = "https://bob:pw@a.io"          => key upstreams."a.io".url: must not contain credentials: use username and password (or token)
upstreams."docker.io".url = 5                         => key upstreams."docker.io".url: expected a string like "https://registry-1.docker.io", found integer 5
upstreams."docker.io".tag_ttl = "0s"                  => key upstreams."docker.io".tag_ttl: must be greater than 0
upstreams."ghcr.io".max_stale = "7"                   => key upstreams."ghcr.io".max_stale: invalid duration "7": add a unit (ms, s, m, h, d, w)
upstreams."ghcr.io".connect_timeout = "0ms"           => key upstreams."ghcr.io".connect_timeout: must be greater than 0
upstreams."ghcr.io".first_byte_timeout = "x"          => key upstreams."ghcr.io".first_byte_timeout: invalid duration "x": expected a number and a unit, e.g. "24h"
upstreams."ghcr.io".idle_timeout = "1y"               => key upstreams."ghcr.io".idle_timeout: invalid duration "1y": unknown unit "y" (use ms, s, m, h, d, w)
upstreams."ghcr.io".rate_limit_scope = "repo"         => key upstreams."ghcr.io".rate_limit_scope: expected "upstream" or "repository", found "repo"
upstreams."docker.io".max_concurrency = 0             => key upstreams."docker.io".max_concurrency: must be at least 1, found 0
upstreams."docker.io".max_concurrency = "8"           => key upstreams."docker.io".max_concurrency: expected integer, found string
upstreams."docker.io".immutable_tags = ["^v\\d+$", "^v(\\d+$"] => key upstreams."docker.io".immutable_tags[1]: invalid regex "^v(\\d+$": unclosed group
upstreams."docker.io".username = "bob"                => key upstreams."docker.io".username: is set but password is empty
upstreams."docker.io".password = "pw"                 => key upstreams."docker.io".password: is set but username is empty
upstreams."ghcr.io".token = "t"\nupstreams."ghcr.io".username = "u"\nupstreams."ghcr.io".password = "p" => key upstreams."ghcr.io".token: cannot be combined with username and password
upstreams."docker.io".ca_file = "/nonexistent/ca.pem" => key upstreams."docker.io".ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)
upstreams."docker.io".ca_file = "/"                   => key upstreams."docker.io".ca_file: / is a directory, expected a PEM file
upstreams."docker.io".password = "${NOPE}"            => key upstreams."docker.io".password: environment variable NOPE is not set
upstreams."docker.io".aliases = "hub"                 => key upstreams."docker.io".aliases: expected array, found string
upstreams."docker.io".aliases = [1]                   => key upstreams."docker.io".aliases: expected an array of strings, found integer 1 at index 0
upstreams."docker.io".aliases = ["hub", "Hub"]        => key upstreams."docker.io".aliases[1]: invalid registry host name "Hub": expected lowercase letters, digits, '.' and '-' with an optional :port, e.g. "registry.example.com" or "localhost:5000"
upstreams."ghcr.io".aliases = ["gh", "hub"]           => key upstreams."ghcr.io".aliases: alias "hub" is also an alias of upstream "docker.io"
upstreams."quay.io".aliases = ["ghcr.io"]             => key upstreams."quay.io".aliases: alias "ghcr.io" is also the name of upstream "ghcr.io"
upstreams.hub.url = "https://hub.example.com"         => key upstreams.hub: name "hub" is also an alias of upstream "docker.io"
upstreams."docker.io".enabled = false                 => key upstreams."docker.io".enabled: disables "docker.io", which is mirror.default_upstream: also set mirror.default_upstream ("" for none)
mirror.default_upstream = "quay.io"\nupstreams."quay.io".enabled = false => key mirror.default_upstream: "quay.io" is disabled (upstreams."quay.io".enabled = false)
mirror.default_upstream = "nope"                      => key mirror.default_upstream: "nope" is not an enabled upstream (enabled: docker.io, gcr.io, ghcr.io, mcr.microsoft.com, public.ecr.aws, quay.io, registry.k8s.io)
mirror.hosted_prefixes = ["agents"]                   => key mirror.hosted_prefixes[0]: "agents" must end with "/", e.g. "agents/"
mirror.hosted_prefixes = ["a/", ""]                   => key mirror.hosted_prefixes[1]: must not be empty
mirror.hosted_prefixes = ["/a/"]                      => key mirror.hosted_prefixes[0]: "/a/" must not start with "/"
mirror.hosted_prefixes = ["a/", ["b/"]]              => key mirror.hosted_prefixes: expected an array of strings, found array ["b/"] at index 1
mirror.route_by_host = "yes"                          => key mirror.route_by_host: expected boolean, found string
"#;

#[test]
fn file_errors_name_origin_and_key() {
    for line in FILE_ERRORS.lines().filter(|l| !l.is_empty()) {
        let (text, expected) = line.split_once(" => ").unwrap();
        let text = text.trim().replace("\\n", "\n");
        check(&text, &[], &format!("config /etc/ar.toml: {expected}"));
    }
}

#[test]
fn env_errors_name_variable_and_key() {
    let var = "AGENT_REGISTRY_MIRROR_DEFAULT_UPSTREAM";
    let want = format!(
        "environment {var}: key mirror.default_upstream: \"nope\" is not an enabled upstream (enabled: {})",
        DEFAULT_NAMES.join(", ")
    );
    check("", &[(var, "nope")], &want);
    let var = "AGENT_REGISTRY_MIRROR_HOSTED_PREFIXES";
    let want = format!(
        "environment {var}: key mirror.hosted_prefixes[0]: \"x\" must end with \"/\", e.g. \"x/\""
    );
    check(
        "mirror.hosted_prefixes = [\"a/\"]",
        &[(var, "[\"x\"]")],
        &want,
    );
}

#[test]
fn upstream_flag_overrides_and_adds() {
    let mut c = load("upstreams.\"docker.io\".tag_ttl = \"2m\"", &[]).unwrap();
    c.apply_upstream_flag("docker.io=http://127.0.0.1:5001/")
        .unwrap();
    let docker = c.upstream("docker.io").unwrap();
    assert_eq!(docker.url, "http://127.0.0.1:5001");
    assert_eq!(
        (docker.tag_ttl, docker.library_prefix),
        (Duration::from_secs(120), true)
    );
    assert_eq!(docker.aliases.len(), 4);
    // An alias names its upstream.
    c.apply_upstream_flag("hub=https://mirror.example.com")
        .unwrap();
    assert_eq!(
        c.upstream("docker.io").unwrap().url,
        "https://mirror.example.com"
    );
    c.apply_upstream_flag("localhost:5002=http://localhost:5002")
        .unwrap();
    assert_eq!(
        c.upstream("localhost:5002"),
        Some(&UpstreamConfig::new(
            "localhost:5002",
            "http://localhost:5002"
        ))
    );
    assert_eq!(c.upstreams.len(), 8);
    let sorted = names(&c).windows(2).all(|w| w[0] < w[1]);
    assert!(sorted, "{:?}", names(&c));
}

#[test]
fn upstream_flag_errors() {
    let cases = [
        ("docker.io", "expected NAME=URL, e.g. docker.io=https://registry-1.docker.io"),
        ("docker.io=", "url: must be set, e.g. \"https://registry.example.com\""),
        ("docker.io=ftp://x", "url: invalid url \"ftp://x\": expected http:// or https://"),
        ("x.io=https://x.io/v2", "url: invalid url \"https://x.io/v2\": must not have a path or query (the registry API lives at /v2/)"),
        ("X.io=https://x.io", "invalid registry host name \"X.io\": expected lowercase letters, digits, '.' and '-' with an optional :port, e.g. \"registry.example.com\" or \"localhost:5000\""),
    ];
    for (spec, problem) in cases {
        let mut c = Config::embedded_default();
        let err = c.apply_upstream_flag(spec).unwrap_err().to_string();
        assert_eq!(err, format!("--upstream {spec}: {problem}"));
    }
    let mut c = Config::embedded_default();
    let err = c
        .apply_upstream_flag("x.io=https://bob:hunter2@x.io")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "--upstream x.io=https://<redacted>@x.io: url: must not contain credentials: use username and password (or token)"
    );
}

fn secret_env() -> [(&'static str, &'static str); 3] {
    [
        ("HUB_USER", "robot"),
        ("HUB_PASS", "hunter2"),
        ("GHCR_TOKEN", "ghp_s3cret"),
    ]
}

const SECRET_TEXT: &str = r#"
[upstreams."docker.io"]
username = "${HUB_USER}"
password = "${HUB_PASS}"
[upstreams."ghcr.io"]
token = "${GHCR_TOKEN}"
"#;

#[test]
fn secrets_are_redacted_in_show_and_debug() {
    let c = load(SECRET_TEXT, &secret_env()).unwrap();
    let docker = c.upstream("docker.io").unwrap();
    assert_eq!(docker.username.as_deref(), Some("robot"));
    assert_eq!(
        docker.password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    let ghcr = c.upstream("ghcr.io").unwrap();
    assert_eq!(ghcr.token.as_ref().map(Secret::expose), Some("ghp_s3cret"));
    let (shown, debug) = (c.to_toml_redacted(), format!("{c:?}"));
    for text in [&shown, &debug] {
        assert!(
            !text.contains("hunter2") && !text.contains("ghp_s3cret"),
            "{text}"
        );
    }
    assert!(debug.contains("password: Some(<redacted>)"), "{debug}");
    let docker_shown = shown.split("[upstreams.\"docker.io\"]").nth(1).unwrap();
    let docker_shown = docker_shown.split("\n[").next().unwrap();
    assert!(
        docker_shown.contains("username = \"robot\"\npassword = \"<redacted>\"\ntoken = \"\"\n"),
        "{shown}"
    );
    // What comes back is the placeholder, everything else equal.
    let back = Config::from_toml_str(&shown, "shown", &|_| None).unwrap();
    let mut want = c.upstreams.clone();
    for u in &mut want {
        for s in [&mut u.password, &mut u.token].into_iter().flatten() {
            *s = Secret::new("<redacted>");
        }
    }
    assert_eq!(back.upstreams, want);
}

#[test]
fn redacted_toml_reparses_to_equal_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let text = format!(
        r#"
[mirror]
default_upstream = "lab.local:5000"
hosted_prefixes = ["agents/", "team-$${{x}}/"]
route_by_host = true
[upstreams."lab.local:5000"]
url = "http://lab.local:5000"
aliases = ["lab"]
ca_file = "{}"
insecure_skip_verify = true
tag_ttl = "1h30m"
immutable_tags = ['^v?\d+\.\d+\.\d+$', "^it's$"]
max_stale = "500ms"
serve_stale_on_404 = true
max_concurrency = 3
[upstreams."gcr.io"]
enabled = false
"#,
        ca.display()
    );
    let c = load(&text, &[]).unwrap();
    assert_eq!(c.mirror.hosted_prefixes[1], "team-${x}/");
    let shown = c.to_toml_redacted();
    let back = Config::from_toml_str(&shown, "shown", &|_| None);
    let back = back.unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!((&back.mirror, &back.upstreams), (&c.mirror, &c.upstreams));
    assert!(back.upstream("gcr.io").is_none());
    assert!(
        shown.contains("[upstreams.\"gcr.io\"]\nenabled = false\n"),
        "{shown}"
    );
}

/// Every variable the examples reference, with a made-up value.
const EXAMPLE_ENV: [(&str, &str); 4] = [
    ("DOCKERHUB_USER", "edge-robot"),
    ("DOCKERHUB_TOKEN", "dckr_pat_x"),
    ("GHCR_USER", "edge-bot"),
    ("GHCR_TOKEN", "ghp_x"),
];

#[test]
fn example_configs_parse_and_validate() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let env = |name: &str| {
        EXAMPLE_ENV
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = Config::load(Some(&path), &env).unwrap_or_else(|e| panic!("{e}"));
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            seen.push((name, c));
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let files: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(files, ["ci-farm.toml", "edge.toml", "hosted.toml"]);
    let config = |name: &str| &seen.iter().find(|(n, _)| n == name).unwrap().1;
    let edge = config("edge.toml");
    let hub = edge.upstream("docker.io").unwrap();
    assert_eq!(
        hub.password.as_ref().map(Secret::expose),
        Some("dckr_pat_x")
    );
    assert!(edge.upstream("ghcr.io").unwrap().password.is_some());
    let ci = config("ci-farm.toml");
    assert!(ci.upstream("docker.io").unwrap().is_immutable("1.27.3"));
    assert!(ci.upstream("docker.io").unwrap().tag_ttl >= Duration::from_secs(3600));
    assert_eq!(config("hosted.toml").mirror.default_upstream, None);
}

#[test]
fn parent_keys_are_checked_with_their_file() {
    let c = load(
        "[mirror]\nparent = \"https://regional.example:5000/\"\nparent_username = \"edge\"\nparent_password = \"pw\"\nparent_fallback = true",
        &[],
    )
    .unwrap();
    let p = c.mirror.parent.clone().unwrap();
    assert_eq!(p.url, "https://regional.example:5000");
    assert_eq!(p.password.as_ref().map(|s| s.expose()), Some("pw"));
    assert!(p.fallback);
    assert_eq!(p.upstream().name, "parent regional.example:5000");
    assert!(c
        .to_toml_redacted()
        .contains("parent_password = \"<redacted>\""));
    check(
        "[mirror]\nparent_fallback = true",
        &[],
        "config /etc/ar.toml: key mirror.parent_fallback: is set but mirror.parent is empty",
    );
    check(
        "[mirror]\nparent = \"ftp://x\"",
        &[],
        "config /etc/ar.toml: key mirror.parent: invalid url \"ftp://x\": expected http:// or https://",
    );
    check(
        "[mirror]\nparent = \"http://p:5000\"\nparent_username = \"edge\"",
        &[],
        "config /etc/ar.toml: key mirror.parent_username: is set but mirror.parent_password is empty",
    );
    check(
        "[mirror]\nprefetch_concurrency = 0",
        &[],
        "config /etc/ar.toml: key mirror.prefetch_concurrency: must be at least 1, found 0",
    );
}

#[test]
fn preheat_tables_are_typed_and_checked() {
    let text = "[[preheat]]\nimages = [\"docker.io/library/alpine:3.20\"]\nplatform = \"linux/amd64\"\ninterval = \"30m\"\n[[preheat]]\nimages = [\"ghcr.io/org/app:1\"]\n";
    let c = load(text, &[]).unwrap();
    assert_eq!(c.preheat.len(), 2);
    assert_eq!(c.preheat[0].interval, Duration::from_secs(1800));
    assert_eq!(c.preheat[0].platform.as_string(), "linux/amd64");
    assert_eq!(c.preheat[1].platform, Platform::All);
    assert_eq!(c.preheat[1].interval, Duration::from_secs(3600));
    // `config show` reads back the same.
    let shown = c.to_toml_redacted();
    let back = load(&shown, &[]).unwrap();
    assert_eq!(back.preheat, c.preheat);
    check(
        "[[preheat]]\nimages = [\"a:1\"]\nplatform = \"amd64\"",
        &[],
        "config /etc/ar.toml: key preheat[0].platform: expected \"all\" or OS/ARCH (e.g. \"linux/amd64\"), found \"amd64\"",
    );
    check(
        "[[preheat]]\nimages = []",
        &[],
        "config /etc/ar.toml: key preheat[0].images: must list at least one image",
    );
}
