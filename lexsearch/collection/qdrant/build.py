"""``lexsearch index`` into a Qdrant collection: incremental, crash-safe, every rank its own writer.

Each rank (one process, or each of torchrun's) scans the roots, takes the files whose point id falls in its
buckets (``points.owned``), reads back the stored facts of its own points only, and then, like the embedded
build (``lexsearch.index.build``, whose decoding and embedding it reuses):

- same path, size and mtime as stored: unchanged, not opened;
- a new path whose content hash equals a vanished point's of this rank: moved, the vectors are copied to
  the new point (no model run), then the old point is deleted;
- a changed file with the same content hash: only its size and mtime are updated;
- otherwise decoded and embedded in batches, and upserted (a file that fails: a point without vectors);
- its points under the roots whose file was not found are deleted, last.

Every write is an idempotent upsert or delete keyed by the path's hash, acknowledged before the next
batch: a run killed at any moment leaves only whole points, and the next run's plan (stored facts against
the disk) finishes the job, so it converges to what one uninterrupted run writes. Ranks never write each
other's points, so N ranks write exactly what one process writes, with no single writer.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lexsearch.collection.qdrant import points as pt
from lexsearch.collection.qdrant.store import QdrantCollection
from lexsearch.errors import UsageError
from lexsearch.index.build import (
    LOOKAHEAD_BATCHES,
    IndexOptions,
    IndexSummary,
    Reporter,
    Shard,
    _Builder,
    _Done,
    _Prepared,
    _Work,
    check_roots,
    file_phash,
    model_meta,
)
from lexsearch.index.photometa import PHOTO_FIELDS, header_facts, mtime_taken
from lexsearch.index.scan import scan, under_roots

logger = logging.getLogger(__name__)


def _vocabulary(encoder: Any) -> list[str] | None:
    """Column -> word of the model's vocabulary (stored with the collection), when the encoder tells."""
    try:
        return list(encoder.words(list(range(int(encoder.vocab_size)))))
    except Exception:  # an encoder without a readable vocabulary: the model folder stays the reference
        logger.debug("vocabulary not stored", exc_info=True)
        return None


class _Writer:
    """The points of one rank's run, written a batch at a time (each acknowledged before the next)."""

    def __init__(self, col: QdrantCollection, shared_engine: bool) -> None:
        self.col = col
        # The in-process engine is one process's at a time: ranks sharing one take turns to write.
        self.shared_engine = shared_engine
        self.points: list[Any] = []
        self.facts: list[tuple[int, dict]] = []
        self.mtime_dated: set[int] = set()
        self.deletes: list[int] = []
        self.models = col._models

    def flush(self) -> None:
        if not (self.points or self.facts or self.deletes):
            return
        if self.shared_engine:
            self.col.reopen()
        try:
            if self.points:
                self.col.upsert(self.points)
            for pid, facts in self.facts:
                self.col.set_facts(pid, facts)
            if self.deletes:
                self.col.delete(self.deletes)
        finally:
            if self.shared_engine:
                self.col.release()
        self.points, self.facts, self.deletes = [], [], []

    def point(self, pid: int, vector: dict, payload: dict) -> None:
        self.points.append(self.models.PointStruct(id=pid, vector=vector, payload=payload))


def _vectors(models: Any, terms: np.ndarray, weights: np.ndarray, dense: np.ndarray | None) -> dict:
    out: dict[str, Any] = {
        pt.SPARSE: models.SparseVector(
            indices=[int(t) for t in terms], values=[float(w) for w in pt.half(weights)]
        )
    }
    if dense is not None:
        out[pt.DENSE] = [float(x) for x in pt.half(dense)]
    return out


