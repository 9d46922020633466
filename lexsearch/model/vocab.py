"""The lexical vocabulary: which tokenizer pieces become dimensions, and how to show them as words.

LexVLA keeps 17,149 of Llama 2's 32,000 pieces; the exact filter is not published. Our rule [choice],
``ascii-lower`` (the default): keep the pieces that are, after their word-start marker, made only of lower-case
ASCII letters. That drops special tokens, byte-fallback pieces (``<0x0A>``), punctuation, digits, whitespace,
punctuation glued to a word (``middle.``), other scripts, accented pieces and the capitalised twins of
lower-case words (queries are matched case-insensitively, so ``Horse`` finds ``horse``). On Mistral-7B v0.1's
SentencePiece model (32,000 pieces, Llama-2 family) it keeps 17,549, within 2.3% of the paper's 17,149.
``latin`` (the earlier rule) keeps every piece whose letters are all Latin, any case, punctuation allowed
(25,961 there). Sub-word pieces are kept (the paper keeps them) and shown marked. No stop-word list: the
overuse penalty handles frequent junk.

What a model was trained on is narrower than its vocabulary: the words of its training captions, recorded in
its config (``ModelConfig.caption_words``, :func:`caption_words`). A query word outside them gets a note
(:func:`unknown_words`), and the words of the in-context prompt that no caption used (``focus``, ``lies``,
``important`` ...) are masked out of every vector (:func:`prompt_only_columns`): the LM reads them in every
prompt, so they are what an image the model cannot name drifts to, and no caption ever taught them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

# Markers tokenizers use for "this piece starts a word": SentencePiece (Llama) and byte-level BPE (GPT-2).
WORD_START_MARKERS = ("\u2581", "\u0120")
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# How a continuation piece (the middle or end of a word) is shown: "##ing", as BERT does.
CONTINUATION_MARK = "##"


def _strip_marker(piece: str) -> tuple[str, bool]:
    """(text, starts_word) of a tokenizer piece."""
    for marker in WORD_START_MARKERS:
        if piece.startswith(marker):
            return piece[len(marker) :], True
    return piece, False


def _is_latin_word(text: str) -> bool:
    has_letter = False
    for ch in text:
        if ch.isalpha():
            has_letter = True
            if not unicodedata.name(ch, "").startswith("LATIN"):
                return False
    return has_letter


_ASCII_LOWER = re.compile(r"^[a-z]+$")
VOCAB_RULES = ("ascii-lower", "latin")


def _keep(text: str, rule: str) -> bool:
    if rule == "ascii-lower":
        return bool(_ASCII_LOWER.match(text))
    if rule == "latin":
        return _is_latin_word(text)
    raise ValueError(f"unknown vocabulary rule {rule!r}; choose one of {', '.join(VOCAB_RULES)}")


def filter_vocabulary(tokenizer, rule: str = "ascii-lower") -> list[int]:
    """Ids of the tokenizer pieces that become lexical dimensions, ascending (the documented rule above)."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    kept = []
    for token_id, piece in enumerate(pieces):
        if token_id in special or piece is None or _BYTE_PIECE.match(piece):
            continue
        text, _ = _strip_marker(piece)
        if _keep(text, rule):
            kept.append(token_id)
    return kept


# A word of a caption or query for the trained-words record: a run of letters (no digits, no "_"), any script.
_LETTERS = re.compile(r"[^\W\d_]+")


def text_words(text: str) -> list[str]:
    """The words of a text as the trained-words record keeps them: runs of letters, lower case."""
    return _LETTERS.findall(text.lower())


def caption_words(texts: Iterable[str]) -> set[str]:
    """The distinct words (:func:`text_words`) of ``texts``."""
    words: set[str] = set()
    for text in texts:
        words.update(text_words(text))
    return words


def unknown_words(words: Iterable[str], trained: Iterable[str]) -> list[str]:
    """The words (in order, once each) that are not words of the model's training captions ``trained``.

    A word made of several letter runs ("t-shirt") is unknown when any of them is. An empty record (a
    checkpoint written before the record existed) knows nothing to compare with: no word is flagged.
    """
    known = trained if isinstance(trained, (set, frozenset)) else set(trained)
    if not known:
        return []
    out: dict[str, None] = {}
    for word in words:
        parts = text_words(word)
        if parts and any(p not in known for p in parts):
            out.setdefault(word)
    return list(out)


def word_key(word: str) -> str:
    """What makes two display words one word: case and the continuation mark do not count."""
    return word.removeprefix(CONTINUATION_MARK).lower()


