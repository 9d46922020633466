"""Photo metadata from an image's header: when it was taken, with what, and whether it holds a position.

Read once per file at index time (and once per already-indexed file by the index run that upgrades a
collection to schema 4), stored as columns of ``images`` that a query filters and sorts on:

- ``taken``: the capture time as the camera's clock showed it, ``YYYY-MM-DDTHH:MM:SS`` (sortable text);
  ``taken_offset`` its UTC offset (``+02:00``) when the file records one; ``taken_source`` says where it
  came from: ``exif`` (DateTimeOriginal, else DateTime) or ``mtime`` (the file's modification time, in this
  machine's local time, when the file records no usable date).
- ``camera_make``, ``camera_model``, ``lens``: as the file writes them (trimmed), or NULL.
- ``gps``: 1 when the file holds GPS coordinates, else 0 (no place is ever looked up or stored).

Dates compare by the wall clock where the photo was taken: a photo taken at 23:30 on 14 June is "on
2023-06-14" wherever it is searched from.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
from typing import Any

logger = logging.getLogger(__name__)

# The columns this module fills (besides width and height, which the decoder reports upright).
PHOTO_FIELDS = ("taken", "taken_offset", "taken_source", "camera_make", "camera_model", "lens", "gps")

_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL, _OFFSET_TIME = 0x9003, 0x9011, 0x9010
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434

_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})\s*$")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None


def exif_date(value: Any) -> str | None:
    """``2023:06:14 10:20:30`` as ``2023-06-14T10:20:30``; None for a blank or impossible date (cameras
    with an unset clock write ``0000:00:00 00:00:00``)."""
    m = _EXIF_DATE.match(_text(value) or "")
    if not m:
        return None
    try:
        return _dt.datetime(*map(int, m.groups())).strftime("%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None


def _offset(value: Any) -> str | None:
    m = _OFFSET.match(_text(value) or "")
    if not m or int(m.group(2)) > 14 or int(m.group(3)) > 59:
        return None
    return f"{m.group(1)}{m.group(2)}:{m.group(3)}"


def mtime_taken(mtime_ns: int) -> dict[str, Any]:
    """The file's modification time as this machine's local wall clock, with its offset."""
    local = _dt.datetime.fromtimestamp(mtime_ns / 1e9).astimezone()
    off = local.strftime("%z")
    return {
        "taken": local.strftime("%Y-%m-%dT%H:%M:%S"),
        "taken_offset": f"{off[:3]}:{off[3:]}" if off else None,
        "taken_source": "mtime",
    }


def read_photo_meta(im: Any, mtime_ns: int, name: str = "") -> dict[str, Any]:
    """The ``PHOTO_FIELDS`` of an open Pillow image (nothing decoded: header only). A broken EXIF block
    is logged (shown with ``-v``) and leaves the fields it would have given empty; it never fails."""
    out: dict[str, Any] = {f: None for f in PHOTO_FIELDS}
    out["gps"] = 0
    try:
        exif = im.getexif()
        ifd = exif.get_ifd(_EXIF_IFD) or {}
        taken = exif_date(ifd.get(_DATETIME_ORIGINAL)) or exif_date(exif.get(_DATETIME))
        if taken:
            out["taken"], out["taken_source"] = taken, "exif"
            out["taken_offset"] = _offset(ifd.get(_OFFSET_TIME_ORIGINAL)) or _offset(ifd.get(_OFFSET_TIME))
        out["camera_make"] = _text(exif.get(_MAKE))
        out["camera_model"] = _text(exif.get(_MODEL))
        out["lens"] = _text(ifd.get(_LENS_MODEL))
        gps = exif.get_ifd(_GPS_IFD)
        out["gps"] = 1 if gps and (2 in gps or 4 in gps) else 0  # GPSLatitude / GPSLongitude
        if not exif and im.info.get("exif"):  # a block Pillow could not parse (it only warned)
            logger.info("%s: unreadable EXIF block; its date is the file's time", name)
    except Exception as exc:  # noqa: BLE001 - any damage in the block: the image itself still counts
        logger.info(
            "%s: unreadable EXIF (%s: %s); its date is the file's time", name, type(exc).__name__, exc
        )
    if out["taken"] is None:
        out.update(mtime_taken(mtime_ns))
    return out


def header_facts(path: str, mtime_ns: int) -> tuple[int | None, int | None, dict[str, Any]]:
    """(upright width, height, ``PHOTO_FIELDS``) from a file's header alone (no pixel decoded): what an index
    run reads for an image indexed before photo metadata. A file unreadable now keeps its stored mtime's date."""
    from PIL import Image

    _register_heif()
    try:
        with Image.open(path) as im:
            width, height = im.size
            try:
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # a 90-degree rotation swaps the sides
                    width, height = height, width
            except Exception:  # noqa: BLE001 - read_photo_meta logs the broken block
                pass
            return width, height, read_photo_meta(im, mtime_ns, path)
    except Exception as exc:  # noqa: BLE001 - the image keeps its vectors whatever its file says now
        logger.info("%s: header unreadable (%s); its date is the stored file time", path, exc)
        return None, None, {**{f: None for f in PHOTO_FIELDS}, "gps": 0, **mtime_taken(mtime_ns)}


_heif = False


def _register_heif() -> None:
    # As lexsearch.model.images does (that module imports this one: no import back).
    global _heif
    if not _heif:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC headers then read as unreadable files: their stored time is the date
            pass
        _heif = True


def orientation(width: int | None, height: int | None) -> str | None:
    """landscape | portrait | square of upright pixel sizes (None when unknown)."""
    if not width or not height:
        return None
    return "square" if width == height else ("landscape" if width > height else "portrait")
