"""The query path: parse, candidates over postings, exact re-rank, and the words behind every match.

    results = search(collection, encoder, 'white horse -night +beach', top=10)
    results[0].words      # [("horse", 0.21), ("white", 0.12), ...]: they sum to results[0].lexical

Stages (DESIGN.md, "Query path"):

1. :func:`parse_query` splits words, ``"phrases"``, ``+must`` and ``-exclude``; :func:`resolve_operators`
   maps the operator words to vocabulary columns through the encoder's tokenizer (``word_terms``).
2. The text is encoded once (or read from the collection's query cache); the strongest query terms go to
3. :func:`candidates`: term-at-a-time accumulation of ``q_t * postings_t`` into one float32 score array
   (:class:`PostingsIndex` holds the postings in the layout the kernels want), the +/- hard filters, and the
   top ~1000 by a sampled threshold. A pruned mode (:class:`PruneConfig`) trades exactness for speed.
4. :func:`rerank`: the exact lexical score of each candidate from its forward row and the *full* query
   vector, fused with the dense (FAISS) score. An image that holds none of the query's own words (only
   words the text encoder associates with them) is not a match unless ``expand`` is asked for: the honest
   empty answer instead of the nearest random images.
5. :func:`explain_rows`: per result the contributions ``q_w * d_w`` of the very vectors that were scored,
   merged into readable words; they sum to the lexical score.

The core never prints: formatting helpers return strings and dicts for the CLI.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from lexsearch.errors import UsageError

logger = logging.getLogger(__name__)

# How many of the query's strongest terms the candidate stage scores. A LexVLA text vector has hundreds of
# active terms, but its mass sits in a few dozen; the re-rank still uses the full vector.
QUERY_TERMS = 32
# Candidates handed to the re-rank. Enough that the exact re-score rarely misses a top-10 result whose
# truncated-query score was mediocre, small enough that reading their forward rows stays cheap.
CANDIDATES = 1000
# Weight of the dense (FAISS) cosine in the fused score ``(1 - a) * lexical + a * dense`` when the collection
# has a dense head. 0 ranks by words alone. [choice] until the eval shows the gain on a real model: a small
# weight breaks the many near-ties of short lexical queries without letting the dense side overrule words.
DENSE_WEIGHT = 0.3
# A term whose postings cover at least this fraction of the images is kept as a dense float32 column:
# a vectorised multiply-add over the score array (~0.25 ms per million images) beats scattering 100k+
# postings (~2.8 ns each); below it the scatter wins and the column would waste memory.
DENSE_MIN_FRACTION = 0.10
# Words shown per result (the rest is summed into ``Result.rest`` so words + rest == lexical).
EXPLAIN_WORDS = 6


# ============================================================================================ parsing
@dataclass
class ParsedQuery:
    """A query split into what is encoded and what is a hard filter."""

    text: str  # what the text encoder sees: plain words, phrases and +must words (quotes dropped)
    terms: list[str] = field(default_factory=list)  # the positive parts, in order (words and phrases)
    must: list[str] = field(default_factory=list)  # +word / +"phrase"
    exclude: list[str] = field(default_factory=list)  # -word / -"phrase"


# An optional +/- operator, then a quoted phrase (the closing quote may be missing) or a bare word.
_TOKEN = re.compile(r'([+-]?)(?:"([^"]*)"?|(\S+))')


def parse_query(text: str) -> ParsedQuery:
    """Split ``white horse "red car" +beach -night`` into words, phrases, must and exclude parts.

    Only a leading ``+``/``-`` is an operator (``t-shirt`` stays one word); a lone ``+`` or ``-`` is ignored.
    Raises :class:`UsageError` for an empty query or one that only excludes.
    """
    parsed = ParsedQuery(text="")
    for match in _TOKEN.finditer(text or ""):
        op, phrase, word = match.group(1), match.group(2), match.group(3)
        part = " ".join((phrase if phrase is not None else word or "").split())
        if not part or not re.search(r"\w", part):
            continue
        if op == "-":
            parsed.exclude.append(part)
        else:
            parsed.terms.append(part)
            if op == "+":
                parsed.must.append(part)
    if not parsed.terms:
        if parsed.exclude:
            raise UsageError(
                "The query only excludes words (-word); add at least one word to search for, "
                'e.g. \'horse -night\'.'
            )
        raise UsageError("The query is empty; give some words to search for, e.g. 'white horse'.")
    parsed.text = " ".join(parsed.terms)
    return parsed


@dataclass(frozen=True)
class Clause:
    """One +/- operand (a word or a phrase) as vocabulary columns: an image matches it if it has them all.

    A multi-piece word ("skate", "##board") or a phrase needs every piece: asking for any one piece would
    turn ``-skateboard`` into ``-board``.
    """

    text: str
    terms: tuple[int, ...]


@dataclass
class Filters:
    must: list[Clause] = field(default_factory=list)
    exclude: list[Clause] = field(default_factory=list)
    # An image must match at least one of these (the query's own words): see :func:`query_word_clauses`.
    any_of: list[Clause] | None = None

    def terms(self) -> set[int]:
        return {t for c in (*self.must, *self.exclude, *(self.any_of or ())) for t in c.terms}

    def __bool__(self) -> bool:
        return bool(self.must or self.exclude or self.any_of is not None)


def query_word_clauses(parsed: ParsedQuery, word_terms: Callable[[str], Sequence[int]]) -> list[Clause]:
    """One clause per word of the query's positive parts (all its pieces), for the "shares a query word" rule.

    The text encoder also lights up words the query does not contain (its associations); an image that
    shares only those is the "nearest random image" a search must not pass off as a match. Words the
    vocabulary cannot represent give no clause.
    """
    clauses = {}
    for part in parsed.terms:
        for word in re.findall(r"[^\W_]+", part):
            cols = tuple(sorted({int(t) for t in word_terms(word)}))
            if cols:
                clauses.setdefault(cols, Clause(word, cols))
    return list(clauses.values())


def resolve_operators(parsed: ParsedQuery, word_terms: Callable[[str], Sequence[int]]) -> Filters:
    """Map the +/- operands to vocabulary columns with ``word_terms`` (e.g. ``Encoder.word_terms``).

    A ``+word`` the vocabulary cannot represent is an error (it could only ever match nothing); a ``-word``
    it cannot represent excludes nothing, which is logged.
    """
    filters = Filters()
    for kind, parts in (("must", parsed.must), ("exclude", parsed.exclude)):
        for part in parts:
            terms: list[int] = []
            missing = []
            for word in re.findall(r"[^\W_]+", part):
                cols = [int(t) for t in word_terms(word)]
                if not cols:
                    missing.append(word)
                terms.extend(cols)
            terms = sorted(set(terms))
            sign = "+" if kind == "must" else "-"
            if missing or not terms:
                if kind == "must":
                    raise UsageError(
                        f"'{sign}{part}': {', '.join(repr(w) for w in missing) or 'it'} is not in the "
                        "model's vocabulary, so no image can contain it; drop the '+' to search it softly."
                    )
                logger.warning("'-%s' is not in the model's vocabulary; it excludes nothing", part)
                continue
            getattr(filters, kind).append(Clause(part, tuple(terms)))
    return filters


# ============================================================================================ postings
@dataclass
class TermPostings:
    """One term's postings in scoring layout: sparse (ids, weights) or, for a frequent term, a dense column.

    ``ids`` are ``intp`` because numpy's fancy indexing converts any other integer type on every call,
    which doubles the scatter's cost; ``weights`` float32 (or uint8 with ``scale`` in pruned lists).
    """

    df: int
    max_weight: float
    ids: np.ndarray | None = None  # intp, ascending
    weights: np.ndarray | None = None  # float32, or uint8 codes when ``scale`` is set
    dense: np.ndarray | None = None  # float32 (n_slots,): the weight per image id, 0 where absent
    scale: float | None = None  # pruned lists: weight = code * scale

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ids, self.weights, self.dense) if a is not None)


class PostingsIndex:
    """Postings of the terms queries ask for, converted once to the layout the kernels want and kept.

    ``fetch(term_ids) -> {term: (ids ascending, weights)}`` is ``Collection.postings`` (or an in-memory
    source in the benchmark); ``n_slots`` = largest image id + 1, the length of the score array. Converted
    terms stay cached, so a long-lived process (server, demo, benchmark) pays the conversion once per term;
    it makes a new index when the collection changes (``meta["generation"]``), as the cache never expires.
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

    @classmethod
    def from_collection(cls, collection: Any, **kwargs: Any) -> PostingsIndex:
        return cls(collection.max_image_id + 1, collection.postings, **kwargs)

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
                self._terms[t] = self._convert(*fetched[t]) if t in fetched else None
        return {t: p for t in wanted if (p := self._terms[t]) is not None}

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
        base = self.get([term]).get(term)
        if base is None:
            return None
        if base.dense is not None:
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


