"""A collection: one folder holding ``index.db`` (SQLite, WAL), posting segment files and FAISS segment files.

``Collection`` is the class to import (``from lexsearch.index.store import Collection``). This module holds
what ties it together: opening (the single-writer lock, the connection, migrations), closing, the meta
table, and transactions. The rest lives by concern, each part a mixin of ``Collection``:

- ``schema.py``: the tables (described there), the named migrations, the meta keys and shared SQL helpers;
- ``readers.py``: ``StoreReader``, row lookups, forward rows for re-ranking, paths, the query cache, ``verify``;
- ``writer.py``: ``StoreWriter``, ``apply`` (add, move, remove images) and ``seal_folders``;
- ``tiered.py``: ``TieredPostings``, posting files, the delta and tombstones (flushes and merges);
- ``dense.py``: ``DenseSegments``, the FAISS files.

Mixins rather than parts held by attribute: every method still reads and writes the one set of state the
collection has (its connection, meta, open files, in-memory FAISS) as ``self``, exactly as before the split,
so a method reads the same wherever it lives and ``Collection.apply`` is still the method to find, patch or
document; ``tiered.py`` and ``dense.py`` were already mixins, so the whole class is one pattern.

Crash safety: every change to the database is one SQLite transaction that leaves images, forward, postings
and tombstones in agreement. A file (postings or FAISS) is written to a temp name, fsynced and renamed
before the transaction that references it commits, and a file is deleted only after the transaction that
retires it; a crash in between leaves an unreferenced file, which the next writer deletes. A reader maps
the files its snapshot names (a file retired meanwhile stays readable through its mapping; one already gone
means a newer snapshot exists, which the reader then takes).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from lexsearch.index.paths import resolve
from lexsearch.index.readers import CachedQuery, FolderState, ImageRow, SparseRow, StoreReader
from lexsearch.index.schema import (
    BUSY_TIMEOUT_S,
    DB_NAME,
    FAISS_NAME,
    LOCK_NAME,
    PAGE_SIZE,
    SCHEMA_VERSION,
    WRITER_ONLY,
    _pending,
    migrations,
)
from lexsearch.index.writer import Changes, NewImage, StoreWriter

if TYPE_CHECKING:
    from sqlite_utils import Database

from lexsearch.index.tiered import FANOUT, FLUSH_POSTINGS, MAX_SEGMENTS, PostingsSnapshot, TieredPostings

logger = logging.getLogger(__name__)


# Beside index.db, the collection's folders and model as plain JSON (rewritten with them): when index.db
# itself is damaged or lost, the rebuild command can still name them, so it runs as printed.
RECORD_NAME = "collection.json"


def write_record(path: Path, values: dict[str, Any]) -> None:
    """Merge ``values`` (``roots``, ``model_path``) into the collection's record, atomically."""
    record = read_record(path)
    record.update({k: v for k, v in values.items() if k in ("roots", "model_path")})
    tmp = path / f".{RECORD_NAME}.tmp"
    try:
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path / RECORD_NAME)
    except OSError as exc:  # a read-only or full disk: the record is a convenience, the index is not
        logger.debug("could not write %s: %s", path / RECORD_NAME, exc)


def read_record(path: Path) -> dict[str, Any]:
    """The collection's record (``roots``, ``model_path``), {} when it has none or it cannot be read."""
    try:
        record = json.loads((path / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def rebuild_command(name_or_path: str | os.PathLike[str], recorded: dict[str, Any] | None = None) -> str:
    """``lexsearch index ... --rebuild`` for a collection, naming its recorded folders (those that still
    exist) and model, so it runs as printed; placeholders only for what nothing recorded."""
    import shlex

    if recorded is None:
        recorded = read_record(resolve(name_or_path))
    roots = [r for r in recorded.get("roots") or [] if os.path.exists(r)] or ["DIR"]
    model = recorded.get("model_path") or "MODEL_DIR"
    args = ["lexsearch", "index", *roots, "--model", model, "--collection", os.fspath(name_or_path)]
    return shlex.join([*args, "--rebuild"])


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


class Collection(StoreReader, StoreWriter, TieredPostings, DenseSegments):
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
        rebuild = f"rebuild it with: {rebuild_command(name_or_path)}"
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
        if "roots" in values or "model_path" in values:
            write_record(
                self.path, {"roots": self._meta_value("roots"), "model_path": self._meta_value("model_path")}
            )

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

    # ---------------------------------------------------------------- transactions
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


def _data_files(path: Path) -> list[Path]:
    """Posting and FAISS segment files (and their temp files) in a collection folder."""
    return [
        p
        for p in path.iterdir()
        if (p.name.startswith(sg.PREFIX) and sg.SUFFIX in p.name)
        or (p.name.startswith(dn.PREFIX) and dn.SUFFIX in p.name)
    ]


__all__ = [
    "BUSY_TIMEOUT_S",
    "DB_NAME",
    "FANOUT",
    "FLUSH_POSTINGS",
    "MAX_SEGMENTS",
    "CachedQuery",
    "Changes",
    "Collection",
    "FolderState",
    "ImageRow",
    "NewImage",
    "PostingsSnapshot",
    "SparseRow",
    "check_model",
]
