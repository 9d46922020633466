"""--data reads a COCO captions file (with its image folder) and a Karpathy split file (--split)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from lexsearch.cli import cli
from lexsearch.data.pairs import FolderPairs, load_pairs
from lexsearch.errors import DataError
from lexsearch.train.batches import load_data
from lexsearch.train.config import train_config


def _image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def coco(tmp_path):
    """COCO's own layout: annotations/captions_train2017.json beside train2017/."""
    for i, colour in ((1, "red"), (2, "blue"), (3, "green")):
        _image(tmp_path / "train2017" / f"{i:012d}.jpg", colour)
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 8, "width": 8} for i in (1, 2, 3)],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A red square."},
            {"id": 11, "image_id": 2, "caption": "a  blue\nsquare"},
            {"id": 12, "image_id": 1, "caption": "Something red"},
            {"id": 13, "image_id": 3, "caption": "green"},
        ],
    }
    path = tmp_path / "annotations" / "captions_train2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    return path


def test_coco_captions_file_with_its_image_folder(coco):
    pairs = load_pairs(coco)
    assert isinstance(pairs, FolderPairs) and len(pairs) == 4
    assert pairs.captions == ["A red square.", "a blue square", "Something red", "green"]
    assert pairs.image_captions[0] == [0, 2]  # both captions of image 1
    assert pairs[1].image.getpixel((0, 0))[2] > 200  # blue, read from train2017/
    cfg = train_config("tiny", data=str(coco), out="o", val_holdout=1)
    train, val = load_data(cfg)
    assert len(train.images) == 2 and len(val.images) == 1


def test_coco_image_folder_can_be_given(coco, tmp_path):
    moved = tmp_path / "elsewhere"
    (tmp_path / "train2017").rename(moved)
    with pytest.raises(DataError, match="not under") as err:
        load_pairs(coco)
    assert "\n" not in str(err.value)
    assert len(load_pairs(coco, images=moved)) == 4


@pytest.fixture
def karpathy(tmp_path):
    entries = []
    for n, (split, folder) in enumerate(
        (("train", "train2014"), ("restval", "val2014"), ("test", "val2014"))
    ):
        name = f"COCO_{folder}_{n:012d}.jpg"
        _image(tmp_path / folder / name, "red")
        sents = [{"raw": f"caption {n} {k}", "tokens": []} for k in range(2)]
        entries.append({"filename": name, "filepath": folder, "split": split, "sentences": sents})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def test_karpathy_split_file_as_training_data(karpathy):
    train = load_pairs(karpathy, split="train")
    assert train.captions == ["caption 0 0", "caption 0 1"] and len(train.images) == 1
    assert train[0].image.size == (8, 8)
    both = load_pairs(karpathy, split="train+restval")
    assert len(both) == 4 and len(both.images) == 2
    with pytest.raises(DataError, match="no images in split 'val'"):
        load_pairs(karpathy, split="val")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"foo": 1}', "neither a COCO captions file"),
        (
            '{"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 2, "caption": "c"}]}',
            "image 2",
        ),
        ('{"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1}]}', "no caption"),
    ],
)
def test_bad_json_data_is_one_line_and_a_nonzero_exit(tmp_path, content, message):
    path = tmp_path / "captions_train2017.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_pairs(path)
    result = CliRunner().invoke(cli, ["train", "--data", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
