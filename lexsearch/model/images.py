"""Image loading and preprocessing shared by the encoder, the indexer, explain and training.

``load_image`` opens any supported file (HEIC/HEIF through pillow-heif) upright in RGB, refusing decompression
bombs before decoding a pixel; ``preprocess`` is pure numpy/PIL (no torch state), so both run in decoder
threads ahead of the model. It is the one loader of the indexer, ``explain``, ``query --image`` and
training, so every command accepts and refuses the same files with the same words (one megapixel guard).

High-bit-depth greyscale (16-bit, 32-bit integer, float: scientific, satellite and scanner TIFFs, 16-bit
PNGs) is rescaled to 8 bits by the image's own value range, as viewers show it; a plain conversion clips it
to a white or black page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lexsearch.errors import DataError

logger = logging.getLogger(__name__)

# A decompression-bomb guard: phone cameras reach ~200 MP; a crafted PNG header can claim 10,000 MP.
MAX_MEGAPIXELS = 200.0

# Pillow's own bomb check (a global) would fire first, with its own, different limit (89 MP warning, 179 MP
# error) and a message naming no size; the guard in ``load_image`` reads the header before decoding a pixel
# instead, so it is switched off and there is one limit and one message for every command.
Image.MAX_IMAGE_PIXELS = None


def open_image(path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """Open an image upright in RGB (see :func:`load_image`); a DataError with the reason if it cannot be."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    try:
        return load_image(str(path), max_pixels=int(max_megapixels * 1e6))[0]
    except Exception as exc:  # whatever a decoder raises for a bad file: the same reason the indexer gives
        size = Path(path).stat().st_size if Path(path).is_file() else None
        raise DataError(f"{path}: {describe_error(exc, size)}") from exc


def describe_error(exc: BaseException, size: int | None = None) -> str:
    """A short, user-facing reason why a file could not be loaded (the indexer's warnings use it too)."""
    if size == 0:
        return "empty file (0 bytes)"
    if isinstance(exc, (ImageTooLarge, Image.DecompressionBombError)):
        return f"too large: {exc}"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or an unsupported format"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, FileNotFoundError):
        return "vanished while indexing"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return "truncated file"
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError)):
        return f"corrupt image ({exc})"
    return f"cannot read ({type(exc).__name__}: {exc})"


_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_EXIF_DATETIME_ORIGINAL = 36867
_EXIF_DATETIME = 306

_heif_registered = False


class ImageTooLarge(Exception):
    """The header claims more pixels than the megapixel guard allows (nothing was decoded)."""


def load_image(
    path: str | BinaryIO, *, max_pixels: int, draft_size: int | None = None, mtime_ns: int | None = None
) -> tuple[Image.Image, dict]:
    """Open an image upright in RGB, refusing decompression bombs before decoding any pixel.

    Returns the image and facts for the ``images`` row: the original width/height (after rotation) and the
    EXIF capture time. ``draft_size`` lets JPEG decode at a reduced scale (DCT scaling) when the model only
    needs a small input: much less work for a 12 MP photo that becomes 224 x 224. With the file's
    ``mtime_ns`` the facts also hold ``photo``: its header's photo metadata (``lexsearch.index.photometa``).
    """
    _register_heif()
    with Image.open(path) as im:
        width, height = im.size  # the header only: nothing decoded yet
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"{width}x{height} = {width * height} pixels is over the {max_pixels / 1e6:g} megapixel guard"
            )
        photo = None
        if mtime_ns is not None:
            from lexsearch.index.photometa import read_photo_meta

            photo = read_photo_meta(im, mtime_ns, str(path))
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
    facts = {"width": width, "height": height, "exif_time": str(taken).strip("\x00 ") if taken else None}
    if photo is not None:
        facts["photo"] = photo
    return rgb, facts


# Modes whose values do not fit 8 bits: rescaled by the image's own range instead of clipped.
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy with no transparency left in it (nor in ``info``, which savers would trip over)."""
    if im.mode in _WIDE_MODES:
        return _rescale_to_8bit(im).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        # Transparent pixels (an alpha channel, a palette entry or a tRNS colour key) become white, as a
        # viewer shows them, not the black that convert() gives.
        rgba = im.convert("RGBA")
        back = Image.new("RGB", rgba.size, (255, 255, 255))
        back.paste(rgba, mask=rgba.getchannel("A"))
        return back
    rgb = im.convert("RGB") if im.mode != "RGB" else im.copy()
    rgb.info.pop("transparency", None)
    return rgb


def _rescale_to_8bit(im: Image.Image) -> Image.Image:
    """Map the image's own finite value range onto 0-255 (a 12-bit scan, a float map, a narrow 16-bit TIFF).

    A flat image keeps its absolute level (its value over the type's full range), so a black frame stays
    black instead of turning mid-grey.
    """
    arr = np.asarray(im)
    if arr.dtype.byteorder not in ("=", "|"):  # I;16B arrives big-endian
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return Image.new("L", im.size, 0)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi > lo:
        scaled = (arr - lo) / (hi - lo)
    else:
        full = 1.0 if im.mode == "F" else (65535.0 if im.mode.startswith("I;16") else 2.0**31 - 1)
        scaled = np.full_like(arr, min(max(lo / full, 0.0), 1.0))
    scaled[~finite] = 0.0
    return Image.fromarray(np.round(scaled * 255.0).astype(np.uint8))  # (H, W) uint8: mode L


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


def preprocess(image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Centre square (``crop_box``) resized to size x size (bicubic), normalised: (3, S, S) float32."""
    image = image.convert("RGB")
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=crop_box(*image.size))
    arr = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
    arr = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
