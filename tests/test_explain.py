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
    photo = np.asarray(_scene().resize((640, 640), Image.Resampling.NEAREST), dtype=int)
    assert np.abs(absent - nothing).max() <= 2  # just under the absent line: drawn as absent
    assert np.abs(strong - photo).max() <= 2 and np.abs(absent - photo).mean() > 40
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


@pytest.mark.parametrize("level", [8, 128, 248])
def test_absent_is_a_hatch_that_reads_the_same_on_dark_grey_and_bright_images(level):
    """A dimmed photo as "absent" looked like the image's own dark parts on a night photo. Absent is now a
    flat mid grey under dark and light hatch lines, on a black, a grey and a white image alike; the present
    half stays the photo, flat where the photo is flat."""
    flat = Image.new("RGB", (200, 200), (level, level, level))
    left = np.where(np.arange(16) % 4 < 2, 0.9, 0.0)
    pic = _picture(_render({7: left}, image=flat))
    present, absent = pic[:, :200, 0], pic[:, 440:, 0]  # clear of the fade between patches
    assert np.abs(present - level).max() <= 2 and present.std() < 1
    assert absent.std() > 40  # the hatch, whatever the photo's brightness
    assert absent.min() <= 40 and absent.max() >= 215  # both its dark and its light lines
    assert 80 < absent.mean() < 170  # mid grey: neither the dark of a night photo nor the white of a page


def _captured_weights(monkeypatch):
    """The weights handed to the heat map drawing by the CLI (None when the figure got none)."""
    import lexsearch.explain as ex

    seen: list = []
    real = ex.render_words

    def spy(image, grid, scores, words, scale, weights=None):
        seen.append((list(words), None if weights is None else [float(w) for w in weights]))
        return real(image, grid, scores, words, scale, weights)

    monkeypatch.setattr(ex, "render_words", spy)
    return seen


def test_the_figure_shows_the_weights_explain_prints(tiny_model_dir, tmp_path, monkeypatch):
    """The panels' numbers were the strongest patch scores (blue 0.86 beside a printed 0.53): now each word
    is drawn with its weight in the image's vector, the number printed for it."""
    from lexsearch.explain import weight_label

    seen = _captured_weights(monkeypatch)
    path = _image(tmp_path / "a.png")
    args = ["explain", str(path), "--model", str(tiny_model_dir), "--top", "3", "--json"]
    res = CliRunner().invoke(cli, [*args, "--heatmap", str(tmp_path / "h.png")])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout.splitlines()[0])["words"]
    (words, weights), *_ = seen
    assert words == [w["word"] for w in printed]
    assert np.allclose(weights, [w["weight"] for w in printed], atol=1e-6)
    assert weight_label(weights[0]) == f"weight {printed[0]['weight']:.4f}"  # the digits the table prints
    # One --word: its weight in the image's vector too (0 when the image lacks it), not a patch score.
    seen.clear()
    res = CliRunner().invoke(
        cli, [*args, "--top", "200", "--word", "circle", "--heatmap", str(tmp_path / "w.png")]
    )
    assert res.exit_code == 0, res.output
    every = {w["word"]: w["weight"] for w in json.loads(res.stdout.splitlines()[0])["words"]}
    assert seen[0][0] == ["circle"] and np.isclose(seen[0][1][0], every.get("circle", 0.0), atol=1e-6)


def test_explain_checks_every_flag_before_loading_the_model(tiny_model_dir, tmp_path):
    """Each bad flag is one line and a non-zero exit, in a fresh process that never imports torch: no wait
    for the model before being told."""
    import subprocess
    import sys

    path = _image(tmp_path / "a.png")
    base = ["explain", str(path), "--model", str(tiny_model_dir)]
    cases = [
        ([*base, "--heatmap", str(tmp_path / "h.txt")], "Cannot tell which image format"),
        ([*base, "--heatmap", str(tmp_path / "no" / "h.png")], "Folder for --heatmap does not exist"),
        ([*base, "--heatmap", str(tmp_path / "h.png"), "--word", ""], "--word is empty"),
        ([*base, "--heatmap", str(tmp_path / "h.png"), "--word", "  "], "--word is empty"),
        ([*base, "--word", "circle"], "pass --heatmap FILE too"),
        ([*base, "--heatmap", str(tmp_path / "h.png"), "--word", "zebrax"], "not one vocabulary word"),
        (
            [*base, "--heatmap", str(tmp_path / "h.png"), "--word", "\u65e5\u672c"],
            "not in the model's vocabulary",
        ),
    ]
    script = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        "out = [(r.exit_code, r.stderr) for r in (CliRunner().invoke(cli, a) for a in json.loads(sys.argv[1]))]\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps([a for a, _ in cases])], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["torch"] is False
    for (args, message), (code, err) in zip(cases, report["results"]):
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and message in lines[0], (args, err)
    assert not (tmp_path / "h.png").exists()


