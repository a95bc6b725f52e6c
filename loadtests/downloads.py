#!/usr/bin/env python3
"""Concurrent blob downloads with the mirror's RSS sampled: is memory flat from 50 to
1,000 clients?

For each client count N (default 50, 200, 500, 1000) a fresh blob is pushed to a local
upstream; N clients connect, then all send `GET` for it at the same instant: a cold,
coalesced fill (the upstream must serve it once). Then the same N downloads again, warm
(from the disk tier). One event-loop client drives all sockets (bodies counted, a sample
hashed), so the client's own memory and threads do not grow with N. Reports wall time,
time to first byte, upstream GETs and the mirror's peak RSS per phase. Bounded: N x size
bytes per phase (8 MiB blobs by default: 8 GB at N = 1,000).

    loadtests/downloads.py --binary target/release/agent-registry [--clients 50,200,500,1000]
"""
import argparse
import hashlib
import os
import random
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402

BUF = bytearray(1 << 18)


def download_all(port, path, n, size, digest, hashed=8, timeout=600):
    """n concurrent GETs of path; returns per-client (status, bytes, ttfb, done, sha_ok)."""
    sel = selectors.DefaultSelector()
    clients = []
    for i in range(n):
        s = socket.create_connection((lab.HOST, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
        clients.append({"s": s, "head": b"", "body": 0, "status": None, "ttfb": None,
                        "done": None, "h": hashlib.sha256() if i < hashed else None})
    req = f"GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode()
    t0 = time.monotonic()
    for i, c in enumerate(clients):
        c["s"].sendall(req)
        c["s"].setblocking(False)
        sel.register(c["s"], selectors.EVENT_READ, i)
    open_ = n
    mv = memoryview(BUF)
    while open_ and time.monotonic() - t0 < timeout:
        for key, _ in sel.select(1):
            c = clients[key.data]
            try:
                k = c["s"].recv_into(mv)
            except BlockingIOError:
                continue
            except OSError:
                k = 0
            now = time.monotonic() - t0
            data = mv[:k]
            if c["status"] is None:
                c["head"] += bytes(data)
                head, sep, rest = c["head"].partition(b"\r\n\r\n")
                if not sep:
                    if k == 0:
                        c["status"] = 0
                    else:
                        continue
                else:
                    c["status"] = int(head.split()[1])
                    data = rest
            if len(data):
                if c["ttfb"] is None:
                    c["ttfb"] = now
                c["body"] += len(data)
                if c["h"]:
                    c["h"].update(data)
            if k == 0 or c["body"] >= size:
                c["done"] = now
                sel.unregister(c["s"])
                c["s"].close()
                open_ -= 1
    want = digest.split(":", 1)[1]
    return [(c["status"], c["body"], c["ttfb"], c["done"],
             None if c["h"] is None else c["h"].hexdigest() == want) for c in clients]


def summary(res, size):
    ok = sum(1 for st, b, *_ in res if st == 200 and b == size)
    sha_bad = sum(1 for *_, sha in res if sha is False)
    ttfb = sorted(r[2] for r in res if r[2] is not None)
    done = [r[3] for r in res if r[3] is not None]
    return {"ok": ok, "sha_bad": sha_bad,
            "ttfb_p50": statistics.median(ttfb) if ttfb else None,
            "ttfb_max": ttfb[-1] if ttfb else None,
            "wall": max(done) if done else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/agent-registry")
    ap.add_argument("--clients", default="50,200,500,1000")
    ap.add_argument("--size-mib", type=int, default=8)
    ap.add_argument("--workdir", default="/tmp/agent-registry-loadtest/downloads")
    ap.add_argument("--upstream-port", type=int, default=17082)
    ap.add_argument("--port", type=int, default=17083)
    a = ap.parse_args()
    counts = [int(x) for x in a.clients.split(",")]
    lab.raise_nofile(max(counts) * 2 + 1000)
    machine = lab.machine()
    size = a.size_mib << 20
    up = lab.Upstream(a.workdir, a.upstream_port)
    mirror = None
    rows = []
    try:
        blobs = {}
        for n in counts:
            data = random.Random(n).randbytes(size)
            blobs[n] = up.push_blob("load/downloads", data)
        mirror = lab.Mirror(os.path.abspath(a.binary), a.workdir, a.port, a.upstream_port,
                            env={"AGENT_REGISTRY_SERVER_MAX_CONNECTIONS": str(max(counts) + 1000)})
        rss0 = mirror.sampler.rss_mib()
        for n in counts:
            path = f"/v2/load/downloads/blobs/{blobs[n]}"
            for phase in ("cold", "warm"):
                off = up.access_offset()
                mirror.sampler.reset()
                cpu0 = mirror.sampler.cpu_s()
                s = summary(download_all(a.port, path, n, size, blobs[n]), size)
                time.sleep(0.3)
                s["cpu"] = mirror.sampler.cpu_s() - cpu0
                s["peak"] = mirror.sampler.peak
                s["upstream_gets"] = sum(1 for p, st, _ in up.gets(off) if p == path)
                rows.append((n, phase, s))
                lab.log(f"{n} {phase}: {s}")
        print(f"# {', '.join(map(str, counts))} concurrent blob downloads, RSS sampled\n")
        print(f"Machine: {machine}.  ")
        print(f"Mirror: `{a.binary}` at commit {lab.git_rev(Path(__file__).parent)}, "
              "`AGENT_REGISTRY_LOG_LEVEL=warn`, default memory settings; upstream: local CNCF "
              "distribution.  ")
        print(f"Each row: N clients connect, then all GET the same {a.size_mib} MiB blob at once "
              "(a fresh blob per N: cold = one coalesced fill, warm = the same N again from "
              "disk). One event-loop client reads every socket; 8 bodies per phase are "
              f"sha256-checked. Mirror RSS at start: {rss0:.1f} MiB; RSS sampled at 10 Hz.\n")
        print("| clients | phase | complete | sha256 bad | upstream GETs | TTFB p50 / max s | "
              "wall s | mirror CPU s | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n, phase, s in rows:
            print(f"| {n} | {phase} | {s['ok']}/{n} | {s['sha_bad']} | {s['upstream_gets']} | "
                  f"{s['ttfb_p50']:.3f} / {s['ttfb_max']:.3f} | {s['wall']:.2f} | "
                  f"{s['cpu']:.1f} | {s['peak']:.1f} |")
    finally:
        if mirror:
            mirror.stop()
        up.stop()


if __name__ == "__main__":
    main()
