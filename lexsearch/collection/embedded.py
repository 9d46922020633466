"""The embedded home of a collection: the SQLite store with memory-mapped postings and FAISS segments
(``lexsearch/index/store.py``), seen through the search interface.

The store itself keeps its read and write API (INTERFACES.md); this class adds what the interface asks
beyond it: the candidate stage over the store's postings, and per-image metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lexsearch.collection.interface import Where
from lexsearch.errors import UsageError
from lexsearch.index.paths import db_text
from lexsearch.index.schema import _chunks, _marks
from lexsearch.index.store import Collection

# The facts ``images`` holds per image beside its path (photo metadata adds columns here).
METADATA_FIELDS = ("width", "height", "exif_time", "size", "mtime_ns")


class EmbeddedCollection(Collection):
    """The store as a ``SearchCollection``: ``EmbeddedCollection.open(name_or_path, readonly=True)``."""

    def candidates(
        self,
        terms: np.ndarray,
        weights: np.ndarray,
        filters: Any = None,
        k: int = 1000,
        prune: Any = None,
        where: Where | None = None,
        index: Any = None,
    ) -> Any:
        """Term-at-a-time over the postings (``lexsearch.search.candidates``); a long-lived process passes
        its ``PostingsIndex`` as ``index`` so converted postings are kept between queries."""
        from lexsearch.search.candidates import candidates
        from lexsearch.search.postings import PostingsIndex

        _check_where(where)
        index = index or PostingsIndex.from_collection(self)
        return candidates(index, terms, weights, filters, k=k, prune=prune)

    def metadata(self, image_ids: Iterable[int], fields: Sequence[str] | None = None) -> dict[int, dict]:
        wanted = tuple(fields or METADATA_FIELDS)
        unknown = [f for f in wanted if f not in METADATA_FIELDS]
        if unknown:
            raise UsageError(f"No such image field: {unknown[0]} (known: {', '.join(METADATA_FIELDS)}).")
        out: dict[int, dict] = {}
        cols = ", ".join(wanted)
        for chunk in _chunks(sorted({int(i) for i in image_ids})):
            q = f"SELECT id, {cols} FROM images WHERE id IN ({_marks(chunk)})"
            for row in self.db.execute(q, chunk):
                out[int(row[0])] = {
                    f: (db_text(v) if isinstance(v, str) else v) for f, v in zip(wanted, row[1:])
                }
        return out


def _check_where(where: Where | None) -> None:
    # Photo metadata (dates, camera, folder) arrives as columns of ``images`` in a later schema; until then
    # a condition cannot be answered, and silently ignoring it would show images the user filtered out.
    if where:
        raise UsageError("Metadata filters need photo metadata, which this collection does not hold yet.")
