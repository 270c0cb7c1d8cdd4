#!/usr/bin/env python3
"""Independent RFC 6962 Merkle tree vectors for fugo-log.

Written from RFC 6962 §2.1 (MTH), §2.1.1 (PATH) and §2.1.2 (PROOF and
SUBPROOF) alone, as the plain recursive definitions, without reading the
Rust implementation, so that crates/log/tests/merkle_vectors.rs checks
src/merkle.rs against a second implementation of the same text.

Usage:

    python3 crates/log/tests/vectors/merkle.py > crates/log/tests/vectors/merkle.json

The output is identical byte for byte on every run: no clock, no `random`;
the sizes and indices are drawn from SHA-256 of a fixed ASCII seed.

Leaf i's data is the ASCII text "leaf <i>" (decimal). For each tree size
the file gives the root, inclusion proofs of a few leaves and consistency
proofs from a few older sizes.
"""

import functools
import hashlib
import json
import sys


def leaf_data(i):
    return b"leaf %d" % i


def sha256(data):
    return hashlib.sha256(data).digest()


MAX_SIZE = 4100
LEAF_HASHES = [sha256(b"\x00" + leaf_data(i)) for i in range(MAX_SIZE)]


def split(n):
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.lru_cache(maxsize=None)
def mth(start, end):
    """MTH(D[start:end]), RFC 6962 §2.1."""
    n = end - start
    if n == 0:
        return sha256(b"")
    if n == 1:
        return LEAF_HASHES[start]
    k = split(n)
    return sha256(b"\x01" + mth(start, start + k) + mth(start + k, end))


def path(m, start, end):
    """PATH(m, D[start:end]), RFC 6962 §2.1.1; m relative to start."""
    n = end - start
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return path(m, start, start + k) + [mth(start + k, end)]
    return path(m - k, start + k, end) + [mth(start, start + k)]


def subproof(m, start, end, b):
    """SUBPROOF(m, D[start:end], b), RFC 6962 §2.1.2; m relative to start."""
    n = end - start
    if m == n:
        return [] if b else [mth(start, end)]
    k = split(n)
    if m <= k:
        return subproof(m, start, start + k, b) + [mth(start + k, end)]
    return subproof(m - k, start + k, end, False) + [mth(start, start + k)]


def proof(m, n):
    """PROOF(m, D[n]), RFC 6962 §2.1.2, for 0 < m < n."""
    return subproof(m, 0, n, True)


class Draw:
    """Deterministic numbers from SHA-256 of a seed and a counter."""

    def __init__(self, seed):
        self.seed = seed
        self.counter = 0

    def below(self, n):
        self.counter += 1
        digest = sha256(b"%s/%d" % (self.seed, self.counter))
        return int.from_bytes(digest[:8], "big") % n


def main():
    draw = Draw(b"fugo-log merkle vectors v1")
    sizes = list(range(1, 18)) + [31, 32, 33, 255, 256, 257, 1023, 1024, 1025, 4096, 4099]
    sizes += [1 + draw.below(MAX_SIZE - 1) for _ in range(12)]
    sizes = sorted(set(sizes))
    trees = []
    for n in sizes:
        indices = sorted({0, n - 1, draw.below(n), draw.below(n)})
        olds = sorted({m for m in (1, n - 1, 1 + draw.below(n), 1 + draw.below(n)) if 0 < m < n})
        trees.append(
            {
                "size": n,
                "root": mth(0, n).hex(),
                "inclusion": [
                    {"index": i, "proof": [h.hex() for h in path(i, 0, n)]} for i in indices
                ],
                "consistency": [
                    {"old": m, "old_root": mth(0, m).hex(), "proof": [h.hex() for h in proof(m, n)]}
                    for m in olds
                ],
            }
        )
    # The CT reference roots (RFC 6962 reference tests) as a self-check of
    # this script's hashing before anything is written.
    ct = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
    ct_hashes = [sha256(b"\x00" + d) for d in ct]

    def ct_root(hs):
        if len(hs) == 1:
            return hs[0]
        k = split(len(hs))
        return sha256(b"\x01" + ct_root(hs[:k]) + ct_root(hs[k:]))

    assert ct_root(ct_hashes).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert ct_root(ct_hashes[:7]).hex() == "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"

    document = {
        "description": "RFC 6962 vectors from crates/log/tests/vectors/merkle.py; leaf i is the ASCII text 'leaf <i>'",
        "trees": trees,
    }
    sys.stdout.write(json.dumps(document, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.setrecursionlimit(10000)
    main()
