"""The candidate stage: term-at-a-time ``q_t * postings_t`` into one score array, +/- filters, top k."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lexsearch.search.parse import Clause, Filters
from lexsearch.search.postings import PostingsIndex, TermPostings

# Candidates handed to the re-rank. Enough that the exact re-score rarely misses a top-10 result whose
# truncated-query score was mediocre, small enough that reading their forward rows stays cheap.
CANDIDATES = 1000
# Above this share of the images allowed by the filters, the rest are zeroed rather than listed (``top_k``).
ALLOWED_AS_IDS = 0.05
# Image ids scored at a time over the dense columns: the block's scores and temporary (2 x 256 KB) stay in
# a core's cache (``_add_columns``).
BLOCK = 65536


@dataclass(frozen=True)
class PruneConfig:
    """The approximate candidate stage: few full lists, capped uint8 lists for the rest, a larger pool.

    The exact re-rank then re-scores the pool, so the approximation only decides *which* images reach it.
    Defaults measured by bench/query_latency.py (1M images, 24-term queries): ~0.99 of the exact top 1000
    at about half the exact cost. Capping *every* list (no exact terms) lost ~10% of the top 1000, because a
    top image gets there by many moderate weights, not by one extreme one.
    """

    exact_terms: int = 8  # the highest-impact (``q_t * max_weight_t``) terms, scored over their full lists
    max_terms: int = 24  # query terms scored in all; those after ``exact_terms`` over capped lists
    cap_fraction: float = 0.01  # postings kept per term (its highest weights), as a fraction of the images
    min_cap: int = 256  # ... but at least this many, so small collections are scored (nearly) exactly
    pool: float = 2.0  # candidates handed on = pool * k

    def cap(self, n_slots: int) -> int:
        return max(self.min_cap, math.ceil(self.cap_fraction * n_slots))


@dataclass
class Candidates:
    ids: np.ndarray  # intp image ids, best first
    scores: np.ndarray  # float32 candidate-stage scores (truncated query; approximate when pruned)


def _accumulate(index: PostingsIndex, pairs: list[tuple[TermPostings, float]]) -> np.ndarray:
    """``sum_t q_t * w_t[i]`` over every image id into the scratch array, for (postings, q_t) pairs."""
    scores, tmp = index.scratch()
    dense = [(tp, np.float32(q)) for tp, q in pairs if tp.dense is not None]
    if dense:
        np.multiply(dense[0][0].dense, dense[0][1], out=scores)  # the first column initialises: no fill
    else:
        scores.fill(0.0)
    for tp, q in pairs:
        if tp.raw:  # as read from the store (a term's first query): score each part where it lies
            _accumulate_parts(scores, tmp, tp.parts, np.float32(q))
    _add_columns(scores, tmp, dense[1:])
    for tp, q in pairs:
        if tp.dense is None and not tp.raw:
            # ids are unique within a term, so fancy-index += is an exact scatter-add (np.add.at: 10x slower).
            # Pruned lists hold uint8 codes: the scale folds into the query weight.
            scores[tp.ids] += tp.weights * np.float32(q if tp.scale is None else q * tp.scale)
    return scores


def _add_columns(scores: np.ndarray, tmp: np.ndarray, columns: list[tuple[TermPostings, np.float32]]) -> None:
    """``scores += q * column`` for each (dense column, q), a block of ids at a time: all the columns over one
    block while it stays in the core's cache, not each column over all the ids (at 1M images the score array
    and its temporary are 8 MB, read and written again for every column; 14 columns: ~16 ms that way, ~9 ms
    in 64k blocks on a 2-core EPYC). Each score sees the same additions in the same order: the same floats.

    Two passes per column and block (multiply, add): BLAS saxpy does it in one, but OpenBLAS threads it and,
    on a busy machine, its spinning threads turn 0.1 ms into 100 ms at the tail; numpy stays steady.
    """
    if not columns:
        return
    n = scores.size
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        seg, part = scores[a:b], tmp[: b - a]
        for tp, q in columns:
            np.multiply(tp.dense[a:b], q, out=part)
            np.add(seg, part, out=seg)


def _accumulate_parts(scores: np.ndarray, tmp: np.ndarray, parts: list, q: np.float32) -> None:
    for p in parts:
        if p.dense:  # a stored column over the image ids from p.start: one multiply-add, no scatter
            n = p.weights.size
            # uint16 codes (their step folded into q) or, in an older file, float16 weights.
            np.multiply(p.weights, q if p.scale is None else np.float32(q * p.scale), out=tmp[:n])
            seg = scores[p.start : p.start + n]
            np.add(seg, tmp[:n], out=seg)
        else:
            scores[p.ids] += p.weights * q


def accumulate(index: PostingsIndex, terms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Exact term-at-a-time scores ``sum_t q_t * w_t[i]`` over every image id, into the scratch array."""
    postings = index.get(terms.tolist())
    pairs = zip(terms.tolist(), weights.tolist())
    return _accumulate(index, [(postings[t], q) for t, q in pairs if t in postings])


