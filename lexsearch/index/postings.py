"""Binary formats of the sparse side of a collection: forward rows and per-term posting segments.

Blob format (``meta.postings_format = 1``), all little-endian, no header (the row says how many entries):

- ids:     ``uint32[n]`` image ids, strictly ascending within a segment. Not delta-coded: a raw array is
           what numpy reads with zero parsing (``np.frombuffer``), which keeps the candidate stage at memory
           speed; varint/delta coding would halve the size but costs a Python-level decode per term.
- weights: ``float16[n]`` the sparse weight of that term in that image. Weights are L2-normalised row
           entries in (0, 1] above the sparsification threshold (~1/sqrt(V), e.g. 0.005), where float16 keeps
           ~3 significant digits; uint8 with a per-segment scale would lose small weights (step = max/255).

So one posting costs 6 bytes. A term's postings are split in *segments* (``postings.segment``): 0 is the
merged base, 1.. are deltas appended by each index commit (new images always get larger ids, so segments in
order are ascending overall). Deleted images are not cut out of blobs at once; their ids go to the
``tombstones`` table and readers drop them, and compaction rewrites a term's segments into one base without
them. Forward rows use the same two encodings: ``terms uint32[k]`` ascending + ``weights float16[k]``; dense
vectors are ``float32[D]``.
"""

from __future__ import annotations

import numpy as np

POSTINGS_FORMAT = 1

_ID = np.dtype("<u4")
_W = np.dtype("<f2")
_DENSE = np.dtype("<f4")


def encode_ids(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, dtype=_ID).tobytes()


def encode_weights(weights: np.ndarray) -> bytes:
    return np.ascontiguousarray(weights, dtype=_W).tobytes()


def decode_ids(blob: bytes) -> np.ndarray:
    # astype copies: callers get a writable array, not a read-only view of the SQLite blob
    return np.frombuffer(blob, dtype=_ID).astype(np.uint32)


def decode_weights(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=_W).astype(np.float32)


def encode_dense(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=_DENSE).tobytes()


def decode_dense(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=_DENSE).astype(np.float32, copy=False)


def merge_segments(
    segments: list[tuple[np.ndarray, np.ndarray]], dead: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate segments into one ascending (ids, weights) pair, dropping ids in ``dead``.

    Segments written in order are already ascending as a whole; the sort is only paid when they are not
    (it is a cheap check) so the merge stays linear in the common case.
    """
    if not segments:
        return np.empty(0, np.uint32), np.empty(0, np.float32)
    ids = np.concatenate([s[0] for s in segments]) if len(segments) > 1 else segments[0][0]
    weights = np.concatenate([s[1] for s in segments]) if len(segments) > 1 else segments[0][1]
    if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids, weights = ids[order], weights[order]
        # An id present twice would be a bug upstream; keep the newest (last) copy rather than double count.
        keep = np.ones(ids.size, bool)
        keep[:-1] = ids[1:] != ids[:-1]
        ids, weights = ids[keep], weights[keep]
    if dead is not None and dead.size and ids.size:
        live = ~np.isin(ids, dead, assume_unique=False)
        ids, weights = ids[live], weights[live]
    return ids, weights


def invert(
    image_ids: np.ndarray, rows: list[tuple[np.ndarray, np.ndarray]]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Turn forward rows (term ids, weights) of some images into per-term (ids ascending, weights)."""
    if not rows:
        return {}
    lengths = np.array([r[0].size for r in rows], dtype=np.int64)
    if lengths.sum() == 0:
        return {}
    terms = np.concatenate([r[0] for r in rows]).astype(np.int64)
    weights = np.concatenate([r[1] for r in rows]).astype(np.float32)
    ids = np.repeat(np.asarray(image_ids, dtype=np.uint32), lengths)
    order = np.lexsort((ids, terms))  # by term, then by image id
    terms, ids, weights = terms[order], ids[order], weights[order]
    cuts = np.flatnonzero(np.diff(terms)) + 1
    out = {}
    for t_ids, t_w, t in zip(np.split(ids, cuts), np.split(weights, cuts), terms[np.r_[0, cuts]]):
        out[int(t)] = (t_ids, t_w)
    return out
