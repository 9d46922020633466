"""A collection: one folder holding ``index.db`` (SQLite, WAL) and ``dense.faiss`` (the dense re-ranker).

Schema (created and changed only by the named migrations below):

- ``meta(key, value)``: JSON values. model_id, vocab_hash, vocab_size, dense_dim, sparsify, model_path,
  roots, schema, postings_format, and two counters: ``generation`` (bumped by every commit that adds or
  removes images) and ``faiss_generation`` (the generation ``dense.faiss`` reflects).
- ``images(id, path, size, mtime_ns, hash, width, height, exif_time, status, error, indexed_at)``: one row
  per file seen, ``status`` 'ok' or 'failed' (with ``error``). ``path`` is text, or the raw bytes of a name
  that is not valid UTF-8 (see ``paths.py``): every file name the OS can give is stored losslessly. ``id``
  is AUTOINCREMENT, so ids are never reused: a deleted or changed image's id stays dead and tombstones stay
  unambiguous.
- ``forward(image_id, terms, weights, dense)``: the sparse vector (and dense vector) of each 'ok' image.
  It is the source of truth: postings and FAISS can always be rebuilt from it.
- ``postings(term_id, segment, n, ids, weights)``: per term a few blobs (see ``postings.py`` for the format
  and the segment scheme). Never one row per posting.
- ``tombstones(image_id, terms)``: deleted ids still present in some posting blob, with the terms to compact.
- ``query_cache(text, model_id, terms, weights, dense, created_at)``: encoded queries.

Crash safety: every write is one SQLite transaction that leaves images, forward, postings and tombstones in
agreement. ``dense.faiss`` is rewritten only at the end of a run (temp file + fsync + rename) and is trusted
only when ``faiss_generation == generation``; otherwise whoever opens the collection repairs it from
``forward.dense`` by an id diff (cheap: ids are never reused, so equal ids mean equal vectors).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from lexsearch import config
from lexsearch.errors import (
    CollectionBusyError,
    CollectionNotFoundError,
    IndexError_,
    ModelMismatchError,
    UsageError,
)
from lexsearch.index import postings as pf
from lexsearch.index.paths import db_path as _db_path
from lexsearch.index.paths import db_text as _db_text
from lexsearch.index.paths import py_path as _py_path

logger = logging.getLogger(__name__)

DB_NAME = "index.db"
FAISS_NAME = "dense.faiss"
LOCK_NAME = "index.lock"
SCHEMA_VERSION = 1

# A reader waits this long for a writer's commit instead of failing with "database is locked". Writers
# commit every couple of seconds, so a long wait means something is really stuck.
BUSY_TIMEOUT_S = 60.0
# Compact a term once it has this many segments: bounds the blobs a query reads per term while keeping
# the write cost of a commit proportional to what it adds.
MAX_SEGMENTS = 8
# SQLite's bound-parameter limit is 32766 on modern builds; stay well under it.
_CHUNK = 5000

migrations = Migrations("lexsearch.index")


@migrations()
def m001_create_tables(db: Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            hash TEXT,
            width INTEGER,
            height INTEGER,
            exif_time TEXT,
            status TEXT NOT NULL,
            error TEXT,
            indexed_at REAL
        )"""
    )
    db.execute("CREATE INDEX images_hash ON images(hash)")
    db.execute(
        "CREATE TABLE forward (image_id INTEGER PRIMARY KEY, terms BLOB NOT NULL, weights BLOB NOT NULL, "
        "dense BLOB)"
    )
    db.execute(
        "CREATE TABLE postings (term_id INTEGER NOT NULL, segment INTEGER NOT NULL, n INTEGER NOT NULL, "
        "ids BLOB NOT NULL, weights BLOB NOT NULL, PRIMARY KEY (term_id, segment))"
    )
    db.execute("CREATE TABLE tombstones (image_id INTEGER PRIMARY KEY, terms BLOB NOT NULL)")
    db.execute(
        "CREATE TABLE query_cache (text TEXT PRIMARY KEY, model_id TEXT NOT NULL, terms BLOB NOT NULL, "
        "weights BLOB NOT NULL, dense BLOB, created_at REAL NOT NULL)"
    )


