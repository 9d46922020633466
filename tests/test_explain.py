"""`lexsearch explain`: words from the image's own vector, JSON output, and a heat map a person can open."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from lexsearch.cli import cli
from lexsearch.explain import explain_image
from lexsearch.model import Encoder


def _image(path, size=(150, 110)):
    img = Image.new("RGB", size, (30, 30, 30))
    ImageDraw.Draw(img).ellipse([20, 20, 80, 80], fill=(220, 30, 30))
    img.save(path)
    return path


def test_explain_words_are_the_images_strongest_dimensions(tiny_model_dir, tmp_path):
    enc = Encoder.load(tiny_model_dir, device="cpu")
    path = _image(tmp_path / "a.png")
    result = explain_image(enc, Image.open(path), top_k=4)
    row = enc.encode_images([path]).sparse[0].toarray().ravel()
    strongest = np.argsort(-row, kind="stable")[:4]
    assert result.term_ids == strongest.tolist()
    assert [w for w, _ in result.words] == enc.words(strongest)
    assert [x for _, x in result.words] == sorted((x for _, x in result.words), reverse=True)


def test_explain_cli_json_and_heatmap(tiny_model_dir, tmp_path):
    path = _image(tmp_path / "a.png")
    out = tmp_path / "heat.png"
    res = CliRunner().invoke(
        cli,
        ["explain", str(path), "--model", str(tiny_model_dir), "--top", "3", "--json", "--heatmap", str(out)],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.splitlines()[0])
    assert payload["path"] == str(path) and len(payload["words"]) == 3
    assert set(payload["words"][0]) == {"word", "weight"}
    with Image.open(out) as heat:
        assert heat.format == "PNG" and heat.size == (150, 110)
        # the overlay changed pixels: something was drawn over the image
        assert (
            np.abs(np.asarray(heat.convert("RGB"), dtype=int) - np.asarray(Image.open(path), dtype=int)).sum()
            > 0
        )


def test_explain_cli_single_word_and_bad_input(tiny_model_dir, tmp_path):
    path = _image(tmp_path / "a.png")
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "explain",
            str(path),
            "--model",
            str(tiny_model_dir),
            "--word",
            "circle",
            "--heatmap",
            str(tmp_path / "w.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "w.png").size == (150, 110)
    for word, message in (
        ("\u65e5\u672c", "not in the model's vocabulary"),
        ("zebrax", "not one vocabulary word"),
    ):
        res = runner.invoke(
            cli,
            [
                "explain",
                str(path),
                "--model",
                str(tiny_model_dir),
                "--word",
                word,
                "--heatmap",
                str(tmp_path / "z.png"),
            ],
        )
        assert res.exit_code != 0 and message in res.output, res.output
    res = runner.invoke(cli, ["explain", str(tmp_path / "missing.jpg"), "--model", str(tiny_model_dir)])
    assert res.exit_code != 0 and "no such file" in res.output and "Traceback" not in res.output
    (tmp_path / "text.jpg").write_text("not an image")
    res = runner.invoke(cli, ["explain", str(tmp_path / "text.jpg"), "--model", str(tiny_model_dir)])
    assert res.exit_code != 0 and "not an image" in res.output  # the reason the indexer gives


def test_explain_reads_heic_photos(tiny_model_dir, tmp_path):
    """In a fresh process, so no earlier test's HEIF registration can hide a missing one."""
    import subprocess
    import sys

    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(Image.open(_image(tmp_path / "a.png"))).save(tmp_path / "phone.heic")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lexsearch",
            "explain",
            str(tmp_path / "phone.heic"),
            "--model",
            str(tiny_model_dir),
            "--json",
            "--heatmap",
            str(tmp_path / "h.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["words"]
    assert Image.open(tmp_path / "h.png").size == (150, 110)
