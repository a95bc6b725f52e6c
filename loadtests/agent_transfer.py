#!/usr/bin/env python3
"""`agent push` and `agent pull` against skopeo, to and from the project's server.

An image of 5 layers (200 MiB in all, random data, so nothing compresses) is loaded into
`agent`'s store; then, interleaved and repeated (median of --runs):
  - push: `agent push` and `skopeo copy oci:...` each into a fresh server (nothing to skip,
    no blob-info cache: each tool starts with a fresh HOME);
  - pull: `agent pull` into a fresh store and `skopeo copy docker://... oci:DIR` into a
    fresh directory, from one server that holds the image.
Wall time, and peak RSS of the client from /usr/bin/time (%M). Target: agent at most 1.0x
skopeo's time, under 64 MiB.

    cargo build --release
    python3 loadtests/agent_transfer.py --runs 5   # writes loadtests/results/DATE-agent-transfer.md
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import lab

REPO_ROOT = Path(__file__).resolve().parent.parent
LAYERS = 5
LAYER_MIB = 40
NAME = "agents/bench"
TAG = "1"


def write_blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    p = layout / "blobs" / "sha256" / d
    p.write_bytes(data)
    return f"sha256:{d}", len(data)


def make_image(layout):
    """An OCI layout with one image of LAYERS uncompressed tar layers of random data."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers, diff_ids = [], []
    for i in range(LAYERS):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo(f"layer{i}.bin")
            info.size = LAYER_MIB << 20
            info.mtime = 1_700_000_000
            t.addfile(info, io.BytesIO(os.urandom(info.size)))
        data = buf.getvalue()
        d, n = write_blob(layout, data)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n})
        diff_ids.append(d)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Labels": {"org.opencontainers.image.description": "transfer benchmark"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    cd, cn = write_blob(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": lab.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": layers,
    }).encode()
    md, mn = write_blob(layout, manifest)
    (layout / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": lab.OCI_MANIFEST, "digest": md, "size": mn,
                       "annotations": {"org.opencontainers.image.ref.name": TAG}}],
    }))
    return md, sum(layer["size"] for layer in layers) + cn


class Server:
    def __init__(self, binary, workdir, port):
        self.port = port
        self.dir = Path(workdir)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        cfg = self.dir / "config.toml"
        cfg.write_text('[server]\nhosted_writes = "loopback"\n')
        env = dict(os.environ, AGENT_REGISTRY_LOG_LEVEL="warn")
        argv = [binary, "serve", "--config", str(cfg), "--listen", f"{lab.HOST}:{port}",
                "--data-dir", str(self.dir / "data")]
        self.proc = lab.Proc("server", argv, self.dir / "server.log", env=env)
        lab.wait_http(port)

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(argv, env):
    """Runs argv under /usr/bin/time; returns (seconds, peak RSS MiB)."""
    with tempfile.NamedTemporaryFile("r") as tf:
        t0 = time.monotonic()
        r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name] + argv, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        dt = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{argv} failed: {r.stderr[-2000:]}")
        kib = int(tf.read().strip().splitlines()[-1])
    return dt, kib / 1024


