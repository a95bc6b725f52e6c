//! The local image store and its commands (`agent build`, `images`, `tag`, `rmi`, `image
//! prune`, `load`, `save`), each run as the real `agent` binary with AAC_HOME in a tempdir;
//! skopeo reads and writes the same store as `oci:$AAC_HOME/images:NAME:TAG`.

use crate::support::agent::{text, Home};
use crate::support::image::{self as img, sha256_digest};
use crate::support::tools;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What these tests ask of a home's image store.
trait Store {
    fn index(&self) -> Value;
    fn list(&self, all: bool) -> Vec<Value>;
    fn digest_of(&self, name: &str) -> String;
    fn blob_count(&self) -> usize;
}

impl Store for Home {
    fn index(&self) -> Value {
        img::read_json(&self.images().join("index.json"))
    }

    /// `agent images --json [--all]`.
    fn list(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["images", "--json"];
        if all {
            args.push("--all");
        }
        let v: Value = serde_json::from_str(&self.ok(&args)).expect("images --json is JSON");
        v.as_array().expect("a JSON array").clone()
    }

    fn digest_of(&self, name: &str) -> String {
        let (repo, tag) = name.rsplit_once(':').expect("name:tag");
        self.list(false)
            .into_iter()
            .find(|r| r["repository"] == repo && r["tag"] == tag)
            .unwrap_or_else(|| panic!("{name} not listed"))["digest"]
            .as_str()
            .expect("digest")
            .to_string()
    }

    fn blob_count(&self) -> usize {
        std::fs::read_dir(self.images().join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// A build context: main.py, a script with exec bits, agent.yaml and an ignore file.
fn context(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join("main.py"), "print('hello')\n").unwrap();
    std::fs::write(dir.join("run.sh"), "#!/bin/sh\nexec python main.py\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("lib/deep")).unwrap();
    std::fs::write(dir.join("lib/deep/util.py"), "X = 1\n").unwrap();
    std::fs::create_dir_all(dir.join("node_modules/pkg")).unwrap();
    std::fs::write(dir.join("node_modules/pkg/index.js"), "x").unwrap();
    std::fs::write(dir.join("secret.env"), "TOKEN=1").unwrap();
    std::fs::write(dir.join("notes.log"), "log").unwrap();
    std::fs::write(dir.join("keep.log"), "kept").unwrap();
    std::fs::write(
        dir.join(".agentignore"),
        "node_modules\n*.env\n*.log\n!keep.log\n",
    )
    .unwrap();
    // .dockerignore is only read without .agentignore.
    std::fs::write(dir.join(".dockerignore"), "main.py\n").unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        "name: summarizer\nversion: 1.2.0\ndescription: Summarizes text\nauthors: [ai-team]\n\
         capabilities: [text-generation, chat]\nentrypoint: [sh, run.sh]\nenv: {MODE: prod}\n",
    )
    .unwrap();
}

/// Entries (path, mode, uid, mtime) of the single layer the image `name` adds last.
fn top_layer(home: &Home, name: &str) -> Vec<(String, u32, u64, u64)> {
    let desc = img::tagged_descriptor(&home.images(), name);
    let manifest: Value = serde_json::from_slice(&img::read_blob(
        &home.images(),
        desc["digest"].as_str().unwrap(),
    ))
    .unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = img::read_blob(&home.images(), &layer);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().display().to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
            )
        })
        .collect()
}

