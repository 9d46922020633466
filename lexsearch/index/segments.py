"""Immutable posting segment files: the bulk of a collection's postings, memory-mapped by readers.

A collection's postings live in a few ``postings-<n>.lxp`` files plus a small delta in SQLite (the
``postings`` table: what the last commits added, flushed into a new file once it is large). Each file holds
every term's postings for one contiguous range of image ids ``[min_id, max_id]`` (its *span*), laid out so
that a query reads a term's postings in place (``np.frombuffer`` views of one mapping, no parsing):

    header   64 bytes: magic b"LXPOSTS3", n_terms u64, n_postings u64, min_id u32, max_id u32, n_dense u32
    terms    uint32[n_terms]      term ids, ascending
    starts   uint64[n_terms + 1]  offsets of each term's sparse postings (empty for a dense term)
    slot     int32[n_terms]       a dense term's column number, -1 for a sparse term
    df       uint32[n_terms]      images holding the term in this file
    max_w    float32[n_terms]     its largest weight (the pruned mode's impact bound)
    scale    float32[n_terms]     a dense term's code step (weight = code * scale), 0 for a sparse term
    ids      uint32[n_postings]   sparse terms: image ids, ascending within a term (8-byte aligned)
    weights  float16[n_postings]  their weights (see postings.py for why float16)
    dense    uint16[n_dense, span]  dense terms: the code of every image of the span, 0 where absent

A sparse posting costs 6 bytes. A term held by at least ``DENSE_FRACTION`` of the span is stored as a column
instead: no larger on disk (2 bytes a slot against 6 a posting), and scored by one vectorised multiply-add
rather than a scatter, which is what keeps a fresh query process fast on the common words that make up most
of the postings a query touches. Columns hold uint16 codes of ``max_w / 65535`` rather than float16: numpy
turns uint16 into float32 ~18x faster than float16 (0.29 vs 5.4 ms per million on the project's CPU; most of
a fresh query's scoring), and the step (1/65,535 of the term's largest weight, every present weight at
least one step) is finer than float16's near the top weights that decide rankings. Files of format 2
(``LXPOSTS2``: float16 columns, no ``scale``) are still read. Files are written once to a
temporary name, fsynced and renamed, and only then referenced from SQLite (``segments`` table) in the same
transaction that retires what they replace; a file not referenced is an orphan of a crash and is deleted by
the next writer. A reader maps the files its snapshot names; a file retired later stays readable through the
open mapping (POSIX keeps unlinked files alive), and a reader that finds a file already gone simply takes a
newer snapshot (see ``Collection``).

Segments are merged size-tiered: ``FANOUT`` adjacent files of one size tier become one file, so each posting
is rewritten about ``log_FANOUT(N / flush size)`` times over a collection's life (write amplification),
while a query reads at most ``(FANOUT - 1)`` files per tier.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MAGIC = b"LXPOSTS3"
MAGIC_V2 = b"LXPOSTS2"  # float16 columns, no scale array: still read
CODE_MAX = 65535  # uint16 column codes
HEADER_BYTES = 64
# Columns for terms in at least a third of the span: where a column is no larger than the postings.
DENSE_FRACTION = 1 / 3
PREFIX = "postings-"
SUFFIX = ".lxp"
_HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("n_terms", "<u8"),
        ("n_postings", "<u8"),
        ("min_id", "<u4"),
        ("max_id", "<u4"),
        ("n_dense", "<u4"),
    ]
)


class SegmentError(Exception):
    """A segment file that is missing, torn or not a segment (the caller decides what that means)."""


def _align8(n: int) -> int:
    return (n + 7) & ~7


@dataclass
class Runs:
    """Postings of many terms in one flat layout: ``ids[starts[k]:starts[k+1]]`` belong to ``terms[k]``."""

    terms: np.ndarray  # uint32 ascending
    starts: np.ndarray  # int64 (n_terms + 1)
    ids: np.ndarray  # uint32
    weights: np.ndarray  # float16

    @property
    def n(self) -> int:
        return int(self.ids.size)

    @classmethod
    def empty(cls) -> Runs:
        return cls(
            np.empty(0, np.uint32), np.zeros(1, np.int64), np.empty(0, np.uint32), np.empty(0, np.float16)
        )

    @classmethod
    def from_dict(cls, per_term: dict[int, tuple[np.ndarray, np.ndarray]]) -> Runs:
        terms = np.array(sorted(per_term), np.uint32)
        if not terms.size:
            return cls.empty()
        lens = np.array([per_term[int(t)][0].size for t in terms], np.int64)
        starts = np.zeros(terms.size + 1, np.int64)
        np.cumsum(lens, out=starts[1:])
        ids = np.concatenate([np.asarray(per_term[int(t)][0], np.uint32) for t in terms])
        weights = np.concatenate([np.asarray(per_term[int(t)][1], np.float16) for t in terms])
        return cls(terms, starts, ids, weights)


def invert_runs(image_ids: np.ndarray, rows: list[tuple[np.ndarray, np.ndarray]]) -> Runs:
    """Forward rows (term ids, weights) of some images as per-term runs (ids ascending within a term)."""
    lengths = np.array([r[0].size for r in rows], dtype=np.int64)
    if not rows or lengths.sum() == 0:
        return Runs.empty()
    terms = np.concatenate([r[0] for r in rows])
    # uint16 terms (any vocabulary up to 65,536) make numpy's stable sort a radix sort: ~20x a lexsort.
    terms = terms.astype(np.uint16 if terms.size and int(terms.max()) < 1 << 16 else np.uint32)
    weights = np.concatenate([r[1] for r in rows]).astype(np.float16)
    ids = np.repeat(np.asarray(image_ids, dtype=np.uint32), lengths)
    # Stable by term: images given in ascending id order stay ascending within each term.
    order = np.argsort(terms, kind="stable")
    if ids.size > 1 and not bool(np.all(ids[1:] >= ids[:-1])):
        order = np.lexsort((ids, terms))
    terms, ids, weights = terms[order], ids[order], weights[order]
    cuts = np.flatnonzero(np.diff(terms)) + 1
    starts = np.concatenate([[0], cuts, [terms.size]]).astype(np.int64)
    return Runs(terms[starts[:-1]].astype(np.uint32), starts, ids, weights)


@dataclass
class Part:
    """One file's (or the delta's) postings of one term, as stored: sparse, or a dense column."""

    weights: np.ndarray  # float16 per posting (sparse); per image id from ``start`` (dense, see ``scale``)
    ids: np.ndarray | None = None  # uint32 ascending (sparse); None for a dense column
    start: int = 0  # dense: the image id of weights[0]
    df: int = 0
    max_weight: float = 0.0
    scale: float | None = None  # dense uint16 codes: weight = code * scale (None: float16 weights)

    @property
    def dense(self) -> bool:
        return self.ids is None

    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint32, weights float16), a dense column expanded."""
        if self.ids is not None:
            return self.ids, self.weights
        nz = np.flatnonzero(self.weights)
        return (nz + self.start).astype(np.uint32), _weights(self.weights[nz], self.scale)


