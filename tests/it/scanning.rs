//! Vulnerability reports as referrers: `agent push --security-scan` and `agent registry
//! image scan-results` as the real `agent` binary against the project's server, and a
//! report attached by oras-py (a real peer) the way `oras attach` does.
//!
//! Real scanners (Trivy, Grype) cannot fetch their vulnerability databases on this machine,
//! so these tests use a tiny scanner stand-in: a shell script set as the profile's
//! `scan.command` that checks it was handed a real OCI archive (`{image}`) and OCI layout
//! (`{dir}`) of the pushed image and the asked-for `{format}`, then prints a report fixture
//! from tests/fixtures/scan/ (SARIF as Trivy writes it, CycloneDX 1.5 as Trivy writes it,
//! Trivy's own JSON), hand-checked against the specs.

use crate::support::agent::{text, Home};
use crate::support::http::Http;
use crate::support::image as img;
use crate::support::server::TestServer;
use crate::support::tools;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scan")
        .join(name)
}

/// The scanner stand-in: `scanner.sh IMAGE_TAR LAYOUT_DIR FORMAT FIXTURE`; each run is
/// logged to `scans.log` next to it.
const SCANNER: &str = r#"#!/bin/sh
set -e
tar -tf "$1" | grep -qx 'index.json' || { echo "scanner: $1 is not an OCI archive" >&2; exit 3; }
tar -tf "$1" | grep -qx 'oci-layout' || { echo "scanner: $1 has no oci-layout" >&2; exit 3; }
test -f "$2/oci-layout" && test -f "$2/index.json" || { echo "scanner: $2 is not an OCI layout" >&2; exit 3; }
test "$(ls "$2/blobs/sha256" | wc -l)" -ge 3 || { echo "scanner: $2 lacks the image's blobs" >&2; exit 3; }
test "$3" = sarif || { echo "scanner: asked for $3" >&2; exit 4; }
echo "$1" >> "$(dirname "$0")/scans.log"
cat "$4"
"#;

/// A home with a built image `agents/scan:1` and a default profile for `host` whose
/// `scan.command` runs the stand-in on `fixture` (none: no scan.command).
fn home_with(host: &str, fixture_name: Option<&str>) -> Home {
    let home = Home::new();
    let ctx = home.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("main.py"), "print('scan me')\n").unwrap();
    std::fs::write(
        ctx.join("agent.yaml"),
        "name: scan\nversion: 1.0.0\ndescription: scan test\n",
    )
    .unwrap();
    home.ok(&["build", "-t", "agents/scan:1", ctx.to_str().unwrap()]);
    let script = home.dir.path().join("scanner.sh");
    std::fs::write(&script, SCANNER).unwrap();
    let mut profile = format!("registries:\n  default:\n    url: {host}\n");
    if let Some(f) = fixture_name {
        let cmd = format!(
            "sh {} {{image}} {{dir}} {{format}} {}",
            script.display(),
            fixture(f).display()
        );
        profile.push_str(&format!("    scan:\n      command: {}\n", json!(cmd)));
    }
    std::fs::write(home.dir.path().join("config.yaml"), profile).unwrap();
    home
}

