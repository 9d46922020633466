"""The postings of queried terms in the layout the scoring kernels want (sparse lists or dense columns)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# A term whose postings cover at least this fraction of the images is kept as a dense float32 column:
# a vectorised multiply-add over the score array (~0.25 ms per million images) beats scattering 100k+
# postings (~2.8 ns each); below it the scatter wins and the column would waste memory.
DENSE_MIN_FRACTION = 0.10


@dataclass
class TermPostings:
    """One term's postings in scoring layout: sparse (ids, weights) or, for a frequent term, a dense column.

    Converted postings hold ``intp`` ids because numpy's fancy indexing converts any other integer type on
    every call, which doubles the scatter's cost; ``weights`` float32 (or uint8 with ``scale`` in pruned
    lists). Before a term's second query its postings stay as read (``raw``: uint32 ids and float16 weights,
    or a file's uint16-coded columns, often views of a mapped file): for one use that is cheaper than any
    conversion.
    """

    df: int
    max_weight: float
    ids: np.ndarray | None = None  # intp, ascending
    weights: np.ndarray | None = None  # float32, or uint8 codes when ``scale`` is set
    dense: np.ndarray | None = None  # float32 (n_slots,): the weight per image id, 0 where absent
    scale: float | None = None  # pruned lists: weight = code * scale
    parts: list[Any] | None = None  # as read, not converted yet: ``lexsearch.index.segments.Part`` list
    query: int = 0  # the query that read it

    @property
    def raw(self) -> bool:
        return self.parts is not None

    def materialise(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, weights) of a term as read: its parts expanded and concatenated."""
        pairs = [p.sparse() for p in self.parts or ()]
        if len(pairs) == 1:
            return pairs[0]
        return np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ids, self.weights, self.dense) if a is not None)


