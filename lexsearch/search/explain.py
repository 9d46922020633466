"""The words behind a match: per-word contributions ``q_w * d_w`` of the scored vectors, merged for display;
and what the model does not know about a query's words."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lexsearch.errors import UsageError
from lexsearch.model.vocab import unknown_words, word_key

# Words shown per result (the rest is summed into ``Result.rest`` so words + rest == lexical).
EXPLAIN_WORDS = 6


def contributions(terms: np.ndarray, weights: np.ndarray, qvec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(term ids, q_w * d_w) of every shared word, largest first: the exact decomposition of ``q . d``."""
    contrib = qvec[terms] * weights
    nz = np.flatnonzero(contrib > 0)
    order = nz[np.argsort(-contrib[nz], kind="stable")]
    return np.asarray(terms)[order], contrib[order]


def merge_words(words: Sequence[str], values: Sequence[float]) -> list[tuple[str, float]]:
    """Merge pieces that read as the same word ("Horse", "horse", "##horse") and sort, largest first.

    The merged word is shown as its strongest piece, so the reader sees the form the model used most. The
    key is the one the query rules use (:func:`lexsearch.model.vocab.word_key`), so ``Horse`` in a query and
    ``horse`` in an explanation are one word.
    """
    merged: dict[str, list] = {}
    for word, value in zip(words, values):
        key = word_key(word)
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


def shown_columns(shown_words: Sequence[str]) -> dict[str, int]:
    """Each vocabulary entry as explanations show it (``##board``, ``red``) -> its first column."""
    columns: dict[str, int] = {}
    for col, w in enumerate(shown_words):
        columns.setdefault(w, col)
    return columns


def heatmap_columns(
    word: str,
    word_terms: Callable[[str], Sequence[int]],
    words: Callable[[Sequence[int]], list[str]],
    entries: Mapping[str, int] | None = None,
) -> list[int]:
    """The one vocabulary column a heat map of ``word`` draws: the rule of ``lexsearch explain --word`` and
    of the page's ``/api/heatmap/ID?word=``, so both draw the same word or refuse it with the same line.

    A vocabulary entry as explanations show it (``entries``: shown form -> column, e.g. ``##board``) is
    that column; any other word is what the tokenizer makes of it (``word_terms``), which must be one
    column: a word of several pieces is refused with its pieces named, as one piece's map would pass for the
    whole word's. Raises :class:`UsageError` for a word the vocabulary cannot represent.
    """
    if entries is not None and word in entries:
        return [int(entries[word])]
    cols = [int(c) for c in word_terms(word)]
    if not cols:
        raise UsageError(f"{word!r} is not in the model's vocabulary")
    if len(cols) > 1:
        pieces = ", ".join(words(cols))
        raise UsageError(f"{word!r} is not one vocabulary word (pieces: {pieces}); pass one of them")
    return cols


def unknown_word_note(words: Sequence[str], trained: Sequence[str]) -> str | None:
    """One line naming the query ``words`` that no training caption used (``trained``, the model's record),
    or None when all are known or the model has no record.

    The search still runs: a real LM may place a new word near ones it was trained on, but nothing in
    training tied that word to images, so whatever comes back for it is a guess and is called one.
    """
    unknown = unknown_words(words, trained)
    if not unknown:
        return None
    names = ", ".join(f"'{w}'" for w in unknown)
    if len(unknown) == 1:
        return f"{names} is not a word this model was trained on; results for it are guesses"
    return f"{names} are not words this model was trained on; results for them are guesses"
