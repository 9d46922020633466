"""``explain``: the words an image lights up, and where.

The words come from the image's own lexical vector (the one an index scores with); the heat map from its
patch-level vectors (the same read-out on each patch token, LEXVLA.md).

A heat map is drawn so that a person can read it:

* **one word per view**: a single word's patch scores, or (several words) one small panel per word, side by
  side, never one picture tinted by whichever word is strongest where;
* **no added colour**: where the word is strong the photo keeps its own colours; where it is absent the photo
  turns to a flat mid grey under a hatch of dark and light lines. The map never paints a hue over the
  picture, so "yellow" is never drawn in orange and a colour word is never contradicted by the overlay; the
  legend holds only greys. "Absent" is a texture, not a darkness: the hatch reads as covered on a night
  photo, a grey page and a white wall alike, where a dimmed photo looked like the image's own dark parts;
* **an absolute scale**: a patch score maps to brightness through fixed limits (the index's own "present"
  threshold 1/sqrt(V) and :data:`HEAT_TOP`), not stretched to the image's min and max, so a word that is
  absent from the image shows as absent;
* **big enough, legend outside**: the picture is drawn at least :data:`MIN_LONG_SIDE` pixels on its long
  side, and the key sits in a strip below it, never over it;
* **the numbers are explain's**: the number beside each word is its weight in the image's vector, the very
  number ``lexsearch explain`` prints, and is labelled so ("weight 0.5912"); the patch scores behind the
  brightness are another scale, named as such ("strongest patch") where shown.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lexsearch.errors import UsageError
from lexsearch.model.images import crop_box

logger = logging.getLogger(__name__)

# The long side of a one-word heat map's picture: at least this (a 64 px thumbnail is unreadable), at most
# MAX_LONG_SIDE (a 24-megapixel photo need not become a 24-megapixel PNG).
MIN_LONG_SIDE = 640
MAX_LONG_SIDE = 1024
# Long side of each panel when several words are shown side by side (3 panels: ~1000 px wide).
PANEL_LONG_SIDE = 320
PANELS_PER_ROW = 3
MAX_PANELS = 6
# The patch score drawn at full strength. Patch vectors are L2-normalised over the whole vocabulary, so
# scores of different images and words share one scale. On the trained tiny demo model (V = 143,
# bench/heatmap_scale.py over 200 images) the strongest patch of an image's top word scores p10 0.76 /
# p50 0.84, of its 5th word p25 0.49 / p50 0.64, and of a word the image lacks p90 0.091 (the absent line
# 1/sqrt(V) is 0.084): at 0.6 a clear match is drawn at full strength and an absent word stays hatched. A
# model with a 17k vocabulary spreads more mass; rerun the bench on its collection before trusting 0.6.
HEAT_TOP = 0.6
# "Absent": the photo's luminance squeezed into this band (fractions of white), so the scene stays
# recognisable but flat and mid-grey whatever the photo's own brightness ...
ABSENT_BAND = (0.32, 0.68)
# ... under diagonal lines, one dark and one light, every HATCH_PERIOD pixels: one of the two always stands
# out, on black, grey or white content.
HATCH_PERIOD = 9
HATCH_DARK, HATCH_LIGHT = 25.0, 235.0
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAINT = (110, 110, 110)


@dataclass
class Explanation:
    path: str
    words: list[tuple[str, float]]  # strongest first
    term_ids: list[int] = field(default_factory=list)
    weights: dict[int, float] = field(default_factory=dict)  # every term of the image's vector: its weight


def explain_image(encoder, image, top_k: int = 10, path: str = "") -> Explanation:
    """The image's ``top_k`` strongest words (from its sparsified lexical vector), strongest first."""
    row = encoder.encode_images([image]).sparse[0]
    order = np.argsort(-row.data, kind="stable")[:top_k]
    cols = row.indices[order]
    return Explanation(
        path=path,
        words=list(zip(encoder.words(cols), row.data[order].tolist())),
        term_ids=[int(c) for c in cols],
        weights=dict(zip(row.indices.tolist(), row.data.tolist())),
    )


