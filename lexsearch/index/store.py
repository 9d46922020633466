"""A collection: one folder holding ``index.db`` (SQLite, WAL), posting segment files and FAISS segment files.

Schema (created and changed only by the named migrations below):

- ``meta(key, value)``: JSON values. model_id, vocab_hash, vocab_size, dense_dim, sparsify, model_path,
  roots, schema, postings_format, ``generation`` (bumped by every commit that adds or removes images), and
  the write counters behind the benchmark's write amplification (``postings_written``, ``postings_rewritten``).
- ``images(id, path, size, mtime_ns, hash, width, height, exif_time, status, error, indexed_at)``: one row
  per file seen, ``status`` 'ok' or 'failed' (with ``error``). ``path`` is text, or the raw bytes of a name
  that is not valid UTF-8 (see ``paths.py``): every file name the OS can give is stored losslessly. ``id``
  is AUTOINCREMENT, so ids are never reused: a deleted or changed image's id stays dead and tombstones stay
  unambiguous.
- ``forward(image_id, terms, weights, dense)``: the sparse vector (and dense vector) of each 'ok' image.
  It is the source of truth: postings and FAISS can always be rebuilt from it.
- ``segments(name, n, min_id, max_id, gen, bytes)``: the immutable posting files (``segments.py``) that hold
  the bulk of the postings, each for one contiguous id range.
- ``postings(term_id, segment, n, ids, weights)``: the *delta*: per term and commit one blob pair (see
  ``postings.py``) for images not yet in a file; flushed into a new file once it holds ``tiered.FLUSH_POSTINGS``.
  Never one row per posting.
- ``tombstones(image_id, terms, gen)``: removed ids that some file or delta blob may still hold; readers
  drop them (a boolean mask), flushes and merges leave them out, and a tombstone goes once nothing holds it.
- ``dense_segments(name, n, min_id, max_id, gen)``: the FAISS files (``dense.py``).
- ``query_cache(text, model_id, terms, weights, dense, created_at)``: encoded queries.
- ``folders(dir, digest, ok, failed)``: one row per folder that holds image rows (``dir`` stored like
  ``path``), with the ``paths.folder_digest`` of its rows' (name, size, mtime_ns) and their 'ok' / 'failed'
  counts, or a NULL digest. Every write to a folder's image rows sets its digest to NULL in the same
  transaction; ``seal_folders`` sets it again from the rows themselves. An index run reads the rows only of
  the folders whose scanned listing does not match their digest (``build.py``).

Crash safety: every change to the database is one SQLite transaction that leaves images, forward, postings
and tombstones in agreement. A file (postings or FAISS) is written to a temp name, fsynced and renamed
before the transaction that references it commits, and a file is deleted only after the transaction that
retires it; a crash in between leaves an unreferenced file, which the next writer deletes. A reader maps
the files its snapshot names (a file retired meanwhile stays readable through its mapping; one already gone
means a newer snapshot exists, which the reader then takes).
"""

from __future__ import annotations

import bisect
import gc
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from lexsearch.errors import (
    CollectionBusyError,
    CollectionNotFoundError,
    IndexError_,
    ModelMismatchError,
    UsageError,
)
from lexsearch.index import dense as dn
from lexsearch.index import postings as pf
from lexsearch.index import segments as sg
from lexsearch.index.dense import DenseSegments
from lexsearch.index.paths import db_path as _db_path
from lexsearch.index.paths import db_text as _db_text
from lexsearch.index.paths import folder_digest, resolve
from lexsearch.index.paths import py_path as _py_path

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

from lexsearch.index.tiered import FANOUT, FLUSH_POSTINGS, MAX_SEGMENTS, PostingsSnapshot, TieredPostings

logger = logging.getLogger(__name__)

DB_NAME = "index.db"
FAISS_NAME = "dense.faiss"  # the single FAISS file of schema 1; read once by the upgrade, then deleted
LOCK_NAME = "index.lock"
SCHEMA_VERSION = 3
PAGE_SIZE = 16384

