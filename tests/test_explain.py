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
        # three words: three panels side by side, and a legend strip below them
        assert heat.format == "PNG" and max(heat.size) >= 512 and heat.width > heat.height


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
    with Image.open(tmp_path / "w.png") as one:
        assert max(one.size) >= 512 and one.height > one.width * 110 / 150  # the picture + the legend below
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
    assert max(Image.open(tmp_path / "h.png").size) >= 512


# ------------------------------------------------------------------------------ heat maps a person can read
class GridEncoder:
    """Patch scores chosen by the test: a 4 x 4 grid over a V = 100 vocabulary (absent line 1/sqrt(V) = 0.1)."""

    grid = (4, 4)
    vocab_size = 100

    def __init__(self, columns: dict[int, np.ndarray]):
        self.columns = columns

    def encode_patches(self, image):
        patches = np.full((16, self.vocab_size), 0.05, np.float32)
        for col, values in self.columns.items():
            patches[:, col] = np.asarray(values, np.float32).reshape(16)
        return patches


def _scene(size=(200, 200)):
    """Colourful squares (a square image, so the model's centre crop is the whole picture)."""
    img = Image.new("RGB", size, (240, 200, 40))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, size[0] // 2, size[1]], fill=(30, 90, 220))
    d.ellipse([120, 120, 190, 190], fill=(200, 30, 40))
    return img


def _render(columns, word=7, image=None, words=None):
    from lexsearch.explain import HeatScale, render_word, render_words, word_patch_scores

    enc = GridEncoder(columns)
    image = image or _scene()
    patches = enc.encode_patches(image)
    scale = HeatScale.for_vocab(enc.vocab_size)
    if words:
        scores = [word_patch_scores(patches, [c]) for c in words]
        return render_words(image, enc.grid, scores, [f"w{c}" for c in words], scale)
    return render_word(image, enc.grid, word_patch_scores(patches, [word]), f"w{word}", scale)


def _picture(heat):
    """The picture part of a one-word heat map: the square at the top (the legend strip is below it)."""
    return np.asarray(heat.convert("RGB"), dtype=int)[: heat.width, : heat.width]


def test_heatmap_is_big_enough_with_the_legend_outside_the_picture():
    from lexsearch.explain import MIN_LONG_SIDE

    heat = _render({7: np.ones(16)})  # the word at full strength everywhere
    assert heat.width >= MIN_LONG_SIDE >= 512 and heat.height > heat.width  # a legend strip below
    expected = np.asarray(_scene().resize((heat.width, heat.width), Image.Resampling.NEAREST), dtype=int)
    # Full strength shows the photo untouched: nothing (no legend, no key) is drawn over any part of it,
    # the top-left corner included, where the old legend covered two thirds of a small image.
    assert np.abs(_picture(heat) - expected).max() <= 2
    assert (
        len(np.unique(np.asarray(heat)[heat.width + 5 :].reshape(-1, 3), axis=0)) > 2
    )  # the legend is there


def test_heatmap_adds_no_colour():
    """Over a grey photo every pixel stays grey: the map never paints a hue that a colour word could clash
    with (no "yellow" drawn in orange); on a colourful photo the legend holds greys only."""
    grey = Image.new("RGB", (200, 200), (128, 128, 128))
    ImageDraw.Draw(grey).rectangle([20, 20, 90, 90], fill=(200, 200, 200))
    ramp = np.linspace(0.0, 0.9, 16)
    for heat in (_render({7: ramp}, image=grey), _render({7: ramp, 9: ramp[::-1]}, image=grey, words=[7, 9])):
        rgb = np.asarray(heat.convert("RGB"), dtype=int)
        assert (rgb.max(axis=2) - rgb.min(axis=2)).max() <= 1
    legend = np.asarray(_render({7: ramp}).convert("RGB"), dtype=int)[640:]
    assert (legend.max(axis=2) - legend.min(axis=2)).max() <= 1


def test_heatmap_scale_is_absolute_an_absent_word_shows_absent():
    """Min-max scaling drew a word that is nowhere (scores flat at the absent line) as strong everywhere."""
    absent = _picture(_render({7: np.full(16, 0.09) + np.linspace(0, 0.005, 16)}))
    nothing = _picture(_render({7: np.zeros(16)}))
    strong = _picture(_render({7: np.full(16, 0.9)}))
    assert np.abs(absent - nothing).max() <= 2  # just under the absent line: drawn as absent
    assert strong.mean() > 2 * absent.mean()
    # The same score is drawn the same in two images, whatever the other patches hold.
    half = np.where(np.arange(16) % 4 < 2, 0.35, 0.05)
    weak_half = np.where(np.arange(16) % 4 < 2, 0.35, 0.3)
    a, b = _picture(_render({7: half})), _picture(_render({7: weak_half}))
    assert np.abs(a[:, :200] - b[:, :200]).max() <= 2


def test_heatmap_one_word_per_view():
    """Each word gets its own view: 'left' lights the left half only, 'right' the right half only."""
    left = np.where(np.arange(16) % 4 < 2, 0.9, 0.0)
    cols = {3: left, 4: 0.9 - left}
    scene = _scene()
    full = np.asarray(scene.resize((640, 640), Image.Resampling.NEAREST), dtype=int)
    a, b = _picture(_render(cols, word=3)), _picture(_render(cols, word=4))
    assert np.abs(a[:, :250] - full[:, :250]).mean() < 3 and np.abs(a[:, 390:] - full[:, 390:]).mean() > 40
    assert np.abs(b[:, 390:] - full[:, 390:]).mean() < 3 and np.abs(b[:, :250] - full[:, :250]).mean() > 40
    panels = _render(cols, words=[3, 4])
    assert panels.width > panels.height and max(panels.size) >= 512  # two panels side by side, one per word
