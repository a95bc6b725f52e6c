//! The real `agent` binary run with an `AAC_HOME` of its own: a tempdir that is also its
//! `HOME`, `XDG_RUNTIME_DIR` and auth file, so no login, profile or image of the machine
//! (or of another test) is seen.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("AAC_HOME tempdir"),
        }
    }

    /// The local image store.
    pub fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
        c.args(args)
            .env("AAC_HOME", self.dir.path())
            .env("HOME", self.dir.path())
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("AGENT_REGISTRY_URL")
            .env_remove("AGENT_REGISTRY_TOKEN")
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run agent")
    }

    /// Runs `agent ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "agent {args:?} failed: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Runs `agent ARGS`, asserting success; stdout parsed as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
