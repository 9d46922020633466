"""The self-supervised tiny-ViT recipe: a broad label-free corpus and masked-patch reconstruction."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from lexsearch.tiny.config import PretrainConfig
from lexsearch.tiny.corpus import corpus_pixels, render_corpus_image
from lexsearch.tiny.ssl_vision import _block_mask, pretrain_vision_ssl


def _tiny():
    from lexsearch.model.presets import preset_config

    return preset_config("tiny")


def test_corpus_is_deterministic_and_broad():
    cfg = _tiny()
    a = corpus_pixels(range(5, 9), seed=11, model_config=cfg)
    assert torch.equal(a, corpus_pixels(range(5, 9), seed=11, model_config=cfg))
    assert a.shape == (4, 64, 64, 3) and a.dtype == torch.uint8
    assert not torch.equal(a, corpus_pixels(range(5, 9), seed=12, model_config=cfg))
    # Whites, blacks and greys are part of the corpus, not only saturated hues.
    pixels = np.concatenate([render_corpus_image(i, 3, 32).reshape(-1, 3) for i in range(60)]).astype(int)
    spread = pixels.max(1) - pixels.min(1)
    assert ((spread < 20) & (pixels.min(1) > 225)).any() and ((spread < 20) & (pixels.max(1) < 30)).any()


def test_block_mask_hides_the_asked_share_in_2x2_blocks():
    mask = _block_mask(3, 8, 0.5, 2, torch.Generator().manual_seed(0))
    assert mask.shape == (3, 64) and (mask.sum(1) == 32).all()
    grid = mask.view(3, 4, 2, 4, 2)
    assert (grid.all(dim=(2, 4)) == grid.any(dim=(2, 4))).all()  # whole blocks, never half of one


def test_pretraining_learns_from_images_alone():
    from transformers import Dinov2Config, Dinov2Model

    cfg = _tiny()
    images = corpus_pixels(range(16), seed=2, model_config=cfg)
    torch.manual_seed(0)
    small = dict(cfg.vision_config, hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    vision = Dinov2Model(Dinov2Config(**small))
    seen = []
    fast = replace(PretrainConfig(), vit_batch_size=8, vit_lr=3e-3)
    report = pretrain_vision_ssl(
        vision, images, fast, lambda *a: seen.append(a[1]), steps=25, eval_images=images[:8]
    )
    assert seen == list(range(1, 26))  # more steps than one epoch of 16 images: epochs wrap around
    assert report["vit_eval_masked_l1"] < report["vit_eval_masked_l1_before"]


def test_edge_map_sees_outlines_in_any_colour():
    from lexsearch.tiny.ssl_vision import edge_map

    red, blue = torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)
    red[:, 0, 4:12, 4:12] = 1.0
    blue[:, 2, 4:12, 4:12] = 1.0
    e = edge_map(red)
    assert e.shape == (2, 1, 16, 16) and torch.allclose(e, edge_map(blue))
    assert e[0, 0, 4, 8] > 0.3 and e[0, 0, 8, 8] < 1e-2  # on the outline, not inside


def test_edge_targets_learn_from_images_alone():
    from transformers import Dinov2Config, Dinov2Model

    cfg = _tiny()
    images = corpus_pixels(range(16), seed=2, model_config=cfg)
    small = dict(cfg.vision_config, hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    fast = replace(PretrainConfig(), vit_batch_size=8, vit_lr=3e-3)
    for target in ("edges", "context-edges"):
        torch.manual_seed(0)
        vision = Dinov2Model(Dinov2Config(**small))
        report = pretrain_vision_ssl(vision, images, fast, steps=25, eval_images=images[:8], target=target)
        assert report["vit_eval_masked_l1"] < report["vit_eval_masked_l1_before"], target