#[test]
fn build_is_reproducible_and_honours_agentignore() {
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    let dir = ctx.path().to_str().unwrap();
    let a = Home::new();
    let b = Home::new();
    a.ok(&["build", "-t", "summarizer:1", dir]);
    let first = a.digest_of("summarizer:1");

    // Same input in another store, after every file was rewritten (new mtimes): same digest.
    std::thread::sleep(Duration::from_millis(1100));
    context(ctx.path());
    b.ok(&["build", "-t", "summarizer:1", dir]);
    assert_eq!(b.digest_of("summarizer:1"), first);

    let entries = top_layer(&a, "summarizer:1");
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "agent/",
            "agent/.agentignore",
            "agent/.dockerignore",
            "agent/agent.yaml",
            "agent/keep.log",
            "agent/lib/",
            "agent/lib/deep/",
            "agent/lib/deep/util.py",
            "agent/main.py",
            "agent/run.sh",
        ]
    );
    let run = entries.iter().find(|e| e.0 == "agent/run.sh").unwrap();
    assert_eq!(run.1 & 0o111, 0o111, "exec bits kept");
    assert!(entries.iter().all(|e| e.2 == 0 && e.3 == 0), "{entries:?}");

    // The config carries agent.yaml as labels search reads.
    let row = &a.list(false)[0];
    assert_eq!(
        row["labels"]["ai.agent.capabilities"],
        "text-generation,chat"
    );
    assert_eq!(row["labels"]["org.opencontainers.image.version"], "1.2.0");
    assert_eq!(row["labels"]["org.opencontainers.image.authors"], "ai-team");
    assert_eq!(row["created"], "1970-01-01T00:00:00Z");

    // SOURCE_DATE_EPOCH moves the times; a content change moves the digest.
    let o = a
        .cmd(&["build", "-t", "summarizer:2", dir])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_ne!(a.digest_of("summarizer:2"), first);
    assert!(top_layer(&a, "summarizer:2")
        .iter()
        .all(|e| e.3 == 1_700_000_000));
    std::fs::write(ctx.path().join("main.py"), "print('changed')\n").unwrap();
    a.ok(&["build", "-t", "summarizer:3", dir]);
    assert_ne!(a.digest_of("summarizer:3"), first);

    // Without .agentignore, .dockerignore applies.
    std::fs::remove_file(ctx.path().join(".agentignore")).unwrap();
    a.ok(&["build", "-t", "summarizer:4", dir]);
    let names: Vec<String> = top_layer(&a, "summarizer:4")
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(!names.contains(&"agent/main.py".to_string()), "{names:?}");
    assert!(names.contains(&"agent/secret.env".to_string()), "{names:?}");
}

