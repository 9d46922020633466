"""Search a collection by text or by image: the stages of the query path, run in order."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from lexsearch.collection.interface import Where
from lexsearch.errors import UsageError
from lexsearch.search.candidates import CANDIDATES, Candidates, PruneConfig, candidates
from lexsearch.search.explain import EXPLAIN_WORDS, explain_row, unknown_word_note
from lexsearch.search.meta import SORT_CAP, split_meta
from lexsearch.search.parse import (
    Clause,
    Filters,
    content_words,
    parse_query,
    query_word_clauses,
    resolve_operators,
)
from lexsearch.search.postings import PostingsIndex
from lexsearch.search.rerank import DENSE_WEIGHT, ForwardRows, Ranked, lexical_scores, query_vector, rerank
from lexsearch.search.results import Result, Results

logger = logging.getLogger(__name__)


# How many of the query's strongest terms the candidate stage scores. A LexVLA text vector has hundreds of
# active terms, but its mass sits in a few dozen; the re-rank still uses the full vector.
QUERY_TERMS = 32


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
    key = encoder.query_key(text) if hasattr(encoder, "query_key") else text  # per text encoder
    if use_cache:
        cached = collection.cached_query(key)
        if cached is not None:
            logger.debug("query cache hit: %r", text)
            return _row_of(cached)
    sparse, dense = _row_of(encoder.encode_texts([text]))
    sparse.data = sparse.data.astype(np.float16).astype(np.float32)
    if use_cache:
        collection.cache_query(key, sparse, dense)
    return sparse, dense


def explain_text(collection: Any, encoder: Any, text: str, use_cache: bool = True) -> dict[str, Any]:
    """What ``text`` means to the model: every active word of the very vector a query with this text scores
    (parsed, encoded or read from the query cache as :func:`search` does), strongest first.

    ``{"text", "words": [{"word", "weight"}, ...]}``: the JSON of ``lexsearch explain --text`` and of a
    server's ``/api/explain?text=``. ``collection`` may be None (a bare model: no query cache).
    """
    words, _ = split_meta(text)  # photo filters (after:2023 ...) are no words of the vector
    parsed = parse_query(words)  # the query's own refusals: empty, only -words, not UTF-8, too long
    q_sparse, _ = encode_query(collection, encoder, parsed.text, use_cache and collection is not None)
    terms, weights = q_sparse.indices, q_sparse.data
    keep = np.flatnonzero(weights != 0)
    # Strongest first; equal weights by column, so the order is the same on every run and every path.
    order = keep[np.lexsort((terms[keep], -weights[keep]))]
    names = encoder.words(terms[order])
    return {
        "text": text,
        "words": [{"word": w, "weight": round(float(x), 6)} for w, x in zip(names, weights[order])],
    }


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
) -> Results:
    """Search ``collection`` by text; see the module docstring for the stages.

    ``rerank_candidates=False`` ranks by the candidate stage alone (the strongest ``query_terms`` terms; no
    dense fusion). Pass a long-lived ``index`` to keep converted postings between queries. An empty list is
    an honest "no image has a word of this query". ``expand`` also admits images that share only words the
    model associates with the query (ranked as usual), not the query's own words.
    """
    if top <= 0:
        raise UsageError("--top must be at least 1.")
    text, meta = split_meta(query_text)
    parsed = parse_query(text)
    unread = _unread_words(parsed, encoder)
    notes = _query_notes(parsed, encoder, unread)
    filters = resolve_operators(parsed, encoder.word_terms) if parsed.must or parsed.exclude else Filters()
    if not expand:
        filters.any_of = query_word_clauses(parsed, encoder.word_terms)
        if unread:
            filters.any_of = [c for c in filters.any_of if c.text not in unread]
        if not filters.any_of and not unread:
            return _noted(Results(), notes)  # no query word is in the vocabulary: nothing honestly matches it
    q_sparse, q_dense = encode_query(collection, encoder, parsed.text, use_cache)
    if q_sparse.nnz == 0:
        return _noted(Results(), notes)
    if unread:
        meaning = _meaning_clauses(q_sparse, encoder)
        notes = [*notes, _read_as_note(unread, meaning)]
        if filters.any_of is not None:
            filters.any_of = [*filters.any_of, *meaning]
    vocab = max(int(encoder.vocab_size), int(q_sparse.shape[1]))
    terms, weights = _strongest(q_sparse.indices, q_sparse.data, query_terms)
    by_date = meta.sort != "score"
    if by_date:  # every match (up to SORT_CAP) is ordered by date, not only the best-scoring ones
        n_candidates = max(n_candidates, SORT_CAP)
    k = max(n_candidates, top)
    cands = _candidate_stage(collection, index, terms, weights, filters, k, prune, meta.where)
    with_dense = None
    if not rerank_candidates and not by_date:
        # The candidate scores cover only the strongest terms: explain (and show) exactly those.
        cands = Candidates(cands.ids[: top * 2], cands.scores[: top * 2])
        qvec = query_vector(terms, weights, vocab)
    else:
        qvec = query_vector(q_sparse.indices, q_sparse.data, vocab)
        if dense_weight > 0 and _dense_head(collection, q_dense):
            with_dense = q_dense
    rows, dense = _candidate_rows(collection, cands.ids, with_dense)
    ranked = rerank(rows, qvec, dense, dense_weight if dense is not None else 0.0, min_score)
    if by_date:
        if cands.ids.size >= (k if prune is None else math.ceil(k * prune.pool)):  # the stage was full
            n = int(cands.ids.size)
            notes = [*notes, f"{n} or more images match: the best {n} are sorted by date"]
        ranked, taken = _by_date(collection, ranked, newest_first=meta.sort == "date")
        results = _results(collection, encoder, ranked, qvec, top, explain_words)
        results[:] = [r._replace(taken=taken.get(r.image_id)) for r in results]
        return _noted(results, notes)
    return _noted(_results(collection, encoder, ranked, qvec, top, explain_words), notes)


def _by_date(collection: Any, ranked: Ranked, newest_first: bool) -> tuple[Ranked, dict[int, str]]:
    """``ranked`` reordered by date taken (ties, and images with no date, by score as before), and each
    image's date."""
    if not hasattr(collection, "metadata"):
        raise UsageError("This collection cannot sort by date (it keeps no photo metadata).")
    taken = collection.metadata(ranked.ids.tolist(), ["taken"])
    dates = [(taken.get(int(i)) or {}).get("taken") or "" for i in ranked.ids.tolist()]
    order = list(range(len(dates)))  # the score order: the tie-break
    if newest_first:
        order.sort(key=lambda j: dates[j], reverse=True)  # stable: equal dates keep score order
    else:
        order.sort(key=lambda j: (dates[j] == "", dates[j]))
    idx = np.asarray(order, np.intp)
    return Ranked(
        ids=ranked.ids[idx],
        score=ranked.score[idx],
        lexical=ranked.lexical[idx],
        dense=None if ranked.dense is None else ranked.dense[idx],
        positions=ranked.positions[idx],
        rows=ranked.rows,
    ), {int(i): d for i, d in zip(ranked.ids.tolist(), dates) if d}


