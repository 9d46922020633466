"""Retrieval test sets: the Karpathy split reader and its errors, and pairs grouped by image."""

from __future__ import annotations

import json

import pytest

from lexsearch.data.karpathy import load_karpathy, retrieval_set_from_pairs
from lexsearch.errors import DataError


def _karpathy(tmp_path, images):
    f = tmp_path / "dataset_coco.json"
    f.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return f


def test_karpathy_reader(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    (root / "val2014" / "a.jpg").write_bytes(b"x")
    (root / "b.jpg").write_bytes(b"x")  # flattened layout is found too
    f = _karpathy(
        tmp_path,
        [
            {
                "filename": "a.jpg",
                "filepath": "val2014",
                "split": "test",
                "sentences": [{"raw": f" cap a{i} "} for i in range(7)],
            },
            {
                "filename": "b.jpg",
                "filepath": "val2014",
                "split": "test",
                "sentences": [{"raw": "cap b0"}, {"tokens": ["cap", "b1"]}],
            },
            {"filename": "c.jpg", "filepath": "train2014", "split": "train", "sentences": [{"raw": "x"}]},
        ],
    )
    ds = load_karpathy(f, root, "test")
    assert ds.image_paths == [root / "val2014" / "a.jpg", root / "b.jpg"]
    assert ds.captions == [f"cap a{i}" for i in range(5)] + ["cap b0", "cap b1"]  # first five per image
    assert ds.caption_image.tolist() == [0] * 5 + [1] * 2
    assert load_karpathy(f, root, "test", max_captions_per_image=None).n_captions == 9

    with pytest.raises(DataError, match="no images in split 'val'.*test \\(2\\), train \\(1\\)"):
        load_karpathy(f, root, "val")
    with pytest.raises(DataError, match="1 image\\(s\\) of split 'train'.*c.jpg"):
        load_karpathy(f, root, "train")
    with pytest.raises(DataError, match="not found"):
        load_karpathy(tmp_path / "nope.json", root)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_karpathy(bad, root)
    with pytest.raises(DataError, match="'images' list"):
        load_karpathy(_karpathy(tmp_path, None), root)
    with pytest.raises(DataError, match="missing 'split'"):
        load_karpathy(_karpathy(tmp_path, [{"filename": "a.jpg", "sentences": []}]), root)


def test_pairs_grouped_by_image():
    ds = retrieval_set_from_pairs([("x.png", "a"), ("y.png", "b"), ("x.png", "c")])
    assert [p.name for p in ds.image_paths] == ["x.png", "y.png"]
    assert ds.caption_image.tolist() == [0, 1, 0]
