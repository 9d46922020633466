"""The toy world: determinism, masks consistent with the COCO annotations, labels and captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lexsearch.data.toyworld import (
    COLOUR_RGB,
    COLOUR_WORDS,
    SHAPE_WORDS,
    ToyWorldConfig,
    caption_for,
    generate_toy_world,
    largest_shape,
    load_toy_world,
    read_labels,
    render_scene,
)
from lexsearch.errors import DataError, UsageError


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return generate_toy_world(
        tmp_path_factory.mktemp("toy") / "w", 40, seed=3, image_size=64, captions_per_image=2
    )


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path, world):
    again = generate_toy_world(tmp_path / "again", 40, seed=3, image_size=64, captions_per_image=2)
    assert _tree_bytes(again.root) == _tree_bytes(world.root)
    other = generate_toy_world(tmp_path / "other", 40, seed=4, image_size=64, captions_per_image=2)
    assert _tree_bytes(other.root)["captions.jsonl"] != _tree_bytes(world.root)["captions.jsonl"]


def test_image_i_does_not_depend_on_world_size(world):
    cfg = ToyWorldConfig(image_size=64, captions_per_image=2)
    scene = render_scene(7, seed=3, config=cfg)
    on_disk = np.asarray(Image.open(world.root / "images/000008.png"))
    assert np.array_equal(scene.image, on_disk)


def test_layout_and_captions(world):
    root = world.root
    assert sorted(p.name for p in root.iterdir()) == [
        "annotations",
        "captions.jsonl",
        "images",
        "labels.jsonl",
        "masks",
        "toyworld.json",
    ]
    rows = [json.loads(line) for line in (root / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 80  # two captions per image
    labels = read_labels(root)
    for row in rows:
        assert (root / row["image"]).is_file()
        words = row["caption"].split()
        assert set(words) <= set(world.vocabulary)
        assert row["caption"] == row["caption"].lower()
        shapes = labels[row["image"]].shapes
        # The largest shape is named first.
        colour, shape = largest_shape(labels, row["image"])
        content = [w for w in words if w in COLOUR_WORDS or w in SHAPE_WORDS]
        assert content[:2] == [colour, shape]
        assert content == [w for s in shapes for w in (s.colour, s.shape)]
    with Image.open(root / "images/000001.png") as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert load_toy_world(root).vocabulary == world.vocabulary
    assert world.shape_categories == list(SHAPE_WORDS)


def test_labels_are_bag_of_words_identifiable(world):
    labels = read_labels(world.root).values()
    binding: dict[tuple, set] = {}
    for lab in labels:
        colours = [s.colour for s in lab.shapes]
        shapes = [s.shape for s in lab.shapes]
        assert len(set(colours)) == len(colours) and len(set(shapes)) == len(shapes)
        areas = [s.area for s in lab.shapes]
        assert areas == sorted(areas, reverse=True)
        if len(areas) > 1:
            assert areas[0] >= 1.25 * areas[1]
        bag = (frozenset(colours), frozenset(shapes))
        binding.setdefault(bag, set()).add(frozenset(zip(colours, shapes)))
    # Canonical binding: one colour-shape pairing per bag of words.
    assert all(len(b) == 1 for b in binding.values())


def test_masks_match_annotations_and_labels(world):
    root = world.root
    coco = json.loads((root / "annotations/instances.json").read_text())
    coco_colour = json.loads((root / "annotations/instances_colour.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    assert list(cats.values()) == list(SHAPE_WORDS)
    assert [c["name"] for c in coco_colour["categories"]] == list(COLOUR_WORDS)
    labels = {lab.image_id: lab for lab in read_labels(root).values()}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert {im["id"] for im in coco["images"]} == set(labels)
    for image in coco["images"]:
        class_mask = np.asarray(Image.open(root / image["file_name"].replace("images/", "masks/")))
        pixels = np.asarray(Image.open(root / image["file_name"]))
        rebuilt = np.zeros_like(class_mask)
        anns = by_image[image["id"]]
        assert len(anns) == len(labels[image["id"]].shapes)
        for ann, lab in zip(anns, labels[image["id"]].shapes):
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert m.shape == (image["height"], image["width"])
            assert int(m.sum()) == ann["area"] == lab.area
            assert float(mask_utils.area(ann["segmentation"])) == ann["area"]
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            assert bbox == ann["bbox"] == list(lab.bbox)
            assert cats[ann["category_id"]] == ann["shape"] == lab.shape
            assert not (rebuilt[m] != 0).any()  # instances never overlap
            rebuilt[m] = ann["category_id"]
            # The masked pixels carry the shape's colour (up to jitter): the mask is where it was drawn.
            rgb = pixels[m].astype(int)
            assert np.abs(rgb - np.array(COLOUR_RGB[ann["colour"]])).max() <= ToyWorldConfig().colour_jitter
            assert len(np.unique(rgb, axis=0)) == 1
        assert np.array_equal(rebuilt, class_mask)


def test_options_and_errors(tmp_path, world):
    with pytest.raises(UsageError, match="already holds"):
        generate_toy_world(world.root, 3, seed=3)
    small = generate_toy_world(
        tmp_path / "s", 5, seed=1, image_size=96, max_shapes=1, shapes=("circle", "star")
    )
    assert all(len(lab.shapes) == 1 for lab in small.labels().values())
    assert {lab.shapes[0].shape for lab in small.labels().values()} <= {"circle", "star"}
    (tmp_path / "s" / "keep.txt").write_text("user file")
    generate_toy_world(tmp_path / "s", 2, seed=1, overwrite=True)
    assert (tmp_path / "s" / "keep.txt").exists() and len(list((tmp_path / "s/images").iterdir())) == 2
    for bad in ({"max_shapes": 9}, {"colours": ("red", "mauve")}, {"bogus": 1}, {"captions_per_image": 0}):
        with pytest.raises(UsageError):
            generate_toy_world(tmp_path / "bad", 2, **bad)
    with pytest.raises(DataError):
        load_toy_world(tmp_path / "nowhere")
    with pytest.raises(DataError):
        largest_shape(world.labels(), "images/999999.png")


def test_caption_for():
    assert caption_for([("red", "circle")]) == "a red circle"
    assert (
        caption_for([("orange", "star"), ("blue", "cross")], 1)
        == "a picture of an orange star and a blue cross"
    )
    three = caption_for([("red", "circle"), ("green", "square"), ("blue", "star")])
    assert three == "a red circle and a green square and a blue star"


def test_toy_world_is_a_training_folder(world):
    from lexsearch.data.pairs import load_pairs, split_holdout

    pairs = load_pairs(world.root)
    assert len(pairs) == 80 and len(pairs.images) == 40
    train, val = split_holdout(pairs, 10, seed=0)
    assert len(val.images) == 10 and not set(val.images) & set(train.images)
    labels = world.labels()
    assert all(key in labels for key in pairs.images)
    assert pairs[0].image.size == (64, 64)
