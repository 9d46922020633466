"""Surrogate contour classes: a label-free training signal for the tiny ViT, from the generator's own seeds.

The tiny ViT has to read *shape* from patch tokens the way DINOv2's do, on shapes it was never shown. Pixel,
edge and contrastive objectives at a CPU's budget did not get there (docs/toy-results.md). What does is the
exemplar idea (Dosovitskiy et al. 2014: each seed is its own surrogate class, its transformed copies the
instances) on formula-driven contours (Kataoka et al.: ViTs pretrained on random radial contours transfer
like ones pretrained on natural images):

- class ``c`` of a bank is a random closed outline drawn from seed ``(seed, c)``: a radial Fourier contour
  (1-7 harmonics), optionally sampled at 3-8 vertices (corners), a second lobe joined to it (non-convex,
  not star-shaped), an aspect stretch, and a hole that may break the outline (bites, rings);
- an instance is that outline at any rotation, mirror, size and place, with its harmonics jittered, in any
  colour and texture, on any background, among 1-4 objects that may overlap.

No class has a name and none is chosen to look like a shape of any world the model is evaluated on; the
targets a patch gets are "which of the bank's outlines covers me" and the coarse colour bin of the object's
own pixels (so training does not wash colour out of the tokens). :func:`contour_targets` returns them in the
:class:`~lexsearch.tiny.vision.VisionTargets` form :func:`~lexsearch.tiny.vision.pretrain_vision` trains on.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lexsearch.tiny.corpus import FAMILIES, _background, _colour, _outline, paint_object

N_HUES = 12  # hue bins of saturated colours, each in a light and a dark half
N_GREYS = 5  # black .. white


def colour_bin(rgb: np.ndarray) -> int:
    """Coarse bin (0-based) of an RGB colour (0..255): a grey level for unsaturated ones, else hue x value."""
    h, s, v = colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=float) / 255.0))
    if s < 0.2 or v < 0.15:
        return min(N_GREYS - 1, int(v * N_GREYS)) if v >= 0.15 else 0
    return N_GREYS + 2 * (int(h * N_HUES) % N_HUES) + int(v >= 0.65)


N_COLOUR_BINS = N_GREYS + 2 * N_HUES


class ContourBank:
    """``n_classes`` random outlines; :meth:`outline` gives one instance's polygons at unit size."""

    def __init__(self, n_classes: int, seed: int) -> None:
        self.n_classes = n_classes
        self.params = [self._class_params(np.random.default_rng([seed, c, 11])) for c in range(n_classes)]
        self._geometry: np.ndarray | None = None

    def geometry(self) -> np.ndarray:
        """(n_classes, N_GEOMETRY) descriptors of each class's outline (no jitter), standardised over the
        bank and clipped at 3 standard deviations: the regression target of the class's patches."""
        if self._geometry is None:
            rng = np.random.default_rng(0)
            g = np.stack([outline_geometry(*self.outline(c, rng, jitter=0.0)) for c in range(self.n_classes)])
            self._stats = g.mean(0), g.std(0) + 1e-6
            self._geometry = self._scaled(g)
        return self._geometry

    def standardise(self, g: np.ndarray) -> np.ndarray:
        """Descriptors ``g`` of any outline on the bank's scale (the bank's mean and spread, clipped at 3)."""
        self.geometry()
        return self._scaled(g)

    def _scaled(self, g: np.ndarray) -> np.ndarray:
        mean, std = self._stats
        return np.clip((g - mean) / std, -3.0, 3.0).astype(np.float32)

    @staticmethod
    def _class_params(rng: np.random.Generator) -> dict:
        def lobe() -> dict:
            k = int(rng.integers(1, 8))
            amp = rng.uniform(0, 1, size=k) / np.arange(1, k + 1) ** rng.uniform(0.3, 1.5)
            amp *= rng.uniform(0.25, 0.9) / max(amp.sum(), 1e-6)
            return {"amp": amp, "phase": rng.uniform(0, 2 * np.pi, size=k)}

        p = {"main": lobe(), "stretch": rng.uniform(0.35, 1.0) if rng.random() < 0.5 else 1.0}
        p["vertices"] = int(rng.integers(3, 9)) if rng.random() < 0.5 else 0
        p["vertex_twist"] = rng.uniform(0, 2 * np.pi)
        if rng.random() < 0.3:  # a second lobe joined on: crosses, arrows, dumbbells, L-like outlines
            ang = rng.uniform(0, 2 * np.pi)
            p["second"] = dict(lobe(), offset=rng.uniform(0.4, 0.9) * np.array([np.cos(ang), np.sin(ang)]))
            p["second_scale"] = rng.uniform(0.4, 0.9)
            p["second_stretch"] = rng.uniform(0.2, 1.0)
        if rng.random() < 0.25:  # a hole: a ring when centred, a bite when it breaks the outline
            ang = rng.uniform(0, 2 * np.pi)
            p["hole_scale"] = rng.uniform(0.3, 0.75)
            p["hole_offset"] = rng.uniform(0, 0.7) * np.array([np.cos(ang), np.sin(ang)])
        return p

    def outline(
        self, c: int, rng: np.random.Generator, jitter: float = 0.08
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(filled parts, holes) of class ``c``, about unit radius, with this instance's small jitter."""
        p = self.params[c]

        def radial(lobe: dict, n_points: int, twist: float = 0.0) -> np.ndarray:
            t = np.linspace(0, 2 * np.pi, n_points, endpoint=False) + twist
            amp = lobe["amp"] * rng.normal(1.0, jitter, size=lobe["amp"].shape) if jitter else lobe["amp"]
            k = np.arange(1, len(amp) + 1)
            r = 1.0 + (amp[None] * np.cos(k[None] * t[:, None] + lobe["phase"][None])).sum(1)
            r = np.maximum(r, 0.15)
            return np.stack([r * np.cos(t), r * np.sin(t)], 1)

        n = p["vertices"] or 72
        main = radial(p["main"], n, p["vertex_twist"] if p["vertices"] else 0.0) * [1.0, p["stretch"]]
        parts = [main]
        if "second" in p:
            s = p["second"]
            pts = radial(s, 48) * [1.0, p["second_stretch"]] * p["second_scale"] + s["offset"]
            parts.append(pts)
        holes = []
        if "hole_scale" in p:
            holes.append(radial(p["main"], 48) * p["hole_scale"] + p["hole_offset"])
        return _unit(parts, holes)


N_GEOMETRY = 20  # shape descriptors per object (see outline_geometry)
SILHOUETTE_SIDE = 8  # a silhouette target is SILHOUETTE_SIDE x SILHOUETTE_SIDE (see silhouette)
SIZES = (0.12, 0.42)  # an object's half extent, as shares of the image side
MAX_OBJECTS = 4


def outline_geometry(parts, holes, size: int = 96) -> np.ndarray:
    """Rotation-, mirror- and scale-invariant descriptors of one outline, measured on its own mask (drawn
    alone at ``size`` px): circularity, solidity, hole share, elongation, extent, the radial profile's Fourier
    magnitudes 1-8 and the 7 Hu moments (log-scaled). What a patch token should know of its object's shape,
    without any name for it."""
    from scipy import ndimage
    from scipy.spatial import ConvexHull

    m = _draw(parts, holes, 0.0, False, size / 2, size / 2, size * 0.45, size)
    area = float(m.sum())
    if area < 16:
        return np.zeros(N_GEOMETRY)
    inner = ndimage.binary_erosion(m)
    edge = m & ~inner
    perimeter = float(edge.sum())
    ys, xs = np.nonzero(m)
    ey, ex = np.nonzero(edge)
    hull = ConvexHull(np.stack([ex, ey], 1).astype(float)).volume
    filled = ndimage.binary_fill_holes(m)
    cy, cx = ys.mean(), xs.mean()
    cov = np.cov(np.stack([xs - cx, ys - cy]))
    lo, hi = np.linalg.eigvalsh(cov)
    fy, fx = np.nonzero(filled)
    ang = (np.arctan2(fy - cy, fx - cx) + np.pi) / (2 * np.pi) * 64
    radius = np.hypot(fy - cy, fx - cx)
    profile = np.zeros(64)
    np.maximum.at(profile, np.minimum(ang.astype(int), 63), radius)
    profile = profile / max(profile.mean(), 1e-6)
    fourier = np.abs(np.fft.rfft(profile))[1:9] / 64
    # Hu moments of the mask (normalised central moments).
    dx, dy = xs - cx, ys - cy

    def eta(p, q):
        return float((dx**p * dy**q).sum()) / area ** (1 + (p + q) / 2)

    n20, n02, n11 = eta(2, 0), eta(0, 2), eta(1, 1)
    n30, n03, n21, n12 = eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
    a, b = n30 + n12, n21 + n03
    hu = np.array(
        [
            n20 + n02,
            (n20 - n02) ** 2 + 4 * n11**2,
            (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2,
            a**2 + b**2,
            (n30 - 3 * n12) * a * (a**2 - 3 * b**2) + (3 * n21 - n03) * b * (3 * a**2 - b**2),
            (n20 - n02) * (a**2 - b**2) + 4 * n11 * a * b,
            abs((3 * n21 - n03) * a * (a**2 - 3 * b**2) - (n30 - 3 * n12) * b * (3 * a**2 - b**2)),
        ]
    )
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-12)
    return np.concatenate(
        [
            [
                4 * np.pi * area / max(perimeter, 1.0) ** 2,
                area / max(hull, 1.0),
                float(filled.sum() - area) / float(filled.sum()),
                np.sqrt(max(lo, 0.0) / max(hi, 1e-6)),
                area / float(size * size),
            ],
            fourier,
            hu,
        ]
    )


def _unit(parts, holes):
    """Polygons centred on their bounding box and scaled to unit half extent, as the bank's are."""
    every = np.concatenate(parts)
    centre = (every.max(0) + every.min(0)) / 2
    extent = float(np.abs(every - centre).max())
    return [(q - centre) / extent for q in parts], [(q - centre) / extent for q in holes]


def _draw(parts, holes, angle: float, mirror: bool, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for k, poly in enumerate(parts + holes):
        q = poly * [-1.0, 1.0] if mirror else poly
        pts = q @ rot * r + [cx, cy]
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=0 if k >= len(parts) else 1)
    return np.asarray(canvas, dtype=bool)


def silhouette(parts, holes, angle: float, mirror: bool, side: int = SILHOUETTE_SIDE) -> np.ndarray:
    """(side * side,) float32 in [0, 1]: the object's mask as it lies in the image (its rotation and mirror
    kept), cut to its bounding square and shrunk by area averaging. Translation and scale are gone, the
    outline is not: a patch that regresses it must know its whole object's silhouette, whatever world the
    shape comes from, and a linear read-out then tells any two outlines apart that differ in the picture."""
    m = _draw(parts, holes, angle, mirror, 48.0, 48.0, 32.0, 96)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return np.zeros(side * side, dtype=np.float32)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    extent = max(y1 - y0, x1 - x0)
    square = np.zeros((extent, extent), dtype=np.uint8)
    oy, ox = (extent - (y1 - y0)) // 2, (extent - (x1 - x0)) // 2
    square[oy : oy + y1 - y0, ox : ox + x1 - x0] = m[y0:y1, x0:x1] * 255
    small = Image.fromarray(square).resize((side, side), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0).reshape(-1)


def render_contour_image(
    bank: ContourBank,
    index: int,
    seed: int,
    size: int = 64,
    sizes: tuple[float, float] = SIZES,
    max_objects: int = MAX_OBJECTS,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Image ``index``: (size, size, 3) uint8 pixels, (size, size) int mask (0 = background, c + 1 = class
    ``c``, topmost object wins) and the visible objects' (class, colour bin). An object's half extent is
    drawn from ``sizes`` (shares of the image side); 1 to ``max_objects`` objects."""
    image, mask, _, objects = _render(bank, index, seed, size, sizes, max_objects)
    return image, mask, [(o["class"], o["bin"]) for o in objects]


def _render(
    bank, index, seed, size, sizes=SIZES, max_objects=MAX_OBJECTS, silhouette_side=0, family_share=0.0
):
    """render_contour_image's work, plus the instance mask (0 = background, k = objects[k - 1]) and, per
    visible object, its silhouette (:func:`silhouette`) when ``silhouette_side`` > 0.

    With ``family_share`` > 0 that share of the objects is drawn from the broad corpus's parametric shape
    families (:data:`lexsearch.tiny.corpus.FAMILIES`: polygons, stars, bars, crosses, ...) instead of the
    bank: class ``bank.n_classes`` for all of them (one marker, no family is named or told apart), their
    descriptors measured per instance."""
    rng = np.random.default_rng([seed, index, 13])
    image = _background(rng, size)
    if rng.random() < 0.15:  # faint clutter of small outlines behind the objects
        for _ in range(int(rng.integers(4, 10))):
            parts, holes = bank.outline(int(rng.integers(bank.n_classes)), rng)
            m = _draw(
                parts, holes, rng.uniform(0, 2 * np.pi), False, *rng.uniform(0, size, 2), size * 0.06, size
            )
            image[m] = image[m] * 0.6 + _colour(rng) * 0.4
    mask = np.zeros((size, size), dtype=np.int64)
    instance = np.zeros((size, size), dtype=np.int64)
    drawn: list[dict] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        if family_share and rng.random() < family_share:
            c = bank.n_classes
            parts, holes = _unit(*_outline(FAMILIES[int(rng.integers(len(FAMILIES)))], rng))
        else:
            c = int(rng.integers(bank.n_classes))
            parts, holes = bank.outline(c, rng)
        r = size * rng.uniform(*sizes)
        cx, cy = rng.uniform(0.1, 0.9, size=2) * size
        angle, mirror = rng.uniform(0, 2 * np.pi), bool(rng.random() < 0.5)
        m = _draw(parts, holes, angle, mirror, cx, cy, r, size)
        if m.sum() < 8:
            continue
        colour = _colour(rng)
        paint_object(image, m, colour, rng, flat=0.75, textured=0.92, tone=(0.15, 0.4))
        mask[m] = c + 1
        drawn.append({"class": c, "bin": colour_bin(colour)})
        if c == bank.n_classes:
            drawn[-1]["geometry"] = bank.standardise(outline_geometry(parts, holes))
        instance[m] = len(drawn)
        if silhouette_side:
            drawn[-1]["silhouette"] = silhouette(parts, holes, angle, mirror, silhouette_side)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9)))
    out = np.asarray(pil).astype(float) + rng.normal(0, rng.uniform(0, 5), size=(size, size, 3))
    visible = {int(v) for v in np.unique(instance) if v > 0}
    # Objects drawn over completely are dropped, and the instance mask renumbered to the kept ones.
    keep = [k for k in range(1, len(drawn) + 1) if k in visible]
    renumber = np.zeros(len(drawn) + 1, dtype=np.int64)
    renumber[keep] = np.arange(1, len(keep) + 1)
    objects = [drawn[k - 1] for k in keep]
    return np.clip(out, 0, 255).astype(np.uint8), mask, renumber[instance], objects


def contour_targets(
    indices,
    seed: int,
    n_classes: int,
    model_config,
    patch_size: int,
    silhouette_side: int = 0,
    family_share: float = 0.0,
    **render,
):
    """VisionTargets of contour images ``indices`` of corpus ``seed``, rendered in memory: per-patch surrogate
    class (majority of the patch's pixels, 0 = background) and colour bin, image-level presence of both, and
    per foreground patch a regression target: its outline's descriptors (:func:`outline_geometry`), followed,
    when ``silhouette_side`` > 0, by its own object's silhouette (:func:`silhouette`, scaled to [-1, 1]).
    ``family_share``: see :func:`_render` (the family objects are one more class, ``outline{n_classes}``)."""
    import torch

    from lexsearch.model.images import preprocess
    from lexsearch.tiny.vision import VisionTargets, pretraining_size

    bank = ContourBank(n_classes, seed)
    n_out = n_classes + (1 if family_share else 0)
    size = pretraining_size(model_config)
    grid = size // patch_size
    n_sil = silhouette_side * silhouette_side
    n_geo = N_GEOMETRY + n_sil
    pixels = np.empty((len(indices), 3, size, size), dtype=np.float32)
    patch_shape = np.zeros((len(indices), grid * grid), dtype=np.int64)
    patch_colour = np.zeros_like(patch_shape)
    geometry = np.zeros((len(indices), grid * grid, n_geo), dtype=np.float32)
    present = np.zeros((len(indices), n_out + N_COLOUR_BINS), dtype=np.float32)
    bank_geometry = bank.geometry()
    for row, index in enumerate(indices):
        image, mask, instance, objects = _render(
            bank, index, seed, size, silhouette_side=silhouette_side, family_share=family_share, **render
        )
        pixels[row] = preprocess(
            Image.fromarray(image), size, model_config.image_mean, model_config.image_std
        )
        bin_of = np.zeros(len(objects) + 1, dtype=np.int64)
        class_of = np.zeros(len(objects) + 1, dtype=np.int64)
        for k, o in enumerate(objects, start=1):
            bin_of[k], class_of[k] = o["bin"] + 1, o["class"] + 1
            present[row, o["class"]] = 1.0
            present[row, n_out + o["bin"]] = 1.0
        # The patch belongs to the object covering most of it (background when the background does).
        cells = (
            instance.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid**2, -1)
        )
        ids = np.array([np.bincount(cell, minlength=1).argmax() for cell in cells])
        patch_shape[row] = class_of[ids]
        patch_colour[row] = bin_of[ids]
        table = np.zeros((len(objects) + 1, n_geo), dtype=np.float32)
        for k, o in enumerate(objects, start=1):
            table[k, :N_GEOMETRY] = o["geometry"] if "geometry" in o else bank_geometry[o["class"]]
            if n_sil:
                table[k, N_GEOMETRY:] = o["silhouette"] * 2 - 1
        geometry[row] = table[ids]  # each foreground patch regresses its object's (background: zeros)
    flip = np.arange(n_geo)
    if n_sil:
        flip[N_GEOMETRY:] = N_GEOMETRY + np.arange(n_sil).reshape(silhouette_side, -1)[:, ::-1].reshape(-1)
    return VisionTargets(
        pixels=torch.from_numpy(pixels),
        patch_shape=torch.from_numpy(patch_shape),
        patch_colour=torch.from_numpy(patch_colour),
        present=torch.from_numpy(present),
        shapes=[f"outline{c}" for c in range(n_out)],
        colours=[f"bin{b}" for b in range(N_COLOUR_BINS)],
        patch_geometry=torch.from_numpy(geometry),
        geometry_flip=torch.from_numpy(flip.copy()),
    )


def cluster_targets(targets, others=(), k: int = 128, seed: int = 0, sample: int = 60000):
    """Surrogate classes by clustering (DeepCluster's idea, on the generator's own geometry rather than on
    features): k-means with ``k`` centres over the foreground patches' regression targets of ``targets``
    (the outline descriptors and the silhouette made mirror-symmetric, so a flipped image keeps its
    classes), then every foreground patch of ``targets`` and of each of ``others`` (held-out sets) gets its
    nearest centre as its class. Rewrites ``patch_shape``, ``present`` and ``shapes`` in place; the classes
    are numbered clusters, none named. Clusters are learnable from the pixels (unlike the bank's identities,
    which the ViT could only memorise) and sharper than the regression alone."""
    import torch
    from scipy.cluster.vq import kmeans2

    def features(t) -> torch.Tensor:
        g = t.patch_geometry
        flip = t.geometry_flip if t.geometry_flip is not None else torch.arange(g.shape[-1])
        return (g + g[..., flip]) / 2

    fg = targets.patch_shape > 0
    points = features(targets)[fg].numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    fit = points[rng.choice(len(points), size=min(sample, len(points)), replace=False)]
    centres, _ = kmeans2(fit, k, minit="++", seed=seed, iter=20)
    centres_t = torch.from_numpy(centres.astype(np.float32))
    n_colours = len(targets.colours)
    for t in (targets, *others):
        f, mask = features(t), t.patch_shape > 0
        ids = torch.zeros_like(t.patch_shape)
        flat = f[mask]
        nearest = torch.cat(
            [torch.cdist(flat[i : i + 65536], centres_t).argmin(1) for i in range(0, len(flat), 65536)]
        )
        ids[mask] = nearest + 1
        present = torch.zeros(t.patch_shape.shape[0], k + n_colours)
        present[:, :k] = torch.nn.functional.one_hot(ids, k + 1)[:, :, 1:].amax(1).float()
        present[:, k:] = t.present[:, -n_colours:]
        t.patch_shape, t.present = ids, present
        t.shapes = [f"cluster{c}" for c in range(k)]
    return centres
