#!/usr/bin/env python3
"""A soak: the mirror for `--minutes` (30 by default) under mixed pulls through the mirror
and pushes to hosted repositories, with an upstream that flaps every few minutes and the
disk cache held at its cap. Samples the mirror's RSS, open files, cache bytes and the
error counts over time; every byte received is checked against its digest.

The upstream is a local CNCF distribution (Debian `docker-registry`) reached through a
TCP proxy in this script that goes down (connections refused, open ones reset) for
`--down-for` seconds every `--flap-every` seconds. The mirror is the release binary with
`cache.max_size` = `--cache-mib` (well under the seeded images, so eviction runs all the
time) and a short tag TTL (tags are revalidated against the flapping upstream).

Errors are counted by when they happen: a pull that fails while the upstream is down
(or within `--grace` seconds of a flip) is expected for content not in the cache; any
other failure, and any 200 whose bytes do not match their digest ("wrong bytes"), is not.

    cargo build --release
    loadtests/soak.py [--minutes 30] [--binary target/release/agent-registry]
        # writes loadtests/results/<date>-soak.md (--out), progress on stderr

Bounded: it stops after --minutes, stops every process it started by PID and removes its
work directory.
"""
import argparse
import collections
import hashlib
import http.client
import json
import os
import random
import select
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402

MIB = 1 << 20


