//! What the server and the CLI leave on disk is their owner's alone: the data directory
//! 0700 and every file in it 0600 whatever the umask, and `agent login` never writes
//! through a file or symlink planted beside its credentials file.

use crate::support::http::{image_manifest, Http};
use crate::support::server::TestServer;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Every entry under `root` whose mode lets anyone but the owner in, with its mode.
fn open_to_others(root: &Path) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push((p.display().to_string(), mode));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_and_files_are_private_whatever_the_umask() {
    // The usual umask 0022 would make files 0644 and directories 0755.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    let layer = http.push_blob("agents/files", b"layer bytes").await;
    let config = http.push_blob("agents/files", b"{}").await;
    let m = image_manifest((&config, 2), &[(&layer, 11)], None);
    let r = http
        .put_manifest(
            "agents/files",
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            &m,
        )
        .await;
    assert_eq!(r.status, http::StatusCode::CREATED);
    // The access log and the token key are written too.
    let r = http.get("/v2/agents/files/manifests/v1").await;
    assert_eq!(r.status, http::StatusCode::OK);
    let data = srv.data_dir().to_path_buf();
    let mode = std::fs::metadata(&data)
        .expect("data dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "data directory mode {mode:o}");
    let digest = layer.parse().expect("digest");
    let blob = srv.app.storage.blobs.path(&digest);
    assert!(blob.exists(), "{}", blob.display());
    assert_eq!(open_to_others(&data), Vec::new());
}

#[test]
fn agent_login_never_writes_through_a_planted_temp_file() {
    let srv = TestServer::start_with(crate::auth::configure);
    let dir = tempfile::tempdir().expect("tempdir");
    // Another user's trap: the old fixed temp name as a symlink to a file of theirs, and
    // a world-readable file under the next name a naive writer might pick.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.path().join("auth.json.tmp")).expect("symlink");
    let args = ["login", "-u", "admin", "--password-stdin"];
    let stdin = format!("{}\n", crate::auth::PASSWORD);
    let login = || crate::auth::agent(&srv, dir.path(), &args, Some(&stdin));
    let o = login();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "untouched"
    );
    let auth = dir.path().join("auth.json");
    let meta = std::fs::symlink_metadata(&auth).expect("auth.json");
    assert!(meta.file_type().is_file(), "auth.json is not a plain file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A second login replaces the file the same way, and no temp file is left behind.
    let o = login();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("auth.json.tmp."))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn agent_login_writes_an_auth_json_that_podman_reads() {
    let srv = TestServer::start_with(crate::auth::configure);
    let dir = tempfile::tempdir().expect("tempdir");
    // An older flat file of `agent login` ({URL: base64}) is carried over.
    std::fs::write(
        dir.path().join("auth.json"),
        r#"{"https://old.example.com": "b2xkOnB3"}"#,
    )
    .expect("old file");
    let stdin = format!("{}\n", crate::auth::PASSWORD);
    let o = crate::auth::agent(
        &srv,
        dir.path(),
        &["login", "-u", "writer", "--password-stdin"],
        Some(&stdin),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = dir.path().join("auth.json");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("auth.json")).expect("JSON");
    assert_eq!(v["auths"]["old.example.com"]["auth"], "b2xkOnB3", "{v}");
    assert!(v["auths"][srv.host()]["auth"].is_string(), "{v}");
    if !crate::support::tools::require("podman") {
        return;
    }
    let podman = crate::support::tools::Podman::new();
    let o = podman
        .cmd()
        .env("REGISTRY_AUTH_FILE", &file)
        .args(["login", "--get-login"])
        .arg(srv.host())
        .output()
        .expect("podman");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "writer");
}
