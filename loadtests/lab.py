"""Shared pieces of the load scenarios: a local upstream (CNCF distribution, Debian
`docker-registry`), pushing synthetic blobs and manifests to it, the mirror under test,
an RSS sampler, wrk, and the machine description. Stdlib only."""
import hashlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = OCI_MANIFEST + ", application/vnd.docker.distribution.manifest.v2+json"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raise_nofile(want=65536):
    """Raises the open-file limit of this process (and so of the servers it starts)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_http(port, path="/v2/", timeout=30):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", path)
            c.getresponse().read()
            c.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


class Proc:
    """A server in its own session, stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, name, argv, logfile, env=None):
        self.name = name
        self.log = open(logfile, "ab")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)

    @property
    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


class Upstream:
    """CNCF distribution on `port` with filesystem storage under `workdir`."""

    def __init__(self, workdir, port):
        self.dir = Path(workdir) / "upstream"
        self.port = port
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "data").mkdir(parents=True)
        conf = self.dir / "config.yml"
        conf.write_text(
            "version: 0.1\nlog: {level: warn, formatter: text}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.dir / 'data'}}}, "
            "cache: {blobdescriptor: inmemory}, delete: {enabled: true}}\n"
            f"http: {{addr: {HOST}:{port}, secret: loadtest}}\n")
        self.logfile = self.dir / "access.log"
        self.proc = Proc("upstream", ["docker-registry", "serve", str(conf)], self.logfile)
        wait_http(port)

    def push_blob(self, repo, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        c = http.client.HTTPConnection(HOST, self.port, timeout=120)
        c.request("POST", f"/v2/{repo}/blobs/uploads/")
        r = c.getresponse()
        r.read()
        if r.status != 202:
            raise RuntimeError(f"upload start: {r.status}")
        loc = r.getheader("Location")
        sep = "&" if "?" in loc else "?"
        if loc.startswith("http"):
            loc = "/" + loc.split("/", 3)[3]
        c.request("PUT", f"{loc}{sep}digest={digest}", body=data,
                  headers={"Content-Type": "application/octet-stream"})
        r = c.getresponse()
        r.read()
        if r.status != 201:
            raise RuntimeError(f"upload finish: {r.status}")
        c.close()
        return digest

    def mount(self, repo, digest, source):
        """Links a blob pushed to `source` into `repo` (cross-repository mount)."""
        c = http.client.HTTPConnection(HOST, self.port, timeout=30)
        c.request("POST", f"/v2/{repo}/blobs/uploads/?mount={digest}&from={source}")
        r = c.getresponse()
        r.read()
        c.close()
        if r.status != 201:
            raise RuntimeError(f"mount {digest} into {repo}: {r.status}")

    def push_manifest(self, repo, tag, config, layers):
        """config and layers: (digest, size) pairs. Returns the manifest digest."""
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": d, "size": s} for d, s in layers],
        }, separators=(",", ":")).encode()
        c = http.client.HTTPConnection(HOST, self.port, timeout=30)
        c.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body,
                  headers={"Content-Type": OCI_MANIFEST})
        r = c.getresponse()
        r.read()
        if r.status != 201:
            raise RuntimeError(f"manifest put: {r.status}")
        c.close()
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def access_offset(self):
        return self.logfile.stat().st_size

    def gets(self, since):
        """(path, status, bytes) of every GET the upstream answered since `since`."""
        out = []
        with open(self.logfile, "rb") as f:
            f.seek(since)
            for line in f.read().decode(errors="replace").splitlines():
                try:
                    req = line.split('"')[1]
                    status, size = line.split('"')[2].split()[:2]
                except (IndexError, ValueError):
                    continue
                method, path = req.split()[:2]
                if method == "GET":
                    out.append((path, int(status), int(size) if size.isdigit() else 0))
        return out

    def stop(self):
        self.proc.stop()


class Mirror:
    """The mirror under test, fresh data directory, pointed at the upstream as docker.io."""

    def __init__(self, binary, workdir, port, upstream_port, env=None):
        self.port = port
        self.dir = Path(workdir) / "mirror"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        e = dict(os.environ)
        e.setdefault("AGENT_REGISTRY_LOG_LEVEL", "warn")
        e.update(env or {})
        argv = [binary, "serve", "--listen", f"{HOST}:{port}", "--data-dir", str(self.dir / "data"),
                "--upstream", f"docker.io=http://{HOST}:{upstream_port}"]
        self.proc = Proc("mirror", argv, self.dir / "server.log", env=e)
        wait_http(port)
        self.sampler = RssSampler(self.proc.pid)

    def stop(self):
        self.sampler.stop()
        self.proc.stop()


class RssSampler:
    """Samples VmRSS of one process at 10 Hz; `phase()` brackets a measurement."""

    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.last = 0
        self.running = True
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def rss_mib(self):
        try:
            for line in open(f"/proc/{self.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def cpu_s(self):
        f = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def _run(self):
        while self.running:
            self.last = self.rss_mib()
            self.peak = max(self.peak, self.last)
            time.sleep(self.interval)

    def reset(self):
        self.peak = self.rss_mib()

    def stop(self):
        self.running = False


def wrk(port, path, conns, duration, accept=None):
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--timeout", "10s", "--latency",
            f"http://{HOST}:{port}{path}"]
    if accept:
        argv[1:1] = ["-H", f"Accept: {accept}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    res = {"conns": conns}
    for line in out.splitlines():
        p = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(p[1])
        elif len(p) == 2 and p[0] in ("50%", "99%"):
            res["p" + p[0][:-1] + "_ms"] = _ms(p[1])
        elif "requests in" in line:
            res["requests"] = int(p[0])
        elif line.strip().startswith("Non-2xx"):
            res["non2xx"] = int(p[-1])
        elif line.strip().startswith("Socket errors"):
            res["socket_errors"] = line.split(":", 1)[1].strip()
    return res


def _ms(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit) and s[:-len(unit)].replace(".", "").isdigit():
            return round(float(s[:-len(unit)]) * f, 3)
    return None


def machine():
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    load = open("/proc/loadavg").read().split()[:3]
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {platform.release()}; "
            f"load average at start {' '.join(load)}")


def git_rev(path):
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