@dataclass
class ImageRow:
    """One row of ``images`` as the indexer needs it."""

    id: int
    path: str
    size: int
    mtime_ns: int
    hash: str | None
    status: str


@dataclass
class NewImage:
    """An image to insert: stat, content hash, decode facts and its vectors (or its failure)."""

    path: str
    size: int
    mtime_ns: int
    hash: str | None
    width: int | None = None
    height: int | None = None
    exif_time: str | None = None
    terms: np.ndarray | None = None  # uint32 ascending; None for a failed file
    weights: np.ndarray | None = None  # float32
    dense: np.ndarray | None = None  # (D,) float32
    error: str | None = None


@dataclass
class Changes:
    """What one commit does. Applied in one transaction: removals, stat updates and moves, then inserts."""

    remove: list[int] = field(default_factory=list)
    # (image_id, new path, size, mtime_ns): a move keeps the id and so all its vectors and postings.
    move: list[tuple[int, str, int, int]] = field(default_factory=list)
    insert: list[NewImage] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.remove or self.move or self.insert)


@dataclass
class CachedQuery:
    """A cached encoded query, shaped like ``lexsearch.model.Encoded`` with one row."""

    sparse: Any  # scipy.sparse.csr_matrix (1, V)
    dense: np.ndarray | None  # (1, D) or None


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A bare name means ``LEXSEARCH_HOME/collections/NAME``; anything with a separator is a path."""
    s = os.fspath(name_or_path)
    if not s.strip():
        # '' would resolve to the collections folder itself and turn it into a collection.
        raise UsageError("The collection name is empty; give a name (e.g. --collection photos) or a folder.")
    if os.sep in s or (os.altsep and os.altsep in s) or s.startswith(".") or Path(s).is_absolute():
        return Path(s).expanduser().absolute()
    return config.collections_dir() / s


def _take_lock(path: Path) -> int:
    """One writer per collection: an advisory lock the OS drops when the process dies (even by SIGKILL)."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # Windows: SQLite's own locking still keeps the data safe
        pass
    except OSError as exc:
        os.close(fd)
        msg = f"Another 'lexsearch index' is writing to {path}; wait for it to finish."
        raise CollectionBusyError(msg) from exc
    return fd


def _connect(db_path: Path) -> Database:
    # check_same_thread=False: the indexer's writer is used from one thread at a time, but not always the
    # thread that opened it (tests and servers). The busy timeout is what makes readers wait, not fail.
    conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return Database(conn)


