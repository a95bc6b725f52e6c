//! Tests of loading, merging, env overrides, units and rendering; upstreams are in
//! `tests/upstreams.rs`.

use super::merge::env_value;
use super::*;
use toml::Value;

mod upstreams;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    load_at(text, "/etc/ar.toml", env)
}

/// Parses `text` as the file `origin` with `env` as the whole environment; the error as text.
pub(super) fn load_at(text: &str, origin: &str, env: &[(&str, &str)]) -> Result<Config, String> {
    let env = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    Config::from_toml_str(text, origin, &env).map_err(|e| e.to_string())
}

/// `text` with `env` fails with exactly `expected`.
fn check(text: &str, env: &[(&str, &str)], expected: &str) {
    assert_eq!(
        load(text, env).expect_err(text),
        expected,
        "{text:?} {env:?}"
    );
}

#[test]
fn default_parses_and_matches_builtin() {
    let parsed = Config::load(None, &|_| None).unwrap();
    let builtin = Config::builtin();
    assert_eq!(
        (&parsed.server, &parsed.storage, &parsed.log),
        (&builtin.server, &builtin.storage, &builtin.log)
    );
    assert_eq!(
        (&parsed.mirror, &parsed.upstreams),
        (&builtin.mirror, &builtin.upstreams)
    );
    assert_eq!(parsed.origin, "embedded default");
    assert_eq!(Config::embedded_default().server.max_manifest_size, 4 << 20);
}

#[test]
fn partial_file_merges_over_default() {
    let c = load("[server]\nlisten = \"127.0.0.1:6000\"\n", &[]).unwrap();
    assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 6000)));
    assert_eq!(
        (c.server.max_manifest_size, c.server.hosted_writes),
        (4 << 20, HostedWrites::Auth)
    );
    assert_eq!(
        (c.storage, c.origin.as_str()),
        (Config::builtin().storage, "/etc/ar.toml")
    );
    assert_eq!(load("", &[]).unwrap().log, Config::builtin().log);
}

/// One case a line: `<toml text> => <error after "config /etc/ar.toml: ">`; `\n` is a newline.
const FILE_ERRORS: &str = r#"
server.listen = "0.0.0.0:99999"        => key server.listen: invalid socket address "0.0.0.0:99999"
server.lisen = "x"                     => unknown key server.lisen
[sever]                                => unknown key sever
server.listen = 5000                   => key server.listen: expected a string like "0.0.0.0:5000", found integer 5000
server = 1                             => key server: expected table, found integer
# x\n\n[server                         => line 3 column 8: invalid table header; expected `.`, `]`
server.max_manifest_size = "0"         => key server.max_manifest_size: must be greater than 0
server.max_manifest_size = "65MiB"     => key server.max_manifest_size: "65MiB" is larger than the limit of 64MiB
server.max_manifest_size = "10XB"      => key server.max_manifest_size: invalid size "10XB": unknown unit "XB" (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)
server.hosted_writes = "all"           => key server.hosted_writes: invalid value "all": expected "auth" or "loopback"
storage.upload_expiry = "24"           => key storage.upload_expiry: invalid duration "24": add a unit (ms, s, m, h, d, w)
storage.upload_purge_interval = "0s"   => key storage.upload_purge_interval: must be greater than 0
storage.data_dir = ""                  => key storage.data_dir: must not be empty
log.level = " "                        => key log.level: must not be empty
log.format = "xml"                     => key log.format: invalid value "xml": expected "text" or "json"
storage.data_dir = "${NOPE}/x"         => key storage.data_dir: environment variable NOPE is not set
log.level = "${OPEN"                   => key log.level: unterminated ${ (write $${ for a literal ${)
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
    let env = [("AGENT_REGISTRY_SERVER_LISTEN", "nope")];
    let want = r#"environment AGENT_REGISTRY_SERVER_LISTEN: key server.listen: invalid socket address "nope""#;
    check("", &env, want);
    let env = [("AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY", "5")];
    let want = "environment AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY: key storage.upload_expiry: invalid duration \"5\": add a unit (ms, s, m, h, d, w)";
    check("storage.upload_expiry = \"1h\"", &env, want);
}

#[test]
fn load_reads_file_or_names_it() {
    let err = Config::load(Some(Path::new("/nonexistent/x.toml")), &|_| None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config /nonexistent/x.toml: cannot read: No such file or directory (os error 2)"
    );
    let path =
        std::env::temp_dir().join(format!("agent-registry-config-{}.toml", std::process::id()));
    std::fs::write(&path, "[log]\nformat = \"json\"\n").unwrap();
    let result = Config::load(Some(&path), &|_| None);
    std::fs::remove_file(&path).unwrap();
    let c = result.unwrap();
    assert_eq!(
        (c.log.format, c.origin),
        (LogFormat::Json, path.display().to_string())
    );
}

#[test]
fn env_overrides_string_size_duration() {
    let env = [
        ("AGENT_REGISTRY_SERVER_LISTEN", "127.0.0.1:7000"),
        ("AGENT_REGISTRY_SERVER_MAX_MANIFEST_SIZE", "8MiB"),
        ("AGENT_REGISTRY_STORAGE_UPLOAD_EXPIRY", "12h"),
        ("AGENT_REGISTRY_STORAGE_DATA_DIR", "/var/lib/ar"),
    ];
    let c = load("[server]\nlisten = \"127.0.0.1:6000\"", &env).unwrap();
    assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 7000)));
    assert_eq!(c.server.max_manifest_size, 8 << 20);
    assert_eq!(c.storage.upload_expiry, Duration::from_secs(12 * 3600));
    assert_eq!(c.storage.data_dir, PathBuf::from("/var/lib/ar"));
}

