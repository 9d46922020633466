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


def heatmap(encoder, image: Image.Image, term_ids: list[int], words: list[str], out: Path,
            alpha: float = 0.55) -> Path:
    """Write a PNG the size of ``image``: each patch tinted by its strongest word among ``term_ids``, opacity by
    that word's patch score, with a legend. One word: a single-colour map of that word's patch scores."""
    if not term_ids:
        raise UsageError("nothing to draw: the image lights up no word")
    image = image.convert("RGB")
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
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(out, format="PNG")
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
