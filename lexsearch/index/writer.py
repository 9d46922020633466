"""The write side of ``Collection`` (a mixin): ``apply`` adds, moves and removes images (their ``images`` and
``forward`` rows, the postings delta, tombstones and the in-memory FAISS index) in one transaction, and
``seal_folders`` records the folder digests an index run computed.

What happens after a commit (flushing the delta into posting files, merging them, dropping tombstones) is in
``tiered.py``; saving FAISS files in ``dense.py``; the tables in ``schema.py``; the crash-safety rules in
``store.py``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lexsearch.errors import IndexError_
from lexsearch.index import postings as pf
from lexsearch.index import segments as sg
from lexsearch.index.paths import db_path as _db_path
from lexsearch.index.paths import db_text as _db_text
from lexsearch.index.paths import folder_digest
from lexsearch.index.photometa import PHOTO_FIELDS, mtime_taken
from lexsearch.index.schema import _chunks, _folder_key, _folder_name, _marks


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
    photo: dict | None = None  # ``photometa.PHOTO_FIELDS``
    terms: np.ndarray | None = None  # uint32 ascending; None for a failed file
    weights: np.ndarray | None = None  # float32
    dense: np.ndarray | None = None  # (D,) float32
    error: str | None = None
    phash: str | None = None  # ``phash.image_phash`` (last: rows are also built positionally)


def _photo_row(photo: dict | None) -> tuple:
    # No metadata (a failed file): NULLs; an 'ok' row always has a ``taken_source``.
    if not photo:
        return (None,) * len(PHOTO_FIELDS)
    return tuple(_db_text(v) if isinstance(v, str) else v for v in (photo.get(f) for f in PHOTO_FIELDS))


@dataclass
class Changes:
    """What one commit does. Applied in one transaction: removals, stat updates and moves, then inserts."""

    remove: list[int] = field(default_factory=list)
    # (image_id, new path, size, mtime_ns): a move keeps the id and so all its vectors and postings.
    move: list[tuple[int, str, int, int]] = field(default_factory=list)
    insert: list[NewImage] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.remove or self.move or self.insert)


class StoreWriter:
    """The indexer's writes; expects ``path``, ``db``, ``readonly`` and the meta, transaction, row-reading
    (``StoreReader._rows_by_folder``), posting (``TieredPostings``) and FAISS (``DenseSegments``) helpers."""

    path: Any
    db: Any
    readonly: bool

    # ---------------------------------------------------------------- write API (the indexer)
    def _require_writer(self) -> None:
        if self.readonly:
            raise IndexError_("This collection was opened read-only.")

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

    def set_photo_meta(self, rows: dict[int, dict]) -> None:
        """Store the header metadata of already indexed images (the upgrade to schema 4): their vectors,
        postings and folder digests stay as they are."""
        self._require_writer()
        sets = ", ".join(f"{f} = ?" for f in PHOTO_FIELDS)
        with self._write():
            self.db.conn.executemany(
                f"UPDATE images SET {sets} WHERE id = ?",
                [(*_photo_row(photo), int(i)) for i, photo in rows.items()],
            )

    def set_phashes(self, rows: dict[int, str]) -> None:
        """Store the perceptual hashes of already indexed images (the upgrade to schema 5): their vectors,
        postings and folder digests stay as they are."""
        self._require_writer()
        with self._write():
            self.db.conn.executemany(
                "UPDATE images SET phash = ? WHERE id = ?", [(h, int(i)) for i, h in rows.items()]
            )

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
                # A date that is the file's mtime follows it (an EXIF date stays).
                conn.execute(
                    "UPDATE images SET taken = ?, taken_offset = ? WHERE id = ? AND taken_source = 'mtime'",
                    [*(mtime_taken(mtime_ns)[k] for k in ("taken", "taken_offset")), image_id],
                )
            now = time.time()
            if changes.insert:
                # One executemany for all rows: in one write transaction AUTOINCREMENT hands out consecutive
                # ids after the sequence, so the ids are known without a statement per image.
                first = self.max_image_id + 1
                conn.executemany(
                    "INSERT INTO images (path, size, mtime_ns, hash, width, height, exif_time, status, "
                    f"error, indexed_at, {', '.join(PHOTO_FIELDS)}, phash) "
                    f"VALUES ({_marks([0] * (11 + len(PHOTO_FIELDS)))})",
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
                            *_photo_row(im.photo),
                            im.phash,
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
