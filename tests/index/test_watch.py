"""``lexsearch index --watch``: the folders' changes reach the collection as a re-index would apply them.

Every wait polls with a generous deadline and returns as soon as its condition holds: a loaded machine makes
these tests slower, never wrong.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fakes import make_image, make_images

from lexsearch.cli import cli
from lexsearch.index import Collection, IndexOptions, Reporter, build_index
from lexsearch.index.scan import is_image_name
from lexsearch.index.watch import FolderWatch, WatchTotals, keep_in_step

DEADLINE_S = 90.0  # the longest any condition may take to hold (a 2-core machine shared with other jobs)
DEBOUNCE_S = 0.2


def _until(condition, what: str, timeout: float = DEADLINE_S):
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.05)


def _put(path: Path, seed: int) -> None:
    """Write an image the way a careful copier does (a temporary name, then a rename), so a batch never
    sees it half written and the totals below are exact."""
    tmp = path.with_name(path.name + ".part")
    make_image(tmp, seed, fmt="PNG")
    os.replace(tmp, path)


def _stored(col_path: Path) -> dict[str, tuple[int, int, str]]:
    with Collection.open(col_path) as col:
        return {r.path: (r.size, r.mtime_ns, r.status) for r in col.rows()}


def _ids(col_path: Path) -> dict[str, int]:
    with Collection.open(col_path) as col:
        return {r.path: r.id for r in col.rows()}


def _on_disk(root: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if is_image_name(name):
                st = os.stat(os.path.join(folder, name))
                out[os.path.join(folder, name)] = (
                    st.st_size,
                    st.st_mtime_ns,
                    "failed" if "broken" in name else "ok",
                )
    return out


@contextmanager
def _watching(photos: Path, model_dir: Path, col_path: Path):
    """The watch of ``lexsearch index --watch`` in a thread: the first run done, then batches until the
    block ends (stop requested, thread joined)."""
    from lexsearch.model.lazy import LazyEncoder

    encoder = LazyEncoder(model_dir, device="cpu", text_encoder="lm")
    w = SimpleNamespace(batches=[], warnings=[], errors=[], totals=WatchTotals(), encoder=encoder)
    reporter = Reporter(on_warning=lambda path, reason: w.warnings.append(path))
    stop = threading.Event()
    with (
        Collection.open(col_path, readonly=False) as col,
        FolderWatch([str(photos)], debounce_s=DEBOUNCE_S) as fw,
    ):
        w.first = build_index(
            [photos], encoder, col, IndexOptions(batch_size=4), reporter, model_path=str(model_dir)
        )

        def run():
            return build_index(
                [photos], encoder, col, IndexOptions(batch_size=4), reporter, model_path=str(model_dir)
            )

        waiting = fw.wait

        def wait(stop):  # marks the loop as idle: each run before this was counted
            w.waiting = True
            try:
                return waiting(stop)
            finally:
                w.waiting = False

        fw.wait = wait
        w.waiting = False
        # Settled: the loop waits with no event pending, and the collection holds what the folders hold.
        w.settled = lambda: w.waiting and not fw.pending() and _stored(col_path) == _on_disk(photos)

        def loop():
            try:
                keep_in_step(fw, run, on_batch=w.batches.append, stop=stop, totals=w.totals)
            except BaseException as exc:  # seen by the test, not lost in the thread
                w.errors.append(exc)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield w
        finally:
            stop.set()
            thread.join(DEADLINE_S)
        assert not thread.is_alive(), "the watch did not stop when asked"
        assert w.errors == []


def test_watch_applies_every_kind_of_change_as_a_reindex_would(tmp_path, tiny_model_dir):
    from lexsearch.search.query import search_by_image

    photos = tmp_path / "photos"
    make_images(photos / "a", 4)
    make_images(photos / "b", 2, start=10)
    outside = tmp_path / "elsewhere"  # a folder moved in from outside the watched tree
    make_images(outside, 2, start=40)
    col_path = tmp_path / "col"
    moved_from, moved_to = photos / "a" / "img_00001.png", photos / "b" / "img_00001.png"
    edited = photos / "a" / "img_00002.png"
    new = photos / "a" / "new.png"

    with _watching(photos, tiny_model_dir, col_path) as w:
        assert w.first.indexed == 6
        ids = _ids(col_path)

        _put(new, seed=20)  # new
        _put(edited, seed=21)  # edited in place (new content, new size and mtime)
        os.rename(moved_from, moved_to)  # moved between folders
        os.remove(photos / "b" / "img_00010.png")  # deleted
        (photos / "c").mkdir()  # a new subfolder, filled after it was created
        _put(photos / "c" / "one.png", seed=22)
        _put(photos / "c" / "two.png", seed=23)
        os.rename(outside, photos / "d")  # a folder with images moved in
        _until(w.settled, "the collection to match the folders")

        # Every change made it, counted as a re-index counts it: the move kept its vectors (same id), the
        # edited file was embedded again (a new row), the deleted one is gone.
        t = w.totals
        assert (t.new, t.changed, t.moved, t.removed, t.failed) == (5, 1, 1, 1, 0), t.line()
        rows = _ids(col_path)
        assert rows[str(moved_to)] == ids[str(moved_from)]
        assert rows[str(edited)] != ids[str(edited)]
        assert str(photos / "b" / "img_00010.png") not in rows

        # A broken file is recorded as failed with one warning, and the watch goes on.
        (photos / "c" / "broken.jpg").write_bytes(b"not an image at all")
        _until(w.settled, "the broken file to be recorded")
        assert w.warnings == [str(photos / "c" / "broken.jpg")]
        _put(photos / "c" / "three.png", seed=24)
        _until(w.settled, "a file added after the broken one")
        assert (w.totals.new, w.totals.failed) == (6, 1)
        encoder = w.encoder

    # Nothing left for a re-index to do, and a fresh index of the folders holds the same files.
    with Collection.open(col_path, readonly=False) as col:
        again = build_index([photos], encoder, col)
    assert (again.indexed, again.moved, again.removed, again.failed) == (0, 0, 0, 0), again.line()
    with Collection.open(tmp_path / "fresh", readonly=False) as fresh:
        build_index([photos], encoder, fresh)
    assert _stored(tmp_path / "fresh") == _stored(col_path)
    # The collection answers for the new files: each is its own nearest image.
    with Collection.open(col_path) as col:
        for path in (new, photos / "c" / "three.png", photos / "d" / "img_00040.png"):
            assert search_by_image(col, encoder, str(path), top=1)[0].path == str(path)


def test_events_that_change_nothing_indexed_are_ignored(tmp_path):
    """Opening a file (the index run reads every file it embeds), a sidecar, or anything in the collection's
    own folder must not start a batch, or each batch would start the next; a folder event or lost events
    always do."""
    col = tmp_path / "photos" / ".col"
    fw = FolderWatch([str(tmp_path / "photos")], debounce_s=0, ignore=[col])

    def event(kind, src, dest="", is_directory=False):
        return SimpleNamespace(
            event_type=kind, src_path=str(src), dest_path=str(dest), is_directory=is_directory
        )

    photo = tmp_path / "photos" / "a.jpg"
    for e in [
        event("opened", photo),
        event("closed_no_write", photo),
        event("created", tmp_path / "photos" / "a.xmp"),
        event("modified", tmp_path / "photos" / "dl.part"),
        event("modified", col / "index.db"),
        event("created", col / "postings", is_directory=True),
    ]:
        fw.notice(e)
        assert not fw.pending(), e
    for e in [
        event("created", photo),
        event("closed", photo),
        event("attrib", photo),
        event("moved", tmp_path / "photos" / "a.jpg.part", photo),
        event("deleted", tmp_path / "photos" / "sub", is_directory=True),
        event("events_lost", ""),
    ]:
        fw.notice(e)
        assert fw.pending(), e
        assert fw.wait()
        assert not fw.pending()


def test_a_batch_waits_for_the_folders_to_be_quiet(tmp_path):
    fw = FolderWatch([str(tmp_path)], debounce_s=0.5)
    stop = threading.Event()
    stop.set()
    assert fw.wait(stop) is False  # nothing happened: a stop request ends the wait
    photo = SimpleNamespace(
        event_type="created", src_path=str(tmp_path / "a.png"), dest_path="", is_directory=False
    )
    fw.notice(photo)
    start = time.monotonic()
    keep_noticing = threading.Thread(target=lambda: [fw.notice(photo) or time.sleep(0.1) for _ in range(5)])
    keep_noticing.start()
    assert fw.wait() is True
    keep_noticing.join()
    # Events for ~0.5 s, then 0.5 s of quiet: one batch for all of them, not before the quiet spell.
    assert time.monotonic() - start >= 0.9
    assert not fw.pending()


def test_a_system_limit_on_watches_is_one_line(tmp_path, tiny_model_dir, monkeypatch):
    import errno

    from watchdog.observers import Observer

    def full(self):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(Observer, "start", full)
    photos = tmp_path / "photos"
    make_images(photos, 1)
    args = ["index", str(photos), "--model", str(tiny_model_dir), "--device", "cpu", "--watch"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "max_user_watches" in result.stderr and "Traceback" not in result.output


def test_watch_flags_refused_in_one_line(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    make_images(photos, 1)
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(photos), "--model", str(tiny_model_dir), "--debounce", "1"])
    assert result.exit_code == 2 and result.stderr.strip() == "Error: --debounce goes with --watch."
    args = [
        "index",
        str(photos),
        "--model",
        str(tiny_model_dir),
        "--watch",
        "--collection",
        "qdrant://h:6333/c",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--watch keeps embedded collections only" in result.stderr


def _lines(stream, q: queue.Queue, name: str) -> None:
    for line in stream:
        q.put((name, line.rstrip("\n")))
    q.put((name, None))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_cli_watch_prints_a_line_per_batch_and_ends_cleanly_on_ctrl_c(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    make_images(photos, 2)
    args = [sys.executable, "-m", "lexsearch", "index", str(photos), "--model", str(tiny_model_dir)]
    args += ["--device", "cpu", "--collection", "w", "--watch", "--debounce", str(DEBOUNCE_S)]
    # A runner started in the background (``pytest &``) ignores SIGINT, and a child inherits that: restored
    # to the default, so the child's Python turns it into KeyboardInterrupt as a terminal's Ctrl-C does.
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    q: queue.Queue = queue.Queue()
    out: list[str] = []
    err: list[str] = []
    for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=_lines, args=(stream, q, name), daemon=True).start()

    def seen(text: str, where: list[str]):
        def check():
            while not q.empty():
                name, line = q.get()
                if line is not None:
                    (out if name == "out" else err).append(line)
            return any(text in line for line in where)

        return check

    try:
        _until(seen("watching 1 folder for changes", err), "the watch to start")
        assert "2 indexed, 0 unchanged" in out[0]
        _put(photos / "new.png", seed=30)
        _until(seen("+1 new, 0 changed, 0 moved, 0 removed, 0 failed", out), "the batch line")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE_S) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _until(seen("Interrupted:", err), "the closing line")
    assert err[-1].startswith("Interrupted: stopped watching after ")
    assert err[-1].endswith("1 batch applied: +1 new, 0 changed, 0 moved, 0 removed, 0 failed"), err[-1]
    assert "Traceback" not in "\n".join(err)
    with Collection.open("w") as col:
        assert sorted(Path(r.path).name for r in col.rows()) == ["img_00000.png", "img_00001.png", "new.png"]
