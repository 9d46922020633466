"""The incremental index build: scan folders, embed what is new or changed, commit in small transactions.

For each file found by the scan:

- same path, same size and mtime as stored: *unchanged*, not opened at all;
- a new path whose content hash matches a stored image that vanished from its old path: *moved*, the row
  keeps its id (and so its vectors and postings), only the path changes;
- a changed file (size or mtime differ) whose content hash is the same: only its stat is updated;
- otherwise it is decoded (EXIF orientation applied, a megapixel guard first) and preprocessed in worker
  threads, ahead of the model, and the model runs on batches of ``batch_size`` (``encoder.encode_pixels``;
  on a CPU, forwards of ``CPU_FORWARD_BATCH``, so progress and commits come every few seconds);
- stored images under the scanned roots that were not found are removed.

A file that cannot be read gives one warning (``Reporter.on_warning``, else the logger) and an ``images``
row with status 'failed', and the run goes on. Work is committed every couple of seconds, each commit one
transaction (see ``store.py``), so a kill loses at most the last few seconds and the next run resumes.
Ctrl-C commits what was embedded, then raises ``IndexInterrupted`` (a ``KeyboardInterrupt``) saying how
many files were saved. The networks of a lazy encoder load on the first file to embed, announced through
``Reporter.model_loading`` / ``model_loaded`` so that progress does not count the load.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np

from lexsearch.errors import LexsearchError, UsageError
from lexsearch.index.phash import image_phash
from lexsearch.index.scan import Folder, ScannedFile, content_hash, normalise_roots, scan_folders, under_roots
from lexsearch.index.store import Changes, Collection, ImageRow, NewImage
from lexsearch.model.images import MAX_MEGAPIXELS, describe_error, load_image

logger = logging.getLogger(__name__)

# Batches of decoded images kept in flight ahead of the model: enough that a slow file (a big PNG, a HEIC)
# does not starve the model, few enough that memory stays at a few batches of (3, S, S) arrays.
LOOKAHEAD_BATCHES = 3
# Commit at least this often: bounds what a kill loses, and how long a reader waits for new images.
COMMIT_EVERY_S = 2.0
# ... and at most this many images per commit, so a transaction (and its posting delta segments) stays small.
COMMIT_EVERY_N = 1024
# Images per forward on a CPU (a block of --batch-size files is embedded in forwards of at most this many):
# the progress bar moves, and a commit can happen, every few seconds rather than once per block.
CPU_FORWARD_BATCH = 8
DEFAULT_MAX_MEGAPIXELS = MAX_MEGAPIXELS
# The upgrade's decode for a perceptual hash: the hash reads a 64 x 64 copy, so a JPEG decodes at a reduced
# scale (DCT scaling) no smaller than this, as the indexer's own decode for the model's input size does.
PHASH_DRAFT = 256


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
    changed: int = 0  # ... of which replaced a stored image whose file changed
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
    # The networks load on the first file that needs embedding (seconds on a CPU): announced apart, so a
    # progress bar neither sits at 0 through it nor counts it in its rate and ETA.
    on_model_loading: Callable[[], None] | None = None
    on_model_loaded: Callable[[float], None] | None = None  # seconds the load took

    def total(self, n: int) -> None:
        if self.on_total:
            self.on_total(n)

    def advance(self, n: int = 1) -> None:
        if self.on_advance and n:
            self.on_advance(n)

    def model_loading(self) -> None:
        if self.on_model_loading:
            self.on_model_loading()

    def model_loaded(self, seconds: float) -> None:
        if self.on_model_loaded:
            self.on_model_loaded(seconds)

    def warning(self, path: str, reason: str) -> None:
        if self.on_warning:
            self.on_warning(path, reason)
        else:
            logger.warning("%s: %s", path, reason)


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C during an index run, raised once what was done is committed; says how far the run got.

    A ``KeyboardInterrupt``, so whatever stops on Ctrl-C still stops; its text is for the person who pressed
    it (the collection is consistent either way, see the module docstring).
    """

    def __init__(self, saved: int, todo: int, scanning: bool = False) -> None:
        self.saved, self.todo = saved, todo
        if scanning:
            text = "while scanning the folders; nothing was indexed yet, the collection is as it was"
        else:
            text = (
                f"{saved} of {todo} new or changed files indexed and saved; "
                "running the same command again resumes with the rest"
            )
        super().__init__(text)


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
    photo: dict | None = None  # the header's photo metadata (``photometa.PHOTO_FIELDS``)
    phash: str | None = None  # the decoded image's perceptual hash (``phash.py``)
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


