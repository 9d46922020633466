"""Image-caption pairs for training and evaluation, from the three ``--data`` formats of issue 3.

- a folder with ``captions.jsonl``: one ``{"image": "relative/path", "caption": "..."}`` a line; an image may
  appear on several lines with different captions;
- a folder with ``captions.csv``: columns ``image`` and ``caption`` (header row required);
- WebDataset tar shards, e.g. ``cc12m/{00000..01242}.tar`` (brace patterns) or a folder of ``*.tar``: each
  sample has an image (``jpg``/``jpeg``/``png``/``webp``) and a caption (``txt``, or ``json`` with a
  ``caption`` field), the layout img2dataset writes for CC-3M / CC-12M.

:func:`load_pairs` returns a :class:`FolderPairs` (map-style: ``len``, indexing, the unique images and the
caption -> image mapping that retrieval evaluation needs) or a :class:`ShardPairs` (streaming, split across
ranks and DataLoader workers). Images are decoded only when a :class:`Pair`'s ``image`` is read. Bad rows
raise :class:`~lexsearch.errors.DataError` naming the file and the line (or the shard and the sample key).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from lexsearch.errors import DataError, UsageError

if TYPE_CHECKING:
    from lexsearch.data.karpathy import RetrievalSet

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_FILES = ("captions.jsonl", "captions.csv")


def _decode(source: str | io.BytesIO, name: str) -> Image.Image:
    """Decode to RGB with EXIF rotation applied; DataError naming the file or sample if it is not an image."""
    # The loader every command uses: the same megapixel guard (Pillow's own is off), 16-bit rescaling and
    # transparency on white, so a model trains on images as the indexer will show them to it.
    from lexsearch.model.images import MAX_MEGAPIXELS, describe_error, load_image

    try:
        # Given a path, PIL opens and closes the file itself, so no handle outlives the decode.
        return load_image(source, max_pixels=int(MAX_MEGAPIXELS * 1e6))[0]
    except Exception as exc:  # whatever a decoder raises for a bad file
        raise DataError(f"{name}: cannot read image ({describe_error(exc)})") from exc


# Loaders are module-level functions / small classes bound with functools.partial rather than closures, so
# datasets and pairs pickle: DataLoader workers started by spawn/forkserver receive the dataset by pickle.
def decode_file(path: str) -> Image.Image:
    """Decode an image file to RGB (DataError naming the file if it is not an image)."""
    return _decode(path, path)


def decode_bytes(data: bytes, name: str) -> Image.Image:
    """Decode encoded image bytes (e.g. a WebDataset member) to RGB; ``name`` is used in errors."""
    return _decode(io.BytesIO(data), name)


@dataclass(frozen=True)
class _FileLoader:
    root: str

    def __call__(self, key: str) -> Image.Image:
        return decode_file(str(Path(self.root) / key))


@dataclass(frozen=True)
class _HeldLoader:
    """Loads the held-out shard samples kept in memory (key -> zero-argument loader)."""

    loaders: dict[str, Callable[[], Image.Image]]

    def __call__(self, key: str) -> Image.Image:
        return self.loaders[key]()


@dataclass
class Pair:
    """One (image, caption) pair. ``image`` is decoded on first access; unpacks as (image, caption, key)."""

    image_key: str  # folders: the relative path as written in the caption file; shards: "<shard>#<key>"
    caption: str
    _load: Callable[[], Image.Image] = field(repr=False, compare=False)
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Image.Image:
        """The RGB image (decoded now if it was not yet)."""
        if self._image is None:
            self._image = self._load()
        return self._image

    def __iter__(self) -> Iterator[object]:
        # Allows `image, caption, key = pair`.
        yield self.image
        yield self.caption
        yield self.image_key


class PairDataset:
    """Base class of the pair sources; iterate to get :class:`Pair` items."""

    source: str  # what the user passed, for messages

    def __iter__(self) -> Iterator[Pair]:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- folders


class FolderPairs(PairDataset):
    """Map-style pairs: captions in order, with the unique images and the caption <-> image mapping.

    Also used for in-memory pairs (held out from shards): then ``loader`` decodes bytes instead of files.
    """

    def __init__(
        self,
        source: str,
        image_keys: list[str],
        captions: list[str],
        loader: Callable[[str], Image.Image],
    ) -> None:
        self.source = source
        self.captions: list[str] = list(captions)
        self._loader = loader
        self.images: list[str] = []  # unique image keys, in order of first appearance
        position: dict[str, int] = {}
        self.caption_image: list[int] = []  # caption i -> index into self.images (its ground-truth image)
        for key in image_keys:
            if key not in position:
                position[key] = len(self.images)
                self.images.append(key)
            self.caption_image.append(position[key])
        self.image_captions: list[list[int]] = [[] for _ in self.images]  # image j -> its caption indices
        for i, j in enumerate(self.caption_image):
            self.image_captions[j].append(i)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> Pair:
        key = self.images[self.caption_image[i]]
        return Pair(key, self.captions[i], partial(self._loader, key))

    def __iter__(self) -> Iterator[Pair]:
        for i in range(len(self)):
            yield self[i]

    def load_image(self, key: str) -> Image.Image:
        """Decode one image by key (e.g. an entry of ``images`` for image-side retrieval evaluation)."""
        return self._loader(key)

    def subset_images(self, image_indices: list[int]) -> FolderPairs:
        """The pairs whose image is in ``image_indices`` (all of that image's captions, original order)."""
        keep = set(image_indices)
        rows = [i for i, j in enumerate(self.caption_image) if j in keep]
        return FolderPairs(
            self.source,
            [self.images[self.caption_image[i]] for i in rows],
            [self.captions[i] for i in rows],
            self._loader,
        )


def _check_row(
    path: Path, lineno: int, image: object, caption: object, root: Path, seen: set[str]
) -> tuple[str, str]:
    where = f"{path}:{lineno}"
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: missing or empty 'image'")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: missing or empty 'caption'")
    image = image.strip()
    if image not in seen:
        # One stat per unique image: a typo'd path fails here, with its line, rather than mid-training.
        if not (root / image).is_file():
            raise DataError(f"{where}: image file not found: {root / image}")
        seen.add(image)
    # Collapse whitespace so "a  red\ncircle" and "a red circle" are one caption for tokenizers and eval.
    return image, " ".join(caption.split())


