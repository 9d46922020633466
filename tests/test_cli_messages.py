"""Bad input and odd names at the command line: one clear line, nothing left behind, nothing raw on a terminal."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from fakes import make_image, make_images
from oddfiles import rgb_png_with_trns
from PIL import Image

from lexsearch.cli import cli
from lexsearch.index import Collection


def _one_line_error(res, code=None):
    assert res.exit_code != 0 and (code is None or res.exit_code == code), res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


def _index(runner, photos, model, collection, *extra):
    args = ["index", str(photos), "--model", str(model), "--device", "cpu", "--collection", str(collection)]
    return runner.invoke(cli, [*args, "--quiet", *extra])


def test_collection_name_empty_or_a_file(tmp_path, tiny_model_dir, lexsearch_home):
    make_images(tmp_path / "p", 2)
    runner = CliRunner()
    line = _one_line_error(_index(runner, tmp_path / "p", tiny_model_dir, ""), 2)
    assert "empty" in line
    assert not (lexsearch_home / "collections" / "index.db").exists()
    (tmp_path / "afile").write_text("x")
    for res in (
        _index(runner, tmp_path / "p", tiny_model_dir, tmp_path / "afile"),
        runner.invoke(cli, ["query", "red", "--collection", str(tmp_path / "afile")]),
    ):
        assert "is a file, not a collection folder" in _one_line_error(res, 2)


def test_missing_sources_leave_nothing_behind(tmp_path, tiny_model_dir, lexsearch_home):
    runner = CliRunner()
    res = _index(runner, tmp_path / "missing", tiny_model_dir, "fresh")
    assert "no such file or folder" in _one_line_error(res, 2)
    assert not (lexsearch_home / "collections" / "fresh").exists()
    res = runner.invoke(cli, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert "no such file or folder" in _one_line_error(res, 2)
    assert not (tmp_path / "m").exists()


def test_damaged_or_empty_index_db_names_the_rebuild(tmp_path, tiny_model_dir):
    make_images(tmp_path / "p", 2)
    runner = CliRunner()
    col = tmp_path / "col"
    assert _index(runner, tmp_path / "p", tiny_model_dir, col).exit_code == 0
    for name in ("index.db-wal", "index.db-shm"):
        (col / name).unlink(missing_ok=True)
    (col / "index.db").write_bytes(b"this is not a database" * 100)
    line = _one_line_error(runner.invoke(cli, ["query", "red", "--collection", str(col)]))
    assert "damaged" in line and "--rebuild" in line
    assert "--rebuild" in _one_line_error(_index(runner, tmp_path / "p", tiny_model_dir, col))
    (col / "index.db").write_bytes(b"")
    line = _one_line_error(runner.invoke(cli, ["query", "red", "--collection", str(col)]))
    assert "upgrade" not in line and "empty" in line and "--rebuild" in line
    # The named fix works as printed: the record beside index.db names the collection's folders and model.
    (col / "index.db").write_bytes(b"garbage" * 100)
    line = _one_line_error(runner.invoke(cli, ["query", "red", "--collection", str(col)]))
    assert "DIR" not in line and "MODEL_DIR" not in line, line
    res = _pasted(runner, line)
    assert res.exit_code == 0, res.output
    with Collection.open(col) as c:
        assert c.count() == 2
    # index.db lost altogether: index reuses the recorded model, with no --model.
    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (col / name).unlink(missing_ok=True)
    res = runner.invoke(cli, ["index", str(tmp_path / "p"), "--collection", str(col), "--quiet"])
    assert res.exit_code == 0, res.output
    with Collection.open(col) as c:
        assert c.count() == 2


def test_second_indexer_is_refused_before_the_model_loads(tmp_path, tiny_model_dir, monkeypatch):
    from lexsearch.model import Encoder

    make_images(tmp_path / "p", 2)
    loads = []
    real_load = Encoder.load
    monkeypatch.setattr(Encoder, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    with Collection.open(tmp_path / "busy", readonly=False):  # another indexer holds the collection
        res = _index(CliRunner(), tmp_path / "p", tiny_model_dir, tmp_path / "busy")
    assert "Another 'lexsearch index' is writing" in _one_line_error(res)
    assert loads == []


def test_a_binary_query_is_echoed_escaped(tmp_path, tiny_model_dir):
    make_images(tmp_path / "p", 2)
    runner = CliRunner()
    col = str(tmp_path / "col")
    assert _index(runner, tmp_path / "p", tiny_model_dir, col).exit_code == 0
    # Echoed back in the error ("No such option: ..."): escaped, so it cannot recolour or ring the terminal.
    res = runner.invoke(cli, ["query", "red", "--\x1b[31mzq\x07", "--collection", col])
    line = _one_line_error(res)
    assert "\x1b" not in res.output and "\x07" not in res.output and "\\x1b[31mzq\\x07" in line


def test_min_score_must_be_a_finite_number(tmp_path, tiny_model_dir):
    make_images(tmp_path / "p", 2)
    runner = CliRunner()
    col = str(tmp_path / "col")
    assert _index(runner, tmp_path / "p", tiny_model_dir, col).exit_code == 0
    for bad in ("nan", "inf", "-inf"):
        res = runner.invoke(cli, ["query", "red", "--collection", col, "--min-score", bad])
        assert res.exit_code == 2 and "finite" in res.output


def test_odd_names_in_query_output(tmp_path, tiny_model_dir):
    photos = tmp_path / "p"
    make_images(photos, 3)
    latin1 = os.path.join(os.fsencode(photos), b"caf\xe9.png")
    newline = photos / "two\nlines.png"
    make_image(os.fsdecode(latin1), 5, fmt="PNG")
    make_image(newline, 6)
    runner = CliRunner()
    col = str(tmp_path / "col")
    assert _index(runner, photos, tiny_model_dir, col).exit_code == 0
    query = ["query", "--image", str(photos / "img_00000.png"), "--collection", col, "--top", "10"]
    res = runner.invoke(cli, [*query, "-0"])
    assert res.exit_code == 0, res.output
    printed = res.stdout_bytes.split(b"\0")
    assert printed[-1] == b"" and len(printed) == 6
    assert set(printed[:-1]) == {os.fsencode(photos / f"img_0000{i}.png") for i in range(3)} | {
        latin1,
        os.fsencode(newline),
    }  # raw bytes: xargs -0 reaches the very files
    res = runner.invoke(cli, [*query, "--paths"])
    assert latin1 + b"\n" in res.stdout_bytes
    table = runner.invoke(cli, query).output
    assert "caf\\xe9.png" in table and "two\\nlines.png" in table and "two\nlines" not in table


def test_results_for_deleted_files_are_left_out_with_a_note(tmp_path, tiny_model_dir):
    photos = tmp_path / "p"
    make_images(photos, 5)
    runner = CliRunner()
    col = str(tmp_path / "col")
    assert _index(runner, photos, tiny_model_dir, col).exit_code == 0
    query = ["query", "--image", str(photos / "img_00000.png"), "--collection", col, "--top", "10", "--paths"]
    assert len(runner.invoke(cli, query).stdout_bytes.splitlines()) == 5
    # Files deleted since the last index run are not shown; the note says that a re-index is due.
    (photos / "img_00001.png").unlink()
    (photos / "img_00003.png").unlink()
    res = runner.invoke(cli, query)
    assert res.exit_code == 0
    assert sorted(res.stdout_bytes.splitlines()) == [
        os.fsencode(photos / f"img_0000{i}.png") for i in (0, 2, 4)
    ]
    assert "2 matching files no longer exist" in res.stderr and f"lexsearch index {photos}" in res.stderr
    res = runner.invoke(cli, [*query[:-1], "--json"])
    assert [r["rank"] for r in json.loads(res.stdout)] == [1, 2, 3]


def test_heatmap_transparency_format_and_folder(tmp_path, tiny_model_dir):
    path = tmp_path / "trns.png"
    rgb_png_with_trns(path)
    runner = CliRunner()
    base = ["explain", str(path), "--model", str(tiny_model_dir), "--device", "cpu", "--heatmap"]
    res = runner.invoke(cli, [*base, str(tmp_path / "h.png")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "h.png") as im:
        assert im.format == "PNG" and max(im.size) >= 512  # readable: a 48 x 36 image is drawn large
    res = runner.invoke(cli, [*base, str(tmp_path / "h.jpg")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "h.jpg") as im:
        assert im.format == "JPEG"  # the format the name says, not PNG bytes behind a .jpg
    for bad, words in [
        ("h.xyz", "Cannot tell which image format"),
        ("noext", "Cannot tell which image format"),
        ("missing/dir/h.png", "does not exist"),
    ]:
        res = runner.invoke(cli, [*base, str(tmp_path / bad)])
        assert words in _one_line_error(res, 2)
        assert res.stdout == ""  # refused before any work, not after the words


def _pasted(runner, line: str):
    """Run the ``lexsearch ...`` command a message line ends with, as a user pasting it into a shell would."""
    import re
    import shlex

    command = re.search(r"(lexsearch .*)$", line).group(1)
    args = shlex.split(command)
    assert args[0] == "lexsearch"
    return runner.invoke(cli, args[1:])


def _other_model(src, dest):
    """A copy of the model ``src`` with other weights (another model id, the same vocabulary)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    weights = load_file(str(dest / "lexvla.safetensors"))
    save_file(
        {k: v + 0.01 * torch.ones_like(v) for k, v in weights.items()}, str(dest / "lexvla.safetensors")
    )
    return dest