def _query_notes(parsed, encoder: Any, unread: list[str] = ()) -> list[str]:
    """Lines about the query as a whole: why the LM answers rather than the model's student (the encoder's
    ``note``, or its ``text_note`` for this text), and the query's words that the model was never trained on
    (none without a record; a word no image is read out on gets the read-as note instead)."""
    notes = [encoder.note] if getattr(encoder, "note", "") else []
    routed = encoder.text_note(parsed.text) if hasattr(encoder, "text_note") else ""
    if routed:
        notes.append(routed)
    trained = getattr(getattr(encoder, "config", None), "caption_words", None) or []
    words = [w for part in parsed.terms for w in content_words(part) if w not in unread]  # +must too
    note = unknown_word_note(words, trained)
    return notes + [note] if note else notes


# A query whose words no image is read out on is matched by this many of its vector's strongest words.
MEANING_WORDS = 4


def _unread_words(parsed, encoder: Any) -> list[str]:
    """The query's content words that no image can hold, for a model whose read-out covers only some words
    (``ModelConfig.image_columns``: a frozen-text mini model). [] for a model that reads images out on its
    whole vocabulary.

    Its text tower is a real LLM: "crimson" or "rouge" is a word it reads (as red), though no image is ever
    read out on it. The "shares a query word" rule would leave such a query with no match; instead it is
    matched by what the LM reads in it (:func:`_meaning_clauses`), and a note says so.
    """
    columns = getattr(getattr(encoder, "config", None), "image_columns", None)
    if not columns:
        return []
    readable = set(columns)
    unread = []
    for part in parsed.terms:
        for word in content_words(part):
            terms = encoder.word_terms(word)
            if (not terms or not set(terms) <= readable) and word not in unread:
                unread.append(word)
    return unread


def _meaning_clauses(q_sparse, encoder: Any) -> list:
    """One clause per of the query vector's ``MEANING_WORDS`` strongest words: what the LM reads in it."""
    order = np.argsort(-q_sparse.data, kind="stable")[:MEANING_WORDS]
    terms = q_sparse.indices[order]
    return [Clause(w, (int(t),)) for w, t in zip(encoder.words(terms), terms)]


def _read_as_note(unread: list[str], meaning: list) -> str:
    names = ", ".join(f"'{w}'" for w in unread)
    words = ", ".join(c.text for c in meaning)
    verb = "is no word" if len(unread) == 1 else "are no words"
    return f"{names} {verb} images are read out on; the query is matched by its meaning to the model: {words}"


def _noted(results: Results, notes: list[str]) -> Results:
    results.notes = results.notes + notes
    return results