def _read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    root, images, captions, seen = path.parent, [], [], set()
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object with 'image' and 'caption'")
            image, caption = _check_row(path, lineno, row.get("image"), row.get("caption"), root, seen)
            images.append(image)
            captions.append(caption)
    return images, captions


def _read_csv(path: Path) -> tuple[list[str], list[str]]:
    root, images, captions, seen = path.parent, [], [], set()
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            fields = reader.fieldnames or []
            missing = [c for c in ("image", "caption") if c not in fields]
            if missing:
                raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)} (found: {fields})")
            for row in reader:
                # line_num is the last physical line read, which names the row even with quoted newlines.
                lineno = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                if None in row:
                    raise DataError(f"{path}:{lineno}: more fields than the header has columns")
                image, caption = _check_row(path, lineno, row.get("image"), row.get("caption"), root, seen)
                images.append(image)
                captions.append(caption)
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from exc
    return images, captions


def load_folder(folder: str | Path) -> FolderPairs:
    """Pairs from a folder holding ``captions.jsonl`` (preferred if both exist) or ``captions.csv``."""
    folder = Path(folder)
    present = [folder / name for name in CAPTION_FILES if (folder / name).is_file()]
    if not present:
        raise DataError(f"{folder}: no {' or '.join(CAPTION_FILES)} found")
    path = present[0]
    if len(present) > 1:
        logger.warning("%s: both captions.jsonl and captions.csv exist; using captions.jsonl", folder)
    images, captions = _read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path)
    if not captions:
        raise DataError(f"{path}: no image-caption rows")
    logger.info("%s: %d captions of %d images", path, len(captions), len(set(images)))
    return FolderPairs(str(folder), images, captions, _FileLoader(str(folder)))


