"""Photo metadata as a user meets it: a folder of photos from two cameras over several years (one rotated,
one with a broken EXIF block, one without EXIF) is indexed, then searched with each filter and date sort in
the CLI, in the query text and through the JSON API; a collection indexed before photo metadata existed is
upgraded by the next index run without embedding anything again."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time

import numpy as np
import pytest
from click.testing import CliRunner
from photofolder import PHOTOS, make_photo_folder
from PIL import Image

from lexsearch.cli import cli
from lexsearch.collection import open_collection
from lexsearch.index.schema import SCHEMA_VERSION

ALL = {p.rel for p in PHOTOS}


@pytest.fixture(scope="module")
def indexed(_tiny_model_master, tmp_path_factory):
    """(photos folder, collection folder, model folder, LEXSEARCH_HOME), indexed once for the module."""
    root = tmp_path_factory.mktemp("photos-collection")
    model = root / "model"
    shutil.copytree(_tiny_model_master, model)
    make_photo_folder(root / "photos")
    col = root / "col"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEXSEARCH_HOME", str(root / "home"))
        res = CliRunner().invoke(
            cli, ["index", str(root / "photos"), "--model", str(model), "--collection", str(col), "--quiet"]
        )
    assert res.exit_code == 0, res.output
    return root / "photos", col, model


def _query(col, *args):
    res = CliRunner().invoke(cli, ["query", *args, "--collection", str(col)])
    return res


def _rels(photos, res) -> list[str]:
    assert res.exit_code == 0, res.output
    return [line[len(str(photos)) + 1 :] for line in res.stdout.splitlines() if line]


def _found(indexed, *args) -> list[str]:
    photos, col, _ = indexed
    # --expand: every image with a positive score is a match, so each filter has the whole folder to cut.
    return _rels(photos, _query(col, "red", "--expand", "--paths", "--top", "20", *args))


def test_index_records_each_photos_metadata(indexed):
    photos, col, _ = indexed
    with open_collection(col) as c:
        rows = c.rows_at([str(photos / p.rel) for p in PHOTOS])
        assert {r.status for r in rows.values()} == {"ok"}  # the broken EXIF block cost nothing
        meta = c.metadata([r.id for r in rows.values()])
    for p in PHOTOS:
        m = meta[rows[str(photos / p.rel)].id]
        assert (m["taken"], m["taken_source"]) == (p.taken, p.source), p.rel
        camera = " ".join(x for x in (m["camera_make"], m["camera_model"]) if x) or None
        assert camera == p.camera and m["lens"] == p.lens and m["gps"] == int(p.gps), p.rel
        shape = (
            "square"
            if m["width"] == m["height"]
            else ("portrait" if m["width"] < m["height"] else "landscape")
        )
        assert shape == p.orientation, p.rel
        if p.source == "exif":
            assert m["taken_offset"] == p.offset, p.rel


def test_a_broken_exif_block_is_one_log_line_naming_the_file(indexed, caplog):
    from lexsearch.index.photometa import read_photo_meta

    photos, _, _ = indexed
    path = photos / "home/broken-exif.jpg"
    with caplog.at_level(logging.INFO, logger="lexsearch"), Image.open(path) as im:
        got = read_photo_meta(im, path.stat().st_mtime_ns, str(path))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("lexsearch")]
    assert len(lines) == 1 and str(path) in lines[0] and "EXIF" in lines[0]
    assert got["taken_source"] == "mtime" and got["taken"] == "2020-02-02T12:00:00"


FILTERS = [
    (["--after", "2021"], lambda p: p.taken >= "2021"),
    (["--before", "2021"], lambda p: p.taken < "2021"),
    (["--after", "2023-06", "--before", "2023-07"], lambda p: p.taken.startswith("2023-06")),
    (["--after", "2021-06-14", "--before", "2021-06-15"], lambda p: p.taken.startswith("2021-06-14")),
    (["--camera", "PIXEL"], lambda p: "Pixel" in (p.camera or "")),
    (["--camera", "fuji"], lambda p: "FUJI" in (p.camera or "")),
    (["--camera", "pixel 7"], lambda p: "Pixel 7" in (p.camera or "")),
    (["--camera", "leica"], lambda p: False),
    (["--folder", "trips"], lambda p: p.rel.startswith("trips/")),
    (["--folder", "alps"], lambda p: "/alps/" in p.rel),
    (["--orientation", "portrait"], lambda p: p.orientation == "portrait"),
    (["--orientation", "square"], lambda p: p.orientation == "square"),
    (["--orientation", "landscape", "--camera", "pixel"], lambda p: p.rel == "trips/alps/2019-beach.jpg"),
]


def test_the_unfiltered_query_finds_every_photo(indexed):
    assert set(_found(indexed)) == ALL  # what the filter tests below cut down


@pytest.mark.parametrize("flags,keep", FILTERS, ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_each_filter_keeps_exactly_the_photos_it_names(indexed, flags, keep):
    assert set(_found(indexed, *flags)) == {p.rel for p in PHOTOS if keep(p)}


def test_a_folder_given_as_a_path_is_the_folder_under_it(indexed, monkeypatch):
    photos, _, _ = indexed
    assert set(_found(indexed, "--folder", str(photos / "trips"))) == {
        p.rel for p in PHOTOS if "trips/" in p.rel
    }
    monkeypatch.chdir(photos)
    assert set(_found(indexed, "--folder", "./home")) == {p.rel for p in PHOTOS if p.rel.startswith("home/")}
    assert _found(indexed, "--folder", str(photos / "trip")) == []  # a folder, not a prefix of a name


def test_filters_in_the_query_text_answer_as_the_flags_do(indexed):
    photos, col, _ = indexed
    typed = _query(col, "red after:2021 camera:pixel orientation:portrait sort:date", "--expand", "--json")
    flags = ["--after", "2021", "--camera", "pixel", "--orientation", "portrait", "--sort", "date"]
    given = _query(col, "red", *flags, "--expand", "--json")
    assert typed.exit_code == given.exit_code == 0, typed.output + given.output
    assert json.loads(typed.stdout) == json.loads(given.stdout) and json.loads(typed.stdout)
    quoted = _query(col, f'red in:"{photos / "trips"}"', "--expand", "--paths")
    assert set(_rels(photos, quoted)) == {p.rel for p in PHOTOS if p.rel.startswith("trips/")}


def test_sort_by_date_orders_every_match_newest_or_oldest_first(indexed):
    newest = [p.rel for p in sorted(PHOTOS, key=lambda p: p.taken, reverse=True)]
    assert _found(indexed, "--sort", "date") == newest
    assert _found(indexed, "--sort", "date-asc") == newest[::-1]
    # --top 2 is the two newest matches, not the two best-scoring ones sorted.
    assert _found(indexed, "--sort", "date", "--top", "2") == newest[:2]
    fuji = {p.rel for p in PHOTOS if "FUJI" in (p.camera or "")}
    assert _found(indexed, "--sort", "date", "--camera", "fuji") == [r for r in newest if r in fuji]


def test_sort_by_date_keeps_min_score_and_each_results_words(indexed):
    photos, col, _ = indexed
    scored = json.loads(_query(col, "red", "--expand", "--json", "--top", "20").stdout)
    ranked = sorted(r["score"] for r in scored)
    cut = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # between two shown scores
    kept = {r["path"] for r in scored if r["score"] >= cut}
    rows = json.loads(
        _query(col, "red", "--expand", "--json", "--sort", "date", "--min-score", str(cut)).stdout
    )
    assert {r["path"] for r in rows} == kept and 0 < len(kept) < len(PHOTOS)
    taken = {str(photos / p.rel): p.taken for p in PHOTOS}
    assert [taken[r["path"]] for r in rows] == sorted((taken[r["path"]] for r in rows), reverse=True)
    assert all(r["words"] for r in rows)
    assert [r["taken"] for r in rows] == [taken[r["path"]] for r in rows]  # each shows the date it sorts by


@pytest.mark.parametrize(
    "args,message",
    [
        (["red", "--after", "2023-13"], "not a date"),
        (["red", "--before", "June"], "YYYY, YYYY-MM or YYYY-MM-DD"),
        (["red orientation:round"], "orientation:round"),
        (["red sort:size"], "sort:size"),
        (["red", "--orientation", "round"], "round"),
        (["red camera:"], "needs a value"),
    ],
)
def test_a_bad_filter_is_one_line_and_exit_2(indexed, args, message):
    _, col, _ = indexed
    res = _query(col, *args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_the_api_takes_the_filters_as_parameters_or_words_and_answers_as_the_cli(indexed):
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService
    from lexsearch.serve.app import create_app

    photos, col, _ = indexed
    cli_rows = json.loads(
        _query(col, "red", "--expand", "--json", "--camera", "pixel", "--sort", "date").stdout
    )
    with open_collection(col) as c:
        client = TestClient(create_app(SearchService(c, load_encoder(c, device="cpu"))))
        by_params = client.get(
            "/api/search", params={"q": "red", "expand": "1", "camera": "pixel", "sort": "date"}
        )
        by_words = client.get("/api/search", params={"q": "red camera:pixel sort:date", "expand": "1"})
        bad = client.get("/api/search", params={"q": "red", "after": "soon"})
    assert by_params.status_code == by_words.status_code == 200
    strip = [{k: v for k, v in r.items() if k != "id"} for r in by_params.json()]
    assert strip == cli_rows and by_params.json() == by_words.json()
    assert [r["path"] for r in cli_rows] == [
        str(photos / p.rel)
        for p in sorted(PHOTOS, key=lambda p: p.taken, reverse=True)
        if "Pixel" in (p.camera or "")
    ]
    assert bad.status_code == 400 and "YYYY" in bad.json()["error"]


def _downgrade(col) -> None:
    """Make ``col`` a collection written before photo metadata: schema 3, no photo columns."""
    conn = sqlite3.connect(col / "index.db")
    conn.execute("DROP INDEX images_taken")
    conn.execute("DROP INDEX images_unread")
    for c in ("taken", "taken_offset", "taken_source", "camera_make", "camera_model", "lens", "gps"):
        conn.execute(f"ALTER TABLE images DROP COLUMN {c}")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm004_photo_metadata'")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema'")
    conn.commit()
    conn.close()


def test_an_old_collection_is_upgraded_by_the_next_index_run_without_reembedding(indexed, tmp_path):
    photos, col, model = indexed
    old = tmp_path / "old"
    shutil.copytree(col, old)
    with open_collection(col) as c:
        want = c.metadata(range(1, 20))
    _downgrade(old)

    def snapshot():
        conn = sqlite3.connect(old / "index.db")
        rows = conn.execute("SELECT id, path, hash, indexed_at FROM images ORDER BY id").fetchall()
        fwd = conn.execute("SELECT * FROM forward ORDER BY image_id").fetchall()
        conn.close()
        return rows, fwd

    before = snapshot()
    # Read as it is: plain queries work, a filter says what to run.
    assert set(_rels(photos, _query(old, "red", "--expand", "--paths"))) == ALL
    res = _query(old, "red", "--camera", "pixel")
    assert res.exit_code == 2 and "lexsearch index" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["index", str(photos), "--collection", str(old), "--model", str(model)])
    assert res.exit_code == 0, res.output
    assert snapshot() == before  # the same ids, rows, times and vectors: nothing embedded again
    with open_collection(old) as c:
        assert c.meta["schema"] == SCHEMA_VERSION and c.metadata(range(1, 20)) == want
    assert set(_found((photos, old, model), "--camera", "pixel")) == {
        p.rel for p in PHOTOS if "Pixel" in (p.camera or "")
    }


class _OneWord:
    """A text encoder of one word, 'horse' (column 0)."""

    vocab_size = 2
    dense_dim = 0

    def word_terms(self, word):
        return [0] if word == "horse" else []

    def encode_texts(self, texts, batch_size=32):
        import scipy.sparse as sp

        class _E:
            sparse = sp.csr_matrix(np.array([[1.0, 0.0]], np.float32))
            dense = None

        return _E()

    def words(self, term_ids):
        return ["horse" if int(t) == 0 else "x" for t in term_ids]


def test_a_filter_keeping_one_percent_still_fills_the_top(tmp_path):
    """The condition restricts the candidate stage: with 10 candidates asked for, the 10 Leica photos of
    1000 horse photos (each scoring below every other one) are all found, not the Leica ones among the
    best 10 (none)."""
    from lexsearch.index.store import Changes, NewImage
    from lexsearch.search import search

    for i in range(1000):
        (tmp_path / f"{i}.jpg").write_bytes(b"")
    with open_collection(tmp_path / "c", readonly=False) as col:
        col.bind_model({"model_id": "m", "vocab_hash": "v", "vocab_size": 2, "dense_dim": 0}, "x")
        images = []
        for i in range(1000):
            leica = i % 100 == 7
            photo = {"taken": f"{2000 + i // 100}-01-01T00:00:00", "taken_source": "exif", "gps": 0}
            photo.update(camera_make="Leica" if leica else "Google", camera_model="M6" if leica else "Pixel")
            w = np.array([0.1 if leica else 0.5 + i / 4000], np.float32)
            images.append(
                NewImage(
                    str(tmp_path / f"{i}.jpg"), 1, 1, f"h{i}", 4, 3, None, photo, np.array([0], np.uint32), w
                )
            )
        col.apply(Changes(insert=images))
    with open_collection(tmp_path / "c") as col:
        found = search(col, _OneWord(), "horse camera:leica", top=10, n_candidates=10)
        assert sorted(int(r.path.rsplit("/", 1)[1][:-4]) for r in found) == list(range(7, 1000, 100))
        dated = search(col, _OneWord(), "horse camera:leica sort:date", top=3, n_candidates=10)
        assert [r.path.rsplit("/", 1)[1] for r in dated] == ["907.jpg", "807.jpg", "707.jpg"]
        # Past the cap the best-scoring matches are sorted, and a note says so.
        import lexsearch.search.query as sq

        cap = sq.SORT_CAP
        sq.SORT_CAP = 50
        try:
            capped = search(col, _OneWord(), "horse sort:date-asc", top=3, n_candidates=10)
        finally:
            sq.SORT_CAP = cap
        assert capped.notes == ["50 or more images match: the best 50 are sorted by date"]
        # The best 50 are among 950..999 (all of 2009): equal dates keep the score order.
        assert all(950 <= int(r.path.rsplit("/", 1)[1][:-4]) for r in capped) and len(capped) == 3
        assert [r.score for r in capped] == sorted((r.score for r in capped), reverse=True)


def test_what_a_query_means_leaves_its_filters_out(indexed):
    _, col, _ = indexed
    res = CliRunner().invoke(
        cli, ["explain", "--text", "red after:2021 camera:pixel", "--collection", str(col), "--json"]
    )
    plain = CliRunner().invoke(cli, ["explain", "--text", "red", "--collection", str(col), "--json"])
    assert res.exit_code == plain.exit_code == 0, res.output
    assert json.loads(res.stdout)["words"] == json.loads(plain.stdout)["words"]


def test_a_date_from_the_files_time_follows_a_touch_and_an_exif_date_stays(indexed, tmp_path):
    photos, col, model = indexed
    copy, folder = tmp_path / "col", tmp_path / "photos"
    shutil.copytree(col, copy)
    shutil.copytree(photos, folder)
    res = CliRunner().invoke(cli, ["index", str(folder), "--collection", str(copy), "--model", str(model)])
    assert res.exit_code == 0, res.output
    for name in ("home/no-exif.png", "home/2023-june.jpg"):
        ts = time.mktime((2010, 3, 4, 12, 0, 0, 0, 0, -1))
        os.utime(folder / name, (ts, ts))
    res = CliRunner().invoke(cli, ["index", str(folder), "--collection", str(copy), "--model", str(model)])
    assert res.exit_code == 0, res.output
    with open_collection(copy) as c:
        rows = c.rows_at([str(folder / "home/no-exif.png"), str(folder / "home/2023-june.jpg")])
        meta = {p[len(str(folder)) + 1 :]: c.metadata([r.id])[r.id]["taken"] for p, r in rows.items()}
    assert meta == {"home/no-exif.png": "2010-03-04T12:00:00", "home/2023-june.jpg": "2023-06-14T09:00:00"}
