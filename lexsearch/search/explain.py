"""The words behind a match: per-word contributions ``q_w * d_w`` of the scored vectors, merged for display;
and what the model does not know about a query's words."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

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
