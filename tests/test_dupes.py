"""`lexsearch dupes` as a user meets it: a small folder of photos with edited copies (re-encoded, resized,
cropped, recoloured) and look-alikes (another framing of a photo, a same-caption toy image with another
layout) is indexed; the groups are its families, in the CLI table, its --json and the page's API; a
collection indexed before hashes existed says so in one line and the next index run fills them without
embedding anything again; bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner
from dupefolder import edit, landscape, save, toys_by_caption
from PIL import Image

from lexsearch.cli import cli
from lexsearch.dupes import _unique_pairs, hash_pairs, union_find_groups

# name -> edits of it (each file of a family is one group); the look-alikes have no copies.
FAMILIES = {"scene0": ("jpeg", "resize"), "scene1": ("crop", "colour"), "scene2": ("rotate",), "scene3": ()}


@pytest.fixture(scope="module")
def indexed(_tiny_model_master, tmp_path_factory):
    """(photos, collection, model, families as sets of paths), indexed once for the module."""
    root = tmp_path_factory.mktemp("dupes")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    families = []
    for k, (name, edits) in enumerate(FAMILIES.items()):
        im = landscape(100 + k)
        paths = [save(im, photos / name, {"format": "PNG"})]
        for kind in edits:
            copy, opts = edit(im, kind, rng)
            paths.append(save(copy, photos / f"{name}-{kind}", opts))
        if len(paths) > 1:
            families.append({str(p) for p in paths})
    w, h = landscape(100).size
    corner = landscape(100).crop((w // 2, h // 2, w, h)).resize((w, h), Image.LANCZOS)
    save(corner, photos / "scene0-corner", {"format": "PNG"})
    twins = next(ims for ims in toys_by_caption(60, 128, 7).values() if len(ims) >= 2)
    for k, im in enumerate(twins[:2]):
        save(im, photos / f"toy-samewords{k}", {"format": "PNG"})
    model = root / "model"
    shutil.copytree(_tiny_model_master, model)
    col = root / "col"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEXSEARCH_HOME", str(root / "home"))
        res = CliRunner().invoke(
            cli, ["index", str(photos), "--model", str(model), "--collection", str(col), "--quiet"]
        )
    assert res.exit_code == 0, res.output
    return photos, col, model, families


def _dupes(col, *args):
    return CliRunner().invoke(cli, ["dupes", "--collection", str(col), *args])


def _json(col, *args) -> dict:
    res = _dupes(col, "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _one_line_error(res) -> str:
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def test_groups_are_the_families_and_nothing_else(indexed):
    photos, col, _, families = indexed
    out = _json(col)
    groups = [[f["path"] for f in g["files"]] for g in out["groups"]]
    assert sorted(map(set, groups), key=sorted) == sorted(families, key=sorted)
    # Largest first, then by path; each group's files by path.
    assert groups == sorted(groups, key=lambda g: (-len(g), g[0]))
    assert all(g == sorted(g) for g in groups)
    assert out["images"] == len(list(photos.iterdir())) and out["missing_hashes"] == 0
    for g in out["groups"]:
        for f in g["files"]:
            with Image.open(f["path"]) as im:
                assert (f["width"], f["height"]) == im.size
            assert f["size"] == os.path.getsize(f["path"]) and f["taken"]
        assert {p["a"] for p in g["pairs"]} | {p["b"] for p in g["pairs"]} == {f["path"] for f in g["files"]}
        assert all(0 <= p["hash_bits"] <= 256 for p in g["pairs"])


def test_the_table_shows_each_group_with_sizes_and_dates(indexed):
    photos, col, _, families = indexed
    res = _dupes(col)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.startswith(f"{len(families)} groups of near-duplicates")
    assert "group 1 (3 files)" in out
    for fam in families:
        for p in fam:
            line = next(ln for ln in out.splitlines() if ln.endswith(p))
            with Image.open(p) as im:
                assert f"{im.size[0]}x{im.size[1]}" in line
            assert "KB" in line or " B " in line
    assert "corner" not in out and "samewords" not in out
    # A threshold no pair reaches: an honest "none" line.
    res = _dupes(col, "--threshold", "1")
    assert res.exit_code == 0 and res.stdout.startswith("No near-duplicates among")


def test_help_says_nothing_is_deleted():
    res = CliRunner().invoke(cli, ["dupes", "--help"])
    assert res.exit_code == 0 and "never deletes" in res.stdout


@pytest.mark.parametrize("threshold", ["0", "1.5", "-0.2", "nan", "abc", "inf"])
def test_a_bad_threshold_is_one_line(indexed, threshold):
    _, col, _, _ = indexed
    assert "threshold" in _one_line_error(_dupes(col, "--threshold", threshold))


def test_a_bad_collection_is_one_line(tmp_path):
    assert "No collection" in _one_line_error(_dupes(tmp_path / "none"))


def _before_hashes(col):
    """Make ``col`` a collection written before perceptual hashes: schema 4, no phash column."""
    conn = sqlite3.connect(col / "index.db")
    conn.execute("DROP INDEX images_unhashed")
    conn.execute("ALTER TABLE images DROP COLUMN phash")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_perceptual_hash'")
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    conn.commit()
    conn.close()


def test_an_old_collection_says_so_and_the_next_index_run_fills_the_hashes(indexed, tmp_path):
    photos, col, model, families = indexed
    old = tmp_path / "old"
    shutil.copytree(col, old)
    _before_hashes(old)
    res = _dupes(old, "--json")
    assert res.exit_code == 0, res.output
    note = res.stderr.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("Note: ") and "no perceptual hash" in note[0]
    assert f"'lexsearch index {photos} --collection {old}'" in note[0]
    assert json.loads(res.stdout)["missing_hashes"] == len(list(photos.iterdir()))
    dense_before = sqlite3.connect(old / "index.db").execute("SELECT image_id, dense FROM forward").fetchall()
    res = CliRunner().invoke(
        cli, ["index", str(photos), "--model", str(model), "--collection", str(old), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    conn = sqlite3.connect(old / "index.db")
    assert conn.execute("SELECT count(*) FROM images WHERE phash IS NULL OR phash = ''").fetchone()[0] == 0
    assert (
        conn.execute("SELECT image_id, dense FROM forward").fetchall() == dense_before
    )  # nothing re-embedded
    fresh = (
        sqlite3.connect(col / "index.db").execute("SELECT path, phash FROM images ORDER BY path").fetchall()
    )
    assert conn.execute("SELECT path, phash FROM images ORDER BY path").fetchall() == fresh
    res = _dupes(old, "--json")
    assert res.exit_code == 0 and res.stderr == ""
    assert json.loads(res.stdout)["groups"] == _json(col)["groups"]


def test_union_find_and_hash_pairs_are_exact():
    a, b = np.array([5, 0, 3, 1]), np.array([6, 1, 4, 2])
    assert union_find_groups(8, a, b) == [[0, 1, 2], [3, 4], [5, 6]]
    i, j = _unique_pairs(np.array([2, 1, 1, 3]), np.array([1, 2, 1, 0]), 4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 3), (1, 2)]
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    codes[7] = codes[3]
    codes[9] = codes[3] ^ np.array([1] + [0] * 31, np.uint8)  # one bit off
    bits = np.unpackbits(codes[:, None, :] ^ codes[None, :, :], axis=2).sum(axis=2)
    want = {(x, y) for x in range(50) for y in range(x + 1, 50) if bits[x, y] <= 100}
    i, j = hash_pairs(codes, 100)
    assert set(zip(i.tolist(), j.tolist())) == want and {(3, 7), (3, 9), (7, 9)} <= want


# ----------------------------------------------------------------------------------------- the page
@pytest.fixture
def client(indexed):
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from lexsearch.collection import open_collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService
    from lexsearch.serve.app import create_app

    _, col, _, _ = indexed
    with open_collection(col, readonly=True) as c:
        yield TestClient(create_app(SearchService(c, load_encoder(c, device="cpu"))))


def test_the_api_gives_the_cli_groups_and_the_page_links_them(indexed, client):
    _, col, _, _ = indexed
    want = _json(col)
    resp = client.get("/api/dupes")
    assert resp.status_code == 200
    body = resp.json()
    assert body["groups"] == want["groups"] and body["note"] is None
    for g in body["groups"]:  # each file's thumbnail by its id
        for f in g["files"]:
            assert client.get(f"/thumb/{f['id']}").status_code == 200
    assert client.get("/api/dupes", params={"threshold": "1"}).json()["groups"] == []
    assert client.get("/api/dupes", params={"threshold": "abc"}).status_code == 400
    assert client.get("/api/dupes", params={"threshold": "7"}).status_code == 400
    page = client.get("/dupes")
    assert page.status_code == 200 and "/static/dupes.js" in page.text and "never deletes" in page.text
    assert client.get("/static/dupes.js").status_code == 200
    assert 'href="/dupes"' in client.get("/").text


def test_the_api_never_takes_a_path(indexed, client):
    photos, _, _, _ = indexed
    some = str(next(photos.iterdir()))
    want = client.get("/api/dupes").json()
    # A path in any parameter is no input: the answer is the collection's, and no file is served by name.
    assert client.get("/api/dupes", params={"path": "/etc/passwd", "collection": "/etc"}).json() == want
    for url in (
        f"/api/dupes/{some}",
        "/api/dupes/../../etc/passwd",
        f"/thumb/{some}",
        "/dupes/..%2F..%2Fetc%2Fpasswd",
    ):
        assert client.get(url).status_code == 404, url


def test_the_page_shows_each_group_side_by_side_in_a_browser(indexed, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not (chromium and shutil.which("chromedriver")):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lexsearch.collection import open_collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService
    from lexsearch.serve.server import Server

    _, col, _, families = indexed
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    with open_collection(col, readonly=True) as c:
        server = Server(SearchService(c, load_encoder(c, device="cpu")), "127.0.0.1", 0)
        server.start_in_thread()
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            driver.get(server.url)
            driver.find_element(By.CSS_SELECTOR, 'a[href="/dupes"]').click()
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".group"))
            groups = driver.find_elements(By.CSS_SELECTOR, ".group")
            shown_paths = [{p.text for p in g.find_elements(By.CSS_SELECTOR, ".dupe .path")} for g in groups]
            assert sorted(shown_paths, key=sorted) == sorted(families, key=sorted)
            # Every file with its thumbnail (loaded), pixel size, file size and date.
            WebDriverWait(driver, 60).until(
                lambda d: all(
                    d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                    for img in d.find_elements(By.CSS_SELECTOR, ".dupe img")
                )
            )
            first = groups[0].find_elements(By.CSS_SELECTOR, ".dupe .facts dd")
            assert "\u00d7" in first[0].text and first[1].text.endswith("B") and first[2].text[:2] == "20"
            assert "never deletes" in driver.find_element(By.TAG_NAME, "header").text
        finally:
            driver.quit()
            server.stop()


def test_a_model_without_a_dense_head_is_one_clear_error():
    from lexsearch.dupes import find_dupes
    from lexsearch.errors import UsageError

    class NoDense:
        path, meta = "col", {"dense_dim": 0}

        def dupe_rows(self):
            raise AssertionError("not read")

    with pytest.raises(UsageError, match="without a dense head"):
        find_dupes(NoDense())


def test_a_qdrant_collection_gives_the_same_groups(indexed, tmp_path):
    """The same folder indexed into Qdrant's in-process engine: the same groups and pairs; points written
    before hashes existed get the note, and the next index run fills them."""
    pytest.importorskip("qdrant_client")
    photos, col, model, _ = indexed
    qd = f"qdrant://{tmp_path / 'qdrant'}/photos"
    index = ["index", str(photos), "--model", str(model), "--collection", qd, "--quiet"]
    res = CliRunner().invoke(cli, index)
    assert res.exit_code == 0, res.output

    def shape(out):
        return [
            (
                [f["path"] for f in g["files"]],
                [(p["a"], p["b"], p["hash_bits"], round(p["similarity"], 3)) for p in g["pairs"]],
            )
            for g in out["groups"]
        ]

    assert shape(_json(qd)) == shape(_json(col))
    from lexsearch.collection import open_collection

    with open_collection(qd, readonly=False) as c:  # as points written before hashes existed
        c._client.delete_payload(c.name, keys=["phash"], points=c._models.Filter(must=[]), wait=True)
    res = _dupes(qd, "--json")
    assert res.exit_code == 0 and "no perceptual hash" in res.stderr and f"--collection {qd}" in res.stderr
    res = CliRunner().invoke(cli, index)
    assert res.exit_code == 0, res.output
    res = _dupes(qd, "--json")
    assert res.exit_code == 0 and res.stderr == "" and shape(json.loads(res.stdout)) == shape(_json(col))