fn digest_of(home: &Home, name: &str) -> String {
    img::tagged_descriptor(&home.images(), name)["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

fn get(rt: &tokio::runtime::Runtime, host: &str, path: &str) -> Value {
    let r = rt.block_on(Http::new(host).get(path));
    assert_eq!(r.status.as_u16(), 200, "{path}: {:?}", r.body);
    r.json()
}

/// One push with `--security-scan` per report format: the report is a referrer of the
/// pushed digest (referrers API), shaped as the OCI artifact guidance says, and
/// `scan-results` reads it back with the format's counts, ids and fixed versions.
#[test]
fn push_security_scan_attaches_each_format_and_scan_results_reads_it() {
    let srv = TestServer::start();
    let host = srv.host();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cases = [
        (
            "trivy.sarif.json",
            "application/sarif+json",
            "sarif",
            [1, 1, 0, 1, 0],
            (
                "CVE-2023-38545",
                "libcurl4",
                "7.88.1-10+deb12u1",
                Some("7.88.1-10+deb12u3"),
            ),
            ("Trivy", Some("0.57.1")),
        ),
        (
            "cyclonedx.json",
            "application/vnd.cyclonedx+json",
            "cyclonedx",
            [1, 1, 1, 0, 0],
            (
                "CVE-2023-38545",
                "libcurl4",
                "7.88.1-10+deb12u1",
                Some("7.88.1-10+deb12u3"),
            ),
            ("trivy", Some("0.52.0")),
        ),
        (
            "trivy.json",
            "application/vnd.aquasec.trivy.report+json",
            "trivy",
            [0, 1, 1, 1, 0],
            (
                "CVE-2023-4911",
                "libc6",
                "2.36-9+deb12u1",
                Some("2.36-9+deb12u3"),
            ),
            ("Trivy", Some("0.57.1")),
        ),
    ];
    for (file, media_type, format, counts, top, scanner) in cases {
        let home = home_with(&host, Some(file));
        let repo = format!("agents/scan-{format}");
        home.ok(&["tag", "agents/scan:1", &format!("{repo}:1")]);
        let image = digest_of(&home, &format!("{repo}:1"));
        let pushed = home.json(&["push", &format!("{repo}:1"), "--security-scan", "--json"]);
        assert_eq!(pushed["digest"], image.as_str());
        let scan = &pushed["security_scan"];
        assert_eq!(scan["artifact_type"], media_type, "{pushed}");
        assert_eq!(
            scan["scanner_command"], "scan.command of profile default",
            "{pushed}"
        );
        let report_digest = scan["report_digest"].as_str().expect("report digest");

        // The referrers API lists it under the report's media type.
        let idx = get(&rt, &host, &format!("/v2/{repo}/referrers/{image}"));
        let listed = idx["manifests"].as_array().expect("manifests");
        assert_eq!(listed.len(), 1, "{idx}");
        assert_eq!(listed[0]["digest"], report_digest);
        assert_eq!(listed[0]["artifactType"], media_type);
        assert!(listed[0]["annotations"]["org.opencontainers.image.created"].is_string());
        // The artifact manifest: empty config, one layer (the fixture's bytes), subject.
        let m = get(&rt, &host, &format!("/v2/{repo}/manifests/{report_digest}"));
        assert_eq!(m["artifactType"], media_type);
        assert_eq!(
            m["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(m["config"]["digest"], EMPTY_DIGEST);
        assert_eq!(m["subject"]["digest"], image.as_str());
        let bytes = std::fs::read(fixture(file)).unwrap();
        let layers = m["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "{m}");
        assert_eq!(layers[0]["mediaType"], media_type);
        assert_eq!(layers[0]["digest"], img::sha256_digest(&bytes).as_str());
        assert_eq!(layers[0]["size"], bytes.len());

        // scan-results: the summary as JSON.
        let v = home.json(&[
            "registry",
            "image",
            "scan-results",
            &format!("{repo}:1"),
            "--json",
        ]);
        assert_eq!(v["format"], format, "{v}");
        // The documented shape (README, "Vulnerability reports").
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "counts",
                "created",
                "digest",
                "findings",
                "format",
                "reference",
                "report",
                "repository",
                "scanner",
                "total"
            ],
            "{v}"
        );
        let mut fkeys: Vec<&str> = v["findings"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fkeys.sort_unstable();
        assert_eq!(
            fkeys,
            ["fixed", "id", "installed", "package", "severity", "title"]
        );
        assert_eq!(v["digest"], image.as_str());
        assert_eq!(v["report"]["digest"], report_digest);
        assert_eq!(v["report"]["artifact_type"], media_type);
        let c = &v["counts"];
        let got = ["critical", "high", "medium", "low", "unknown"].map(|k| c[k].as_u64().unwrap());
        assert_eq!(got, counts.map(|n| n as u64), "{file}: {v}");
        assert_eq!(v["total"], counts.iter().sum::<i32>());
        let f = &v["findings"][0];
        assert_eq!(f["id"], top.0, "{file}: {v}");
        assert_eq!(f["package"], top.1);
        assert_eq!(f["installed"], top.2);
        assert_eq!(f["fixed"], json!(top.3));
        assert_eq!(v["scanner"]["name"], scanner.0);
        assert_eq!(v["scanner"]["version"], json!(scanner.1));
        // Highest first.
        let sev: Vec<&str> = v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["severity"].as_str().unwrap())
            .collect();
        let rank = |s: &str| {
            ["unknown", "low", "medium", "high", "critical"]
                .iter()
                .position(|x| *x == s)
        };
        assert!(sev.windows(2).all(|w| rank(w[0]) >= rank(w[1])), "{sev:?}");

        // And as text.
        let t = home.ok(&["registry", "image", "scan-results", &format!("{repo}:1")]);
        assert!(t.contains(&format!("Report:    {report_digest}")), "{t}");
        assert!(
            t.contains(top.0) && t.contains(&format!("fixed in {}", top.3.unwrap())),
            "{t}"
        );
        let line = format!(
            "{} critical, {} high, {} medium, {} low, {} unknown",
            counts[0], counts[1], counts[2], counts[3], counts[4]
        );
        assert!(t.contains(&line), "{t}");
    }
}

/// No scanner: no scan.command and neither trivy nor grype on PATH. The push itself
/// succeeds (the image is in the registry), the command fails with one line naming what
/// was looked for, and nothing is attached.
#[test]
fn no_scanner_is_a_clear_error_after_the_image_is_pushed() {
    let srv = TestServer::start();
    let host = srv.host();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let home = home_with(&host, None);
    let image = digest_of(&home, "agents/scan:1");
    let empty_path = home.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty_path).unwrap();
    let o = home
        .cmd(&["push", "agents/scan:1", "--security-scan"])
        .env("PATH", &empty_path)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains(&format!("agents/scan:1 was pushed ({image}) but not scanned: no vulnerability scanner found: looked for the profile's scan.command, then trivy and grype on PATH")),
        "{err}"
    );
    // One error line (the others are the push's per-layer progress).
    assert_eq!(
        err.lines().filter(|l| l.starts_with("agent:")).count(),
        1,
        "{err}"
    );
    assert!(
        text(&o.stdout).contains("Pushed agents/scan:1"),
        "{}",
        text(&o.stdout)
    );
    let r = rt.block_on(Http::new(&host).head("/v2/agents/scan/manifests/1"));
    assert_eq!(r.status.as_u16(), 200, "the image was not pushed");
    let idx = get(&rt, &host, &format!("/v2/agents/scan/referrers/{image}"));
    assert_eq!(idx["manifests"], json!([]));
    // scan-results: no report, exit 1, a message saying how to attach one.
    let o = home.run(&["registry", "image", "scan-results", "agents/scan:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no vulnerability report is attached to agents/scan:1"),
        "{}",
        text(&o.stderr)
    );
}

/// Attaches `report.sarif` to `REPO:TAG` the way `oras attach --artifact-type
/// application/sarif+json` does (artifactType, the empty config, the file as a
/// `application/vnd.oci.image.layer.v1.tar` layer with a title, subject, created), through
/// oras-py's blob and manifest uploads.
pub(crate) const ORAS_ATTACH: &str = r#"
import hashlib, json, os, sys, urllib.request
import oras.client, oras.container, oras.oci

host, repo, tag, work = sys.argv[1:5]
os.chdir(work)
client = oras.client.OrasClient(hostname=host, insecure=True)
req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}",
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
with urllib.request.urlopen(req) as resp:
    raw = resp.read()