#[test]
fn build_on_a_base_and_a_missing_base() {
    let home = Home::new();
    let base_ctx = tempfile::tempdir().unwrap();
    std::fs::write(base_ctx.path().join("base.txt"), "base").unwrap();
    std::fs::write(
        base_ctx.path().join("agent.yaml"),
        "env: [PATH=/bin, LANG=C]\ncmd: [sh]\nworkdir: /srv\n",
    )
    .unwrap();
    home.ok(&[
        "build",
        "-t",
        "base/runtime:1",
        base_ctx.path().to_str().unwrap(),
    ]);

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("app.py"), "1").unwrap();
    std::fs::write(
        ctx.path().join("agent.yaml"),
        "base: base/runtime:1\nenv: {LANG: C.UTF-8}\n",
    )
    .unwrap();
    home.ok(&["build", "-t", "app:1", ctx.path().to_str().unwrap()]);
    let desc = img::tagged_descriptor(&home.images(), "app:1");
    let m: Value = serde_json::from_slice(&img::read_blob(
        &home.images(),
        desc["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "{m}");
    let cfg: Value = serde_json::from_slice(&img::read_blob(
        &home.images(),
        m["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(
        cfg["config"]["Env"],
        serde_json::json!(["PATH=/bin", "LANG=C.UTF-8"])
    );
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["sh"]));
    // Layers are shared: the base's layer is stored once.
    assert_eq!(home.blob_count(), 6);

    std::fs::write(ctx.path().join("agent.yaml"), "base: python:3.12\n").unwrap();
    // A base missing from the store is pulled first (tests/it/pushpull.rs); with no
    // registry to pull from, the build fails naming the base and the registry.
    let o = home.run(&[
        "build",
        "-t",
        "app:2",
        "--registry",
        "127.0.0.1:1",
        "--retries",
        "0",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("agent: cannot pull the base image python:3.12: failed to connect to registry http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn images_lists_filters_and_prints_ids() {
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    let dir = ctx.path().to_str().unwrap();
    home.ok(&["build", "-t", "my-agent:1.0", dir]);
    home.ok(&["tag", "my-agent:1.0", "team/other:latest"]);

    let table = home.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(lines[0].contains(col), "{table}");
    }
    let rows = home.list(false);
    let id = rows[0]["id"].as_str().unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let short = &id[7..19];
    assert!(
        lines[1].contains(short) && lines[1].contains("years ago"),
        "{table}"
    );
    let size = rows[0]["size"].as_u64().unwrap();
    assert!(size > 0);

    assert_eq!(home.ok(&["images", "-q"]), format!("{short}\n{short}\n"));
    let filtered = home.ok(&["images", "--filter", "my-agent", "-q"]);
    assert_eq!(filtered.lines().count(), 1);
    let by_ref = home.ok(&["images", "--filter", "reference=team/*", "--json"]);
    let v: Value = serde_json::from_str(&by_ref).unwrap();
    assert_eq!(v[0]["repository"], "team/other");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let by_label = home.ok(&["images", "--filter", "label=ai.agent.capabilities", "-q"]);
    assert_eq!(by_label.lines().count(), 2);
    let none = home.ok(&[
        "images",
        "--filter",
        "label=org.opencontainers.image.version=9",
        "-q",
    ]);
    assert_eq!(none, "");
}

#[test]
fn tag_rmi_and_prune_share_and_collect_blobs() {
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    let dir = ctx.path().to_str().unwrap();
    home.ok(&["build", "-t", "app:1", dir]);
    home.ok(&["tag", "app:1", "app:stable"]);
    assert_eq!(home.blob_count(), 3);
    let out = home.ok(&["rmi", "app:stable"]);
    assert_eq!(out, "Untagged: app:stable\n");
    assert_eq!(home.blob_count(), 3, "app:1 still uses every blob");

    // Rebuilding app:1 with other content leaves the old image untagged (dangling).
    std::fs::write(ctx.path().join("main.py"), "print('v2')\n").unwrap();
    home.ok(&["build", "-t", "app:1", dir]);
    assert_eq!(home.list(false).len(), 1);
    let all = home.list(true);
    assert_eq!(all.len(), 2);
    assert!(all[1]["repository"].is_null(), "{all:?}");
    let table = home.ok(&["images", "--all"]);
    assert!(table.contains("<none>"), "{table}");
    // The config differs only in its layer; the old layer, config, manifest are garbage
    // once the untagged image goes.
    assert_eq!(home.blob_count(), 6);
    let o = home.run(&["image", "prune"]);
    assert!(
        !o.status.success(),
        "prune without a terminal needs --force"
    );
    let out = home.ok(&["image", "prune", "-f"]);
    assert!(out.contains("deleted: sha256:"), "{out}");
    assert_eq!(home.list(true).len(), 1);
    assert_eq!(home.blob_count(), 3);

    // An unknown name fails the command but not the removal of the others, like docker.
    let o = home.run(&["rmi", "missing:9", "app:1"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("image missing:9 is not in the local store"));
    let out = text(&o.stdout);
    assert!(
        out.contains("Untagged: app:1") && out.contains("Deleted: sha256:"),
        "{out}"
    );
    assert_eq!(home.blob_count(), 0);
    assert_eq!(home.index()["manifests"], serde_json::json!([]));
    let o = home.run(&["rmi", "app:1"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("image app:1 is not in the local store"));

    // prune -a removes tagged images too.
    home.ok(&["build", "-t", "app:2", dir]);
    home.ok(&["image", "prune", "-a", "-f"]);
    assert_eq!(home.blob_count(), 0);
}

/// A `docker save` archive in the legacy layout: `<id>/layer.tar`, `<id>.json`,
/// `manifest.json`, `repositories`.
fn docker_save_tar(path: &Path, gzip: bool) -> (String, Vec<u8>) {
    let mut layer = tar::Builder::new(Vec::new());
    let payload = crate::support::random(10_000, 7);
    let mut h = tar::Header::new_gnu();
    h.set_size(payload.len() as u64);
    h.set_mode(0o644);
    layer.append_data(&mut h, "data.bin", &payload[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let diff_id = sha256_digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": {"ai.agent.capabilities": "chat"}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let id = sha256_digest(&config)[7..].to_string();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, data).unwrap();
    };
    add("abc123/VERSION", b"1.0");
    add("abc123/json", b"{}");
    add("abc123/layer.tar", &layer);
    add(&format!("{id}.json"), &config);
    let manifest = serde_json::json!([{
        "Config": format!("{id}.json"), "RepoTags": ["saved/agent:v1"], "Layers": ["abc123/layer.tar"]
    }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    add("repositories", br#"{"saved/agent":{"v1":"abc123"}}"#);
    let bytes = out.into_inner().unwrap();
    let bytes = if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap()
    } else {
        bytes
    };
    std::fs::write(path, bytes).unwrap();
    (format!("sha256:{id}"), layer)
}

#[test]
fn load_a_docker_save_archive_plain_and_gzipped() {
    for gzip in [false, true] {
        let home = Home::new();
        let file = home.dir.path().join("saved.tar");
        let (id, layer) = docker_save_tar(&file, gzip);
        let out = home.ok(&["load", "-i", file.to_str().unwrap()]);
        assert_eq!(out, "Loaded image: saved/agent:v1\n");
        let rows = home.list(false);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["id"], id.as_str());
        assert_eq!(rows[0]["created"], "2024-01-01T00:00:00Z");
        // Config, layer and the manifest made for it; the archive's `json` and `VERSION`
        // files were not kept.
        assert_eq!(home.blob_count(), 3);
        assert!(home
            .images()
            .join("blobs/sha256")
            .join(&sha256_digest(&layer)[7..])
            .is_file());
    }
}

#[test]
fn load_rejects_a_layout_with_a_corrupt_blob() {
    let home = Home::new();
    let layout = tempfile::tempdir().unwrap();
    let info = img::single_image(layout.path(), "v1", 11, &[2000]);
    // Corrupt the layer: the load must fail and store nothing under its digest.
    let (layer, _) = info
        .blobs
        .iter()
        .find(|(d, _)| img::read_blob(layout.path(), d).starts_with(&[0x1f, 0x8b]))
        .unwrap()
        .clone();
    std::fs::write(img::blob_path(layout.path(), &layer), b"not the layer").unwrap();
    let o = home.run(&["load", "-i", layout.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("wrong content"),
        "{}",
        text(&o.stderr)
    );
    assert!(!img::blob_path(&home.images(), &layer).exists());
    assert_eq!(home.index()["manifests"], serde_json::json!([]));

    // The same layout intact loads, a bare tag named with --name.
    let layout = tempfile::tempdir().unwrap();
    let info = img::single_image(layout.path(), "v1", 11, &[2000]);
    let out = home.ok(&[
        "load",
        "-i",
        layout.path().to_str().unwrap(),
        "--name",
        "gen/img",
    ]);
    assert_eq!(out, "Loaded image: gen/img:v1\n");
    assert_eq!(home.digest_of("gen/img:v1"), info.manifest_digest);
}

#[test]
fn skopeo_reads_and_writes_the_store() {
    if !tools::require("skopeo") {
        return;
    }
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    home.ok(&[
        "build",
        "-t",
        "agents/demo:1.0",
        ctx.path().to_str().unwrap(),
    ]);
    let digest = home.digest_of("agents/demo:1.0");
    let store = home.images();
    let oci = |r: &str| format!("oci:{}:{r}", store.display());

    // Read back by skopeo.
    let o = tools::run(crate::interop::skopeo().args(["inspect", &oci("agents/demo:1.0")]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    assert_eq!(v["Labels"]["ai.agent.capabilities"], "text-generation,chat");
    let out = tempfile::tempdir().unwrap();
    let dir_dest = format!("dir:{}", out.path().join("d").display());
    tools::run(crate::interop::skopeo().args(["copy", &oci("agents/demo:1.0"), &dir_dest]));
    assert!(out.path().join("d/manifest.json").is_file());

    // Written by skopeo into the store: agent sees the tag, shares the blobs.
    let before = home.blob_count();
    tools::run(crate::interop::skopeo().args([
        "copy",
        &oci("agents/demo:1.0"),
        &oci("localhost:5000/agents/demo:copy"),
    ]));
    assert_eq!(home.digest_of("localhost:5000/agents/demo:copy"), digest);
    assert_eq!(home.blob_count(), before);
    home.ok(&["tag", "localhost:5000/agents/demo:copy", "again:1"]);

    // An OCI layout written by skopeo (bare tag) loads, and the docker-archive skopeo
    // writes too.
    let layout = out.path().join("layout");
    tools::run(crate::interop::skopeo().args([
        "copy",
        &oci("agents/demo:1.0"),
        &format!("oci:{}:v7", layout.display()),
    ]));
    let other = Home::new();
    let o = other.ok(&[
        "load",
        "-i",
        layout.to_str().unwrap(),
        "--name",
        "loaded/demo",
    ]);
    assert_eq!(o, "Loaded image: loaded/demo:v7\n");
    assert_eq!(other.digest_of("loaded/demo:v7"), digest);
    let archive = out.path().join("docker.tar");
    tools::run(crate::interop::skopeo().args([
        "copy",
        &oci("agents/demo:1.0"),
        &format!("docker-archive:{}:arch/demo:2", archive.display()),
    ]));
    let o = other.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(o, "Loaded image: docker.io/arch/demo:2\n");

    // Through the project's registry: pushed from the store, pulled back into it.
    let server = crate::support::server::TestServer::start();
    let remote = format!("{}/agents/demo:1.0", server.host());
    crate::interop::push(&store, "agents/demo:1.0", &remote, &[]);
    crate::interop::pull(&remote, &oci(&remote), &[]);
    assert_eq!(home.digest_of(&remote), digest);

    // agent save is read by skopeo both as an OCI archive and as a docker archive.
    let saved = out.path().join("saved.tar");
    home.ok(&["save", "agents/demo:1.0", "-o", saved.to_str().unwrap()]);
    let o = tools::run(crate::interop::skopeo().args([
        "inspect",
        &format!("oci-archive:{}:agents/demo:1.0", saved.display()),
    ]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    tools::run(
        crate::interop::skopeo().args(["inspect", &format!("docker-archive:{}", saved.display())]),
    );
}

#[test]
fn concurrent_tags_all_land_in_the_index() {
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a"), "a").unwrap();
    home.ok(&["build", "-t", "base:1", ctx.path().to_str().unwrap()]);
    let n = 12;
    let children: Vec<_> = (0..n)
        .map(|i| {
            home.cmd(&["tag", "base:1", &format!("copy/{i}:t")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn agent tag")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let names: Vec<String> = home.index()["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["annotations"][img::REF_NAME].as_str().map(String::from))
        .collect();
    assert_eq!(names.len(), n + 1, "{names:?}");
    for i in 0..n {
        assert!(names.contains(&format!("copy/{i}:t")), "{names:?}");
    }
}

#[test]
fn kill_during_load_leaves_a_valid_store() {
    let home = Home::new();
    home.ok(&["images"]); // creates the layout
                          // A 96 MiB layer: the load is still copying it when killed.
    let big = crate::support::random(96 << 20, 3);
    let big_digest = sha256_digest(&big);
    let file = home.dir.path().join("big.tar");
    {
        let f = std::fs::File::create(&file).unwrap();
        let mut out = tar::Builder::new(std::io::BufWriter::new(f));
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, "layer/layer.tar", &big[..])
            .unwrap();
        out.into_inner().unwrap().flush().unwrap();
    }
    drop(big);
    let mut child = home
        .cmd(&["load", "-i", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = home.images().join(".tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false));
        if partial {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "load ended before the kill"
        );
        assert!(Instant::now() < deadline, "no temp file appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // index.json is valid and every blob is complete (its content hashes to its name).
    assert_eq!(home.index()["manifests"], serde_json::json!([]));
    for e in std::fs::read_dir(home.images().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let mut bytes = Vec::new();
        std::fs::File::open(e.path())
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(
            sha256_digest(&bytes)[7..],
            *e.file_name().to_str().unwrap(),
            "a partial blob under blobs/"
        );
    }
    assert!(!img::blob_path(&home.images(), &big_digest).exists());
    // The leftover temp file is removed by the next prune.
    home.ok(&["image", "prune", "-f"]);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn docker_loads_an_agent_save_archive() {
    if !tools::require("dockerd") || !tools::require("docker") {
        return;
    }
    let home = Home::new();
    let ctx = tempfile::tempdir().unwrap();
    context(ctx.path());
    home.ok(&[
        "build",
        "-t",
        "agents/saved:1",
        ctx.path().to_str().unwrap(),
    ]);
    let id = home.list(false)[0]["id"].as_str().unwrap().to_string();
    let file = home.dir.path().join("saved.tar");
    home.ok(&["save", "agents/saved:1", "-o", file.to_str().unwrap()]);

    // No pull happens: the mirror address is never contacted.
    let d = tools::Dockerd::start("127.0.0.1:9");
    let o = tools::run(d.docker().args(["load", "-i", file.to_str().unwrap()]));
    assert!(
        text(&o.stdout).contains("agents/saved:1"),
        "{}",
        text(&o.stdout)
    );
    let o = tools::run(d.docker().args(["image", "inspect", "agents/saved:1"]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["Id"], id.as_str());
    assert_eq!(
        v[0]["Config"]["Labels"]["ai.agent.capabilities"],
        "text-generation,chat"
    );
}

#[test]
fn a_multi_platform_index_loads_lists_and_saves() {
    let home = Home::new();
    let layout = tempfile::tempdir().unwrap();
    let info = img::multi_arch_image(layout.path(), "v1", 21);
    home.ok(&[
        "load",
        "-i",
        layout.path().to_str().unwrap(),
        "--name",
        "multi/img",
    ]);
    let rows = home.list(false);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["digest"], info.manifest_digest.as_str());
    assert_eq!(rows[0]["media_type"], img::INDEX_V1);
    // The ID is the host platform's config (amd64 or arm64 in the index).
    let index: Value =
        serde_json::from_slice(&img::read_blob(&home.images(), &info.manifest_digest)).unwrap();
    let configs: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let m: Value = serde_json::from_slice(&img::read_blob(
                &home.images(),
                m["digest"].as_str().unwrap(),
            ))
            .unwrap();
            m["config"]["digest"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(configs.contains(&rows[0]["id"].as_str().unwrap().to_string()));

    // Saved and loaded elsewhere: the whole index with both platforms.
    let file = home.dir.path().join("multi.tar");
    home.ok(&["save", "multi/img:v1", "-o", file.to_str().unwrap()]);
    let other = Home::new();
    assert_eq!(
        other.ok(&["load", "-i", file.to_str().unwrap()]),
        "Loaded image: multi/img:v1\n"
    );
    assert_eq!(other.digest_of("multi/img:v1"), info.manifest_digest);
    assert_eq!(other.blob_count(), home.blob_count());
    assert_eq!(other.blob_count(), 1 + info.blobs.len());
}