def build_qdrant(
    roots: Iterable[str | os.PathLike[str]],
    encoder: Any,
    collection: QdrantCollection,
    options: IndexOptions | None = None,
    reporter: Reporter | None = None,
    *,
    model_path: str | None = None,
    rebuild_command: str | None = None,
    shard: Shard | None = None,
) -> IndexSummary:
    """Bring the Qdrant ``collection`` up to date with the files under ``roots`` (this rank's share)."""
    options = options or IndexOptions()
    reporter = reporter or Reporter()
    shard = shard or Shard()
    start = time.monotonic()
    roots = check_roots(roots)
    if options.batch_size < 1:
        raise UsageError("--batch-size must be at least 1.")
    rebuild_command = rebuild_command or (
        f"lexsearch index {' '.join(roots)} --model {model_path or 'MODEL_DIR'} "
        f"--collection {collection.path} --rebuild"
    )
    shared_engine = collection.spec.local and shard.world > 1
    collection.bind_model(model_meta(encoder, model_path), rebuild_command, roots, _vocabulary(encoder))
    b = _Builder(None, encoder, options, reporter)
    stored = {
        pid: facts
        for pid, facts in collection.owned_facts(shard.rank, shard.world).items()
        if under_roots(pt.payload_path(facts), roots)
    }
    if shared_engine:
        collection.release()

    def skipped(path: str, kind: str) -> None:
        b.summary.skipped[kind] += 1

    work: list[_Work] = []
    seen: set[int] = set()
    for f in scan(roots, exclude=options.exclude, include_hidden=options.include_hidden, on_skip=skipped):
        pid = pt.point_id(f.path)
        if not pt.owned(pid, shard.rank, shard.world) or pid in seen:
            continue
        seen.add(pid)
        facts = stored.get(pid)
        if facts is None:
            work.append(_Work(f))
        elif facts.get("size") == f.size and facts.get("mtime_ns") == f.mtime_ns:
            if facts.get("status") == "ok":
                b.summary.unchanged += 1
            else:
                b.summary.failed_before += 1
        else:
            ok = facts.get("status") == "ok"
            work.append(_Work(f, old_id=pid, old_hash=facts.get("hash") if ok else None))
    vanished = {pid: facts for pid, facts in stored.items() if pid not in seen}
    for pid, facts in vanished.items():
        if facts.get("status") == "ok" and facts.get("hash"):
            b.missing_by_hash.setdefault(facts["hash"], []).append(pid)

    reporter.total(len(work))
    writer = _Writer(collection, shared_engine)
    # Points dated by their file's mtime: a touched file's date follows its new mtime.
    writer.mtime_dated = {pid for pid, facts in stored.items() if facts.get("taken_source") == "mtime"}
    moved_from: set[int] = set()
    try:
        _run(b, work, writer, collection, moved_from, options)
        writer.flush()
        # Last: whatever vanished and was not moved. A kill before this leaves them for the next run.
        gone = [pid for pid in vanished if pid not in moved_from]
        writer.deletes.extend(gone)
        b.summary.removed += sum(vanished[pid].get("status") == "ok" for pid in gone)
        writer.deletes.extend(moved_from)
        writer.flush()
        # Points written before photo metadata existed: their headers, read once, fill it (no embedding).
        redone = {pt.point_id(w.file.path) for w in work}
        older = [
            pid
            for pid in seen - redone
            if stored.get(pid, {}).get("status") == "ok" and "taken_source" not in stored[pid]
        ]
        for pid in older:
            path = pt.payload_path(stored[pid])
            width, height, photo = header_facts(path, int(stored[pid].get("mtime_ns") or 0))
            writer.facts.append((pid, {**pt.photo_payload(path, width, height, photo)}))
            if len(writer.facts) >= 256:
                writer.flush()
        writer.flush()
        # Points written before perceptual hashes existed: each file decoded once for its hash (no embedding).
        for pid in seen - redone:
            facts = stored.get(pid, {})
            if facts.get("status") == "ok" and "phash" not in facts:
                writer.facts.append((pid, {"phash": file_phash(pt.payload_path(facts))}))
                if len(writer.facts) >= 256:
                    writer.flush()
        writer.flush()
    except BaseException:
        try:  # Ctrl-C: keep what is already embedded, then let the interrupt through
            writer.flush()
        except Exception:
            logger.debug("could not write the last batch after an interruption", exc_info=True)
        raise
    b.summary.seconds = time.monotonic() - start
    if shard.world > 1:
        parts = shard.gather(b.summary)
        if parts is not None:
            return _total(parts, b.summary.seconds)
    return b.summary


