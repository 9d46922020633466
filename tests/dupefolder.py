"""A folder with known near-duplicates and look-alikes, for the tests and the bench of ``lexsearch dupes``.

Originals: toy-world renders (``lexsearch.data.toyworld``), procedural "landscapes" (smooth colour fields
with blobs) and, where scikit-image is installed (the bench), its bundled photographs. Edited copies of some
originals: JPEG re-encoded at low quality, resized to 50-70%, cropped 3-8%, brightened or recoloured,
rotated 2 degrees. Look-alikes that are not duplicates: toy-world images with the same caption and another
layout, other framings of a photo (a corner crop of about half of it), the two shots of scikit-image's
stereo pair. ``truth`` maps each file to its group: the pairs inside a group are the true duplicate pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

EDITS = ("jpeg", "resize", "crop", "bright", "colour", "rotate")


@dataclass
class DupeFolder:
    folder: Path
    truth: dict[str, str] = field(default_factory=dict)  # path -> group key (an original's name)
    lookalikes: list[tuple[str, str]] = field(default_factory=list)  # pairs that must not be grouped

    def true_pairs(self) -> set[frozenset[str]]:
        groups: dict[str, list[str]] = {}
        for path, g in self.truth.items():
            groups.setdefault(g, []).append(path)
        return {frozenset(p) for m in groups.values() for p in itertools.combinations(sorted(m), 2)}


def edit(im: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """An edited copy and how to save it."""
    w, h = im.size
    if kind == "jpeg":
        return im, {"format": "JPEG", "quality": int(rng.integers(15, 30))}
    if kind == "resize":
        f = float(rng.uniform(0.5, 0.7))
        return im.resize((max(8, round(w * f)), max(8, round(h * f))), Image.LANCZOS), {"format": "PNG"}
    if kind == "crop":
        f = float(rng.uniform(0.03, 0.08))  # the fraction of each side taken off in all
        dx, dy = round(w * f), round(h * f)
        left, top = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        return im.crop((left, top, w - (dx - left), h - (dy - top))), {"format": "JPEG", "quality": 90}
    if kind == "bright":
        f = float(rng.choice([0.8, 1.2]))
        return ImageEnhance.Brightness(im).enhance(f), {"format": "JPEG", "quality": 90}
    if kind == "colour":
        out = ImageEnhance.Color(im).enhance(float(rng.uniform(1.3, 1.6)))
        tint = np.asarray(out, np.int16) + np.array([12, 0, -10], np.int16)
        return Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8)), {"format": "PNG"}
    if kind == "rotate":
        r = im.rotate(float(rng.choice([-2.0, 2.0])), resample=Image.BICUBIC)
        m = max(2, round(0.035 * min(w, h)))  # cut the filled corners away
        return r.crop((m, m, w - m, h - m)), {"format": "JPEG", "quality": 90}
    raise ValueError(kind)


def save(im: Image.Image, path: Path, opts: dict) -> Path:
    fmt = opts.pop("format")
    path = path.with_suffix(".jpg" if fmt == "JPEG" else ".png")
    im.convert("RGB").save(path, fmt, **opts)
    return path


def landscape(seed: int, size: tuple[int, int] = (240, 180)) -> Image.Image:
    """A smooth procedural scene: a sky-to-ground gradient and a few soft blobs of colour."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = top[None, None, :] * (1 - y / h)[..., None] + bottom[None, None, :] * (y / h)[..., None]
    for _ in range(int(rng.integers(3, 7))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.08, 0.3) * w
        a = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - a) + rng.uniform(0, 255, 3)[None, None, :] * a
    img += rng.normal(0, 4, img.shape)  # a little sensor grain
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def toys_by_caption(n_scan: int, size: int, seed: int) -> dict[str, list[Image.Image]]:
    from lexsearch.data.toyworld import ToyWorldConfig, render_scene

    cfg = ToyWorldConfig(image_size=size)
    out: dict[str, list[Image.Image]] = {}
    for i in range(n_scan):
        s = render_scene(i, seed=seed, config=cfg)
        out.setdefault(_bag(s), []).append(Image.fromarray(s.image))
    return out