class Collection:
    """An image collection on disk. ``open(..., readonly=True)`` for search; the indexer opens it writable.

    "readonly" means "will not index": a reader may still write the query cache.
    """

    def __init__(self, path: Path, db: Database, readonly: bool):
        self.path = path
        self.db = db
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._meta: dict[str, Any] | None = None
        self._faiss = None  # in-memory faiss.IndexIDMap2, loaded lazily
        self._faiss_gen = -1  # the DB generation the in-memory index reflects
        self._segments: dict[int, list[list[int]]] | None = None  # writer only: term -> [[segment, n]]
        self._dead: set[int] = set()  # writer only: tombstoned ids

    # ---------------------------------------------------------------- opening and meta
    @classmethod
    def open(
        cls, name_or_path: str | os.PathLike[str] = "default", readonly: bool = True, recreate: bool = False
    ) -> Collection:
        """Open a collection; a writable open creates it (and takes the single-writer lock).

        ``recreate`` (writers only) empties the collection first: the rebuild after a model change.
        """
        path = resolve(name_or_path)
        db_path = path / DB_NAME
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} is a file, not a collection folder; give a collection name or a folder.")
        rebuild = (f"rebuild it with: lexsearch index DIR --model MODEL_DIR --collection {name_or_path} "
                   "--rebuild")
        if not db_path.exists() and readonly:
            raise CollectionNotFoundError(
                f"No collection at {path}. Create it with: lexsearch index DIR --model MODEL_DIR"
                f" --collection {name_or_path}"
            )
        lock_fd = None
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
            # The lock comes before the database: a rebuild must not delete files another writer has open.
            lock_fd = _take_lock(path)
            if recreate:
                for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", FAISS_NAME, FAISS_NAME + ".tmp"):
                    (path / name).unlink(missing_ok=True)
        try:
            col = cls(path, _connect(db_path), readonly)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        col._lock_fd = lock_fd
        try:
            if not readonly:
                # WAL lets readers run during a write transaction; set once by the writer (it persists in
                # the file), so readers never need the lock that changing the journal mode takes.
                col.db.enable_wal()
                col.db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, safe
            if migrations.pending(col.db):
                if readonly and not col.db.table_names():
                    # An empty file (a full disk, a bad copy) is not an old schema: an upgrade cannot help.
                    raise IndexError_(f"Collection {path} has an empty {DB_NAME} (nothing is indexed); {rebuild}")
                if readonly:
                    raise IndexError_(f"Collection {path} needs an upgrade: run 'lexsearch index' on it.")
                migrations.apply(col.db)
                col._set_meta(
                    {"schema": SCHEMA_VERSION, "postings_format": pf.POSTINGS_FORMAT, "generation": 0,
                     "faiss_generation": 0, "created_at": time.time()}
                )
        except sqlite3.DatabaseError as exc:
            col.close()
            raise IndexError_(f"Collection {path} is damaged ({exc}); {rebuild}") from exc
        except BaseException:
            col.close()
            raise
        return col

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, Any]:
        """model_id, vocab_hash, vocab_size, dense_dim, sparsify, schema, ... (read fresh each access)."""
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT key, value FROM meta")}

    def _set_meta(self, values: dict[str, Any]) -> None:
        with self._write():
            self._write_meta(values)

    def _write_meta(self, values: dict[str, Any]) -> None:
        self.db.conn.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def _meta_value(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def bind_model(self, model: dict[str, Any], rebuild_command: str) -> None:
        """Record the model in a new collection, or refuse one written by another model.

        ``model`` holds model_id, vocab_hash, vocab_size, dense_dim (and optionally sparsify, model_path).
        """
        current = self.meta
        if current.get("model_id") is None:
            self._set_meta(model)
            return
        check_model(current, model, self.path, rebuild_command)
        if model.get("model_path") and model.get("model_path") != current.get("model_path"):
            self._set_meta({"model_path": model["model_path"]})

    @property
    def max_image_id(self) -> int:
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
        return int(row[0]) if row else 0

    # ---------------------------------------------------------------- read API (INTERFACES.md)
    def postings(self, term_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Live postings per term: (image ids uint32 ascending, weights float32); absent terms are omitted."""
        terms = sorted({int(t) for t in term_ids})
        segs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        with self._read():
            dead = np.fromiter((r[0] for r in self.db.execute("SELECT image_id FROM tombstones")), np.uint32)
            for chunk in _chunks(terms):
                q = (
                    f"SELECT term_id, ids, weights FROM postings WHERE term_id IN ({_marks(chunk)}) "
                    "ORDER BY term_id, segment"
                )
                for t, ids, w in self.db.execute(q, chunk):
                    segs.setdefault(t, []).append((pf.decode_ids(ids), pf.decode_weights(w)))
        out = {}
        for t, s in segs.items():
            ids, w = pf.merge_segments(s, dead)
            if ids.size:
                out[t] = (ids, w)
        return out

    def forward(self, image_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Sparse vector per image: (term ids int32 ascending, weights float32)."""
        out = {}
        for chunk in _chunks(sorted({int(i) for i in image_ids})):
            q = f"SELECT image_id, terms, weights FROM forward WHERE image_id IN ({_marks(chunk)})"
            for i, t, w in self.db.execute(q, chunk):
                out[i] = (pf.decode_ids(t).astype(np.int32), pf.decode_weights(w))
        return out

    def image_paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        out = {}
        for chunk in _chunks(sorted({int(i) for i in image_ids})):
            q = f"SELECT id, path FROM images WHERE id IN ({_marks(chunk)}) AND status = 'ok'"
            out.update((i, _py_path(p)) for i, p in self.db.execute(q, chunk))
        return out

    def file_exists(self, path: str) -> bool:
        """Whether an indexed file is still on disk (a search leaves out, and counts, those that are not)."""
        return os.path.exists(path)

    def dense_vectors(self, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Stored dense vectors (D,) float32 of some images (those without one are omitted)."""
        out = {}
        for chunk in _chunks(sorted({int(i) for i in image_ids})):
            q = f"SELECT image_id, dense FROM forward WHERE image_id IN ({_marks(chunk)})"
            for i, d in self.db.execute(q, chunk):
                if d is not None:
                    out[i] = pf.decode_dense(d)
        return out

    def dense_scores(self, q: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """Inner product of ``q`` with each image's dense vector, in the order given; 0 where there is none.

        Read from ``forward.dense`` (the same float32 vectors FAISS holds) so the scores are exact even while
        an indexer runs and ``dense.faiss`` lags behind the database.
        """
        ids = np.asarray(image_ids).astype(np.int64).ravel()
        out = np.zeros(ids.size, np.float32)
        vecs = self.dense_vectors(ids.tolist())
        if not vecs:
            return out
        rows = [k for k, i in enumerate(ids.tolist()) if i in vecs]
        matrix = np.stack([vecs[int(ids[k])] for k in rows])  # (n, D)
        out[rows] = matrix @ np.asarray(q, np.float32).ravel()
        return out

    def dense_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` images with the largest inner product with ``q``: (ids int64, scores float32)."""
        index = self._dense_index()
        if index is None or index.ntotal == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        scores, ids = index.search(np.asarray(q, np.float32).reshape(1, -1), min(k, index.ntotal))
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def cached_query(self, text: str) -> CachedQuery | None:
        """The cached encoding of ``text`` under the collection's model, or None."""
        row = self.db.execute(
            "SELECT terms, weights, dense FROM query_cache WHERE text = ? AND model_id = ?",
            [text, self._meta_value("model_id")],
        ).fetchone()
        if row is None:
            return None
        from scipy.sparse import csr_matrix

        terms, weights = pf.decode_ids(row[0]).astype(np.int32), pf.decode_weights(row[1])
        vocab = int(self._meta_value("vocab_size") or (int(terms.max()) + 1 if terms.size else 1))
        sparse = csr_matrix((weights, terms, np.array([0, terms.size])), shape=(1, vocab), dtype=np.float32)
        dense = pf.decode_dense(row[2]).reshape(1, -1).copy() if row[2] is not None else None
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
        dense = pf.encode_dense(np.asarray(dense_row).ravel()) if dense_row is not None else None
        # Stored as float16 like the index, so a cache hit and a miss rank identically up to that rounding.
        with self._write():
            self.db.execute(
                "INSERT OR REPLACE INTO query_cache VALUES (?, ?, ?, ?, ?, ?)",
                [text, self._meta_value("model_id"), pf.encode_ids(terms), pf.encode_weights(weights), dense,
                 time.time()],
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
            fwd = {r[0]: (pf.decode_ids(r[1]), pf.decode_weights(r[2]))
                   for r in self.db.execute("SELECT image_id, terms, weights FROM forward")}
            q = "SELECT image_id FROM forward WHERE dense IS NOT NULL"
            dense_ids = {r[0] for r in self.db.execute(q)}
            terms = [r[0] for r in self.db.execute("SELECT DISTINCT term_id FROM postings")]
            dead = {r[0] for r in self.db.execute("SELECT image_id FROM tombstones")}
        if set(fwd) != ok:
            problems.append(f"forward rows {len(fwd)} != ok images {len(ok)}")
        if dead & ok:
            problems.append(f"{len(dead & ok)} live images are tombstoned")
        expected = pf.invert(np.array(sorted(fwd), np.uint32), [fwd[i] for i in sorted(fwd)])
        got = self.postings(terms)
        if set(expected) != set(got):
            problems.append(f"postings terms differ: {len(set(expected) ^ set(got))} terms")
        for t, (ids, w) in expected.items():
            g = got.get(t)
            if g is None or not np.array_equal(g[0], ids) or not np.allclose(g[1], w, atol=1e-3):
                problems.append(f"postings of term {t} do not match forward rows")
                break
        if int(self._meta_value("dense_dim") or 0) > 0:
            index = self._dense_index()
            import faiss

            in_faiss = set(faiss.vector_to_array(index.id_map).tolist()) if index is not None else set()
            if in_faiss != dense_ids or dense_ids - ok:
                problems.append(f"FAISS ids ({len(in_faiss)}) != stored dense vectors ({len(dense_ids)})")
        return problems

    # ---------------------------------------------------------------- dense index (FAISS)
    def _dense_index(self):
        """The FAISS index, loaded from disk and repaired in memory if it lags behind the database."""
        dim = int(self._meta_value("dense_dim") or 0)
        if dim <= 0:
            return None
        gen = int(self._meta_value("generation", 0))
        if self._faiss is not None and self._faiss_gen == gen:
            return self._faiss

        if self._faiss is None:
            self._faiss = self._load_faiss(dim)
            if self._faiss is not None and self._meta_value("faiss_generation") == gen:
                self._faiss_gen = gen
                return self._faiss
            if self._faiss is None:
                self._faiss = _new_dense_index(dim)
        self._faiss_gen = self._sync_faiss(self._faiss)
        return self._faiss

    def _load_faiss(self, dim: int):
        import faiss

        path = self.path / FAISS_NAME
        if not path.exists():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:  # a torn or foreign file: the database can rebuild it
            logger.warning("dense index %s is unreadable (%s); rebuilding it from the database", path, exc)
            return None
        if index.d != dim or not isinstance(index, faiss.IndexIDMap2):
            return None
        return index

    def _sync_faiss(self, index) -> int:
        """Make ``index`` hold exactly the stored dense vectors (an id diff); returns the generation."""
        import faiss

        with self._read():
            gen = int(self._meta_value("generation", 0))
            db_ids = np.array([r[0] for r in self.db.execute(
                "SELECT image_id FROM forward WHERE dense IS NOT NULL")], np.int64)
            have = faiss.vector_to_array(index.id_map).astype(np.int64)
            extra = np.setdiff1d(have, db_ids)
            missing = np.setdiff1d(db_ids, have)
            vecs = self.dense_vectors(missing.tolist()) if missing.size else {}
        if extra.size:
            index.remove_ids(extra)
        if vecs:
            ids = np.array(sorted(vecs), np.int64)
            index.add_with_ids(np.stack([vecs[i] for i in ids]).astype(np.float32), ids)
        if extra.size or missing.size:
            logger.info("dense index synced: %d added, %d removed", missing.size, extra.size)
        return gen

    def save_dense(self) -> None:
        """Write ``dense.faiss`` atomically and record the generation it reflects (writer only)."""
        self._require_writer()
        index = self._dense_index()
        if index is None:
            return
        import faiss

        path = self.path / FAISS_NAME
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        # fsync before rename: after a power cut the new name must not point at unwritten blocks.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._set_meta({"faiss_generation": self._faiss_gen})

    # ---------------------------------------------------------------- write API (the indexer)
    def _require_writer(self) -> None:
        if self.readonly:
            raise IndexError_("This collection was opened read-only.")

    def rows_by_path(self) -> dict[str, ImageRow]:
        return {r.path: r for r in self.rows()}

    def apply(self, changes: Changes) -> list[int]:
        """Apply one batch of changes in one transaction; returns the new ids of ``changes.insert``."""
        self._require_writer()
        self._load_segments()
        conn = self.db.conn
        new_ids: list[int] = []
        ok_rows: list[tuple[int, NewImage]] = []
        removed: list[int] = []
        touched_terms: set[int] = set()
        with self._write():
            for image_id in changes.remove:
                row = conn.execute("SELECT terms FROM forward WHERE image_id = ?", [image_id]).fetchone()
                if row is not None:
                    conn.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?)", [image_id, row[0]])
                    conn.execute("DELETE FROM forward WHERE image_id = ?", [image_id])
                    removed.append(image_id)
                conn.execute("DELETE FROM images WHERE id = ?", [image_id])
            for image_id, path, size, mtime_ns in changes.move:
                conn.execute(
                    "UPDATE images SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                    [_db_path(path), size, mtime_ns, image_id],
                )
            now = time.time()
            for im in changes.insert:
                status = "failed" if im.terms is None else "ok"
                cur = conn.execute(
                    "INSERT INTO images (path, size, mtime_ns, hash, width, height, exif_time, status, "
                    "error, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [_db_path(im.path), im.size, im.mtime_ns, im.hash, im.width, im.height,
                     _db_text(im.exif_time), status, _db_text(im.error), now],
                )
                new_ids.append(int(cur.lastrowid))
                if status == "ok":
                    ok_rows.append((new_ids[-1], im))
            if ok_rows:
                conn.executemany(
                    "INSERT INTO forward VALUES (?, ?, ?, ?)",
                    [(i, pf.encode_ids(im.terms), pf.encode_weights(im.weights),
                      pf.encode_dense(im.dense) if im.dense is not None else None) for i, im in ok_rows],
                )
                inverted = pf.invert(
                    np.array([i for i, _ in ok_rows], np.uint32),
                    [(im.terms, im.weights) for _, im in ok_rows],
                )
                for t, (ids, w) in inverted.items():
                    segs = self._segments.setdefault(t, [])
                    seg = segs[-1][0] + 1 if segs else 0
                    conn.execute(
                        "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                        [t, seg, ids.size, pf.encode_ids(ids), pf.encode_weights(w)],
                    )
                    segs.append([seg, int(ids.size)])
                    if len(segs) > MAX_SEGMENTS:
                        touched_terms.add(t)
            self._dead.update(removed)
            for t in touched_terms:
                self._compact_term(t, full=False)
            gen = int(self._meta_value("generation", 0)) + 1
            self._write_meta({"generation": gen})
        # Only after the commit: the in-memory FAISS index follows the database, never leads it.
        self._after_commit(gen, [(i, im.dense) for i, im in ok_rows if im.dense is not None], removed)
        return new_ids

    def _after_commit(self, gen: int, added: list[tuple[int, np.ndarray]], removed: list[int]) -> None:
        if self._faiss is None or self._faiss_gen != gen - 1:
            return  # not loaded (or already stale): the next _dense_index() call syncs by id diff
        if removed:
            self._faiss.remove_ids(np.array(removed, np.int64))
        if added:
            self._faiss.add_with_ids(
                np.stack([d for _, d in added]).astype(np.float32), np.array([i for i, _ in added], np.int64)
            )
        self._faiss_gen = gen

    def _load_segments(self) -> None:
        if self._segments is not None:
            return
        self._segments = {}
        q = "SELECT term_id, segment, n FROM postings ORDER BY term_id, segment"
        for t, seg, n in self.db.execute(q):
            self._segments.setdefault(t, []).append([seg, n])
        self._dead = {r[0] for r in self.db.execute("SELECT image_id FROM tombstones")}

    def _compact_term(self, term: int, full: bool) -> None:
        """Rewrite a term's segments (inside the caller's transaction).

        Size-tiered: when the deltas together are small next to the base, only the deltas are merged (into
        segment 1), so a large term is not rewritten for every few new images; otherwise (or ``full``)
        everything is merged into the base, dropping tombstoned ids.
        """
        segs = self._segments.get(term, [])
        base_n = segs[0][1] if segs and segs[0][0] == 0 else 0
        delta_n = sum(n for s, n in segs if s != 0)
        deltas_only = not full and base_n > 0 and delta_n * 4 < base_n
        conn = self.db.conn
        where = "term_id = ? AND segment > 0" if deltas_only else "term_id = ?"
        q = f"SELECT ids, weights FROM postings WHERE {where} ORDER BY segment"
        rows = conn.execute(q, [term]).fetchall()
        dead = np.fromiter(self._dead, np.uint32, len(self._dead)) if self._dead else None
        ids, w = pf.merge_segments([(pf.decode_ids(a), pf.decode_weights(b)) for a, b in rows], dead)
        conn.execute(f"DELETE FROM postings WHERE {where}", [term])
        seg = 1 if deltas_only else 0
        kept = [s for s in segs if s[0] == 0] if deltas_only else []
        if ids.size:
            conn.execute(
                "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                [term, seg, ids.size, pf.encode_ids(ids), pf.encode_weights(w)],
            )
            kept.append([seg, int(ids.size)])
        if kept:
            self._segments[term] = kept
        else:
            self._segments.pop(term, None)

    def purge_tombstones(self, terms_per_commit: int = 2000) -> int:
        """Cut tombstoned ids out of the blobs that hold them, then forget the tombstones; returns how many.

        Done in chunks of terms per transaction; a crash midway leaves the tombstones in place (readers keep
        filtering them) and the next run finishes the job.
        """
        self._require_writer()
        self._load_segments()
        rows = self.db.execute("SELECT image_id, terms FROM tombstones").fetchall()
        if not rows:
            return 0
        terms = sorted(set(np.concatenate([pf.decode_ids(r[1]) for r in rows]).tolist()))
        for start in range(0, len(terms), terms_per_commit):
            with self._write():
                for t in terms[start : start + terms_per_commit]:
                    self._compact_term(int(t), full=True)
        with self._write():
            for chunk in _chunks([r[0] for r in rows]):
                self.db.conn.execute(f"DELETE FROM tombstones WHERE image_id IN ({_marks(chunk)})", chunk)
        self._dead.difference_update(r[0] for r in rows)
        return len(rows)

    def rebuild_postings(self) -> None:
        """Recreate every posting blob from the forward rows (repair tool; also clears tombstones)."""
        self._require_writer()
        fwd = self.db.execute("SELECT image_id, terms, weights FROM forward ORDER BY image_id").fetchall()
        inverted = pf.invert(
            np.array([r[0] for r in fwd], np.uint32),
            [(pf.decode_ids(r[1]), pf.decode_weights(r[2])) for r in fwd],
        )
        with self._write():
            self.db.execute("DELETE FROM postings")
            self.db.execute("DELETE FROM tombstones")
            self.db.conn.executemany(
                "INSERT INTO postings VALUES (?, 0, ?, ?, ?)",
                [(t, ids.size, pf.encode_ids(ids), pf.encode_weights(w)) for t, (ids, w) in inverted.items()],
            )
        self._segments, self._dead = None, set()

    def _write(self):
        """A write transaction that takes the write lock up front (BEGIN IMMEDIATE).

        A deferred BEGIN would read first and upgrade later; if another connection commits in between,
        SQLite fails the upgrade at once with "database is locked" (the busy timeout does not apply to a
        stale snapshot). Taking the lock first makes every writer simply wait its turn.
        """
        return _WriteTxn(self.db.conn)

    def _read(self):
        """A read transaction, so several SELECTs see one snapshot even while a writer commits."""
        return _ReadTxn(self.db.conn)


class _WriteTxn:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


class _ReadTxn:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.mine = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:  # inside a write transaction the snapshot is already ours
            self.conn.execute("BEGIN")
            self.mine = True

    def __exit__(self, *exc: object) -> None:
        if self.mine:
            self.conn.execute("COMMIT")


def _new_dense_index(dim: int):
    """An empty IndexIDMap2 over exact inner product (the dense vectors are L2-normalised: cosine)."""
    import faiss

    flat = faiss.IndexFlatIP(dim)
    index = faiss.IndexIDMap2(flat)
    # The wrapper does not own the Python-side flat index: without this the flat index is freed when
    # ``flat`` goes out of scope and the map points at freed memory (garbage ids, crashes).
    flat.this.disown()
    index.own_fields = True
    return index


def check_model(stored: dict[str, Any], model: dict[str, Any], path: Path, rebuild_command: str) -> None:
    """Refuse a collection written by another model, with the one command that rebuilds it."""
    if (stored.get("model_id"), stored.get("vocab_hash")) != (model.get("model_id"), model.get("vocab_hash")):
        raise ModelMismatchError(
            f"Collection {path} was built with model {str(stored.get('model_id'))[:12]}, not "
            f"{str(model.get('model_id'))[:12]}. Rebuild it with: {rebuild_command}"
        )


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(chunk: list) -> str:
    return ",".join("?" * len(chunk))