class FlappingProxy:
    """TCP proxy HOST:port -> HOST:target. `down()` closes the listener (connections are
    refused) and resets every open connection; `up()` listens again."""

    def __init__(self, port, target):
        self.port, self.target = port, target
        self.lock = threading.Lock()
        self.listener = None
        self.conns = []
        self.is_up = False
        self.flips = []  # (monotonic time, up?)
        self.running = True
        self.up()

    def up(self):
        with self.lock:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((lab.HOST, self.port))
            s.listen(128)
            self.listener = s
            self.is_up = True
            self.flips.append((time.monotonic(), True))
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self):
        with self.lock:
            self.is_up = False
            self.flips.append((time.monotonic(), False))
            if self.listener:
                # shutdown wakes the thread blocked in accept(), so the port is free again.
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            for c in self.conns:
                try:
                    # RST rather than FIN: the mirror sees a failed upstream, not a short body.
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    c.close()
                except OSError:
                    pass
            self.conns = []

    def _accept(self, listener):
        while self.running:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((lab.HOST, self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                if not self.is_up:
                    client.close()
                    server.close()
                    continue
                self.conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()

    def _pipe(self, a, b):
        peer = {a: b, b: a}
        try:
            while True:
                r, _, _ = select.select([a, b], [], [], 5)
                for s in r:
                    data = s.recv(1 << 16)
                    if not data:
                        raise OSError("closed")
                    peer[s].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            with self.lock:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass
                    if s in self.conns:
                        self.conns.remove(s)

    def unsettled(self, t0, t1, grace):
        """True if the upstream was down, or flipped, at any time in [t0 - grace, t1 + grace]."""
        with self.lock:
            flips = list(self.flips)
        state = True
        for t, up in flips:
            if t <= t0 - grace:
                state = up
            elif t <= t1 + grace:
                return True
        return not state

    def stop(self):
        self.running = False
        self.down()


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = collections.Counter()

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                self.c[k] += v

    def snapshot(self):
        with self.lock:
            return dict(self.c)


def request(conn, method, path, body=None, headers=None):
    """(status, headers dict, sha256 digest of the body, body length, body if small)."""
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    h = hashlib.sha256()
    n = 0
    small = b""
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
        if n <= 1 << 16:
            small += chunk
    return r.status, {k.lower(): v for k, v in r.getheaders()}, "sha256:" + h.hexdigest(), n, small


def seed(up, rnd, images, bases, layer_kib):
    """Pushes `images` images (a shared base layer + 1-2 own layers each) to the upstream;
    returns {name: (manifest digest, [(blob digest, size)])} and the unique bytes."""
    lo, hi = layer_kib
    base_layers = []
    for b in range(bases):
        data = rnd.randbytes(rnd.randint(lo, hi) * 1024)
        base_layers.append((f"soak/base{b}", data))
    out, unique = {}, 0
    pushed_base = {}
    for i in range(images):
        name = f"soak/app{i}"
        bname, bdata = base_layers[i % bases]
        if bname in pushed_base:
            up.mount(name, pushed_base[bname], f"soak/app{i % bases}")
            bdig = pushed_base[bname]
        else:
            bdig = up.push_blob(name, bdata)
            pushed_base[bname] = bdig
            unique += len(bdata)
        layers = [(bdig, len(bdata))]
        for _ in range(rnd.randint(1, 2)):
            data = rnd.randbytes(rnd.randint(lo, hi) * 1024)
            layers.append((up.push_blob(name, data), len(data)))
            unique += len(data)
        cfg = json.dumps({"image": name, "layers": len(layers)}).encode()
        cdig = up.push_blob(name, cfg)
        mdig = up.push_manifest(name, "latest", (cdig, len(cfg)), layers)
        out[name] = (mdig, [(cdig, len(cfg))] + layers)
    return out, unique


def start_mirror(binary, workdir, port, upstream_port, cache_mib, tag_ttl):
    d = Path(workdir) / "mirror"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    conf = d / "config.toml"
    conf.write_text(f"""[server]
listen = "{lab.HOST}:{port}"
hosted_writes = "loopback"
[storage]
data_dir = "{d / 'data'}"
[log]
level = "warn"
[limits]
enabled = false
[cache]
max_size = "{cache_mib}MiB"
[cache.memory]
max_size = "16MiB"
[mirror]
default_upstream = "docker.io"
[upstreams."docker.io"]
url = "http://{lab.HOST}:{upstream_port}"
tag_ttl = "{tag_ttl}s"
connect_timeout = "2s"
""")
    proc = lab.Proc("mirror", [binary, "serve", "--config", str(conf)], d / "server.log")
    lab.wait_http(port)
    return proc


def scrape(port):
    """{(name, labels): value} of the mirror's /metrics."""
    c = http.client.HTTPConnection(lab.HOST, port, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, v = line.rsplit(" ", 1)
        try:
            out[series] = float(v)
        except ValueError:
            pass
    return out


def proc_stats(pid):
    rss = 0.0
    threads = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default="target/release/agent-registry")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--flap-every", type=float, default=180, help="seconds between outages")
    ap.add_argument("--down-for", type=float, default=40, help="seconds each outage lasts")
    ap.add_argument("--grace", type=float, default=3, help="seconds around a flip that count as down")
    ap.add_argument("--cache-mib", type=int, default=48)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--bases", type=int, default=6)
    ap.add_argument("--layer-kib", default="128,2048", help="layer sizes, min,max KiB")
    ap.add_argument("--pullers", type=int, default=4)
    ap.add_argument("--pull-pause", type=float, default=0.5, help="seconds each puller rests between pulls")
    ap.add_argument("--push-every", type=float, default=3, help="seconds between pushes")
    ap.add_argument("--tag-ttl", type=int, default=20)
    ap.add_argument("--sample-every", type=float, default=15)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label", default="", help="a note for the report's title (e.g. short run)")
    ap.add_argument("--workdir", default="/tmp/agent-registry-loadtest/soak")
    ap.add_argument("--upstream-port", type=int, default=17090)
    ap.add_argument("--proxy-port", type=int, default=17091)
    ap.add_argument("--port", type=int, default=17092)
    ap.add_argument("--out", default=None, help="report file (default loadtests/results/<date>-soak.md)")
    a = ap.parse_args()
    out = Path(a.out or Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-soak.md")
    lo, hi = (int(x) for x in a.layer_kib.split(","))
    machine = lab.machine()
    lab.raise_nofile()
    rnd = random.Random(a.seed)
    up = lab.Upstream(a.workdir, a.upstream_port)
    proxy = mirror = None
    try:
        t_seed = time.monotonic()
        images, unique = seed(up, rnd, a.images, a.bases, (lo, hi))
        lab.log(f"seeded {len(images)} images, {unique / MIB:.0f} MiB unique, "
                f"in {time.monotonic() - t_seed:.0f}s; cache cap {a.cache_mib} MiB")
        proxy = FlappingProxy(a.proxy_port, a.upstream_port)
        mirror = start_mirror(os.path.abspath(a.binary), a.workdir, a.port, a.proxy_port,
                              a.cache_mib, a.tag_ttl)
        counters = Counters()
        first_errors = []
        stop = threading.Event()
        t_start = time.monotonic()
        deadline = t_start + a.minutes * 60
        names = sorted(images)

        def fail(kind, t0, what):
            unsettled = proxy.unsettled(t0, time.monotonic(), a.grace)
            key = "errors_upstream_down" if unsettled else "errors_upstream_up"
            counters.add(**{key: 1})
            if not unsettled and len(first_errors) < 10:
                first_errors.append(f"{kind}: {what}")

        def puller(i):
            r = random.Random(a.seed * 1000 + i)
            conn = http.client.HTTPConnection(lab.HOST, a.port, timeout=60)
            while not stop.is_set():
                # Zipf-ish popularity: low indices are pulled far more often.
                name = names[min(int(r.paretovariate(1.2)) - 1, len(names) - 1)]
                mdig, blobs = images[name]
                reqs = [(f"/v2/{name}/manifests/latest", mdig, lab.ACCEPT)]
                reqs += [(f"/v2/{name}/blobs/{d}", d, None) for d, _ in blobs]
                ok = True
                for path, want, accept in reqs:
                    t0 = time.monotonic()
                    try:
                        st, _, got, n, _ = request(conn, "GET", path,
                                                   headers={"Accept": accept} if accept else {})
                    except (OSError, http.client.HTTPException) as e:
                        conn.close()
                        conn = http.client.HTTPConnection(lab.HOST, a.port, timeout=60)
                        fail("pull", t0, f"{path}: {e!r}")
                        ok = False
                        break
                    if st == 200 and got != want:
                        counters.add(wrong_bytes=1)
                        first_errors.append(f"WRONG BYTES {path}: got {got}")
                        ok = False
                        break
                    if st != 200:
                        fail("pull", t0, f"{path}: {st}")
                        ok = False
                        break
                    counters.add(pull_bytes=n)
                counters.add(pulls_ok=int(ok), pulls_failed=int(not ok))
                stop.wait(a.pull_pause)

        def pusher():
            r = random.Random(a.seed * 7777)
            conn = http.client.HTTPConnection(lab.HOST, a.port, timeout=60)
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                # A new plain name now and then (hosted on push), otherwise a rotating set.
                name = f"pushed/img{i % 25}" if i % 10 else f"pushed/new{i}"
                try:
                    data = r.randbytes(r.randint(16, 512) * 1024)
                    cfg = json.dumps({"push": i}).encode()
                    blobs = []
                    for b in (cfg, data):
                        d = "sha256:" + hashlib.sha256(b).hexdigest()
                        st, _, _, _, body = request(conn, "POST", f"/v2/{name}/blobs/uploads/?digest={d}",
                                                    body=b, headers={"Content-Type": "application/octet-stream"})
                        if st != 201:
                            raise RuntimeError(f"blob upload {st} {body[:200]!r}")
                        blobs.append((d, len(b)))
                    m = json.dumps({
                        "schemaVersion": 2, "mediaType": lab.OCI_MANIFEST,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": blobs[0][0], "size": blobs[0][1]},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                    "digest": blobs[1][0], "size": blobs[1][1]}],
                    }, separators=(",", ":")).encode()
                    st, _, _, _, body = request(conn, "PUT", f"/v2/{name}/manifests/v1", body=m,
                                                headers={"Content-Type": lab.OCI_MANIFEST})
                    if st != 201:
                        raise RuntimeError(f"manifest put {st} {body[:200]!r}")
                    mdig = "sha256:" + hashlib.sha256(m).hexdigest()
                    for path, want in ((f"/v2/{name}/manifests/v1", mdig),
                                       (f"/v2/{name}/blobs/{blobs[1][0]}", blobs[1][0])):
                        st, _, got, n, _ = request(conn, "GET", path, headers={"Accept": lab.OCI_MANIFEST})
                        if st == 200 and got != want:
                            counters.add(wrong_bytes=1)
                            first_errors.append(f"WRONG BYTES {path}")
                            raise RuntimeError("wrong bytes")
                        if st != 200:
                            raise RuntimeError(f"pull back {path}: {st}")
                    counters.add(pushes_ok=1, push_bytes=len(data) + len(cfg))
                except (OSError, http.client.HTTPException, RuntimeError) as e:
                    conn.close()
                    conn = http.client.HTTPConnection(lab.HOST, a.port, timeout=60)
                    # A push never depends on the upstream: every failure counts.
                    counters.add(pushes_failed=1, errors_upstream_up=1)
                    if len(first_errors) < 10:
                        first_errors.append(f"push {name}: {e!r}")
                i += 1
                stop.wait(max(0.0, a.push_every - (time.monotonic() - t0)))

        def flapper():
            next_down = t_start + a.flap_every
            while not stop.is_set():
                if stop.wait(max(0.0, next_down - time.monotonic())):
                    return
                proxy.down()
                lab.log("upstream down")
                if stop.wait(a.down_for):
                    return
                proxy.up()
                lab.log("upstream up")
                next_down += a.flap_every

        threads = [threading.Thread(target=puller, args=(i,), daemon=True) for i in range(a.pullers)]
        threads += [threading.Thread(target=pusher, daemon=True),
                    threading.Thread(target=flapper, daemon=True)]
        for t in threads:
            t.start()
        samples = []
        while True:
            now = time.monotonic()
            rss, fds, nthreads = proc_stats(mirror.pid)
            m = scrape(a.port)
            c = counters.snapshot()
            samples.append({
                "t": now - t_start, "up": proxy.is_up, "rss": rss, "fds": fds, "threads": nthreads,
                "disk": m.get('agent_registry_cache_bytes{tier="disk"}', 0),
                "mem": m.get('agent_registry_cache_bytes{tier="memory"}', 0),
                "evicted": m.get('agent_registry_cache_evicted_bytes_total{tier="disk"}', 0),
                **c,
            })
            s = samples[-1]
            lab.log(f"t={s['t']:5.0f}s up={int(s['up'])} rss={rss:.1f}MiB fds={fds} "
                    f"disk={s['disk'] / MIB:.1f}MiB pulls={c.get('pulls_ok', 0)} "
                    f"pushes={c.get('pushes_ok', 0)} err_up={c.get('errors_upstream_up', 0)} "
                    f"err_down={c.get('errors_upstream_down', 0)} wrong={c.get('wrong_bytes', 0)}")
            if now >= deadline:
                break
            time.sleep(min(a.sample_every, max(0.0, deadline - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(90)
        report(out, a, machine, samples, unique, first_errors, counters.snapshot())
        lab.log(f"wrote {out}")
    finally:
        if mirror:
            mirror.stop()
        if proxy:
            proxy.stop()
        up.stop()
        shutil.rmtree(a.workdir, ignore_errors=True)


def report(out, a, machine, samples, unique, first_errors, final):
    def half_max(key, second):
        n = len(samples)
        part = samples[n // 2:] if second else samples[:max(1, n // 2)]
        return max(s[key] for s in part)

    cap = a.cache_mib * MIB
    lines = []
    title = f"# Soak: {a.minutes:g} minutes of mixed pulls and pushes, flapping upstream"
    if a.label:
        title += f" ({a.label})"
    lines.append(title + "\n")
    lines.append(f"Machine: {machine}.  ")
    lines.append(f"Mirror: `{a.binary}` at commit {lab.git_rev(Path(__file__).parent)}, log level "
                 f"warn, rate limits off, `cache.max_size = \"{a.cache_mib}MiB\"`, memory tier 16 MiB, "
                 f"docker.io `tag_ttl = \"{a.tag_ttl}s\"`; upstream: local CNCF distribution behind a "
                 f"TCP proxy down for {a.down_for:g} s every {a.flap_every:g} s.  ")
    lines.append(f"Load: `loadtests/soak.py --minutes {a.minutes:g} --flap-every {a.flap_every:g} "
                 f"--down-for {a.down_for:g} --cache-mib {a.cache_mib} --images {a.images} "
                 f"--pullers {a.pullers} --pull-pause {a.pull_pause:g} --push-every {a.push_every:g}`: {a.images} images "
                 f"({unique / MIB:.0f} MiB unique, {unique / max(cap, 1):.1f}x the cache cap), "
                 f"{a.pullers} pullers (manifest by tag + every blob, Zipf-like popularity, "
                 f"sha256-checked, {a.pull_pause:g} s rest between pulls), one pusher (an image every {a.push_every:g} s to a hosted "
                 f"plain name, pulled back and checked).\n")
    lines.append("| t (s) | upstream | RSS MiB | open fds | threads | disk cache MiB | memory tier MiB "
                 "| evicted MiB | pulls ok | pushes ok | errors (upstream up) | errors (upstream down) "
                 "| wrong bytes |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        lines.append(
            f"| {s['t']:.0f} | {'up' if s['up'] else 'DOWN'} | {s['rss']:.1f} | {s['fds']} | "
            f"{s['threads']} | {s['disk'] / MIB:.1f} | {s['mem'] / MIB:.1f} | "
            f"{s['evicted'] / MIB:.0f} | {s.get('pulls_ok', 0)} | {s.get('pushes_ok', 0)} | "
            f"{s.get('errors_upstream_up', 0)} | {s.get('errors_upstream_down', 0)} | "
            f"{s.get('wrong_bytes', 0)} |")
    lines.append("")
    lines.append("| summary | first half | second half |")
    lines.append("|---|---:|---:|")
    lines.append(f"| peak RSS MiB | {half_max('rss', False):.1f} | {half_max('rss', True):.1f} |")
    lines.append(f"| peak open fds | {half_max('fds', False)} | {half_max('fds', True)} |")
    lines.append(f"| peak threads | {half_max('threads', False)} | {half_max('threads', True)} |")
    lines.append(f"| peak disk cache MiB (cap {a.cache_mib}) | {half_max('disk', False) / MIB:.1f} | "
                 f"{half_max('disk', True) / MIB:.1f} |")
    lines.append("")
    lines.append(f"Totals: {final.get('pulls_ok', 0)} pulls ok "
                 f"({final.get('pull_bytes', 0) / MIB:.0f} MiB), {final.get('pulls_failed', 0)} failed; "
                 f"{final.get('pushes_ok', 0)} pushes ok, {final.get('pushes_failed', 0)} failed; "
                 f"errors while the upstream was up: {final.get('errors_upstream_up', 0)}; "
                 f"while it was down (uncached content, expected): {final.get('errors_upstream_down', 0)}; "
                 f"wrong bytes: {final.get('wrong_bytes', 0)}.")
    if first_errors:
        lines.append("\nFirst unexpected errors: " + "; ".join(first_errors[:10]))
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