def accumulate_pruned(
    index: PostingsIndex, terms: np.ndarray, weights: np.ndarray, prune: PruneConfig
) -> np.ndarray:
    """Approximate scores: the ``prune.exact_terms`` highest-impact terms in full, the next ones up to
    ``prune.max_terms`` over their capped uint8 lists, the rest dropped."""
    postings = index.get(terms.tolist())
    pairs = zip(terms.tolist(), weights.tolist())
    impact = sorted(((q * postings[t].max_weight, t, q) for t, q in pairs if t in postings), reverse=True)
    cap = prune.cap(index.n_slots)
    chosen = [(postings[t], q) for _, t, q in impact[: prune.exact_terms]]
    chosen += [(index.pruned(t, cap), q) for _, t, q in impact[prune.exact_terms : prune.max_terms]]
    return _accumulate(index, chosen)


def _presence(index: PostingsIndex, clause: Clause) -> np.ndarray | None:
    """Boolean mask over image ids: the images holding every term of the clause, or of one of its
    alternatives (other spellings of the word); None: no image does."""
    masks = [
        m for m in (_all_of(index, cols) for cols in (clause.terms, *clause.alternatives)) if m is not None
    ]
    if not masks:
        return None
    for other in masks[1:]:
        np.logical_or(masks[0], other, out=masks[0])
    return masks[0]


def _all_of(index: PostingsIndex, terms: tuple[int, ...]) -> np.ndarray | None:
    postings = index.get(terms)
    if len(postings) < len(terms):
        return None
    mask: np.ndarray | None = None
    for t in terms:
        tp = postings[t]
        if tp.raw:
            has = np.zeros(index.n_slots, bool)
            for p in tp.parts:
                if p.dense:
                    seg = has[p.start : p.start + p.weights.size]
                    np.logical_or(seg, p.weights > 0, out=seg)
                else:
                    has[p.ids] = True
        elif tp.dense is not None:
            has = tp.dense > 0
        else:
            has = np.zeros(index.n_slots, bool)
            has[tp.ids] = True
        mask = has if mask is None else np.logical_and(mask, has, out=mask)
    return mask