def display_words(pieces: Sequence[str]) -> list[str]:
    """Readable words for kept pieces: a word-initial piece as itself, a continuation piece as ``##piece``.

    ``pieces`` are the tokenizer pieces of the kept ids. In a tokenizer without word-start markers
    (WordPiece), pieces are shown as they are (it marks continuations with "##" itself).
    """
    uses_markers = any(p and p[0] in WORD_START_MARKERS for p in pieces)
    words = []
    for piece in pieces:
        text, starts = _strip_marker(piece)
        words.append(
            text
            if starts or not uses_markers or text.startswith(CONTINUATION_MARK)
            else CONTINUATION_MARK + text
        )
    return words


def vocab_hash(vocab_ids: Sequence[int], words: Sequence[str]) -> str:
    """A short hash of the vocabulary (ids and their words): two models with one hash share dimensions."""
    digest = hashlib.sha256()
    for token_id, word in zip(vocab_ids, words):
        digest.update(f"{token_id}\t{word}\n".encode())
    return digest.hexdigest()[:16]


class Vocabulary:
    """The lexical dimensions of a model: kept tokenizer ids, their display words, and query word lookup.

    Built on the fast tokenizer's backend (the ``tokenizers`` library), so it loads in milliseconds without
    torch: a cached query needs only this, never the networks.
    """

    def __init__(self, backend, vocab_ids: Sequence[int]) -> None:
        self.backend = backend  # tokenizers.Tokenizer
        self.ids = [int(i) for i in vocab_ids]
        self.words = display_words([backend.id_to_token(i) or "" for i in self.ids])
        self.hash = vocab_hash(self.ids, self.words)
        self._column = {tid: col for col, tid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, tokenizer_dir: str, vocab_ids: Sequence[int]) -> Vocabulary:
        """From a folder holding ``tokenizer.json``, else (a hub id) through transformers."""
        path = Path(tokenizer_dir) / "tokenizer.json"
        if path.is_file():
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(str(path)), vocab_ids)
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(tokenizer_dir).backend_tokenizer, vocab_ids)

    def pieces(self, word: str) -> list[int]:
        """Tokenizer ids of a word as it appears inside a text (after a space).

        SentencePiece tokenizers mark the start of a text as a word start themselves (a leading space
        would double it: Llama 2's hub normaliser writes " horse" as ``▁▁`` + ``hor`` + ``se``); byte-level
        BPE needs the space. A bare word-start marker is no part of the word: SentencePiece writes a word
        whose first letters have no ``▁``-piece as ``▁`` + ``ire``.
        """
        word = word.strip()
        ids = self.backend.encode(word, add_special_tokens=False).ids
        first = self.backend.id_to_token(ids[0]) if ids else ""
        if not (first and first[0] in WORD_START_MARKERS):
            ids = self.backend.encode(" " + word, add_special_tokens=False).ids
        return [i for i in ids if self.backend.id_to_token(i) not in WORD_START_MARKERS]

    def word_terms(self, word: str) -> list[int]:
        """Columns of a word's pieces that are kept dimensions; [] if none is."""
        return [self._column[t] for t in self.pieces(word) if t in self._column]

    def decode(self, row, top_k: int = 10) -> list[tuple[str, float]]:
        """The ``top_k`` strongest words of one vector (CSR row or 1-d array), strongest first."""
        import numpy as np

        if hasattr(row, "indices"):
            row = row.tocsr()
            cols, vals = row.indices, row.data
        else:
            arr = np.asarray(row).ravel()
            cols = np.flatnonzero(arr)
            vals = arr[cols]
        order = np.argsort(-vals, kind="stable")[:top_k]
        return [(self.words[int(cols[i])], float(vals[i])) for i in order]

    def columns(self, words: Iterable[str]) -> set[int]:
        """Kept columns of the pieces of ``words`` (each as it appears inside a text), all at once."""
        words = [w.strip() for w in words if w.strip()]
        cols: set[int] = set()
        # One batch call (Rust, parallel): a large model's record holds tens of thousands of words.
        for ids, word in zip(self.backend.encode_batch(words, add_special_tokens=False), words):
            ids = ids.ids
            first = self.backend.id_to_token(ids[0]) if ids else ""
            if not (first and first[0] in WORD_START_MARKERS):
                ids = self.backend.encode(" " + word, add_special_tokens=False).ids
            cols.update(self._column[t] for t in ids if t in self._column)
        return cols


def prompt_only_columns(vocab: Vocabulary, prompt: str, trained: Iterable[str]) -> list[int]:
    """Columns of the prompt's words (its frame and its demonstration) that no training caption used.

    ``prompt`` is the whole prompt text around ``[TEXT]``; ``trained`` the record of caption words. A piece
    that a caption word also needs ("▁focus" of "focused") stays: only pieces no caption word has are taken
    out. An empty record gives none (nothing is known about the captions).
    """
    trained = set(trained)
    if not trained:
        return []
    prompt_words = caption_words([prompt.replace("[TEXT]", " ")]) - trained
    if not prompt_words:
        return []
    return sorted(vocab.columns(sorted(prompt_words)) - vocab.columns(sorted(trained)))