def _weights(values: np.ndarray, scale: float | None) -> np.ndarray:
    """float16 weights of a column's values (codes when ``scale`` is set)."""
    if scale is None:
        return values
    return (values.astype(np.float32) * np.float32(scale)).astype(np.float16)


def column_codes(weights: np.ndarray, max_weight: float) -> tuple[np.ndarray, float]:
    """(uint16 codes, scale) of a column's present weights: code = round(w / scale), at least 1."""
    scale = float(max_weight) / CODE_MAX if max_weight > 0 else 1.0
    codes = np.rint(np.asarray(weights, np.float32) / np.float32(scale))
    return np.clip(codes, 1, CODE_MAX).astype(np.uint16), scale


def write_segment(path: Path, runs: Runs, dense_fraction: float = DENSE_FRACTION) -> int:
    """Write ``runs`` as a segment file at ``path`` atomically (temp + fsync + rename); returns its size."""
    n_terms = int(runs.terms.size)
    lo_id = int(runs.ids.min()) if runs.n else 0
    hi_id = int(runs.ids.max()) if runs.n else 0
    span = hi_id - lo_id + 1 if runs.n else 0
    df = np.diff(runs.starts).astype(np.int64)
    dense = (df >= dense_fraction * span) & (df > 0) if span else np.zeros(n_terms, bool)
    w32 = runs.weights.astype(np.float32)
    max_w = np.maximum.reduceat(w32, runs.starts[:-1]) if runs.n else np.zeros(n_terms, np.float32)
    scale = np.zeros(n_terms, np.float32)
    slot = np.full(n_terms, -1, np.int32)
    slot[dense] = np.arange(int(dense.sum()), dtype=np.int32)
    keep = ~np.repeat(dense, df)
    sparse_lens = np.where(dense, 0, df)
    starts = np.zeros(n_terms + 1, np.int64)
    np.cumsum(sparse_lens, out=starts[1:])
    ids, weights = runs.ids[keep], runs.weights[keep]
    header = np.zeros(1, _HEADER)
    header["magic"] = MAGIC
    header["n_terms"], header["n_postings"] = n_terms, int(ids.size)
    header["min_id"], header["max_id"], header["n_dense"] = lo_id, hi_id, int(dense.sum())
    columns = []
    for k in np.flatnonzero(dense):
        a, b = int(runs.starts[k]), int(runs.starts[k + 1])
        codes, scale[k] = column_codes(runs.weights[a:b], float(max_w[k]))
        columns.append((runs.ids[a:b].astype(np.int64) - lo_id, codes))
    tmp = path.with_name(path.name + ".tmp")
    table = ((runs.terms, "<u4"), (starts, "<u8"), (slot, "<i4"), (df, "<u4"), (max_w, "<f4"), (scale, "<f4"))
    with open(tmp, "wb") as f:
        f.write(header.tobytes().ljust(HEADER_BYTES, b"\0"))
        for arr, dt in table:
            f.write(np.ascontiguousarray(arr, dt).tobytes())
        pos = HEADER_BYTES + n_terms * (4 + 8 + 4 + 4 + 4 + 4) + 8
        f.write(b"\0" * (_align8(pos) - pos))
        # Large arrays go out in chunks so writing a big merge does not need a second full copy as bytes.
        for arr, dt in ((ids, "<u4"), (weights, "<f2")):
            arr = np.ascontiguousarray(arr, dt)
            for lo in range(0, arr.size, 1 << 24):
                f.write(memoryview(arr[lo : lo + (1 << 24)]).cast("B"))
        pos = _align8(pos) + 6 * int(ids.size)
        f.write(b"\0" * (_align8(pos) - pos))
        column = np.zeros(span, "<u2")
        for where, codes in columns:
            column[:] = 0
            column[where] = codes
            f.write(memoryview(column).cast("B"))
        f.flush()
        # fsync before rename: after a power cut the new name must not point at unwritten blocks.
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path.stat().st_size


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is durable enough for us
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SegmentFile:
    """A read-only memory map of one segment file; ``part(term)`` returns views into it."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_BYTES:
                    raise SegmentError(f"{path.name} is truncated")
                head = np.frombuffer(f.read(HEADER_BYTES), _HEADER, count=1)[0]
                if head["magic"] not in (MAGIC, MAGIC_V2):
                    raise SegmentError(f"{path.name} is not a posting segment")
                coded = head["magic"] == MAGIC
                nt = int(head["n_terms"])
                table = [("<u4", nt), ("<u8", nt + 1), ("<i4", nt), ("<u4", nt), ("<f4", nt)]
                table += [("<f4", nt)] * coded
                # The term table in one read (the kernel reads it ahead in large requests): through the
                # mapping, a cold page cache would fault it in one 4 KB page at a time (~10 ms a file).
                blob = f.read(sum(np.dtype(dt).itemsize * count for dt, count in table))
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError as exc:
            raise SegmentError(f"{path.name} is missing") from exc
        n, nd = int(head["n_postings"]), int(head["n_dense"])
        self.min_id, self.max_id, self.n = int(head["min_id"]), int(head["max_id"]), n
        self.span = self.max_id - self.min_id + 1 if nt else 0
        arrays, at = [], 0
        for dt, count in table:
            arrays.append(np.frombuffer(blob, dt, count, at))
            at += np.dtype(dt).itemsize * count
        off = HEADER_BYTES + at
        self.terms, starts, self.slot, self.df, self.max_w = arrays[:5]
        # Per term: the step of its column's codes; None for a format-2 file (float16 columns).
        self.scale = arrays[5] if coded else None
        self.starts = starts.astype(np.int64)
        off = _align8(off)
        dense_off = _align8(off + 6 * n)
        if size != dense_off + 2 * nd * self.span:
            raise SegmentError(
                f"{path.name} is torn ({size} bytes, expected {dense_off + 2 * nd * self.span})"
            )
        self.ids = np.frombuffer(self._mm, "<u4", n, off)
        self.weights = np.frombuffer(self._mm, "<f2", n, off + 4 * n)
        column = "<u2" if coded else "<f2"
        self.dense = np.frombuffer(self._mm, column, nd * self.span, dense_off).reshape(nd, self.span)
        self._ids_off, self._w_off, self._dense_off = off, off + 4 * n, dense_off

    def _index(self, term: int) -> int | None:
        k = int(np.searchsorted(self.terms, term))
        if k >= self.terms.size or int(self.terms[k]) != term:
            return None
        return k

    def _indices(self, terms: list[int]) -> list[int | None]:
        """``_index`` of each of ``terms`` from one vectorised search (a query asks a dozen files for ~32
        terms each, twice: one searchsorted call per term was ~7 ms of a server's first answer at 1M)."""
        if not terms:
            return []
        ks = np.searchsorted(self.terms, np.asarray(terms, np.int64)).tolist()
        found = self.terms[np.minimum(ks, self.terms.size - 1)].tolist() if self.terms.size else []
        return [
            k if k < self.terms.size and found[j] == t else None for j, (k, t) in enumerate(zip(ks, terms))
        ]

    def parts(self, terms: list[int]) -> dict[int, Part]:
        """``part`` of each of ``terms`` this file holds."""
        return {t: self._part_at(k) for t, k in zip(terms, self._indices(terms)) if k is not None}

    def part(self, term: int) -> Part | None:
        """One term's postings as stored (views into the mapping), or None."""
        k = self._index(term)
        return None if k is None else self._part_at(k)

    def _part_at(self, k: int) -> Part:
        df, mw = int(self.df[k]), float(self.max_w[k])
        if self.slot[k] >= 0:
            return Part(self.dense[int(self.slot[k])], None, self.min_id, df, mw, self._scale(k))
        lo, hi = int(self.starts[k]), int(self.starts[k + 1])
        return Part(self.weights[lo:hi], self.ids[lo:hi], 0, df, mw)

    def _scale(self, k: int) -> float | None:
        return None if self.scale is None else float(self.scale[k])

    def get(self, term: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids uint32, weights float16) of one term's postings (a dense column expanded), or None."""
        p = self.part(term)
        return None if p is None else p.sparse()

    def prefetch(self, terms: Iterable[int]) -> None:
        """Ask the kernel to read these terms' data now, all at once (MADV_WILLNEED): with a cold page cache
        the reads then overlap instead of faulting in one page after another as numpy reads them."""
        if not hasattr(self._mm, "madvise") or not hasattr(mmap, "MADV_WILLNEED"):
            return
        page = mmap.PAGESIZE
        for k in self._indices(list(terms)):
            if k is None:
                continue
            if self.slot[k] >= 0:
                start = self._dense_off + 2 * self.span * int(self.slot[k])
                ranges = [(start, start + 2 * self.span)]
            else:
                lo, hi = int(self.starts[k]), int(self.starts[k + 1])
                ranges = [
                    (self._ids_off + 4 * lo, self._ids_off + 4 * hi),
                    (self._w_off + 2 * lo, self._w_off + 2 * hi),
                ]
            for start, end in ranges:
                if end > start:
                    a = start - start % page
                    self._mm.madvise(mmap.MADV_WILLNEED, a, end - a)

    def runs(self) -> Runs:
        """Every posting of the file as sparse runs (dense columns expanded): what a merge reads."""
        if not self.dense.shape[0]:
            return Runs(self.terms, self.starts, self.ids, self.weights)
        ids, weights = [], []
        for k in range(self.terms.size):
            if self.slot[k] >= 0:
                col = self.dense[int(self.slot[k])]
                nz = np.flatnonzero(col)
                ids.append((nz + self.min_id).astype(np.uint32))
                weights.append(_weights(col[nz], self._scale(k)))
            else:
                lo, hi = int(self.starts[k]), int(self.starts[k + 1])
                ids.append(self.ids[lo:hi])
                weights.append(self.weights[lo:hi])
        lens = np.array([a.size for a in ids], np.int64)
        starts = np.zeros(lens.size + 1, np.int64)
        np.cumsum(lens, out=starts[1:])
        return Runs(np.asarray(self.terms), starts, np.concatenate(ids), np.concatenate(weights))


def merge_runs(parts: Iterable[Runs], dead: np.ndarray | None = None) -> Runs:
    """Merge runs whose id ranges follow one another (oldest first) into one, dropping ids in ``dead``.

    Vectorised: every posting's destination is computed per part with one ``np.repeat``, so a merge of
    tens of millions of postings is a few array passes, not a Python loop over terms.
    """
    parts = [p for p in parts if p.n]
    if not parts:
        return Runs.empty()
    terms = np.unique(np.concatenate([p.terms for p in parts]))
    lens = np.zeros((len(parts), terms.size), np.int64)
    for k, p in enumerate(parts):
        lens[k, np.searchsorted(terms, p.terms)] = np.diff(p.starts)
    starts = np.zeros(terms.size + 1, np.int64)
    np.cumsum(lens.sum(axis=0), out=starts[1:])
    total = int(starts[-1])
    ids = np.empty(total, np.uint32)
    weights = np.empty(total, np.float16)
    before = starts[:-1].copy()  # where each term's slice of the next part goes
    for p in parts:
        where = np.searchsorted(terms, p.terms)
        counts = np.diff(p.starts)
        dest = np.repeat(before[where] - p.starts[:-1], counts) + np.arange(p.n, dtype=np.int64)
        ids[dest] = p.ids
        weights[dest] = p.weights
        before[where] += counts
    out = Runs(terms.astype(np.uint32), starts, ids, weights)
    if dead is not None and dead.size:
        out = drop_ids(out, dead)
    return out


def drop_ids(runs: Runs, dead: np.ndarray) -> Runs:
    """``runs`` without the postings of the (sorted) image ids in ``dead``; terms left empty go."""
    hit = np.isin(runs.ids, dead)
    if not hit.any():
        return runs
    keep = ~hit
    term_of = np.repeat(np.arange(runs.terms.size), np.diff(runs.starts))
    lens = np.bincount(term_of[keep], minlength=runs.terms.size)
    live = lens > 0
    starts = np.zeros(int(live.sum()) + 1, np.int64)
    np.cumsum(lens[live], out=starts[1:])
    return Runs(runs.terms[live], starts, runs.ids[keep], runs.weights[keep])


def tier(n_postings: int, flush_postings: int, fanout: int) -> int:
    """Size tier of a segment: 0 for about one flush, 1 for about ``fanout`` flushes, ..."""
    if n_postings <= flush_postings:
        return 0
    return int(np.floor(np.log(n_postings / flush_postings) / np.log(fanout) + 0.25))
