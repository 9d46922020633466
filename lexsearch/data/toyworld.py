"""The toy world: small images of a few coloured shapes, a caption naming them, and exact per-pixel masks.

Used by tests, `lexsearch demo` and benchmarks so the whole LexVLA loop (pretraining, training, retrieval,
explanations, PatchDis) runs offline in minutes. Everything is deterministic by seed: image ``i`` of a world
depends only on ``(seed, i)`` and the config, so the same call writes byte-identical files.

Layout written by :func:`generate_toy_world` (the ``--data`` folder format of issue 3, plus sidecars)::

    out_dir/
      images/000001.png            RGB, image_size x image_size
      masks/000001.png             mode "L", pixel = shape category id (0 = background)
      captions.jsonl               {"image": "images/000001.png", "caption": "a red circle and a blue star"}
      labels.jsonl                 {"image": ..., "image_id": 1, "background": "plain", "shapes": [...]}
      annotations/instances.json           COCO instances, categories = shape words (PatchDis)
      annotations/instances_colour.json    the same instances, categories = colour words
      toyworld.json                the config, vocabulary and categories; written last (= "complete")

Design lessons from the issue 3 prototype, applied here:
- Captions are plain lowercase words from a vocabulary of a few dozen, so a tiny tokenizer keeps them whole.
- Each image uses distinct colours and distinct shapes, and (``canonical_binding``) a given bag of colours and
  shapes always comes with the same colour-shape pairing in a world. A bag of words then identifies the
  content; binding-only differences ("red circle, blue star" vs "blue circle, red star") cannot be learnt by
  a lexical model and only push the text side to encode them in arbitrary dimensions.
- The largest shape is clearly the largest (area ratio >= ``min_area_ratio``) and is named first, so "the top
  explanation words name the largest shape" is a well-posed metric.
- Backgrounds are neutral greys (plain or textured) so no background pixel looks like a colour word.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lexsearch.errors import DataError, UsageError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

# Hues far apart in RGB so a tiny backbone separates them after per-shape jitter; no white/black/grey, which
# would collide with the neutral backgrounds.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (145, 55, 185),
    "orange": (245, 140, 30),
}
COLOUR_WORDS: tuple[str, ...] = tuple(COLOUR_RGB)
# Silhouettes that stay distinguishable at ~10 px radius.
SHAPE_WORDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "stripes", "checks")

# Caption templates: "{0}" is the list of "a <colour> <shape>" phrases joined with " and ".
# Few, fixed function words keep the vocabulary small; the phrases carry all content.
CAPTION_TEMPLATES: tuple[str, ...] = ("{0}", "a picture of {0}", "there is {0}", "an image with {0}")


@dataclass(frozen=True)
class ToyWorldConfig:
    """How toy images are drawn. Every field is recorded in ``toyworld.json``."""

    image_size: int = 64  # pixels per side; 64-96 keeps a tiny ViT cheap on a CPU
    colours: tuple[str, ...] = COLOUR_WORDS  # subset of COLOUR_RGB keys
    shapes: tuple[str, ...] = SHAPE_WORDS  # subset of SHAPE_WORDS
    min_shapes: int = 1
    max_shapes: int = 3
    # Shape size as the radius of a circle of equal area, as a fraction of image_size; the minimum keeps a
    # shape recognisable at 64 px. Equal-area sizing makes every shape equally likely to be the largest.
    min_radius: float = 0.09
    max_radius: float = 0.2
    min_area_ratio: float = 1.25  # largest area / second largest area; makes "largest" unambiguous
    textured_background: float = 0.5  # probability that the background is textured rather than plain
    colour_jitter: int = 18  # +- per RGB channel, so a colour word is a region of colour space, not one value
    captions_per_image: int = 1  # several lines per image in captions.jsonl (different templates)
    canonical_binding: bool = True  # one colour-shape pairing per bag of words in a world (see module doc)

    def validate(self) -> None:
        """Raise UsageError for impossible settings."""
        if not 16 <= self.image_size <= 1024:
            raise UsageError(f"toy world image_size must be in 16..1024, got {self.image_size}")
        unknown = [c for c in self.colours if c not in COLOUR_RGB]
        unknown += [s for s in self.shapes if s not in SHAPE_WORDS]
        if unknown:
            raise UsageError(f"unknown toy world colour/shape words: {', '.join(unknown)}")
        if len(set(self.colours)) != len(self.colours) or len(set(self.shapes)) != len(self.shapes):
            raise UsageError("toy world colours and shapes must not repeat")
        limit = min(len(self.colours), len(self.shapes))
        if not 1 <= self.min_shapes <= self.max_shapes <= limit:
            raise UsageError(
                f"toy world needs 1 <= min_shapes <= max_shapes <= {limit} (distinct colours and shapes "
                f"per image), got {self.min_shapes}..{self.max_shapes}"
            )
        if not 0 < self.min_radius <= self.max_radius <= 0.3:
            raise UsageError("toy world radii must satisfy 0 < min_radius <= max_radius <= 0.3")
        if not 0.0 <= self.textured_background <= 1.0:
            raise UsageError("toy world textured_background is a probability in [0, 1]")
        if self.captions_per_image < 1:
            raise UsageError("toy world captions_per_image must be >= 1")
        if self.min_area_ratio < 1.0:
            raise UsageError("toy world min_area_ratio must be >= 1")


@dataclass(frozen=True)
class ShapeLabel:
    """One shape in an image: its words, visible pixel area and COCO bbox ``[x, y, w, h]``."""

    colour: str
    shape: str
    area: int
    bbox: tuple[int, int, int, int]


@dataclass
class Scene:
    """One rendered toy image with its ground truth (shapes sorted by area, largest first)."""

    image: np.ndarray  # (H, W, 3) uint8
    instance_mask: np.ndarray  # (H, W) uint8, 0 = background, k = shapes[k - 1]
    shapes: list[ShapeLabel]
    background: str
    captions: list[str]

    def class_mask(self, shapes: tuple[str, ...] = SHAPE_WORDS) -> np.ndarray:
        """Per-pixel shape category id (index in ``shapes`` + 1, 0 = background), (H, W) uint8."""
        lut = np.zeros(len(self.shapes) + 1, dtype=np.uint8)
        for k, s in enumerate(self.shapes, start=1):
            lut[k] = shapes.index(s.shape) + 1
        return lut[self.instance_mask]


@dataclass(frozen=True)
class ImageLabels:
    """A row of ``labels.jsonl``: the ground truth of one image, shapes largest first."""

    image: str  # relative path, the same key as in captions.jsonl
    image_id: int
    background: str
    shapes: tuple[ShapeLabel, ...]

    def largest(self) -> tuple[str, str]:
        """(colour, shape) of the largest visible shape: the words its top explanation words should name."""
        return self.shapes[0].colour, self.shapes[0].shape


@dataclass
class ToyWorld:
    """A generated toy world on disk (what :func:`generate_toy_world` and :func:`load_toy_world` return)."""

    root: Path
    n_images: int
    seed: int
    config: ToyWorldConfig
    vocabulary: list[str] = field(default_factory=list)  # every word a caption can contain, sorted

    @property
    def captions_path(self) -> Path:
        return self.root / "captions.jsonl"

    @property
    def labels_path(self) -> Path:
        return self.root / "labels.jsonl"

    @property
    def annotations_path(self) -> Path:
        """COCO instances with shape-word categories (PatchDis)."""
        return self.root / "annotations" / "instances.json"

    @property
    def colour_annotations_path(self) -> Path:
        """COCO instances with colour-word categories."""
        return self.root / "annotations" / "instances_colour.json"

    @property
    def shape_categories(self) -> list[str]:
        """Shape words in category-id order (id = index + 1)."""
        return list(self.config.shapes)

    @property
    def colour_categories(self) -> list[str]:
        """Colour words in category-id order (id = index + 1)."""
        return list(self.config.colours)

    def labels(self) -> dict[str, ImageLabels]:
        """The ``labels.jsonl`` sidecar keyed by relative image path."""
        return read_labels(self.root)


def toy_vocabulary(config: ToyWorldConfig | None = None) -> list[str]:
    """Every word that can appear in a toy caption (sorted): colours, shapes and the template words."""
    config = config or ToyWorldConfig()
    words = set(config.colours) | set(config.shapes) | {"a", "an", "and"}
    for template in CAPTION_TEMPLATES:
        words.update(w for w in template.replace("{0}", " ").split())
    return sorted(words)


def caption_for(shapes: list[tuple[str, str]], template: int = 0) -> str:
    """Caption naming ``(colour, shape)`` pairs in the given order (callers pass largest first).

    >>> caption_for([("red", "circle"), ("blue", "star")])
    'a red circle and a blue star'
    """
    # "an orange star": correct articles keep captions natural for a pretrained LM ("an" is in the vocab).
    phrases = [f"{'an' if c[0] in 'aeiou' else 'a'} {c} {s}" for c, s in shapes]
    # "and" between every pair, no commas: captions stay plain words, so no tokenizer splits "circle,".
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(" and ".join(phrases))


# --------------------------------------------------------------------------------------------- rendering


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """Draw a filled silhouette (value 1) centred at (cx, cy) with half extent r."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape == "square":
        # Slightly smaller than the radius so a square's area is close to a circle's of the same r.
        h = 0.85 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=1)
    elif shape == "triangle":
        # Equilateral-ish, apex up, vertically centred on its bounding box.
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=1)
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)], fill=1)
    elif shape == "cross":
        w = 0.34 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=1)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=1)
    else:  # validate() guards this; kept so a new word cannot silently draw nothing
        raise UsageError(f"unknown toy shape {shape!r}")


