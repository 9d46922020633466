"""Binary formats of the sparse side of a collection: forward rows and per-term posting segments.

Blob format (``meta.postings_format = 1``), all little-endian, no header (the row says how many entries):

- ids:     ``uint32[n]`` image ids, strictly ascending within a segment. Not delta-coded: a raw array is
           what numpy reads with zero parsing (``np.frombuffer``), which keeps the candidate stage at memory
           speed; varint/delta coding would halve the size but costs a Python-level decode per term.
- weights: ``float16[n]`` the sparse weight of that term in that image. Weights are L2-normalised row
           entries in (0, 1] above the sparsification threshold (~1/sqrt(V), e.g. 0.005), where float16 keeps
           ~3 significant digits; uint8 with a per-segment scale would lose small weights (step = max/255).

So one posting costs 6 bytes. In SQLite these blobs are only the *delta*: one row per term per commit
(``postings.segment`` = the commit's generation; new images always get larger ids, so segments in order are
ascending overall), flushed into an immutable, memory-mapped segment file once large (``segments.py``).
Deleted images are not cut out at once; their ids go to the ``tombstones`` table, readers drop them, and the
next flush or merge leaves them out.

Forward rows: ``terms`` ascending as ``uint16[k]`` when the vocabulary fits (V <= 65,536; LexVLA's is
17,149), else ``uint32[k]`` (the width is told by the blob's length next to ``weights float16[k]``, so rows
of both widths read alike); dense vectors ``float16[D]`` (``float32[D]`` in older rows and the query cache).
At ~250 terms per image the forward row is 1 KB instead of 1.5 KB, and the dense vector half its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POSTINGS_FORMAT = 1

_ID = np.dtype("<u4")
_W = np.dtype("<f2")
_DENSE = np.dtype("<f4")
_HALF = np.dtype("<f2")
_TERM16 = np.dtype("<u2")


def encode_ids(ids: np.ndarray) -> bytes:
    return np.ascontiguousarray(ids, dtype=_ID).tobytes()


def encode_weights(weights: np.ndarray) -> bytes:
    return np.ascontiguousarray(weights, dtype=_W).tobytes()


def decode_ids(blob: bytes) -> np.ndarray:
    # astype copies: callers get a writable array, not a read-only view of the SQLite blob
    return np.frombuffer(blob, dtype=_ID).astype(np.uint32)


def decode_weights(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=_W).astype(np.float32)


def encode_terms(terms: np.ndarray, vocab_size: int) -> bytes:
    """Forward-row term ids: uint16 when every id of the vocabulary fits, else uint32."""
    dtype = _TERM16 if 0 < vocab_size <= 1 << 16 else _ID
    return np.ascontiguousarray(terms, dtype=dtype).tobytes()


def decode_forward(terms: bytes, weights: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(term ids int32, weights float32) of a forward row of either term width."""
    k = len(weights) // 2
    dtype = _TERM16 if k and len(terms) == 2 * k else _ID
    return np.frombuffer(terms, dtype=dtype).astype(np.int32), decode_weights(weights)


@dataclass
class RowBlock:
    """Forward rows (and dense vectors) of some images, concatenated CSR-style in the order asked for."""

    indptr: np.ndarray  # (m + 1,) int64
    terms: np.ndarray  # (nnz,) int32
    weights: np.ndarray  # (nnz,) float32
    dense: np.ndarray | None  # (m, D) float32, zero rows where an image has none; None: none asked for
    has_dense: np.ndarray  # (m,) bool


def decode_block(rows: list[tuple[bytes, bytes] | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, terms int32, weights float32) of many forward rows (None: an empty row) in one decode: a
    re-rank's thousand rows cost a few array operations instead of four numpy calls per row."""
    present = [r if r is not None else (b"", b"") for r in rows]
    lengths = np.fromiter((len(w) // 2 for _, w in present), np.int64, len(present))
    indptr = np.zeros(len(present) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    weights = decode_weights(b"".join(w for _, w in present))
    if all(len(t) == 2 * k for (t, _), k in zip(present, lengths.tolist())):
        terms = np.frombuffer(b"".join(t for t, _ in present), _TERM16).astype(np.int32)
    elif all(len(t) == 4 * k for (t, _), k in zip(present, lengths.tolist())):
        terms = np.frombuffer(b"".join(t for t, _ in present), _ID).astype(np.int32)
    else:  # rows of both widths (a vocabulary that grew past uint16 cannot happen; old rows could)
        terms = np.concatenate([decode_forward(t, w)[0] for t, w in present] or [np.empty(0, np.int32)])
    return indptr, terms, weights


def encode_dense(vec: np.ndarray, half: bool = True) -> bytes:
    """A dense vector as float16 (forward rows) or float32 (``half=False``: the query cache)."""
    return np.ascontiguousarray(vec, dtype=_HALF if half else _DENSE).tobytes()


def decode_dense(blob: bytes, dim: int = 0) -> np.ndarray:
    """A dense vector as float32; ``dim`` tells float16 blobs from float32 ones (0: float32)."""
    dtype = _HALF if dim and len(blob) == 2 * dim else _DENSE
    return np.frombuffer(blob, dtype=dtype).astype(np.float32)


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