class PostingsIndex:
    """Postings of the terms queries ask for, converted once to the layout the kernels want and kept.

        ``fetch(term_ids) -> {term: (ids ascending, weights)}`` reads the store (``from_collection``: one snapshot
        of the collection's mapped posting files + delta, whose removed ids go to ``dead``) or an in-memory source
        (the benchmark); ``n_slots`` = largest image id + 1, the length of the score array. A term is used as read
        in its first query and converted when a later query uses it again, so a one-query process (``lexsearch
        query``) pays no conversion and a long-lived one (server, demo, benchmark) pays it once per term (a term
    stored only as uint16-coded columns is never converted: it scores as fast from them). A
        long-lived process makes a new index when the collection changes (``meta["generation"]``), as the cache
        never expires.
        Not thread-safe: the score array is a reused scratch buffer (allocating 4 MB per query means page faults).
    """

    def __init__(
        self,
        n_slots: int,
        fetch: Callable[[list[int]], Mapping[int, tuple[np.ndarray, np.ndarray]]],
        dense_min_fraction: float = DENSE_MIN_FRACTION,
    ):
        self.n_slots = int(n_slots)
        self._fetch = fetch
        self._dense_min = max(1, math.ceil(dense_min_fraction * self.n_slots))
        self._terms: dict[int, TermPostings | None] = {}
        self._pruned: dict[tuple[int, int], TermPostings] = {}
        self._scores: np.ndarray | None = None
        self._tmp: np.ndarray | None = None
        self._query = 0
        self.dead = np.empty(0, np.intp)  # removed image ids the postings may still hold: scores are zeroed

    @classmethod
    def from_collection(cls, collection: Any, **kwargs: Any) -> PostingsIndex:
        """Postings read from ``collection`` as its snapshots see them (tombstoned ids masked, not cut)."""
        if not hasattr(collection, "postings_snapshot"):  # any other store with the read API's postings()
            return cls(collection.max_image_id + 1, collection.postings, **kwargs)
        index = cls(collection.max_image_id + 1, lambda terms: {}, **kwargs)

        def fetch(term_ids: list[int]) -> Mapping[int, Any]:
            snap = collection.postings_snapshot(term_ids)
            if snap.dead.size:
                # Sorted already; a plain concatenate + sort (np.union1d would import numpy.ma: ~40 ms).
                both = np.sort(np.concatenate([index.dead, snap.dead.astype(np.intp)]))
                keep = np.ones(both.size, bool)
                keep[1:] = both[1:] != both[:-1]
                index.dead = both[keep]
            return snap.parts

        index._fetch = fetch
        return index

    def begin_query(self) -> None:
        """Mark the start of a query (terms fetched by an earlier one are converted on their next use)."""
        self._query += 1

    def mask_dead(self, scores: np.ndarray) -> None:
        """Zero the scores of removed images (O(removed), not a pass over every posting)."""
        if self.dead.size:
            scores[self.dead[self.dead < scores.size]] = 0.0

    @classmethod
    def from_csc(cls, matrix: Any, **kwargs: Any) -> PostingsIndex:
        """An index over a scipy CSC (images x terms) matrix whose row numbers are the image ids."""
        indptr, indices, data = matrix.indptr, matrix.indices, matrix.data

        def fetch(term_ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
            out = {}
            for t in term_ids:
                a, b = indptr[t], indptr[t + 1]
                if b > a:
                    out[t] = (indices[a:b], data[a:b])
            return out

        return cls(matrix.shape[0], fetch, **kwargs)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._terms.values() if p is not None) + sum(
            p.nbytes for p in self._pruned.values()
        )

    def get(self, term_ids: Iterable[int]) -> dict[int, TermPostings]:
        """Postings of ``term_ids`` (terms no image has are omitted)."""
        wanted = [int(t) for t in term_ids]
        missing = [t for t in wanted if t not in self._terms]
        if missing:
            fetched = self._fetch(missing)
            for t in missing:
                self._terms[t] = self._as_read(fetched[t]) if t in fetched else None
        for t in wanted:
            tp = self._terms[t]
            if (
                tp is not None
                and tp.raw
                and tp.query != self._query
                and not all(p.dense and p.scale is not None for p in tp.parts)
            ):
                # A term stored only as uint16-coded columns is scored from them as they lie (their step
                # folded into the query weight): a float32 copy would score no faster and take twice the memory.
                self._terms[t] = self._convert_parts(tp)
        return {t: p for t in wanted if (p := self._terms[t]) is not None}

    def _as_read(self, value: Any) -> TermPostings | None:
        """A fetched term, kept as read: the store's parts, or one (ids, weights) pair."""
        if isinstance(value, tuple):
            from lexsearch.index.segments import Part

            ids, weights = value
            if not len(ids):
                return None
            if ids[-1] >= self.n_slots:  # the collection grew since this index was made
                keep = ids < self.n_slots
                ids, weights = ids[keep], weights[keep]
            value = [
                Part(
                    np.asarray(weights), np.asarray(ids), 0, int(ids.size), float(np.max(weights, initial=0))
                )
            ]
        parts = []
        for p in value:
            if p.dense:
                if p.start >= self.n_slots:  # the collection grew since this index was made
                    continue
                if p.start + p.weights.size > self.n_slots:
                    p = replace(p, weights=p.weights[: self.n_slots - p.start])
            elif p.ids.size and p.ids[-1] >= self.n_slots:
                keep = p.ids < self.n_slots
                p = type(p)(p.weights[keep], p.ids[keep], 0, int(keep.sum()), p.max_weight)
            parts.append(p)
        if not parts:
            return None
        return TermPostings(
            df=sum(p.df for p in parts),
            max_weight=max(p.max_weight for p in parts),
            parts=parts,
            query=self._query,
        )

    def _convert_parts(self, tp: TermPostings) -> TermPostings | None:
        """A term as read, in scoring layout. A frequent term's column is filled part by part: a stored column
        is copied in with its step applied, never expanded to (ids, weights) first (flatnonzero over a
        million-image column and back was ~9 ms of a server's query per such term, at 1M images)."""
        if tp.df < self._dense_min:
            return self._convert(*tp.materialise())
        out = TermPostings(df=tp.df, max_weight=tp.max_weight)
        out.dense = np.zeros(self.n_slots, np.float32)
        for p in tp.parts or ():
            if p.dense:  # clipped to n_slots when it was read (_as_read)
                seg = out.dense[p.start : p.start + p.weights.size]
                np.multiply(p.weights, np.float32(1.0 if p.scale is None else p.scale), out=seg)
            else:
                out.dense[np.asarray(p.ids, np.intp)] = p.weights
        return out

    def _convert(self, ids: np.ndarray, weights: np.ndarray) -> TermPostings | None:
        if ids.size == 0:
            return None
        ids = np.asarray(ids, dtype=np.intp)
        weights = np.asarray(weights, dtype=np.float32)
        if ids[-1] >= self.n_slots:  # the collection grew since this index was made
            keep = ids < self.n_slots
            ids, weights = ids[keep], weights[keep]
        tp = TermPostings(df=int(ids.size), max_weight=float(weights.max(initial=0.0)))
        if ids.size >= self._dense_min:
            tp.dense = np.zeros(self.n_slots, np.float32)
            tp.dense[ids] = weights
        else:
            tp.ids, tp.weights = ids, np.ascontiguousarray(weights)
        return tp

    def pruned(self, term: int, cap: int) -> TermPostings | None:
        """The term's ``cap`` highest-weight postings, ids ascending, weights as uint8 codes of max/255.

        Impact-capped lists are what makes the pruned mode's cost independent of how common a term is.
        """
        key = (term, cap)
        if key in self._pruned:
            return self._pruned[key]
        if term not in self._terms:
            self.get([term])
        base = self._terms.get(term)
        if base is None:
            return None
        if base.raw:
            ids, weights = base.materialise()
            ids, weights = np.asarray(ids, np.intp), weights.astype(np.float32)
        elif base.dense is not None:
            ids = np.flatnonzero(base.dense)
            weights = base.dense[ids]
        else:
            ids, weights = base.ids, base.weights
        if ids.size > cap:
            top = np.sort(np.argpartition(weights, ids.size - cap)[ids.size - cap :])
            ids, weights = ids[top], weights[top]
        scale = base.max_weight / 255.0 if base.max_weight > 0 else 1.0
        codes = np.clip(np.rint(weights / scale), 1, 255).astype(np.uint8)
        tp = TermPostings(df=base.df, max_weight=base.max_weight, ids=ids, weights=codes, scale=scale)
        self._pruned[key] = tp
        return tp

    def scratch(self) -> tuple[np.ndarray, np.ndarray]:
        """(score array, temporary) of ``n_slots`` float32 each, reused across queries."""
        if self._scores is None:
            self._scores = np.empty(self.n_slots, np.float32)
            self._tmp = np.empty(self.n_slots, np.float32)
        return self._scores, self._tmp