subject = {"mediaType": json.loads(raw)["mediaType"], "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}
container = oras.container.Container(f"{host}/{repo}:{tag}")
with open("empty.json", "w") as f:
    f.write("{}")
empty = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
         "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()}
layer = oras.oci.NewLayer("report.sarif", media_type="application/vnd.oci.image.layer.v1.tar")
layer["annotations"] = {"org.opencontainers.image.title": "report.sarif"}
for path, desc in (("empty.json", empty), ("report.sarif", layer)):
    resp = client.upload_blob(path, container, desc)
    assert resp.status_code in (200, 201, 202), resp.text
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "artifactType": "application/sarif+json",
    "config": empty,
    "layers": [layer],
    "subject": subject,
    "annotations": {"org.opencontainers.image.created": "2024-06-05T10:00:00Z"},
}
body = json.dumps(manifest).encode()
digest = "sha256:" + hashlib.sha256(body).hexdigest()
container = oras.container.Container(f"{host}/{repo}@{digest}")
resp = client.upload_manifest(manifest, container)
assert resp.status_code == 201, (resp.status_code, resp.text)
print(json.dumps({"subject": subject["digest"], "digest": digest}))
"#;

/// Pushes what `cosign attest --type vuln --predicate trivy.json` leaves in a registry
/// without referrers: a manifest under the tag `sha256-<hex>.att` whose layer is a DSSE
/// envelope (`application/vnd.dsse.envelope.v1+json`, annotation `predicateType`) carrying an
/// in-toto statement with cosign's vuln predicate, the Trivy report in `scanner.result`.
const ORAS_COSIGN_ATT: &str = r#"
import base64, hashlib, json, os, sys
import oras.client, oras.container, oras.oci

