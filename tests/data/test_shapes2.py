"""The shapes2 validation world: deterministic, its own words, natural captions, sidecars the metrics read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lexsearch.data import toyworld
from lexsearch.data.shapes2 import COLOUR_WORDS, SHAPE_WORDS, generate_shapes2, render_scene2
from lexsearch.data.toyworld import read_labels
from lexsearch.errors import UsageError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes2(tmp_path_factory.mktemp("s2") / "w", 30, seed=4)


def test_same_seed_same_bytes_and_image_i_is_stable(tmp_path, world):
    again = generate_shapes2(tmp_path / "again", 30, seed=4)
    for name in ("captions.jsonl", "labels.jsonl", "images/000007.png", "masks/000007.png"):
        assert (again / name).read_bytes() == (world / name).read_bytes()
    assert np.array_equal(render_scene2(6, seed=4).image, np.asarray(Image.open(world / "images/000007.png")))
    with pytest.raises(UsageError):
        generate_shapes2(world, 3, seed=4)  # refuses to overwrite unless asked


def test_words_differ_from_the_toy_world():
    assert {"white", "black", "grey", "pink", "brown"} <= set(COLOUR_WORDS)
    assert {"heart", "hexagon", "crescent", "arrow", "ring"} <= set(SHAPE_WORDS)
    assert not {"white", "black", "grey", "pink", "brown"} & set(toyworld.COLOUR_WORDS)
    assert not {"heart", "hexagon", "crescent", "arrow", "ring"} & set(toyworld.SHAPE_WORDS)


def test_two_natural_captions_per_image_naming_the_largest_shape(world):
    rows = [json.loads(line) for line in (world / "captions.jsonl").read_text().splitlines()]
    labels = read_labels(world)
    assert len(rows) == 2 * 30
    by_image: dict[str, list[str]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row["caption"])
    assert all(len(set(caps)) == 2 for caps in by_image.values())  # two different phrasings
    for image, caps in by_image.items():
        colour, shape = labels[image].largest()
        for cap in caps:
            assert cap[0].isupper() and f"{colour} {shape}" in cap.lower()
    text = " ".join(r["caption"] for r in rows)
    assert "." in text and "," in text
    assert any(p in text for p in ("left", "right", "top", "bottom", "middle", "above", "below", "next to"))


def test_labels_masks_and_coco_agree(world):
    labels = read_labels(world)
    coco = json.loads((world / "annotations" / "instances.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    assert [cats[i] for i in sorted(cats)] == list(SHAPE_WORDS)
    for image in coco["images"][:10]:
        lab = labels[image["file_name"]]
        areas = [s.area for s in lab.shapes]
        assert areas == sorted(areas, reverse=True)  # largest first
        mask = np.asarray(Image.open(world / "masks" / image["file_name"].split("/")[-1]))
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(lab.shapes)
        for ann in anns:
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            assert int(m.sum()) == ann["area"]
            assert (mask[m] == ann["category_id"]).all()
            assert cats[ann["category_id"]] == ann["shape"]
