"""What a search returns: ranked images and the words behind each (plain data; no numpy, so printing the
answer of a running server loads nothing heavy; a NamedTuple, not a dataclass, whose import with ``inspect``
under it was ~10 ms of such a query)."""

from __future__ import annotations

from typing import NamedTuple


class Result(NamedTuple):
    """One ranked image and the words behind it (``words`` + ``rest`` == ``lexical``)."""

    rank: int
    image_id: int
    path: str
    score: float  # what the ranking used: lexical, or fused with the dense score
    lexical: float  # exact q . d over the query's words
    dense: float | None  # dense cosine, None when not used
    words: list[tuple[str, float]]  # strongest shared words and their contributions q_w * d_w
    rest: float = 0.0  # sum of the contributions of the shared words not listed
    taken: str | None = (
        None  # when the photo was taken (``photometa``), given when results are sorted by date
    )


class Results(list):
    """The ranked results (a list of :class:`Result`), how many matches were left out as stale, and notes
    for the reader.

    ``notes`` are whole lines about the query as a whole (not about one result), e.g. a query word the model
    never saw. ``lexsearch query`` prints each on stderr, the same whether it searched itself or a running
    server did: the server sends them with its answer (``Lexsearch-Notes``, ``lexsearch.serve.wire``) and the
    page shows them.
    """

    # Matching images whose file no longer exists (deleted or moved since the last index run): left out,
    # so nothing shown points nowhere; the caller says that a re-index is due.
    stale: int = 0

    def __init__(self, results=(), notes=()) -> None:
        super().__init__(results)
        self.notes: list[str] = list(notes)  # per object: a class-level list would be shared by all
