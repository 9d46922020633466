"""Pair sources: caption folders (jsonl, csv), WebDataset shards, bad rows, and the by-image holdout split."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from lexsearch.data.pairs import FolderPairs, ShardPairs, load_pairs, split_holdout
from lexsearch.errors import DataError, UsageError


def _png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _images(root: Path, n: int) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (root / f"img/{i}.png").write_bytes(_png((10 * i, 0, 0)))
        names.append(f"img/{i}.png")
    return names


def _jsonl_folder(root: Path, lines: list[str]) -> Path:
    _images(root, 4)
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


GOOD_JSONL = [
    json.dumps({"image": "img/0.png", "caption": "a red circle"}),
    json.dumps({"image": "img/1.png", "caption": "a blue star"}),
    "",  # blank lines are skipped, not errors
    json.dumps({"image": "img/0.png", "caption": "  a  circle \n that is red "}),
    json.dumps({"image": "img/2.png", "caption": "a green cross"}),
]


def test_jsonl_folder(tmp_path):
    ds = load_pairs(_jsonl_folder(tmp_path, GOOD_JSONL))
    assert isinstance(ds, FolderPairs) and len(ds) == 4
    assert ds.images == ["img/0.png", "img/1.png", "img/2.png"]
    assert ds.captions[2] == "a circle that is red"  # whitespace collapsed
    assert ds.caption_image == [0, 1, 0, 2]
    assert ds.image_captions == [[0, 2], [1], [3]]
    image, caption, key = ds[1]
    assert (caption, key) == ("a blue star", "img/1.png")
    assert image.mode == "RGB" and image.size == (8, 8) and image.getpixel((0, 0)) == (10, 0, 0)
    assert [p.caption for p in ds] == ds.captions
    assert ds.load_image("img/2.png").getpixel((0, 0)) == (20, 0, 0)
    # The caption file itself is also accepted as the source.
    assert len(load_pairs(tmp_path / "captions.jsonl")) == 4


def test_images_are_decoded_lazily(tmp_path):
    root = _jsonl_folder(tmp_path, GOOD_JSONL)
    (root / "img/1.png").write_bytes(b"not a png")
    ds = load_pairs(root)  # loading the list does not decode
    pair = ds[1]
    assert pair.caption == "a blue star"
    with pytest.raises(DataError, match=r"img/1\.png: cannot read image"):
        _ = pair.image


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"image": "img/3.png", "caption": "a', "invalid JSON"),
        (json.dumps({"image": "img/3.png"}), "caption"),
        (json.dumps({"caption": "a red circle"}), "image"),
        (json.dumps({"image": "img/3.png", "caption": "   "}), "caption"),
        (json.dumps({"image": "img/missing.png", "caption": "a star"}), "image file not found"),
        (json.dumps(["img/3.png", "a star"]), "JSON object"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path, bad, message):
    lines = GOOD_JSONL[:3] + [bad] + GOOD_JSONL[3:]  # the bad row is physical line 4
    root = _jsonl_folder(tmp_path, lines)
    with pytest.raises(DataError, match=message) as err:
        load_pairs(root)
    assert f"{root / 'captions.jsonl'}:4:" in str(err.value)


def test_csv_folder(tmp_path):
    _images(tmp_path, 3)
    (tmp_path / "captions.csv").write_text(
        'image,caption\nimg/0.png,a red circle\nimg/1.png,"a blue star, small"\n'
        'img/0.png,"a circle\nin red"\n',
        encoding="utf-8",
    )
    ds = load_pairs(tmp_path)
    assert ds.captions == ["a red circle", "a blue star, small", "a circle in red"]
    assert ds.images == ["img/0.png", "img/1.png"]
    assert ds[2].image.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("image,caption\nimg/0.png,ok\nimg/1.png,\n", 3, "caption"),
        ("image,caption\nimg/0.png,ok\n\nimg/9.png,a star\n", 4, "not found"),
        ("image,caption\nimg/0.png,ok\nimg/1.png\n", 3, "caption"),
        ("image,caption\nimg/0.png,ok\nimg/1.png,a,b\n", 3, "more fields"),
        ("picture,caption\nimg/0.png,ok\n", 1, "header lacks column"),
    ],
)
def test_bad_csv_row_names_file_and_line(tmp_path, text, line, message):
    _images(tmp_path, 2)
    (tmp_path / "captions.csv").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        load_pairs(tmp_path)
    assert f"{tmp_path / 'captions.csv'}:{line}:" in str(err.value)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_pairs(tmp_path / "nothing")
    with pytest.raises(DataError, match="captions.jsonl"):
        load_pairs(tmp_path)
    (tmp_path / "captions.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no image-caption rows"):
        load_pairs(tmp_path)


# --------------------------------------------------------------------------------------------- shards


def _shard(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample["__key__"].decode()
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _shards(root: Path, n_shards: int = 3, per_shard: int = 4) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    captions = []
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            k = s * per_shard + i
            sample = {"__key__": f"{k:06d}".encode(), "png" if k % 2 else "jpg": _png((k, 1, 2))}
            if k % 3 == 0:  # img2dataset style: json metadata with the caption
                sample["json"] = json.dumps({"caption": f"caption {k}", "url": "x"}).encode()
            else:
                sample["txt"] = f"caption {k}".encode()
            samples.append(sample)
            captions.append(f"caption {k}")
        _shard(root / f"{s:05d}.tar", samples)
    return captions


def test_webdataset_shards_with_brace_pattern(tmp_path):
    captions = _shards(tmp_path / "wds")
    ds = load_pairs(f"{tmp_path}/wds/{{00000..00002}}.tar")
    assert isinstance(ds, ShardPairs) and len(ds.urls) == 3
    pairs = list(ds)
    assert [p.caption for p in pairs] == captions
    assert pairs[0].image_key.endswith("00000.tar#000000")
    assert pairs[5].image.getpixel((0, 0)) == (5, 1, 2)  # png survives exactly
    # A folder of tars and a subset pattern work too.
    assert [p.caption for p in load_pairs(tmp_path / "wds")] == captions
    assert len(list(load_pairs(f"{tmp_path}/wds/{{00001..00002}}.tar"))) == 8


def test_shards_split_across_ranks(tmp_path):
    captions = _shards(tmp_path / "wds", n_shards=4, per_shard=2)
    ds = load_pairs(tmp_path / "wds")
    parts = [[p.caption for p in ds.iterate(rank=r, world_size=2)] for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(captions)
    shuffled = [p.caption for p in ds.iterate(shuffle=True, seed=1, shuffle_buffer=4)]
    assert sorted(shuffled) == sorted(captions)
    assert shuffled == [p.caption for p in ds.iterate(shuffle=True, seed=1, shuffle_buffer=4)]
    with pytest.raises(UsageError):
        next(ds.iterate(rank=2, world_size=2))


def test_bad_shards(tmp_path):
    with pytest.raises(DataError, match=r"00000\.tar: shard not found"):
        load_pairs(f"{tmp_path}/{{00000..00001}}.tar")
    _shard(tmp_path / "00000.tar", [{"__key__": b"k1", "png": _png((1, 2, 3)), "txt": b"ok"}])
    _shard(tmp_path / "00001.tar", [{"__key__": b"k2", "png": _png((1, 2, 3))}])
    with pytest.raises(DataError, match=r"00001\.tar: sample k2: no caption"):
        list(load_pairs(f"{tmp_path}/{{00000..00001}}.tar"))
    _shard(tmp_path / "00001.tar", [{"__key__": b"k3", "txt": b"no image"}])
    with pytest.raises(DataError, match=r"00001\.tar: sample k3: no image"):
        list(load_pairs(f"{tmp_path}/{{00000..00001}}.tar"))
    _shard(tmp_path / "00001.tar", [{"__key__": b"k4", "png": _png((1, 2, 3)), "txt": b"  "}])
    with pytest.raises(DataError, match=r"00001\.tar: sample k4: empty caption"):
        list(load_pairs(f"{tmp_path}/{{00000..00001}}.tar"))
    (tmp_path / "00001.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match=r"00001\.tar: cannot read shard \(ReadError"):
        list(load_pairs(f"{tmp_path}/{{00000..00001}}.tar"))


# --------------------------------------------------------------------------------------------- holdout


def test_split_holdout_by_image_is_deterministic(tmp_path):
    names = _images(tmp_path, 10)
    rows = [{"image": n, "caption": f"caption {i} {j}"} for i, n in enumerate(names) for j in range(3)]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_pairs(tmp_path)
    train, val = split_holdout(ds, 3, seed=7)
    assert len(val.images) == 3 and len(train.images) == 7
    assert not set(train.images) & set(val.images)
    assert len(val) == 9 and len(train) == 21  # all three captions of an image stay together
    assert all(
        val.captions[i].split()[1] == val.images[j].split("/")[1][:-4]
        for i, j in enumerate(val.caption_image)
    )
    again_train, again_val = split_holdout(ds, 3, seed=7)
    assert again_val.images == val.images and again_train.captions == train.captions
    assert len(split_holdout(ds, 0.2, seed=0)[1].images) == 2
    for bad in (0, 10, 1.0, 0.0, True):
        with pytest.raises(UsageError):
            split_holdout(ds, bad, seed=0)


def test_split_holdout_for_shards(tmp_path):
    captions = _shards(tmp_path / "wds", n_shards=3, per_shard=4)
    ds = load_pairs(tmp_path / "wds")
    train, val = split_holdout(ds, 5)
    assert isinstance(val, FolderPairs) and len(val) == 5
    train_caps = [p.caption for p in train]
    assert len(train_caps) == 7 and not set(train_caps) & set(val.captions)
    assert sorted(train_caps + val.captions) == sorted(captions)
    assert val[0].image.size == (8, 8)
    with pytest.raises(UsageError):
        split_holdout(ds, 0.1)
    with pytest.raises(UsageError):
        split_holdout(ds, 100)


def test_datasets_and_pairs_pickle(tmp_path):
    # DataLoader workers started by spawn/forkserver receive datasets (and return pairs) by pickle.
    import pickle

    folder = load_pairs(_jsonl_folder(tmp_path / "f", GOOD_JSONL))
    _shards(tmp_path / "wds", n_shards=2, per_shard=2)
    shards = load_pairs(tmp_path / "wds")
    train, val = split_holdout(shards, 1)
    for ds in (folder, shards, train, val):
        copy = pickle.loads(pickle.dumps(ds))
        assert [p.caption for p in copy] == [p.caption for p in ds]
    pair = pickle.loads(pickle.dumps(folder[3]))
    assert pair.image.getpixel((0, 0)) == (20, 0, 0)
    pair = pickle.loads(pickle.dumps(next(iter(shards))))
    assert pair.image.getpixel((0, 0)) == (0, 1, 2)
    assert pickle.loads(pickle.dumps(val))[0].image.size == (8, 8)
