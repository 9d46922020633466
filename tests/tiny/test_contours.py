"""Surrogate contour classes (lexsearch/tiny/contours.py): label-free targets for the tiny ViT."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from lexsearch.tiny.contours import (
    N_COLOUR_BINS,
    ContourBank,
    colour_bin,
    contour_targets,
    render_contour_image,
)


def _tiny():
    from lexsearch.model.presets import preset_config

    return preset_config("tiny")


def test_rendering_is_deterministic_and_seeded():
    bank = ContourBank(16, seed=4)
    a, mask_a, obj_a = render_contour_image(bank, 7, seed=4)
    b, mask_b, obj_b = render_contour_image(ContourBank(16, seed=4), 7, seed=4)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and obj_a == obj_b
    c, _, _ = render_contour_image(ContourBank(16, seed=5), 7, seed=5)
    assert not np.array_equal(a, c)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_the_mask_names_only_visible_objects_and_their_classes():
    bank = ContourBank(32, seed=1)
    for i in range(20):
        _, mask, objects = render_contour_image(bank, i, seed=1)
        visible = set(np.unique(mask[mask > 0]) - 1)
        assert visible == {c for c, _ in objects}
        assert all(0 <= c < 32 and 0 <= b < N_COLOUR_BINS for c, b in objects)


def _silhouette(bank: ContourBank, c: int, rng, angle: float) -> np.ndarray:
    from lexsearch.tiny.contours import _draw

    parts, holes = bank.outline(c, rng)
    return _draw(parts, holes, angle, False, 32, 32, 24, 64)


def test_a_class_is_one_outline_and_classes_differ():
    """Two instances of a class (own jitter, same pose) overlap far more than instances of two classes."""
    bank = ContourBank(40, seed=2)
    rng = np.random.default_rng(0)

    def iou(a, b):
        return (a & b).sum() / max(1, (a | b).sum())

    same = [iou(_silhouette(bank, c, rng, 0.0), _silhouette(bank, c, rng, 0.0)) for c in range(40)]
    other = [iou(_silhouette(bank, c, rng, 0.0), _silhouette(bank, c + 1, rng, 0.0)) for c in range(39)]
    assert np.median(same) > 0.85
    assert np.median(other) < np.median(same) - 0.1


@pytest.mark.parametrize(
    "rgb,kind",
    [((250, 250, 250), "grey"), ((5, 5, 5), "grey"), ((128, 128, 128), "grey"), ((230, 20, 20), "hue")],
)
def test_colour_bins_keep_greys_apart_from_hues(rgb, kind):
    b = colour_bin(np.array(rgb))
    assert 0 <= b < N_COLOUR_BINS
    assert (b < 5) == (kind == "grey")


def test_colour_bins_tell_hues_and_lightness_apart():
    bins = {colour_bin(np.array(colorsys.hsv_to_rgb(h / 12 + 0.01, 0.9, 0.9)) * 255) for h in range(12)}
    assert len(bins) == 12
    assert colour_bin(np.array([250, 250, 250])) != colour_bin(np.array([5, 5, 5]))


def test_targets_have_the_pretraining_form():
    cfg = _tiny()
    patch = int(cfg.vision_config["patch_size"])
    t = contour_targets(range(6), seed=3, n_classes=24, model_config=cfg, patch_size=patch)
    size = cfg.vision_config["image_size"]  # the ViT's pretraining size, not the preset's input size
    grid = (size // patch) ** 2
    assert t.pixels.shape == (6, 3, size, size)
    assert t.patch_shape.shape == (6, grid) and t.patch_colour.shape == (6, grid)
    assert len(t.shapes) == 24 and len(t.colours) == N_COLOUR_BINS
    assert t.present.shape == (6, 24 + N_COLOUR_BINS)
    # A foreground patch has a colour bin, a background one none; presence agrees with the patches.
    fg = t.patch_shape > 0
    assert fg.any() and (t.patch_colour[fg] > 0).all() and (t.patch_colour[~fg] == 0).all()
    for row in range(6):
        for c in set(t.patch_shape[row][fg[row]].tolist()):
            assert t.present[row, c - 1] == 1.0
    # Nothing names a shape of any world: the classes are numbered outlines.
    assert all(name.startswith("outline") for name in t.shapes)


def test_outline_descriptors_tell_shapes_apart_and_ignore_pose():
    from lexsearch.tiny.contours import N_GEOMETRY, outline_geometry
    from lexsearch.tiny.corpus import _outline

    rng = np.random.default_rng(0)
    disc, ring, cross = (outline_geometry(*_outline(f, rng)) for f in ("ellipse", "ring", "cross"))
    assert disc.shape == (N_GEOMETRY,)
    # hole share: a ring has one, a cross and a disc none; solidity: a cross is far from convex
    assert ring[2] > 0.1 and disc[2] < 0.02 and cross[2] < 0.02
    assert cross[1] < 0.8 < disc[1]
    # A rotated copy of an outline has (almost) the same descriptors.
    parts, holes = _outline("arrow", rng)
    turn = np.array([[0.0, 1.0], [-1.0, 0.0]])
    a = outline_geometry(parts, holes)
    b = outline_geometry([p @ turn for p in parts], [h @ turn for h in holes])
    assert np.abs(a[:13] - b[:13]).max() < 0.05


def test_pretraining_learns_the_descriptors():
    from dataclasses import replace

    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lexsearch.tiny.config import PretrainConfig
    from lexsearch.tiny.vision import pretrain_vision

    cfg = _tiny()
    patch = int(cfg.vision_config["patch_size"])
    t = contour_targets(range(24), seed=6, n_classes=4, model_config=cfg, patch_size=patch)
    torch.manual_seed(0)
    small = dict(cfg.vision_config, hidden_size=32, num_attention_heads=2, num_hidden_layers=1)
    vision = Dinov2Model(Dinov2Config(**small))
    fast = replace(PretrainConfig(), vit_batch_size=8, vit_lr=3e-3)
    report = pretrain_vision(vision, t, fast, steps=60, eval_targets=t)
    fg = t.patch_shape > 0
    baseline = float(((t.patch_geometry[fg] - t.patch_geometry[fg].mean(0)) ** 2).mean())
    # Better than the best constant guess (a fresh head is far worse than that).
    assert report["vit_eval_geometry_mse"] < 0.97 * baseline


def test_a_silhouette_keeps_the_outline_and_drops_place_and_size():
    """The silhouette target tells a square from the same square turned 45 degrees (which rotation-invariant
    descriptors cannot), is the column-reversed one for a mirrored object, and ignores where and how large
    the object is drawn."""
    from lexsearch.tiny.contours import SILHOUETTE_SIDE, silhouette

    square = [np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])]
    upright, turned = silhouette(square, [], 0.0, False), silhouette(square, [], np.pi / 4, False)
    assert upright.shape == (SILHOUETTE_SIDE**2,)
    assert upright.min() > 0.9  # a square fills its bounding square
    assert np.abs(upright - turned).mean() > 0.2  # a diamond leaves its corners empty
    arrow = [np.array([[-1, -0.2], [0.2, -0.2], [0.2, -0.6], [1, 0], [0.2, 0.6], [0.2, 0.2], [-1, 0.2]])]
    a = silhouette(arrow, [], 0.7, False).reshape(SILHOUETTE_SIDE, -1)
    m = silhouette(arrow, [], -0.7, True).reshape(SILHOUETTE_SIDE, -1)
    assert np.abs(a[:, ::-1] - m).max() < 0.15
    assert np.abs(a - m).mean() > 0.1


def test_silhouette_targets_follow_their_object_and_a_flip():
    import torch

    cfg = _tiny()
    patch = int(cfg.vision_config["patch_size"])
    t = contour_targets(range(8), seed=3, n_classes=24, model_config=cfg, patch_size=patch, silhouette_side=8)
    from lexsearch.tiny.contours import N_GEOMETRY

    assert t.patch_geometry.shape[-1] == N_GEOMETRY + 64
    sil = t.patch_geometry[..., N_GEOMETRY:]
    fg = t.patch_shape > 0
    assert sil[fg].min() >= -1 and sil[fg].max() <= 1 and (sil[~fg] == 0).all()
    # Patches of one object share its silhouette (a class is one object here but for rare repeats).
    for row in range(8):
        per_class: dict[int, set] = {}
        for p in torch.nonzero(fg[row]).flatten().tolist():
            per_class.setdefault(int(t.patch_shape[row, p]), set()).add(tuple(sil[row, p].tolist()))
        assert all(len(v) <= 2 for v in per_class.values())
        assert sum(len(v) == 1 for v in per_class.values()) >= len(per_class) - 1
    # Under a horizontal flip a silhouette's columns swap and the descriptors stay.
    flip = t.geometry_flip
    assert torch.equal(flip[flip], torch.arange(len(flip)))
    assert torch.equal(flip[:N_GEOMETRY], torch.arange(N_GEOMETRY))
    assert int(flip[N_GEOMETRY]) == N_GEOMETRY + 7


def test_family_objects_are_one_unnamed_class_with_their_own_descriptors():
    cfg = _tiny()
    patch = int(cfg.vision_config["patch_size"])
    t = contour_targets(
        range(12),
        seed=3,
        n_classes=24,
        model_config=cfg,
        patch_size=patch,
        silhouette_side=8,
        family_share=1.0,
    )
    from lexsearch.tiny.contours import N_GEOMETRY

    fg = t.patch_shape > 0
    # Every object is a family object: one class past the bank's, never a family's name.
    assert set(t.patch_shape[fg].tolist()) == {25} and t.shapes[-1] == "outline24" and len(t.shapes) == 25
    descriptors = {tuple(v) for v in t.patch_geometry[fg][:, :N_GEOMETRY].tolist()}
    assert len(descriptors) > 5  # measured per instance, not one row for the class


def test_cluster_classes_are_shared_by_an_object_kept_under_a_flip_and_given_to_held_out_sets():
    import torch

    from lexsearch.tiny.contours import cluster_targets

    cfg = _tiny()
    patch = int(cfg.vision_config["patch_size"])
    kw = dict(seed=3, n_classes=24, model_config=cfg, patch_size=patch, silhouette_side=8, family_share=0.5)
    train, held = contour_targets(range(60), **kw), contour_targets(range(60, 80), **kw)
    mirrored = contour_targets(range(60, 80), **kw)
    mirrored.patch_geometry = mirrored.patch_geometry[..., mirrored.geometry_flip]  # every object flipped
    geometry_before = train.patch_geometry.clone()
    cluster_targets(train, [held, mirrored], k=12, seed=0)
    assert torch.equal(held.patch_shape, mirrored.patch_shape)
    assert train.shapes == held.shapes == [f"cluster{c}" for c in range(12)]
    for t in (train, held):
        fg = t.patch_shape > 0
        assert fg.any() and t.patch_shape.max() <= 12 and (t.patch_shape[~fg] == 0).all()
        # Same regression target (same object) -> same class.
        for row in range(t.patch_shape.shape[0]):
            seen: dict[tuple, int] = {}
            for p in torch.nonzero(fg[row]).flatten().tolist():
                key = tuple(t.patch_geometry[row, p].tolist())
                assert seen.setdefault(key, int(t.patch_shape[row, p])) == int(t.patch_shape[row, p])
        assert t.present.shape[1] == 12 + N_COLOUR_BINS
    assert torch.equal(train.patch_geometry, geometry_before)  # the regression targets are untouched
    assert len(set(train.patch_shape[train.patch_shape > 0].tolist())) > 6  # the classes are used
