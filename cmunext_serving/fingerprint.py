"""Content fingerprints: exact (sha256 of the decoded pixels' file) and perceptual (dHash),
and grouping of near-duplicates by Hamming distance between perceptual hashes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

HASH_BITS = 64
NEAR_DUPLICATE_BITS = 6  # dHash distance at or below which two images count as near-duplicates


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of a uint8 image: robust to resizing, small shifts in gain, and compression."""
    gray = image if image.ndim == 2 else image.mean(axis=2).astype(np.uint8)
    small = np.asarray(Image.fromarray(gray).resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicate_groups(hashes: list[int], max_bits: int = NEAR_DUPLICATE_BITS) -> list[int]:
    """Group label per item (union-find over pairs within `max_bits`); labels are the smallest member index."""
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h = np.array(hashes, dtype=np.uint64)
    for start in range(0, n, 1024):  # chunked: memory stays bounded at any n
        block = h[start:start + 1024]
        dist = np.bitwise_count(block[:, None] ^ h[None, :])
        for a, b in zip(*np.nonzero(dist <= max_bits)):
            i, j = start + int(a), int(b)
            if i < j:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]

