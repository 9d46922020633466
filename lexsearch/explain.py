"""``explain``: the words an image lights up, and where.

The words come from the image's own lexical vector (the one an index scores with); the heat map from its
patch-level vectors (the same read-out on each patch token, LEXVLA.md). Each patch is tinted by its strongest
word among the image's top words, or, with ``word``, by that word's score alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lexsearch.errors import UsageError
from lexsearch.model.images import crop_box

# Distinct, colour-blind-friendly tints (Okabe-Ito), one per explained word.
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (120, 120, 120)]


@dataclass
class Explanation:
    path: str
    words: list[tuple[str, float]]  # strongest first
    term_ids: list[int] = field(default_factory=list)


def explain_image(encoder, image, top_k: int = 10, path: str = "") -> Explanation:
    """The image's ``top_k`` strongest words (from its sparsified lexical vector), strongest first."""
    row = encoder.encode_images([image]).sparse[0]
    order = np.argsort(-row.data, kind="stable")[:top_k]
    cols = row.indices[order]
    return Explanation(path=path, words=list(zip(encoder.words(cols), row.data[order].tolist())),
                       term_ids=[int(c) for c in cols])


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


def heatmap(encoder, image: Image.Image, term_ids: list[int], words: list[str], out: Path,
            alpha: float = 0.55) -> Path:
    """Write an image the size of ``image`` in the format ``out``'s extension names (see ``heatmap_format``):
    each patch tinted by its strongest word among ``term_ids``, opacity by that word's patch score, with a
    legend. One word: a single-colour map of that word's patch scores."""
    if not term_ids:
        raise UsageError("nothing to draw: the image lights up no word")
    fmt = heatmap_format(out)
    # A fresh RGB copy: ``info`` of the source (a tRNS colour key, an ICC profile) must not reach the saver.
    image = Image.fromarray(np.asarray(image.convert("RGB")))
    gh, gw = encoder.grid
    patches = encoder.encode_patches(image)[:, term_ids]  # (h*w, W)
    best = patches.argmax(1).reshape(gh, gw)
    strength = patches.max(1).reshape(gh, gw)
    lo, hi = float(strength.min()), float(strength.max())
    strength = (strength - lo) / (hi - lo) if hi > lo else np.ones_like(strength)

    tint = np.zeros((gh, gw, 3), dtype=np.float32)
    for k in range(len(term_ids)):
        tint[best == k] = PALETTE[k % len(PALETTE)]
    # The model sees a centre crop of the shorter side; map the grid back onto that square of the original.
    left, top, right, _ = (round(v) for v in crop_box(*image.size))
    side = right - left
    tint_img = Image.fromarray(tint.astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
    mask = Image.fromarray((strength * alpha * 255).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
    overlay = image.copy()
    overlay.paste(tint_img, (left, top), mask)

    _legend(overlay, words, [PALETTE[k % len(PALETTE)] for k in range(len(words))])
    out = Path(out)
    try:
        overlay.save(out, format=fmt)
    except OSError as exc:  # a read-only folder, a full disk
        raise UsageError(f"Cannot write the heat map to {out}: {exc.strerror or exc}") from exc
    return out


def _legend(image: Image.Image, words: list[str], colours: list[tuple[int, int, int]]) -> None:
    """A small key in the top-left corner: a colour swatch and the word, one per line."""
    size = max(9, min(image.size) // 40)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image, "RGBA")
    line = size + 4
    width = max(draw.textlength(w, font=font) for w in words) + size + 12
    draw.rectangle([0, 0, width, line * len(words) + 4], fill=(0, 0, 0, 150))
    for i, (word, colour) in enumerate(zip(words, colours)):
        y = 2 + i * line
        draw.rectangle([4, y + 2, 4 + size, y + 2 + size], fill=colour + (255,))
        draw.text((size + 8, y), word, fill=(255, 255, 255, 255), font=font)