# An image's words are "weak" for its model when its strongest word stands out (``LexVLA.word_margin``) less
# than on all but 0.5% of the model's own held-out images (``ModelConfig.word_margins``, measured at the end
# of training). The weights a user sees cannot say it: they are L2-normalised, so a photo the model cannot
# read still gets a top word near 0.6-0.9, as toy images do. Measured with bench/weak_words.py on two toy-world
# models, each with 500 held-out toy images as the reference (docs/toy-results.md): below the line are 10 and
# 12 of scikit-image's 13 real photos, and 2 of 200 unseen toy images / 2 of 500 toy training images.
WEAK_PERCENTILE = "p0.5"


def weak_words_note(encoder, image) -> str | None:
    """One line saying that ``image``'s top words are weak for this model, or None (they are not, or the
    model has no measured reference: checkpoints written before it stay silent)."""
    ref = getattr(getattr(encoder, "config", None), "word_margins", None) or {}
    line = ref.get(WEAK_PERCENTILE)
    if line is None:
        return None
    margin = float(encoder.word_margins([image])[0])
    if margin >= float(line):
        return None
    share = 100 - float(WEAK_PERCENTILE[1:])
    return (
        f"these words are weak for this model: its strongest word stands out by {margin:.1f}, less than on "
        f"{share:g}% of its own held-out images ({float(line):.1f}); it may not know what this image shows"
    )


@dataclass(frozen=True)
class HeatScale:
    """Fixed limits from patch score to brightness: ``floor`` and below is absent, ``top`` and above full."""

    floor: float
    top: float = HEAT_TOP

    @classmethod
    def for_vocab(cls, vocab_size: int) -> HeatScale:
        # 1/sqrt(V) is where the index's sparsification draws the line between present and absent.
        floor = 1.0 / math.sqrt(max(int(vocab_size), 1))
        return cls(floor=floor, top=max(HEAT_TOP, 2 * floor))

    def strength(self, scores: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(scores, np.float32) - self.floor) / (self.top - self.floor), 0.0, 1.0)


