"""A second, independent shapes world, for validation only: nothing in the tiny preset is tuned to it.

The toy world (:mod:`lexsearch.data.toyworld`) is what the tiny preset was developed on; a model that only
works there has learnt the generator, not images and text. This world differs from it the ways real data
differs from any fixed generator:

- its own palette (white, black, grey, orange, pink, brown, red, blue, green, yellow with their own RGB
  values) and shape families (heart, hexagon, crescent, arrow, ring, cross, diamond), randomly rotated;
- 80 px images on soft two-tone gradient backgrounds with dots or grain, a slight blur and sensor noise;
- two captions per image in natural phrasing: capitals, commas and full stops, several sentence forms,
  positional phrases ("in the top left", "to the left of", "next to") and size words.

It writes the same sidecars as the toy world (``labels.jsonl`` largest shape first, ``masks/``, COCO
``annotations/instances.json`` with shape categories and ``instances_colour.json``), so the same word
metrics and PatchDis run on it; ``shapes2.json`` (written last) records the config and the categories.
Image ``i`` depends only on ``(seed, i)`` and the config.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lexsearch.errors import DataError, UsageError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "shapes2.json"

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 242),
    "black": (22, 22, 26),
    "grey": (128, 128, 132),
    "orange": (250, 120, 10),
    "pink": (250, 130, 190),
    "brown": (125, 72, 34),
    "red": (200, 18, 45),
    "blue": (25, 95, 210),
    "green": (25, 140, 45),
    "yellow": (250, 225, 25),
}
COLOUR_WORDS: tuple[str, ...] = tuple(COLOUR_RGB)
SHAPE_WORDS: tuple[str, ...] = ("heart", "hexagon", "crescent", "arrow", "ring", "cross", "diamond")
BACKGROUNDS: tuple[str, ...] = ("gradient", "dots", "grain")


@dataclass(frozen=True)
class Shapes2Config:
    """How images are drawn. Every field is recorded in ``shapes2.json``."""

    image_size: int = 80
    min_shapes: int = 1
    max_shapes: int = 3
    min_radius: float = 0.1  # equal-area circle radius as a fraction of image_size
    max_radius: float = 0.22
    min_area_ratio: float = 1.3  # largest / second largest visible area
    max_rotation: float = 30.0  # degrees either way (arrows also point in any of four directions)
    captions_per_image: int = 2
    min_contrast: float = 70.0  # RGB distance between an object's colour and the background under it

    def validate(self) -> None:
        if not 32 <= self.image_size <= 512:
            raise UsageError(f"shapes2 image_size must be in 32..512, got {self.image_size}")
        if not 1 <= self.min_shapes <= self.max_shapes <= 3:
            raise UsageError("shapes2 needs 1 <= min_shapes <= max_shapes <= 3")
        if self.captions_per_image < 1:
            raise UsageError("shapes2 captions_per_image must be >= 1")


@dataclass(frozen=True)
class Object2:
    colour: str
    shape: str
    area: int
    bbox: tuple[int, int, int, int]
    centre: tuple[float, float]  # (x, y) in pixels


@dataclass
class Scene2:
    image: np.ndarray  # (H, W, 3) uint8
    instance_mask: np.ndarray  # (H, W) uint8, k = objects[k - 1]
    objects: list[Object2]  # largest first
    background: str
    captions: list[str]


# --------------------------------------------------------------------------------------------- geometry


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(shape: str, angle: float) -> list[np.ndarray]:
    """Polygons (unit half extent, centred on 0) whose filled union, minus later ones for "holes", is the
    shape; returns [outer, hole?]."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    if shape == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = [np.stack([x, y + 2.5], 1) / 16.0]
    elif shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        pts = [np.stack([np.cos(a), np.sin(a)], 1)]
    elif shape == "crescent":
        pts = [np.stack([np.cos(t), np.sin(t)], 1), np.stack([np.cos(t) * 0.8 + 0.45, np.sin(t) * 0.8], 1)]
    elif shape == "arrow":
        pts = [
            np.array(
                [[-1, -0.22], [0.15, -0.22], [0.15, -0.6], [1, 0], [0.15, 0.6], [0.15, 0.22], [-1, 0.22]]
            )
        ]
    elif shape == "ring":
        pts = [np.stack([np.cos(t), np.sin(t)], 1), np.stack([np.cos(t), np.sin(t)], 1) * 0.55]
    elif shape == "cross":
        w = 0.24
        pts = [
            np.array(
                [
                    [-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
                    [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w],
                ]
            )
        ]  # fmt: skip
    elif shape == "diamond":
        pts = [np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]])]
    else:
        raise UsageError(f"unknown shapes2 shape {shape!r}")
    return [_rotate(p.astype(float), angle) for p in pts]


