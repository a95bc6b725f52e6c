//! Image signatures in cosign's format: `agent key generate`, `agent push --sign`,
//! `agent pull --verify-signature` and `agent registry image signatures`, as the real
//! `agent` binary against the project's server.
//!
//! cosign itself cannot be installed here (a Go binary), so the format is checked by
//! independent implementations: openssl verifies the signatures (`openssl dgst -sha256
//! -verify` over the payload fetched by plain HTTP), openssl writes the PKCS#8 keys that
//! sign, and a Python helper (tests/it/signing/cosign_key.py, `cryptography` + `pynacl`)
//! reads and writes cosign's encrypted `cosign.key` format.

use crate::support::agent::{text, Home};
use crate::support::http::Http;
use crate::support::image as img;
use crate::support::server::TestServer;
use crate::support::tools;
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const COSIGN_KEY_PY: &str = include_str!("signing/cosign_key.py");
const PASSWORD: &str = "correct horse";

fn b64() -> base64::engine::general_purpose::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// `agent key generate` in `dir` with COSIGN_PASSWORD; returns (NAME.key, NAME.pub).
pub(crate) fn generate(home: &Home, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let o = home
        .cmd(&["key", "generate", "--output-key-prefix", name])
        .current_dir(dir)
        .env("COSIGN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(o.status.success(), "key generate: {}", text(&o.stderr));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// `agent ARGS` with COSIGN_PASSWORD set.
fn agent(home: &Home, args: &[&str]) -> std::process::Output {
    home.cmd(args)
        .env("COSIGN_PASSWORD", PASSWORD)
        .output()
        .unwrap()
}

fn ok_json(o: std::process::Output, what: &str) -> Value {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// `push NAME --sign --key KEY`: the pushed digest and the signature tag.
pub(crate) fn push_signed(home: &Home, host: &str, name: &str, key: &Path) -> (String, String) {
    let v = ok_json(
        agent(
            home,
            &[
                "push",
                name,
                "--registry",
                host,
                "--json",
                "--sign",
                "--key",
                key.to_str().unwrap(),
            ],
        ),
        "push --sign",
    );
    let digest = v["digest"].as_str().unwrap().to_string();
    let tag = v["signature"].as_str().expect("signature tag").to_string();
    assert_eq!(tag, format!("sha256-{}.sig", &digest[7..]), "{v}");
    (digest, tag)
}

fn get(host: &str, path: &str) -> crate::support::http::Resp {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(Http::new(host).send(
        http::Method::GET,
        path,
        &[("accept", img::MANIFEST_V1)],
        bytes::Bytes::new(),
    ))
}

/// What a pull refused with `--verify-signature` must leave behind: nothing of the image.
fn assert_nothing_stored(home: &Home, info: &img::ImageInfo) {
    assert!(
        !img::blob_path(&home.images(), &info.manifest_digest).exists(),
        "the refused manifest was stored"
    );
    for (d, _) in &info.blobs {
        assert!(
            !img::blob_path(&home.images(), d).exists(),
            "blob {d} of the refused image was stored"
        );
    }
    let listed = home.json(&["images", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}

fn python_has_crypto() -> bool {
    let ok = tools::which("python3").is_some()
        && tools::output(tools::command("python3").args(["-c", "import nacl, cryptography"]))
            .status
            .success();
    if !ok && std::env::var("REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("python3 with pynacl and cryptography is required (REQUIRE_INTEROP=1)");
    }
    if !ok {
        eprintln!("skipping: python3 lacks pynacl or cryptography");
    }
    ok
}

#[test]
fn signed_push_verifies_with_openssl_and_is_found_by_tag_and_referrers() {
    if !tools::require("openssl") {
        return;
    }
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the private key must be private");
    // A second generate refuses to replace the pair.
    let before = std::fs::read(&key).unwrap();
    let o = home
        .cmd(&["key", "generate"])
        .current_dir(keys.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("refusing to overwrite"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let info = img::single_image(&home.images(), "agents/signed:1", 51, &[3000]);
    let (digest, tag) = push_signed(&home, &host, "agents/signed:1", &key);
    assert_eq!(digest, info.manifest_digest);

    // The signature manifest, by plain HTTP: cosign's layout plus the subject.
    let r = get(&host, &format!("/v2/agents/signed/manifests/{tag}"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    let m = r.json();
    assert_eq!(m["mediaType"], img::MANIFEST_V1);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(m["subject"]["digest"], digest.as_str());
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    let layer = &layers[0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let sig_b64 = layer["annotations"]["dev.cosignproject.cosign/signature"]
        .as_str()
        .expect("signature annotation");
    let payload = get(
        &host,
        &format!(
            "/v2/agents/signed/blobs/{}",
            layer["digest"].as_str().unwrap()
        ),
    );
    assert_eq!(payload.status, 200);
    let p: Value = serde_json::from_slice(&payload.body).unwrap();
    assert_eq!(
        p,
        json!({"critical": {"identity": {"docker-reference": format!("{host}/agents/signed")},
                            "image": {"docker-manifest-digest": digest},
                            "type": "cosign container image signature"},
               "optional": null})
    );
    // The config is the one cosign writes: its diff IDs are the payload digests.
    let cfg = get(
        &host,
        &format!(
            "/v2/agents/signed/blobs/{}",
            m["config"]["digest"].as_str().unwrap()
        ),
    );
    let cfg: Value = serde_json::from_slice(&cfg.body).unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"], json!([layer["digest"]]));

    // openssl verifies the signature over the payload with the generated public key.
    let work = tempfile::tempdir().unwrap();
    let (pf, sf) = (work.path().join("payload"), work.path().join("sig.der"));
    std::fs::write(&pf, &payload.body).unwrap();
    std::fs::write(&sf, b64().decode(sig_b64).unwrap()).unwrap();
    let o = tools::run(tools::command("openssl").args([
        "dgst",
        "-sha256",
        "-verify",
        public.to_str().unwrap(),
        "-signature",
        sf.to_str().unwrap(),
        pf.to_str().unwrap(),
    ]));
    assert_eq!(text(&o.stdout).trim(), "Verified OK");

    // The referrers API lists the signature manifest.
    let refs = get(&host, &format!("/v2/agents/signed/referrers/{digest}")).json();
    let sig_digest = img::sha256_digest(&r.body);
    assert!(
        refs["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["digest"] == sig_digest.as_str()),
        "{refs}"
    );

    // Another client pulls it with --verify-signature.
    let other = Home::new();
    let v = ok_json(
        agent(
            &other,
            &[
                "pull",
                &format!("{host}/agents/signed:1"),
                "--verify-signature",
                "--key",
                public.to_str().unwrap(),
                "--json",
            ],
        ),
        "pull --verify-signature",
    );
    assert_eq!(v["signature_verified_by"], public.to_str().unwrap());
    assert_eq!(v["digest"], digest.as_str());
    assert!(img::blob_path(&other.images(), &digest).exists());

    // The listing names the key; without a key the signature is listed unverified.
    let s = home.json(&[
        "registry",
        "image",
        "signatures",
        "agents/signed:1",
        "--registry",
        &host,
        "--key",
        public.to_str().unwrap(),
        "--json",
    ]);
    let list = s["signatures"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{s}");
    assert_eq!(list[0]["verified"], true);
    assert_eq!(list[0]["key"], public.to_str().unwrap());
    assert_eq!(list[0]["signed_digest"], digest.as_str());
    let plain = home.ok(&[
        "registry",
        "image",
        "signatures",
        "agents/signed:1",
        "--registry",
        &host,
    ]);
    assert!(plain.contains("unverified"), "{plain}");

    // A profile's signing.public_keys stands in for --key.
    std::fs::write(
        other.dir.path().join("config.yaml"),
        format!(
            "registries:\n  default:\n    url: {host}\n    signing:\n      public_keys: [{}]\n",
            public.display()
        ),
    )
    .unwrap();
    let s = other.json(&[
        "registry",
        "image",
        "signatures",
        "agents/signed:1",
        "--json",
    ]);
    assert_eq!(s["signatures"][0]["key"], public.to_str().unwrap(), "{s}");

    // Signing again with another key appends a second signature to the same tag.
    let (key2, public2) = generate(&home, keys.path(), "second");
    push_signed(&home, &host, "agents/signed:1", &key2);
    let m = get(&host, &format!("/v2/agents/signed/manifests/{tag}")).json();
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "{m}");
    let s = home.json(&[
        "registry",
        "image",
        "signatures",
        "agents/signed:1",
        "--registry",
        &host,
        "--key",
        public2.to_str().unwrap(),
        "--json",
    ]);
    let verified: Vec<bool> = s["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["verified"].as_bool().unwrap())
        .collect();
    assert_eq!(verified, [false, true], "{s}");
}

#[test]
fn openssl_encrypted_pkcs8_key_signs_and_a_wrong_password_pushes_nothing() {
    if !tools::require("openssl") {
        return;
    }
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let k = |n: &str| keys.path().join(n).to_str().unwrap().to_string();
    tools::run(tools::command("openssl").args([
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &k("ec.pem"),
    ]));
    tools::run(tools::command("openssl").args([
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-in",
        &k("ec.pem"),
        "-out",
        &k("enc.pem"),
        "-passout",
        &format!("pass:{PASSWORD}"),
    ]));
    tools::run(tools::command("openssl").args([
        "ec",
        "-in",
        &k("ec.pem"),
        "-pubout",
        "-out",
        &k("pub.pem"),
    ]));
    assert!(std::fs::read_to_string(k("enc.pem"))
        .unwrap()
        .starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));

    img::single_image(&home.images(), "agents/ossl:1", 52, &[2000]);
    // A wrong password fails before anything is sent.
    let o = home
        .cmd(&[
            "push",
            "agents/ossl:1",
            "--registry",
            &host,
            "--sign",
            "--key",
            &k("enc.pem"),
        ])
        .env("COSIGN_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("COSIGN_PASSWORD") && err.contains("enc.pem"),
        "{err}"
    );
    assert_eq!(get(&host, "/v2/agents/ossl/manifests/1").status, 404);

    let (digest, _) = push_signed(&home, &host, "agents/ossl:1", Path::new(&k("enc.pem")));
    let other = Home::new();
    let v = ok_json(
        agent(
            &other,
            &[
                "pull",
                &format!("{host}/agents/ossl:1"),
                "--verify-signature",
                "--key",
                &k("pub.pem"),
                "--json",
            ],
        ),
        "pull --verify-signature",
    );
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["signature_verified_by"], k("pub.pem").as_str());
}

#[test]
fn cosign_key_format_interoperates_with_an_independent_implementation() {
    if !python_has_crypto() {
        return;
    }
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let script = keys.path().join("cosign_key.py");
    std::fs::write(&script, COSIGN_KEY_PY).unwrap();
    let py = |mode: &str, key: &Path, public: &Path, password: &str| {
        tools::output(tools::command("python3").args([
            script.to_str().unwrap(),
            mode,
            key.to_str().unwrap(),
            public.to_str().unwrap(),
            password,
        ]))
    };

    // A key written by `agent key generate` opens in Python to the .pub's key...
    let (key, public) = generate(&home, keys.path(), "agent");
    let o = py("decrypt", &key, &public, PASSWORD);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    // ...and not under another password.
    assert!(!py("decrypt", &key, &public, "nope").status.success());

    // A key Python sealed the cosign way signs a push that verifies with its .pub.
    let (pykey, pypub) = (keys.path().join("py.key"), keys.path().join("py.pub"));
    let o = py("encrypt", &pykey, &pypub, PASSWORD);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    img::single_image(&home.images(), "agents/py:1", 53, &[1000]);
    let (digest, _) = push_signed(&home, &host, "agents/py:1", &pykey);
    let other = Home::new();
    let v = ok_json(
        agent(
            &other,
            &[
                "pull",
                &format!("{host}/agents/py:1"),
                "--verify-signature",
                "--key",
                pypub.to_str().unwrap(),
                "--json",
            ],
        ),
        "pull --verify-signature",
    );
    assert_eq!(v["digest"], digest.as_str());
}

/// A registry with `agents/r:signed` signed by `key.key` and `agents/r:other` unsigned,
/// the keys in `keys`.
struct Refusal {
    srv: TestServer,
    host: String,
    keys: tempfile::TempDir,
    signed: String,
    other: img::ImageInfo,
}

impl Refusal {
    fn new() -> Refusal {
        let srv = TestServer::start();
        let host = srv.host();
        let home = Home::new();
        let keys = tempfile::tempdir().unwrap();
        let (key, _) = generate(&home, keys.path(), "key");
        img::single_image(&home.images(), "agents/r:signed", 61, &[1500]);
        let other = img::single_image(&home.images(), "agents/r:other", 62, &[1600]);
        let (signed, _) = push_signed(&home, &host, "agents/r:signed", &key);
        home.ok(&["push", "agents/r:other", "--registry", &host]);
        Refusal {
            srv,
            host,
            keys,
            signed,
            other,
        }
    }

    fn public(&self) -> String {
        self.keys
            .path()
            .join("key.pub")
            .to_str()
            .unwrap()
            .to_string()
    }

    /// `pull agents/r:other --verify-signature --key KEY` from a fresh client: must exit 1
    /// with nothing stored. Returns stderr.
    fn refused(&self, key: &str) -> String {
        let home = Home::new();
        let o = agent(
            &home,
            &[
                "pull",
                &format!("{}/agents/r:other", self.host),
                "--verify-signature",
                "--key",
                key,
            ],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert_nothing_stored(&home, &self.other);
        text(&o.stderr)
    }

    /// PUTs `manifest` as the `.sig` of `agents/r:other`.
    fn plant_signature(&self, manifest: &Value) {
        let tag = format!("sha256-{}.sig", &self.other.manifest_digest[7..]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(Http::new(&self.host).put_manifest(
            "agents/r",
            &tag,
            img::MANIFEST_V1,
            manifest.to_string().as_bytes(),
        ));
        assert_eq!(r.status, 201, "{:?}", r.body);
    }

    fn signed_manifest(&self) -> Value {
        let tag = format!("sha256-{}.sig", &self.signed[7..]);
        get(&self.host, &format!("/v2/agents/r/manifests/{tag}")).json()
    }
}

#[test]
fn pull_verify_signature_refuses_an_unsigned_image() {
    let t = Refusal::new();
    let err = t.refused(&t.public());
    assert!(err.contains("is not signed"), "{err}");
    // And the signed one passes, so the refusal is about the signature.
    let home = Home::new();
    let o = agent(
        &home,
        &[
            "pull",
            &format!("{}/agents/r:signed", t.host),
            "--verify-signature",
            "--key",
            &t.public(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    drop(t.srv);
}

#[test]
fn pull_verify_signature_refuses_a_signature_made_with_another_key() {
    let t = Refusal::new();
    // Sign `other` properly, but with a key that is not the one asked for.
    let home = Home::new();
    let (stranger, _) = generate(&home, t.keys.path(), "stranger");
    img::single_image(&home.images(), "agents/r:other", 62, &[1600]);
    push_signed(&home, &t.host, "agents/r:other", &stranger);
    let err = t.refused(&t.public());
    assert!(err.contains("does not verify with key"), "{err}");
}

#[test]
fn pull_verify_signature_refuses_a_signature_for_another_digest() {
    let t = Refusal::new();
    // The valid signature of `signed`, replayed as the signature of `other`.
    let mut m = t.signed_manifest();
    m["subject"]["digest"] = json!(t.other.manifest_digest);
    t.plant_signature(&m);
    let err = t.refused(&t.public());
    assert!(
        err.contains(&format!("the signature is for {}", t.signed)),
        "{err}"
    );
}

#[test]
fn pull_verify_signature_refuses_a_tampered_payload() {
    let t = Refusal::new();
    // `signed`'s signature over a payload edited to name `other`.
    let m = t.signed_manifest();
    let layer = &m["layers"][0];
    let payload = get(
        &t.host,
        &format!("/v2/agents/r/blobs/{}", layer["digest"].as_str().unwrap()),
    )
    .body;
    let forged = String::from_utf8(payload.to_vec())
        .unwrap()
        .replace(&t.signed, &t.other.manifest_digest);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt.block_on(Http::new(&t.host).push_blob("agents/r", forged.as_bytes()));
    let mut m2 = m.clone();
    m2["layers"][0]["digest"] = json!(d);
    m2["layers"][0]["size"] = json!(forged.len());
    m2["subject"]["digest"] = json!(t.other.manifest_digest);
    t.plant_signature(&m2);
    let err = t.refused(&t.public());
    assert!(err.contains("does not verify with key"), "{err}");
}

#[test]
fn push_sign_without_a_key_names_where_to_get_one() {
    let srv = TestServer::start();
    let home = Home::new();
    img::single_image(&home.images(), "agents/nokey:1", 63, &[100]);
    let cwd = tempfile::tempdir().unwrap();
    let o = home
        .cmd(&[
            "push",
            "agents/nokey:1",
            "--registry",
            &srv.host(),
            "--sign",
        ])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("no signing key") && err.contains("agent key generate"),
        "{err}"
    );
    assert_eq!(get(&srv.host(), "/v2/agents/nokey/manifests/1").status, 404);
}

/// The seed's three signing lines (../shared/seed/registry.md, "Image Signing") as
/// written: the key is `cosign.key` in the current directory, the verifying key the
/// default profile's `signing.public_keys`.
#[test]
fn the_seeds_signing_lines_run_as_written() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let cwd = tempfile::tempdir().unwrap();
    let (_, public) = generate(&home, cwd.path(), "cosign");
    std::fs::copy(&public, home.dir.path().join("release.pub")).unwrap();
    std::fs::write(
        home.dir.path().join("config.yaml"),
        format!("registries:\n  default:\n    url: {host}\n    signing:\n      public_keys: [release.pub]\n"),
    )
    .unwrap();
    img::single_image(&home.images(), "my-agent:latest", 71, &[500]);
    let run = |line: &str| {
        let args: Vec<&str> = line.split(' ').skip(1).collect();
        let o = home
            .cmd(&args)
            .current_dir(cwd.path())
            .env("COSIGN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
        assert!(o.status.success(), "`{line}`: {out}");
        out
    };
    let pushed = run("agent push my-agent:latest --sign");
    assert!(pushed.contains("Signature: my-agent:sha256-"), "{pushed}");
    home.ok(&["rmi", "my-agent:latest"]);
    let pulled = run("agent pull my-agent:latest --verify-signature");
    assert!(pulled.contains("Signature: verified with"), "{pulled}");
    let listed = run("agent registry image signatures my-agent:latest");
    assert!(
        listed.contains("verified by") && listed.contains("release.pub"),
        "{listed}"
    );
}

/// A signature manifest that only the referrers API knows (pushed by digest, no `.sig`
/// tag) is found and verified.
#[test]
fn a_signature_known_only_to_the_referrers_api_verifies() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    img::single_image(&home.images(), "agents/a:1", 81, &[700]);
    let (digest, tag) = push_signed(&home, &host, "agents/a:1", &key);
    // The same image in agents/b, unsigned there...
    home.ok(&["tag", "agents/a:1", "agents/b:1"]);
    home.ok(&["push", "agents/b:1", "--registry", &host]);
    // ...then a's signature manifest copied to b by digest only (its blobs first).
    let m = get(&host, &format!("/v2/agents/a/manifests/{tag}"));
    let mv = m.json();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = Http::new(&host);
    for d in [&mv["config"]["digest"], &mv["layers"][0]["digest"]] {
        let b = get(
            &host,
            &format!("/v2/agents/a/blobs/{}", d.as_str().unwrap()),
        )
        .body;
        rt.block_on(http.push_blob("agents/b", &b));
    }
    let sig_digest = img::sha256_digest(&m.body);
    let r = rt.block_on(http.put_manifest("agents/b", &sig_digest, img::MANIFEST_V1, &m.body));
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        get(&host, &format!("/v2/agents/b/manifests/{tag}")).status,
        404
    );

    let s = home.json(&[
        "registry",
        "image",
        "signatures",
        "agents/b:1",
        "--registry",
        &host,
        "--key",
        public.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(s["signatures"][0]["found_by"], "referrers", "{s}");
    assert_eq!(s["signatures"][0]["verified"], true, "{s}");
    let other = Home::new();
    let v = ok_json(
        agent(
            &other,
            &[
                "pull",
                &format!("{host}/agents/b:1"),
                "--verify-signature",
                "--key",
                public.to_str().unwrap(),
                "--json",
            ],
        ),
        "pull --verify-signature",
    );
    assert_eq!(v["digest"], digest.as_str());
}

/// CNCF distribution (Debian's docker-registry) as the registry: it stores the signature
/// manifest as it is and has no referrers API, so the `.sig` tag carries verification.
#[test]
fn sign_and_verify_against_cncf_distribution() {
    let Some(dist) = crate::support::distribution::Distribution::start() else {
        return;
    };
    let host = dist.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    img::single_image(&home.images(), "agents/dist:1", 91, &[900]);
    let (digest, tag) = push_signed(&home, &host, "agents/dist:1", &key);
    let m = get(&host, &format!("/v2/agents/dist/manifests/{tag}"));
    assert_eq!(m.status, 200, "{:?}", m.body);
    assert_eq!(m.json()["subject"]["digest"], digest.as_str());

    let other = Home::new();
    let v = ok_json(
        agent(
            &other,
            &[
                "pull",
                &format!("{host}/agents/dist:1"),
                "--verify-signature",
                "--key",
                public.to_str().unwrap(),
                "--json",
            ],
        ),
        "pull --verify-signature from distribution",
    );
    assert_eq!(v["digest"], digest.as_str());

    // Unsigned there: refused, nothing stored.
    let info = img::single_image(&home.images(), "agents/dist:2", 92, &[900]);
    home.ok(&["push", "agents/dist:2", "--registry", &host]);
    let fresh = Home::new();
    let o = agent(
        &fresh,
        &[
            "pull",
            &format!("{host}/agents/dist:2"),
            "--verify-signature",
            "--key",
            public.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("is not signed"),
        "{}",
        text(&o.stderr)
    );
    assert_nothing_stored(&fresh, &info);
}

/// A multi-platform image: the index digest is what is signed and what a pull of any
/// platform verifies.
#[test]
fn a_signed_index_verifies_for_each_platform() {
    let srv = TestServer::start();
    let host = srv.host();
    let home = Home::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = generate(&home, keys.path(), "cosign");
    let info = img::multi_arch_image(&home.images(), "agents/multi:1", 95);
    let (digest, tag) = push_signed(&home, &host, "agents/multi:1", &key);
    assert_eq!(digest, info.manifest_digest);
    let m = get(&host, &format!("/v2/agents/multi/manifests/{tag}")).json();
    assert_eq!(m["subject"]["mediaType"], img::INDEX_V1, "{m}");
    for platform in ["linux/amd64", "linux/arm64"] {
        let other = Home::new();
        let v = ok_json(
            agent(
                &other,
                &[
                    "pull",
                    &format!("{host}/agents/multi:1"),
                    "--platform",
                    platform,
                    "--verify-signature",
                    "--key",
                    public.to_str().unwrap(),
                    "--json",
                ],
            ),
            "pull --verify-signature --platform",
        );
        assert_eq!(v["digest"], digest.as_str(), "{platform}");
        assert_eq!(v["signature_verified_by"], public.to_str().unwrap());
    }
}
