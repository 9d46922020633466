"""Keep a collection in step with its folders: watch them, and once they are quiet, re-run the index.

The folders are watched with watchdog (inotify, FSEvents, ReadDirectoryChangesW, or polling where none of
those exists). Events only say *that* something changed: after a burst of them has died down (no event for
``debounce_s`` seconds), the caller's ``run`` brings the collection up to date exactly as ``lexsearch index``
would, over every watched folder. That run is the incremental build (``build.py``): a folder whose listing
matches its stored digest costs one directory read, so only the folders that changed are compared row by
row, and moves between folders are found because the whole set is planned at once.

Nothing here prints or decides exit codes: batches and warnings go to the caller's callbacks.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lexsearch.errors import LexsearchError
from lexsearch.index.build import IndexSummary
from lexsearch.index.scan import is_image_name, under_roots

# Quiet time before a batch is applied: a photo copied from a camera card arrives as a stream of writes, an
# import of a hundred files as a stream of creations; two seconds without an event is "done" for both.
DEFAULT_DEBOUNCE_S = 2.0
# While events never stop (a copy of thousands of files), what has arrived is applied at least this often,
# so new images become searchable during a long import rather than only after it.
MAX_DELAY_S = 60.0
# How often a wait wakes up to look at ``stop``: Ctrl-C and a stop request are answered within this.
WAKE_S = 0.2

# The event kinds that mean the folders changed ('attrib': a touch or a restored mtime; 'closed': the end
# of a write). Not 'opened' nor 'closed_no_write': the index run itself opens files to hash and decode
# them, and counting those would make every batch trigger the next.
CHANGE_EVENTS = frozenset({"created", "deleted", "modified", "moved", "closed", "attrib"})
# The OS dropped events (inotify's queue overflowed): what changed is unknown, so a run is due regardless.
EVENTS_LOST = "events_lost"


@dataclass
class WatchTotals:
    """What a watch applied after its first run, summed over its batches."""

    batches: int = 0  # runs that changed something
    new: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0

    def add(self, s: IndexSummary) -> None:
        self.batches += 1
        self.new += s.indexed - s.changed
        self.changed += s.changed
        self.moved += s.moved
        self.removed += s.removed
        self.failed += s.failed

    def line(self) -> str:
        return (
            f"+{self.new} new, {self.changed} changed, {self.moved} moved, {self.removed} removed, "
            f"{self.failed} failed"
        )


def applied(summary: IndexSummary) -> bool:
    """Whether a run changed the collection (new, changed, moved, removed or newly failed files)."""
    return bool(summary.indexed or summary.moved or summary.removed or summary.failed)


def batch_line(summary: IndexSummary) -> str:
    """One batch, as the watch reports it: ``+3 new, 1 changed, 0 moved, 2 removed, 0 failed in 0.4s``."""
    t = WatchTotals()
    t.add(summary)
    return f"{t.line()} in {summary.seconds:.1f}s"


class FolderWatch:
    """Folder events under ``roots``, coalesced: ``wait()`` returns once some arrived and then stopped.

    ``ignore``: folders whose events never count (the collection's own folder, when it lies under a root:
    otherwise every batch's writes would trigger the next). Used as a context manager (starts and stops the
    observer thread); start it *before* the first index run, so that nothing changed during that run is
    missed.
    """

    def __init__(
        self,
        roots: Iterable[str],
        *,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        ignore: Iterable[str | os.PathLike[str]] = (),
        max_delay_s: float = MAX_DELAY_S,
    ) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.debounce_s = max(0.0, float(debounce_s))
        self.max_delay_s = max(self.debounce_s, float(max_delay_s))
        self.ignore = [os.path.abspath(p) for p in ignore]
        self._cond = threading.Condition()
        self._first: float | None = None  # monotonic time of the first event not yet handed out
        self._last: float | None = None  # ... and of the latest
        self._observer = None

    # -- the observer's thread
    def notice(self, event) -> None:
        """Count one watchdog event, unless it cannot change what the index holds."""
        if event.event_type != EVENTS_LOST:
            if event.event_type not in CHANGE_EVENTS:
                return
            paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
            paths = [p for p in paths if not under_roots(p, self.ignore)]
            if not paths:
                return
            # A file that is not an image (a sidecar, a download's .part) changes nothing the index keeps;
            # a folder event always may (a folder moved, deleted or renamed carries its images along).
            if not event.is_directory and not any(is_image_name(os.path.basename(p)) for p in paths):
                return
        with self._cond:
            now = time.monotonic()
            self._first = self._first if self._first is not None else now
            self._last = now
            self._cond.notify_all()

    # -- the caller's thread
    def wait(self, stop: threading.Event | None = None) -> bool:
        """Block until events arrived and then none for ``debounce_s`` (or events kept coming for
        ``max_delay_s``); True then, False when ``stop`` was set first. Events that arrive after this returns
        count towards the next wait."""
        stop = stop or threading.Event()
        with self._cond:
            while not stop.is_set():
                if self._last is not None:
                    now = time.monotonic()
                    due = min(self._last + self.debounce_s, self._first + self.max_delay_s)
                    if now >= due:
                        self._first = self._last = None
                        return True
                    self._cond.wait(min(WAKE_S, due - now))
                else:
                    self._cond.wait(WAKE_S)
        return False

    def pending(self) -> bool:
        """Whether events arrived since the last ``wait`` returned."""
        with self._cond:
            return self._last is not None

    def start(self) -> FolderWatch:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watch = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                watch.notice(event)

        observer = Observer()
        handler = Handler()
        folders = {}
        for root in self.roots:
            # A root given as a file is watched through its folder (a sibling's event costs a cheap run).
            folder = root if os.path.isdir(root) else os.path.dirname(root)
            folders[folder] = folders.get(folder, False) or os.path.isdir(root)
        for folder, recursive in folders.items():
            observer.schedule(handler, folder, recursive=recursive)
        observer.daemon = True  # never keeps the process alive on its own
        try:
            observer.start()
        except OSError as exc:
            raise LexsearchError(_cannot_watch(exc)) from exc
        self._observer = observer
        return self

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def __enter__(self) -> FolderWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cannot_watch(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EMFILE):
        # inotify: one watch per folder, up to fs.inotify.max_user_watches (and max_user_instances).
        return (
            f"cannot watch the folders{where}: the system's limit on watched folders is reached "
            "(raise fs.inotify.max_user_watches / max_user_instances, or run 'lexsearch index' from cron)"
        )
    return f"cannot watch the folders{where}: {exc.strerror or exc}"


def keep_in_step(
    watch: FolderWatch,
    run: Callable[[], IndexSummary],
    *,
    on_batch: Callable[[IndexSummary], None] | None = None,
    stop: threading.Event | None = None,
    totals: WatchTotals | None = None,
) -> WatchTotals:
    """Until ``stop`` is set (or Ctrl-C): wait for ``watch`` to report a quiet spell after changes, then
    ``run()`` (one index run over every watched folder). Each run that changed something is added to the
    totals and handed to ``on_batch``. Pass ``totals`` to read them after a Ctrl-C; an exception from
    ``run`` (a root that disappeared, a damaged collection) ends the watch."""
    totals = totals if totals is not None else WatchTotals()
    while watch.wait(stop):
        summary = run()
        if applied(summary):
            totals.add(summary)
            if on_batch is not None:
                on_batch(summary)
    return totals
