"""PatchDis (LexVLA, NeurIPS 2024): how well patch-level lexical vectors discriminate object classes.

Class names are encoded by the text side (word-level vectors), every patch vector is scored against every
class, each patch takes its argmax class, the predicted label map is brought to pixel resolution and
compared with the COCO instance masks (the union of a class's instances is its mask): mIoU over classes.
A random-assignment baseline (each patch a uniformly random candidate class, seeded) goes through the very
same procedure in the same run, since a number without it means little (the paper: random 5.0 mIoU).

The paper leaves some choices open; each is a ``PatchDisOptions`` field (defaults follow LEXVLA.md):
class set (the annotation file's categories: COCO's 80 things), candidate classes per image (all, or only
those present), unlabelled pixels (ignored, or counted as wrong), resolution (nearest or bilinear upsampling
to pixels, or comparing at the patch grid), and the view of a non-square image (the encoder's centre crop,
leaving the rest out, or the image squashed to a square).

IoU is accumulated over the whole set (intersections and unions summed per class, then divided), as
semantic-segmentation benchmarks do; classes whose union is empty are left out of the mean.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lexsearch.errors import DataError, UsageError

log = logging.getLogger(__name__)

CANDIDATES = ("all", "present")
UPSAMPLE = ("nearest", "bilinear", "patch")
VIEWS = ("crop", "stretch")

Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def _no_progress(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    return it


# ------------------------------------------------------------------------------------------ COCO reader


@dataclass
class CocoImage:
    id: int
    file_name: str
    path: Path
    height: int
    width: int


@dataclass
class CocoInstances:
    """A COCO ``instances_*.json`` read without pycocotools' COCO class (which prints to stdout)."""

    path: Path
    images: list[CocoImage]
    categories: list[tuple[int, str]]  # (category id, name) in file order
    annotations: dict[int, list[dict]]  # image id -> its annotations

    @classmethod
    def load(cls, annotations: str | Path, images_dir: str | Path, check_files: bool = True) -> CocoInstances:
        """Read and validate the file; every annotated image must exist under ``images_dir``."""
        path, root = Path(annotations), Path(images_dir)
        if not path.is_file():
            raise DataError(f"Annotation file not found: {path}")
        try:
            with path.open(encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc}).") from exc
        if not isinstance(data, dict):
            raise DataError(f"{path}: not a COCO annotation file (top level is not an object).")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"{path}: not a COCO instances file (no '{key}' list).")
        if check_files and not root.is_dir():
            raise DataError(f"Image folder not found: {root}")

        try:
            categories = [(int(c["id"]), str(c["name"])) for c in data["categories"]]
            images = [
                CocoImage(
                    int(im["id"]),
                    str(im["file_name"]),
                    root / str(im["file_name"]),
                    int(im["height"]),
                    int(im["width"]),
                )
                for im in data["images"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: an image or category entry lacks a field ({exc}).") from exc
        by_id = {im.id: im for im in images}
        cat_ids = {c for c, _ in categories}
        anns: dict[int, list[dict]] = {}
        for n, a in enumerate(data["annotations"]):
            if not isinstance(a, dict) or "segmentation" not in a:
                raise DataError(f"{path}: annotations[{n}] has no 'segmentation'.")
            if a.get("image_id") not in by_id:
                raise DataError(f"{path}: annotations[{n}] refers to unknown image_id {a.get('image_id')!r}.")
            if a.get("category_id") not in cat_ids:
                raise DataError(
                    f"{path}: annotations[{n}] refers to unknown category_id {a.get('category_id')!r}."
                )
            anns.setdefault(a["image_id"], []).append(a)
        if check_files:
            missing = [im.path for im in images if im.id in anns and not im.path.is_file()]
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise DataError(
                    f"{len(missing)} annotated image(s) not found under {root}: {missing[0]}{more}."
                )
        return cls(path, images, categories, anns)

    def class_masks(
        self, image: CocoImage, category_ids: Sequence[int] | None = None, include_crowd: bool = True
    ) -> dict[int, np.ndarray]:
        """category id -> bool (H, W) mask: the union of the image's instances of that category."""
        from pycocotools import mask as mask_utils

        h, w = image.height, image.width
        wanted = None if category_ids is None else set(category_ids)
        out: dict[int, np.ndarray] = {}
        for a in self.annotations.get(image.id, []):
            cid = a["category_id"]
            if (wanted is not None and cid not in wanted) or (a.get("iscrowd", 0) and not include_crowd):
                continue
            m = _decode_segmentation(mask_utils, a["segmentation"], h, w, self.path, a.get("id"))
            out[cid] = out[cid] | m if cid in out else m
        return out


def _decode_segmentation(mask_utils: Any, seg: Any, h: int, w: int, path: Path, ann_id: Any) -> np.ndarray:
    """Polygons, uncompressed RLE (crowd) or compressed RLE -> bool (H, W)."""
    try:
        if isinstance(seg, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
            polys = [
                p for p in seg if len(p) >= 6
            ]  # fewer than 3 points has no area (and upsets pycocotools)
            if not polys:
                return np.zeros((h, w), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, h, w)
        elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            rle = {"size": list(seg["size"]), "counts": counts}
        else:
            raise ValueError("unknown segmentation format")
        m = mask_utils.decode(rle)
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: annotation {ann_id}: bad segmentation ({exc}).") from exc
    if m.shape[:2] != (h, w):
        raise DataError(f"{path}: annotation {ann_id}: mask size {m.shape[:2]} is not the image's {(h, w)}.")
    return m.astype(bool).reshape(h, w)


# --------------------------------------------------------------------------------------- the procedure


@dataclass
class PatchDisOptions:
    """The choices the paper leaves open (defaults: LEXVLA.md's [choice] entries)."""

    classes: list[str] | None = None  # class names to evaluate; None = every category of the file
    candidates: str = "all"  # "all": every class competes in every image; "present": only the image's classes
    ignore_unlabelled: bool = True  # pixels of no evaluated class are left out (else they count as wrong)
    upsample: str = "nearest"  # "nearest"/"bilinear" to each image's pixels, or "patch": compare on the grid
    include_crowd: bool = True  # crowd regions are part of their class's mask
    # "crop": the image as the encoder preprocesses it (centre square; the rest is not evaluated, for the
    # baseline too); "stretch": squashed to a square first, so every pixel gets a prediction.
    view: str = "crop"
    seed: int = 0  # random baseline
    max_images: int | None = None  # first N annotated images (quick runs)

    def validate(self) -> None:
        if self.candidates not in CANDIDATES:
            raise UsageError(f"candidates must be one of {', '.join(CANDIDATES)}, not {self.candidates!r}.")
        if self.upsample not in UPSAMPLE:
            raise UsageError(f"upsample must be one of {', '.join(UPSAMPLE)}, not {self.upsample!r}.")
        if self.view not in VIEWS:
            raise UsageError(f"view must be one of {', '.join(VIEWS)}, not {self.view!r}.")
        if self.max_images is not None and self.max_images < 1:
            raise UsageError("max_images must be at least 1.")


@dataclass
class IoUAccumulator:
    """Per-class intersection and union pixel counts summed over images."""

    n_classes: int
    intersection: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.intersection = np.zeros(self.n_classes, dtype=np.int64)
        self.union = np.zeros(self.n_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: dict[int, np.ndarray], ignore_unlabelled: bool = True) -> None:
        """Add one image: ``pred`` (H, W) class indices, ``gt`` class index -> bool (H, W) mask.

        Pixels with ``pred < 0`` are outside what the model saw (cut off by the encoder's centre crop): they
        are left out for every class. A pixel may belong to several classes (overlapping instances): each
        class is compared as its own binary mask, so such a pixel counts for the predicted class and is
        missed for the other.
        """
        pred = np.asarray(pred)
        seen = pred >= 0
        if ignore_unlabelled:
            valid = np.zeros(pred.shape, dtype=bool)
            for m in gt.values():
                valid |= m
            valid &= seen
        else:
            valid = seen
        union = np.bincount(pred[valid], minlength=self.n_classes)[: self.n_classes].astype(np.int64)
        for c, m in gt.items():
            if m.shape != pred.shape:
                raise UsageError(f"Mask shape {m.shape} differs from prediction shape {pred.shape}.")
            inter = int(np.count_nonzero(pred[m] == c))
            self.intersection[c] += inter
            union[c] += int(np.count_nonzero(m & seen)) - inter
        self.union += union

    def iou(self) -> np.ndarray:
        """IoU per class in percent; NaN where the class never appears in prediction or ground truth."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, 100.0 * self.intersection / np.maximum(self.union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


@dataclass(frozen=True)
class View:
    """Where the patch grid lies on the original image, in pixels (rows top..top+height, cols left..).

    The Encoder resizes the shorter side to its input size and centre-crops (lexsearch.model.images), so on
    a non-square image the grid covers only the central square; pixels outside it get no prediction.
    """

    top: float
    left: float
    height: float
    width: float

    @classmethod
    def full(cls, height: int, width: int) -> View:
        return cls(0.0, 0.0, float(height), float(width))

    @classmethod
    def centre_crop(cls, height: int, width: int, size: int) -> View:
        """The region the encoder's preprocessing keeps (``lexsearch.model.images.crop_box``)."""
        from lexsearch.model.images import crop_box

        left, top, right, bottom = crop_box(width, height)
        return cls(top, left, bottom - top, right - left)


def _cell_coords(n_out: int, start: float, extent: float, n_cells: int) -> np.ndarray:
    """Pixel centres 0..n_out-1 in grid-cell units (0 = the first cell's left edge)."""
    return (np.arange(n_out) + 0.5 - start) * n_cells / extent


def _nearest_index(n_out: int, start: float, extent: float, n_cells: int) -> np.ndarray:
    """The cell holding each pixel centre; -1 where the pixel lies outside the grid."""
    idx = np.floor(_cell_coords(n_out, start, extent, n_cells)).astype(int)
    return np.where((idx >= 0) & (idx < n_cells), idx, -1)


def _interp_matrix(n_out: int, start: float, extent: float, n_cells: int) -> np.ndarray:
    """(n_out, n_cells) linear interpolation weights between cell centres (align_corners=False)."""
    x = np.clip(_cell_coords(n_out, start, extent, n_cells) - 0.5, 0, n_cells - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_cells - 1)
    frac = (x - lo).astype(np.float32)
    m = np.zeros((n_out, n_cells), dtype=np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def predict_labels(
    scores: np.ndarray,
    size: tuple[int, int],
    upsample: str = "nearest",
    allowed: np.ndarray | None = None,
    view: View | None = None,
) -> np.ndarray:
    """Patch-by-class scores (h, w, C) -> label map: (H, W) for nearest/bilinear, (h, w) for ``patch``.

    ``allowed``: bool (C,) mask of candidate classes; the others can never be predicted. ``view``: where the
    grid lies on the image (default: the whole image); pixels outside it are labelled -1.
    """
    s = np.asarray(scores, dtype=np.float32)
    if allowed is not None:
        s = np.where(allowed[None, None, :], s, -np.inf)
    gh, gw, _ = s.shape
    H, W = size
    v = view or View.full(H, W)
    if upsample == "patch":
        return s.argmax(axis=2)
    rows, cols = _nearest_index(H, v.top, v.height, gh), _nearest_index(W, v.left, v.width, gw)
    if upsample == "nearest":
        labels = s.argmax(axis=2)[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
    elif upsample == "bilinear":
        # Interpolate the score maps, then argmax: smoother boundaries than upsampling hard labels. Disallowed
        # classes get a large negative instead of -inf so the weighted sums stay finite.
        s = np.where(np.isfinite(s), s, -1e9)
        ry, rx = _interp_matrix(H, v.top, v.height, gh), _interp_matrix(W, v.left, v.width, gw)
        labels = np.einsum("Hh,hwc,Ww->HWc", ry, s, rx, optimize=True).argmax(axis=2)
    else:
        raise UsageError(f"upsample must be one of {', '.join(UPSAMPLE)}, not {upsample!r}.")
    labels[rows < 0, :] = -1
    labels[:, cols < 0] = -1
    return labels


def masks_on_grid(
    masks: dict[int, np.ndarray], grid: tuple[int, int], view: View | None = None
) -> dict[int, np.ndarray]:
    """Sample each pixel mask at the patch centres (the ``patch`` resolution option)."""
    out = {}
    for c, m in masks.items():
        H, W = m.shape
        v = view or View.full(H, W)
        ys = np.clip(np.floor(v.top + (np.arange(grid[0]) + 0.5) * v.height / grid[0]).astype(int), 0, H - 1)
        xs = np.clip(np.floor(v.left + (np.arange(grid[1]) + 0.5) * v.width / grid[1]).astype(int), 0, W - 1)
        out[c] = m[np.ix_(ys, xs)]
    return out


@dataclass
class ClassIoU:
    name: str
    iou: float
    iou_random: float
    gt_images: int  # images the class is annotated in


@dataclass
class PatchDisReport:
    """What ``lexsearch eval patchdis`` reports (percentages)."""

    miou: float
    miou_random: float
    n_images: int
    per_class: list[ClassIoU]
    options: dict[str, Any]
    grid: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d


def patchdis_scores(patch_vecs: np.ndarray, class_vecs: Any) -> np.ndarray:
    """(P, V) patch vectors x (C, V) class vectors (dense or sparse) -> (P, C) scores."""
    cv = class_vecs.toarray() if hasattr(class_vecs, "toarray") else np.asarray(class_vecs)
    return np.asarray(patch_vecs, dtype=np.float32) @ cv.astype(np.float32).T


def evaluate_patchdis(
    encoder: Any,
    coco: CocoInstances,
    options: PatchDisOptions | None = None,
    progress: Progress = _no_progress,
) -> PatchDisReport:
    """PatchDis with ``encoder`` (``encode_words``, ``encode_patches``, ``grid``, ``image_size``) and the
    random baseline."""
    from PIL import Image

    opts = options or PatchDisOptions()
    opts.validate()
    name_of = dict(coco.categories)
    if opts.classes is None:
        cats = list(coco.categories)
    else:
        by_name = {n.lower(): c for c, n in coco.categories}
        unknown = [n for n in opts.classes if n.lower() not in by_name]
        if unknown:
            raise UsageError(f"Classes not in {coco.path.name}: {', '.join(unknown)}.")
        cats = [(by_name[n.lower()], name_of[by_name[n.lower()]]) for n in dict.fromkeys(opts.classes)]
    if not cats:
        raise DataError(f"{coco.path}: no categories to evaluate.")
    cat_index = {cid: i for i, (cid, _) in enumerate(cats)}
    names = [n for _, n in cats]

    class_vecs = encoder.encode_words(names).sparse  # (C, V)
    grid = tuple(int(g) for g in encoder.grid)
    n_patches = grid[0] * grid[1]
    images = [im for im in coco.images if coco.annotations.get(im.id)]
    if opts.max_images is not None:
        images = images[: opts.max_images]
    if not images:
        raise DataError(f"{coco.path}: no annotated images.")

    rng = np.random.default_rng(opts.seed)
    model_acc, rand_acc = IoUAccumulator(len(cats)), IoUAccumulator(len(cats))
    gt_images = np.zeros(len(cats), dtype=np.int64)
    n_used = 0
    for im in progress(images, len(images), "patchdis"):
        masks = {
            cat_index[c]: m for c, m in coco.class_masks(im, list(cat_index), opts.include_crowd).items()
        }
        if not masks:
            continue  # only classes outside the evaluated set: nothing to compare
        n_used += 1
        gt_images[list(masks)] += 1
        allowed = None
        cand = np.arange(len(cats))
        if opts.candidates == "present":
            allowed = np.zeros(len(cats), dtype=bool)
            allowed[list(masks)] = True
            cand = np.flatnonzero(allowed)
        try:
            with Image.open(im.path) as pil:
                pil = pil.convert("RGB")
        except OSError as exc:
            raise DataError(f"Cannot read image {im.path}: {exc}") from exc
        if pil.size != (im.width, im.height):
            raise DataError(
                f"{im.path}: size {pil.size[0]}x{pil.size[1]} differs from the annotation's "
                f"{im.width}x{im.height}."
            )
        if opts.view == "stretch":
            pil = pil.resize((encoder.image_size, encoder.image_size), Image.Resampling.BICUBIC)
            view = View.full(im.height, im.width)
        else:
            view = View.centre_crop(im.height, im.width, encoder.image_size)
        patches = np.asarray(encoder.encode_patches(pil))
        if patches.shape[0] != n_patches:
            raise UsageError(f"encode_patches gave {patches.shape[0]} rows for a {grid[0]}x{grid[1]} grid.")
        scores = patchdis_scores(patches, class_vecs).reshape(grid[0], grid[1], len(cats))
        # The baseline: a uniformly random candidate class per patch, as a one-hot score map so that it goes
        # through exactly the same upsampling and counting as the model.
        rand = np.zeros_like(scores)
        pick = cand[rng.integers(0, cand.size, size=n_patches)]
        rand.reshape(n_patches, -1)[np.arange(n_patches), pick] = 1.0

        if opts.upsample == "patch":
            gt, size = masks_on_grid(masks, grid, view), grid
        else:
            gt, size = masks, (im.height, im.width)
        for acc, sc in ((model_acc, scores), (rand_acc, rand)):
            acc.update(predict_labels(sc, size, opts.upsample, allowed, view), gt, opts.ignore_unlabelled)

    iou, iou_r = model_acc.iou(), rand_acc.iou()
    per_class = [
        ClassIoU(n, float(a), float(b), int(g))
        for n, a, b, g in zip(names, iou, iou_r, gt_images, strict=True)
    ]
    log.info("patchdis: %d images, mIoU %.2f (random %.2f)", n_used, model_acc.miou(), rand_acc.miou())
    return PatchDisReport(
        miou=model_acc.miou(),
        miou_random=rand_acc.miou(),
        n_images=n_used,
        per_class=per_class,
        options=asdict(opts),
        grid=grid,  # type: ignore[arg-type]
    )
