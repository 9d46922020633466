"""The one interface through which search, the page and the CLI reach a collection, wherever it lives.

Image ids are the collection's own integers (the embedded store numbers images 1, 2, ...; Qdrant uses the
point id, a hash of the path): they are only ever handed back to the same collection, never compared
across collections. Everything an answer shows (paths, scores, words) is the same in both homes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Condition:
    """One test on an image's photo metadata (``lexsearch.index.photometa``), as ``lexsearch.search.meta``
    builds them from ``after:`` / ``before:`` / ``camera:`` / ``in:`` / ``orientation:``:

    - ``taken`` ``gte`` / ``lt`` a date ``YYYY-MM-DD`` (the capture wall clock, text order);
    - ``camera`` ``contains`` a text (case-insensitive, in make + " " + model);
    - ``folder`` ``under`` an absolute folder, or ``named`` a folder name anywhere in the path;
    - ``orientation`` ``eq`` landscape | portrait | square (upright pixel size).

    Columns of ``images`` in the embedded store, payload keys in Qdrant (``qdrant.points.where_conditions``).
    """

    field: str
    op: Literal["eq", "in", "gte", "lte", "lt", "contains", "under", "named"]
    value: Any


@dataclass(frozen=True)
class Where:
    """Metadata conditions that restrict the candidate stage (all must hold). Empty: no restriction."""

    conditions: tuple[Condition, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.conditions)


@runtime_checkable
class SearchCollection(Protocol):
    """What the query path (``lexsearch.search``), ``lexsearch serve`` and the CLI use of a collection.

    Implementations: ``lexsearch.collection.embedded.EmbeddedCollection`` and
    ``lexsearch.collection.qdrant.store.QdrantCollection``. The writing side (``lexsearch index``) differs
    by home and is not part of this interface.
    """

    path: Any  # where it lives: a folder (embedded) or the ``qdrant://`` address; shown in messages

    @property
    def meta(self) -> dict[str, Any]:
        """model_id, vocab_hash, vocab_size, dense_dim, sparsify, model_path, roots (as ``index`` wrote)."""

    def candidates(
        self,
        terms: np.ndarray,
        weights: np.ndarray,
        filters: Any = None,
        k: int = 1000,
        prune: Any = None,
        where: Where | None = None,
    ) -> Any:
        """The candidate stage: the ``k`` best images by ``sum_t weights[t] * w_t(image)`` over ``terms``,
        restricted by the query's word filters (``lexsearch.search.parse.Filters``) and ``where``.
        Returns ``lexsearch.search.candidates.Candidates`` (ids, scores), best first."""

    def forward(self, image_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Each image's sparse vector: (term ids int32 ascending, weights float32)."""

    def forward_block(self, image_ids: Sequence[int], dense: bool = True) -> Any:
        """The same rows (and dense vectors) in the order asked, as ``lexsearch.index.postings.RowBlock``."""

    def dense_vectors(self, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Each image's dense vector (images without one are left out)."""

    def dense_scores(self, q: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """Inner products of ``q`` (D,) with the images' dense vectors (0 where an image has none)."""

    def dense_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` images whose dense vectors have the largest inner product with ``q``: (ids, scores)."""

    def image_paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        """Paths of the images that are indexed ('ok'); surrogate escapes for names that are not UTF-8."""

    def file_exists(self, path: str) -> bool:
        """Whether an indexed file is still on disk (search leaves out, and counts, those that are not)."""

    def rows_at(self, paths: Iterable[str]) -> dict[str, Any]:
        """``ImageRow`` (id, path, size, mtime_ns, hash, status) of the images stored at these paths."""

    def metadata(self, image_ids: Iterable[int], fields: Sequence[str] | None = None) -> dict[int, dict]:
        """The stored facts of each image (width, height, exif_time, ...; photo metadata once it exists)."""

    def count(self, status: str | None = "ok") -> int:
        """Images with that status ('ok', 'failed'; None: all)."""

    def cached_query(self, text: str) -> Any:
        """The cached encoding of a query text, or None (a home without a cache always says None)."""

    def cache_query(self, text: str, sparse_row: Any, dense_row: np.ndarray | None) -> None:
        """Keep a query's encoding (a home without a cache does nothing)."""

    def close(self) -> None: ...
