"""Near-duplicate groups in a collection: re-encoded, resized, slightly cropped or recoloured copies of one photo.

Built only from what the collection holds (``dupe_rows``: the embedded store's ``images`` and ``forward``
rows, or Qdrant's points with their payload), nothing is decoded or embedded:

1. Candidates: up to ``EXACT_MAX`` images, every pair whose perceptual hashes (``lexsearch.index.phash``)
   differ in at most ``MAX_BITS`` bits (FAISS's exact binary range search); images without a hash yet
   (indexed before hashes existed) add their nearest neighbours by the stored dense vectors (FAISS kNN).
   Above ``EXACT_MAX``, each image's ``NEIGHBOURS`` nearest neighbours by its dense vector (a FAISS IVF
   index): at 100k synthetic images, measured once on 2 busy cores while choosing, that took 12 s where
   FAISS's multi-index hashing over the 256-bit hashes took 29 s.
2. Confirmation by the dense vectors the collection already holds: a pair is a duplicate when the inner
   product of its L2-normalised vectors reaches the threshold (or, for hashes within ``SAME_BITS`` bits, at
   least ``SAME_FLOOR``: an edit that moved the model's vector but not the picture's structure). A different
   photo of the same scene can be close in the dense space but its hash differs in many more bits; two
   unrelated images whose hashes happen to be close (flat, dark frames) differ in the dense space. A pair
   with a hash missing is judged by the dense vectors alone, with the stricter ``DENSE_ONLY``.
3. Groups: union-find over the confirmed pairs; the largest group first, then by path, and each group's
   files by path.

lexsearch never deletes a file: this only reports.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lexsearch.errors import UsageError
from lexsearch.index.phash import HASH_BITS, hamming, hash_array

# The dense similarity a hash-close pair needs (the --threshold default), and the hash bits (of 256) two
# copies may differ in: re-encodes and resizes differ in under 20, 3-8% crops, 2-degree turns and colour
# shifts mostly in 30-90, other framings and other shots of a scene mostly in 90-140 (tuned on
# bench/dupes.py's sets). A pair whose hashes nearly agree needs only SAME_FLOOR: a brightness change can
# move a small model's dense vector a long way.
DEFAULT_THRESHOLD = 0.7
MAX_BITS = 88
SAME_BITS, SAME_FLOOR = 16, 0.3
# Without a hash only the dense vectors speak: a stricter bar.
DENSE_ONLY = 0.95
# Neighbours per image in the dense kNN (images without a hash): a larger group still comes out whole,
# its pairs chain.
NEIGHBOURS = 10
# Up to this many images the searches are exact; above it approximate (multi-index hashing; an IVF index
# with NPROBE lists searched for the dense kNN).
EXACT_MAX = 20_000
NPROBE = 8


@dataclass
class DupeImage:
    """One file of a group, with the facts a person chooses by."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int | None  # bytes
    taken: str | None  # capture time (EXIF, else the file's time), as the index recorded it


@dataclass
class DupeGroup:
    images: list[DupeImage]
    # Each confirmed pair inside the group: (path a, path b, dense similarity, hash bits that differ or None).
    pairs: list[tuple[str, str, float, int | None]] = field(default_factory=list)


@dataclass
class DupeReport:
    groups: list[DupeGroup]
    images: int  # images looked at
    missing_hashes: int  # of which without a perceptual hash (judged by the dense vectors alone)
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "images": self.images,
            "missing_hashes": self.missing_hashes,
            "groups": [
                {
                    "files": [asdict(im) for im in g.images],
                    "pairs": [
                        {"a": a, "b": b, "similarity": round(s, 4), "hash_bits": h} for a, b, s, h in g.pairs
                    ],
                }
                for g in self.groups
            ],
        }


def check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 < threshold <= 1.0):
        raise UsageError(
            f"The threshold must be a number above 0 and at most 1 (a dense similarity), not {threshold}."
        )
    return float(threshold)


