"""The schema of a collection's ``index.db``: its tables, the named sqlite-utils migrations that create and
change them, the meta keys, and the small SQL helpers every part of the store shares.

Schema (created and changed only by the named migrations below):

- ``meta(key, value)``: JSON values. model_id, vocab_hash, vocab_size, dense_dim, sparsify, model_path,
  roots, schema, postings_format, ``generation`` (bumped by every commit that adds or removes images), and
  the write counters behind the benchmark's write amplification (``postings_written``, ``postings_rewritten``).
- ``images(id, path, size, mtime_ns, hash, width, height, exif_time, status, error, indexed_at, taken,
  taken_offset, taken_source, camera_make, camera_model, lens, gps, phash)``: one row
  per file seen, ``status`` 'ok' or 'failed' (with ``error``). ``path`` is text, or the raw bytes of a name
  that is not valid UTF-8 (see ``paths.py``): every file name the OS can give is stored losslessly. ``id``
  is AUTOINCREMENT, so ids are never reused: a deleted or changed image's id stays dead and tombstones stay
  unambiguous. The photo columns (``photometa.py``) are NULL on 'failed' rows and, until the next index run
  fills them, on rows indexed before schema 4; so is ``phash`` (``phash.py``: 64 hex digits, '' for a file
  that could no longer be read when it was filled) on rows indexed before schema 5.
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
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lexsearch.index.paths import db_path as _db_path
from lexsearch.index.paths import py_path as _py_path

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

DB_NAME = "index.db"
FAISS_NAME = "dense.faiss"  # the single FAISS file of schema 1; read once by the upgrade, then deleted
LOCK_NAME = "index.lock"
SCHEMA_VERSION = 5
PAGE_SIZE = 16384

# A reader waits this long for a writer's commit instead of failing with "database is locked". Writers
# commit every couple of seconds, so a long wait means something is really stuck.
BUSY_TIMEOUT_S = 60.0
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


def m004_photo_metadata(db: Database) -> None:
    # The header facts a query filters and sorts on (``photometa.py``). Rows already indexed get them from
    # the next index run, which re-reads the headers of 'ok' rows with no ``taken_source`` (no re-embedding).
    for col, kind in (
        ("taken", "TEXT"),
        ("taken_offset", "TEXT"),
        ("taken_source", "TEXT"),
        ("camera_make", "TEXT"),
        ("camera_model", "TEXT"),
        ("lens", "TEXT"),
        ("gps", "INTEGER"),
    ):
        db.execute(f"ALTER TABLE images ADD COLUMN {col} {kind}")
    db.execute("CREATE INDEX images_taken ON images(taken)")
    # What a filtered query checks first ("does any image still lack its metadata?") answers from this
    # partial index at once, instead of scanning every row.
    db.execute("CREATE INDEX images_unread ON images(id) WHERE status = 'ok' AND taken_source IS NULL")


def m005_perceptual_hash(db: Database) -> None:
    # Each image's perceptual hash (``phash.py``), which ``lexsearch dupes`` confirms near-duplicates with.
    # Rows already indexed get it from the next index run, which decodes their files once (no re-embedding).
    db.execute("ALTER TABLE images ADD COLUMN phash TEXT")
    # "Does any image still lack its hash?" answers from this partial index at once.
    db.execute("CREATE INDEX images_unhashed ON images(id) WHERE status = 'ok' AND phash IS NULL")


# In order. Registered with sqlite-utils only when a writer opens a collection: readers check what is
# applied with one SELECT, so a query process does not import sqlite-utils (~100 ms).
MIGRATIONS = [
    m001_create_tables,
    m002_segment_files,
    m003_folder_digests,
    m004_photo_metadata,
    m005_perceptual_hash,
]


def migrations() -> Migrations:
    from sqlite_utils.migrations import Migrations

    m = Migrations(MIGRATION_SET)
    for fn in MIGRATIONS:
        m()(fn)
    return m


# Migrations only a writer needs: a reader opens a collection they are still pending on (the next index run
# applies them), so upgrading lexsearch never makes a search wait for an index run.
WRITER_ONLY = frozenset({"m003_folder_digests", "m004_photo_metadata", "m005_perceptual_hash"})


def _pending(conn: sqlite3.Connection) -> list[str]:
    try:
        q = "SELECT name FROM _sqlite_migrations WHERE migration_set = ?"
        applied = {r[0] for r in conn.execute(q, [MIGRATION_SET])}
    except sqlite3.OperationalError:  # no migrations table: a new (or foreign) database
        applied = set()
    return [fn.__name__ for fn in MIGRATIONS if fn.__name__ not in applied]


# Helpers shared by the migrations, the readers and the writer (and lexsearch.collection.embedded).
def _folder_key(path: str | bytes) -> str | bytes:
    """The ``folders.dir`` of a stored ``images.path`` (its folder, stored the same way)."""
    return _db_path(os.path.dirname(_py_path(path)))


def _folder_name(folder: str) -> str:
    """A folder as ``folders`` and ``os.path.dirname`` name it: no trailing separator (but the root)."""
    return folder.rstrip(os.sep) or os.sep


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(chunk: list) -> str:
    return ",".join("?" * len(chunk))