def _total(parts: list[IndexSummary], seconds: float) -> IndexSummary:
    # Every rank scanned the same files: the skipped ones are counted once, from rank 0.
    out = IndexSummary(seconds=seconds, skipped=parts[0].skipped)
    for s in parts:
        for name in ("indexed", "changed", "unchanged", "moved", "removed", "failed", "failed_before"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
        out.failures += s.failures
    return out


def _run(
    b: _Builder,
    work: list[_Work],
    writer: _Writer,
    col: QdrantCollection,
    moved_from: set[int],
    options: IndexOptions,
) -> None:
    """Prepare (threads, ahead of the model), embed and write ``work`` in batches of ``batch_size``."""
    bs = options.batch_size
    workers = options.workers or min(8, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lexsearch-decode")
    try:
        blocks = iter(range(0, len(work), bs))
        pending: deque[list[Any]] = deque()

        def submit_next() -> None:
            a = next(blocks, None)
            if a is not None:
                pending.append([pool.submit(b.prepare, w) for w in work[a : a + bs]])

        for _ in range(max(1, LOOKAHEAD_BATCHES)):
            submit_next()
        while pending:
            block = pending.popleft()
            submit_next()
            for d in b.embed([f.result() for f in block]):
                _handle(b, d, writer, col, moved_from)
            writer.flush()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _handle(b: _Builder, d: _Done, writer: _Writer, col: QdrantCollection, moved_from: set[int]) -> None:
    p: _Prepared = d.p
    f = p.work.file
    pid = pt.point_id(f.path)
    if p.kind == "touch":
        facts: dict[str, Any] = {"size": f.size, "mtime_ns": f.mtime_ns}
        if pid in writer.mtime_dated:
            facts.update(mtime_taken(f.mtime_ns))
            facts["taken_key"] = pt.taken_key(facts["taken"])
        writer.facts.append((pid, facts))
        b.summary.unchanged += 1
    elif p.kind == "move":
        olds = b.missing_by_hash.get(p.hash or "")
        old = olds.pop() if olds else None
        copied = col.points_with_vectors([old]).get(old) if old is not None else None
        if copied is None or not copied.vector:  # a second copy of a moved file, or the old point is gone
            _handle(b, b.embed([b.prepare(p.work, allow_move=False)])[0], writer, col, moved_from)
            return
        keep = {
            k: v
            for k, v in (copied.payload or {}).items()
            if k
            in (
                "width",
                "height",
                "exif_time",
                "terms",
                *PHOTO_FIELDS,
                "taken_key",
                "camera",
                "orientation",
                "phash",
            )
        }  # the folders of the new path, not the old one's
        if "taken_source" in keep:
            fresh = pt.photo_payload(f.path, None, None, {"taken_source": keep["taken_source"]})
            keep.update(folders=fresh["folders"], folder_names=fresh["folder_names"])
        payload = pt.image_payload(f.path, f.size, f.mtime_ns, p.hash, status="ok", **keep)
        writer.point(pid, copied.vector, payload)
        moved_from.add(old)
        b.summary.moved += 1
    elif p.kind == "failed":
        b.reporter.warning(f.path, p.error or "failed")
        b.summary.failed += 1
        b.summary.failures.append((f.path, p.error or "failed"))
        payload = pt.image_payload(f.path, f.size, f.mtime_ns, p.hash, status="failed", error=p.error)
        writer.point(pid, {}, payload)
    else:
        payload = pt.image_payload(
            f.path,
            f.size,
            f.mtime_ns,
            p.hash,
            status="ok",
            width=p.width,
            height=p.height,
            exif_time=p.exif_time,
            terms=[int(t) for t in d.terms],
            phash=p.phash,
            **pt.photo_payload(f.path, p.width, p.height, p.photo),
        )
        writer.point(pid, _vectors(writer.models, d.terms, d.weights, d.dense), payload)
        b.summary.indexed += 1
    b.reporter.advance()
