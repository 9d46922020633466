"""Retrieval test sets: the standard Karpathy split files (a data folder's: ``pairs.load_caption_folder``).

Karpathy files (``dataset_coco.json``, ``dataset_flickr30k.json``) look like::

    {"images": [{"filename": "COCO_val2014_000000391895.jpg", "filepath": "val2014", "split": "test",
                 "sentences": [{"raw": "A man ...", "tokens": [...]}, ...]}, ...]}

``filepath`` exists only in the COCO file; images are looked up at ``IMAGE_ROOT/filepath/filename`` and, as
people often flatten the folders, at ``IMAGE_ROOT/filename``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lexsearch.errors import DataError

log = logging.getLogger(__name__)

# The protocol's 5K / 25K (COCO) and 1K / 5K (Flickr30K): five captions an image. A few COCO images have
# six or seven; the usual evaluation code keeps the first five.
MAX_CAPTIONS_PER_IMAGE = 5
# How many missing image paths an error message lists before it just counts.
_SHOW_MISSING = 3


@dataclass
class RetrievalSet:
    """Images, their captions, and which image each caption belongs to."""

    image_paths: list[Path]
    captions: list[str]
    caption_image: np.ndarray  # (n_captions,) int64 index into image_paths
    name: str = ""

    def __post_init__(self) -> None:
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def n_captions(self) -> int:
        return len(self.captions)


def retrieval_set_from_pairs(pairs: Iterable[tuple[str | Path, str]], name: str = "") -> RetrievalSet:
    """Group (image, caption) pairs by image, keeping first-seen image order and every caption."""
    index: dict[Path, int] = {}
    captions: list[str] = []
    caption_image: list[int] = []
    for image, caption in pairs:
        i = index.setdefault(Path(image), len(index))
        captions.append(caption)
        caption_image.append(i)
    return RetrievalSet(list(index), captions, np.asarray(caption_image, dtype=np.int64), name)


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"Karpathy split file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc}).") from exc


def _resolve_image(root: Path, entry: dict) -> list[Path]:
    """Candidate locations of one image, most specific first."""
    name = entry["filename"]
    cands = []
    if entry.get("filepath"):
        cands.append(root / entry["filepath"] / name)
    cands.append(root / name)
    return cands


def load_karpathy(
    path: str | Path,
    image_root: str | Path,
    split: str = "test",
    max_captions_per_image: int | None = MAX_CAPTIONS_PER_IMAGE,
    check_files: bool = True,
) -> RetrievalSet:
    """Read one split of a Karpathy split file; image paths are resolved under ``image_root``.

    Raises DataError naming the file and the entry for a malformed file, an unknown split, or (with
    ``check_files``) images that are not on disk.
    """
    path, root = Path(path), Path(image_root)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a Karpathy split file (expected an object with an 'images' list).")
    if check_files and not root.is_dir():
        raise DataError(f"Image folder not found: {root}")

    splits: dict[str, int] = {}
    image_paths: list[Path] = []
    captions: list[str] = []
    caption_image: list[int] = []
    missing: list[Path] = []
    for n, entry in enumerate(data["images"]):
        where = f"{path}: images[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DataError(f"{where}: missing 'filename'.")
        s = entry.get("split")
        if not isinstance(s, str):
            raise DataError(f"{where} ({entry['filename']}): missing 'split'.")
        splits[s] = splits.get(s, 0) + 1
        if s != split:
            continue
        sents = entry.get("sentences")
        if not isinstance(sents, list):
            raise DataError(f"{where} ({entry['filename']}): missing 'sentences' list.")
        texts = []
        for m, sent in enumerate(sents):
            raw = sent.get("raw") if isinstance(sent, dict) else None
            if raw is None and isinstance(sent, dict) and isinstance(sent.get("tokens"), list):
                raw = " ".join(sent["tokens"])  # some derived files keep only tokens
            if not isinstance(raw, str) or not raw.strip():
                raise DataError(f"{where} ({entry['filename']}): sentences[{m}] has no 'raw' text.")
            texts.append(raw.strip())
        if max_captions_per_image is not None:
            texts = texts[:max_captions_per_image]
        cands = _resolve_image(root, entry)
        found = next((c for c in cands if c.is_file()), None) if check_files else cands[0]
        if found is None:
            missing.append(cands[0])
            continue
        i = len(image_paths)
        image_paths.append(found)
        captions.extend(texts)
        caption_image.extend([i] * len(texts))

    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOW_MISSING])
        more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
        raise DataError(
            f"{len(missing)} image(s) of split {split!r} in {path.name} are not under {root}: {shown}{more}."
        )
    if not image_paths:
        have = ", ".join(f"{k} ({v})" for k, v in sorted(splits.items())) or "none"
        raise DataError(f"{path}: no images in split {split!r}; splits in the file: {have}.")
    log.info("%s split %s: %d images, %d captions", path.name, split, len(image_paths), len(captions))
    return RetrievalSet(
        image_paths, captions, np.asarray(caption_image, dtype=np.int64), f"{path.name}:{split}"
    )
