"""The incremental index build: scan folders, embed what is new or changed, commit in small transactions.

For each file found by the scan:

- same path, same size and mtime as stored: *unchanged*, not opened at all;
- a new path whose content hash matches a stored image that vanished from its old path: *moved*, the row
  keeps its id (and so its vectors and postings), only the path changes;
- a changed file (size or mtime differ) whose content hash is the same: only its stat is updated;
- otherwise it is decoded (EXIF orientation applied, a megapixel guard first) and preprocessed in worker
  threads, ahead of the model, and the model runs on full batches (``encoder.encode_pixels``);
- stored images under the scanned roots that were not found are removed.

A file that cannot be read gives one warning (``Reporter.on_warning``, else the logger) and an ``images``
row with status 'failed', and the run goes on. Work is committed every couple of seconds, each commit one
transaction (see ``store.py``), so a kill loses at most the last few seconds and the next run resumes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np

from lexsearch.errors import UsageError
from lexsearch.index.scan import ScannedFile, content_hash, normalise_roots, scan, under_roots
from lexsearch.index.store import Changes, Collection, NewImage
from lexsearch.model.images import MAX_MEGAPIXELS, describe_error, load_image

logger = logging.getLogger(__name__)

# Batches of decoded images kept in flight ahead of the model: enough that a slow file (a big PNG, a HEIC)
# does not starve the model, few enough that memory stays at a few batches of (3, S, S) arrays.
LOOKAHEAD_BATCHES = 3
# Commit at least this often: bounds what a kill loses, and how long a reader waits for new images.
COMMIT_EVERY_S = 2.0
# ... and at most this many images per commit, so a transaction (and its posting delta segments) stays small.
COMMIT_EVERY_N = 1024
DEFAULT_MAX_MEGAPIXELS = MAX_MEGAPIXELS


@dataclass
class IndexOptions:
    """How to scan and embed; the CLI flags map one to one."""

    exclude: Sequence[str] = ()  # globs matched against names and full paths
    include_hidden: bool = False
    batch_size: int = 32
    workers: int = 0  # decode threads; 0 = one per CPU core (at most 8)
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    commit_every_s: float = COMMIT_EVERY_S
    commit_every_n: int = COMMIT_EVERY_N


@dataclass
class IndexSummary:
    """What a run did, by file."""

    indexed: int = 0  # embedded this run (new or changed)
    unchanged: int = 0  # same size + mtime (or same content hash): not decoded
    moved: int = 0  # renamed / moved: vectors kept
    removed: int = 0  # gone from disk: removed from the collection
    failed: int = 0  # could not be read this run (one warning each)
    failed_before: int = 0  # failed in an earlier run and unchanged since: not retried, not warned again
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of this run's failures
    # Files passed over for their type (videos, sidecars, RAW), by extension; each is logged at debug level.
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.indexed + self.unchanged + self.moved + self.failed + self.failed_before

    def line(self) -> str:
        failed = f"{self.failed} failed" + (f" (+{self.failed_before} earlier)" if self.failed_before else "")
        skipped = ""
        if self.skipped:
            top = sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
            kinds = ", ".join(f"{n} {kind}" for kind, n in top)
            more = ", ..." if len(self.skipped) > 4 else ""
            skipped = f", {sum(self.skipped.values())} skipped (not images: {kinds}{more}; -v lists them)"
        return (
            f"{self.indexed} indexed, {self.unchanged} unchanged, {self.moved} moved, "
            f"{self.removed} removed, {failed}{skipped} in {self.seconds:.1f}s"
        )


@dataclass
class Reporter:
    """Callbacks for progress and warnings; the core never prints (the CLI draws a tqdm bar from these)."""

    on_total: Callable[[int], None] | None = None  # number of files that need work (hash or decode)
    on_advance: Callable[[int], None] | None = None  # that many of them are done
    on_warning: Callable[[str, str], None] | None = None  # (path, reason) of a file that failed

    def total(self, n: int) -> None:
        if self.on_total:
            self.on_total(n)

    def advance(self, n: int = 1) -> None:
        if self.on_advance and n:
            self.on_advance(n)

    def warning(self, path: str, reason: str) -> None:
        if self.on_warning:
            self.on_warning(path, reason)
        else:
            logger.warning("%s: %s", path, reason)


@dataclass
class _Work:
    file: ScannedFile
    old_id: int | None = None  # the stored row this file replaces (a changed file)
    old_hash: str | None = None


@dataclass
class _Prepared:
    work: _Work
    kind: str  # 'embed' | 'move' | 'touch' | 'failed'
    hash: str | None = None
    pixels: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    exif_time: str | None = None
    error: str | None = None


def model_meta(encoder: Any, model_path: str | None = None) -> dict[str, Any]:
    """What a collection records about the model that wrote it (compared on every later open)."""
    sparsify = getattr(encoder, "sparsify", None)
    cfg = getattr(encoder, "config", None)
    if sparsify is None and cfg is not None and hasattr(cfg, "sparsify"):
        sparsify = {"mode": cfg.sparsify, "top_k": getattr(cfg, "top_k", None)}
    if is_dataclass(sparsify):
        sparsify = asdict(sparsify)
    elif sparsify is not None and not isinstance(sparsify, (str, int, float, dict, list)):
        sparsify = str(sparsify)
    return {
        "model_id": str(encoder.model_id),
        "vocab_hash": str(encoder.vocab_hash),
        "vocab_size": int(encoder.vocab_size),
        "dense_dim": int(encoder.dense_dim or 0),
        "sparsify": sparsify,
        "model_path": os.path.abspath(model_path) if model_path else None,
    }


class _Builder:
    def __init__(self, col: Collection, encoder: Any, options: IndexOptions, reporter: Reporter):
        self.col = col
        self.encoder = encoder
        self.options = options
        self.reporter = reporter
        self.summary = IndexSummary()
        self.max_pixels = int(options.max_megapixels * 1e6)
        self.draft_size = int(getattr(encoder, "image_size", 0) or 0) or None
        self.missing_by_hash: dict[str, list[int]] = {}  # vanished 'ok' rows, by content hash
        self.changes = Changes()
        self.batch: list[_Prepared] = []
        self.last_commit = time.monotonic()

    # -- worker side (threads): hash, then decode + preprocess. Reads only immutable state.
    def prepare(self, work: _Work, allow_move: bool = True) -> _Prepared:
        f = work.file
        try:
            digest = content_hash(f.path, f.size)
        except OSError as exc:
            return _Prepared(work, "failed", error=describe_error(exc, f.size))
        if work.old_id is not None and digest == work.old_hash:
            return _Prepared(work, "touch", hash=digest)
        if allow_move and work.old_id is None and digest in self.missing_by_hash:
            return _Prepared(work, "move", hash=digest)
        if f.size == 0:
            return _Prepared(work, "failed", hash=digest, error=describe_error(OSError(), 0))
        try:
            image, facts = load_image(f.path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            pixels = np.asarray(self.encoder.preprocess(image), dtype=np.float32)
        except Exception as exc:  # any per-file failure is recorded and reported, never fatal
            return _Prepared(work, "failed", hash=digest, error=describe_error(exc, f.size))
        return _Prepared(work, "embed", hash=digest, pixels=pixels, **facts)

    # -- main thread: decide, batch, embed, commit.
    def handle(self, p: _Prepared) -> None:
        f = p.work.file
        if p.kind == "touch":
            self.changes.move.append((p.work.old_id, f.path, f.size, f.mtime_ns))
            self.summary.unchanged += 1
            self.reporter.advance()
        elif p.kind == "move":
            ids = self.missing_by_hash.get(p.hash or "")
            if ids:
                self.changes.move.append((ids.pop(), f.path, f.size, f.mtime_ns))
                self.summary.moved += 1
                self.reporter.advance()
            else:  # a second copy of a moved file: the stored row went to the first; embed this one
                self.handle(self.prepare(p.work, allow_move=False))
                return
        elif p.kind == "failed":
            self.reporter.warning(f.path, p.error or "failed")
            self.summary.failed += 1
            self.summary.failures.append((f.path, p.error or "failed"))
            if p.work.old_id is not None:
                self.changes.remove.append(p.work.old_id)
            self.changes.insert.append(NewImage(f.path, f.size, f.mtime_ns, p.hash, error=p.error))
            self.reporter.advance()
        else:
            self.batch.append(p)
            if len(self.batch) >= self.options.batch_size:
                self.embed_batch()
        self.maybe_commit()

    def embed_batch(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        encoded = self.encoder.encode_pixels(np.stack([p.pixels for p in batch]))
        sparse = encoded.sparse.tocsr()
        dense = None if encoded.dense is None else np.asarray(encoded.dense, np.float32)
        for r, p in enumerate(batch):
            lo, hi = sparse.indptr[r], sparse.indptr[r + 1]
            terms, weights = sparse.indices[lo:hi], np.asarray(sparse.data[lo:hi], np.float32)
            keep = weights > 0
            order = np.argsort(terms[keep], kind="stable")
            f = p.work.file
            if p.work.old_id is not None:
                self.changes.remove.append(p.work.old_id)
            self.changes.insert.append(
                NewImage(
                    f.path, f.size, f.mtime_ns, p.hash, p.width, p.height, p.exif_time,
                    terms=terms[keep][order].astype(np.uint32), weights=weights[keep][order],
                    dense=None if dense is None else dense[r],
                )
            )
        self.summary.indexed += len(batch)
        self.reporter.advance(len(batch))

    def maybe_commit(self, force: bool = False) -> None:
        n = len(self.changes.insert) + len(self.changes.move) + len(self.changes.remove)
        due = time.monotonic() - self.last_commit >= self.options.commit_every_s
        if n and (force or due or n >= self.options.commit_every_n):
            self.col.apply(self.changes)
            self.changes = Changes()
            self.last_commit = time.monotonic()


def check_roots(roots: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The roots as absolute paths; ``UsageError`` for one that does not exist.

    Called before anything is created or loaded, so a typo leaves no empty collection behind, and a run
    over an unmounted drive never treats every image under it as deleted.
    """
    roots = normalise_roots(roots)
    for root in roots:
        if not os.path.exists(root):
            raise UsageError(f"{root}: no such file or folder.")
    return roots


