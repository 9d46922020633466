"""Training with a frozen text tower: the read-out's columns are the captions' strongest word starts, the text
vectors a step scores (through the text head and the calibration) equal the model's own, the disk cache is
reused (and keyed by calibration), the restricted read-out gives the same vectors in training and after a
reload, and a frozen run trains the image side and the text head, never the LM."""

from __future__ import annotations

import pytest
import torch

from lexsearch.train.frozen_text import FrozenText, cache_dir
from tests.model.test_gemma import _gemma_checkpoint

CAPTIONS = ["a red circle", "a small green triangle", "blue square on the left", "a red circle"]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return _gemma_checkpoint(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="module")
def headed_dir(tmp_path_factory):
    return _gemma_checkpoint(tmp_path_factory.mktemp("tiny-gemma-head"), config={"text_head_rank": 4})


@pytest.fixture
def gemma(gemma_dir):
    from lexsearch.model.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = load_checkpoint(gemma_dir).eval()
    model.config.text_calibration = 0.5
    return model


def test_columns_are_each_captions_strongest_word_starts(gemma):
    from lexsearch.train.frozen_text import word_start_columns

    text = FrozenText(gemma, CAPTIONS, top_k=8)
    assert len(text.index) == 3 and text.computed == 4  # three distinct captions and the empty text
    starts = word_start_columns(gemma)
    assert starts is not None and not bool(starts.all())  # the tokenizer marks word starts
    ids, mask = gemma.tokenize(list(text.index))
    with torch.no_grad():
        s_txt, _ = gemma.encode_text(ids, mask)
    cols = set(text.columns.tolist())
    assert 8 <= len(cols) <= 24
    assert all(bool(starts[c]) for c in cols)  # no word-inner piece (a "##red")
    for row in s_txt:
        best = row.masked_fill(~starts, -1.0).topk(8).indices.tolist()
        assert set(best) <= cols


def test_with_only_the_captions_words_the_columns_are_their_content_words(gemma):
    from lexsearch.model.vocab import Vocabulary

    words = ["a", "red", "circle", "small", "green", "triangle", "the", "on"]
    text = FrozenText(gemma, CAPTIONS, top_k=0, words=words)
    vocab = Vocabulary(gemma.tokenizer.backend_tokenizer, gemma.config.vocab_ids)
    content = vocab.columns(["red", "circle", "small", "green", "triangle"])
    assert set(text.columns.tolist()) == content
    assert not set(text.columns.tolist()) & vocab.columns(["a", "the", "on"])  # no function word
    assert 0.0 < text.share < 1.0  # the captions' own words hold part of their read-out's mass