def hash_pairs(codes: np.ndarray, max_bits: int = MAX_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j of the rows whose hash codes ((N, HASH_BYTES) uint8) differ in at most ``max_bits``."""
    import faiss

    n = len(codes)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    index = faiss.IndexBinaryFlat(HASH_BITS)
    index.add(codes)
    lims, _, found = index.range_search(codes, max_bits + 1)  # distances below the radius
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(lims).astype(np.int64))
    return _unique_pairs(rows, found.astype(np.int64), n)


def dense_pairs(
    vectors: np.ndarray, queries: np.ndarray, min_score: float, k: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) with i < j: each row in ``queries`` and those of its ``k`` nearest neighbours among all rows
    of ``vectors`` (N, D), L2-normalised) whose inner product reaches ``min_score``."""
    import faiss

    n, dim = vectors.shape
    if n < 2 or len(queries) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if n <= EXACT_MAX:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # coarse centroids are enough: a near-duplicate sits close to its original
        sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = NPROBE
    index.add(x)
    kk = min(k + 1, n)  # an image is its own nearest neighbour
    scores, nbrs = index.search(x[queries], kk)
    rows = np.repeat(queries.astype(np.int64), kk)
    cols = nbrs.ravel().astype(np.int64)
    keep = (cols >= 0) & (scores.ravel() >= min_score)
    return _unique_pairs(rows[keep], cols[keep], n)


def _unique_pairs(i: np.ndarray, j: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    keep = i != j
    a, b = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
    key = np.unique(a * n + b)  # one entry per pair, found from either end, in a fixed order
    return key // n, key % n


def union_find_groups(n: int, a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    """Connected components (of two or more) of the pairs (a[k], b[k]) over 0..n-1, each sorted."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    members: dict[int, list[int]] = {}
    for x in sorted(set(a.tolist()) | set(b.tolist())):
        members.setdefault(root(x), []).append(x)
    return [m for m in members.values() if len(m) > 1]


def confirmed_pairs(
    vectors: np.ndarray, hashes: np.ndarray, known: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, dense similarity, hash bits or -1 where a hash is missing) of the duplicate pairs among the
    rows (see the module doc)."""
    n = len(known)
    if n <= EXACT_MAX:
        rows = np.flatnonzero(known)
        hi, hj = hash_pairs(hashes[rows])
        di, dj = dense_pairs(vectors, np.flatnonzero(~known), threshold)
        i, j = _unique_pairs(np.concatenate([rows[hi], di]), np.concatenate([rows[hj], dj]), n)
    else:
        i, j = dense_pairs(vectors, np.arange(n), threshold)
    sims = np.einsum("nd,nd->n", vectors[i], vectors[j]) if len(i) else np.empty(0, np.float32)
    both = known[i] & known[j]
    bits = np.where(both, hamming(hashes[i], hashes[j]), -1)
    ok = np.where(
        both,
        (bits <= MAX_BITS) & ((sims >= threshold) | ((bits <= SAME_BITS) & (sims >= SAME_FLOOR))),
        sims >= max(threshold, DENSE_ONLY),
    )
    return i[ok], j[ok], sims[ok].astype(np.float32), bits[ok]


def find_dupes(collection: Any, threshold: float = DEFAULT_THRESHOLD) -> DupeReport:
    """The near-duplicate groups of ``collection`` (see the module doc)."""
    threshold = check_threshold(threshold)
    if not int(collection.meta.get("dense_dim") or 0):
        raise UsageError(
            f"Collection {collection.path} was indexed by a model without a dense head; lexsearch dupes "
            "confirms duplicates with the dense vectors, so it needs a model that has one."
        )
    ids, vectors, phashes, facts = collection.dupe_rows()
    hashes, known = hash_array(phashes)
    i, j, s, bits = confirmed_pairs(vectors, hashes, known, threshold)
    members = union_find_groups(len(ids), i, j)
    group_of = {m: k for k, group in enumerate(members) for m in group}
    pairs: list[list[tuple]] = [[] for _ in members]
    path = lambda row: facts[int(ids[row])]["path"]  # noqa: E731
    for x, y, sim, h in zip(i.tolist(), j.tolist(), s.tolist(), bits.tolist()):
        pairs[group_of[x]].append((*sorted((path(x), path(y))), float(sim), int(h) if h >= 0 else None))
    groups = [
        DupeGroup(
            sorted((_image(int(ids[m]), facts[int(ids[m])]) for m in group), key=lambda im: im.path),
            sorted(pairs[k]),
        )
        for k, group in enumerate(members)
    ]
    groups.sort(key=lambda g: (-len(g.images), g.images[0].path))
    return DupeReport(groups, len(ids), int((~known).sum()), threshold)


def _image(image_id: int, f: dict) -> DupeImage:
    return DupeImage(image_id, f["path"], f.get("width"), f.get("height"), f.get("size"), f.get("taken"))


def missing_note(report: DupeReport, collection: Any) -> str | None:
    """The one line on images without a hash, naming the index command that computes them (or None)."""
    if not report.missing_hashes:
        return None
    roots = collection.meta.get("roots") or []
    where = " ".join(shlex.quote(r) for r in roots) if roots else "FOLDER"
    command = f"lexsearch index {where} --collection {shlex.quote(os.fspath(collection.path))}"
    return (
        f"{report.missing_hashes} of {report.images} images have no perceptual hash yet and are compared by "
        f"their dense vectors alone; '{command}' computes them (nothing is embedded again)."
    )
