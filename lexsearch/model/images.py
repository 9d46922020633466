"""Image loading and preprocessing shared by the encoder, the indexer, explain and training.

``load_image`` opens any supported file (HEIC/HEIF through pillow-heif) upright in RGB, refusing decompression
bombs before decoding a pixel; ``preprocess`` is pure numpy/PIL (no torch state), so both run in decoder
threads ahead of the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lexsearch.errors import DataError

logger = logging.getLogger(__name__)

# A decompression-bomb guard: phone cameras reach ~200 MP; a crafted PNG header can claim 10,000 MP.
MAX_MEGAPIXELS = 200.0


def open_image(path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """Open an image upright in RGB (see :func:`load_image`); a DataError with the reason if it cannot be."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    try:
        return load_image(str(path), max_pixels=int(max_megapixels * 1e6))[0]
    except ImageTooLarge as exc:
        raise DataError(f"{path}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: too large to decode safely") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_EXIF_DATETIME_ORIGINAL = 36867
_EXIF_DATETIME = 306

_heif_registered = False


class ImageTooLarge(Exception):
    """The header claims more pixels than the megapixel guard allows (nothing was decoded)."""


def load_image(path: str, *, max_pixels: int, draft_size: int | None = None) -> tuple[Image.Image, dict]:
    """Open an image upright in RGB, refusing decompression bombs before decoding any pixel.

    Returns the image and facts for the ``images`` row: the original width/height (after rotation) and the
    EXIF capture time. ``draft_size`` lets JPEG decode at a reduced scale (DCT scaling) when the model only
    needs a small input: much less work for a 12 MP photo that becomes 224 x 224.
    """
    _register_heif()
    with Image.open(path) as im:
        width, height = im.size  # the header only: nothing decoded yet
        if width * height > max_pixels:
            raise ImageTooLarge(f"{width}x{height} pixels is over the {max_pixels / 1e6:g} megapixel guard")
        exif = im.getexif()
        orientation = exif.get(_EXIF_ORIENTATION, 1)
        taken = None
        try:
            taken = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)
        except Exception:  # a broken EXIF block must not cost us the image itself
            taken = None
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        im.load()
        upright = ImageOps.exif_transpose(im)
        if orientation in (5, 6, 7, 8):  # 90-degree rotations swap the stored dimensions
            width, height = height, width
        rgb = _to_rgb(upright)
    return rgb, {"width": width, "height": height, "exif_time": str(taken).strip("\x00 ") if taken else None}


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent pixels become white, as a viewer shows them, not the black that convert() gives.
        rgba = im.convert("RGBA")
        back = Image.new("RGB", rgba.size, (255, 255, 255))
        back.paste(rgba, mask=rgba.getchannel("A"))
        return back
    return im.convert("RGB")


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC files then fail one by one with a clear reason
            logger.debug("pillow-heif not installed: HEIC/HEIF files cannot be read")
        _heif_registered = True



def crop_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of an image the model sees: (left, top, right, bottom) in original pixels.

    Explanations (heat maps, PatchDis) map the patch grid back onto the image through this same box.
    """
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def preprocess(
    image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> np.ndarray:
    """Centre square (``crop_box``) resized to size x size (bicubic), normalised: (3, S, S) float32."""
    image = image.convert("RGB")
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=crop_box(*image.size))
    arr = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
