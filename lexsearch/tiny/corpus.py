"""A broad procedural image corpus for the tiny ViT's self-supervised pretraining: images only, no labels.

DINOv2 is pretrained on a broad image collection that no evaluated data set shaped. The tiny ViT's stand-in
for that collection is this generator, which shares no code, palette or shape list with the toy world
(:mod:`lexsearch.data.toyworld`) or the shapes2 validation world (:mod:`lexsearch.data.shapes2`):

- colours drawn continuously in HSV, with a share of near-white, near-black and greys, so every colour word
  of any world is a region the backbone has seen (never a list of named colours);
- shape *families* with continuous parameters: regular and star polygons (3-9 points), ellipses of any
  aspect, rings, crescents, plus and X crosses, arrows, hearts, superellipses, random smooth blobs and
  rectangles/bars, each at a random rotation and size (3%-40% of the image);
- clutter: 1-7 objects that may overlap and leave the frame, some with stripes, checks, outlines or a
  gradient on them;
- backgrounds: plain of any colour, two-tone gradients, noise, stripes, checks, dots, or a cluttered field of
  small shapes; then random blur and sensor noise.

Nothing is named: :func:`corpus_pixels` returns pixels; :mod:`lexsearch.tiny.ssl_vision` learns from them. Image ``i`` of corpus ``seed`` depends only on both.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FAMILIES = (
    "polygon",
    "star",
    "ellipse",
    "ring",
    "crescent",
    "cross",
    "arrow",
    "heart",
    "superellipse",
    "blob",
    "bar",
)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (float 0..255): mostly saturated hues at any value, and ~25% whites, blacks and greys."""
    if rng.random() < 0.25:
        v = rng.choice([rng.uniform(0.0, 0.12), rng.uniform(0.88, 1.0), rng.uniform(0.25, 0.75)])
        s = rng.uniform(0.0, 0.12)
    else:
        v, s = rng.uniform(0.3, 1.0), rng.uniform(0.35, 1.0)
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), s, v)) * 255.0


def _outline(family: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Unit-size polygons of one shape: (filled parts, holes cut out of them)."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    if family == "polygon":
        n = int(rng.integers(3, 10))
        a = np.arange(n) * 2 * np.pi / n
        polys = [np.stack([np.cos(a), np.sin(a)], 1)]
    elif family == "star":
        n = int(rng.integers(4, 10))
        a = np.arange(2 * n) * np.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.3, 0.7))
        polys = [np.stack([r * np.cos(a), r * np.sin(a)], 1)]
    elif family == "ellipse":
        polys = [circle * [1.0, rng.uniform(0.35, 1.0)]]
    elif family == "ring":
        return [circle], [circle * rng.uniform(0.35, 0.75)]
    elif family == "crescent":
        k = rng.uniform(0.6, 0.9)
        return [circle], [circle * k + [rng.uniform(0.25, 0.6), 0]]
    elif family == "cross":
        w = rng.uniform(0.15, 0.4)
        bar = np.array([[-w, -1], [w, -1], [w, 1], [-w, 1]])
        return [bar, bar[:, ::-1]], []
    elif family == "arrow":
        s, h = rng.uniform(0.12, 0.3), rng.uniform(0.4, 0.75)
        x = rng.uniform(-0.1, 0.4)
        polys = [np.array([[-1, -s], [x, -s], [x, -h], [1, 0], [x, h], [x, s], [-1, s]])]
    elif family == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        polys = [np.stack([x, y + 2.5], 1) / 16.0]
    elif family == "superellipse":
        p = rng.uniform(0.6, 4.0)
        c, s_ = np.cos(t), np.sin(t)
        polys = [np.stack([np.sign(c) * np.abs(c) ** (2 / p), np.sign(s_) * np.abs(s_) ** (2 / p)], 1)]
    elif family == "blob":
        k = np.arange(1, 5)
        amp = rng.uniform(0, 0.25, size=4) / k
        phase = rng.uniform(0, 2 * np.pi, size=4)
        r = 0.75 + (amp[None] * np.cos(k[None] * t[:, None] + phase[None])).sum(1)
        polys = [circle * r[:, None]]
    else:  # bar
        polys = [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [1.0, rng.uniform(0.15, 1.0)]]
    return polys, []


