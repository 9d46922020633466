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


class Results(list):
    """The ranked results (a list of :class:`Result`), and how many matches were left out as stale."""

    # Matching images whose file no longer exists (deleted or moved since the last index run): left out,
    # so nothing shown points nowhere; the caller says that a re-index is due.
    stale: int = 0
    # One-line remarks about the query itself (a word the model was never trained on), shown beside the
    # results: the CLI on stderr, the server with its answer. Each instance has its own list.
    notes: list[str]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes = []
