//! External interop tools: finding them, running them with a timeout, and private containerd / dockerd / podman instances that clean up after themselves.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one tool invocation may take before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Directories searched in addition to `PATH` (root tools live in sbin).
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// True if `tool` can be used. `oras` means the oras-py library (`python3 -c "import oras"`).
///
/// When the tool is missing this panics under `REQUIRE_INTEROP=1` (CI), and otherwise
/// prints a skip notice and returns false so the calling test can return early.
pub fn require(tool: &str) -> bool {
    let found = if tool == "oras" {
        which("python3").is_some() && python_imports("oras")
    } else {
        which(tool).is_some()
    };
    if found {
        return true;
    }
    if std::env::var("REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("interop tool {tool} is required (REQUIRE_INTEROP=1) but not installed");
    }
    eprintln!("skipping: {tool} not installed");
    false
}

/// The full path of an executable found on `PATH` or in the usual system directories.
pub fn which(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn python_imports(module: &str) -> bool {
    let mut cmd = command("python3");
    cmd.args(["-c", &format!("import {module}")]);
    output(&mut cmd).status.success()
}

/// A `Command` for `tool`, resolved with [`which`] so sbin tools work without them on `PATH`.
pub fn command(tool: &str) -> Command {
    Command::new(which(tool).unwrap_or_else(|| PathBuf::from(tool)))
}

/// Runs `cmd` with [`TIMEOUT`] and returns its output; panics with the command line,
/// status, stdout and stderr if it fails or times out.
pub fn run(cmd: &mut Command) -> Output {
    let out = output(cmd);
    if !out.status.success() {
        panic!("{}", describe(cmd, "command failed", &out));
    }
    out
}

/// Runs `cmd` with [`TIMEOUT`] and returns its output whatever the exit status
/// (for commands that are expected to fail). Panics only if it cannot start or times out.
pub fn output(cmd: &mut Command) -> Output {
    output_with_timeout(cmd, TIMEOUT)
}

/// Like [`output`] with an explicit timeout. The command runs in its own process group
/// with stdin closed; on timeout the whole group is killed.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().map(|r| drain(r, 0, tx.clone()));
    let stderr = child.stderr.take().map(|r| drain(r, 1, tx));
    let deadline = Instant::now() + timeout;
    let status = wait_until(&mut child, deadline);
    // The readers finish when every holder of the pipes is gone; a leftover grandchild
    // could keep them open, so they get the remaining time and no more.
    let mut bufs = [Vec::new(), Vec::new()];
    for _ in stdout.iter().chain(stderr.iter()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_secs(1))) {
            Ok((i, buf)) => bufs[i] = buf,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = bufs;
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => {
            let out = Output {
                status: child.wait().expect("wait for killed child"),
                stdout,
                stderr,
            };
            panic!(
                "{}",
                describe(cmd, &format!("command timed out after {timeout:?}"), &out)
            )
        }
    }
}

fn drain(
    mut reader: impl Read + Send + 'static,
    index: usize,
    tx: mpsc::Sender<(usize, Vec<u8>)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        let _ = tx.send((index, buf));
    })
}

/// Polls `child` until it exits (`Some`) or the deadline passes (`None`, group killed).
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            kill_group(child.id(), "KILL");
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the process group `pgid` (best effort).
fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new(which("kill").unwrap_or_else(|| "kill".into()))
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn describe(cmd: &Command, what: &str, out: &Output) -> String {
    format!(
        "{what}: {cmd:?}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    )
}

/// The last 16 KiB of a tool's output, lossily decoded.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(16 * 1024);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Unmounts everything mounted at or below `dir` (deepest first), so the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(unescape_mount_path)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        let ok = Command::new(which("umount").unwrap_or_else(|| "umount".into()))
            .arg(&point)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new(which("umount").unwrap_or_else(|| "umount".into()))
                .args(["-R", "-l", &point])
                .status();
        }
    }
}

