#!/usr/bin/env python3
"""Independent C2SP signed-note / tlog-checkpoint implementation for fugo-log.

Written from the C2SP specifications (signed-note: signature lines, Ed25519
key ids and verifier keys; tlog-checkpoint: the three body lines) with the
`cryptography` package's Ed25519, without reading the Rust code, so that
crates/log/tests/checkpoint_python.rs can check src/checkpoint.rs against a
second implementation in both directions.

Usage:

    note.py verifier <seed hex> <name>             prints the verifier key
    note.py sign <seed hex> <name> <size> <root hex>   prints a signed note
    note.py open <verifier key>  < note            prints origin, size, root hex

`open` exits with status 1 and a message on stderr when the note is not
signed by that key or is not a well-formed checkpoint.
"""

import base64
import hashlib
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

EM_DASH = "\u2014"
ED25519 = b"\x01"


def key_hash(name, public_key):
    """C2SP signed-note: SHA-256(name || 0x0A || alg || key), first 4 bytes."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public_key).digest()[:4]


def private_key(seed_hex):
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))


def raw_public(key):
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verifier(seed_hex, name):
    public = raw_public(private_key(seed_hex))
    return "%s+%s+%s" % (name, key_hash(name, public).hex(), base64.b64encode(ED25519 + public).decode())


def sign(seed_hex, name, size, root_hex):
    key = private_key(seed_hex)
    body = "%s\n%d\n%s\n" % (name, int(size), base64.b64encode(bytes.fromhex(root_hex)).decode())
    signature = key.sign(body.encode())
    blob = key_hash(name, raw_public(key)) + signature
    return body + "\n" + EM_DASH + " " + name + " " + base64.b64encode(blob).decode() + "\n"


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def open_note(verifier_text, note):
    name, hash_hex, key_b64 = verifier_text.split("+", 2)
    key = base64.b64decode(key_b64, validate=True)
    if key[:1] != ED25519 or len(key) != 33:
        fail("not an Ed25519 verifier key")
    public = key[1:]
    if key_hash(name, public).hex() != hash_hex.lower():
        fail("verifier key id mismatch")
    if not note.endswith("\n"):
        fail("no final newline")
    split = note.rfind("\n\n")
    if split < 0:
        fail("no blank line")
    body, signatures = note[: split + 1], note[split + 2 :]
    verified = False
    for line in signatures[:-1].split("\n"):
        if not line.startswith(EM_DASH + " "):
            fail("malformed signature line")
        signer, blob_b64 = line[2:].split(" ", 1)
        blob = base64.b64decode(blob_b64, validate=True)
        if signer != name or blob[:4] != key_hash(name, public):
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(blob[4:], body.encode())
        except InvalidSignature:
            fail("bad signature")
        verified = True
    if not verified:
        fail("not signed by this key")
    lines = body[:-1].split("\n")
    if len(lines) < 3 or lines[0] != name:
        fail("bad checkpoint body")
    size = lines[1]
    if not size.isdigit() or not size.isascii() or (len(size) > 1 and size[0] == "0"):
        fail("bad size")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32 or base64.b64encode(root).decode() != lines[2]:
        fail("bad root")
    return "%s\n%s\n%s\n" % (lines[0], size, root.hex())


def main(argv):
    if argv[1:2] == ["verifier"] and len(argv) == 4:
        sys.stdout.write(verifier(argv[2], argv[3]) + "\n")
    elif argv[1:2] == ["sign"] and len(argv) == 6:
        sys.stdout.write(sign(*argv[2:]))
    elif argv[1:2] == ["open"] and len(argv) == 3:
        sys.stdout.write(open_note(argv[2], sys.stdin.read()))
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
