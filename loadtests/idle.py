#!/usr/bin/env python3
"""10,000 idle keep-alive connections plus load.

Starts a local upstream and the mirror, primes a manifest and a 1 MiB blob, then runs wrk
(manifest by digest, 64 connections; 1 MiB blob, 32 connections) without and then with
N idle keep-alive connections open (each served one request first, then left idle), and
checks that a sample of the idle connections is still served afterwards. Reports req/s,
p50/p99 and the mirror's RSS. Bounded: about a minute.

    loadtests/idle.py --binary target/release/agent-registry [--idle 10000] [--duration 10]
"""
import argparse
import os
import random
import selectors
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402

REQ = b"GET /v2/ HTTP/1.1\r\nHost: mirror\r\n\r\n"


def open_idle(port, n):
    """Opens n connections, each completes one request; returns the sockets."""
    sel = selectors.DefaultSelector()
    socks, pending = [], {}
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((lab.HOST, port))
        sel.register(s, selectors.EVENT_WRITE, i)
        socks.append(s)
        pending[i] = b""
        if len(pending) >= 500 or i == n - 1:
            _drive(sel, socks, pending)
    return socks


def _drive(sel, socks, pending, timeout=30):
    t0 = time.monotonic()
    while pending and time.monotonic() - t0 < timeout:
        for key, ev in sel.select(1):
            s, i = key.fileobj, key.data
            if ev & selectors.EVENT_WRITE:
                s.send(REQ)
                sel.modify(s, selectors.EVENT_READ, i)
                continue
            data = s.recv(65536)
            pending[i] += data
            head, sep, body = pending[i].partition(b"\r\n\r\n")
            if not data or (sep and len(body) >= _clen(head)):
                sel.unregister(s)
                del pending[i]
    if pending:
        raise RuntimeError(f"{len(pending)} idle connections did not get their first response")


def _clen(head):
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def still_served(socks, sample):
    """Sends one more request on `sample` of the idle sockets; counts 200 answers."""
    ok = 0
    for s in random.Random(1).sample(socks, min(sample, len(socks))):
        try:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(REQ)
            ok += s.recv(65536).startswith(b"HTTP/1.1 200")
        except OSError:
            pass
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/agent-registry")
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--workdir", default="/tmp/agent-registry-loadtest/idle")
    ap.add_argument("--upstream-port", type=int, default=17080)
    ap.add_argument("--port", type=int, default=17081)
    a = ap.parse_args()
    nofile = lab.raise_nofile(a.idle * 2 + 1000)
    if nofile < a.idle + 500:
        raise SystemExit(f"open-file limit {nofile} is too low for {a.idle} idle connections")
    machine = lab.machine()
    up = lab.Upstream(a.workdir, a.upstream_port)
    mirror = None
    socks = []
    try:
        rnd = random.Random(7)
        cfg = up.push_blob("load/idle", rnd.randbytes(1500))
        layer = up.push_blob("load/idle", rnd.randbytes(1 << 20))
        mdig = up.push_manifest("load/idle", "v1", (cfg, 1500), [(layer, 1 << 20)])
        mirror = lab.Mirror(os.path.abspath(a.binary), a.workdir, a.port, a.upstream_port,
                            env={"AGENT_REGISTRY_SERVER_MAX_CONNECTIONS": str(a.idle + 1000)})
        mpath, bpath = f"/v2/load/idle/manifests/{mdig}", f"/v2/load/idle/blobs/{layer}"
        for p in (mpath, bpath):
            lab.wrk(a.port, p, 1, 1, accept=lab.ACCEPT)
        rows = []

        def load(label):
            for name, path, conns in (("manifest by digest", mpath, 64), ("1 MiB blob", bpath, 32)):
                mirror.sampler.reset()
                r = lab.wrk(a.port, path, conns, a.duration, accept=lab.ACCEPT)
                rows.append((label, name, r, mirror.sampler.peak))
                lab.log(f"{label} {name}: {r}")

        rss0 = mirror.sampler.rss_mib()
        load("no idle connections")
        t0 = time.monotonic()
        socks = open_idle(a.port, a.idle)
        t_open = time.monotonic() - t0
        time.sleep(1)
        rss_idle = mirror.sampler.rss_mib()
        lab.log(f"{len(socks)} idle connections open in {t_open:.1f}s, mirror RSS {rss_idle:.1f} MiB")
        load(f"{len(socks)} idle connections")
        alive = still_served(socks, 200)
        print(f"# {len(socks)} idle keep-alive connections plus load\n")
        print(f"Machine: {machine}.  ")
        print(f"Mirror: `{a.binary}` at commit {lab.git_rev(Path(__file__).parent)}, "
              f"`AGENT_REGISTRY_LOG_LEVEL=warn`, max_connections {a.idle + 1000}, "
              "default header_read_timeout and keep_alive_timeout; "
              f"upstream: local CNCF distribution.  ")
        print(f"Load: wrk, 2 threads, {a.duration} s per run; the idle connections each "
              "completed one `GET /v2/` and then stayed open without a request.\n")
        print("| idle connections | workload | conns | req/s | p50 ms | p99 ms | errors | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for label, name, r, peak in rows:
            err = r.get("non2xx", 0) or r.get("socket_errors", "0")
            print(f"| {label} | {name} | {r['conns']} | {r.get('rps', 0):.0f} | {r.get('p50_ms')} | "
                  f"{r.get('p99_ms')} | {err} | {peak:.1f} |")
        print(f"\nMirror RSS: {rss0:.1f} MiB before, {rss_idle:.1f} MiB with "
              f"{len(socks)} idle connections ({(rss_idle - rss0) * 1024 / max(len(socks), 1):.1f} "
              f"KiB each). Opening them took {t_open:.1f} s. After the load, "
              f"{alive} of {min(200, len(socks))} sampled idle connections were still served.")
    finally:
        for s in socks:
            s.close()
        if mirror:
            mirror.stop()
        up.stop()


if __name__ == "__main__":
    main()
