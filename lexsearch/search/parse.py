"""Query parsing: words, ``"phrases"``, ``+must`` and ``-exclude``, and the operators as vocabulary columns."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lexsearch.errors import UsageError

logger = logging.getLogger(__name__)


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
                "e.g. 'horse -night'."
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