# --------------------------------------------------------------------------------------------- shards


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_shards(spec: str) -> list[str]:
    """Shard URLs from a brace pattern (``dir/{00000..00012}.tar``), a ``::``-joined list or a folder of tars.

    Local shards must exist (DataError names the first missing one); remote ones are left to webdataset.
    """
    from braceexpand import braceexpand  # a webdataset dependency

    path = Path(spec)
    if "{" not in spec and "::" not in spec and path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise DataError(f"{spec}: no *.tar shards in this folder")
        return urls
    urls = [u for part in spec.split("::") for u in braceexpand(part)]
    for url in urls:
        if not _is_remote(url) and not Path(url).is_file():
            raise DataError(f"{url}: shard not found (from {spec!r})")
    return urls


def _sample_to_pair(sample: dict) -> Pair:
    url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
    where = f"{url}: sample {key}"
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        found = sorted(k for k in sample if not k.startswith("__"))
        raise DataError(f"{where}: no image ({'/'.join(IMAGE_EXTENSIONS)}); members: {found}")
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8", errors="replace")
    elif "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
            raise DataError(f"{where}: invalid json member ({exc})") from exc
    else:
        raise DataError(f"{where}: no caption (txt, or json with 'caption')")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: empty caption")
    data = sample[ext]
    return Pair(f"{url}#{key}", " ".join(caption.split()), partial(decode_bytes, data, where))


@dataclass
class ShardPairs(PairDataset):
    """Streaming pairs from WebDataset shards (no length; one image and one caption per sample)."""

    source: str
    urls: list[str]
    exclude: frozenset[str] = frozenset()  # image keys ("<shard>#<key>") held out by split_holdout

    def __iter__(self) -> Iterator[Pair]:
        return self.iterate()

    def iterate(
        self,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        shuffle_buffer: int = 1000,
    ) -> Iterator[Pair]:
        """Iterate this rank's share of the shards (and this DataLoader worker's share of that).

        With ``shuffle``, the shard order is permuted by ``(seed, epoch)`` identically on every rank before
        shards are dealt out, and samples are mixed in a buffer of ``shuffle_buffer``. Shards are dealt
        round-robin, so use at least ``world_size * num_workers`` shards or some workers get none.
        """
        import webdataset as wds  # heavy import, only for shard sources

        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside world size {world_size}")

        def deal(src: Iterator[dict]) -> Iterator[dict]:
            shards = list(src)
            if shuffle:
                random.Random(f"{seed}:{epoch}").shuffle(shards)
            yield from shards[rank::world_size]

        stages: list = [
            wds.SimpleShardList(self.urls),
            deal,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.reraise_exception),
        ]
        if shuffle and shuffle_buffer > 1:
            stages.append(wds.shuffle(shuffle_buffer, rng=random.Random(f"{seed}:{epoch}:{rank}")))
        try:
            for sample in wds.DataPipeline(*stages):
                pair = _sample_to_pair(sample)
                if pair.image_key not in self.exclude:
                    yield pair
        except DataError:
            raise
        except Exception as exc:  # tar/IO errors from webdataset: say which shard, keep the cause
            # webdataset appends (stream, url) to the exception's args; the url names the broken shard.
            args = exc.args if exc.args else (str(exc),)
            url = next((a for a in reversed(args[1:]) if isinstance(a, str)), self.source)
            raise DataError(f"{url}: cannot read shard ({type(exc).__name__}: {args[0]})") from exc


def load_shards(spec: str) -> ShardPairs:
    """Streaming pairs from WebDataset shards; see :func:`expand_shards` for ``spec``."""
    return ShardPairs(spec, expand_shards(spec))


# --------------------------------------------------------------------------------------------- API


def load_pairs(
    source: str | Path, images: str | Path | None = None, split: str = "train"
) -> FolderPairs | ShardPairs:
    """Open a ``--data`` source: a caption folder (jsonl/csv), WebDataset shards (pattern or tar folder), or
    a COCO captions / Karpathy split ``.json`` file (images under ``images``, Karpathy's ``split``; see
    :mod:`lexsearch.data.coco`).

    Raises DataError for a missing source or bad rows (message names the file and line).
    """
    spec = str(source)
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".json":
        from lexsearch.data.coco import load_json_pairs

        listed = load_json_pairs(path, images, split)
        return FolderPairs(listed.source, listed.keys, listed.captions, _FileLoader(listed.root))
    if path.is_dir():
        if any((path / name).is_file() for name in CAPTION_FILES):
            return load_folder(path)
        if any(path.glob("*.tar")):
            return load_shards(spec)
        raise DataError(f"{path}: neither {' nor '.join(CAPTION_FILES)} nor *.tar shards found")
    if path.is_file() and path.name in CAPTION_FILES:
        return load_folder(path.parent)
    if ".tar" in spec or "{" in spec or _is_remote(spec):
        return load_shards(spec)
    raise DataError(
        f"{spec}: not found (expected a folder with captions.jsonl/.csv, .tar shards, or a COCO / Karpathy "
        ".json caption file)"
    )


