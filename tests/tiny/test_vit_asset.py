"""The shipped tiny ViT (lexsearch/tiny/assets/tiny_vit): it loads into the tiny preset, carries its record,
and the tiny-base pretraining uses it instead of pretraining a ViT on the training set."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lexsearch.tiny import bases as tiny_bases
from lexsearch.tiny import vit_asset as TV
from lexsearch.tiny.bases import pretrain_tiny_bases
from lexsearch.tiny.config import PretrainConfig
from lexsearch.tiny.vision import pretrain_vision

FAST = PretrainConfig(lm_steps=2, lm_batch_size=4, vit_epochs=1, vit_batch_size=8, vit_max_images=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lexsearch.data.toyworld import generate_toy_world

    return generate_toy_world(tmp_path_factory.mktemp("toy"), 12, seed=3)


def _tiny():
    from lexsearch.model.presets import preset_config

    return preset_config("tiny")


def test_the_shipped_asset_matches_the_tiny_preset_and_its_record():
    from lexsearch.model.presets import TINY_VISION

    cfg = _tiny()
    assert TV.shipped_vit_dir(cfg) == TV.ASSET_DIR
    record = TV.read_record()
    assert record["fingerprint"]["vision_config"] == TINY_VISION
    # The asset may be a continuation (--init) of an earlier one: every stage of the chain, down to the one
    # trained from scratch on the default corpus seed, is label-free: trained on the contour corpus's own
    # geometry (silhouettes, descriptors, clusters of them), never on a world's shape or colour names.
    stages = [record]
    while stages[-1].get("init"):
        stages.append(stages[-1]["init"]["record"])
    assert stages[-1]["corpus"]["seed"] == TV.CORPUS_SEED
    for stage in stages:
        assert stage["steps"] > 0 and stage["command"].startswith("python scripts/pretrain_tiny_vit.py")
        corpus = stage["corpus"]
        assert corpus["n_train"] > 0
        assert (
            corpus["generator"].startswith("lexsearch.tiny.contours") and "no labels" in corpus["generator"]
        )
        assert corpus["silhouette_side"] > 0 and corpus["family_share"] > 0
    # The held-out corpus images say it learnt its targets: the per-patch geometry better than the best
    # constant guess (the targets' own spread), colour bins well above chance.
    heldout = record["heldout"]
    assert heldout["geometry_mse"] < 0.95 * heldout["geometry_mse_constant"]
    assert heldout["colour_acc"] > 0.5
    # Small enough to ship in the package.
    assert (TV.ASSET_DIR / "model.safetensors").stat().st_size < 2_000_000

    vision = TV.load_shipped_vit()
    assert next(vision.parameters()).dtype == torch.float32
    for key, value in TINY_VISION.items():
        assert getattr(vision.config, key) == value, key
    # Pretrained at its own size, run at the preset's (larger) input size with interpolated positions.
    assert record["fingerprint"]["image_size"] == TINY_VISION["image_size"] < cfg.image_size
    patch = TINY_VISION["patch_size"]
    for size in (TINY_VISION["image_size"], cfg.image_size):
        with torch.no_grad():
            out = vision(pixel_values=torch.zeros(1, 3, size, size)).last_hidden_state
        assert out.shape == (1, 1 + (size // patch) ** 2, TINY_VISION["hidden_size"])


def test_a_different_vision_config_falls_back_to_pretraining():
    cfg = _tiny()
    cfg.vision_config = dict(cfg.vision_config, num_hidden_layers=1)
    assert TV.shipped_vit_dir(cfg) is None
    assert TV.shipped_vit_dir(replace(_tiny(), image_mean=(0.4, 0.4, 0.4))) is None


def test_pretrain_tiny_bases_uses_the_asset_without_pretraining_the_vit(world, tmp_path, monkeypatch):
    def no_vit_pretraining(*args, **kwargs):
        raise AssertionError("the ViT was pretrained although the shipped one fits")

    monkeypatch.setattr(tiny_bases, "pretrain_vision", no_vit_pretraining)
    bases = pretrain_tiny_bases(world.root, _tiny(), FAST, cache_root=tmp_path)
    assert bases.report["vit_source"] == "shipped" and "vit_shipped_shape_acc" in bases.report
    from safetensors.torch import load_file

    saved = load_file(str(bases.vision_dir / "model.safetensors"))
    shipped = load_file(str(TV.ASSET_DIR / "model.safetensors"))
    assert saved.keys() == shipped.keys()
    assert all(torch.equal(saved[k], shipped[k].float()) for k in saved)
    # Switching the asset off gives a different cache entry (and pretrains on the training set).
    monkeypatch.setattr(tiny_bases, "pretrain_vision", lambda *a, **k: {"vit_loss": 0.0})
    no_asset = replace(FAST, use_shipped_vit=False)
    own = pretrain_tiny_bases(world.root, _tiny(), no_asset, cache_root=tmp_path)
    assert own.root != bases.root and own.report["vit_source"] == "training set"


def test_prepare_tiny_bases_starts_from_the_shipped_vit(world, tmp_path, monkeypatch):
    from lexsearch.data.pairs import load_folder
    from lexsearch.tiny.bases import prepare_tiny_bases, untrained_tiny_model

    monkeypatch.setattr(tiny_bases, "pretrain_vision", lambda *a, **k: pytest.fail("ViT pretrained"))
    # Keep the LM pretraining to two steps: this test is about where the ViT comes from.
    monkeypatch.setattr(tiny_bases, "PretrainConfig", lambda seed=0: replace(FAST, seed=seed))
    out = tmp_path / "run"
    prepare_tiny_bases(out, load_folder(world.root), seed=0)
    assert json.loads((out / "base" / "pretrain.json").read_text())["vit_source"] == "shipped"
    assert not (out / "config.json").exists()  # bases only: a model is written by the run's first checkpoint
    model = untrained_tiny_model(out)
    shipped = TV.load_shipped_vit()
    for (name, a), (_, b) in zip(model.vision.named_parameters(), shipped.named_parameters()):
        assert torch.equal(a, b), name


def test_corpus_targets_are_deterministic_and_follow_the_scenes():
    cfg = _tiny()  # rendered at the ViT's pretraining size (64), not the preset's input size
    a = TV.corpus_targets(range(5, 9), seed=11, model_config=cfg, patch_size=8)
    b = TV.corpus_targets(range(5, 9), seed=11, model_config=cfg, patch_size=8)
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.patch_shape, b.patch_shape)
    assert a.pixels.shape == (4, 3, 64, 64) and a.patch_shape.shape == (4, 64)
    assert ((a.patch_shape == 0) == (a.patch_colour == 0)).all()
    # Every image has at least one shape, and the presence row names as many shapes as colours.
    n_shapes = len(a.shapes)
    present = a.present.numpy()
    assert (present[:, :n_shapes].sum(1) >= 1).all()
    assert np.array_equal(present[:, :n_shapes].sum(1), present[:, n_shapes:].sum(1))


def test_pretrain_vision_runs_the_given_number_of_steps():
    from transformers import Dinov2Config, Dinov2Model

    cfg = _tiny()
    targets = TV.corpus_targets(range(6), seed=2, model_config=cfg, patch_size=8)
    torch.manual_seed(0)
    small = dict(cfg.vision_config, hidden_size=16, num_attention_heads=2, num_hidden_layers=1)
    vision = Dinov2Model(Dinov2Config(**small))
    seen = []
    report = pretrain_vision(
        vision, targets, replace(FAST, vit_batch_size=4), lambda *a: seen.append(a[1]), targets, steps=5
    )
    assert seen == [1, 2, 3, 4, 5]  # more steps than one epoch of 6 images: epochs wrap around
    assert 0.0 <= report["vit_eval_shape_acc"] <= 1.0
