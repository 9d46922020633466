"""Indexing into Qdrant (its in-process engine): incremental runs and SIGKILLed runs end equal to a fresh
index of the same folders; ids are stable; a mismatched model and a bad address are one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import FakeEncoder, make_images

pytest.importorskip("qdrant_client")

from lexsearch.collection.qdrant import points as pt  # noqa: E402
from lexsearch.collection.qdrant.build import build_qdrant  # noqa: E402
from lexsearch.collection.qdrant.store import QdrantCollection  # noqa: E402
from lexsearch.errors import CollectionNotFoundError, ModelMismatchError, UsageError  # noqa: E402
from lexsearch.index import IndexOptions  # noqa: E402

TESTS = Path(__file__).parent.parent
OPTIONS = IndexOptions(batch_size=4, workers=2)


def _address(tmp_path: Path, name: str) -> str:
    return f"qdrant://{tmp_path / 'qdrant'}/{name}"


def _index(address: str, root: Path, encoder=None):
    with QdrantCollection.open(address, readonly=False) as col:
        return build_qdrant([root], encoder or FakeEncoder(), col, OPTIONS)


def dump(address: str) -> dict:
    """Every point: id -> (payload facts, sparse vector, dense vector), rounded where floats are."""
    with QdrantCollection.open(address) as col:
        ids = [pid for pid, _ in col.scroll_payloads(keys=["path"])]
        out = {}
        for pid, rec in col.points_with_vectors(ids).items():
            payload = dict(rec.payload)
            sparse = rec.vector.get(pt.SPARSE) if rec.vector else None
            dense = rec.vector.get(pt.DENSE) if rec.vector else None
            out[pid] = (
                {k: v for k, v in payload.items() if k != "mtime_ns"},
                None if sparse is None else (list(sparse.indices), [round(x, 6) for x in sparse.values]),
                None if dense is None else [round(x, 6) for x in dense],
            )
        return out


def test_incremental_runs_equal_a_fresh_index(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 10)
    (root / "broken.jpg").write_text("not an image")
    address = _address(tmp_path, "live")
    first = _index(address, root)
    assert (first.indexed, first.failed) == (10, 1)
    before = dump(address)
    # A repeated run changes nothing, and reads no image.
    enc = FakeEncoder()
    again = _index(address, root, enc)
    assert (again.unchanged, again.indexed, again.failed_before, enc.images_seen) == (10, 0, 1, 0)
    assert dump(address) == before
    # Added, removed, moved, changed (new content), touched (same content, new mtime) and a fixed file.
    make_images(root, 3, start=100)
    (root / "img_00001.png").unlink()
    os.replace(root / "img_00002.png", root / "sub_moved.png")
    make_images(root, 1, start=555)  # writes img_00555.png
    os.replace(root / "img_00555.png", root / "img_00003.png")  # changed content under an old name
    os.utime(root / "img_00004.png", ns=(1, 1))  # touched only
    os.replace(root / "broken.jpg", root / "was_broken.jpg")
    enc = FakeEncoder()
    s = _index(address, root, enc)
    assert (s.indexed, s.moved, s.removed) == (4, 1, 1)  # 3 new + 1 changed; the move copied its vectors
    assert enc.images_seen == 4
    fresh = _address(tmp_path, "fresh")
    _index(fresh, root)
    assert dump(address) == dump(fresh)
    assert pt.point_id(str(root / "sub_moved.png")) in dump(address)


def test_a_run_killed_midway_converges_to_the_fresh_collection(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 48)
    address = _address(tmp_path, "killed")
    child = (
        "import sys\n"
        "from fakes import FakeEncoder\n"
        "from lexsearch.collection.qdrant.build import build_qdrant\n"
        "from lexsearch.collection.qdrant.store import QdrantCollection\n"
        "from lexsearch.index import IndexOptions\n"
        "with QdrantCollection.open(sys.argv[1], readonly=False) as col:\n"
        "    print('opened', flush=True)\n"
        "    build_qdrant([sys.argv[2]], FakeEncoder(delay_s=0.1), col, IndexOptions(batch_size=2, workers=1))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    killed = 0
    for attempt in range(3):
        if attempt:
            make_images(root, 8, start=100 * attempt)
            sorted(root.iterdir())[0].unlink()
        proc = subprocess.Popen(
            [sys.executable, "-c", child, address, str(root)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "opened"
        time.sleep(0.6 + 0.3 * attempt)
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
    assert killed >= 2
    _index(address, root)  # the run after the kills finishes the job
    fresh = _address(tmp_path, "fresh")
    _index(fresh, root)
    assert dump(address) == dump(fresh)
    assert len(dump(address)) == len(list(root.iterdir()))


def test_another_model_is_refused_with_the_rebuild_command(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 2)
    address = _address(tmp_path, "c")
    _index(address, root)
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        _index(address, root, FakeEncoder(model_id="another-model"))
    with QdrantCollection.open(address, readonly=False, recreate=True) as col:
        s = build_qdrant([root], FakeEncoder(model_id="another-model"), col, OPTIONS)
    assert s.indexed == 2


def test_bad_addresses_and_a_missing_collection_are_one_line(tmp_path):
    for bad in ("qdrant://", "qdrant://host:6333/", "qdrant://host/a/b", "qdrant://relative/"):
        with pytest.raises(UsageError):
            QdrantCollection.open(bad)
    with pytest.raises(CollectionNotFoundError, match="lexsearch index"):
        QdrantCollection.open(_address(tmp_path, "nothing"))


def test_without_the_client_one_line_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if not installed
    with pytest.raises(UsageError, match=r"lexsearch\[qdrant\]"):
        QdrantCollection.open(_address(tmp_path, "x"))


def test_addresses_name_a_server_or_a_folder():
    from lexsearch.collection.qdrant.store import Spec

    s = Spec("qdrant://db1/photos?shards=12&replication=2")
    assert (s.url, s.name, s.local, s.options) == (
        "http://db1:6333",
        "photos",
        False,
        {"shards": "12", "replication": "2"},
    )
    assert Spec("qdrant://db1:7000/p?scheme=https").url == "https://db1:7000"
    s = Spec("qdrant:///srv/q/photos")
    assert (s.folder, s.name, s.local) == ("/srv/q", "photos", True)


def test_points_from_before_photo_metadata_get_it_from_the_next_run_without_embedding(tmp_path):
    from photofolder import PHOTOS, make_photo_folder

    root = tmp_path / "photos"
    make_photo_folder(root)
    address = _address(tmp_path, "old")
    _index(address, root)
    keys = ["taken", "taken_offset", "taken_source", "camera_make", "camera_model", "lens", "gps"]
    keys += ["taken_key", "camera", "folders", "folder_names", "orientation"]
    with QdrantCollection.open(address, readonly=False) as col:
        ids = [pid for pid, _ in col.scroll_payloads()]
        col._client.delete_payload(
            col.name, keys=keys, points=ids, wait=True
        )  # as an older lexsearch wrote them
        assert all(p["taken"] is None for p in col.metadata(ids, ["taken"]).values())
    enc = FakeEncoder()
    again = _index(address, root, enc)
    assert (again.indexed, enc.images_seen) == (0, 0)
    with QdrantCollection.open(address) as col:
        rows = col.rows_at([str(root / p.rel) for p in PHOTOS])
        meta = col.metadata([r.id for r in rows.values()], ["taken", "taken_source", "camera_model"])
        got = {path[len(str(root)) + 1 :]: meta[r.id] for path, r in rows.items()}
    for p in PHOTOS:
        model = p.camera.split(" ", 1)[1] if p.camera else None
        assert got[p.rel] == {"taken": p.taken, "taken_source": p.source, "camera_model": model}, p.rel