def build_index(
    roots: Iterable[str | os.PathLike[str]],
    encoder: Any,
    collection: Collection,
    options: IndexOptions | None = None,
    reporter: Reporter | None = None,
    *,
    model_path: str | None = None,
    rebuild_command: str | None = None,
) -> IndexSummary:
    """Bring ``collection`` up to date with the image files under ``roots``; see the module docstring.

    Raises ``UsageError`` for a root that does not exist (rather than treating every image under an
    unmounted drive as deleted) and ``ModelMismatchError`` when the collection belongs to another model.
    """
    options = options or IndexOptions()
    reporter = reporter or Reporter()
    start = time.monotonic()
    roots = check_roots(roots)
    if options.batch_size < 1:
        raise UsageError("--batch-size must be at least 1.")

    rebuild_command = rebuild_command or (
        f"lexsearch index {' '.join(roots)} --model {model_path or 'MODEL_DIR'} "
        f"--collection {collection.path} --rebuild"
    )
    collection.bind_model(model_meta(encoder, model_path), rebuild_command)

    b = _Builder(collection, encoder, options, reporter)
    collection._dense_index()  # load dense.faiss now, repairing it if a previous run was killed

    stored = collection.rows_by_path()
    work: list[_Work] = []
    seen: set[str] = set()

    def skipped(path: str, kind: str) -> None:
        logger.debug("skipped %r: not an image type (%s)", path, kind)
        b.summary.skipped[kind] += 1

    for f in scan(roots, exclude=options.exclude, include_hidden=options.include_hidden, on_skip=skipped):
        seen.add(f.path)
        row = stored.get(f.path)
        if row is None:
            work.append(_Work(f))
        elif row.size == f.size and row.mtime_ns == f.mtime_ns:
            if row.status == "ok":
                b.summary.unchanged += 1
            else:
                b.summary.failed_before += 1
        else:
            work.append(_Work(f, old_id=row.id, old_hash=row.hash if row.status == "ok" else None))
    vanished = [r for p, r in stored.items() if p not in seen and under_roots(p, roots)]
    for r in vanished:
        if r.status == "ok" and r.hash:
            b.missing_by_hash.setdefault(r.hash, []).append(r.id)
    reporter.total(len(work))

    workers = options.workers or min(8, os.cpu_count() or 1)
    lookahead = max(1, LOOKAHEAD_BATCHES * options.batch_size)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lexsearch-decode")
    try:
        pending: deque[Future[_Prepared]] = deque()
        it = iter(work)
        for item in it:
            pending.append(pool.submit(b.prepare, item))
            if len(pending) >= lookahead:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(b.prepare, nxt))
            b.handle(result)
        b.embed_batch()
        # Whatever vanished and was not claimed by a move is gone; failed rows go silently (never indexed).
        for r in vanished:
            if r.status != "ok" or (r.hash and r.id in b.missing_by_hash.get(r.hash, ())) or not r.hash:
                b.changes.remove.append(r.id)
                b.summary.removed += r.status == "ok"
        b.maybe_commit(force=True)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        # Ctrl-C: keep what is already embedded (one more commit), then let the interrupt through.
        try:
            b.maybe_commit(force=True)
            collection.save_dense()
        except Exception:
            logger.debug("could not save the last batch after an interruption", exc_info=True)
        raise
    pool.shutdown(wait=True)

    collection.purge_tombstones()
    collection.save_dense()
    known = collection.meta.get("roots") or []
    collection._set_meta({"roots": sorted(set(known) | set(roots))})
    b.summary.seconds = time.monotonic() - start
    return b.summary