# ------------------------------------------------------------------------------------- explain --text
def _explain_text(*args):
    res = CliRunner().invoke(cli, ["explain", *args])
    assert res.exit_code == 0, res.output
    return res


def test_explain_text_words_are_the_vector_the_search_scores(small_collection):
    """Every active word of the query vector, strongest first, as the search encodes the text (parsed: the
    -word is no part of it) and as its cache answers the next time."""
    from lexsearch.index.store import Collection
    from lexsearch.search import load_encoder
    from lexsearch.search.query import encode_query

    _, col = small_collection
    first = json.loads(
        _explain_text("--text", "a red circle -blue", "--collection", str(col), "--json").stdout
    )
    again = json.loads(
        _explain_text("--text", "a red circle -blue", "--collection", str(col), "--json").stdout
    )
    assert again == first and first["text"] == "a red circle -blue"
    with Collection.open(col, readonly=True) as c:
        encoder = load_encoder(c, device="cpu")
        sparse, _ = encode_query(c, encoder, "a red circle", use_cache=False)
    expected = dict(zip(encoder.words(sparse.indices), sparse.data.tolist()))
    got = {w["word"]: w["weight"] for w in first["words"]}
    assert len(first["words"]) == sparse.nnz > 10  # every active word, not a top few
    assert got.keys() == expected.keys()
    assert all(abs(got[w] - expected[w]) < 1e-6 for w in got)
    weights = [w["weight"] for w in first["words"]]
    assert weights == sorted(weights, reverse=True)


def test_explain_text_table_shows_the_top_words(small_collection):
    _, col = small_collection
    words = json.loads(_explain_text("--text", "red circle", "--collection", str(col), "--json").stdout)[
        "words"
    ]
    lines = _explain_text("--text", "red circle", "--collection", str(col), "--top", "3").stdout.splitlines()
    assert lines[0] == "red circle"
    assert lines[1:] == [f"  {w['weight']:7.4f}  {w['word']}" for w in words[:3]]


def test_explain_text_with_a_bare_model_equals_the_collections(small_collection):
    root, col = small_collection
    by_model = _explain_text("--text", "red circle", "--model", str(root / "model"), "--json").stdout
    by_collection = _explain_text("--text", "red circle", "--collection", str(col), "--json").stdout
    assert json.loads(by_model) == json.loads(by_collection)


def test_explain_text_refusals_are_one_line_before_the_model_loads(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from lexsearch.limits import MAX_QUERY_CHARS

    path = _image(tmp_path / "a.png")
    base = ["explain", "--model", str(tiny_model_dir)]
    cases = [
        (base, "Give an IMAGE or --text TEXT"),
        ([*base, str(path), "--text", "red"], "Give an IMAGE or --text TEXT"),
        ([*base, "--text", "red", "--heatmap", str(tmp_path / "h.png")], "do not go with --text"),
        ([*base, "--text", "red", "--word", "red"], "do not go with --text"),
        ([*base, "--text", "   "], "The query is empty"),
        ([*base, "--text", "-red"], "only excludes"),
        ([*base, "--text", "x" * (MAX_QUERY_CHARS + 1)], f"the limit is {MAX_QUERY_CHARS}"),
        ([*base, "--text", "caf\udce9"], "not UTF-8"),
    ]
    script = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        "out = [(r.exit_code, r.stderr) for r in (CliRunner().invoke(cli, a) for a in json.loads(sys.argv[1]))]\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n"
    )
    arg = json.dumps([a for a, _ in cases])
    proc = subprocess.run([sys.executable, "-c", script, arg], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["torch"] is False
    for (args, message), (code, err) in zip(cases, report["results"]):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args[3:], err)
    assert not (tmp_path / "h.png").exists()


def test_explain_text_takes_the_querys_text_encoder_and_says_its_note(tiny_model_dir, monkeypatch):
    """--text-encoder is the query's choice (a model without a student refuses 'student' as a query does),
    and auto's note (why the LM answers) is printed as `lexsearch query` prints it."""
    from lexsearch.model import lazy

    res = CliRunner().invoke(
        cli, ["explain", "--text", "red", "--model", str(tiny_model_dir), "--text-encoder", "student"]
    )
    assert res.exit_code != 0 and "has no student query encoder" in res.stderr, res.output

    monkeypatch.setattr(lazy, "choose_text_encoder", lambda *a: ("lm", "queries use the LM: why"))
    res = _explain_text("--text", "red", "--model", str(tiny_model_dir), "--json")
    assert "note: queries use the LM: why" in res.stderr and json.loads(res.stdout)["words"]