def word_patch_scores(patches: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """One word's score per patch (P,): the strongest of its vocabulary pieces, from (P, V) patch vectors."""
    cols = [int(c) for c in columns]
    if not cols:
        raise UsageError("nothing to draw: no vocabulary column for this word")
    return patches[:, cols].max(axis=1)


def weight_label(weight: float) -> str:
    """A word's weight in the image's vector as beside a heat map: the digits ``lexsearch explain`` prints."""
    return f"weight {weight:.4f}" if weight > 0 else "weight 0 (not in the image's vector)"


def render_word(
    image: Image.Image,
    grid: tuple[int, int],
    scores: np.ndarray,
    word: str,
    scale: HeatScale,
    weight: float | None = None,
) -> Image.Image:
    """One word's heat map: the picture (long side >= MIN_LONG_SIDE) with a legend strip below it.

    ``weight``: the word's weight in the image's vector, shown beside it (as ``explain`` prints it)."""
    picture = _fit(image.convert("RGB"), MIN_LONG_SIDE, MAX_LONG_SIDE)
    lit, cropped = _spotlight(image.size, picture, grid, scale.strength(scores))
    font, small = _font(22), _font(16)
    pad = 14
    legend_h = pad + 26 + 10 + 14 + 6 + 18 + pad + (22 if cropped else 0)
    canvas = Image.new("RGB", (lit.width, lit.height + legend_h), BACKGROUND)
    canvas.paste(lit, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = lit.height + pad
    peak = float(np.max(scores)) if scores.size else 0.0
    draw.text((pad, y), word, fill=INK, font=font)
    note = f"strongest patch {peak:.2f}" + ("  (absent)" if peak <= scale.floor else "")
    if weight is not None:
        note = f"{weight_label(weight)}   {note}"
    draw.text((pad + draw.textlength(word, font=font) + 14, y + 5), note, fill=FAINT, font=small)
    y += 26 + 10
    _ramp(canvas, draw, pad, y, min(lit.width - 2 * pad, 420), scale, small, peak)
    if cropped:
        y += 14 + 6 + 18 + 4
        draw.text((pad, y), CROPPED_NOTE, fill=FAINT, font=small)
    return canvas


CROPPED_NOTE = "The model sees the centre square; outside it is hatched."


def render_words(
    image: Image.Image,
    grid: tuple[int, int],
    scores: Sequence[np.ndarray],
    words: Sequence[str],
    scale: HeatScale,
    weights: Sequence[float] | None = None,
) -> Image.Image:
    """Several words, one panel each (same scale), with one shared legend strip below. Each panel is
    labelled with its word and ``weights`` (the word's weight in the image's vector, as ``explain`` prints
    it); without weights, with its strongest patch score, named so."""
    if len(words) == 1:
        return render_word(image, grid, scores[0], words[0], scale, None if weights is None else weights[0])
    words, scores = list(words)[:MAX_PANELS], list(scores)[:MAX_PANELS]
    base = image.convert("RGB")
    panels = []
    cropped = False
    for s in scores:
        picture = _fit(base, PANEL_LONG_SIDE, PANEL_LONG_SIDE)
        lit, was_cropped = _spotlight(base.size, picture, grid, scale.strength(s))
        panels.append(lit)
        cropped = cropped or was_cropped
    pw, ph = panels[0].size
    font, small = _font(17), _font(14)
    gap, caption = 10, 26
    cols = min(PANELS_PER_ROW, len(panels))
    rows = math.ceil(len(panels) / cols)
    width = cols * pw + (cols + 1) * gap
    key = (
        "weight: the word's weight in the image's vector, as lexsearch explain prints it"
        if weights is not None
        else "strongest patch: the word's highest patch score"
    )
    legend_h = 14 + 6 + 16 + 8 + 18 + 12 + (20 if cropped else 0)
    height = rows * (ph + caption) + (rows + 1) * gap + legend_h
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, (lit, word, s) in enumerate(zip(panels, words, scores)):
        x = gap + (k % cols) * (pw + gap)
        y = gap + (k // cols) * (ph + caption + gap)
        canvas.paste(lit, (x, y))
        if weights is not None:
            number = weight_label(float(weights[k]))
        else:
            number = f"strongest patch {float(np.max(s)) if s.size else 0.0:.2f}"
        draw.text((x, y + ph + 4), word, fill=INK, font=font)
        draw.text((x + draw.textlength(word, font=font) + 8, y + ph + 6), number, fill=FAINT, font=small)
    y = rows * (ph + caption + gap) + gap
    _ramp(canvas, draw, gap, y, min(width - 2 * gap, 420), scale, small, None)
    y += 14 + 6 + 16 + 8
    draw.text((gap, y), key, fill=FAINT, font=small)
    if cropped:
        draw.text((gap, y + 20), CROPPED_NOTE, fill=FAINT, font=small)
    return canvas


def heatmap_format(out: str | Path) -> str:
    """The Pillow format a heat map at ``out`` is written in, as its extension says (.png, .jpg, .webp ...).

    Checked before any work: a name with no or an unknown extension, or a folder that does not exist, is a
    ``UsageError`` (one line), never PNG bytes behind a .jpg name nor a traceback after the words.
    """
    out = Path(out)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"Folder for --heatmap does not exist: {folder}")
    ext = out.suffix.lower()
    Image.init()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE or fmt in _NOT_FOR_HEATMAPS:
        raise UsageError(
            f"Cannot tell which image format to write from {out.name!r}; name the heat map .png, .jpg or .webp."
        )
    return fmt


# Formats Pillow can write but that are no picture to look at (or need an external program).
_NOT_FOR_HEATMAPS = frozenset({"PDF", "EPS", "PALM", "XBM", "MSP", "BUFR", "GRIB", "HDF5", "WMF"})


def heatmap(
    encoder,
    image: Image.Image,
    term_ids: list[int],
    words: list[str],
    out: Path,
    weights: Sequence[float] | None = None,
) -> Path:
    """Write the heat map of ``words`` (their vocabulary columns ``term_ids``, one per word) in the format
    ``out``'s extension names (see ``heatmap_format``): one word gives the large single-word view, several
    give one panel per word. ``weights``: each word's weight in the image's vector, printed beside it."""
    if not term_ids:
        raise UsageError("nothing to draw: the image lights up no word")
    fmt = heatmap_format(out)
    # A fresh RGB copy: ``info`` of the source (a tRNS colour key, an ICC profile) must not reach the saver.
    image = Image.fromarray(np.asarray(image.convert("RGB")))
    patches = encoder.encode_patches(image)  # (P, V)
    scores = [word_patch_scores(patches, [t]) for t in term_ids]
    scale = HeatScale.for_vocab(patches.shape[1])
    picture = render_words(image, tuple(encoder.grid), scores, words, scale, weights)
    out = Path(out)
    try:
        picture.save(out, format=fmt)
    except OSError as exc:  # a read-only folder, a full disk
        raise UsageError(f"Cannot write the heat map to {out}: {exc.strerror or exc}") from exc
    return out


# ---------------------------------------------------------------------------------------------- drawing
def _fit(image: Image.Image, min_long: int, max_long: int) -> Image.Image:
    long_side = max(image.size)
    target = min(max(long_side, min_long), max_long)
    if target == long_side:
        return image.copy()
    f = target / long_side
    size = (max(1, round(image.width * f)), max(1, round(image.height * f)))
    # Enlarging a small picture 2x or more: whole pixels (a smooth filter rings at sharp edges and invents
    # fringes of colour that are not in the image).
    resample = Image.Resampling.NEAREST if f >= 2 else Image.Resampling.LANCZOS
    return image.resize(size, resample)


def _spotlight(
    original_size: tuple[int, int], picture: Image.Image, grid: tuple[int, int], strength: np.ndarray
) -> tuple[Image.Image, bool]:
    """The picture at full colour where ``strength`` (one value per patch, in [0, 1]) is 1, fading to the
    hatched flat grey of "absent" (:func:`_absent`) where it is 0. Returns the image and whether the model
    saw only a crop."""
    gh, gw = grid
    f = picture.width / original_size[0]
    left, top, right, bottom = (v * f for v in crop_box(*original_size))
    box = (round(left), round(top), round(right), round(bottom))
    side_w, side_h = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    heat = Image.fromarray(np.asarray(strength, np.float32).reshape(gh, gw), mode="F")
    heat = np.clip(np.asarray(heat.resize((side_w, side_h), Image.Resampling.BILINEAR)), 0.0, 1.0)
    s = np.zeros((picture.height, picture.width), np.float32)
    s[box[1] : box[1] + side_h, box[0] : box[0] + side_w] = heat[
        : picture.height - box[1], : picture.width - box[0]
    ]
    cropped = box != (0, 0, picture.width, picture.height)
    return _blend(np.asarray(picture, np.float32), s), cropped


def _absent(rgb: np.ndarray) -> np.ndarray:
    """(H, W) grey of "absent" over an (H, W, 3) picture: its luminance in ABSENT_BAND, under the hatch."""
    lo, hi = ABSENT_BAND
    grey = 255.0 * lo + (hi - lo) * (rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    h, w = grey.shape
    phase = (np.arange(h)[:, None] + np.arange(w)[None, :]) % HATCH_PERIOD  # diagonal lines
    grey = np.where(phase < 2, HATCH_DARK, grey)
    return np.where(phase == 2, HATCH_LIGHT, grey)


def _blend(rgb: np.ndarray, s: np.ndarray) -> Image.Image:
    """The picture where ``s`` (H, W, in [0, 1]) is 1, "absent" where it is 0, mixed in between."""
    out = rgb * s[..., None] + _absent(rgb)[..., None] * (1.0 - s[..., None])
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def _ramp(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    x: int,
    y: int,
    width: int,
    scale: HeatScale,
    font,
    peak: float | None,
) -> None:
    """The key: a mid-grey bar drawn as the map draws it, from "absent" (hatched) to full strength (plain),
    its limits, and the peak marker."""
    h = 14
    grey = np.full((h, width, 3), 150.0, np.float32)
    canvas.paste(_blend(grey, np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (h, 1))), (x, y))
    draw.rectangle([x, y, x + width, y + h], outline=FAINT)
    if peak is not None:
        px = x + round(width * float(scale.strength(np.array([peak]))[0]))
        draw.polygon([(px - 5, y - 6), (px + 5, y - 6), (px, y)], fill=INK)
    draw.text((x, y + h + 3), f"absent (<= {scale.floor:.2f})", fill=FAINT, font=font)
    right = f"{scale.top:.2f}+ full"
    draw.text((x + width - draw.textlength(right, font=font), y + h + 3), right, fill=FAINT, font=font)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()