def search_by_image(
    collection: Any,
    encoder: Any,
    image: Any,
    top: int = 10,
    *,
    min_score: float | None = None,
    explain_words: int = EXPLAIN_WORDS,
    index: PostingsIndex | None = None,
) -> Results:
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
        rows, _ = _candidate_rows(collection, ids)
        lexical = lexical_scores(rows, qvec)
        keep = np.ones(ids.size, bool) if min_score is None else scores >= min_score
        pos = np.flatnonzero(keep)
        ranked = Ranked(ids[pos].astype(np.intp), scores[pos], lexical[pos], scores[pos], pos, rows)
    else:
        if q_sparse.nnz == 0:
            return Results()
        terms, weights = _strongest(q_sparse.indices, q_sparse.data, QUERY_TERMS)
        cands = _candidate_stage(collection, index, terms, weights, None, max(CANDIDATES, top), None)
        rows, _ = _candidate_rows(collection, cands.ids)
        ranked = rerank(rows, qvec, min_score=min_score)
    return _results(collection, encoder, ranked, qvec, top, explain_words)


def _candidate_stage(
    collection: Any,
    index: PostingsIndex | None,
    terms: np.ndarray,
    weights: np.ndarray,
    filters: Filters | None,
    k: int,
    prune: PruneConfig | None,
    where: Where | None = None,
) -> Candidates:
    """The collection's own candidate stage (``SearchCollection.candidates``: postings in the embedded
    store, the sparse index in Qdrant); a long-lived ``index`` or a bare store runs it over postings here,
    restricted to the ids the collection says pass ``where``."""
    if index is None and hasattr(collection, "candidates"):
        if where:
            return collection.candidates(terms, weights, filters, k=k, prune=prune, where=where)
        return collection.candidates(terms, weights, filters, k=k, prune=prune)
    only = None
    if where:
        if not hasattr(collection, "allowed_ids"):
            raise UsageError("This collection cannot filter on photo metadata.")
        only = collection.allowed_ids(where)
    index = index or PostingsIndex.from_collection(collection)
    return candidates(index, terms, weights, filters, k=k, prune=prune, only=only)


def _candidate_rows(
    collection: Any, ids: np.ndarray, q_dense: np.ndarray | None = None
) -> tuple[ForwardRows, np.ndarray | None]:
    """The forward rows of ``ids`` in that order, and with ``q_dense`` their dense scores: from one read of
    the rows where the store offers it (``forward_block``), else through ``forward`` / ``dense_scores``."""
    if not hasattr(collection, "forward_block"):
        rows = ForwardRows.from_mapping(ids, collection.forward(ids.tolist()))
        return rows, None if q_dense is None else collection.dense_scores(q_dense, ids)
    block = collection.forward_block(ids.tolist(), dense=q_dense is not None)
    rows = ForwardRows(np.asarray(ids, np.intp), block.indptr, block.terms, block.weights)
    if q_dense is None:
        return rows, None
    dense = np.zeros(len(ids), np.float32)
    # No candidate, or none with a dense vector: the block's matrix may then be (n, 0), which the product
    # with a (D,) query refuses; their dense scores are 0 as for any image without a vector.
    if block.has_dense.any():
        dense[block.has_dense] = block.dense[block.has_dense] @ np.asarray(q_dense, np.float32).ravel()
    return rows, dense


def _results(
    collection: Any, encoder: Any, ranked: Ranked, qvec: np.ndarray, top: int, explain_words: int
) -> Results:
    """The first ``top`` ranked images that still have a path and a file, with their explanations.

    Paths are read a chunk at a time (a few spare: an image deleted since the postings were read, a file
    deleted since the last index run); each shown file costs one stat.
    """
    ids = ranked.ids.tolist()
    # A collection over files on disk says whether each is still there; one in memory has no files to lose.
    on_disk = getattr(collection, "file_exists", None)
    results = Results()
    paths: dict[int, str] = {}
    chunk = max(2 * top, 16)
    for j, image_id in enumerate(ids):
        if len(results) == top:
            break
        if j % chunk == 0:
            paths = collection.image_paths(ids[j : j + chunk])
        path = paths.get(image_id)
        if path is None:
            continue
        if on_disk is not None and not on_disk(path):
            results.stale += 1
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


def load_encoder(
    collection: Any, model_dir: str | None = None, device: str = "auto", text_encoder: str = "auto"
) -> Any:
    """The text/image encoder of ``collection``: its recorded model folder (or ``model_dir``), checked to
    be the very model that wrote the collection (different vectors would score nonsense). Queries go
    through the model's student when it has one (``text_encoder``: auto | lm | student)."""
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
    encoder = LazyEncoder(path, device=device, text_encoder=text_encoder)
    import shlex

    roots = [r for r in meta.get("roots") or [] if os.path.exists(r)] or ["DIR"]
    rebuild = ["index", *roots, "--model", os.path.abspath(path), "--collection", str(collection.path)]
    check_model(meta, model_meta(encoder), collection.path, shlex.join(["lexsearch", *rebuild, "--rebuild"]))
    return encoder