host, repo, subject, report, work = sys.argv[1:6]
os.chdir(work)
client = oras.client.OrasClient(hostname=host, insecure=True)
statement = {
    "_type": "https://in-toto.io/Statement/v0.1",
    "predicateType": "https://cosign.sigstore.dev/attestation/vuln/v1",
    "subject": [{"name": f"{host}/{repo}", "digest": {"sha256": subject.split(":")[1]}}],
    "predicate": {
        "invocation": {"parameters": None, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {"uri": "pkg:github/aquasecurity/trivy@v0.57.1", "version": "0.57.1",
                    "db": {"uri": "", "version": ""}, "result": json.load(open(report))},
        "metadata": {"scanStartedOn": "2024-07-01T00:00:00Z", "scanFinishedOn": "2024-07-01T00:00:00Z"},
    },
}
envelope = {"payloadType": "application/vnd.in-toto+json",
            "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
            "signatures": [{"keyid": "", "sig": "MEUCIQDfakeAAAA"}]}
with open("att.json", "w") as f:
    json.dump(envelope, f)
with open("config.json", "w") as f:
    json.dump({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}, f)
tag = "sha256-" + subject.split(":")[1] + ".att"
container = oras.container.Container(f"{host}/{repo}:{tag}")
config = oras.oci.NewLayer("config.json", media_type="application/vnd.oci.image.config.v1+json")
layer = oras.oci.NewLayer("att.json", media_type="application/vnd.dsse.envelope.v1+json")
layer["annotations"] = {"predicateType": "https://cosign.sigstore.dev/attestation/vuln/v1"}
for path, desc in (("config.json", config), ("att.json", layer)):
    resp = client.upload_blob(path, container, desc)
    assert resp.status_code in (200, 201, 202), resp.text
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": [layer]}
resp = client.upload_manifest(manifest, container)
assert resp.status_code == 201, (resp.status_code, resp.text)
print(json.dumps({"tag": tag}))
"#;

#[test]
fn reports_attached_by_oras_py_and_cosign_style_are_read_newest_first() {
    if !tools::require("oras") {
        return;
    }
    let srv = TestServer::start();
    let host = srv.host();
    let home = home_with(&host, None);
    home.ok(&["push", "agents/scan:1", "-q"]);
    let image = digest_of(&home, "agents/scan:1");
    let work = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("trivy.sarif.json"),
        work.path().join("report.sarif"),
    )
    .unwrap();
    let script = work.path().join("attach.py");
    std::fs::write(&script, ORAS_ATTACH).unwrap();
    let o = tools::command("python3")
        .arg(&script)
        .args([&host, "agents/scan", "1"])
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "oras-py: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let out: Value = serde_json::from_str(text(&o.stdout).trim().lines().last().unwrap()).unwrap();
    assert_eq!(out["subject"], image.as_str());

    let v = home.json(&[
        "registry",
        "image",
        "scan-results",
        "agents/scan:1",
        "--json",
    ]);
    assert_eq!(v["report"]["digest"], out["digest"], "{v}");
    assert_eq!(v["report"]["artifact_type"], "application/sarif+json");
    assert_eq!(v["report"]["attached"], "2024-06-05T10:00:00Z");
    assert_eq!(v["format"], "sarif");
    assert_eq!(v["counts"]["critical"], 1);
    assert_eq!(v["counts"]["high"], 1);
    assert_eq!(v["counts"]["low"], 1);
    assert_eq!(v["findings"][0]["id"], "CVE-2023-38545");
    assert_eq!(v["findings"][1]["fixed"], "2.36-9+deb12u3");
    let t = home.ok(&["registry", "image", "scan-results", "agents/scan:1"]);
    assert!(t.contains("Scanner:   Trivy 0.57.1"), "{t}");
    assert!(t.contains("Scanned:   2024-06-05T10:00:00Z"), "{t}");

    // A newer report, as cosign attest leaves it under the .att tag: now the newest.
    let mut trivy: Value =
        serde_json::from_slice(&std::fs::read(fixture("trivy.json")).unwrap()).unwrap();
    trivy["CreatedAt"] = json!("2024-07-01T00:00:00Z");
    let report = work.path().join("trivy-newer.json");
    std::fs::write(&report, serde_json::to_vec(&trivy).unwrap()).unwrap();
    let script = work.path().join("att.py");
    std::fs::write(&script, ORAS_COSIGN_ATT).unwrap();
    let o = tools::command("python3")
        .arg(&script)
        .args([&host, "agents/scan", &image])
        .arg(&report)
        .arg(work.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "oras-py: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let v = home.json(&[
        "registry",
        "image",
        "scan-results",
        "agents/scan:1",
        "--json",
    ]);
    assert_eq!(v["format"], "trivy", "{v}");
    assert_eq!(v["report"]["source"], "cosign .att tag");
    assert_eq!(
        v["report"]["artifact_type"],
        "application/vnd.dsse.envelope.v1+json"
    );
    assert_eq!(
        v["predicate_type"],
        "https://cosign.sigstore.dev/attestation/vuln/v1"
    );
    assert_eq!(v["created"], "2024-07-01T00:00:00Z");
    assert_eq!(v["counts"]["high"], 1);
    assert_eq!(v["counts"]["critical"], 0);
    assert_eq!(v["findings"][0]["id"], "CVE-2023-4911");
}

