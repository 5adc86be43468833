"""Fingerprint image files and group exact and near duplicates.

Exact duplicates share the sha256 of their bytes. Near duplicates (the same
photo re-encoded, resized, rotated by EXIF, converted to another mode) share
almost the same perceptual hash: imagehash's DCT `phash` with a 16x16 hash
(256 bits) of the pixels that `kitchenware.core.images.load_image` decodes, so
every stage agrees on what an image looks like. Two images whose hashes differ
in at most N bits are linked, and links are closed transitively with union-find: a group is every
image reachable through exact or near links.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from kitchenware.core.errors import ImageError
from kitchenware.core.images import load_image
from kitchenware.dataprep.workers import process_pool

# Pixels are decoded at this square size before hashing. phash itself shrinks
# to 32x32, so nothing is lost; JPEG draft decoding at 1/2..1/8 scale makes a
# 1000x750 photo several times cheaper to fingerprint.
HASH_DECODE_SIZE = 128
# 16x16 = 256 bits. The common 8x8 (64-bit) phash cannot tell a fork from a
# knife on the same conveyor belt (distance 2 in kitchenware-mini); at 256
# bits those pairs are >= 54 apart while re-encoded/resized copies stay <= 20.
HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE


@dataclass(frozen=True)
class Fingerprint:
    """What hashing one file found. `error` set means the file is unusable."""

    sha256: str | None
    phash: int | None
    size_bytes: int
    error: str | None = None


def fingerprint_file(path: str | os.PathLike) -> Fingerprint:
    """sha256 of the bytes and phash of the decoded pixels; never raises for bad files."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return Fingerprint(None, None, 0, f"cannot read file: {exc.strerror or exc}")
    sha = hashlib.sha256(data).hexdigest()
    try:
        pixels = load_image(data, size=HASH_DECODE_SIZE)
    except ImageError as exc:
        return Fingerprint(sha, None, len(data), str(exc))
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a 10,000-image run
        return Fingerprint(sha, None, len(data), f"cannot decode image: {type(exc).__name__}")
    value = int(str(imagehash.phash(Image.fromarray(pixels), hash_size=HASH_SIZE)), 16)
    return Fingerprint(sha, value, len(data))


def fingerprint_files(
    paths: Sequence[str | os.PathLike],
    workers: int = 1,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[Fingerprint]:
    """Fingerprints in the order of `paths`, on `workers` processes.

    Files are handed out in chunks so the inter-process traffic stays small
    next to the decoding work. `progress` wraps the result iterator (tqdm).
    """
    wrap = progress or (lambda it: it)
    names = [str(p) for p in paths]
    if workers <= 1 or len(names) < 2:
        return list(wrap(map(fingerprint_file, names)))
    chunk = max(1, min(64, len(names) // (workers * 8)))
    pool = process_pool(workers)
    try:
        results = list(wrap(pool.map(fingerprint_file, names, chunksize=chunk)))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def _as_words(hashes: Sequence[int], bits: int) -> np.ndarray:
    """Python ints of `bits` bits -> (n, words) uint64 array."""
    words = max(1, (bits + 63) // 64)
    mask = (1 << 64) - 1
    out = np.zeros((len(hashes), words), dtype=np.uint64)
    for i, h in enumerate(hashes):
        h = int(h)
        for w in range(words):
            out[i, w] = (h >> (64 * w)) & mask
    return out


def near_pairs(
    hashes: Sequence[int], max_distance: int, bits: int = HASH_BITS, block: int = 256
) -> list[tuple[int, int]]:
    """All index pairs (i < j) whose hashes differ in <= max_distance bits.

    Brute force in blocks with NumPy popcount: 10,000 hashes are 50 million
    comparisons, a few seconds, and exact (no approximate index).
    """
    values = _as_words(hashes, bits)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(values), block):
        rows = values[start : start + block]
        distance = np.zeros((len(rows), len(values)), dtype=np.uint16)
        for w in range(values.shape[1]):
            distance += np.bitwise_count(rows[:, None, w] ^ values[None, :, w])
        ii, jj = np.nonzero(distance <= max_distance)
        ii = ii + start
        keep = jj > ii
        pairs.extend(zip(ii[keep].tolist(), jj[keep].tolist(), strict=True))
    return pairs


def hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def group_duplicates(
    shas: Sequence[str], phashes: Sequence[int], max_distance: int
) -> tuple[list[int], set[tuple[int, int]]]:
    """Group items by identical sha256 or phash distance <= max_distance.

    Returns (root of each item, the set of near-only links i<j). Roots are
    arbitrary members; callers name groups themselves.
    """
    n = len(shas)
    uf = UnionFind(n)
    first_with_sha: dict[str, int] = {}
    for i, sha in enumerate(shas):
        if sha in first_with_sha:
            uf.union(first_with_sha[sha], i)
        else:
            first_with_sha[sha] = i
    near: set[tuple[int, int]] = set()
    if max_distance >= 0:
        for i, j in near_pairs(phashes, max_distance):
            if shas[i] != shas[j]:
                near.add((i, j))
            uf.union(i, j)
    return [uf.find(i) for i in range(n)], near
