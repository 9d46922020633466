"""The lexical vocabulary: which tokenizer pieces become dimensions, and how to show them as words.

LexVLA keeps 17,149 of Llama 2's 32,000 pieces; the exact filter is not published. Our rule [choice]:
drop special tokens, byte-fallback pieces (``<0x0A>``), pieces with no letter (punctuation, digits,
whitespace) and pieces containing a letter outside the Latin script. Sub-word pieces are kept (the paper keeps
them) and shown marked. No stop-word list: the overuse penalty handles frequent junk.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

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


def filter_vocabulary(tokenizer) -> list[int]:
    """Ids of the tokenizer pieces that become lexical dimensions, ascending (the documented rule above)."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    kept = []
    for token_id, piece in enumerate(pieces):
        if token_id in special or piece is None or _BYTE_PIECE.match(piece):
            continue
        text, _ = _strip_marker(piece)
        if _is_latin_word(text):
            kept.append(token_id)
    return kept


def display_words(tokenizer, vocab_ids: Sequence[int]) -> list[str]:
    """Readable words for the kept ids: a word-initial piece as itself, a continuation piece as ``##piece``."""
    words = []
    for piece in tokenizer.convert_ids_to_tokens(list(vocab_ids)):
        text, starts = _strip_marker(piece)
        # A tokenizer without word-start markers (WordPiece) marks continuations itself with "##".
        if starts or text.startswith(CONTINUATION_MARK) or not _uses_markers(tokenizer):
            words.append(text)
        else:
            words.append(CONTINUATION_MARK + text)
    return words


def _uses_markers(tokenizer) -> bool:
    cached = getattr(tokenizer, "_lexsearch_uses_markers", None)
    if cached is None:
        sample = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), 2000))))
        cached = any(p and p[0] in WORD_START_MARKERS for p in sample)
        tokenizer._lexsearch_uses_markers = cached
    return cached


def vocab_hash(vocab_ids: Sequence[int], words: Sequence[str]) -> str:
    """A short hash of the vocabulary (ids and their words): two models with one hash share dimensions."""
    digest = hashlib.sha256()
    for token_id, word in zip(vocab_ids, words):
        digest.update(f"{token_id}\t{word}\n".encode())
    return digest.hexdigest()[:16]