# Area of each silhouette drawn with half extent r, divided by r^2 (from the geometry in _draw_shape).
_AREA_FACTOR = {
    "circle": np.pi,
    "square": 1.7**2,
    "triangle": 2.0 * 1.8 / 2,
    "star": 5 * 0.45 * np.sin(np.pi / 5),
    "cross": 2 * (2 * 0.68) - 0.68**2,
}
_EQUAL_AREA = {shape: float(np.sqrt(np.pi / f)) for shape, f in _AREA_FACTOR.items()}


def _shape_mask(size: int, shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, r)
    return np.asarray(canvas, dtype=bool)


def _background(rng: np.random.Generator, size: int, textured: bool) -> tuple[np.ndarray, str]:
    """A neutral grey background, (H, W, 3) uint8, and its kind."""
    base = int(rng.integers(120, 221))
    if not textured:
        return np.full((size, size, 3), base, dtype=np.uint8), "plain"
    kind = BACKGROUNDS[1 + int(rng.integers(0, len(BACKGROUNDS) - 1))]
    amplitude = float(rng.integers(12, 36))
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "noise":
        block = int(rng.integers(2, 5))  # blocky noise reads as texture, not as sensor noise
        cells = rng.uniform(-1.0, 1.0, size=(size // block + 1, size // block + 1))
        pattern = cells[yy // block, xx // block]
    elif kind == "stripes":
        period = float(rng.uniform(5.0, 12.0))
        angle = float(rng.uniform(0.0, np.pi))
        pattern = np.sign(np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period))
    else:  # checks
        cell = int(rng.integers(4, 11))
        pattern = np.where(((yy // cell) + (xx // cell)) % 2 == 0, 1.0, -1.0)
    grey = np.clip(base + amplitude * pattern, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2), kind


def _bag_seed(seed: int, colours: list[str], shapes: list[str]) -> int:
    """A stable seed for a bag of words (Python's hash() is salted per process, so use sha256)."""
    key = f"{seed}|{','.join(sorted(colours))}|{','.join(sorted(shapes))}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def _choose_words(
    rng: np.random.Generator, config: ToyWorldConfig, seed: int, n: int
) -> list[tuple[str, str]]:
    colours = [config.colours[i] for i in rng.choice(len(config.colours), size=n, replace=False)]
    shapes = [config.shapes[i] for i in rng.choice(len(config.shapes), size=n, replace=False)]
    if config.canonical_binding:
        # The pairing is a function of the bag only, so every image with these words binds them the same way.
        colours, shapes = sorted(colours), sorted(shapes)
        perm = np.random.default_rng(_bag_seed(seed, colours, shapes)).permutation(n)
        shapes = [shapes[i] for i in perm]
        # Random order of the pairs (who becomes largest) still comes from the image's own rng.
        order = rng.permutation(n)
        return [(colours[i], shapes[i]) for i in order]
    return list(zip(colours, shapes))


def render_scene(index: int, seed: int = 0, config: ToyWorldConfig | None = None) -> Scene:
    """Render image ``index`` of the world ``seed`` (depends on nothing else, so worlds of any size agree)."""
    config = config or ToyWorldConfig()
    size = config.image_size
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    words = _choose_words(rng, config, seed, n)
    background, kind = _background(rng, size, rng.random() < config.textured_background)

    best: list[tuple[str, str, np.ndarray]] = []
    # Rejection sampling for non-overlapping, fully visible shapes with a clear largest one; after many tries
    # keep the best placement found (fewest shapes dropped), so generation always terminates.
    for _attempt in range(200):
        radii = np.sort(rng.uniform(config.min_radius, config.max_radius, size=n))[::-1] * size
        placed: list[tuple[str, str, np.ndarray]] = []
        occupied = np.zeros((size, size), dtype=bool)
        for (colour, shape), r_area in zip(words, radii):
            r = r_area * _EQUAL_AREA[shape]  # drawing half extent that gives this shape the circle's area
            for _ in range(30):
                cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
                mask = _shape_mask(size, shape, cx, cy, r)
                # One pixel of gap (dilated occupancy) keeps shapes visually separate.
                if mask.any() and not (mask & occupied).any():
                    placed.append((colour, shape, mask))
                    grown = occupied | mask
                    grown[1:] |= mask[:-1]
                    grown[:-1] |= mask[1:]
                    grown[:, 1:] |= mask[:, :-1]
                    grown[:, :-1] |= mask[:, 1:]
                    occupied = grown
                    break
        areas = sorted((int(m.sum()) for _, _, m in placed), reverse=True)
        ratio_ok = len(areas) < 2 or areas[0] >= config.min_area_ratio * areas[1]
        if len(placed) == n and ratio_ok:
            best = placed
            break
        if ratio_ok and len(placed) > len(best):
            best = placed
    if not best:
        raise DataError(
            f"toy world: could not place shapes for image {index} (seed {seed}); enlarge image_size"
        )
    if len(best) < n:
        logger.debug("toy image %d: placed %d of %d shapes", index, len(best), n)

    best.sort(key=lambda item: -int(item[2].sum()))  # largest first: captions name it first
    image = background.copy()
    instance_mask = np.zeros((size, size), dtype=np.uint8)
    shapes: list[ShapeLabel] = []
    for k, (colour, shape, mask) in enumerate(best, start=1):
        jitter = rng.integers(-config.colour_jitter, config.colour_jitter + 1, size=3)
        rgb = np.clip(np.array(COLOUR_RGB[colour]) + jitter, 0, 255).astype(np.uint8)
        image[mask] = rgb
        instance_mask[mask] = k
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
        shapes.append(ShapeLabel(colour, shape, int(mask.sum()), bbox))

    pairs = [(s.colour, s.shape) for s in shapes]
    first = int(rng.integers(0, len(CAPTION_TEMPLATES)))
    captions = [caption_for(pairs, first + j) for j in range(config.captions_per_image)]
    return Scene(image=image, instance_mask=instance_mask, shapes=shapes, background=kind, captions=captions)


# --------------------------------------------------------------------------------------------- writing


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils  # imported here: only generation needs it

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


_OUR_ENTRIES = ("images", "masks", "annotations", "captions.jsonl", "labels.jsonl", "toyworld.json")


def _prepare_dir(out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    present = [name for name in _OUR_ENTRIES if (out / name).exists()]
    if present and not overwrite:
        raise UsageError(f"{out} already holds a toy world ({', '.join(present)}); pass overwrite=True")
    # Remove only what a toy world writes: out_dir may be a user folder with other files in it.
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def generate_toy_world(
    out_dir: str | Path,
    n_images: int,
    seed: int = 0,
    image_size: int = 64,
    *,
    config: ToyWorldConfig | None = None,
    overwrite: bool = False,
    **options: object,
) -> ToyWorld:
    """Write a toy world of ``n_images`` to ``out_dir`` and return its description.

    ``options`` are :class:`ToyWorldConfig` fields (``max_shapes=2``, ``captions_per_image=3``, ...) applied
    on top of ``config``. ``image_size`` wins over the config's. Raises UsageError for bad settings or when
    ``out_dir`` already holds a toy world and ``overwrite`` is false.
    """
    if n_images < 1:
        raise UsageError(f"toy world needs n_images >= 1, got {n_images}")
    base = asdict(config or ToyWorldConfig())
    unknown = sorted(set(options) - set(base))
    if unknown:
        raise UsageError(f"unknown toy world options: {', '.join(unknown)}")
    base.update(options, image_size=image_size)
    base["colours"], base["shapes"] = tuple(base["colours"]), tuple(base["shapes"])
    cfg = ToyWorldConfig(**base)
    cfg.validate()

    out = Path(out_dir)
    _prepare_dir(out, overwrite)
    for sub in ("images", "masks", "annotations"):
        (out / sub).mkdir()

    shape_ids = {s: i for i, s in enumerate(cfg.shapes, start=1)}
    colour_ids = {c: i for i, c in enumerate(cfg.colours, start=1)}
    coco_images, shape_anns, colour_anns = [], [], []
    with (
        open(out / "captions.jsonl", "w", encoding="utf-8") as cap_f,
        open(out / "labels.jsonl", "w", encoding="utf-8") as lab_f,
    ):
        for index in range(n_images):
            scene = render_scene(index, seed, cfg)
            image_id = index + 1  # COCO ids start at 1 (some tools treat id 0 as missing)
            rel = f"images/{image_id:06d}.png"
            Image.fromarray(scene.image, "RGB").save(out / rel, optimize=False)
            Image.fromarray(scene.class_mask(cfg.shapes), "L").save(out / f"masks/{image_id:06d}.png")
            for caption in scene.captions:
                cap_f.write(_dumps({"image": rel, "caption": caption}) + "\n")
            lab_f.write(
                _dumps(
                    {
                        "image": rel,
                        "image_id": image_id,
                        "background": scene.background,
                        "shapes": [asdict(s) | {"bbox": list(s.bbox)} for s in scene.shapes],
                    }
                )
                + "\n"
            )
            coco_images.append(
                {"id": image_id, "file_name": rel, "width": cfg.image_size, "height": cfg.image_size}
            )
            for k, s in enumerate(scene.shapes, start=1):
                ann = {
                    "id": len(shape_anns) + 1,
                    "image_id": image_id,
                    "segmentation": _rle(scene.instance_mask == k),
                    "area": s.area,
                    "bbox": list(s.bbox),
                    "iscrowd": 0,
                    "colour": s.colour,
                    "shape": s.shape,
                }
                shape_anns.append(ann | {"category_id": shape_ids[s.shape]})
                colour_anns.append(ann | {"category_id": colour_ids[s.colour]})

    info = {"description": "lexsearch toy world", "version": FORMAT_VERSION, "seed": seed}
    for name, anns, words, supercategory in (
        ("instances.json", shape_anns, cfg.shapes, "shape"),
        ("instances_colour.json", colour_anns, cfg.colours, "colour"),
    ):
        categories = [
            {"id": i, "name": w, "supercategory": supercategory} for i, w in enumerate(words, start=1)
        ]
        coco = {"info": info, "images": coco_images, "annotations": anns, "categories": categories}
        (out / "annotations" / name).write_text(_dumps(coco), encoding="utf-8")

    world = ToyWorld(root=out, n_images=n_images, seed=seed, config=cfg, vocabulary=toy_vocabulary(cfg))
    meta = {
        "format_version": FORMAT_VERSION,
        "n_images": n_images,
        "seed": seed,
        "config": asdict(cfg),
        "vocabulary": world.vocabulary,
        "shape_categories": world.shape_categories,
        "colour_categories": world.colour_categories,
    }
    # Written last: its presence means the world is complete (an interrupted run leaves none).
    (out / "toyworld.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    logger.info("toy world: %d images (seed %d, %d px) in %s", n_images, seed, cfg.image_size, out)
    return world


# --------------------------------------------------------------------------------------------- reading


def load_toy_world(root: str | Path) -> ToyWorld:
    """Describe a toy world written earlier; DataError if it is missing or incomplete."""
    root = Path(root)
    meta_path = root / "toyworld.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: not found (no complete toy world in {root})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        cfg_dict = dict(meta["config"])
        cfg_dict["colours"], cfg_dict["shapes"] = tuple(cfg_dict["colours"]), tuple(cfg_dict["shapes"])
        cfg = ToyWorldConfig(**cfg_dict)
        return ToyWorld(root, int(meta["n_images"]), int(meta["seed"]), cfg, list(meta["vocabulary"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta_path}: unreadable toy world description ({exc})") from exc


def read_labels(root: str | Path) -> dict[str, ImageLabels]:
    """Read ``labels.jsonl`` of a toy world, keyed by relative image path (as in captions.jsonl)."""
    path = Path(root) / "labels.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found")
    labels: dict[str, ImageLabels] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                shapes = tuple(
                    ShapeLabel(s["colour"], s["shape"], int(s["area"]), tuple(int(v) for v in s["bbox"]))
                    for s in row["shapes"]
                )
                if not shapes:
                    raise ValueError("no shapes")
                labels[row["image"]] = ImageLabels(
                    row["image"], int(row["image_id"]), row["background"], shapes
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: bad label row ({exc})") from exc
    return labels


def largest_shape(labels: dict[str, ImageLabels], image: str) -> tuple[str, str]:
    """(colour, shape) of the largest shape in ``image`` (a key of ``read_labels``)."""
    try:
        return labels[image].largest()
    except KeyError:
        raise DataError(f"no toy labels for image {image!r}") from None