# A reader waits this long for a writer's commit instead of failing with "database is locked". Writers
# commit every couple of seconds, so a long wait means something is really stuck.
BUSY_TIMEOUT_S = 60.0
# A reader fetching at least this many rows by id spreads them over this many connections (threads).
_PARALLEL_MIN_ROWS = 256
_READERS = 4
# SQLite's bound-parameter limit is 32766 on modern builds; stay well under it.
_CHUNK = 5000

MIGRATION_SET = "lexsearch.index"


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


def m002_segment_files(db: Database) -> None:
    db.execute(
        "CREATE TABLE segments (name TEXT PRIMARY KEY, n INTEGER NOT NULL, min_id INTEGER NOT NULL, "
        "max_id INTEGER NOT NULL, gen INTEGER NOT NULL, bytes INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE dense_segments (name TEXT PRIMARY KEY, n INTEGER NOT NULL, min_id INTEGER NOT NULL, "
        "max_id INTEGER NOT NULL, gen INTEGER NOT NULL)"
    )
    db.execute("CREATE TABLE dense_dead (image_id INTEGER PRIMARY KEY)")
    db.execute("ALTER TABLE tombstones ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
    # Tombstones of schema 1 may be in any delta blob: give them the current generation (kept to a flush).
    db.execute(
        "UPDATE tombstones SET gen = coalesce((SELECT CAST(value AS INTEGER) FROM meta "
        "WHERE key = 'generation'), 0)"
    )


def m003_folder_digests(db: Database) -> None:
    # Every folder that holds image rows gets a row here (digest NULL: not known to be up to date); the
    # next completed index run fills in the digests of the folders it scanned.
    db.execute(
        "CREATE TABLE folders (dir TEXT PRIMARY KEY, digest BLOB, ok INTEGER NOT NULL DEFAULT 0, "
        "failed INTEGER NOT NULL DEFAULT 0)"
    )
    dirs = {_folder_key(p) for (p,) in db.execute("SELECT path FROM images")}
    db.conn.executemany("INSERT INTO folders (dir) VALUES (?)", [(d,) for d in dirs])


# In order. Registered with sqlite-utils only when a writer opens a collection: readers check what is
# applied with one SELECT, so a query process does not import sqlite-utils (~100 ms).
MIGRATIONS = [m001_create_tables, m002_segment_files, m003_folder_digests]


def migrations() -> Migrations:
    from sqlite_utils.migrations import Migrations

    m = Migrations(MIGRATION_SET)
    for fn in MIGRATIONS:
        m()(fn)
    return m


# Migrations only a writer needs: a reader opens a collection they are still pending on (the next index run
# applies them), so upgrading lexsearch never makes a search wait for an index run.
WRITER_ONLY = frozenset({"m003_folder_digests"})


def _pending(conn: sqlite3.Connection) -> list[str]:
    try:
        q = "SELECT name FROM _sqlite_migrations WHERE migration_set = ?"
        applied = {r[0] for r in conn.execute(q, [MIGRATION_SET])}
    except sqlite3.OperationalError:  # no migrations table: a new (or foreign) database
        applied = set()
    return [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in applied]


class _ReaderDb:
    """The part of sqlite-utils' ``Database`` a reader uses, over a plain sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def execute(self, sql: str, parameters: Any = None) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters or [])

    def table_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    def close(self) -> None:
        self.conn.close()


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


def _connect(db_path: Path, readonly: bool) -> Database | _ReaderDb:
    # check_same_thread=False: the indexer's writer is used from one thread at a time, but not always the
    # thread that opened it (tests and servers). The busy timeout is what makes readers wait, not fail.
    conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    if readonly:
        return _ReaderDb(conn)
    from sqlite_utils import Database

    return Database(conn)


class Collection(TieredPostings, DenseSegments):
    """An image collection on disk. ``open(..., readonly=True)`` for search; the indexer opens it writable.

    "readonly" means "will not index": a reader may still write the query cache.
    """

    def __init__(self, path: Path, db: Database | _ReaderDb, readonly: bool):
        self.path = path
        self.db = db
        self.readonly = readonly
        self._lock_fd: int | None = None
        self._meta: dict[str, Any] | None = None
        self._faiss = None  # in-memory faiss.IndexIDMap2 (all dense files + repairs), loaded lazily
        self._faiss_gen = -1  # the DB generation the in-memory index reflects
        self._files: dict[str, sg.SegmentFile] = {}  # open posting files by name (mappings stay valid)
        self._readers: Any = None  # the thread pool of _rows_by_id, and its threads' own connections
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_local = threading.local()
        self._readers_lock = threading.Lock()

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
            raise UsageError(
                f"{path} is a file, not a collection folder; give a collection name or a folder."
            )
        rebuild = (
            f"rebuild it with: lexsearch index DIR --model MODEL_DIR --collection {name_or_path} --rebuild"
        )
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
                for f in _data_files(path):
                    f.unlink(missing_ok=True)
        try:
            col = cls(path, _connect(db_path, readonly), readonly)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        col._lock_fd = lock_fd
        try:
            if not readonly:
                if "meta" not in col.db.table_names():
                    # A new file: 16 KB pages hold ten ~1.5 KB forward rows where 4 KB pages hold two (a
                    # quarter of every page wasted). Only possible before the first table and WAL mode.
                    col.db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                # WAL lets readers run during a write transaction; set once by the writer (it persists in
                # the file), so readers never need the lock that changing the journal mode takes.
                col.db.enable_wal()
                col.db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, safe
            pending = _pending(col.db.conn)
            if readonly:
                pending = [name for name in pending if name not in WRITER_ONLY]
            if pending:
                if readonly and not col.db.table_names():
                    # An empty file (a full disk, a bad copy) is not an old schema: an upgrade cannot help.
                    raise IndexError_(
                        f"Collection {path} has an empty {DB_NAME} (nothing is indexed); {rebuild}"
                    )
                if readonly:
                    import shlex

                    # Its folders and model are read from the old schema's meta: the command runs as printed.
                    roots = col._meta_value("roots") or ["DIR"]
                    update = shlex.join(
                        ["lexsearch", "index", *roots, "--collection", os.fspath(name_or_path)]
                    )
                    raise IndexError_(f"Collection {path} needs an upgrade: run {update}")
                fresh = "meta" not in col.db.table_names()
                migrations().apply(col.db)
                if fresh:
                    col._set_meta(
                        {
                            "generation": 0,
                            "faiss_generation": 0,
                            "created_at": time.time(),
                            "postings_written": 0,
                            "postings_rewritten": 0,
                        }
                    )
                # A schema-1 collection's postings are all SQLite blobs: they count as delta, flushed into
                # files by the next commits.
                delta = col.db.execute("SELECT coalesce(sum(n), 0) FROM postings").fetchone()[0]
                col._set_meta(
                    {
                        "schema": SCHEMA_VERSION,
                        "postings_format": pf.POSTINGS_FORMAT,
                        "delta_postings": int(delta),
                    }
                )
            if not readonly:
                col._delete_orphans()
        except sqlite3.DatabaseError as exc:
            col.close()
            raise IndexError_(f"Collection {path} is damaged ({exc}); {rebuild}") from exc
        except BaseException:
            col.close()
            raise
        return col

    def close(self) -> None:
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()
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

    # ---------------------------------------------------------------- write API (the indexer)
    def _require_writer(self) -> None:
        if self.readonly:
            raise IndexError_("This collection was opened read-only.")

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

    def seal_folders(self, digests: dict[str, bytes | None]) -> int:
        """Record each folder's digest, as a scan computed it, where it is the digest of the rows stored for
        that folder now (``paths.folder_digest``); drop the entries of folders left without rows.

        Called by an index run that completed those folders. The digests are compared with the rows in
        the same transaction, so a recorded digest always describes the stored rows; a later write to a
        folder's rows clears it (``apply``). Returns how many digests were recorded.
        """
        self._require_writer()
        sealed = 0
        with self._write():
            by_folder = self._rows_by_folder(digests)
            for folder, digest in digests.items():
                folder = _folder_name(folder)
                mine = by_folder.get(folder, [])
                key = _db_path(folder)
                if not mine:
                    self.db.conn.execute("DELETE FROM folders WHERE dir = ?", [key])
                    continue
                plen = len(folder.rstrip(os.sep) + os.sep)
                if (
                    digest is None
                    or folder_digest((r.path[plen:], r.size, r.mtime_ns) for r in mine) != digest
                ):
                    continue
                ok = sum(r.status == "ok" for r in mine)
                self.db.conn.execute(
                    "UPDATE folders SET digest = ?, ok = ?, failed = ? WHERE dir = ?",
                    [digest, ok, len(mine) - ok, key],
                )
                sealed += 1
        return sealed

    def apply(self, changes: Changes) -> list[int]:
        """Apply one batch of changes in one transaction; returns the new ids of ``changes.insert``.

        New postings go to the SQLite delta; once it is large it is flushed into a posting file (and files
        merged) in transactions of their own, after this one.
        """
        self._require_writer()
        conn = self.db.conn
        new_ids: list[int] = []
        ok_rows: list[tuple[int, NewImage]] = []
        removed: list[int] = []
        vocab = int(self._meta_value("vocab_size") or 0)
        with self._write():
            gen = int(self._meta_value("generation", 0)) + 1
            covered = int(self._meta_value("dense_covered", 0))
            in_files = int(self.db.execute("SELECT coalesce(max(max_id), 0) FROM segments").fetchone()[0])
            # Every folder whose rows this commit touches loses its digest (and is listed, if new).
            touched: set[str | bytes] = set()
            for chunk in _chunks(
                sorted({int(i) for i in changes.remove} | {int(m[0]) for m in changes.move})
            ):
                q = f"SELECT path FROM images WHERE id IN ({_marks(chunk)})"
                touched.update(_folder_key(p) for (p,) in conn.execute(q, chunk))
            touched.update(_folder_key(m[1]) for m in changes.move)
            touched.update(_folder_key(im.path) for im in changes.insert)
            conn.executemany(
                "INSERT INTO folders (dir) VALUES (?) ON CONFLICT(dir) DO UPDATE SET digest = NULL",
                [(d,) for d in touched],
            )
            for image_id in changes.remove:
                row = conn.execute(
                    "SELECT terms, weights, dense IS NOT NULL FROM forward WHERE image_id = ?", [image_id]
                ).fetchone()
                if row is not None:
                    # For an image in the delta (ids above every file's), the terms tell which delta blobs to
                    # clean (``purge_tombstones``); an image in a file is left to the merges (no terms).
                    terms = (
                        pf.encode_ids(pf.decode_forward(row[0], row[1])[0]) if image_id > in_files else b""
                    )
                    conn.execute("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)", [image_id, terms, gen])
                    conn.execute("DELETE FROM forward WHERE image_id = ?", [image_id])
                    if row[2] and image_id <= covered:  # its vector is in a FAISS file: drop it on load
                        conn.execute("INSERT OR IGNORE INTO dense_dead VALUES (?)", [image_id])
                    removed.append(image_id)
                conn.execute("DELETE FROM images WHERE id = ?", [image_id])
            for image_id, path, size, mtime_ns in changes.move:
                conn.execute(
                    "UPDATE images SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                    [_db_path(path), size, mtime_ns, image_id],
                )
            now = time.time()
            if changes.insert:
                # One executemany for all rows: in one write transaction AUTOINCREMENT hands out consecutive
                # ids after the sequence, so the ids are known without a statement per image.
                first = self.max_image_id + 1
                conn.executemany(
                    "INSERT INTO images (path, size, mtime_ns, hash, width, height, exif_time, status, "
                    "error, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            _db_path(im.path),
                            im.size,
                            im.mtime_ns,
                            im.hash,
                            im.width,
                            im.height,
                            _db_text(im.exif_time),
                            "failed" if im.terms is None else "ok",
                            _db_text(im.error),
                            now,
                        )
                        for im in changes.insert
                    ],
                )
                new_ids = list(range(first, first + len(changes.insert)))
                if self.max_image_id != new_ids[-1]:  # never expected; fail the transaction rather than lie
                    raise IndexError_(f"Collection {self.path}: image ids were not handed out in sequence.")
                ok_rows = [(i, im) for i, im in zip(new_ids, changes.insert) if im.terms is not None]
            written = 0
            if ok_rows:
                conn.executemany(
                    "INSERT INTO forward VALUES (?, ?, ?, ?)",
                    [
                        (
                            i,
                            pf.encode_terms(im.terms, vocab),
                            pf.encode_weights(im.weights),
                            pf.encode_dense(im.dense) if im.dense is not None else None,
                        )
                        for i, im in ok_rows
                    ],
                )
                runs = sg.invert_runs(
                    np.array([i for i, _ in ok_rows], np.uint32),
                    [(im.terms, im.weights) for _, im in ok_rows],
                )
                # One bytes object per array, sliced per term (C-speed slices, no array per term).
                ids_b, w_b, st = (
                    runs.ids.astype("<u4").tobytes(),
                    runs.weights.astype("<f2").tobytes(),
                    runs.starts,
                )
                conn.executemany(
                    "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                    [
                        (t, gen, b - a, ids_b[4 * a : 4 * b], w_b[2 * a : 2 * b])
                        for t, a, b in zip(runs.terms.tolist(), st[:-1].tolist(), st[1:].tolist())
                    ],
                )
                written = runs.n
                self._note_delta_rows(runs.terms.tolist(), gen)
            self._write_meta(
                {
                    "generation": gen,
                    "delta_postings": int(self._meta_value("delta_postings", 0)) + written,
                    "postings_written": int(self._meta_value("postings_written", 0)) + written,
                }
            )
        # Only after the commit: the in-memory FAISS index follows the database, never leads it.
        self._after_commit(
            gen,
            [
                (i, np.asarray(im.dense, np.float16).astype(np.float32))
                for i, im in ok_rows
                if im.dense is not None
            ],
            removed,
        )
        if int(self._meta_value("delta_postings", 0)) >= self.flush_at:
            self.flush_postings()
        return new_ids

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


def check_model(stored: dict[str, Any], model: dict[str, Any], path: Path, rebuild_command: str) -> None:
    """Refuse a collection written by another model, with the one command that rebuilds it."""
    if (stored.get("model_id"), stored.get("vocab_hash")) != (model.get("model_id"), model.get("vocab_hash")):
        raise ModelMismatchError(
            f"Collection {path} was built with model {str(stored.get('model_id'))[:12]}, not "
            f"{str(model.get('model_id'))[:12]}. Rebuild it with: {rebuild_command}"
        )


def _folder_key(path: str | bytes) -> str | bytes:
    """The ``folders.dir`` of a stored ``images.path`` (its folder, stored the same way)."""
    return _db_path(os.path.dirname(_py_path(path)))


def _folder_name(folder: str) -> str:
    """A folder as ``folders`` and ``os.path.dirname`` name it: no trailing separator (but the root)."""
    return folder.rstrip(os.sep) or os.sep


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


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(chunk: list) -> str:
    return ",".join("?" * len(chunk))


def _data_files(path: Path) -> list[Path]:
    """Posting and FAISS segment files (and their temp files) in a collection folder."""
    return [
        p
        for p in path.iterdir()
        if (p.name.startswith(sg.PREFIX) and sg.SUFFIX in p.name)
        or (p.name.startswith(dn.PREFIX) and dn.SUFFIX in p.name)
    ]


__all__ = [
    "FANOUT",
    "FLUSH_POSTINGS",
    "MAX_SEGMENTS",
    "Changes",
    "Collection",
    "NewImage",
    "PostingsSnapshot",
    "check_model",
]
