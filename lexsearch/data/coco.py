"""Training pairs from the caption files researchers already have: COCO's and Karpathy's.

- a COCO captions file, e.g. ``annotations/captions_train2017.json``::

      {"images": [{"id": 391895, "file_name": "000000391895.jpg", ...}, ...],
       "annotations": [{"image_id": 391895, "caption": "A man riding ..."}, ...]}

  with its image folder (``--images``; by default ``train2017`` next to the ``annotations`` folder, or the
  file's own folder);
- a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``) and one split of it
  (``--split train``; ``train+restval`` joins two), images under ``--images`` (default: the file's folder).

Both become :class:`CaptionList` (every caption with its image's name), which
:func:`lexsearch.data.pairs.load_pairs` turns into a ``FolderPairs`` like a caption folder's. This module does
not import ``pairs`` (``pairs`` imports it). Bad input raises :class:`~lexsearch.errors.DataError` with one line naming the file and the entry.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lexsearch.errors import DataError

log = logging.getLogger(__name__)

_SHOW_MISSING = 3


@dataclass
class CaptionList:
    """Captions of a caption file, each with its image's name under ``root`` (or a full path)."""

    source: str
    keys: list[str]
    captions: list[str]
    root: str


def _read(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


def is_caption_json(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".json"


def load_json_pairs(path: str | Path, images: str | Path | None = None, split: str = "train") -> CaptionList:
    """A COCO captions file or a Karpathy split file (told apart by their keys) as training pairs."""
    path = Path(path)
    data = _read(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return coco_pairs(path, data, images)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return karpathy_pairs(path, images, split)
    raise DataError(
        f"{path}: neither a COCO captions file ('images' and 'annotations') nor a Karpathy split file "
        "('images' with 'sentences')"
    )


def _coco_root(path: Path, images: str | Path | None) -> Path:
    if images:
        root = Path(images)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        return root
    # annotations/captions_train2017.json -> train2017/ beside annotations/ (COCO's own layout)
    match = re.match(r"captions_(\w+)\.json$", path.name)
    if match:
        for cand in (path.parent.parent / match.group(1), path.parent / match.group(1)):
            if cand.is_dir():
                return cand
    return path.parent


def _check_missing(missing: list[Path], path: Path, root: Path) -> None:
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOW_MISSING])
        more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
        raise DataError(
            f"{len(missing)} image(s) of {path.name} are not under {root} ({shown}{more}); give --images DIR"
        )


def coco_pairs(path: Path, data: dict, images: str | Path | None = None) -> CaptionList:
    """Pairs of a COCO captions file (``data`` is its parsed JSON), images under ``images``."""
    root = _coco_root(path, images)
    if not isinstance(data.get("images"), list):
        raise DataError(f"{path}: a COCO captions file needs an 'images' list")
    names: dict[int, str] = {}
    for n, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("file_name"), str):
            raise DataError(f"{path}: images[{n}] needs 'id' and 'file_name'")
        names[entry["id"]] = entry["file_name"]
    keys, captions, checked, missing = [], [], {}, []
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DataError(f"{path}: annotations[{n}] needs 'image_id' and 'caption'")
        caption = ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{path}: annotations[{n}] (image {ann['image_id']}) has no caption")
        name = names.get(ann["image_id"])
        if name is None:
            raise DataError(f"{path}: annotations[{n}] names image {ann['image_id']}, not in 'images'")
        if name not in checked:
            checked[name] = (root / name).is_file()
            if not checked[name]:
                missing.append(root / name)
        keys.append(name)
        captions.append(" ".join(caption.split()))
    _check_missing(missing, path, root)
    if not keys:
        raise DataError(f"{path}: no captions")
    log.info("%s: %d captions of %d images under %s", path.name, len(keys), len(checked), root)
    return CaptionList(str(path), keys, captions, str(root))


def karpathy_pairs(path: Path, images: str | Path | None = None, split: str = "train") -> CaptionList:
    """Pairs of one split (or ``a+b``) of a Karpathy split file, every caption of each image."""
    from lexsearch.data.karpathy import load_karpathy

    root = Path(images) if images else path.parent
    keys: list[str] = []
    captions: list[str] = []
    for name in [s for s in split.split("+") if s]:
        part = load_karpathy(path, root, name, max_captions_per_image=None)
        for caption, image in zip(part.captions, part.caption_image):
            keys.append(str(part.image_paths[int(image)].resolve()))
            captions.append(caption)
    if not keys:
        raise DataError(f"{path}: no split given (use --split train)")
    # Keys are full paths (as load_karpathy resolved them), so the loader's root does not matter.
    return CaptionList(f"{path}:{split}", keys, captions, str(root))