def home_env(home):
    home.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, HOME=str(home), AAC_HOME=str(home / ".aac"),
                XDG_RUNTIME_DIR=str(home), REGISTRY_AUTH_FILE=str(home / "auth.json"),
                AGENT_REGISTRY_URL="")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default=str(REPO_ROOT / "target/release/agent"))
    ap.add_argument("--server", default=str(REPO_ROOT / "target/release/agent-registry"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--port", type=int, default=15770)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="agent-transfer-"))
    try:
        run(a, work)
    finally:
        # About 1 GiB of layouts and stores: never leave it behind on a shared disk.
        shutil.rmtree(work, ignore_errors=True)


def run(a, work):
    host = f"{lab.HOST}:{a.port}"
    skopeo = ["skopeo", "--insecure-policy"]
    lab.log(f"image: {LAYERS} layers of {LAYER_MIB} MiB in {work}")
    layout = work / "layout"
    shutil.rmtree(layout, ignore_errors=True)
    digest, size = make_image(layout)
    src_home = work / "src-home"
    shutil.rmtree(src_home, ignore_errors=True)
    src_env = home_env(src_home)
    subprocess.run([a.agent, "load", "-i", str(layout), "--name", NAME, "-q"], env=src_env, check=True)
    res = {"agent push": [], "skopeo push": [], "agent pull": [], "skopeo pull": []}

    for run in range(a.runs):
        for tool in (["agent", "skopeo"] if run % 2 == 0 else ["skopeo", "agent"]):
            srv = Server(a.server, work / "server", a.port)
            try:
                h = work / f"push-{tool}"
                shutil.rmtree(h, ignore_errors=True)
                env = home_env(h)
                if tool == "agent":
                    env["AAC_HOME"] = src_env["AAC_HOME"]
                    (src_home / ".aac" / "blob-sources.json").unlink(missing_ok=True)
                    argv = [a.agent, "push", f"{NAME}:{TAG}", "--registry", host, "-q"]
                else:
                    argv = skopeo + ["copy", "--dest-tls-verify=false", f"oci:{layout}:{TAG}",
                                     f"docker://{host}/{NAME}:{TAG}"]
                dt, rss = timed(argv, env)
                res[f"{tool} push"].append((dt, rss))
                lab.log(f"run {run + 1} {tool} push: {dt:.2f}s, {rss:.1f} MiB")
            finally:
                srv.stop()

    srv = Server(a.server, work / "server", a.port)
    try:
        subprocess.run([a.agent, "push", f"{NAME}:{TAG}", "--registry", host, "-q"],
                       env=src_env, check=True, stdout=subprocess.DEVNULL)
        for run in range(a.runs):
            for tool in (["agent", "skopeo"] if run % 2 == 0 else ["skopeo", "agent"]):
                h = work / f"pull-{tool}"
                shutil.rmtree(h, ignore_errors=True)
                env = home_env(h)
                if tool == "agent":
                    argv = [a.agent, "pull", f"{NAME}:{TAG}", "--registry", host, "-q"]
                else:
                    argv = skopeo + ["copy", "--src-tls-verify=false", f"docker://{host}/{NAME}:{TAG}",
                                     f"oci:{h / 'layout'}:{TAG}"]
                dt, rss = timed(argv, env)
                res[f"{tool} pull"].append((dt, rss))
                lab.log(f"run {run + 1} {tool} pull: {dt:.2f}s, {rss:.1f} MiB")
    finally:
        srv.stop()

    med = {k: (statistics.median(t for t, _ in v), max(r for _, r in v)) for k, v in res.items()}
    lines = [
        f"# agent push/pull against skopeo ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {lab.machine()}. Commit {lab.git_rev(REPO_ROOT)}; binaries {a.agent}, {a.server}.",
        f"Image: {LAYERS} layers of {LAYER_MIB} MiB (random, uncompressed tar), {size / 2**20:.0f} MiB, "
        f"manifest {digest}. Interleaved, {a.runs} runs, median wall time; peak RSS is the max "
        "over the runs (/usr/bin/time %M). Push goes to a fresh server each run.",
        "",
        "| operation | agent (s) | skopeo (s) | ratio | agent peak RSS (MiB) | skopeo peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for op in ("push", "pull"):
        at, ar = med[f"agent {op}"]
        st, sr = med[f"skopeo {op}"]
        lines.append(f"| {op} | {at:.2f} | {st:.2f} | {at / st:.2f}x | {ar:.1f} | {sr:.1f} |")
    lines += ["", "Raw (seconds, MiB):", "", "```", json.dumps(res, indent=1), "```", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(a.out or REPO_ROOT / "loadtests/results" / f"{time.strftime('%Y-%m-%d')}-agent-transfer.md")
    out.write_text(text)
    lab.log(f"wrote {out}")


if __name__ == "__main__":
    main()