def test_index_without_model_reuses_the_collections_model(tmp_path, tiny_model_dir):
    runner = CliRunner()
    make_images(tmp_path / "a", 2)
    make_images(tmp_path / "b", 2, start=2)
    col = str(tmp_path / "my col")
    res = runner.invoke(cli, ["index", str(tmp_path / "a"), "--collection", col])
    assert "--model" in _one_line_error(res, 2)  # a new collection has no model to reuse
    assert not (tmp_path / "my col").exists()
    assert _index(runner, tmp_path / "a", tiny_model_dir, col).exit_code == 0
    res = runner.invoke(cli, ["index", str(tmp_path / "b"), "--collection", col, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "2 indexed" in res.stdout
    with Collection.open(col) as c:
        assert c.count() == 4 and c.meta["model_path"] == str(tiny_model_dir)


def test_suggested_commands_run_as_printed(tmp_path, tiny_model_dir):
    runner = CliRunner()
    a, b = tmp_path / "holiday photos", tmp_path / "b"  # a space: the command must be quoted
    make_images(a, 3)
    make_images(b, 2, start=3)
    col = str(tmp_path / "col")
    for folder in (a, b):
        assert _index(runner, folder, tiny_model_dir, col).exit_code == 0
    query = ["query", "--image", str(a / "img_00000.png"), "--collection", col, "--top", "10", "--paths"]

    # After a deletion, query's note names the re-index; pasted, it runs (no --model) and the note goes.
    (a / "img_00001.png").unlink()
    res = runner.invoke(cli, query)
    note = [ln for ln in res.stderr.splitlines() if "no longer exist" in ln]
    assert len(note) == 1 and "--model" not in note[0]
    res = _pasted(runner, note[0])
    assert res.exit_code == 0, res.output
    assert "1 removed" in res.stdout
    res = runner.invoke(cli, query)
    assert res.exit_code == 0 and "no longer exist" not in res.stderr and len(res.stdout.splitlines()) == 4

    # Another model on one of the folders: refused; the rebuild it names keeps every folder of the collection.
    other = _other_model(tiny_model_dir, tmp_path / "other model")
    line = _one_line_error(_index(runner, b, other, col))
    assert "--rebuild" in line
    res = _pasted(runner, line)
    assert res.exit_code == 0, res.output
    with Collection.open(col) as c:
        assert sorted(os.path.basename(r.path) for r in c.rows()) == [
            "img_00000.png",
            "img_00002.png",
            "img_00003.png",
            "img_00004.png",
        ]
        assert c.meta["model_path"] == str(other)

    # Querying with the first model now: refused with the rebuild for it, which also runs as printed.
    line = _one_line_error(runner.invoke(cli, [*query, "--model", str(tiny_model_dir)]))
    res = _pasted(runner, line)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, [*query, "--model", str(tiny_model_dir)])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 4


def test_the_distill_hint_names_the_models_own_captions(tmp_path, tiny_model_dir, monkeypatch):
    import lexsearch.train.distill as distill_module
    from lexsearch.train.config import TrainConfig

    captions = tmp_path / "my captions"
    make_images(captions / "images", 2)
    (captions / "captions.jsonl").write_text(
        "".join(
            json.dumps({"image": f"images/img_0000{i}.png", "caption": "a red circle"}) + "\n" for i in (0, 1)
        )
    )
    TrainConfig(data=str(captions), out=str(tiny_model_dir)).save(tiny_model_dir)  # as `lexsearch train` does
    make_images(tmp_path / "p", 2)
    runner = CliRunner()
    col = str(tmp_path / "col")
    assert _index(runner, tmp_path / "p", tiny_model_dir, col).exit_code == 0
    line = _one_line_error(
        runner.invoke(cli, ["query", "red", "--collection", col, "--text-encoder", "student"])
    )
    assert "CAPTIONS" not in line
    seen = []

    def distill(model, texts, cfg, **kw):
        seen.append((model, texts))
        raise KeyboardInterrupt  # reached with the right arguments: no need to train the student here

    monkeypatch.setattr(distill_module, "distill", distill)
    res = _pasted(runner, line)
    assert seen == [(str(tiny_model_dir), ["a red circle"])] and res.exit_code == 130, res.output
