#!/usr/bin/env python3
"""Replay of a realistic pull trace: many images sharing base layers, Zipf popularity.

The trace is generated deterministically from --seed: `--bases` base images (3-4 layers
each, 1-12 MiB), `--apps` application images each built on a base chosen by Zipf
popularity and adding 1-3 layers of their own (64 KiB-3 MiB), and `--pulls` pulls of
images drawn by Zipf popularity (s = --zipf). Everything is pushed to a local upstream
(CNCF distribution); then the pulls are replayed against a fresh mirror by --workers
concurrent clients, each pull as a client without a local store does it: manifest by
tag, then config and every layer, each body sha256-checked. Reports the hit ratio (from
the mirror's X-Cache header, by requests and by bytes) and the upstream bytes saved
(bytes served to clients minus bytes the upstream sent, from its access log).

    loadtests/trace.py --binary target/release/agent-registry [--seed 1] [--pulls 300]
"""
import argparse
import collections
import hashlib
import http.client
import os
import queue
import random
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402

MIB = 1 << 20


def zipf_pick(rnd, n, s):
    weights = [1 / (k + 1) ** s for k in range(n)]
    return rnd.choices(range(n), weights)[0]


def generate(seed, bases, apps, pulls, s):
    """Returns (images, trace): images[name] = [(layer_id, size)], trace = [image name]."""
    rnd = random.Random(seed)
    layers = {}
    base_layers = []
    for b in range(bases):
        ls = []
        for k in range(rnd.randint(3, 4)):
            lid = f"base{b}-l{k}"
            layers[lid] = rnd.randint(1 * MIB, 12 * MIB) if k == 0 else rnd.randint(MIB // 4, 4 * MIB)
            ls.append(lid)
        base_layers.append(ls)
    images = {}
    for a in range(apps):
        base = zipf_pick(rnd, bases, s)
        own = []
        for k in range(rnd.randint(1, 3)):
            lid = f"app{a}-l{k}"
            layers[lid] = rnd.randint(64 << 10, 3 * MIB)
            own.append(lid)
        images[f"trace/app-{a:02d}"] = base_layers[base] + own
    names = sorted(images)
    rnd.shuffle(names)  # popularity rank independent of the base chosen
    trace = [names[zipf_pick(rnd, len(names), s)] for _ in range(pulls)]
    return layers, images, trace


def get(conn, path, accept=None):
    conn.request("GET", path, headers={"Accept": accept} if accept else {})
    r = conn.getresponse()
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return r.status, r.getheader("X-Cache", "-"), n, "sha256:" + h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/agent-registry")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bases", type=int, default=6)
    ap.add_argument("--apps", type=int, default=40)
    ap.add_argument("--pulls", type=int, default=300)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--workdir", default="/tmp/agent-registry-loadtest/trace")
    ap.add_argument("--upstream-port", type=int, default=17084)
    ap.add_argument("--port", type=int, default=17085)
    a = ap.parse_args()
    machine = lab.machine()
    sizes, images, trace = generate(a.seed, a.bases, a.apps, a.pulls, a.zipf)
    up = lab.Upstream(a.workdir, a.upstream_port)
    mirror = None
    try:
        t0 = time.monotonic()
        digests = {}
        for lid, size in sizes.items():
            data = random.Random(f"{a.seed}/{lid}").randbytes(size)
            # Pushed once, mounted into every other repository that uses it.
            users = [name for name, ls in images.items() if lid in ls]
            for i, name in enumerate(users):
                if i == 0:
                    digests[lid] = up.push_blob(name, data)
                else:
                    up.mount(name, digests[lid], users[0])
        manifests = {}
        for name, ls in images.items():
            cfg = f'{{"image":"{name}","layers":{len(ls)}}}'.encode()
            cdig = up.push_blob(name, cfg)
            mdig = up.push_manifest(name, "latest", (cdig, len(cfg)),
                                    [(digests[lid], sizes[lid]) for lid in ls])
            manifests[name] = (mdig, cdig, len(cfg))
        unique = sum(sizes.values())
        lab.log(f"seeded {len(images)} images, {len(sizes)} layers, {unique / MIB:.0f} MiB "
                f"unique in {time.monotonic() - t0:.0f}s")
        mirror = lab.Mirror(os.path.abspath(a.binary), a.workdir, a.port, a.upstream_port)
        off = up.access_offset()
        stats = collections.Counter()
        by_cache = collections.Counter()
        bytes_by_cache = collections.Counter()
        errors = []
        lock = threading.Lock()
        work = queue.Queue()
        for name in trace:
            work.put(name)

        def worker():
            conn = http.client.HTTPConnection(lab.HOST, a.port, timeout=120)
            while True:
                try:
                    name = work.get_nowait()
                except queue.Empty:
                    break
                mdig, cdig, _ = manifests[name]
                reqs = [(f"/v2/{name}/manifests/latest", lab.ACCEPT, mdig, "manifest"),
                        (f"/v2/{name}/blobs/{cdig}", None, cdig, "blob")]
                reqs += [(f"/v2/{name}/blobs/{digests[lid]}", None, digests[lid], "blob")
                         for lid in images[name]]
                for path, accept, want, kind in reqs:
                    try:
                        st, cache, n, got = get(conn, path, accept)
                    except (OSError, http.client.HTTPException) as e:
                        conn.close()
                        conn = http.client.HTTPConnection(lab.HOST, a.port, timeout=120)
                        st, cache, n, got = 0, "-", 0, repr(e)
                    with lock:
                        stats[f"{kind}_requests"] += 1
                        stats["client_bytes"] += n
                        by_cache[(kind, cache)] += 1
                        bytes_by_cache[cache] += n
                        if st != 200 or got != want:
                            errors.append((path, st, got[:40]))
            conn.close()

        mirror.sampler.reset()
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(a.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        time.sleep(0.5)
        upstream = up.gets(off)
        up_blob_bytes = sum(b for p, st, b in upstream if "/blobs/" in p)
        up_bytes = sum(b for _, _, b in upstream)
        client = stats["client_bytes"]
        hits = {k: v for k, v in by_cache.items() if k[1] == "hit"}
        reqs = stats["manifest_requests"] + stats["blob_requests"]
        print(f"# Pull-trace replay: {a.pulls} pulls of {len(images)} images sharing "
              f"{a.bases} bases (seed {a.seed})\n")
        print(f"Machine: {machine}.  ")
        print(f"Mirror: `{a.binary}` at commit {lab.git_rev(Path(__file__).parent)}, "
              "`AGENT_REGISTRY_LOG_LEVEL=warn`, fresh cache; upstream: local CNCF distribution.  ")
        print(f"Trace: `loadtests/trace.py --seed {a.seed} --bases {a.bases} --apps {a.apps} "
              f"--pulls {a.pulls} --zipf {a.zipf} --workers {a.workers}`: {len(sizes)} distinct "
              f"layers, {unique / MIB:.0f} MiB unique; image popularity and base choice Zipf "
              f"(s = {a.zipf}); each pull = manifest by tag + config + every layer, sha256-checked, "
              f"{a.workers} pulls in parallel.\n")
        print("| metric | value |\n|---|---|")
        print(f"| pulls / requests | {a.pulls} / {reqs} |")
        print(f"| errors (status or digest) | {len(errors)} |")
        print(f"| wall time s | {wall:.1f} |")
        for kind in ("manifest", "blob"):
            n = stats[f"{kind}_requests"]
            parts = ", ".join(f"{c} {v}" for (k, c), v in sorted(by_cache.items()) if k == kind)
            print(f"| {kind} requests by X-Cache | {parts} |")
        print(f"| hit ratio by requests (hit / all) | {sum(hits.values()) / max(reqs, 1):.3f} |")
        served_hit = bytes_by_cache["hit"]
        print(f"| hit ratio by bytes (served from cache / all) | {served_hit / max(client, 1):.3f} |")
        print(f"| bytes served to clients | {client / MIB:.1f} MiB |")
        print(f"| bytes from upstream (all GETs / blob GETs) | {up_bytes / MIB:.1f} / "
              f"{up_blob_bytes / MIB:.1f} MiB ({len(upstream)} GETs) |")
        print(f"| unique bytes in the trace | {sum(sizes[l] for l in {l for n in set(trace) for l in images[n]}) / MIB:.1f} MiB |")
        print(f"| upstream bytes saved | {(client - up_bytes) / MIB:.1f} MiB "
              f"({(client - up_bytes) / max(client, 1):.1%}) |")
        print(f"| mirror peak RSS | {mirror.sampler.peak:.1f} MiB |")
        if errors:
            print("\nFirst errors: " + "; ".join(map(str, errors[:5])))
    finally:
        if mirror:
            mirror.stop()
        up.stop()


if __name__ == "__main__":
    main()
