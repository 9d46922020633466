"""The read side of ``Collection`` (a mixin): row lookups by id, path and folder, forward rows and dense
vectors for re-ranking, image paths, counts and failures, the query cache, and ``verify``.

Every method here reads; the one exception is ``cache_query``, which a read-only (searching) process may
call: "readonly" means "will not index". The posting reads (candidates' postings) are in ``tiered.py``, the
FAISS reads in ``dense.py``; the tables are described in ``schema.py``.
"""

from __future__ import annotations

import bisect
import gc
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lexsearch.index import dense as dn
from lexsearch.index import postings as pf
from lexsearch.index.paths import db_path as _db_path
from lexsearch.index.paths import folder_digest
from lexsearch.index.paths import py_path as _py_path
from lexsearch.index.schema import BUSY_TIMEOUT_S, DB_NAME, _chunks, _folder_name, _marks

# A reader fetching at least this many rows by id spreads them over this many connections (threads).
_PARALLEL_MIN_ROWS = 256
_READERS = 4


class FolderState(NamedTuple):
    """A ``folders`` row: the digest of the folder's stored rows (None: unknown) and their counts."""

    digest: bytes | None
    ok: int
    failed: int


class ImageRow(NamedTuple):
    """One row of ``images`` as the indexer needs it (a tuple: a million of them load in about a second)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    status: str


@dataclass
class SparseRow:
    """One sparse row with the part of scipy's CSR interface the query path uses (``indices``, ``data``,
    ``indptr``, ``shape``, ``nnz``, ``[0]``, ``tocsr()``, ``toarray()``): a cached query is answered
    without importing scipy (~150 ms of a fresh query process)."""

    indices: np.ndarray  # int32 ascending
    data: np.ndarray  # float32
    shape: tuple[int, int]

    @property
    def indptr(self) -> np.ndarray:
        return np.array([0, self.indices.size], np.int64)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, row: int) -> SparseRow:
        if row not in (0, -1):
            raise IndexError(row)
        return self

    def tocsr(self) -> SparseRow:
        return self

    def toarray(self) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[0, self.indices] = self.data
        return out


@dataclass
class CachedQuery:
    """A cached encoded query, shaped like ``lexsearch.model.Encoded`` with one row."""

    sparse: SparseRow  # (1, V), CSR-like
    dense: np.ndarray | None  # (1, D) or None


class StoreReader:
    """Reads of images, forward rows and the query cache; expects ``path``, ``db``, ``readonly``, the reader
    pool's attributes (set by ``Collection.__init__``), the meta and transaction helpers of ``store.py``."""

    path: Any
    db: Any
    readonly: bool

    # ---------------------------------------------------------------- read API (INTERFACES.md)
    def forward(self, image_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Sparse vector per image: (term ids int32 ascending, weights float32)."""
        rows = self._rows_by_id("SELECT image_id, terms, weights FROM forward", image_ids)
        return {i: pf.decode_forward(t, w) for i, t, w in rows}

    def forward_block(self, image_ids: Sequence[int], dense: bool = True) -> pf.RowBlock:
        """Forward rows (and, with ``dense``, dense vectors) of ``image_ids`` in that order, from one read
        of the rows: what a re-rank needs. An id without a row (removed meanwhile) gets an empty row."""
        ids = [int(i) for i in image_ids]
        cols = "image_id, terms, weights, dense" if dense else "image_id, terms, weights, NULL"
        found = {r[0]: r for r in self._rows_by_id(f"SELECT {cols} FROM forward", ids)}
        got = [found.get(i) for i in ids]
        indptr, terms, weights = pf.decode_block([(r[1], r[2]) if r else None for r in got])
        has = np.fromiter((r is not None and r[3] is not None for r in got), bool, len(got))
        matrix = None
        if dense:
            dim = self._dense_dim()
            matrix = np.zeros((len(ids), dim), np.float32)
            blobs = [r[3] for r in got if r is not None and r[3] is not None]
            if blobs and dim:
                if all(len(b) == 2 * dim for b in blobs):
                    joined = np.frombuffer(b"".join(blobs), "<f2")
                else:  # float32 vectors of older rows among them
                    joined = np.concatenate([pf.decode_dense(b, dim) for b in blobs])
                matrix[has] = joined.reshape(-1, dim)
        return pf.RowBlock(indptr, terms, weights, matrix, has)

    def _rows_by_id(self, select: str, image_ids: Iterable[int]) -> list[tuple]:
        """``select ... WHERE image_id IN (ids)``; a reader asking for many rows reads them on a few
        connections at once: a query's 1,000 re-rank rows are random pages of the largest table, and with a
        cold page cache overlapping those reads is what keeps the answer under half a second."""
        ids = sorted({int(i) for i in image_ids})
        if not self.readonly or len(ids) < _PARALLEL_MIN_ROWS:
            out: list[tuple] = []
            for chunk in _chunks(ids):
                out.extend(self.db.execute(f"{select} WHERE image_id IN ({_marks(chunk)})", chunk))
            return out
        parts = [ids[k::_READERS] for k in range(_READERS)]

        def fetch(part: list[int]) -> list[tuple]:
            # Each thread its own connection (sqlite3 releases the GIL while it reads). Rows are immutable
            # once written, so separate snapshots can at most miss an image removed meanwhile, as one could.
            conn = self._reader_local.conn
            out = []
            for chunk in _chunks(part):
                out.extend(conn.execute(f"{select} WHERE image_id IN ({_marks(chunk)})", chunk))
            return out

        return [r for rows in self._reader_pool().map(fetch, parts) for r in rows]

    def _reader_pool(self) -> Any:
        """The reader threads of ``_rows_by_id``, started on first use and kept until ``close`` (starting
        four threads and opening their connections for every query was ~9 ms of a server's answer at 1M)."""
        with self._readers_lock:
            if self._readers is None:
                from concurrent.futures import ThreadPoolExecutor

                def connect() -> None:
                    conn = sqlite3.connect(
                        str(self.path / DB_NAME), timeout=BUSY_TIMEOUT_S, check_same_thread=False
                    )
                    self._reader_local.conn = conn
                    with self._readers_lock:
                        self._reader_conns.append(conn)

                self._readers = ThreadPoolExecutor(
                    _READERS, thread_name_prefix="lexsearch-read", initializer=connect
                )
            return self._readers

    def image_paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        out = {}
        for chunk in _chunks(sorted({int(i) for i in image_ids})):
            q = f"SELECT id, path FROM images WHERE id IN ({_marks(chunk)}) AND status = 'ok'"
            out.update((i, _py_path(p)) for i, p in self.db.execute(q, chunk))
        return out

    def file_exists(self, path: str) -> bool:
        """Whether an indexed file is still on disk (a search leaves out, and counts, those that are not)."""
        return os.path.exists(path)

    def cached_query(self, text: str) -> CachedQuery | None:
        """The cached encoding of ``text`` under the collection's model, or None."""
        row = self.db.execute(
            "SELECT terms, weights, dense FROM query_cache WHERE text = ? AND model_id = ?",
            [text, self._meta_value("model_id")],
        ).fetchone()
        if row is None:
            return None
        terms, weights = pf.decode_ids(row[0]).astype(np.int32), pf.decode_weights(row[1])
        vocab = int(self._meta_value("vocab_size") or (int(terms.max()) + 1 if terms.size else 1))
        sparse = SparseRow(terms, weights, (1, vocab))
        dense = pf.decode_dense(row[2]).reshape(1, -1) if row[2] is not None else None
        return CachedQuery(sparse=sparse, dense=dense)

    def cache_query(self, text: str, sparse_row: Any, dense_row: np.ndarray | None) -> None:
        """Store an encoded query (sparse: csr (1, V) or 1-d array; dense: (D,) / (1, D) or None)."""
        if hasattr(sparse_row, "tocsr"):
            row = sparse_row.tocsr()
            order = np.argsort(row.indices)
            terms, weights = row.indices[order], row.data[order]
        else:
            arr = np.asarray(sparse_row, np.float32).ravel()
            terms = np.flatnonzero(arr)
            weights = arr[terms]
        dense = pf.encode_dense(np.asarray(dense_row).ravel(), half=False) if dense_row is not None else None
        # Stored as float16 like the index, so a cache hit and a miss rank identically up to that rounding.
        with self._write():
            self.db.execute(
                "INSERT OR REPLACE INTO query_cache VALUES (?, ?, ?, ?, ?, ?)",
                [
                    text,
                    self._meta_value("model_id"),
                    pf.encode_ids(terms),
                    pf.encode_weights(weights),
                    dense,
                    time.time(),
                ],
            )

    # ---------------------------------------------------------------- more read helpers
    def count(self, status: str | None = "ok") -> int:
        if status is None:
            return self.db.execute("SELECT count(*) FROM images").fetchone()[0]
        return self.db.execute("SELECT count(*) FROM images WHERE status = ?", [status]).fetchone()[0]

    def failures(self) -> list[tuple[str, str]]:
        """(path, error) of every file that failed to index."""
        q = "SELECT path, error FROM images WHERE status = 'failed' ORDER BY path"
        return [(_py_path(p), e) for p, e in self.db.execute(q)]

    def rows(self) -> list[ImageRow]:
        q = "SELECT id, path, size, mtime_ns, hash, status FROM images"
        return [ImageRow(i, _py_path(p), *rest) for i, p, *rest in self.db.execute(q)]

    def verify(self) -> list[str]:
        """Check that images, forward, postings, tombstones and FAISS agree; returns the problems found."""
        problems: list[str] = []
        with self._read():
            ok = {r[0] for r in self.db.execute("SELECT id FROM images WHERE status = 'ok'")}
            fwd = {
                r[0]: pf.decode_forward(r[1], r[2])
                for r in self.db.execute("SELECT image_id, terms, weights FROM forward")
            }
            q = "SELECT image_id FROM forward WHERE dense IS NOT NULL"
            dense_ids = {r[0] for r in self.db.execute(q)}
            dead = {r[0] for r in self.db.execute("SELECT image_id FROM tombstones")}
            snap = self.postings_snapshot(range(int(self._meta_value("vocab_size") or 0) or self._max_term()))
        if set(fwd) != ok:
            problems.append(f"forward rows {len(fwd)} != ok images {len(ok)}")
        if dead & ok:
            problems.append(f"{len(dead & ok)} live images are tombstoned")
        expected = pf.invert(np.array(sorted(fwd), np.uint32), [fwd[i] for i in sorted(fwd)])
        got = snap.live()
        if set(expected) != set(got):
            problems.append(f"postings terms differ: {len(set(expected) ^ set(got))} terms")
        for t, (ids, w) in expected.items():
            g = got.get(t)
            if g is None or not np.array_equal(g[0], ids) or not np.allclose(g[1], w, atol=1e-3):
                problems.append(f"postings of term {t} do not match forward rows")
                break
        problems += self._verify_folders()
        if int(self._meta_value("dense_dim") or 0) > 0:
            index = self._dense_index()
            in_faiss = set(dn.index_ids(index).tolist()) if index is not None else set()
            if in_faiss != dense_ids or dense_ids - ok:
                problems.append(f"FAISS ids ({len(in_faiss)}) != stored dense vectors ({len(dense_ids)})")
        return problems

    def _verify_folders(self) -> list[str]:
        """Every folder with rows is listed, and a recorded digest is the digest of the folder's rows."""
        if "folders" not in self.db.table_names():  # a reader before the next index run adds it
            return []
        with self._read():
            states = self.folder_states()
            rows = [
                ImageRow(i, _py_path(p), *rest)
                for i, p, *rest in self.db.execute(
                    "SELECT id, path, size, mtime_ns, NULL, status FROM images"
                )
            ]
        by_folder: dict[str, list[ImageRow]] = {}
        for r in rows:
            by_folder.setdefault(os.path.dirname(r.path), []).append(r)
        problems = [
            f"folder {d!r} holds rows but is not listed" for d in sorted(set(by_folder) - set(states))
        ]
        for d, st in states.items():
            mine = by_folder.get(d, [])
            if st.digest is None:
                continue
            ok = sum(r.status == "ok" for r in mine)
            digest = folder_digest((os.path.basename(r.path), r.size, r.mtime_ns) for r in mine)
            if (digest, ok, len(mine) - ok) != (st.digest, st.ok, st.failed):
                problems.append(f"folder {d!r}: the recorded digest is not that of its rows")
        return problems

    def _max_term(self) -> int:
        row = self.db.execute("SELECT max(term_id) FROM postings").fetchone()
        files = [self._file(r[0]) for r in self.db.execute("SELECT name FROM segments")]
        return max([int(row[0] or 0)] + [int(f.terms[-1]) for f in files if f.terms.size]) + 1

    # ---------------------------------------------------------------- row lookups of the indexer
    def rows_by_path(self, hashes: bool = True) -> dict[str, ImageRow]:
        """Every image row by path; ``hashes=False`` leaves ``hash`` None (fetch the few needed with
        ``hashes_of``): at a million rows the hash strings are a third of the time."""
        q = f"SELECT id, path, size, mtime_ns, {'hash' if hashes else 'NULL'}, status FROM images"
        make = ImageRow._make
        # A million new tuples would trigger the cyclic GC over and over (it doubles the time); none of
        # them can be in a cycle.
        enabled = gc.isenabled()
        gc.disable()
        try:
            out = {}
            for r in self.db.execute(q):
                if r[1].__class__ is not str:  # a name stored as bytes (not UTF-8): as Python names it
                    r = (r[0], _py_path(r[1]), *r[2:])
                out[r[1]] = make(r)
            return out
        finally:
            if enabled:
                gc.enable()

    def hashes_of(self, image_ids: Iterable[int]) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for chunk in _chunks(sorted({int(i) for i in image_ids})):
            out.update(self.db.execute(f"SELECT id, hash FROM images WHERE id IN ({_marks(chunk)})", chunk))
        return out

    def folder_states(self) -> dict[str, FolderState]:
        """Every folder that holds image rows: its digest (None: not known to be up to date) and counts."""
        q = "SELECT dir, digest, ok, failed FROM folders"
        return {_py_path(d): FolderState(g, ok, failed) for d, g, ok, failed in self.db.execute(q)}

    def rows_in_folders(self, folders: Iterable[str]) -> dict[str, ImageRow]:
        """The image rows (``hash`` None, as ``rows_by_path(hashes=False)``) of the files directly in
        ``folders``, by path: a few index seeks per folder, not a read of every row."""
        return {r.path: r for rows in self._rows_by_folder(folders).values() for r in rows}

    def _rows_by_folder(self, folders: Iterable[str]) -> dict[str, list[ImageRow]]:
        """``rows_in_folders`` grouped by folder (each as ``_folder_name`` gives it)."""
        sep = os.fsencode(os.sep)
        wanted = {os.fsencode(_folder_name(f)) for f in folders}
        if not wanted:
            return {}
        all_dirs = sorted(
            os.fsencode(_py_path(d)).rstrip(sep) + sep for (d,) in self.db.execute("SELECT dir FROM folders")
        )
        q = "SELECT id, path, size, mtime_ns, NULL, status FROM images WHERE path >= ? AND path < ?"
        make = ImageRow._make
        out: dict[str, list[ImageRow]] = {}
        enabled = gc.isenabled()
        gc.disable()  # many new tuples, none in a cycle (see rows_by_path)
        try:
            for folder in sorted(wanted):
                prefix = folder.rstrip(sep) + sep
                start = bisect.bisect_right(all_dirs, prefix)
                subs = []
                for d in all_dirs[start:]:
                    if not d.startswith(prefix):
                        break
                    top = prefix + d[len(prefix) :].split(sep, 1)[0] + sep
                    if not subs or subs[-1] != top:
                        subs.append(top)
                # Text paths (valid UTF-8, compared as bytes) sort below every BLOB path (a name that is not
                # UTF-8): each kind is read from its own ranges; a non-UTF-8 folder holds no text path.
                ranges: list[tuple[str | bytes, str | bytes]] = list(_subtree_gaps(prefix, subs))
                if _utf8(prefix):
                    text_subs = [d for d in subs if _utf8(d)]
                    ranges += [(a.decode(), b.decode()) for a, b in _subtree_gaps(prefix, text_subs)]
                mine = out.setdefault(os.fsdecode(folder), [])
                plen = len(os.fsdecode(prefix))
                for a, b in ranges:
                    for r in self.db.execute(q, [a, b]):
                        if r[1].__class__ is not str:  # a name stored as bytes: as Python names it
                            r = (r[0], _py_path(r[1]), *r[2:])
                        if r[1].find(os.sep, plen) < 0:  # directly in the folder (always, while folders
                            mine.append(make(r))  # lists every folder with rows; checked by verify)
        finally:
            if enabled:
                gc.enable()
        return out

    def rows_at(self, paths: Iterable[str]) -> dict[str, ImageRow]:
        """The image rows (``hash`` None) of these exact paths, by path."""
        out: dict[str, ImageRow] = {}
        q = "SELECT id, path, size, mtime_ns, NULL, status FROM images WHERE path = ?"
        for p in paths:
            for r in self.db.execute(q, [_db_path(p)]):
                out[p] = ImageRow(r[0], p, *r[2:])
        return out


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _subtree_gaps(prefix: bytes, subfolders: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Path ranges ``[lo, hi)`` that hold the files directly in the folder ``prefix`` (ending in a
    separator) and none of ``subfolders`` (sorted, each ``prefix + name + sep``): between the subtrees."""
    sep = prefix[-1:]
    after = bytes([sep[0] + 1])  # the first byte above the separator: ``x/`` <= every path of x < ``x0``
    gaps, lo = [], prefix
    for sub in subfolders:
        if sub > lo:
            gaps.append((lo, sub))
        lo = max(lo, sub[:-1] + after)
    gaps.append((lo, prefix[:-1] + after))
    return gaps
