"""A folder of photos as a phone and a camera leave them: EXIF dates across years (with and without a UTC
offset), two camera makes, a lens, GPS, a rotated shot, a broken EXIF block and a file with no EXIF at all;
JPEG and PNG (and HEIC where pillow-heif can write it). Shared by the tests of photo metadata and filters."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

EXIF_IFD, GPS_IFD = 0x8769, 0x8825


@dataclass(frozen=True)
class Photo:
    rel: str  # path under the folder
    taken: str  # what the index should record (EXIF wall clock, or the file's time)
    source: str  # exif | mtime
    camera: str | None  # make + " " + model
    orientation: str
    size: tuple[int, int] = (40, 30)  # stored pixels (before EXIF rotation)
    offset: str | None = None
    lens: str | None = None
    gps: bool = False
    rotate: int = 1  # EXIF Orientation
    broken: bool = False  # a damaged EXIF block


PHOTOS = [
    Photo(
        "trips/alps/2019-beach.jpg",
        "2019-07-01T10:00:00",
        "exif",
        "Google Pixel 3",
        "landscape",
        offset="+02:00",
        lens="Pixel 3 back camera",
        gps=True,
    ),
    Photo("trips/2021-night.jpg", "2021-06-14T23:30:00", "exif", "FUJIFILM X100V", "landscape"),
    Photo("home/2022-rotated.jpg", "2022-03-05T08:15:00", "exif", "Google Pixel 7", "portrait", rotate=6),
    Photo("home/2023-square.png", "2023-12-31T12:00:00", "exif", "FUJIFILM X-T4", "square", size=(32, 32)),
    Photo("home/2023-june.jpg", "2023-06-14T09:00:00", "exif", "Google Pixel 7", "portrait", size=(30, 40)),
    Photo("home/broken-exif.jpg", "2020-02-02T12:00:00", "mtime", None, "landscape", broken=True),
    Photo("home/no-exif.png", "2018-05-05T12:00:00", "mtime", None, "landscape"),
]


def _heic_writable() -> bool:
    try:
        import pillow_heif

        return bool(pillow_heif.libheif_info().get("encoders", {}).get("x265"))
    except ImportError:
        return False


if _heic_writable():  # a phone's HEIC, with a UTC offset west of Greenwich
    PHOTOS.append(
        Photo(
            "trips/2024-phone.heic",
            "2024-01-02T03:04:05",
            "exif",
            "Apple iPhone 12",
            "landscape",
            offset="-05:00",
        )
    )


def _exif(p: Photo) -> Image.Exif | bytes:
    if p.broken:
        # A TIFF header whose first IFD points far past the block's end: every reader gives up on it.
        return b"Exif\x00\x00MM\x00\x2a\x7f\xff\xff\xf0" + b"\x00" * 8
    exif = Image.Exif()
    make, model = p.camera.split(" ", 1)
    exif[0x010F], exif[0x0110] = make, model
    if p.rotate != 1:
        exif[0x0112] = p.rotate
    ifd = exif.get_ifd(EXIF_IFD)
    ifd[0x9003] = p.taken.replace("-", ":").replace("T", " ")
    if p.offset:
        ifd[0x9011] = p.offset
    if p.lens:
        ifd[0xA434] = p.lens
    if p.gps:
        gps = exif.get_ifd(GPS_IFD)
        gps[1], gps[3] = "N", "E"
        gps[2] = (IFDRational(46), IFDRational(30), IFDRational(0))
        gps[4] = (IFDRational(7), IFDRational(15), IFDRational(0))
    return exif


def local_ts(wall: str) -> float:
    return time.mktime(time.strptime(wall, "%Y-%m-%dT%H:%M:%S"))


def make_photo_folder(root: Path, seed: int = 0) -> list[Photo]:
    """Write ``PHOTOS`` under ``root``; files whose date is their mtime get that mtime (local time)."""
    for i, p in enumerate(PHOTOS):
        path = root / p.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + i)
        w, h = p.size
        arr = np.kron(
            rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), np.ones((h // 3 + 1, w // 4 + 1, 1), np.uint8)
        )
        im = Image.fromarray(arr[:h, :w])
        if path.suffix == ".heic":
            import pillow_heif

            pillow_heif.register_heif_opener()
            im.save(path, exif=_exif(p).tobytes())
        elif p.source == "exif" or p.broken:
            im.save(path, exif=_exif(p))
        else:
            im.save(path)
        ts = local_ts(p.taken)
        os.utime(path, (ts, ts))
    return PHOTOS