def _mask(size: int, polys: list[np.ndarray], cx: float, cy: float, r: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for k, poly in enumerate(polys):
        draw.polygon([(cx + r * x, cy + r * y) for x, y in poly], fill=0 if k else 1)
    return np.asarray(canvas, dtype=bool)


# --------------------------------------------------------------------------------------------- scenes


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A soft two-tone gradient in desaturated tints (+ dots or grain); (H, W, 3) float."""
    tone = rng.uniform(75, 185, size=(2, 1)) + rng.uniform(-22, 22, size=(2, 3))  # low saturation
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    w = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    bg = tone[0] * (1 - w) + tone[1] * w
    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    if kind == "dots":
        step = int(rng.integers(6, 11))
        dots = ((yy * (size - 1)) % step < 2) & ((xx * (size - 1)) % step < 2)
        bg = bg + dots[..., None] * rng.uniform(-28, 28)
    elif kind == "grain":
        bg = bg + rng.normal(0, 9, size=(size, size, 1))
    return bg, kind


def _place(rng: np.random.Generator, cfg: Shapes2Config, words: list[tuple[str, str]]):
    size = cfg.image_size
    best: list[tuple[str, str, np.ndarray]] = []
    for _attempt in range(150):
        radii = np.sort(rng.uniform(cfg.min_radius, cfg.max_radius, size=len(words)))[::-1] * size
        placed, occupied = [], np.zeros((size, size), dtype=bool)
        for (colour, shape), r_area in zip(words, radii):
            angle = np.deg2rad(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
            if shape == "arrow":
                angle += int(rng.integers(0, 4)) * np.pi / 2
            polys = _outline(shape, angle)
            unit = _mask(size, polys, size / 2, size / 2, r_area).sum()
            r = r_area * float(np.sqrt(np.pi * r_area**2 / max(unit, 1)))  # equal-area sizing
            for _ in range(25):
                cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
                mask = _mask(size, polys, cx, cy, r)
                grown = mask.copy()
                grown[1:] |= mask[:-1]
                grown[:-1] |= mask[1:]
                grown[:, 1:] |= mask[:, :-1]
                grown[:, :-1] |= mask[:, 1:]
                if mask.any() and not (grown & occupied).any():
                    placed.append((colour, shape, mask))
                    occupied |= grown
                    break
        areas = sorted((int(m.sum()) for _, _, m in placed), reverse=True)
        ratio_ok = len(areas) < 2 or areas[0] >= cfg.min_area_ratio * areas[1]
        if len(placed) == len(words) and ratio_ok:
            return placed
        if ratio_ok and len(placed) > len(best):
            best = placed
    return best


def render_scene2(index: int, seed: int = 0, config: Shapes2Config | None = None) -> Scene2:
    """Render image ``index`` of the world ``seed``."""
    cfg = config or Shapes2Config()
    size = cfg.image_size
    rng = np.random.default_rng([seed, index, 2])
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    colours = [COLOUR_WORDS[i] for i in rng.choice(len(COLOUR_WORDS), size=n, replace=False)]
    shapes = [SHAPE_WORDS[i] for i in rng.choice(len(SHAPE_WORDS), size=n, replace=False)]
    for _ in range(50):  # a background every object stands out from
        bg, kind = _background(rng, size)
        mean = bg.reshape(-1, 3).mean(0)
        if all(np.linalg.norm(np.array(COLOUR_RGB[c]) - mean) >= cfg.min_contrast for c in colours):
            break
    placed = _place(rng, cfg, list(zip(colours, shapes)))
    if not placed:
        raise DataError(f"shapes2: could not place shapes for image {index} (seed {seed})")
    placed.sort(key=lambda item: -int(item[2].sum()))
    image = bg.copy()
    instance_mask = np.zeros((size, size), dtype=np.uint8)
    objects = []
    for k, (colour, shape, mask) in enumerate(placed, start=1):
        rgb = np.array(COLOUR_RGB[colour], dtype=float) + rng.integers(-14, 15, size=3)
        # Light shading across the object, as lit surfaces have.
        yy, xx = np.nonzero(mask)
        shade = 1.0 + 0.08 * (yy - yy.mean()) / max(1.0, yy.std() * 3)
        image[yy, xx] = np.clip(rgb[None] * shade[:, None], 0, 255)
        instance_mask[mask] = k
        bbox = (int(xx.min()), int(yy.min()), int(xx.max() - xx.min() + 1), int(yy.max() - yy.min() + 1))
        objects.append(Object2(colour, shape, int(mask.sum()), bbox, (float(xx.mean()), float(yy.mean()))))
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    image = np.asarray(pil).astype(float) + rng.normal(0, 3.0, size=(size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    captions = _captions(rng, objects, size, cfg.captions_per_image)
    return Scene2(image, instance_mask, objects, kind, captions)


# --------------------------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(obj: Object2, size: int) -> str:
    """ "in the top left", "at the bottom", "in the middle" ... from the object's centre."""
    col = "left" if obj.centre[0] < size / 3 else "right" if obj.centre[0] > 2 * size / 3 else ""
    row = "top" if obj.centre[1] < size / 3 else "bottom" if obj.centre[1] > 2 * size / 3 else ""
    if row and col:
        return f"in the {row} {col}"
    if row or col:
        return f"at the {row or col}"
    return "in the middle"


def _relation(a: Object2, b: Object2) -> str:
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    if abs(dx) > 1.5 * abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    if abs(dy) > 1.5 * abs(dx):
        return "above" if dy > 0 else "below"
    return "next to"


def _np(obj: Object2, size_word: str = "") -> str:
    words = " ".join(w for w in (size_word, obj.colour, obj.shape) if w)
    return f"{_article(words)} {words}"


def _sentence(text: str, stop: str = ".") -> str:
    return text[0].upper() + text[1:] + stop


def _captions(rng: np.random.Generator, objs: list[Object2], size: int, n: int) -> list[str]:
    """``n`` different phrasings of the scene (largest object first in most forms)."""
    big, rest = objs[0], objs[1:]
    forms = []
    if not rest:
        forms += [
            _sentence(f"{_np(big)} {_where(big, size)}"),
            _sentence(f"there is {_np(big)} on its own"),
            _sentence(f"{_np(big, 'single')}"),
            _sentence(f"{big.colour} {big.shape}", ""),
            _sentence(f"a picture of {_np(big)} {_where(big, size)}"),
        ]
    else:
        others = [_np(o, "small") for o in rest]
        listed = " and ".join(others)
        forms += [
            _sentence(f"{_np(big, 'large')} {_relation(big, rest[0])} {others[0]}")
            + ("" if len(rest) < 2 else f" There is also {others[1]}."),
            _sentence(f"{_np(big)} {_where(big, size)}, with {listed}"),
            _sentence(f"{', '.join(f'{o.colour} {o.shape}' for o in objs)}"),
            _sentence(f"this image shows {_np(big, 'big')} and {listed}"),
            _sentence(f"{' and '.join(_np(o) for o in rng.permutation(objs))}"),
        ]
    order = rng.permutation(len(forms))
    return [forms[i] for i in order[:n]]


# --------------------------------------------------------------------------------------------- writing


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


_OURS = ("images", "masks", "annotations", "captions.jsonl", "labels.jsonl", META_FILE)


def generate_shapes2(
    out_dir: str | Path, n_images: int, seed: int = 0, *, overwrite: bool = False, **options: object
) -> Path:
    """Write ``n_images`` of the world ``seed`` to ``out_dir`` (``options``: :class:`Shapes2Config` fields)."""
    if n_images < 1:
        raise UsageError(f"shapes2 needs n_images >= 1, got {n_images}")
    unknown = sorted(set(options) - set(asdict(Shapes2Config())))
    if unknown:
        raise UsageError(f"unknown shapes2 options: {', '.join(unknown)}")
    cfg = Shapes2Config(**options)  # type: ignore[arg-type]
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    present = [name for name in _OURS if (out / name).exists()]
    if present and not overwrite:
        raise UsageError(f"{out} already holds a shapes2 world ({', '.join(present)}); pass overwrite=True")
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for sub in ("images", "masks", "annotations"):
        (out / sub).mkdir()
    shape_ids = {s: i for i, s in enumerate(SHAPE_WORDS, start=1)}
    colour_ids = {c: i for i, c in enumerate(COLOUR_WORDS, start=1)}
    images, shape_anns, colour_anns = [], [], []
    with (
        open(out / "captions.jsonl", "w", encoding="utf-8") as cap_f,
        open(out / "labels.jsonl", "w", encoding="utf-8") as lab_f,
    ):
        for index in range(n_images):
            scene = render_scene2(index, seed, cfg)
            image_id = index + 1
            rel = f"images/{image_id:06d}.png"
            Image.fromarray(scene.image, "RGB").save(out / rel)
            lut = np.array([0] + [shape_ids[o.shape] for o in scene.objects], dtype=np.uint8)
            Image.fromarray(lut[scene.instance_mask], "L").save(out / f"masks/{image_id:06d}.png")
            for caption in scene.captions:
                cap_f.write(json.dumps({"image": rel, "caption": caption}) + "\n")
            rows = [
                {"colour": o.colour, "shape": o.shape, "area": o.area, "bbox": list(o.bbox)}
                for o in scene.objects
            ]
            lab_f.write(
                json.dumps(
                    {"image": rel, "image_id": image_id, "background": scene.background, "shapes": rows}
                )
                + "\n"
            )
            images.append(
                {"id": image_id, "file_name": rel, "width": cfg.image_size, "height": cfg.image_size}
            )
            for k, o in enumerate(scene.objects, start=1):
                ann = {
                    "id": len(shape_anns) + 1,
                    "image_id": image_id,
                    "segmentation": _rle(scene.instance_mask == k),
                    "area": o.area,
                    "bbox": list(o.bbox),
                    "iscrowd": 0,
                    "colour": o.colour,
                    "shape": o.shape,
                }
                shape_anns.append(ann | {"category_id": shape_ids[o.shape]})
                colour_anns.append(ann | {"category_id": colour_ids[o.colour]})
    info = {"description": "lexsearch shapes2 validation world", "version": FORMAT_VERSION, "seed": seed}
    for name, anns, words in (
        ("instances.json", shape_anns, SHAPE_WORDS),
        ("instances_colour.json", colour_anns, COLOUR_WORDS),
    ):
        cats = [{"id": i, "name": w} for i, w in enumerate(words, start=1)]
        coco = {"info": info, "images": images, "annotations": anns, "categories": cats}
        (out / "annotations" / name).write_text(json.dumps(coco), encoding="utf-8")
    meta = {
        "format_version": FORMAT_VERSION,
        "n_images": n_images,
        "seed": seed,
        "config": asdict(cfg),
        "shape_categories": list(SHAPE_WORDS),
        "colour_categories": list(COLOUR_WORDS),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    logger.info("shapes2: %d images (seed %d) in %s", n_images, seed, out)
    return out
