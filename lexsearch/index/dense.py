"""The dense re-ranker's FAISS side: append-only segment files, loaded into one in-memory index on demand.

``forward.dense`` (float16 per image) is the source of truth; FAISS holds the same values (a float16 scalar
quantiser, so a FAISS score and ``Collection.dense_scores`` agree). On disk the index is a list of
``dense-<n>.faiss`` files (the ``dense_segments`` table), each an ``IndexIDMap2`` over the images of one
contiguous id range. Saving after a run writes only the vectors newer than the last file, so adding a few
images never rewrites the whole index; removed images stay in their file until the segments are compacted
(when there are many files, or many removed vectors) and are dropped when the files are loaded, by an id
diff against the database. Files are written to a temp name, fsynced, renamed and only then referenced, so a
crash leaves at worst an unreferenced file that the next writer deletes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lexsearch.index import postings as pf

logger = logging.getLogger(__name__)

PREFIX = "dense-"
SUFFIX = ".faiss"
# Compact the dense files into one past this many files, or when this fraction of their vectors is dead:
# bounds the files a loader reads and the memory removed vectors hold.
MAX_FILES = 12
MAX_DEAD_FRACTION = 0.2
# meta key: {file name: [size, mtime_ns]} of each FAISS file as written (or last found readable). A writer
# reads only the files whose stat differs (damaged, truncated, replaced), never the whole index each run.
FILES_META = "dense_files"


def new_index(dim: int):
    """An empty IndexIDMap2 over float16-coded vectors, inner product (the vectors are L2-normalised)."""
    import faiss

    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(sq)
    # The wrapper does not own the Python-side inner index: without this it is freed when ``sq`` goes out
    # of scope and the map points at freed memory (garbage ids, crashes).
    sq.this.disown()
    index.own_fields = True
    return index


def write_index(index, path: Path) -> int:
    """Write ``index`` to ``path`` atomically (temp + fsync + rename); returns the file size."""
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # before rename: after a power cut the new name must not point at unwritten blocks
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path.stat().st_size


def read_index(path: Path, dim: int, warn: bool = True):
    """A segment file as an index, or None when it is missing, torn or not ours (the database rebuilds it)."""
    import faiss

    if not path.exists():
        return None
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        if warn:
            logger.warning(
                "dense index %s is unreadable (%s); using the vectors in index.db instead until the next "
                "'lexsearch index' run on this collection rewrites it",
                path,
                exc,
            )
        return None
    if index.d != dim or not isinstance(index, faiss.IndexIDMap2):
        return None
    return index


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def check_files(folder: Path, files: list[tuple[str, int]], dim: int, known: dict) -> tuple[list[str], dict]:
    """The referenced FAISS files that are missing, unreadable or hold the wrong vectors, and the stats of
    the sound ones. A file whose size and mtime are those recorded (``known``) is taken as sound unread."""
    damaged: list[str] = []
    stats: dict[str, list[int]] = {}
    for name, n in files:
        st = _stat(folder / name)
        if st is not None and known.get(name) == st:
            stats[name] = st
            continue
        index = None if st is None else read_index(folder / name, dim, warn=False)
        if index is None or index.ntotal != n:
            damaged.append(name)
        else:
            stats[name] = st
    return damaged, stats


def index_ids(index) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map).astype(np.int64)


def build(dim: int, vectors: dict[int, np.ndarray]):
    index = new_index(dim)
    if vectors:
        ids = np.array(sorted(vectors), np.int64)
        index.add_with_ids(np.stack([vectors[int(i)] for i in ids]).astype(np.float32), ids)
    return index


def inner_products(q: np.ndarray, ids: np.ndarray, vecs: dict[int, np.ndarray]) -> np.ndarray:
    """``q . v`` for each id in ``ids`` (int64) whose vector ``vecs`` holds, in that order; 0 for the others."""
    out = np.zeros(ids.size, np.float32)
    rows = [k for k, i in enumerate(ids.tolist()) if i in vecs]
    if rows:
        matrix = np.stack([vecs[int(ids[k])] for k in rows])  # (n, D)
        out[rows] = matrix @ np.asarray(q, np.float32).ravel()
    return out


class DenseSegments:
    """The dense side of ``Collection`` (a mixin): reads from ``forward.dense``, FAISS files on demand."""

    path: Path
    db: Any
    _faiss: Any
    _faiss_gen: int

    def _dense_dim(self) -> int:
        return int(self._meta_value("dense_dim") or 0)

    def dense_vectors(self, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored dense vectors (D,) float32 of some images (those without one are omitted)."""
        dim = self._dense_dim()
        rows = self._rows_by_id("SELECT image_id, dense FROM forward", image_ids)
        return {i: pf.decode_dense(d, dim) for i, d in rows if d is not None}

    def dense_scores(self, q: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """Inner product of ``q`` with each image's dense vector, in the order given; 0 where there is none.

        Read from ``forward.dense`` (the very values FAISS holds), so the scores are exact whatever state
        the FAISS files are in.
        """
        ids = np.asarray(image_ids).astype(np.int64).ravel()
        return inner_products(q, ids, self.dense_vectors(ids.tolist()))

    def dense_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` images with the largest inner product with ``q``: (ids int64, scores float32)."""
        index = self._dense_index()
        if index is None or index.ntotal == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        scores, ids = index.search(np.asarray(q, np.float32).reshape(1, -1), min(k, index.ntotal))
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def _dense_index(self):
        """All dense vectors in one in-memory index: the files, minus removed ids, plus newer vectors."""
        dim = self._dense_dim()
        if dim <= 0:
            return None
        gen = int(self._meta_value("generation", 0))
        if self._faiss is not None and self._faiss_gen == gen:
            return self._faiss
        with self._read():
            gen = int(self._meta_value("generation", 0))
            covered = int(self._meta_value("dense_covered", 0))
            names = [r[0] for r in self.db.execute("SELECT name FROM dense_segments ORDER BY min_id")]
            dead = np.array([r[0] for r in self.db.execute("SELECT image_id FROM dense_dead")], np.int64)
            newer = {
                i: pf.decode_dense(d, dim)
                for i, d in self.db.execute(
                    "SELECT image_id, dense FROM forward WHERE image_id > ? AND dense IS NOT NULL", [covered]
                )
            }
            index = new_index(dim)
            lost = False
            for name in names:
                part = read_index(self.path / name, dim)
                if part is None:
                    lost = True
                    break
                index.merge_from(part)
            if lost:  # a file is missing or torn: the database holds every vector
                q = "SELECT image_id, dense FROM forward WHERE dense IS NOT NULL"
                index = build(dim, {i: pf.decode_dense(d, dim) for i, d in self.db.execute(q)})
            else:
                if dead.size:
                    index.remove_ids(dead)
                have = set(index_ids(index).tolist()) if newer else set()
                add = {i: v for i, v in newer.items() if i not in have}
                if add:
                    ids = np.array(sorted(add), np.int64)
                    index.add_with_ids(np.stack([add[int(i)] for i in ids]), ids)
        self._faiss, self._faiss_gen = index, gen
        return index

    def _after_commit(self, gen: int, added: list[tuple[int, np.ndarray]], removed: list[int]) -> None:
        if self._faiss is None or self._faiss_gen != gen - 1:
            return  # not loaded (or already stale): the next _dense_index() call rebuilds it
        if removed:
            self._faiss.remove_ids(np.array(removed, np.int64))
        if added:
            self._faiss.add_with_ids(
                np.stack([d for _, d in added]).astype(np.float32), np.array([i for i, _ in added], np.int64)
            )
        self._faiss_gen = gen

    def save_dense(self) -> None:
        """Write the vectors added since the last save as a new FAISS file (writer only); compact the files
        into one when there are many or they hold many removed vectors. Never loads the existing files."""
        self._require_writer()
        dim = self._dense_dim()
        if dim <= 0:
            return
        with self._read():
            gen = int(self._meta_value("generation", 0))
            covered = int(self._meta_value("dense_covered", 0))
            files = self.db.execute("SELECT name, n FROM dense_segments").fetchall()
            n_dead = self.db.execute("SELECT count(*) FROM dense_dead").fetchone()[0]
            # A damaged file (a bad copy, a full disk, a bit of it overwritten) is not left for every query
            # to trip over: all files are rewritten from forward.dense, the source of truth.
            damaged, stats = check_files(self.path, files, dim, self._meta_value(FILES_META) or {})
            for name in damaged:
                logger.warning(
                    "dense index %s was missing or damaged; rewritten from index.db", self.path / name
                )
            compact = (
                bool(damaged)
                or len(files) + 1 > MAX_FILES
                or n_dead > MAX_DEAD_FRACTION * max(1, sum(r[1] for r in files))
            )
            lo = 0 if compact else covered
            vecs = {
                i: pf.decode_dense(d, dim)
                for i, d in self.db.execute(
                    "SELECT image_id, dense FROM forward WHERE image_id > ? AND dense IS NOT NULL", [lo]
                )
            }
            top = self.max_image_id
        retire = [r[0] for r in files] if compact else []
        name = None
        if vecs:
            seq = int(self._meta_value("dense_seq", 0)) + 1
            name = f"{PREFIX}{seq:08d}{SUFFIX}"
            write_index(build(dim, vecs), self.path / name)
            stats[name] = _stat(self.path / name)
        with self._write():
            conn = self.db.conn
            for r in retire:
                conn.execute("DELETE FROM dense_segments WHERE name = ?", [r])
            if compact:
                conn.execute("DELETE FROM dense_dead")
            if name:
                conn.execute(
                    "INSERT INTO dense_segments VALUES (?, ?, ?, ?, ?)",
                    [name, len(vecs), min(vecs), max(vecs), gen],
                )
                self._write_meta({"dense_seq": int(name[len(PREFIX) : -len(SUFFIX)])})
            self._write_meta(
                {
                    "dense_covered": max(covered, top) if not compact else top,
                    "faiss_generation": gen,
                    FILES_META: {k: v for k, v in stats.items() if k not in retire},
                }
            )
        for r in retire + ["dense.faiss"]:  # dense.faiss: the single file of schema 1
            (self.path / r).unlink(missing_ok=True)
