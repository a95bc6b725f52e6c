#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/.

Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. Needs the `cryptography` package
(PyPI) for the signed JWT seeds only. The fuzz runs add their own finds beside these.
"""
import base64
import hashlib
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


D1 = sha(b"config")
D2 = sha(b"layer")
D3 = sha(b"child")
D512 = "sha512:" + hashlib.sha512(b"x").hexdigest()
UUID = "4f7a0c6e-2f0b-4c54-9d1e-3b1f0e7c9a21"

# router: real request paths.
paths = [
    "/v2/", "/v2", "/v2/_catalog", "/v2/_search", "/healthz", "/readyz", "/health",
    "/metrics", "/token", "/admin/config", "/admin/whoami", "/admin/cache/stats",
    "/v2/library/alpine/manifests/latest", f"/v2/library/alpine/manifests/{D1}",
    f"/v2/agents/summarizer/blobs/{D2}", "/v2/a/b/c/tags/list",
    "/v2/ghcr.io/org/app/blobs/uploads/", f"/v2/agents/x/blobs/uploads/{UUID}",
    f"/v2/agents/x/referrers/{D3}", "/v2/manifests/manifests/v1",
    "/v2/a%2f..%2fb/manifests/v1", "/v2/a/../b/blobs/uploads", "/v2//manifests/x",
]
for i, p in enumerate(paths):
    write("router", f"{i:02}", p)

# reference: names, tags and digests.
refs = [D1, D512, "sha256:" + "A" * 64, "md5:" + "a" * 32, "latest", "v1.2.3-rc_1",
        "_x", "library/alpine", "my__agent/x.y-z", "a" * 128, "Upper", "a//b", "sha256:"]
for i, r in enumerate(refs):
    write("reference", f"{i:02}", r)

# manifest: one selector byte (Content-Type) then a body.
cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 6}
layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 5}
image = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": cfg, "layers": [layer, dict(layer, urls=["https://example.com/l"])],
         "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "digest": D3, "size": 100},
         "annotations": {"org.opencontainers.image.title": "x"}}
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": D3, "size": 100,
                        "platform": {"os": "linux", "architecture": "amd64"}}]}
docker = {"schemaVersion": 2,
          "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
          "config": dict(cfg, mediaType="application/vnd.docker.container.image.v1+json"),
          "layers": [dict(layer, mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip")]}
artifact = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.sbom",
            "config": dict(cfg, mediaType="application/vnd.oci.empty.v1+json",
                           digest=sha(b"{}"), size=2, data="e30="),
            "layers": [dict(layer, digest=D512)]}
for i, (sel, body) in enumerate([(1, image), (0, image), (2, index), (3, docker),
                                  (4, dict(index, mediaType="application/vnd.docker.distribution.manifest.list.v2+json")),
                                  (1, artifact), (5, {"hello": 1})]):
    write("manifest", f"{i:02}", bytes([sel]) + json.dumps(body).encode())

# range: 8 bytes of size (little endian), a flag byte (bit 0: send Content-Length),
# then the Range/Content-Range value and, on the next line, the Content-Length.
for i, (size, flag, text) in enumerate([
        (1000, 1, "bytes=0-499\n500"), (1000, 0, "bytes=500-"), (1000, 0, "bytes=-200"),
        (0, 0, "bytes=0-0"), (10, 0, "bytes=5-2"), (10, 0, "bytes=0-1,3-4"),
        (1000, 1, "0-1023\n1024"), (1000, 1, "bytes 0-1023/*\n1024"),
        (1 << 63 | 5, 0, "bytes=18446744073709551614-18446744073709551615"),
        (100, 0, "items=0-5")]):
    write("range", f"{i:02}", struct.pack("<QB", size, flag) + text.encode())

# challenge: WWW-Authenticate values as Docker Hub, GHCR, Quay and others send them.
challenges = [
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
    'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/app:pull"',
    'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
    'Bearer realm="https://gcr.io/v2/token",service="gcr.io",error="insufficient_scope"',
    'Basic realm="Registry Realm"',
    'Basic realm="a", Bearer realm="https://t/token",service="s"',
    'Bearer realm=https://t/token?x=1,service=s',
    'Bearer realm="a\\"b\\\\c"',
    'Negotiate',
]
for i, c in enumerate(challenges):
    write("challenge", f"{i:02}", c)

# jwt: tokens signed the way auth::jwt::Keys::sign signs, with the fuzz target's key.
try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = hashlib.sha256(pub).hexdigest()[:16]
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = 1_800_000_000

    def token(claims):
        # serde_json's compact output, fields in declaration order.
        h = json.dumps({"alg": "EdDSA", "typ": "JWT", "kid": kid}, separators=(",", ":"))
        c = json.dumps(claims, separators=(",", ":"))
        signing_input = b64(h.encode()) + "." + b64(c.encode())
        return signing_input + "." + b64(key.sign(signing_input.encode()))

    base = {"iss": "agent-registry", "sub": "alice", "aud": "agent-registry",
            "exp": now + 300, "nbf": now, "iat": now, "jti": "0123456789abcdef",
            "access": [{"type": "repository", "name": "agents/a", "actions": ["pull", "push"]}]}
    write("jwt", "00", token(base))
    write("jwt", "01", token(dict(base, sub="", access=[])))
    write("jwt", "02", token(dict(base, exp=now - 3600)))
    write("jwt", "03", token(dict(base, aud="other")))
    none = b64(b'{"alg":"none","typ":"JWT","kid":""}')
    write("jwt", "04", none + "." + token(base).split(".")[1] + ".")
except ImportError:
    print("cryptography is not installed: jwt seeds not written")

# config: the embedded default and small real configs.
with open(os.path.join(os.path.dirname(ROOT), "config", "agent-registry.toml"), "rb") as f:
    write("config", "default", f.read())
examples = os.path.join(os.path.dirname(ROOT), "config", "examples")
for name in sorted(os.listdir(examples)) if os.path.isdir(examples) else []:
    if name.endswith(".toml"):
        with open(os.path.join(examples, name), "rb") as f:
            write("config", name[:-5], f.read())
write("config", "small", 'server.listen = "[::1]:6000"\nserver.max_manifest_size = "1.5MB"\n'
      'log.level = "a$${b}"\nlog.format = "${FUZZ_VAR}"\nmirror.default_upstream = "ghcr.io"\n'
      'upstreams."quay.io".enabled = false\nupstreams."ghcr.io".immutable_tags = [\'^v\\d+$\']\n'
      'auth.rules = [{ repos = ["agents/*"], users = ["a"], actions = ["read", "write"] }]\n'
      'auth.token_ttl = "10m"\n[cache]\nstrategies = ["lru"]\n')
