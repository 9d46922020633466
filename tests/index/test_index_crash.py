"""Crash safety and concurrency: SIGKILL at random moments, and queries while an indexer writes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEncoder, make_images

from lexsearch.index import Collection, build_index

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

TESTS = Path(__file__).parent.parent  # tests/, where fakes.py is
# An indexer in a child process: slow enough (a delay per batch, tiny commits) to be killed midway.
CHILD = """
import sys
from fakes import FakeEncoder
from lexsearch.index import Collection, IndexOptions, build_index
Collection.flush_at = int(sys.argv[3])  # tiny posting files, so kills land in flushes and merges too
Collection.fanout = 3
with Collection.open(sys.argv[1], readonly=False) as col:
    print("opened", flush=True)  # a parent may time its kill from here, not from the imports before it
    s = build_index([sys.argv[2]], FakeEncoder(delay_s=0.05), col,
                    IndexOptions(batch_size=4, workers=2, commit_every_s=0.05, commit_every_n=8))
print(s.line())
"""


def child(collection: Path, root: Path, flush_at: int = 200) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(collection), str(root), str(flush_at)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_consistent(collection: Path, expect_files: int | None = None) -> int:
    with Collection.open(collection) as col:  # a reader: repairs a lagging FAISS in memory only
        assert col.verify() == []
        n = col.count()
        meta = col.meta
        if expect_files is not None:
            assert n == expect_files
        # Every file the database references is there and whole; no file is unreferenced but a temp file.
        names = {
            r[0] for r in col.db.execute("SELECT name FROM segments UNION SELECT name FROM dense_segments")
        }
        on_disk = {p.name for p in collection.iterdir() if p.suffix in (".lxp", ".faiss")}
        assert names <= on_disk
        if meta.get("faiss_generation") == meta.get("generation"):
            # When the files claim to be current they hold exactly the stored dense vectors.
            from lexsearch.index import dense as dn

            ids = set()
            for name in names & {n for n in on_disk if n.endswith(".faiss")}:
                ids |= set(dn.index_ids(dn.read_index(collection / name, 8)).tolist())
            dead = {r[0] for r in col.db.execute("SELECT image_id FROM dense_dead")}
            assert ids - dead == set(col.dense_vectors(range(col.max_image_id + 1)))
    return n


def test_sigkill_at_random_points_never_corrupts(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 120)
    collection = tmp_path / "col"
    rng = random.Random(1234)
    killed = 0
    for attempt in range(6):
        if attempt:  # new work for every run: additions, a deletion and a move, all interruptible
            make_images(root, 60, start=1000 * attempt)
            victims = sorted(root.iterdir())
            victims[0].unlink()
            os.replace(victims[1], root / f"moved_{attempt}.png")
        proc = child(collection, root)
        time.sleep(rng.uniform(0.3, 1.6))
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        if (collection / "index.db").exists():
            check_consistent(collection)  # opens, and images / forward / postings / FAISS agree
    assert killed >= 2  # several runs really were cut short
    proc = child(collection, root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    check_consistent(collection, expect_files=len(list(root.iterdir())))
    with Collection.open(collection) as col:
        assert col.meta["faiss_generation"] == col.meta["generation"]
        # Tombstones left are only those of images still inside posting files (masked, gone at a merge).
        _, needed = col._tombstones_needed()
        assert needed.all() and col.db.execute("SELECT count(*) FROM segments").fetchone()[0] > 0
        assert col.count("failed") == 0


def test_queries_while_indexing_never_see_locks(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 8)
    collection = tmp_path / "col"
    with Collection.open(collection, readonly=False) as col:  # the collection exists before readers start
        build_index([root], FakeEncoder(), col)
    make_images(root, 150, start=100)
    proc = child(collection, root)
    errors, rounds, seen = [], 0, set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with Collection.open(collection) as col:
                posts = col.postings(range(80))
                ids = np.unique(np.concatenate([i for i, _ in posts.values()]))
                assert len(col.forward(ids.tolist())) == ids.size  # a consistent snapshot
                assert len(col.image_paths(ids.tolist())) == ids.size
                q = col.dense_vectors([int(ids[0])])[int(ids[0])]
                found, _ = col.dense_search(q, 5)
                assert found[0] == ids[0]
                col.dense_scores(q, ids)
                col.cache_query(f"q{rounds % 5}", np.eye(1, 68, rounds % 68, dtype=np.float32)[0], None)
                assert col.cached_query(f"q{rounds % 5}") is not None
                seen.add(ids.size)
        except Exception as exc:  # collect, so the child is always reaped
            errors.append(repr(exc))
        rounds += 1
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert errors == []
    assert rounds > 3 and len(seen) > 1  # readers ran during the write and saw it progress
    check_consistent(collection, expect_files=158)


def test_sigkill_never_leaves_a_folder_digest_that_hides_a_change(tmp_path):
    """Runs killed at random over a tree whose folders carry digests: the next complete run still finds
    every addition, deletion and edit (each stored row's stat is the file's), and a run after it reads
    nothing."""
    from fakes import make_image

    from lexsearch.index import IndexOptions

    root = tmp_path / "photos"
    for k in range(3):
        make_images(root / f"f{k}", 20, start=100 * k)
    collection = tmp_path / "col"
    with Collection.open(collection, readonly=False) as col:
        build_index([root], FakeEncoder(), col)
        assert all(s.digest is not None for s in col.folder_states().values())
    rng = random.Random(99)
    cut_short = 0
    for attempt in range(4):
        folder = root / f"f{attempt % 3}"
        make_images(folder, 40, start=1000 + 100 * attempt)
        files = sorted(folder.iterdir())
        files[0].unlink()
        make_image(files[1], 5000 + attempt)  # new content, new size or mtime
        os.utime(files[1], ns=(files[1].stat().st_atime_ns, files[1].stat().st_mtime_ns + 10**9))
        before = check_consistent(collection)
        proc = child(collection, root)
        proc.stdout.readline()  # the child has its imports behind it (seconds on a loaded machine)
        time.sleep(rng.uniform(0.1, 0.6))
        proc.send_signal(signal.SIGKILL)
        killed = proc.wait() == -signal.SIGKILL
        after = check_consistent(collection)  # verify() includes: a recorded digest is that of its rows
        cut_short += killed and after != before  # killed after some commits, before the end
    assert cut_short >= 1
    proc = child(collection, root)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    on_disk = {str(p): p.stat() for p in root.rglob("*.png")}
    with Collection.open(collection, readonly=False) as col:
        rows = {r.path: r for r in col.rows()}
        assert set(rows) == set(on_disk)
        assert all(
            (r.size, r.mtime_ns) == (on_disk[p].st_size, on_disk[p].st_mtime_ns) for p, r in rows.items()
        )
        summary = build_index([root], FakeEncoder(), col, IndexOptions(batch_size=4))
        assert (summary.indexed, summary.unchanged, summary.removed) == (0, len(on_disk), 0)
        assert all(s.digest is not None for s in col.folder_states().values())
