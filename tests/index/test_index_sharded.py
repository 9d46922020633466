"""`torchrun --nproc_per_node=2 -m lexsearch index`: two gloo CPU ranks write exactly what one process writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fakes import make_images

from lexsearch.index import Collection
from lexsearch.index.build import Shard

ROOT = Path(__file__).resolve().parent.parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _index(args: list[str], ranks: int) -> subprocess.CompletedProcess:
    # One thread per process either way: the same CPU kernels (torchrun sets this for its ranks too), so
    # the comparison is about the sharding, not about thread-count-dependent float sums.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    if ranks == 1:
        cmd = [sys.executable, "-m", "lexsearch", "index", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={ranks}",
            "--nnodes=1",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "lexsearch",
            "index",
            *args,
        ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)


def _dump(path: Path) -> dict:
    with Collection.open(path) as col:
        assert col.verify() == []
        images = col.db.execute(
            "SELECT id, path, size, mtime_ns, hash, width, height, status, error FROM images ORDER BY id"
        ).fetchall()
        forward = col.db.execute(
            "SELECT image_id, terms, weights, dense FROM forward ORDER BY image_id"
        ).fetchall()
        vocab = int(col.meta["vocab_size"])
        postings = {t: (ids.tolist(), w.tolist()) for t, (ids, w) in col.postings(range(vocab)).items()}
        return {"images": images, "forward": forward, "postings": postings, "meta": col.meta}


def test_two_gloo_ranks_write_exactly_the_collection_one_process_writes(tmp_path, tiny_model_dir):
    photos = tmp_path / "photos"
    make_images(photos, 13)
    (photos / "broken.jpg").write_text("not an image")
    common = [str(photos), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "2", "--quiet"]
    one = _index([*common, "--collection", str(tmp_path / "one")], ranks=1)
    assert one.returncode == 0, one.stderr
    two = _index([*common, "--collection", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr
    a, b = _dump(tmp_path / "one"), _dump(tmp_path / "two")
    assert len(a["images"]) == 14 and sum(r[7] == "failed" for r in a["images"]) == 1
    assert a["images"] == b["images"]  # same ids for the same paths, same facts
    assert a["forward"] == b["forward"]  # byte for byte: the same vectors under the same ids
    assert a["postings"] == b["postings"]

    # The same query answers from both.
    from lexsearch.search import load_encoder, search

    with Collection.open(tmp_path / "one") as c1, Collection.open(tmp_path / "two") as c2:
        enc = load_encoder(c1)
        r1 = [
            (r.image_id, r.path, round(r.score, 6)) for r in search(c1, enc, "red circle", top=5, expand=True)
        ]
        r2 = [
            (r.image_id, r.path, round(r.score, 6)) for r in search(c2, enc, "red circle", top=5, expand=True)
        ]
        assert r1 == r2 and r1

    # An incremental run under two ranks: new files and a removal, still the same as one process.
    make_images(photos, 5, start=100)
    (photos / "img_00003.png").unlink()
    assert _index([*common, "--collection", str(tmp_path / "one")], ranks=1).returncode == 0
    again = _index([*common, "--collection", str(tmp_path / "two")], ranks=2)
    assert again.returncode == 0, again.stderr
    a, b = _dump(tmp_path / "one"), _dump(tmp_path / "two")
    assert a["images"] == b["images"] and a["forward"] == b["forward"] and a["postings"] == b["postings"]


def test_rank_blocks_cover_every_file_once():
    # Blocks of batch_size files go round-robin: every block to exactly one rank, in order.
    n_blocks, world = 7, 3
    got = sorted(k for r in range(world) for k in range(r, n_blocks, world))
    assert got == list(range(n_blocks))
    assert Shard().share("x") == "x" and Shard().gather(5) == [5]


def test_a_bad_root_stops_every_rank_with_a_clear_line(tmp_path, tiny_model_dir):
    # Rank 0 finds the error before any plan exists; the helper rank gets it instead of waiting forever.
    res = _index(
        [
            str(tmp_path / "missing-folder"),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--quiet",
            "--collection",
            str(tmp_path / "c"),
        ],
        ranks=2,
    )
    assert res.returncode != 0
    # The run ends (no rank waits forever for a plan) and says why. Usually both ranks print the line, but
    # torchrun may stop the second rank once the first has failed, before it gets to print.
    assert res.stderr.count("no such file or folder") >= 1