class Shard:
    """Where this process stands among the ranks that embed one index run (torchrun), and their collectives.

    Rank 0 scans, owns the collection (the one writer) and commits; every rank, rank 0 included, embeds the
    blocks of ``batch_size`` files whose number ``k`` has ``k % world == rank``, and hands its results to
    rank 0 (``torch.distributed.gather_object``), which applies them in file order. The batches are the same
    blocks whatever the number of ranks, so N processes write exactly the collection one process writes.
    The default is a single process (no torch.distributed at all).
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = int(rank), int(world)

    @classmethod
    def from_process_group(cls) -> Shard:
        import torch.distributed as dist

        return cls(dist.get_rank(), dist.get_world_size())

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out


@dataclass
class _Done:
    """A prepared file without its pixels, plus its vectors when it was embedded (what ranks send)."""

    p: _Prepared
    terms: np.ndarray | None = None
    weights: np.ndarray | None = None
    dense: np.ndarray | None = None


class _Builder:
    def __init__(self, col: Collection | None, encoder: Any, options: IndexOptions, reporter: Reporter):
        self.col = col
        self.encoder = encoder
        self.options = options
        self.reporter = reporter
        self.summary = IndexSummary()
        self.max_pixels = int(options.max_megapixels * 1e6)
        self.draft_size = int(getattr(encoder, "image_size", 0) or 0) or None
        self.missing_by_hash: dict[str, list[int]] = {}  # vanished 'ok' rows, by content hash
        self.changes = Changes()
        self.last_commit = time.monotonic()
        self.forward_batch: int | None = None  # images per forward, set once the networks are loaded
        self.handled = 0  # files of the plan decided so far (rank 0)
        self.saved = 0  # ... of which committed

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
            image, facts = load_image(
                f.path, max_pixels=self.max_pixels, draft_size=self.draft_size, mtime_ns=f.mtime_ns
            )
            pixels = np.asarray(self.encoder.preprocess(image), dtype=np.float32)
            phash = image_phash(image)
        except Exception as exc:  # any per-file failure is recorded and reported, never fatal
            return _Prepared(work, "failed", hash=digest, error=describe_error(exc, f.size))
        return _Prepared(work, "embed", hash=digest, pixels=pixels, phash=phash, **facts)

    # -- every rank: embed one block's files, in forwards of at most ``forward_batch`` images.
    def embed(self, prepared: list[_Prepared]) -> list[_Done]:
        return [d for part in self.embed_parts(prepared) for d in part]

    def embed_parts(self, prepared: list[_Prepared]) -> Iterator[list[_Done]]:
        """``prepared`` in order, in consecutive parts that each end with one forward of at most
        ``forward_batch`` images, so the caller can report each part as soon as it is embedded. The parts
        depend only on the files and the device, never on timing: every rank cuts a block the same way."""
        part: list[_Done] = []
        n = 0
        for p in prepared:
            part.append(_Done(p))
            if p.kind == "embed":
                n += 1
                if n >= self._forward_batch():
                    self._forward(part)
                    yield part
                    part, n = [], 0
        if part:
            self._forward(part)
            yield part

    def _forward_batch(self) -> int:
        if self.forward_batch is None:
            self._load_networks()
            device = getattr(self.encoder, "device", None)
            on_cpu = str(getattr(device, "type", device)) == "cpu"
            # On a CPU a forward of a few images is as efficient per image as a big one, and one of 32
            # takes seconds; the progress (and a Ctrl-C's last commit) should not wait for it.
            self.forward_batch = (
                min(self.options.batch_size, CPU_FORWARD_BATCH) if on_cpu else self.options.batch_size
            )
        return self.forward_batch

    def _load_networks(self) -> None:
        """Load a lazy encoder's networks now, announced, instead of inside the first file's progress."""
        if getattr(self.encoder, "loaded", True):
            return
        self.reporter.model_loading()
        start = time.monotonic()
        self.encoder.encode_pixels  # noqa: B018 (the attribute loads the networks)
        self.reporter.model_loaded(time.monotonic() - start)

    def _forward(self, done: list[_Done]) -> None:
        todo = [d for d in done if d.p.kind == "embed"]
        if not todo:
            return
        encoded = self.encoder.encode_pixels(np.stack([d.p.pixels for d in todo]))
        sparse = encoded.sparse.tocsr()
        dense = None if encoded.dense is None else np.asarray(encoded.dense, np.float32)
        for r, d in enumerate(todo):
            lo, hi = sparse.indptr[r], sparse.indptr[r + 1]
            terms, weights = sparse.indices[lo:hi], np.asarray(sparse.data[lo:hi], np.float32)
            keep = weights > 0
            order = np.argsort(terms[keep], kind="stable")
            d.terms = terms[keep][order].astype(np.uint32)
            d.weights = weights[keep][order]
            d.dense = None if dense is None else dense[r]
            d.p.pixels = None  # not sent to rank 0

    # -- rank 0: decide and commit, in file order.
    def handle(self, d: _Done) -> None:
        p = d.p
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
                self.handle(self.embed([self.prepare(p.work, allow_move=False)])[0])
        elif p.kind == "failed":
            self.reporter.warning(f.path, p.error or "failed")
            self.summary.failed += 1
            self.summary.failures.append((f.path, p.error or "failed"))
            if p.work.old_id is not None:
                self.changes.remove.append(p.work.old_id)
            self.changes.insert.append(NewImage(f.path, f.size, f.mtime_ns, p.hash, error=p.error))
            self.reporter.advance()
        else:
            if p.work.old_id is not None:
                self.changes.remove.append(p.work.old_id)
                self.summary.changed += 1
            self.changes.insert.append(
                NewImage(
                    f.path,
                    f.size,
                    f.mtime_ns,
                    p.hash,
                    p.width,
                    p.height,
                    p.exif_time,
                    photo=p.photo,
                    phash=p.phash,
                    terms=d.terms,
                    weights=d.weights,
                    dense=d.dense,
                )
            )
            self.summary.indexed += 1
            self.reporter.advance()

    def maybe_commit(self, force: bool = False) -> None:
        n = len(self.changes.insert) + len(self.changes.move) + len(self.changes.remove)
        due = time.monotonic() - self.last_commit >= self.options.commit_every_s
        if n and (force or due or n >= self.options.commit_every_n):
            self.col.apply(self.changes)
            self.changes = Changes()
            self.last_commit = time.monotonic()
            self.saved = self.handled

    def run(self, work: list[_Work], shard: Shard) -> None:
        """Prepare (threads, ahead of the model), embed and commit ``work`` in blocks of ``batch_size``."""
        bs = self.options.batch_size
        n_blocks = (len(work) + bs - 1) // bs
        mine = list(range(shard.rank, n_blocks, shard.world))
        workers = self.options.workers or min(8, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lexsearch-decode")
        try:
            pending: deque[list[Future[_Prepared]]] = deque()
            ahead = iter(mine)

            def submit_next() -> None:
                k = next(ahead, None)
                if k is not None:
                    pending.append([pool.submit(self.prepare, w) for w in work[k * bs : (k + 1) * bs]])

            for _ in range(max(1, LOOKAHEAD_BATCHES)):
                submit_next()
            for round_start in range(0, n_blocks, shard.world):
                block = pending.popleft() if round_start + shard.rank < n_blocks else []
                submit_next()
                if shard.world == 1:  # each forward's files are decided (and reported) at once
                    for part in self.embed_parts([f.result() for f in block]):
                        for d in part:
                            self.handle(d)
                            self.handled += 1
                        self.maybe_commit()
                    continue
                done = self.embed([f.result() for f in block])
                results = shard.gather(done)
                if results is None:
                    continue
                for part in results:
                    for d in part:
                        self.handle(d)
                        self.handled += 1
                    self.maybe_commit()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


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


@dataclass
class Plan:
    """What an index run has to do, from the scan and the stored rows (rank 0)."""

    work: list[_Work]  # new or changed files, in scan order
    vanished: list[ImageRow]  # stored rows under the roots whose file was not found (``hash`` filled in)
    # The scanned digest of each folder whose rows were read: recorded once the run completed them.
    seal: dict[str, bytes | None] = field(default_factory=dict)
    folders_read: int = 0  # folders whose stored rows were read (the others matched their digest)
    rows_read: int = 0


def plan_run(
    collection: Collection,
    roots: list[str],
    folders: Iterable[Folder],
    b: _Builder,
) -> Plan:
    """Rank 0: what needs work (new or changed files), what vanished, and the rows that vanished by hash.

    A scanned folder whose listing matches the digest stored for it (``Collection.folder_states``) is known
    unchanged without reading its rows; the rows are read only of the folders that differ, that have no
    digest, or that hold stored rows but were not scanned (gone, excluded, hidden).
    """
    states = collection.folder_states()
    folders = list(folders)
    loose = [f for folder in folders if folder.path is None for f in folder.files]
    # A folder holding a file given directly as a root lists the rest of its files only: never matched.
    mixed = {os.path.dirname(f.path) for f in loose}
    to_read: list[str] = []
    seal: dict[str, bytes | None] = {}
    files: list[ScannedFile] = []  # the files to compare with their rows, in scan order
    walked: set[str] = set()
    for folder in folders:
        if folder.path is None:
            files.extend(folder.files)
            continue
        walked.add(folder.path)
        state = states.get(folder.path)
        digest = folder.digest
        if folder.path not in mixed and state is not None and state.digest == digest:
            b.summary.unchanged += state.ok
            b.summary.failed_before += state.failed
            continue
        if not folder.files and state is None:
            continue  # nothing stored, nothing found
        to_read.append(folder.path)
        files.extend(folder.files)
        if folder.path not in mixed:
            seal[folder.path] = digest
    # Stored folders under the roots that the scan did not list (removed, excluded, hidden): rows vanished.
    gone = [d for d in states if d not in walked and under_roots(d, roots)]
    stored = collection.rows_in_folders(to_read + gone)
    stored.update(collection.rows_at([f.path for f in loose if f.path not in stored]))

    work: list[_Work] = []
    changed: list[tuple[ScannedFile, ImageRow]] = []
    seen: set[str] = set()
    for f in files:
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
            changed.append((f, row))
            work.append(_Work(f, old_id=row.id))
    vanished = [r for p, r in stored.items() if p not in seen and under_roots(p, roots)]
    # Content hashes only of the rows that need one (changed or vanished), not of every stored image.
    hashes = collection.hashes_of([r.id for _, r in changed] + [r.id for r in vanished])
    for w, (_, row) in zip([w for w in work if w.old_id is not None], changed):
        w.old_hash = hashes.get(row.id) if row.status == "ok" else None
    vanished = [r._replace(hash=hashes.get(r.id)) for r in vanished]
    for r in vanished:
        if r.status == "ok" and r.hash:
            b.missing_by_hash.setdefault(r.hash, []).append(r.id)
    seal.update(dict.fromkeys((d for d in gone if d not in seal), None))
    return Plan(work, vanished, seal, len(to_read) + len(gone), len(stored))


def _scan(roots: list[str], options: IndexOptions, b: _Builder) -> Iterable[Folder]:
    def skipped(path: str, kind: str) -> None:
        logger.debug("skipped %r: not an image type (%s)", path, kind)
        b.summary.skipped[kind] += 1

    return scan_folders(
        roots, exclude=options.exclude, include_hidden=options.include_hidden, on_skip=skipped
    )


def fill_photo_meta(collection: Collection, batch: int = 500) -> int:
    """Read the header metadata of indexed images that have none yet (rows from before schema 4): only the
    headers, no pixel and no vector. A file gone or unreadable since gets the date of its stored mtime.
    Returns how many rows were filled."""
    from lexsearch.index.paths import py_path
    from lexsearch.index.photometa import header_facts

    q = "SELECT id, path, mtime_ns FROM images WHERE status = 'ok' AND taken_source IS NULL AND id > ? "
    q += "ORDER BY id LIMIT ?"
    filled, last = 0, 0
    while rows := collection.db.execute(q, [last, batch]).fetchall():
        found = {image_id: header_facts(py_path(p), mtime_ns)[2] for image_id, p, mtime_ns in rows}
        collection.set_photo_meta(found)
        filled += len(found)
        last = rows[-1][0]
    if filled:
        logger.info("photo metadata read from the headers of %d indexed images", filled)
    return filled


def file_phash(path: str) -> str:
    """The perceptual hash of an indexed file, decoded again (an upgrade); '' when it cannot be read now."""
    try:
        image, _ = load_image(path, max_pixels=int(MAX_MEGAPIXELS * 1e6), draft_size=PHASH_DRAFT)
        return image_phash(image)
    except Exception as exc:  # noqa: BLE001 - the image keeps its vectors whatever its file is now
        logger.info("%s: no perceptual hash (%s)", path, describe_error(exc))
        return ""


def fill_phashes(collection: Collection, batch: int = 200) -> int:
    """Compute the perceptual hash of indexed images that have none yet (rows from before schema 5): each
    file is decoded once, nothing is embedded. A file unreadable now gets '' (not retried on every run).
    Returns how many rows were filled."""
    from lexsearch.index.paths import py_path

    q = "SELECT id, path FROM images WHERE status = 'ok' AND phash IS NULL AND id > ? ORDER BY id LIMIT ?"
    filled, last = 0, 0
    while rows := collection.db.execute(q, [last, batch]).fetchall():
        found = {image_id: file_phash(py_path(p)) for image_id, p in rows}
        collection.set_phashes(found)
        filled += len(found)
        last = rows[-1][0]
    if filled:
        logger.info("perceptual hashes computed for %d indexed images", filled)
    return filled


def build_index(
    roots: Iterable[str | os.PathLike[str]],
    encoder: Any,
    collection: Collection | None,
    options: IndexOptions | None = None,
    reporter: Reporter | None = None,
    *,
    model_path: str | None = None,
    rebuild_command: str | None = None,
    shard: Shard | None = None,
) -> IndexSummary:
    """Bring ``collection`` up to date with the image files under ``roots``; see the module docstring.

    Raises ``UsageError`` for a root that does not exist (rather than treating every image under an
    unmounted drive as deleted) and ``ModelMismatchError`` when the collection belongs to another model.
    Under torchrun pass ``shard=Shard.from_process_group()`` on every rank; only rank 0 passes the
    collection (the others pass None) and gets the summary of the run.
    """
    options = options or IndexOptions()
    reporter = reporter or Reporter()
    shard = shard or Shard()
    start = time.monotonic()
    b = _Builder(collection, encoder, options, reporter)
    if shard.rank != 0:  # a helper rank: embed its blocks of rank 0's plan
        plan = shard.share(None)
        if isinstance(plan, LexsearchError):
            raise plan
        work, b.missing_by_hash = plan
        b.run(work, shard)
        b.summary.seconds = time.monotonic() - start
        return b.summary
    try:
        roots = check_roots(roots)
        if options.batch_size < 1:
            raise UsageError("--batch-size must be at least 1.")
        if collection is None:
            raise UsageError("rank 0 writes the collection: it must be given one.")
        rebuild_command = rebuild_command or (
            f"lexsearch index {' '.join(roots)} --model {model_path or 'MODEL_DIR'} "
            f"--collection {collection.path} --rebuild"
        )
        collection.bind_model(model_meta(encoder, model_path), rebuild_command)
        p = plan_run(collection, roots, _scan(roots, options, b), b)
        work, vanished = p.work, p.vanished
    except LexsearchError as exc:
        shard.share(exc)  # the other ranks stop with the same error instead of waiting for a plan
        raise
    except KeyboardInterrupt as exc:
        raise IndexInterrupted(0, 0, scanning=True) from exc
    shard.share((work, b.missing_by_hash))
    reporter.total(len(work))
    try:
        b.run(work, shard)
        # Whatever vanished and was not claimed by a move is gone; failed rows go silently (never indexed).
        for r in vanished:
            if r.status != "ok" or (r.hash and r.id in b.missing_by_hash.get(r.hash, ())) or not r.hash:
                b.changes.remove.append(r.id)
                b.summary.removed += r.status == "ok"
        b.maybe_commit(force=True)
        # Only now that every scanned file has its row: the digests of the folders read this run.
        collection.seal_folders(p.seal)
        fill_photo_meta(collection)
        fill_phashes(collection)
    except BaseException as exc:
        # Ctrl-C: keep what is already embedded (one more commit), then let the interrupt through.
        try:
            b.maybe_commit(force=True)
            collection.save_dense()
        except BaseException:  # a second Ctrl-C included: what was committed before stays, and is said
            logger.debug("could not save the last batch after an interruption", exc_info=True)
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, IndexInterrupted):
            raise IndexInterrupted(b.saved, len(work)) from exc
        raise

    collection.purge_tombstones()
    collection.save_dense()
    known = collection.meta.get("roots") or []
    collection._set_meta({"roots": sorted(set(known) | set(roots))})
    b.summary.seconds = time.monotonic() - start
    return b.summary
