"""The contrastive self-supervised tiny-ViT recipe: views that keep shape and change colour and geometry."""

from __future__ import annotations

import torch

from lexsearch.tiny import ssl_contrast as C
from lexsearch.tiny.corpus import corpus_pixels


def _tiny():
    from lexsearch.model.presets import preset_config

    return preset_config("tiny")


def _patches(v: torch.Tensor, patch: int = 8) -> torch.Tensor:
    b, c, s, _ = v.shape
    g = s // patch
    return v.view(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)


def test_matched_patches_of_two_views_show_the_same_image_point(monkeypatch):
    x = corpus_pixels(range(24), seed=5, model_config=_tiny()).permute(0, 3, 1, 2).float() / 255
    monkeypatch.setattr(C, "recolour", lambda y, gen: y)  # geometry only, to compare pixels
    gen = torch.Generator().manual_seed(0)
    va, mat_a, off_a = C.make_views(x, gen, min_scale=0.9)
    vb, mat_b, off_b = C.make_views(x, gen, min_scale=0.9)
    match = C._matches(mat_a, off_a, mat_b, off_b, 8)
    assert match.shape == (24, 64) and (match >= 0).float().mean() > 0.5
    b, p = torch.nonzero(match >= 0, as_tuple=True)
    pa, pb = _patches(va), _patches(vb)
    same = (pa[b, p] - pb[b, match[b, p]]).abs().mean()
    shuffled = (pa[b, p] - pb[b, match[b, p].roll(1)]).abs().mean()
    assert same < 0.6 * shuffled


def test_colour_views_change_colour_and_keep_outlines():
    x = torch.zeros(64, 3, 16, 16)
    x[:, 0, 4:12, 4:12] = 1.0  # a red square on black
    y = C.recolour(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    inside, outside = y[:, :, 4:12, 4:12].mean((2, 3)), y[:, :, :2, :2].mean((2, 3))
    assert (inside - outside).abs().sum(1).gt(0.1).float().mean() > 0.9  # the square still stands out
    assert inside.std(0).max() > 0.2  # ... in many different colours


def test_contrastive_pretraining_learns_to_match_views():
    from transformers import Dinov2Config, Dinov2Model

    cfg = _tiny()
    images = corpus_pixels(range(16), seed=2, model_config=cfg)
    torch.manual_seed(0)
    small = dict(cfg.vision_config, hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    vision = Dinov2Model(Dinov2Config(**small))
    seen = []
    first = C.pretrain_vision_contrastive(vision, images, steps=1, batch_size=8, lr=0.0)
    report = C.pretrain_vision_contrastive(
        vision, images, steps=40, batch_size=8, lr=3e-3, progress=lambda *a: seen.append(a[3])
    )
    assert len(seen) == 40
    tail = sum(m["loss"] for m in seen[-10:]) / 10
    assert tail < first["loss"] - 0.3 and report["dense_nce"] > 0