/// Stand-ins named `trivy` and `grype` on PATH (the real ones cannot fetch their databases
/// here): with no `scan.command`, trivy is run as `trivy image --quiet --input TAR --format
/// sarif`, and without trivy, grype as `grype oci-dir:DIR -o sarif -q`; a scanner that fails
/// without a report is an error naming it with the last line of its stderr.
#[test]
fn trivy_then_grype_on_path_run_with_their_command_lines() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = home_with(&host, None);
    let bin = home.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let sarif = fixture("trivy.sarif.json");
    let cdx = fixture("cyclonedx.json");
    let write_tool = |name: &str, body: String| {
        use std::os::unix::fs::PermissionsExt;
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_tool(
        "trivy",
        format!(
            "#!/bin/sh\n[ \"$1 $2 $3\" = 'image --quiet --input' ] && [ \"$5 $6\" = '--format sarif' ] || {{ echo \"trivy: bad args: $*\" >&2; exit 2; }}\n\
             tar -tf \"$4\" | grep -qx index.json || exit 3\ncat {}\n",
            sarif.display()
        ),
    );
    write_tool(
        "grype",
        format!(
            "#!/bin/sh\ncase \"$1\" in oci-dir:*) d=${{1#oci-dir:}};; *) echo \"grype: bad source $1\" >&2; exit 2;; esac\n\
             [ \"$2 $3 $4\" = '-o sarif -q' ] || exit 2\ntest -f \"$d/index.json\" || exit 3\ncat {}\n",
            cdx.display()
        ),
    );
    // PATH: the stand-ins, then what tar, grep and cat need.
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let push = |tag: &str| {
        home.ok(&["tag", "agents/scan:1", &format!("agents/scan:{tag}")]);
        let o = home
            .cmd(&[
                "push",
                &format!("agents/scan:{tag}"),
                "--security-scan",
                "--json",
            ])
            .env("PATH", &path)
            .output()
            .unwrap();
        (o.status.success(), text(&o.stdout), text(&o.stderr))
    };
    let (ok, out, err) = push("t");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["security_scan"]["scanner_command"], "trivy", "{v}");
    assert_eq!(
        v["security_scan"]["artifact_type"],
        "application/sarif+json"
    );

    std::fs::remove_file(bin.join("trivy")).unwrap();
    let (ok, out, err) = push("g");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["security_scan"]["scanner_command"], "grype", "{v}");
    assert_eq!(
        v["security_scan"]["artifact_type"],
        "application/vnd.cyclonedx+json"
    );
    assert_eq!(v["security_scan"]["counts"]["medium"], 1);

    write_tool(
        "grype",
        "#!/bin/sh\necho 'grype: loading db' >&2\necho 'failed to load vulnerability db: no network' >&2\nexit 1\n".into(),
    );
    let (ok, _, err) = push("f");
    assert!(!ok);
    assert!(
        err.contains("agents/scan:f was pushed (sha256:") && err.contains("but not scanned: the scanner (grype) failed with exit status: 1: failed to load vulnerability db: no network"),
        "{err}"
    );
}