def test_frozen_towers_score_the_text_vectors_the_model_computes(headed_dir):
    """Through the text head and the calibration, on the read-out's columns: what training scores is what
    encode_text gives a query, and nothing lies off the columns."""
    from lexsearch.model.checkpoint import load_checkpoint
    from lexsearch.train.frozen_text import FrozenTowers

    torch.manual_seed(0)
    model = load_checkpoint(headed_dir).eval()
    model.config.text_calibration = 0.5
    text = FrozenText(model, CAPTIONS, top_k=8)
    model.set_image_columns(text.columns.tolist())
    torch.nn.init.normal_(model.text_head.up.weight, std=0.5)  # a trained head: it changes the read-out
    distinct = list(text.index)
    pixels = torch.rand(len(distinct), 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        _, s_txt, _, _, _ = FrozenTowers(model, text)(pixels, text.rows(distinct)[:, None], None)
        ids, mask = model.tokenize(distinct)
        full, _ = model.encode_text(ids, mask)
        model.text_head.up.weight.zero_()
        untrained, _ = model.encode_text(ids, mask)
    cols = text.columns
    assert (s_txt - full[:, cols]).abs().max().item() < 1e-5
    off = torch.ones(model.vocab_size, dtype=torch.bool)
    off[cols] = False
    assert full[:, off].abs().max().item() == 0.0
    assert torch.allclose(full.norm(dim=1), torch.ones(len(distinct)), atol=1e-5)
    assert (full - untrained).abs().max().item() > 1e-3  # the head is really in the path


def test_cache_is_reused_and_keyed_by_calibration(gemma, monkeypatch):
    first = FrozenText(gemma, CAPTIONS, top_k=8)

    def no_lm(*args, **kwargs):
        raise AssertionError("the LM ran for a cached caption")

    monkeypatch.setattr(gemma, "text_hidden", no_lm)
    again = FrozenText(gemma, CAPTIONS[:2], top_k=8)
    assert again.computed == 0
    assert torch.equal(again.hidden, first.hidden[:2]) and torch.equal(again.empty, first.empty)
    before = cache_dir(gemma)
    gemma.config.text_calibration = 1.0
    assert cache_dir(gemma) != before
    with pytest.raises(AssertionError, match="the LM ran"):
        FrozenText(gemma, CAPTIONS, top_k=8)


def test_restricted_image_read_out_is_zero_elsewhere_and_survives_a_reload(gemma, gemma_dir, tmp_path):
    from lexsearch.model.checkpoint import load_checkpoint, save_checkpoint

    pixels = torch.rand(2, 3, gemma.config.image_size, gemma.config.image_size)
    cols = torch.tensor([3, 5, 40, 41, 90])
    with torch.no_grad():
        full, _ = gemma.encode_image(pixels)
        gemma.set_image_columns(cols.tolist())
        restricted, _ = gemma.encode_image(pixels)
        on_cols, _ = gemma.encode_image_columns(pixels)
    assert restricted.shape == full.shape
    assert gemma.z_img.shape[0] == len(cols)  # Z_img keeps only the read-out's rows
    others = torch.ones(gemma.vocab_size, dtype=torch.bool)
    others[cols] = False
    assert restricted[:, others].abs().max().item() == 0.0
    assert torch.allclose(restricted[:, cols], on_cols)
    assert torch.allclose(on_cols.norm(dim=1), torch.ones(2))
    # Renormalised over the columns: not the full vector's entries (the restriction is real).
    assert (restricted[:, cols] - full[:, cols]).abs().max().item() > 1e-3

    save_checkpoint(gemma, tmp_path / "m", root=gemma_dir)
    reloaded = load_checkpoint(tmp_path / "m").eval()
    assert reloaded.config.image_columns == cols.tolist()
    with torch.no_grad():
        again, _ = reloaded.encode_image(pixels)
    assert (again - restricted).abs().max().item() < 1e-5


def test_a_frozen_text_run_trains_the_image_side_and_the_text_head_only(headed_dir, tmp_path):
    from safetensors.torch import load_file

    from lexsearch.data.toyworld import generate_toy_world
    from lexsearch.model.checkpoint import load_checkpoint
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import train

    generate_toy_world(tmp_path / "toy", 24, seed=0)
    config = train_config(
        "tiny",
        data=str(tmp_path / "toy"),
        out=str(tmp_path / "run"),
        init=str(headed_dir),  # the tiny Gemma with a text head: no tiny bases to build
        freeze_text=True,
        text_top_k=4,
        batch_size=8,
        max_steps=3,
        num_workers=0,
        val_holdout=8,
    )
    result = train(config)
    assert result.step == 3 and result.val is not None
    model = load_checkpoint(tmp_path / "run")  # loads: LoRA is saved though it never trained
    cols = model.config.image_columns
    assert 0 < len(cols) < model.vocab_size  # the read-out is restricted, and recorded
    weights = load_file(str(tmp_path / "run" / "lexvla.safetensors"))
    lora_b = [w for n, w in weights.items() if "lora_B" in n]
    assert lora_b and all(w.abs().max() == 0 for w in lora_b)  # LoRA never moved from its zero init
    assert weights["z_img"].shape[0] == len(cols)
    assert (weights["z_img"] - model.z_txt[cols]).abs().max() > 0  # the image codebook did train
    assert weights["text_head.up.weight"].abs().max() > 0  # the text head left its zero init
    from lexsearch.train.loop import FROZEN_TEXT_THRESHOLD

    # A few dozen columns are sparsified at the run's own cut-off, not at 1/sqrt(V) of the whole vocabulary.
    assert model.config.sparsify == "threshold" and model.config.threshold == FROZEN_TEXT_THRESHOLD


def test_mini_freezes_its_text_tower_on_a_cpu_by_default():
    from lexsearch.train.config import train_config

    assert train_config("mini", device="cpu").freeze_text is True
    assert train_config("mini", device="cpu", freeze_text=False).freeze_text is False
    assert train_config("mini", device="cuda").freeze_text is None  # the GPU recipe: LoRA trains
    assert train_config("tiny", device="cpu").freeze_text is None
