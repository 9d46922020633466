"""Image loading and preprocessing shared by the encoder, the indexer and training.

``open_image`` applies EXIF orientation and refuses decompression bombs; ``preprocess`` is pure numpy/PIL
(no torch state), so it can run in decoder threads ahead of the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lexsearch.errors import DataError

# Refuse images above this many pixels before decoding them (a 20,000 x 20,000 PNG bomb is 400 MP).
MAX_MEGAPIXELS = 180


def open_image(path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """Open an image as RGB with EXIF orientation applied; a DataError with the reason if it cannot be."""
    if isinstance(path, (str, Path)) and not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_megapixels * 1e6:
                raise DataError(f"{path}: {img.width}x{img.height} is over the {max_megapixels:g} MP limit")
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: too large to decode safely") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


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
