"""cosign's encrypted private key format, written independently of the project's code.

The format (cosign pkg/cosign/keys.go over go-securesystemslib's `encrypted` package):
PEM "ENCRYPTED SIGSTORE PRIVATE KEY" around a JSON document
  {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64},
   "cipher": {"name": "nacl/secretbox", "nonce": b64},
   "ciphertext": b64(secretbox(PKCS#8 DER))}
with the secretbox key = scrypt(password, salt, N, r, p, 32 bytes).

usage: cosign_key.py decrypt KEY PUB PASSWORD   (checks KEY opens to PUB's private key)
       cosign_key.py encrypt KEY PUB PASSWORD   (writes a fresh P-256 pair, KEY sealed)
"""
import base64
import hashlib
import json
import os
import sys

import nacl.secret
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"


def pem_body(text):
    lines = text.strip().splitlines()
    assert lines[0] == f"-----BEGIN {LABEL}-----", lines[0]
    assert lines[-1] == f"-----END {LABEL}-----", lines[-1]
    return base64.b64decode("".join(lines[1:-1]))


def kdf(password, salt, n, r, p):
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=32)


def spki(public_key):
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def decrypt(key_path, pub_path, password):
    doc = json.loads(pem_body(open(key_path).read()))
    assert doc["kdf"]["name"] == "scrypt", doc["kdf"]
    assert doc["cipher"]["name"] == "nacl/secretbox", doc["cipher"]
    params = doc["kdf"]["params"]
    key = kdf(password, base64.b64decode(doc["kdf"]["salt"]), params["N"], params["r"], params["p"])
    der = nacl.secret.SecretBox(key).decrypt(
        base64.b64decode(doc["ciphertext"]), base64.b64decode(doc["cipher"]["nonce"])
    )
    private = serialization.load_der_private_key(der, password=None)
    assert isinstance(private.curve, ec.SECP256R1), private.curve
    public = serialization.load_pem_public_key(open(pub_path, "rb").read())
    assert spki(private.public_key()) == spki(public), "the .pub is not the .key's public key"
    print("decrypted: P-256 key matching", pub_path)


def encrypt(key_path, pub_path, password):
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, nonce = os.urandom(32), os.urandom(24)
    key = kdf(password, salt, 32768, 8, 1)
    sealed = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
    b64 = lambda b: base64.b64encode(b).decode()
    doc = {
        "kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1}, "salt": b64(salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
        "ciphertext": b64(sealed),
    }
    body = b64(json.dumps(doc, separators=(",", ":")).encode())
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    with open(key_path, "w") as f:
        f.write("\n".join([f"-----BEGIN {LABEL}-----", *lines, f"-----END {LABEL}-----", ""]))
    with open(pub_path, "wb") as f:
        f.write(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    print("encrypted:", key_path)


if __name__ == "__main__":
    mode, key_path, pub_path, password = sys.argv[1:5]
    {"decrypt": decrypt, "encrypt": encrypt}[mode](key_path, pub_path, password.encode())
