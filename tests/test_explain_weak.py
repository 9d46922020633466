"""``explain`` says when an image's top words are weak for its model: its strongest word stands out less
than on the model's own held-out images (ModelConfig.word_margins); without that reference it stays silent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lexsearch.cli import cli
from lexsearch.explain import WEAK_PERCENTILE, weak_words_note
from lexsearch.model import Encoder
from lexsearch.model.config import CONFIG_FILE


def _image(path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _set_margins(model_dir, margins):
    path = model_dir / CONFIG_FILE
    payload = json.loads(path.read_text())
    payload["model"]["word_margins"] = margins
    path.write_text(json.dumps(payload))


def test_word_margin_is_how_far_the_best_word_stands_out(tiny_model_dir, tmp_path):
    enc = Encoder.load(tiny_model_dir, device="cpu")
    path = _image(tmp_path / "a.png")
    margin = enc.word_margins([path])
    from lexsearch.model.lexvla import codebook_logits

    with torch.no_grad():
        px = torch.from_numpy(enc.preprocess(Image.open(path))[None])
        logits = codebook_logits(enc.model.image_tokens(px), enc.model.z_img).max(dim=1).values[0]
    assert margin.shape == (1,)
    assert margin[0] == pytest.approx(float(logits.max() - logits.median()), abs=1e-4)


def test_the_note_follows_the_reference(tiny_model_dir, tmp_path):
    path = _image(tmp_path / "a.png")
    enc = Encoder.load(tiny_model_dir, device="cpu")
    margin = float(enc.word_margins([path])[0])
    assert weak_words_note(enc, Image.open(path)) is None  # no reference: silent
    enc.config.word_margins = {WEAK_PERCENTILE: margin + 1.0, "n": 100}
    note = weak_words_note(enc, Image.open(path))
    assert note and note.startswith("these words are weak for this model") and f"{margin:.1f}" in note
    enc.config.word_margins = {WEAK_PERCENTILE: margin - 1.0, "n": 100}
    assert weak_words_note(enc, Image.open(path)) is None


@pytest.mark.parametrize("reference", ["above", "below", "none"])
def test_explain_cli_says_it_on_stderr(tiny_model_dir, tmp_path, reference):
    path = _image(tmp_path / "a.png")
    margin = float(Encoder.load(tiny_model_dir, device="cpu").word_margins([path])[0])
    if reference != "none":
        line = margin + 1.0 if reference == "above" else margin - 1.0
        _set_margins(tiny_model_dir, {WEAK_PERCENTILE: line, "n": 100})
    for flags in ([], ["--json"]):
        res = CliRunner().invoke(
            cli, ["explain", str(path), "--model", str(tiny_model_dir), "--top", "3", *flags]
        )
        assert res.exit_code == 0, res.output
        weak = "note: these words are weak for this model" in res.stderr
        assert weak == (reference == "above")
        assert "weak" not in res.stdout
        if flags:
            assert len(json.loads(res.stdout)["words"]) == 3