def apply_filters(index: PostingsIndex, scores: np.ndarray, filters: Filters) -> np.ndarray | None:
    """Zero the scores of excluded images; returns the ids the query-word and +must clauses allow (None: no
    clause, or so many allowed that the others' scores were zeroed instead)."""
    for clause in filters.exclude:
        tp = index.get(clause.terms)
        one = tp.get(clause.terms[0]) if len(clause.terms) == 1 else None
        if one is not None and not one.raw and one.ids is not None:
            scores[tp[clause.terms[0]].ids] = 0.0  # the common case: one sparse term, no mask needed
            continue
        mask = _presence(index, clause)
        if mask is not None:
            scores[mask] = 0.0
    allowed: np.ndarray | None = None
    if filters.any_of is not None:
        allowed = np.zeros(index.n_slots, bool)
        for clause in filters.any_of:
            mask = _presence(index, clause)
            if mask is not None:
                np.logical_or(allowed, mask, out=allowed)
    for clause in filters.must:
        mask = _presence(index, clause)
        if mask is None:
            return np.empty(0, np.intp)
        allowed = mask if allowed is None else np.logical_and(allowed, mask, out=allowed)
    if allowed is None:
        return None
    if np.count_nonzero(allowed) > ALLOWED_AS_IDS * allowed.size:
        # Most images allowed (a query of common words): zero the others in place and let ``top_k`` take its
        # sampled-threshold path; a list of ~all ids would make it partition a million scores (~20 ms).
        scores[np.logical_not(allowed, out=allowed)] = 0.0
        return None
    return np.flatnonzero(allowed)


def top_k(scores: np.ndarray, k: int, among: np.ndarray | None = None) -> Candidates:
    """The ``k`` best positive scores, best first (ties: smaller id first), optionally only ``among`` some
    (ascending) ids.

    A full argpartition of a million floats costs ~2 ms; instead a strided sample gives a threshold that
    about 2k scores pass (one vectorised compare), and only those are partitioned. When the sample is
    unlucky (fewer than k pass), the threshold drops to "any positive score".
    """
    if among is not None:
        ids = among[scores[among] > 0]
    else:
        n = scores.size
        stride = max(1, n // (16 * max(k, 1)))
        ids = None
        if stride > 1:
            sample = scores[::stride]
            expect = k * sample.size / n
            j = int(2 * expect + 4 * math.sqrt(expect) + 8)
            if j < sample.size:
                threshold = float(np.partition(sample, sample.size - j)[sample.size - j])
                if threshold > 0:
                    ids = np.flatnonzero(scores >= threshold)
                    if ids.size < k:
                        ids = None
        if ids is None:
            ids = np.flatnonzero(scores > 0)
    vals = scores[ids]
    if ids.size > k:
        # Ties at the k-th value go to the smaller ids (``ids`` is ascending), so results are deterministic.
        kth = vals[np.argpartition(vals, ids.size - k)[ids.size - k]]
        above = vals > kth
        tied = np.flatnonzero(vals == kth)[: k - int(above.sum())]
        keep = np.concatenate([np.flatnonzero(above), tied])
        ids, vals = ids[keep], vals[keep]
    order = np.lexsort((ids, -vals))
    return Candidates(ids=ids[order].astype(np.intp, copy=False), scores=vals[order].copy())


def candidates(
    index: PostingsIndex,
    terms: np.ndarray,
    weights: np.ndarray,
    filters: Filters | None = None,
    k: int = CANDIDATES,
    prune: PruneConfig | None = None,
    only: np.ndarray | None = None,
) -> Candidates:
    """The candidate stage: accumulate, filter, take the top ``k`` (``prune.pool * k`` when pruned).

    ``only``: ascending ids the metadata conditions allow (``SearchCollection.candidates``' ``where``); the
    top ``k`` is taken among them, so a filter that keeps 1% of the images still yields ``k`` of those."""
    index.begin_query()
    if prune is None:
        scores = accumulate(index, terms, weights)
    else:
        scores = accumulate_pruned(index, terms, weights, prune)
        k = math.ceil(k * prune.pool)
    allowed = apply_filters(index, scores, filters) if filters else None
    index.mask_dead(scores)  # removed images still in posting files score nothing
    if only is not None:
        only = only[only < scores.size]  # ids past the postings (none expected) hold no word: no score
        if allowed is None:
            allowed = only
        else:
            allowed = np.intersect1d(allowed, only, assume_unique=True)
    return top_k(scores, k, among=allowed)
