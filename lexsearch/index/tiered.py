"""The posting side of a collection: immutable segment files + a SQLite delta + tombstones (a mixin of
``Collection``; the schema is in ``schema.py``, the crash-safety rules in ``store.py``, the file format in
``segments.py``).

Life of a posting: a commit writes it into the delta (``postings`` table, one blob pair per term per
commit); once the delta holds ``FLUSH_POSTINGS`` the writer flushes it into a new file; ``FANOUT`` adjacent
files of one size tier are merged into one. A removed image becomes a tombstone; readers mask it, every
flush and merge leaves it out, and the tombstone is dropped once no file or delta blob can hold it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lexsearch.errors import IndexError_
from lexsearch.index import postings as pf
from lexsearch.index import segments as sg

logger = logging.getLogger(__name__)

# Flush the SQLite delta into a new posting file once it holds this many postings (~16k images at 250
# terms): small enough that a query's delta rows cost a few milliseconds and a flush a fraction of a second,
# large enough that a million images make ~60 flushes, not thousands of files.
FLUSH_POSTINGS = 4_000_000
# Merge this many adjacent files of one size tier: each posting is rewritten ~log8(N / flush) times (about
# twice at a million images, so write amplification stays near 3x) and a query reads at most 7 files a tier.
FANOUT = 8
# Merge a term's delta blobs into one once it has this many (one per commit): bounds the rows a query
# reads per term when commits are small (a commit per image is 1,000 rows per common term otherwise). Above
# the ~16 commits of 1,024 images a flush takes, so bulk writes never pay it.
MAX_SEGMENTS = 32
# Rewrite every file once removed images hold this fraction of the live ones (they cost disk, not speed).
DEAD_REWRITE_FRACTION = 0.25
# A reader retries this often when merges keep retiring files between its snapshot and its opening them.
SNAPSHOT_TRIES = 20
# Images per chunk when the postings are rebuilt from the forward rows (bounds the memory of the repair).
_REBUILD_CHUNK = 50_000


@dataclass
class PostingsSnapshot:
    """Postings of some terms as one consistent snapshot saw them.

    ``parts[t]``: the term's ``segments.Part`` per file (sparse views or dense columns of a mapped file),
    then its delta blobs, in ascending id order. Tombstoned ids are *not* removed: ``dead`` lists them, and
    the query path masks their scores (O(dead) work instead of a pass over every posting).
    """

    parts: dict[int, list[sg.Part]]
    dead: np.ndarray  # uint32, sorted
    max_image_id: int
    generation: int

    @property
    def postings(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per term (ids uint32 ascending, weights float16): the parts expanded and concatenated."""
        out = {}
        for t, parts in self.parts.items():
            pairs = [p.sparse() for p in parts]
            if len(pairs) == 1:
                out[t] = pairs[0]
            else:
                out[t] = (np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))
        return out

    def live(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Live postings only: (ids uint32, weights float32), new arrays; terms left empty are omitted."""
        out = {}
        for t, (ids, w) in self.postings.items():
            if self.dead.size:
                keep = ~np.isin(ids, self.dead)
                ids, w = ids[keep], w[keep]
            if ids.size:
                out[t] = (np.array(ids, np.uint32), w.astype(np.float32))
        return out


class TieredPostings:
    """Posting reads and maintenance; expects ``path``, ``db``, ``_files`` and the transaction helpers."""

    flush_at: int = FLUSH_POSTINGS
    fanout: int = FANOUT
    path: Any
    db: Any
    _files: dict[str, sg.SegmentFile]
    _delta_rows: dict[int, int] | None = None  # writer only: delta rows per term

    # ------------------------------------------------------------------ reading
    def _file(self, name: str) -> sg.SegmentFile:
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = sg.SegmentFile(self.path / name)
        return f

    def postings(self, term_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Live postings per term: (image ids uint32 ascending, weights float32); absent terms are omitted."""
        return self.postings_snapshot(term_ids).live()

    def postings_snapshot(self, term_ids: Iterable[int]) -> PostingsSnapshot:
        """The raw postings of ``term_ids`` and the tombstones, from one snapshot (see ``PostingsSnapshot``)."""
        terms = sorted({int(t) for t in term_ids})
        for _ in range(SNAPSHOT_TRIES):
            with self._read():
                names = [r[0] for r in self.db.execute("SELECT name FROM segments ORDER BY min_id")]
                try:
                    files = [self._file(n) for n in names]
                except sg.SegmentError as exc:
                    if any((self.path / n).exists() and n not in self._files for n in names):
                        raise IndexError_(
                            f"Collection {self.path}: a posting file is damaged ({exc}); run 'lexsearch index' "
                            "on it to repair it."
                        ) from exc
                    continue  # retired by a merge after our snapshot began: a newer snapshot names its heir
                dead = np.fromiter(
                    (r[0] for r in self.db.execute("SELECT image_id FROM tombstones")), np.uint32
                )
                delta: dict[int, list[sg.Part]] = {}
                for chunk in _chunks(terms):
                    q = (
                        f"SELECT term_id, ids, weights FROM postings WHERE term_id IN ({_marks(chunk)}) "
                        "ORDER BY term_id, segment"
                    )
                    for t, ids, w in self.db.execute(q, chunk):
                        w16 = np.frombuffer(w, "<f2")
                        part = sg.Part(w16, np.frombuffer(ids, "<u4"), 0, w16.size, float(w16.max(initial=0)))
                        delta.setdefault(t, []).append(part)
                gen = int(self._meta_value("generation", 0))
                max_id = self.max_image_id
            break
        else:
            raise IndexError_(f"Collection {self.path}: posting files kept changing while being read.")
        for name in set(self._files) - set(names):  # retired: the mappings die with their last view
            del self._files[name]
        if len(terms) <= 256:  # a query's terms (not a full scan such as verify's)
            for f in files:
                f.prefetch(terms)
        out: dict[int, list[sg.Part]] = {}
        in_files = [f.parts(terms) for f in files]
        for t in terms:
            parts = [held[t] for held in in_files if t in held] + delta.get(t, [])
            if parts:
                out[t] = parts
        dead.sort()
        return PostingsSnapshot(out, dead, max_id, gen)

    # ------------------------------------------------------------------ writing (single writer)
    def _new_name(self) -> str:
        seq = int(self._meta_value("segment_seq", 0)) + 1
        while (self.path / f"{sg.PREFIX}{seq:08d}{sg.SUFFIX}").exists():  # an orphan of a crash
            seq += 1
        return f"{sg.PREFIX}{seq:08d}{sg.SUFFIX}"

    def _dead_ids(self) -> np.ndarray:
        dead = np.fromiter((r[0] for r in self.db.execute("SELECT image_id FROM tombstones")), np.uint32)
        dead.sort()
        return dead

    def _commit_file(
        self,
        runs: sg.Runs,
        retire: list[str],
        extra_sql: list[tuple[str, list]],
        span: tuple[int, int] | None = None,
    ) -> None:
        """Write ``runs`` as a new file, then in one transaction reference it, unreference ``retire`` and
        run ``extra_sql``; only after the commit are the retired files deleted."""
        name = self._new_name()
        size = sg.write_segment(self.path / name, runs) if runs.n else 0
        gen = int(self._meta_value("generation", 0))
        lo, hi = span or ((int(runs.ids.min()), int(runs.ids.max())) if runs.n else (0, 0))
        with self._write():
            conn = self.db.conn
            for chunk in _chunks(retire):
                conn.execute(f"DELETE FROM segments WHERE name IN ({_marks(chunk)})", chunk)
            if runs.n:
                conn.execute(
                    "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?)", [name, runs.n, lo, hi, gen, size]
                )
            for sql, args in extra_sql:
                conn.execute(sql, args)
            self._write_meta(
                {
                    "segment_seq": int(name[len(sg.PREFIX) : -len(sg.SUFFIX)]),
                    "postings_rewritten": int(self._meta_value("postings_rewritten", 0)) + runs.n,
                }
            )
        self._retire(retire)

    def _retire(self, names: Iterable[str]) -> None:
        for name in names:
            self._files.pop(name, None)
            try:
                (self.path / name).unlink(missing_ok=True)
            except OSError:  # Windows keeps mapped files: the next writer's orphan sweep deletes it
                logger.debug("could not delete retired %s yet", name)

    def _note_delta_rows(self, terms: Iterable[int], gen: int) -> None:
        """Count the delta rows per term (inside the commit that added them); compact terms with too many."""
        if self._delta_rows is None:
            q = "SELECT term_id, count(*) FROM postings GROUP BY term_id"
            self._delta_rows = dict(self.db.execute(q).fetchall())
        counts = self._delta_rows
        over = []
        for t in terms:
            counts[t] = counts.get(t, 0) + 1
            if counts[t] > MAX_SEGMENTS:
                over.append(t)
        if not over:
            return
        conn = self.db.conn
        # Removed ids are cut out here: the merged blob is newer than their tombstones (see _tombstones_needed).
        dead = self._dead_ids()
        rewritten = 0
        for t in over:
            rows = conn.execute(
                "SELECT ids, weights FROM postings WHERE term_id = ? ORDER BY segment", [t]
            ).fetchall()
            ids, w = pf.merge_segments([(pf.decode_ids(a), pf.decode_weights(b)) for a, b in rows], dead)
            conn.execute("DELETE FROM postings WHERE term_id = ?", [t])
            if ids.size:
                conn.execute(
                    "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                    [t, gen, ids.size, pf.encode_ids(ids), pf.encode_weights(w)],
                )
            rewritten += ids.size
            counts[t] = 1
        self._write_meta({"postings_rewritten": int(self._meta_value("postings_rewritten", 0)) + rewritten})

    def flush_postings(self) -> int:
        """Move the whole SQLite delta into a new posting file (then merge tiers); returns postings moved."""
        self._require_writer()
        with self._read():
            rows = self.db.execute(
                "SELECT segment, term_id, ids, weights FROM postings ORDER BY segment, term_id"
            ).fetchall()
            dead = self._dead_ids()
        if not rows:
            return 0
        runs = []
        for _, group in itertools.groupby(rows, key=lambda r: r[0]):
            g = list(group)
            lens = np.array([len(r[2]) // 4 for r in g], np.int64)
            starts = np.zeros(lens.size + 1, np.int64)
            np.cumsum(lens, out=starts[1:])
            runs.append(
                sg.Runs(
                    np.array([r[1] for r in g], np.uint32),
                    starts,
                    np.frombuffer(b"".join(r[2] for r in g), "<u4"),
                    np.frombuffer(b"".join(r[3] for r in g), "<f2"),
                )
            )
        n_read = sum(r.n for r in runs)
        merged = sg.merge_runs(runs, dead)
        span = (int(min(r.ids.min() for r in runs if r.n)), int(max(r.ids.max() for r in runs if r.n)))
        left = max(0, int(self._meta_value("delta_postings", 0)) - n_read)
        self._commit_file(
            merged,
            [],
            [
                # All of it: the one writer read the whole delta (an unqualified DELETE is SQLite's fast truncate).
                ("DELETE FROM postings", []),
                ("UPDATE meta SET value = ? WHERE key = 'delta_postings'", [str(left)]),
            ],
            span,
        )
        self._delta_rows = None
        logger.info("flushed %d delta postings into a posting file", n_read)
        self._merge_tiers()
        self._drop_needless_tombstones()
        return n_read

    def _merge_tiers(self) -> None:
        while True:
            segs = self.db.execute("SELECT name, n, min_id, max_id FROM segments ORDER BY min_id").fetchall()
            tiers = [sg.tier(r[1], self.flush_at, self.fanout) for r in segs]
            pick = None
            for i in range(len(segs) - self.fanout + 1):
                if len(set(tiers[i : i + self.fanout])) == 1:
                    pick = segs[i : i + self.fanout]
                    break
            if pick is None:
                return
            self._merge_files([r[0] for r in pick], (pick[0][2], pick[-1][3]))

    def _merge_files(self, names: list[str], span: tuple[int, int]) -> None:
        files = [self._file(n) for n in names]
        merged = sg.merge_runs([f.runs() for f in files], self._dead_ids())
        logger.info("merged %d posting files (%d postings)", len(names), merged.n)
        self._commit_file(merged, names, [], span)

    def _tombstones_needed(self) -> tuple[np.ndarray, np.ndarray]:
        """(tombstoned ids, whether some file or delta blob may still hold each)."""
        rows = self.db.execute("SELECT image_id, gen, length(terms) > 0 FROM tombstones").fetchall()
        rows = np.array(rows, np.int64).reshape(-1, 3)
        d, g, in_delta = rows[:, 0], rows[:, 1], rows[:, 2].astype(bool)
        need = np.zeros(d.size, bool)
        min_seg = self.db.execute("SELECT min(segment) FROM postings").fetchone()[0]
        if min_seg is not None:  # a delta blob at least as old as the removal may hold it (``terms`` tells)
            need |= in_delta & (g >= int(min_seg))
        for lo, hi, fgen in self.db.execute("SELECT min_id, max_id, gen FROM segments"):
            need |= (fgen < g) & (d >= lo) & (d <= hi)
        return d, need

    def _drop_needless_tombstones(self) -> int:
        with self._write():
            d, need = self._tombstones_needed()
            gone = d[~need].tolist()
            for chunk in _chunks(gone):
                self.db.conn.execute(f"DELETE FROM tombstones WHERE image_id IN ({_marks(chunk)})", chunk)
        return len(gone)

    def purge_tombstones(self) -> int:
        """Drop the tombstones nothing needs, cutting removed ids out of the delta (cheap: it is small) and
        out of the files only when they hold many (``DEAD_REWRITE_FRACTION``); returns how many went.

        A crash midway leaves the tombstones in place (readers keep masking them); the next run goes on.
        """
        self._require_writer()
        before = self.db.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        if not before:
            return 0
        self._rewrite_delta_without_dead()
        d, need = self._tombstones_needed()
        if need.sum() > DEAD_REWRITE_FRACTION * max(1, self.count()):
            names = [r[0] for r in self.db.execute("SELECT name FROM segments ORDER BY min_id")]
            row = self.db.execute("SELECT min(min_id), max(max_id) FROM segments").fetchone()
            self._merge_files(names, (int(row[0]), int(row[1])))
        self._drop_needless_tombstones()
        return before - self.db.execute("SELECT count(*) FROM tombstones").fetchone()[0]

    def _rewrite_delta_without_dead(self) -> None:
        """Merge each delta term that holds a removed id into one blob without it (one transaction)."""
        with self._write():
            conn = self.db.conn
            d, _ = self._tombstones_needed()
            if not d.size:
                return
            dead = np.sort(d).astype(np.uint32)
            terms: set[int] = set()
            for blob in conn.execute("SELECT terms FROM tombstones"):
                if blob[0]:
                    terms.update(pf.decode_ids(blob[0]).tolist())
            for t in sorted(terms):
                rows = conn.execute(
                    "SELECT segment, ids, weights FROM postings WHERE term_id = ? ORDER BY segment", [t]
                ).fetchall()
                if not rows:
                    continue
                ids, w = pf.merge_segments(
                    [(pf.decode_ids(r[1]), pf.decode_weights(r[2])) for r in rows], dead
                )
                conn.execute("DELETE FROM postings WHERE term_id = ?", [t])
                if ids.size:
                    conn.execute(
                        "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                        [t, rows[-1][0], ids.size, pf.encode_ids(ids), pf.encode_weights(w)],
                    )
                removed = sum(len(r[1]) // 4 for r in rows) - ids.size
                left = max(0, int(self._meta_value("delta_postings", 0)) - removed)
                self._write_meta({"delta_postings": left})
            # The delta no longer holds any removed id (files are still checked by id range and gen).
            conn.execute("UPDATE tombstones SET terms = x''")
        self._delta_rows = None

    def rebuild_postings(self) -> None:
        """Recreate the postings from the forward rows as one file (repair tool; also clears tombstones)."""
        self._require_writer()
        runs = []
        last = 0
        while True:
            fwd = self.db.execute(
                "SELECT image_id, terms, weights FROM forward WHERE image_id > ? ORDER BY image_id LIMIT ?",
                [last, _REBUILD_CHUNK],
            ).fetchall()
            if not fwd:
                break
            last = fwd[-1][0]
            inverted = pf.invert(
                np.array([r[0] for r in fwd], np.uint32), [pf.decode_forward(r[1], r[2]) for r in fwd]
            )
            runs.append(sg.Runs.from_dict(inverted))
        merged = sg.merge_runs(runs)
        names = [r[0] for r in self.db.execute("SELECT name FROM segments")]
        self._commit_file(
            merged,
            names,
            [
                ("DELETE FROM postings", []),
                ("DELETE FROM tombstones", []),
                ("UPDATE meta SET value = '0' WHERE key = 'delta_postings'", []),
            ],
        )
        self._delta_rows = None

    def _delete_orphans(self) -> None:
        """Delete data files no row references (a crash between writing a file and its commit)."""
        from lexsearch.index import dense as dn

        referenced = {r[0] for r in self.db.execute("SELECT name FROM segments")}
        referenced |= {r[0] for r in self.db.execute("SELECT name FROM dense_segments")}
        for p in self.path.iterdir():
            ours = (p.name.startswith(sg.PREFIX) and sg.SUFFIX in p.name) or (
                p.name.startswith(dn.PREFIX) and dn.SUFFIX in p.name
            )
            if ours and p.name not in referenced:
                logger.info("deleting %s (not referenced: left by an interrupted write)", p.name)
                p.unlink(missing_ok=True)
        for name in referenced & {p.name for p in self.path.iterdir() if p.name.startswith(sg.PREFIX)}:
            try:
                self._file(name)
            except sg.SegmentError:
                logger.warning("posting file %s is damaged; rebuilding the postings from forward rows", name)
                self._files.clear()
                self.rebuild_postings()
                return
        missing = referenced - {p.name for p in self.path.iterdir()}
        if any(n.startswith(sg.PREFIX) for n in missing):
            logger.warning("posting files are missing; rebuilding the postings from forward rows")
            self.rebuild_postings()


def _chunks(items: list, size: int = 5000) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(chunk: list) -> str:
    return ",".join("?" * len(chunk))