def _rotated(poly: np.ndarray, angle: float, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    pts = poly @ np.array([[c, s], [-s, c]]) * r + [cx, cy]
    return [(float(x), float(y)) for x, y in pts]


def _object_mask(size: int, family: str, rng: np.random.Generator) -> np.ndarray:
    parts, holes = _outline(family, rng)
    angle = rng.uniform(0, 2 * np.pi)
    r = size * rng.uniform(0.03, 0.4)  # half extent: objects from a few pixels to most of the frame
    cx, cy = rng.uniform(-0.05, 1.05, size=2) * size
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for k, p in enumerate(parts + holes):
        draw.polygon(_rotated(p, angle, cx, cy, r), fill=0 if k >= len(parts) else 1)
    return np.asarray(canvas, dtype=bool)


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (H, W) pattern in -1..1: stripes, checks, noise or dots."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        period, angle = rng.uniform(3, 14), rng.uniform(0, np.pi)
        return np.sign(np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period))
    if kind == 1:
        cell = int(rng.integers(3, 12))
        return np.where(((yy // cell) + (xx // cell)) % 2 == 0, 1.0, -1.0)
    if kind == 2:
        block = int(rng.integers(1, 5))
        cells = rng.uniform(-1, 1, size=(size // block + 1, size // block + 1))
        return cells[yy.astype(int) // block, xx.astype(int) // block]
    step = int(rng.integers(4, 10))
    return np.where((yy % step < 2) & (xx % step < 2), 1.0, -1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    kind = rng.random()
    if kind < 0.3:
        return np.broadcast_to(a, (size, size, 3)).copy()
    if kind < 0.55:
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
        angle = rng.uniform(0, 2 * np.pi)
        w = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
        return a * (1 - w) + b * w
    mix = rng.uniform(0.1, 0.5)
    p = (_pattern(rng, size)[..., None] + 1) / 2 * mix
    return a * (1 - p) + b * p


def paint_object(
    image: np.ndarray,
    mask: np.ndarray,
    colour: np.ndarray,
    rng: np.random.Generator,
    flat: float = 0.7,
    textured: float = 0.85,
    tone: tuple[float, float] = (0.2, 0.6),
) -> None:
    """Paint one object's ``mask`` on ``image`` in place: flat ``colour`` (share ``flat``), textured with a
    second tone of strength ``tone`` (up to ``textured``), else its outline only."""
    style = rng.random()
    if style < flat:
        image[mask] = colour + rng.normal(0, 4, size=3)
    elif style < textured:  # textured object: its colour and a second tone
        p = (_pattern(rng, image.shape[0])[mask][:, None] + 1) / 2 * rng.uniform(*tone)
        image[mask] = colour * (1 - p) + _colour(rng) * p
    else:  # outline only
        inner = np.asarray(
            Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(3)), dtype=bool
        )
        image[mask & ~inner] = colour


def render_corpus_image(index: int, seed: int, size: int = 64) -> np.ndarray:
    """Image ``index`` of corpus ``seed``: (size, size, 3) uint8."""
    rng = np.random.default_rng([seed, index, 7])
    image = _background(rng, size)
    if rng.random() < 0.15:  # a cluttered field of small shapes behind the objects
        for _ in range(int(rng.integers(5, 15))):
            mask = _object_mask(size, FAMILIES[int(rng.integers(len(FAMILIES)))], rng)
            keep = mask & (rng.random() < 0.5)
            image[keep] = image[keep] * 0.5 + _colour(rng) * 0.5
    for _ in range(int(rng.integers(1, 8))):
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
        mask = _object_mask(size, family, rng)
        if not mask.any():
            continue
        paint_object(image, mask, _colour(rng), rng)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    out = np.asarray(pil).astype(float) + rng.normal(0, rng.uniform(0, 6), size=(size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def corpus_pixels(indices, seed: int, model_config):
    """(N, S, S, 3) uint8 torch tensor of corpus images ``indices`` at the tiny ViT's pretraining size."""
    import torch

    from lexsearch.tiny.vision import pretraining_size

    size = pretraining_size(model_config)
    return torch.from_numpy(np.stack([render_corpus_image(i, seed, size) for i in indices]))
