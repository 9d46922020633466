"""Photo-metadata filters and the date sort of a query: ``after:2023 before:2024-06 camera:pixel in:trips
orientation:portrait sort:date``, in the query text (so a bookmarked page keeps them) or from the CLI's and
the API's own options, which become the same words (so every way of asking gives the same answer).

Dates: ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``, the capture wall clock (``lexsearch.index.photometa``).
``after:D`` keeps images taken on or after the first day of D; ``before:D`` those taken before the first
day of D (``after:2023 before:2024`` is the year 2023).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from lexsearch.errors import UsageError

KEYS = ("after", "before", "camera", "in", "orientation", "sort")
ORIENTATIONS = ("landscape", "portrait", "square")
SORTS = ("score", "date", "date-asc")
# A date sort orders every match, not just the best ten; a query matching more than this many images
# orders its best SORT_CAP by date (and says so).
SORT_CAP = 5000

# key:value or key:"quoted value", standing alone (not inside a word), anywhere in the text.
_META = re.compile(r'(?<!\S)(after|before|camera|in|orientation|sort):(?:"([^"]*)"?|(\S*))', re.IGNORECASE)
_DATE = re.compile(r"^(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?$")


@dataclass
class MetaQuery:
    """The metadata part of a query: its conditions (``where``), sort, and the options in text form."""

    where: Any = None  # ``lexsearch.collection.interface.Where``
    sort: str = "score"
    words: list[str] = field(default_factory=list)  # ``key:value`` as given, for notes and round trips


def split_meta(text: str) -> tuple[str, MetaQuery]:
    """(the text without its ``key:value`` filters, the filters). Raises ``UsageError`` for a bad value."""
    from lexsearch.collection.interface import Condition, Where  # numpy: not for a server's client

    meta = MetaQuery(where=Where())
    conds: list[Condition] = []
    for m in _META.finditer(text or ""):
        key, value = m.group(1).lower(), (m.group(2) if m.group(2) is not None else m.group(3)).strip()
        meta.words.append(m.group(0))
        if not value:
            raise UsageError(f"'{m.group(0)}' needs a value, e.g. {key}:{_EXAMPLE[key]}.")
        if key in ("after", "before"):
            conds.append(Condition("taken", "gte" if key == "after" else "lt", first_day(value, key)))
        elif key == "camera":
            conds.append(Condition("camera", "contains", value.lower()))
        elif key == "in":
            if os.path.isabs(os.path.expanduser(value)):
                conds.append(Condition("folder", "under", os.path.abspath(os.path.expanduser(value))))
            else:
                conds.append(Condition("folder", "named", value.strip(os.sep)))
        elif key == "orientation":
            if value.lower() not in ORIENTATIONS:
                raise UsageError(f"orientation:{value}: use one of {', '.join(ORIENTATIONS)}.")
            conds.append(Condition("orientation", "eq", value.lower()))
        else:
            if value.lower() not in SORTS:
                raise UsageError(f"sort:{value}: use one of {', '.join(SORTS)}.")
            meta.sort = value.lower()
    meta.where = Where(tuple(conds))
    return _META.sub(" ", text or ""), meta


_EXAMPLE = {
    "after": "2023",
    "before": "2023-06",
    "camera": "pixel",
    "in": "trips",
    "orientation": "portrait",
    "sort": "date",
}


def first_day(value: str, key: str = "after") -> str:
    """``2023`` -> ``2023-01-01``, ``2023-6`` -> ``2023-06-01``, ``2023-06-14`` as is (checked)."""
    m = _DATE.match(value.strip())
    if not m:
        raise UsageError(f"{key}:{value}: a date is YYYY, YYYY-MM or YYYY-MM-DD (e.g. {key}:2023-06).")
    y, mo, d = int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1)
    import datetime as dt

    try:
        return dt.date(y, mo, d).isoformat()
    except ValueError:
        raise UsageError(f"{key}:{value} is not a date.") from None


def meta_words(
    after: str | None = None,
    before: str | None = None,
    camera: str | None = None,
    folder: str | None = None,
    orientation: str | None = None,
    sort: str | None = None,
    resolve: bool = True,
) -> str:
    """The CLI's / API's options as query words (``after:2023 in:"/x/my trips"``); with ``resolve`` a
    folder given as a path (``./trips``, ``~/p``) becomes absolute here, where its relative meaning is
    known."""
    out = []
    for key, value in (("after", after), ("before", before), ("camera", camera), ("in", folder)):
        if value is None or value == "":
            continue
        value = str(value)
        if key == "in" and resolve and (os.sep in value or value.startswith((".", "~"))):
            value = os.path.abspath(os.path.expanduser(value))
        out.append(f'{key}:"{value}"' if (" " in value or '"' in value) else f"{key}:{value}")
    if orientation:
        out.append(f"orientation:{orientation}")
    if sort and sort != "score":  # a bad value is refused by the search, as the typed word would be
        out.append(f"sort:{sort}")
    return " ".join(out)


def with_meta(text: str, resolve: bool = True, **options: str | None) -> str:
    """``text`` with the options' query words appended (the text unchanged when there are none)."""
    words = meta_words(resolve=resolve, **options)
    return f"{text} {words}" if words else text