def load_caption_folder(folder: str | Path) -> RetrievalSet:
    """A training-format folder (``captions.jsonl`` / ``captions.csv``) as a retrieval set.

    Reading is delegated to the training data reader so both agree on the format; WebDataset shards are
    refused because evaluation needs every caption of an image together.
    """
    import numpy as np

    from lexsearch.data.karpathy import RetrievalSet

    folder = Path(folder)
    pairs = load_pairs(folder)
    if not isinstance(pairs, FolderPairs):
        raise DataError(
            f"{folder}: retrieval evaluation needs a caption folder (captions.jsonl/.csv), not shards."
        )
    root = folder if folder.is_dir() else folder.parent
    return RetrievalSet(
        [root / key for key in pairs.images],
        list(pairs.captions),
        np.asarray(pairs.caption_image),
        str(folder),
    )


def _holdout_count(n_or_fraction: int | float, n_images: int, source: str) -> int:
    if isinstance(n_or_fraction, bool):
        raise UsageError("holdout size must be a count or a fraction, not a boolean")
    if isinstance(n_or_fraction, int):
        n = n_or_fraction
    elif 0.0 < n_or_fraction < 1.0:
        # At least one image so a tiny dataset still gets a validation set.
        n = max(1, round(n_or_fraction * n_images))
    else:
        raise UsageError(f"holdout fraction must be in (0, 1), got {n_or_fraction}")
    if not 1 <= n < n_images:
        raise UsageError(f"cannot hold out {n} of the {n_images} images of {source}")
    return n


def split_holdout(
    dataset: FolderPairs | ShardPairs, n_or_fraction: int | float, seed: int = 0
) -> tuple[FolderPairs | ShardPairs, FolderPairs]:
    """Split into (train, val) by *image*: all captions of an image land on the same side.

    ``n_or_fraction`` is a number of images (int) or a fraction of them (float in (0, 1)). Folders: a seeded
    random choice of images. Shards: the first ``n`` samples of the last shards (in reverse shard order) are
    read into memory as the validation set and skipped by the training stream; only a count is accepted, since
    the shards' size is unknown without reading them all, and the choice does not depend on ``seed``.
    """
    if isinstance(dataset, FolderPairs):
        n_images = len(dataset.images)
        n = _holdout_count(n_or_fraction, n_images, dataset.source)
        # random.Random is stable across Python versions for sample(), so splits are reproducible.
        val_idx = set(random.Random(seed).sample(range(n_images), n))
        train = dataset.subset_images([j for j in range(n_images) if j not in val_idx])
        return train, dataset.subset_images(sorted(val_idx))
    if isinstance(dataset, ShardPairs):
        if not isinstance(n_or_fraction, int) or isinstance(n_or_fraction, bool) or n_or_fraction < 1:
            raise UsageError("for WebDataset shards give the holdout as a number of samples (e.g. 500)")
        keys, captions, blobs = [], [], {}
        for url in reversed(dataset.urls):
            for pair in ShardPairs(dataset.source, [url], dataset.exclude):
                keys.append(pair.image_key)
                captions.append(pair.caption)
                blobs[pair.image_key] = pair._load  # a partial holding the sample's encoded bytes
                if len(keys) == n_or_fraction:
                    break
            if len(keys) == n_or_fraction:
                break
        if len(keys) < n_or_fraction:
            raise UsageError(
                f"cannot hold out {n_or_fraction} samples: {dataset.source} has only {len(keys)}"
            )
        val = FolderPairs(f"{dataset.source} (held out)", keys, captions, _HeldLoader(blobs))
        train = ShardPairs(dataset.source, dataset.urls, dataset.exclude | frozenset(keys))
        return train, val
    raise UsageError(f"cannot split {type(dataset).__name__}")