/// `/proc/mounts` writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(o)) => {
                out.push(
                    o.iter()
                        .fold(0u8, |acc, d| acc.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A private containerd daemon (own root, state and socket in a tempdir), stopped and
/// cleaned up on drop.
pub struct Containerd {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts the daemon and waits (up to 10 s) until `ctr version` answers.
    pub fn start() -> Containerd {
        // A short path under /tmp: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("it-ctrd-")
            .tempdir_in("/tmp")
            .expect("containerd tempdir");
        let t = dir.path();
        let sock = t.join("sock");
        let config = format!(
            r#"version = 2
root = "{t}/root"
state = "{t}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{t}/sock"
[ttrpc]
  address = "{t}/sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{t}/opt"
"#,
            t = t.display()
        );
        std::fs::write(t.join("config.toml"), config).expect("write containerd config");
        let log = std::fs::File::create(t.join("log")).expect("containerd log");
        // setsid: its own session and process group (pgid == pid), so drop can kill it all.
        let child = command("setsid")
            .arg(which("containerd").expect("containerd not installed"))
            .arg("--config")
            .arg(t.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut daemon = Containerd { child, sock, dir };
        daemon.wait_ready(Duration::from_secs(10));
        daemon
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll containerd") {
                panic!("containerd exited with {status}:\n{}", self.log());
            }
            if self.sock.exists() && output(self.ctr().arg("version")).status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "containerd socket not ready after {limit:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address <private socket>`.
    pub fn ctr(&self) -> Command {
        let mut cmd = command("ctr");
        cmd.arg("--address").arg(&self.sock);
        cmd
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pgid = self.child.id();
        kill_group(pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        if wait_until(&mut self.child, deadline).is_none() {
            let _ = self.child.wait();
        }
        // Shims or helpers left in the group (none expected without containers).
        kill_group(pgid, "KILL");
        unmount_under(self.dir.path());
        // TempDir removes the directory when the field drops.
    }
}

/// A private Docker Engine (Debian's `dockerd`: vfs storage, no bridge, no iptables)
/// with its own data root, exec root, pidfile, socket and client config in a tempdir;
/// `daemon.json` names the registry mirror and insecure registry, fixed at start.
/// Stopped and cleaned up on drop.
pub struct Dockerd {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts the daemon with `mirror` (host:port, plain HTTP) as its `registry-mirrors`
    /// entry and insecure registry; waits (up to 30 s) until `docker version` answers.
    pub fn start(mirror: &str) -> Dockerd {
        // Short: the socket path must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("it-dk-")
            .tempdir_in("/tmp")
            .expect("dockerd tempdir");
        let t = dir.path();
        let config = format!(
            r#"{{"registry-mirrors": ["http://{mirror}"], "insecure-registries": ["{mirror}"],
 "iptables": false, "ip6tables": false, "bridge": "none", "storage-driver": "vfs"}}"#
        );
        std::fs::write(t.join("daemon.json"), config).expect("write daemon.json");
        std::fs::create_dir_all(t.join("client")).expect("client config dir");
        let log = std::fs::File::create(t.join("log")).expect("dockerd log");
        // setsid: its own process group (with the containerd it starts), killed on drop.
        let child = command("setsid")
            .arg(which("dockerd").expect("dockerd not installed"))
            .arg("--config-file")
            .arg(t.join("daemon.json"))
            .arg("--data-root")
            .arg(t.join("root"))
            .arg("--exec-root")
            .arg(t.join("exec"))
            .arg("--pidfile")
            .arg(t.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", t.join("sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let sock = t.join("sock");
        let mut daemon = Dockerd { child, sock, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = daemon.child.try_wait().expect("poll dockerd") {
                panic!("dockerd exited with {status}:\n{}", daemon.log());
            }
            if daemon.sock.exists() && output(daemon.docker().arg("version")).status.success() {
                return daemon;
            }
            if Instant::now() >= deadline {
                panic!("dockerd not ready after 30 s:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `docker -H unix://<private socket>` with a private client config (logins).
    pub fn docker(&self) -> Command {
        let mut cmd = command("docker");
        cmd.env("DOCKER_CONFIG", self.dir.path().join("client"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()));
        cmd
    }

    /// `docker login REGISTRY -u USER --password-stdin`.
    pub fn login(&self, registry: &str, user: &str, password: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .docker()
            .args(["login", registry, "-u", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker login");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(password.as_bytes())
                .expect("password to docker login");
        }
        let deadline = Instant::now() + TIMEOUT;
        while child.try_wait().expect("poll docker login").is_none() {
            assert!(Instant::now() < deadline, "docker login timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("docker login output")
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pgid = self.child.id();
        kill_group(pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        if wait_until(&mut self.child, deadline).is_none() {
            let _ = self.child.wait();
        }
        kill_group(pgid, "KILL");
        unmount_under(self.dir.path());
    }
}

/// A rootful podman with vfs storage in a private tempdir (no daemon), removed on drop.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("it-podman-")
            .tempdir()
            .expect("podman tempdir");
        for sub in ["root", "run", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("podman dirs");
        }
        // Only fully qualified names are used; keep the host's search list out.
        std::fs::write(
            dir.path().join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .expect("podman registries.conf");
        Podman { dir }
    }

    /// A containers-storage reference into this podman's store, for skopeo
    /// (`containers-storage:[vfs@ROOT+RUNROOT]NAME`).
    pub fn storage_ref(&self, name: &str) -> String {
        let t = self.dir.path();
        format!(
            "containers-storage:[vfs@{}+{}]{name}",
            t.join("root").display(),
            t.join("run").display()
        )
    }

    /// `podman --storage-driver vfs --root .. --runroot .. --cgroup-manager cgroupfs --events-backend file`.
    pub fn cmd(&self) -> Command {
        let t = self.dir.path();
        let mut cmd = command("podman");
        cmd.env("CONTAINERS_REGISTRIES_CONF", t.join("registries.conf"))
            .args(["--storage-driver", "vfs", "--root"])
            .arg(t.join("root"))
            .arg("--runroot")
            .arg(t.join("run"))
            .arg("--tmpdir")
            .arg(t.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        cmd
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // vfs needs no mounts, but a failed run may leave some behind.
        unmount_under(self.dir.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tools_in_system_dirs() {
        assert!(which("sh").is_some_and(|p| p.is_absolute()));
        assert!(which("no-such-tool-for-interop").is_none());
    }

    #[test]
    fn run_returns_output_and_reports_failures() {
        let out = run(Command::new("sh").args(["-c", "printf out; printf err >&2"]));
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out"[..], &b"err"[..])
        );

        let failed = std::panic::catch_unwind(|| {
            run(Command::new("sh").args(["-c", "echo to-stdout; echo to-stderr >&2; exit 3"]))
        });
        let message = *failed
            .expect_err("exit 3 must panic")
            .downcast::<String>()
            .unwrap();
        for part in ["\"sh\" \"-c\"", "exit status: 3", "to-stdout", "to-stderr"] {
            assert!(message.contains(part), "{part:?} missing from {message}");
        }
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let started = Instant::now();
        let timed_out = std::panic::catch_unwind(|| {
            // The background sleep keeps the pipes open unless the group is killed.
            output_with_timeout(
                Command::new("sh").args(["-c", "echo begun; sleep 30 & sleep 30"]),
                Duration::from_millis(300),
            )
        });
        let message = *timed_out
            .expect_err("must time out")
            .downcast::<String>()
            .unwrap();
        assert!(
            message.contains("timed out") && message.contains("begun"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/tmp/a\040b\011c\134d"),
            "/tmp/a b\tc\\d"
        );
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
    }
}
