"""Query parsing: words, ``"phrases"``, ``+must`` and ``-exclude``, and the operators as vocabulary columns."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lexsearch.errors import UsageError
from lexsearch.limits import check_query_text

logger = logging.getLogger(__name__)


@dataclass
class ParsedQuery:
    """A query split into what is encoded and what is a hard filter."""

    text: str  # what the text encoder sees: plain words, phrases and +must words (quotes dropped)
    terms: list[str] = field(default_factory=list)  # the positive parts, in order (words and phrases)
    must: list[str] = field(default_factory=list)  # +word / +"phrase"
    exclude: list[str] = field(default_factory=list)  # -word / -"phrase"


# English function words: never the content a match must share, nor what a +/- operand asks for. (The
# vocabulary keeps them, and the model may weigh them; only the query rules ignore them.)
FUNCTION_WORDS = frozenset(
    """a an the of on in at to into onto over under by for from with without and or nor but as is are was
    were be been being it its this that these those there their his her he she they them we you i my your
    our some any each every no not than then so very just""".split()
)


def content_words(part: str) -> list[str]:
    """The words of a query part that can make a match: function words and punctuation dropped."""
    return [w for w in re.findall(r"[^\W_]+", part) if w.lower() not in FUNCTION_WORDS]


def case_variants(word: str) -> list[str]:
    """The spellings one word stands for (``Horse`` = ``horse`` = ``HORSE``), lower case first."""
    forms = [word.lower(), word, word.capitalize(), word.upper()]
    return list(dict.fromkeys(forms))


def word_columns(word: str, word_terms: Callable[[str], Sequence[int]]) -> list[tuple[int, ...]]:
    """Column sets of a word's case variants that the vocabulary can represent (distinct, lower case first)."""
    found: dict[tuple[int, ...], None] = {}
    for form in case_variants(word):
        cols = tuple(sorted({int(t) for t in word_terms(form)}))
        if cols:
            found.setdefault(cols)
    return list(found)


# An optional +/- operator, then a quoted phrase (the closing quote may be missing) or a bare word.
_TOKEN = re.compile(r'([+-]?)(?:"([^"]*)"?|(\S+))')


def parse_query(text: str) -> ParsedQuery:
    """Split ``white horse "red car" +beach -night`` into words, phrases, must and exclude parts.

    Only a leading ``+``/``-`` is an operator (``t-shirt`` stays one word); a lone ``+`` or ``-`` is ignored.
    Raises :class:`UsageError` for an empty query, one that only excludes, and text
    :func:`lexsearch.limits.check_query_text` refuses.
    """
    check_query_text(text or "")
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
    """One +/- operand (a word or a phrase) as vocabulary columns: an image matches it if it has them all,
    or all of one of ``alternatives`` (the other case spellings of a +word).

    A multi-piece word ("skate", "##board") or a phrase needs every piece: asking for any one piece would
    turn ``-skateboard`` into ``-board``.
    """

    text: str
    terms: tuple[int, ...]
    alternatives: tuple[tuple[int, ...], ...] = ()


@dataclass
class Filters:
    must: list[Clause] = field(default_factory=list)
    exclude: list[Clause] = field(default_factory=list)
    # An image must match at least one of these (the query's own words): see :func:`query_word_clauses`.
    any_of: list[Clause] | None = None

    def terms(self) -> set[int]:
        clauses = (*self.must, *self.exclude, *(self.any_of or ()))
        return {t for c in clauses for cols in (c.terms, *c.alternatives) for t in cols}

    def __bool__(self) -> bool:
        return bool(self.must or self.exclude or self.any_of is not None)


def query_word_clauses(parsed: ParsedQuery, word_terms: Callable[[str], Sequence[int]]) -> list[Clause]:
    """One clause per content word of the query's positive parts and case spelling (all its pieces), for the
    "shares a query word" rule.

    The text encoder also lights up words the query does not contain (its associations); an image that
    shares only those is the "nearest random image" a search must not pass off as a match. Function words
    (``a``, ``the``, ``on``) make no clause: sharing "the" is no match. Words the vocabulary cannot represent
    give no clause.
    """
    clauses: dict[tuple[int, ...], Clause] = {}
    for part in parsed.terms:
        for word in content_words(part):
            for cols in word_columns(word, word_terms):
                clauses.setdefault(cols, Clause(word, cols))
    return list(clauses.values())


def resolve_operators(parsed: ParsedQuery, word_terms: Callable[[str], Sequence[int]]) -> Filters:
    """Map the +/- operands to vocabulary columns with ``word_terms`` (e.g. ``Encoder.word_terms``).

    Case does not count (``-Night`` excludes ``night`` and ``Night``) and function words are dropped (``+"horse
    on a beach"`` asks for horse and beach). A ``+word`` the vocabulary cannot represent is an error (it could
    only ever match nothing); a ``-word`` it cannot represent excludes nothing, which is logged, as is an
    operand of function words only.
    """
    filters = Filters()
    for kind, parts in (("must", parsed.must), ("exclude", parsed.exclude)):
        sign = "+" if kind == "must" else "-"
        for part in parts:
            words = content_words(part)
            if not words:
                logger.warning("'%s%s' has only function words; it is ignored", sign, part)
                continue
            variants = {w: word_columns(w, word_terms) for w in words}
            missing = [w for w, cols in variants.items() if not cols]
            if missing:
                if kind == "must":
                    raise UsageError(
                        f"'{sign}{part}': {', '.join(repr(w) for w in missing)} is not in the "
                        "model's vocabulary, so no image can contain it; drop the '+' to search it softly."
                    )
                logger.warning("'-%s' is not in the model's vocabulary; it excludes nothing", part)
                continue
            if kind == "exclude":
                # An image is excluded if it holds any spelling: one clause per spelling of each word.
                if len(words) == 1:
                    filters.exclude.extend(Clause(part, cols) for cols in variants[words[0]])
                else:  # a phrase: its words' lower-case forms together (spellings of a phrase multiply)
                    terms = tuple(sorted({t for cols in variants.values() for t in cols[0]}))
                    filters.exclude.append(Clause(part, terms))
                continue
            if len(words) == 1:
                first, *rest = variants[words[0]]
                filters.must.append(Clause(part, first, tuple(rest)))
            else:
                for word in words:  # every word of a +"phrase", each in any spelling
                    first, *rest = variants[word]
                    filters.must.append(Clause(word, first, tuple(rest)))
    return filters