# ============================================================================================ candidates
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
    for tp, q in dense[1:]:
        # Two passes over cache-resident arrays. BLAS saxpy does it in one, but OpenBLAS threads it and,
        # on a busy machine, its spinning threads turn 0.1 ms into 100 ms at the tail; numpy stays steady.
        np.multiply(tp.dense, q, out=tmp)
        np.add(scores, tmp, out=scores)
    for tp, q in pairs:
        if tp.dense is None:
            # ids are unique within a term, so fancy-index += is an exact scatter-add (np.add.at: 10x slower).
            # Pruned lists hold uint8 codes: the scale folds into the query weight.
            scores[tp.ids] += tp.weights * np.float32(q if tp.scale is None else q * tp.scale)
    return scores


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
    """Boolean mask over image ids: the images holding every term of the clause (None: no image does)."""
    postings = index.get(clause.terms)
    if len(postings) < len(clause.terms):
        return None
    mask: np.ndarray | None = None
    for t in clause.terms:
        tp = postings[t]
        if tp.dense is not None:
            has = tp.dense > 0
        else:
            has = np.zeros(index.n_slots, bool)
            has[tp.ids] = True
        mask = has if mask is None else np.logical_and(mask, has, out=mask)
    return mask


def apply_filters(index: PostingsIndex, scores: np.ndarray, filters: Filters) -> np.ndarray | None:
    """Zero the scores of excluded images; returns the ids allowed by the +must clauses (None: no clause)."""
    for clause in filters.exclude:
        tp = index.get(clause.terms)
        if len(clause.terms) == 1 and clause.terms[0] in tp and tp[clause.terms[0]].ids is not None:
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
    return None if allowed is None else np.flatnonzero(allowed)


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
) -> Candidates:
    """The candidate stage: accumulate, filter, take the top ``k`` (``prune.pool * k`` when pruned)."""
    if prune is None:
        scores = accumulate(index, terms, weights)
    else:
        scores = accumulate_pruned(index, terms, weights, prune)
        k = math.ceil(k * prune.pool)
    allowed = apply_filters(index, scores, filters) if filters else None
    return top_k(scores, k, among=allowed)