def _bag(scene) -> str:
    return " and ".join(f"{s.colour} {s.shape}" for s in scene.shapes)


def _skimage_photos() -> dict[str, Image.Image]:
    try:
        from skimage import data
    except ImportError:
        return {}
    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "camera",
        "moon",
        "coins",
        "hubble_deep_field",
        "retina",
        "page",
        "text",
        "grass",
        "gravel",
        "brick",
        "ihc",
        "cell",
        "horse",
        "logo",
        "color",
    ]
    out = {}
    for n in names:
        try:
            a = getattr(data, n)()
        except Exception:  # noqa: BLE001 - an image this scikit-image would download: left out
            continue
        if a.dtype != np.uint8:
            a = (a.astype(np.float32) / max(float(a.max()), 1) * 255).astype(np.uint8)
        im = Image.fromarray(a[..., :3] if a.ndim == 3 else a).convert("RGB")
        im.thumbnail((480, 480))
        out[n] = im
    return out


def make_dupe_folder(
    folder: str | Path, *, toys: int = 8, scenes: int = 6, photos: bool = False, seed: int = 0
) -> DupeFolder:
    """Write the folder: ``toys`` toy-world originals (each with a same-caption look-alike where the world
    has one), ``scenes`` procedural landscapes (each with a corner-crop look-alike), and with ``photos`` the
    scikit-image photographs (each with a corner-crop look-alike; the stereo pair as a look-alike pair).
    Every second original gets one edited copy, every fourth another one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = DupeFolder(folder)
    originals: list[tuple[str, Image.Image]] = []
    by_caption = toys_by_caption(toys * 20, 128, seed + 7)
    twins = [ims for ims in by_caption.values() if len(ims) >= 2]
    for k, ims in enumerate(twins[:toys]):
        originals.append((f"toy{k:02d}", ims[0]))
        originals.append((f"toy{k:02d}-samewords", ims[1]))
        out.lookalikes.append((f"toy{k:02d}", f"toy{k:02d}-samewords"))
    for k in range(scenes):
        im = landscape(seed * 1000 + k)
        originals.append((f"scene{k:02d}", im))
        w, h = im.size
        originals.append(
            (f"scene{k:02d}-corner", im.crop((w // 2, h // 2, w, h)).resize((w, h), Image.LANCZOS))
        )
        out.lookalikes.append((f"scene{k:02d}", f"scene{k:02d}-corner"))
    if photos:
        for name, im in _skimage_photos().items():
            w, h = im.size
            originals.append((name, im))
            originals.append((f"{name}-corner", im.crop((0, 0, w * 11 // 20, h * 11 // 20))))
            out.lookalikes.append((name, f"{name}-corner"))
        try:
            from skimage import data

            left, right = data.stereo_motorcycle()[:2]
            originals.append(("motorcycle-left", Image.fromarray(left).reduce(2)))
            originals.append(("motorcycle-right", Image.fromarray(right).reduce(2)))
            out.lookalikes.append(("motorcycle-left", "motorcycle-right"))
        except Exception:  # noqa: BLE001 - not in every scikit-image
            pass
    names: dict[str, str] = {}
    for k, (name, im) in enumerate(originals):
        path = save(im, folder / name, {"format": "PNG"})
        names[name] = str(path)
        out.truth[str(path)] = name
        n_edits = (k % 2 == 0) + (k % 4 == 0)
        for kind in rng.choice(EDITS, size=n_edits, replace=False):
            copy, opts = edit(im, str(kind), rng)
            path = save(copy, folder / f"{name}-{kind}", opts)
            out.truth[str(path)] = name
    out.lookalikes = [(names[a], names[b]) for a, b in out.lookalikes]
    return out
