"""The commands on a collection in Qdrant (in-process engine), answering as on the embedded store: index,
query (its options, --image), explain and the server's search; and indexing by two gloo ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import make_images

pytest.importorskip("qdrant_client")

from lexsearch.cli import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent


def _run(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def _strip_ids(rows: list[dict]) -> list[tuple]:
    return [
        (r["path"], round(r["score"], 4), [(w["word"], round(w["weight"], 4)) for w in r["words"]])
        for r in rows
    ]


@pytest.fixture(scope="module")
def indexed(_tiny_model_master, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qcli")
    photos = tmp / "photos"
    make_images(photos, 9)
    (photos / "broken.jpg").write_text("not an image")
    emb, qd = str(tmp / "emb"), f"qdrant://{tmp / 'qdrant'}/photos"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEXSEARCH_HOME", str(tmp / "home"))
        for col in (emb, qd):
            out = _run("index", str(photos), "--model", str(_tiny_model_master), "--collection", col)
            assert "9 indexed" in out and "1 failed" in out
        again = _run("index", str(photos), "--model", str(_tiny_model_master), "--collection", qd)
        assert "9 unchanged" in again
    return photos, emb, qd


@pytest.mark.parametrize(
    "args",
    [
        ["red circle", "--expand"],
        ["small green square on a striped background", "--expand", "--top", "4"],
        ["red circle -blue", "--expand"],
        ["+red circle", "--expand", "--pruned"],
        ["blue star", "--expand", "--no-rerank"],
        ["red", "--top", "3"],
    ],
)
def test_query_answers_the_same_from_both_homes(indexed, args):
    _, emb, qd = indexed
    a = json.loads(_run("query", *args, "--json", "--collection", emb))
    b = json.loads(_run("query", *args, "--json", "--collection", qd))
    assert _strip_ids(a) == _strip_ids(b)
    assert a or "--expand" not in args  # an untrained tiny model matches little without --expand


def test_image_query_and_explain_answer_the_same(indexed):
    photos, emb, qd = indexed
    img = str(photos / "img_00002.png")
    a = json.loads(_run("query", "--image", img, "--json", "--collection", emb))
    b = json.loads(_run("query", "--image", img, "--json", "--collection", qd))
    assert _strip_ids(a) == _strip_ids(b) and a
    ea = json.loads(_run("explain", img, "--json", "--collection", emb))
    eb = json.loads(_run("explain", img, "--json", "--collection", qd))
    assert ea == eb and ea["words"]


def test_the_server_searches_a_qdrant_collection(indexed):
    from lexsearch.collection import open_collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService

    _, emb, qd = indexed
    answers = []
    for spec in (emb, qd):
        with open_collection(spec) as col:
            service = SearchService(col, load_encoder(col))
            rows = service.search("red circle", top=5, expand=True)
            answers.append(_strip_ids(rows))
            if rows:
                assert service.path_of(rows[0]["id"]) == rows[0]["path"]
            assert service.info()["images"] == 9
    assert answers[0] == answers[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_write_what_one_process_writes(_tiny_model_master, tmp_path):
    # Both ranks reach one in-process engine's folder, taking turns for each write (the engine is one
    # process's at a time); against a server they write at once. Each rank upserts only its own points.
    from test_qdrant_index import dump

    photos = tmp_path / "photos"
    make_images(photos, 11)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    common = [str(photos), "--model", str(_tiny_model_master), "--device", "cpu", "--batch-size", "2"]
    one, two = f"qdrant://{tmp_path / 'q'}/one", f"qdrant://{tmp_path / 'q'}/two"
    res = subprocess.run(
        [sys.executable, "-m", "lexsearch", "index", *common, "--collection", one],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1"]
    torchrun += ["--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "lexsearch", "index"]
    res = subprocess.run(
        [*torchrun, *common, "--collection", two], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert "11 indexed" in res.stdout  # rank 0 prints the sum of both ranks' work
    a, b = dump(one), dump(two)
    assert len(a) == 11 and a == b