# ============================================================================================ re-rank
@dataclass
class ForwardRows:
    """Forward rows (sparse image vectors) of some images, concatenated CSR-style, in ``image_ids`` order."""

    image_ids: np.ndarray  # (m,) intp
    indptr: np.ndarray  # (m + 1,) int64
    terms: np.ndarray  # (nnz,) vocabulary columns
    weights: np.ndarray  # (nnz,) float32

    @classmethod
    def from_mapping(
        cls, image_ids: Sequence[int] | np.ndarray, rows: Mapping[int, tuple[np.ndarray, np.ndarray]]
    ) -> ForwardRows:
        """From ``Collection.forward`` output; an id without a row (deleted meanwhile) gets an empty row."""
        ids = np.asarray(image_ids, dtype=np.intp)
        empty = (np.empty(0, np.int32), np.empty(0, np.float32))
        parts = [rows.get(int(i), empty) for i in ids.tolist()]
        lengths = np.fromiter((p[0].size for p in parts), np.int64, len(parts))
        indptr = np.zeros(len(parts) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        terms = np.concatenate([p[0] for p in parts]) if parts else empty[0]
        weights = np.concatenate([p[1] for p in parts]).astype(np.float32) if parts else empty[1]
        return cls(ids, indptr, terms.astype(np.int32), weights)

    @classmethod
    def from_csr(cls, matrix: Any, image_ids: np.ndarray) -> ForwardRows:
        """Rows of an in-memory scipy CSR (images x terms) whose row numbers are the image ids."""
        sub = matrix[np.asarray(image_ids, dtype=np.intp)]
        return cls(np.asarray(image_ids, np.intp), sub.indptr.astype(np.int64), sub.indices, sub.data)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.terms[a:b], self.weights[a:b]


def query_vector(terms: np.ndarray, weights: np.ndarray, vocab_size: int) -> np.ndarray:
    """The query as a dense (V,) float32 lookup table (68 KB at V = 17k: lives in cache while scoring)."""
    qvec = np.zeros(vocab_size, np.float32)
    qvec[terms] = weights
    return qvec


def lexical_scores(rows: ForwardRows, qvec: np.ndarray) -> np.ndarray:
    """Exact ``q . d`` of every row: the LexVLA score over all the query's terms."""
    # scipy's CSR mat-vec is a C loop over the rows (~1 ns a stored entry), 5x numpy's gather + segment sum.
    matrix = sp.csr_matrix(
        (rows.weights, rows.terms, rows.indptr), shape=(rows.image_ids.size, qvec.size), copy=False
    )
    return np.asarray(matrix @ qvec, dtype=np.float32)


@dataclass
class Ranked:
    ids: np.ndarray  # intp, best first
    score: np.ndarray  # float32 fused score
    lexical: np.ndarray  # float32 exact lexical score
    dense: np.ndarray | None  # float32 dense cosine, or None without a dense head
    positions: np.ndarray  # index of each result's row in ``rows``
    rows: ForwardRows  # the forward rows that were scored (explanations read them back)


def rerank(
    rows: ForwardRows,
    qvec: np.ndarray,
    dense: np.ndarray | None = None,
    dense_weight: float = 0.0,
    min_score: float | None = None,
) -> Ranked:
    """Exact lexical score of each row, fused with the dense scores, best first.

    Rows with a zero lexical score are dropped whatever their dense score: an image that shares no word
    with the query is not a match, and showing it would be the "nearest random image" the design forbids.
    """
    lexical = lexical_scores(rows, qvec)
    fused = lexical
    if dense is not None and dense_weight > 0:
        fused = ((1 - dense_weight) * lexical + dense_weight * dense).astype(np.float32)
    keep = lexical > 0
    if min_score is not None:
        keep &= fused >= min_score
    sel = np.flatnonzero(keep)
    order = sel[np.lexsort((rows.image_ids[sel], -fused[sel]))]
    return Ranked(
        ids=rows.image_ids[order],
        score=fused[order],
        lexical=lexical[order],
        dense=None if dense is None else dense[order],
        positions=order,
        rows=rows,
    )


# ============================================================================================ explanations
def contributions(terms: np.ndarray, weights: np.ndarray, qvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(term ids, q_w * d_w) of every shared word, largest first: the exact decomposition of ``q . d``."""
    contrib = qvec[terms] * weights
    nz = np.flatnonzero(contrib > 0)
    order = nz[np.argsort(-contrib[nz], kind="stable")]
    return np.asarray(terms)[order], contrib[order]


def merge_words(words: Sequence[str], values: Sequence[float]) -> list[tuple[str, float]]:
    """Merge pieces that read as the same word ("Horse", "horse", "##horse") and sort, largest first.

    The merged word is shown as its strongest piece, so the reader sees the form the model used most.
    """
    merged: dict[str, list] = {}
    for word, value in zip(words, values):
        key = word.removeprefix("##").lower()
        slot = merged.setdefault(key, [word, 0.0, -1.0])
        slot[1] += float(value)
        if value > slot[2]:
            slot[0], slot[2] = word, float(value)
    return sorted(((w, total) for w, total, _ in merged.values()), key=lambda wt: -wt[1])


def explain_row(
    terms: np.ndarray, weights: np.ndarray, qvec: np.ndarray, words: Callable[[Sequence[int]], list[str]]
) -> list[tuple[str, float]]:
    """Every shared word of one image and its contribution (they sum to the lexical score), largest first."""
    t, c = contributions(terms, weights, qvec)
    return merge_words(words(t.tolist()), c.tolist())


# ============================================================================================ search
@dataclass
class Result:
    """One ranked image and the words behind it (``words`` + ``rest`` == ``lexical``)."""

    rank: int
    image_id: int
    path: str
    score: float  # what the ranking used: lexical, or fused with the dense score
    lexical: float  # exact q . d over the query's words
    dense: float | None  # dense cosine, None when not used
    words: list[tuple[str, float]]  # strongest shared words and their contributions q_w * d_w
    rest: float = 0.0  # sum of the contributions of the shared words not listed


def _row_of(encoded: Any) -> tuple[Any, np.ndarray | None]:
    """(csr (1, V), dense (D,) or None) of a one-row ``Encoded`` / ``CachedQuery``."""
    dense = encoded.dense
    return encoded.sparse[0].tocsr(), None if dense is None else np.asarray(dense, np.float32).reshape(-1)


def encode_query(
    collection: Any, encoder: Any, text: str, use_cache: bool = True
) -> tuple[Any, np.ndarray | None]:
    """Encode ``text`` with the model's prompt, or take it from the collection's query cache.

    A fresh encoding is rounded to float16 like the cache stores it, so a query ranks the same the first
    time and every time after.
    """
    if use_cache:
        cached = collection.cached_query(text)
        if cached is not None:
            logger.debug("query cache hit: %r", text)
            return _row_of(cached)
    sparse, dense = _row_of(encoder.encode_texts([text]))
    sparse.data = sparse.data.astype(np.float16).astype(np.float32)
    if use_cache:
        collection.cache_query(text, sparse, dense)
    return sparse, dense


def _strongest(terms: np.ndarray, weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if terms.size > n:
        top = np.argpartition(-weights, n - 1)[:n]
        terms, weights = terms[top], weights[top]
    return terms.astype(np.intp), weights.astype(np.float32)


def _dense_head(collection: Any, q_dense: np.ndarray | None) -> bool:
    return q_dense is not None and int(collection.meta.get("dense_dim") or 0) > 0


def search(
    collection: Any,
    encoder: Any,
    query_text: str,
    top: int = 10,
    *,
    rerank_candidates: bool = True,
    min_score: float | None = None,
    dense_weight: float = DENSE_WEIGHT,
    prune: PruneConfig | None = None,
    query_terms: int = QUERY_TERMS,
    n_candidates: int = CANDIDATES,
    explain_words: int = EXPLAIN_WORDS,
    index: PostingsIndex | None = None,
    use_cache: bool = True,
    expand: bool = False,
) -> list[Result]:
    """Search ``collection`` by text; see the module docstring for the stages.

    ``rerank_candidates=False`` ranks by the candidate stage alone (the strongest ``query_terms`` terms; no
    dense fusion). Pass a long-lived ``index`` to keep converted postings between queries. An empty list is
    an honest "no image has a word of this query". ``expand`` also admits images that share only words the
    model associates with the query (ranked as usual), not the query's own words.
    """
    if top <= 0:
        raise UsageError("--top must be at least 1.")
    parsed = parse_query(query_text)
    filters = resolve_operators(parsed, encoder.word_terms) if parsed.must or parsed.exclude else Filters()
    if not expand:
        filters.any_of = query_word_clauses(parsed, encoder.word_terms)
        if not filters.any_of:
            return []  # no word of the query is in the vocabulary: nothing can honestly match it
    q_sparse, q_dense = encode_query(collection, encoder, parsed.text, use_cache)
    if q_sparse.nnz == 0:
        return []
    vocab = max(int(encoder.vocab_size), int(q_sparse.shape[1]))
    terms, weights = _strongest(q_sparse.indices, q_sparse.data, query_terms)
    index = index or PostingsIndex.from_collection(collection)
    cands = candidates(index, terms, weights, filters, k=max(n_candidates, top), prune=prune)
    if not rerank_candidates:
        # The candidate scores cover only the strongest terms: explain (and show) exactly those.
        cands = Candidates(cands.ids[: top * 2], cands.scores[: top * 2])
        qvec = query_vector(terms, weights, vocab)
        dense = None
    else:
        qvec = query_vector(q_sparse.indices, q_sparse.data, vocab)
        use_dense = dense_weight > 0 and _dense_head(collection, q_dense)
        dense = collection.dense_scores(q_dense, cands.ids) if use_dense else None
    rows = ForwardRows.from_mapping(cands.ids, collection.forward(cands.ids.tolist()))
    ranked = rerank(rows, qvec, dense, dense_weight if dense is not None else 0.0, min_score)
    return _results(collection, encoder, ranked, qvec, top, explain_words)


def search_by_image(
    collection: Any,
    encoder: Any,
    image: Any,
    top: int = 10,
    *,
    min_score: float | None = None,
    explain_words: int = EXPLAIN_WORDS,
    index: PostingsIndex | None = None,
) -> list[Result]:
    """Images like ``image`` (a path or PIL image): a dense FAISS search when the collection has a dense
    head, otherwise a lexical search with the image's own sparse vector as the query. Shared words are
    shown either way (an image found by the dense side may share none: its ``words`` are then empty)."""
    if top <= 0:
        raise UsageError("--top must be at least 1.")
    q_sparse, q_dense = _row_of(encoder.encode_images([image]))
    vocab = max(int(encoder.vocab_size), int(q_sparse.shape[1]))
    qvec = query_vector(q_sparse.indices, q_sparse.data, vocab)
    if _dense_head(collection, q_dense):
        ids, scores = collection.dense_search(q_dense, top)
        rows = ForwardRows.from_mapping(ids, collection.forward(ids.tolist()))
        lexical = lexical_scores(rows, qvec)
        keep = np.ones(ids.size, bool) if min_score is None else scores >= min_score
        pos = np.flatnonzero(keep)
        ranked = Ranked(ids[pos].astype(np.intp), scores[pos], lexical[pos], scores[pos], pos, rows)
    else:
        if q_sparse.nnz == 0:
            return []
        terms, weights = _strongest(q_sparse.indices, q_sparse.data, QUERY_TERMS)
        index = index or PostingsIndex.from_collection(collection)
        cands = candidates(index, terms, weights, k=max(CANDIDATES, top))
        rows = ForwardRows.from_mapping(cands.ids, collection.forward(cands.ids.tolist()))
        ranked = rerank(rows, qvec, min_score=min_score)
    return _results(collection, encoder, ranked, qvec, top, explain_words)


def _results(
    collection: Any, encoder: Any, ranked: Ranked, qvec: np.ndarray, top: int, explain_words: int
) -> list[Result]:
    """The first ``top`` ranked images that still have a path, with their explanations."""
    want = ranked.ids[: top * 2].tolist()  # a few spare: an image deleted since the postings were read
    paths = collection.image_paths(want)
    results: list[Result] = []
    for j, image_id in enumerate(ranked.ids.tolist()):
        if len(results) == top or j >= len(want):
            break
        path = paths.get(image_id)
        if path is None:
            continue
        words = explain_row(*ranked.rows.row(int(ranked.positions[j])), qvec, encoder.words)
        shown = words[:explain_words] if explain_words >= 0 else words
        lexical = float(ranked.lexical[j])
        results.append(
            Result(
                rank=len(results) + 1,
                image_id=int(image_id),
                path=path,
                score=float(ranked.score[j]),
                lexical=lexical,
                dense=None if ranked.dense is None else float(ranked.dense[j]),
                words=shown,
                rest=float(sum(w for _, w in words[len(shown) :])),
            )
        )
    return results


def load_encoder(collection: Any, model_dir: str | None = None, device: str = "auto") -> Any:
    """The text/image encoder of ``collection``: its recorded model folder (or ``model_dir``), checked to
    be the very model that wrote the collection (different vectors would score nonsense)."""
    import os

    from lexsearch.errors import ModelError
    from lexsearch.index import model_meta
    from lexsearch.index.store import check_model
    from lexsearch.model.lazy import LazyEncoder

    meta = collection.meta
    path = model_dir or meta.get("model_path")
    if not path:
        raise ModelError(f"Collection {collection.path} records no model folder; pass --model MODEL_DIR.")
    if not os.path.isdir(path):
        raise ModelError(f"No model at {path} (the collection's model folder); pass --model MODEL_DIR.")
    # The networks load only if the query is not in the cache (or searches by image).
    encoder = LazyEncoder(path, device=device)
    roots = " ".join(meta.get("roots") or ["DIR"])
    check_model(meta, model_meta(encoder), collection.path,
                f"lexsearch index {roots} --model {path} --collection {collection.path} --rebuild")
    return encoder


# ============================================================================================ output
def results_to_json(results: Sequence[Result]) -> list[dict[str, Any]]:
    """The ``--json`` shape: ``[{"rank", "path", "score", "words": [{"word", "weight"}]}]`` (+ details)."""
    return [
        {
            "rank": r.rank,
            "path": r.path,
            "score": round(r.score, 6),
            "lexical": round(r.lexical, 6),
            "dense": None if r.dense is None else round(r.dense, 6),
            "words": [{"word": w, "weight": round(v, 6)} for w, v in r.words],
        }
        for r in results
    ]


def format_paths(results: Sequence[Result]) -> str:
    return "".join(f"{r.path}\n" for r in results)


def format_table(results: Sequence[Result]) -> str:
    """Rank, score, path and the words with their contributions; ``+x`` is what the unlisted words add."""
    lines = [f"{'#':>3}  {'score':>6}  path"] if results else []
    for r in results:
        words = ", ".join(f"{w} {v:.3f}" for w, v in r.words)
        if r.rest > 0.0005:
            words += f" (+{r.rest:.3f} more)"
        lines.append(f"{r.rank:>3}  {r.score:6.3f}  {r.path}")
        lines.append(f"{'':>3}  {'':>6}  {words or '(no shared words)'}")
    return "\n".join(lines) + ("\n" if lines else "")
