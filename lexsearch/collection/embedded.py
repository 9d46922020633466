"""The embedded home of a collection: the SQLite store with memory-mapped postings and FAISS segments
(``lexsearch/index/store.py``), seen through the search interface.

The store itself keeps its read and write API (INTERFACES.md); this class adds what the interface asks
beyond it: the candidate stage over the store's postings, and per-image metadata.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lexsearch.collection.interface import Where
from lexsearch.errors import UsageError
from lexsearch.index.paths import db_text
from lexsearch.index.paths import py_path as _py_path
from lexsearch.index.photometa import PHOTO_FIELDS
from lexsearch.index.schema import _chunks, _marks
from lexsearch.index.store import Collection

# The facts ``images`` holds per image beside its path; the photo ones exist from schema 4 on.
METADATA_FIELDS = ("width", "height", "exif_time", "size", "mtime_ns", *PHOTO_FIELDS)


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

        only = self.allowed_ids(where) if where else None
        index = index or PostingsIndex.from_collection(self)
        return candidates(index, terms, weights, filters, k=k, prune=prune, only=only)

    def has_photo_meta(self) -> bool:
        """Whether every indexed image has its photo metadata (schema 4, filled by an index run)."""
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(images)")}
        if "taken_source" not in cols:
            return False
        q = "SELECT 1 FROM images WHERE status = 'ok' AND taken_source IS NULL LIMIT 1"
        return self.db.execute(q).fetchone() is None

    def dupe_rows(self) -> tuple[np.ndarray, np.ndarray, list[str | None], dict[int, dict]]:
        """What ``lexsearch.dupes`` reads, in one pass over the indexed images with a dense vector: (ids
        int64, L2-normalised vectors (N, D) float32, perceptual hashes (None where missing), facts by id:
        path, width, height, size, taken). A collection not yet upgraded has no hashes and no dates."""
        from lexsearch.index import postings as pf

        present = {r[1] for r in self.db.execute("PRAGMA table_info(images)")}
        phash = "i.phash" if "phash" in present else "NULL"
        taken = "i.taken" if "taken" in present else "NULL"
        dim = self._dense_dim()
        q = (
            f"SELECT i.id, i.path, i.width, i.height, i.size, {taken}, {phash}, f.dense FROM images i "
            "JOIN forward f ON f.image_id = i.id WHERE i.status = 'ok' AND f.dense IS NOT NULL ORDER BY i.id"
        )
        ids, vecs, hashes, facts = [], [], [], {}
        with self._read():
            for image_id, path, w, h, size, when, ph, dense in self.db.execute(q):
                ids.append(image_id)
                vecs.append(pf.decode_dense(dense, dim))
                hashes.append(ph)
                facts[image_id] = {
                    "path": _py_path(path),
                    "width": w,
                    "height": h,
                    "size": size,
                    "taken": db_text(when) if isinstance(when, str) else when,
                }
        matrix = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, max(dim, 1)), np.float32)
        if len(matrix):
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return np.array(ids, np.int64), matrix, hashes, facts

    def allowed_ids(self, where: Where) -> np.ndarray:
        """The ids of the 'ok' images that pass every condition of ``where`` (ascending intp)."""
        _check_photo_meta(self)
        sql, params = where_sql(where)
        rows = self.db.execute(f"SELECT id FROM images WHERE status = 'ok' AND {sql} ORDER BY id", params)
        return np.fromiter((r[0] for r in rows), np.intp)

    def metadata(self, image_ids: Iterable[int], fields: Sequence[str] | None = None) -> dict[int, dict]:
        present = {r[1] for r in self.db.execute("PRAGMA table_info(images)")}
        wanted = tuple(fields or (f for f in METADATA_FIELDS if f in present))
        if any(f in PHOTO_FIELDS for f in wanted):
            _check_photo_meta(self)
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


def _check_photo_meta(col: EmbeddedCollection) -> None:
    # Filtering or sorting on metadata that some images lack would silently drop or misplace them.
    if not col.has_photo_meta():
        raise UsageError(
            f"Collection {col.path} holds no photo metadata yet (dates, cameras): run 'lexsearch index' on it "
            "once; it reads the files' headers, nothing is embedded again."
        )


def where_sql(where: Where) -> tuple[str, list[Any]]:
    """``where``'s conditions as one SQL condition on ``images`` and its parameters."""
    parts: list[str] = []
    params: list[Any] = []
    for c in where.conditions:
        if c.field == "taken" and c.op in ("gte", "lt", "lte"):
            parts.append(f"taken {dict(gte='>=', lt='<', lte='<=')[c.op]} ?")
            params.append(str(c.value))
        elif c.field == "camera" and c.op == "contains":
            # instr on lower(): a substring, case-insensitive, with no LIKE wildcards to escape.
            parts.append(
                "instr(lower(coalesce(camera_make, '') || ' ' || coalesce(camera_model, '')), ?) > 0"
            )
            params.append(str(c.value).lower())
        elif c.field == "folder" and c.op == "under":
            folder = str(c.value).rstrip(os.sep) + os.sep
            parts.append("substr(path, 1, ?) = ?")
            params += [len(folder), folder]
        elif c.field == "folder" and c.op == "named":
            parts.append("instr(lower(path), ?) > 0")
            params.append(f"{os.sep}{str(c.value).strip(os.sep).lower()}{os.sep}")
        elif c.field == "orientation" and c.op == "eq":
            cmp = {"landscape": "width > height", "portrait": "width < height", "square": "width = height"}
            parts.append(cmp[str(c.value)])
        else:
            raise UsageError(f"Cannot filter on {c.field} {c.op} {c.value!r}.")
    return " AND ".join(parts) or "1", params