#[test]
fn env_values_take_the_default_type() {
    let (int, float, array) = (Value::Integer(1), Value::Float(1.0), Value::Array(vec![]));
    let ok = [
        (
            "x y",
            Value::String("a".into()),
            Value::String("x y".into()),
        ),
        (" 42 ", int.clone(), Value::Integer(42)),
        ("1.5", float.clone(), Value::Float(1.5)),
        ("2", float, Value::Integer(2)),
        ("true", Value::Boolean(false), Value::Boolean(true)),
        (
            "[1, 2]",
            Value::Array(vec![Value::Integer(0)]),
            Value::Array(vec![Value::Integer(1), Value::Integer(2)]),
        ),
        (
            r#"["a/"]"#,
            array.clone(),
            Value::Array(vec![Value::String("a/".into())]),
        ),
    ];
    for (raw, default, want) in ok {
        assert_eq!(env_value(raw, "x.y", &default), Ok(want), "{raw}");
    }
    assert_eq!(
        env_value("x", "x.y", &int),
        Err(r#"invalid integer "x""#.into())
    );
    assert_eq!(
        env_value("yes", "x.y", &Value::Boolean(false)),
        Err(r#"invalid boolean "yes""#.into())
    );
    assert_eq!(
        env_value("3", "x.y", &array),
        Err("expected array, found integer".into())
    );
    assert_eq!(
        env_value("[1]", "x.y", &array),
        Err("expected an array of strings, found integer 1 at index 0".into())
    );
}

#[test]
fn expands_env_references() {
    let env = [("HOME", "/home/a"), ("LVL", "debug")];
    let text = "storage.data_dir = \"${HOME}/data\"\nlog.level = \"ar=${LVL},x=$${LVL}$$y$\"\n";
    let c = load(text, &env).unwrap();
    assert_eq!(c.storage.data_dir, PathBuf::from("/home/a/data"));
    assert_eq!(c.log.level, "ar=debug,x=${LVL}$$y$");
}

#[test]
fn parse_size_table() {
    let cases = [
        ("10GB", 10_000_000_000),
        ("4MiB", 4 << 20),
        ("256KB", 256_000),
        ("512KiB", 512 << 10),
        ("100B", 100),
        ("1024", 1024),
        ("1.5GB", 1_500_000_000),
        ("2tb", 2_000_000_000_000),
        ("1TiB", 1 << 40),
        (" 3 mib ", 3 << 20),
    ];
    for (input, want) in cases {
        assert_eq!(parse_size(input), Ok(want), "{input:?}");
    }
    for bad in [
        "",
        "10XB",
        "-1GB",
        "1.5",
        "1.",
        ".5GB",
        "GB",
        "99999999999999999999TB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn parse_duration_table() {
    let cases = [
        ("24h", 86_400_000),
        ("90d", 90 * 86_400_000),
        ("30s", 30_000),
        ("500ms", 500),
        ("15m", 900_000),
        ("1h30m", 5_400_000),
        ("1w", 604_800_000),
        ("0s", 0),
    ];
    for (input, ms) in cases {
        assert_eq!(
            parse_duration(input),
            Ok(Duration::from_millis(ms)),
            "{input:?}"
        );
    }
    for bad in ["", "24H", "-1h", "99999999999999999999w"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    let errors = [
        ("24", "add a unit (ms, s, m, h, d, w)"),
        ("1h30", "add a unit (ms, s, m, h, d, w)"),
        ("1h30x", r#"unknown unit "x" (use ms, s, m, h, d, w)"#),
        ("1.5h", r#"unexpected ".5h""#),
        ("h", r#"expected a number and a unit, e.g. "24h""#),
    ];
    for (input, why) in errors {
        assert_eq!(
            parse_duration(input),
            Err(format!("invalid duration {input:?}: {why}"))
        );
    }
}

#[test]
fn format_round_trips() {
    for n in [
        0,
        1,
        100,
        1000,
        1024,
        4 << 20,
        10_000_000_000,
        1_500_000_000,
        2_048_000,
        u64::MAX,
    ] {
        assert_eq!(parse_size(&format_size(n)), Ok(n), "{}", format_size(n));
    }
    assert_eq!(
        [format_size(4 << 20), format_size(10_000_000_000)],
        ["4MiB", "10GB"]
    );
    for ms in [
        1,
        500,
        1000,
        90_000,
        5_400_000,
        86_400_000,
        90 * 86_400_000,
        604_800_000,
    ] {
        let d = Duration::from_millis(ms);
        assert_eq!(
            parse_duration(&format_duration(d)),
            Ok(d),
            "{}",
            format_duration(d)
        );
    }
    assert_eq!(
        [
            format_duration(Duration::from_secs(5400)),
            format_duration(Duration::ZERO)
        ],
        ["90m", "0s"]
    );
}

#[test]
fn redacted_toml_reparses_to_equal_config() {
    let env = [("AGENT_REGISTRY_LOG_FORMAT", "json")];
    let text = "server.listen = \"[::1]:6000\"\nserver.max_manifest_size = \"1.5MB\"\n\
                server.hosted_writes = \"loopback\"\nserver.admin_listen = \"127.0.0.1:9090\"\nstorage.upload_expiry = \"1h30m\"\nlog.level = \"a$${b}\"\n\
                mirror.default_upstream = \"ghcr.io\"\nupstreams.\"quay.io\".enabled = false\n\
                upstreams.\"ghcr.io\".immutable_tags = ['^v\\d+$']\n\
                upstreams.\"ghcr.io\".max_bandwidth = \"50MiB\"\n\
                upstreams.\"ghcr.io\".rate_limit_scope = \"repository\"\n\
                auth.rules = [{ repos = [\"agents/*\"], users = [\"a\"], actions = [\"read\", \"write\"] }]\n\
                auth.token_ttl = \"10m\"\n";
    let c = load(text, &env).unwrap();
    assert_eq!(c.auth.rules[0].actions, [Action::Pull, Action::Push]);
    let ghcr = c.upstream("ghcr.io").map(|u| u.rate_limit_scope);
    assert_eq!(ghcr, Some(crate::config::RateLimitScope::Repository));
    let rendered = c.to_toml_redacted();
    let back = Config::from_toml_str(&rendered, "rendered", &|_| None).unwrap();
    assert_eq!(c.log.level, "a${b}");
    assert_eq!(
        (back.server, back.storage, back.log),
        (c.server, c.storage, c.log)
    );
    assert_eq!((back.mirror, back.upstreams), (c.mirror, c.upstreams));
    assert_eq!(back.auth, c.auth);
    assert!(rendered.starts_with("# effective configuration, loaded from /etc/ar.toml\n"));
}

#[test]
fn auth_section_errors_name_the_key_and_hashes_are_never_shown() {
    let hash = "$2y$04$abcdefghijklmnopqrstuuJ6yJvFh4xM9bqK2q3wHq1T7YdJxH5nS";
    let ok = format!(
        "[[auth.users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\ngroups = [\"ci\"]\n"
    );
    let c = load(&ok, &[]).unwrap();
    assert_eq!(c.auth.users[0].groups, ["ci"]);
    let shown = c.to_toml_redacted();
    assert!(
        !shown.contains(hash) && shown.contains("<redacted>"),
        "{shown}"
    );
    // What `config show` prints loads again.
    let back = Config::from_toml_str(&shown, "shown", &|_| None).unwrap();
    assert_eq!(back.auth.users[0].name, "alice");
    let cases = [
        (
            "[[auth.users]]\nname = \"a\"\npassword_hash = \"plain\"\n",
            "key auth.users[0].password_hash: not a bcrypt hash",
        ),
        (
            "[[auth.users]]\nname = \"a\"\npasword = \"x\"\n",
            "key auth: unknown field `pasword`",
        ),
        (
            "[[auth.rules]]\nrepos = [\"a/*\"]\nactions = [\"fly\"]\n",
            "key auth.rules[0].actions: unknown action \"fly\"",
        ),
        (
            "[[auth.rules]]\nrepos = []\nactions = [\"pull\"]\n",
            "key auth.rules[0].repos: must name at least one",
        ),
        (
            "auth.users = [\"alice\"]\n",
            "key auth.users: expected an array of tables, found string at index 0",
        ),
        (
            "auth.default_visibility = \"secret\"\n",
            "key auth.default_visibility: invalid visibility",
        ),
        (
            "auth.realm = \"ftp://x\"\n",
            "key auth.realm: \"ftp://x\" is not an http(s) URL",
        ),
        (
            "server.admin_listen = \"nope\"\n",
            "key server.admin_listen: invalid socket address",
        ),
        (
            "upstreams.\"ghcr.io\".max_bandwidth = \"fast\"\n",
            "key upstreams.\"ghcr.io\".max_bandwidth: invalid size",
        ),
    ];
    for (text, want) in cases {
        let e = load(text, &[]).unwrap_err();
        assert!(
            e.starts_with("config /etc/ar.toml: ") && e.contains(want),
            "{text}: {e}"
        );
    }
}

#[test]
fn secret_is_redacted() {
    let s = Secret::new("hunter2");
    assert_eq!(
        [format!("{s:?}"), s.to_string()],
        ["<redacted>", "<redacted>"]
    );
    assert_eq!(serde_json::to_string(&s).unwrap(), r#""<redacted>""#);
    assert_eq!(s.expose(), "hunter2");
}