/// The seed's two scanning lines, as written (../shared/seed/registry.md, "Vulnerability
/// Scanning"), with the default profile pointing at the test server and the scanner
/// stand-in as its `scan.command`.
#[test]
fn the_seed_scanning_lines_run_as_written() {
    let srv = TestServer::start();
    let home = home_with(&srv.host(), Some("trivy.sarif.json"));
    home.ok(&["tag", "agents/scan:1", "my-agent:latest"]);
    let out = home.ok(&["push", "my-agent:latest", "--security-scan"]);
    assert!(out.contains("Pushed my-agent:latest"), "{out}");
    assert!(
        out.contains(
            "Security scan: 1 critical, 1 high, 0 medium, 1 low, 0 unknown (Trivy 0.57.1)"
        ),
        "{out}"
    );
    assert!(out.contains("Scan report: sha256:"), "{out}");
    let out = home.ok(&["registry", "image", "scan-results", "my-agent:latest"]);
    assert!(out.contains("Scanner:   Trivy 0.57.1"), "{out}");
    assert!(
        out.contains("Findings:  3 (1 critical, 1 high, 0 medium, 1 low, 0 unknown)"),
        "{out}"
    );
    assert!(
        out.contains("CRITICAL  CVE-2023-38545        libcurl4 7.88.1-10+deb12u1  (fixed in 7.88.1-10+deb12u3)"),
        "{out}"
    );
    assert!(
        out.contains("LOW       CVE-2011-3374         apt 2.6.1  (no fix)"),
        "{out}"
    );
}

/// `--all-tags` with two tags of one image: one scan, one report on the digest, both tags
/// showing it.
#[test]
fn all_tags_of_one_image_are_scanned_once() {
    let srv = TestServer::start();
    let host = srv.host();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let home = home_with(&host, Some("trivy.json"));
    home.ok(&["tag", "agents/scan:1", "agents/scan:stable"]);
    let image = digest_of(&home, "agents/scan:1");
    let v = home.json(&[
        "push",
        "agents/scan",
        "--all-tags",
        "--security-scan",
        "--json",
    ]);
    let list = v.as_array().expect("one entry per tag");
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["security_scan"], list[1]["security_scan"], "{v}");
    let idx = get(&rt, &host, &format!("/v2/agents/scan/referrers/{image}"));
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1, "{idx}");
    let runs = std::fs::read_to_string(home.dir.path().join("scans.log")).unwrap();
    assert_eq!(runs.lines().count(), 1, "scanner runs: {runs}");
}
