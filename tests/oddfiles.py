"""A folder of odd and broken image files, written with Pillow and numpy (no downloads).

``make_odd_folder(dest)`` writes the files and returns what each should become when indexed: ``"ok"``, or a
word the reason for its failure must contain. ``expected_grey`` gives, for the high-bit-depth files, the
mean brightness (0-255) a viewer would show, so a test can tell a rescaled image from a clipped one.
Used by the end-to-end test of ``lexsearch index`` and by ``bench/odd_folder.py``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Latin-1 encoded names (not valid UTF-8): what old drives and NAS shares are full of.
LATIN1_NAMES = [b"m\xe9lange_caf\xe9.gif", b"\xc5ngstr\xf6m.png", b"na\xefve.jpg"]


def _blocks(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((h // 4 + 1, w // 4 + 1, 1), np.uint8))[:h, :w]


def _rgb(seed: int, size: tuple[int, int] = (48, 36)) -> Image.Image:
    return Image.fromarray(_blocks(*size, seed))


def _gradient16(lo: int, hi: int, w: int = 48, h: int = 36) -> np.ndarray:
    return np.linspace(lo, hi, w * h).reshape(h, w).round().astype(np.uint16)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels but holds almost no data (a decompression bomb by header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + png_chunk(b"IEND", b"")
    )


def rgb_png_with_trns(path: Path, seed: int = 3) -> None:
    """An RGB PNG with one transparent colour (a tRNS chunk), as many web graphics are."""
    im = _rgb(seed)
    key = tuple(int(v) for v in np.asarray(im)[0, 0])
    im.save(path, format="PNG", transparency=key)


def tiff_with_bad_tag_count() -> bytes:
    """An LZW TIFF whose PlanarConfiguration tag claims two values: libtiff prints a warning that names no
    file straight to stderr (``TIFFFetchNormalTag: Incorrect count ...``), and Pillow warns too."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, format="TIFF", compression="tiff_lzw")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry : entry + 2])[0] == 284:
            data[entry + 4 : entry + 8] = struct.pack("<I", 2)
    return bytes(data)


def tiff_with_many_samples() -> bytes:
    """A TIFF whose SamplesPerPixel claims 200: Pillow logs "More samples per pixel than can be decoded"
    at ERROR (a line that names no file) before it refuses the file."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry : entry + 2])[0] == 277:  # SamplesPerPixel, a SHORT
            data[entry + 8 : entry + 10] = struct.pack("<H", 200)
    return bytes(data)


def psd_bytes(im: Image.Image) -> bytes:
    """A minimal flattened Photoshop file (RGB, 8 bits, raw composite): Pillow reads PSD but cannot write it."""
    w, h = im.size
    arr = np.asarray(im.convert("RGB"))
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    sections = struct.pack(">I", 0) * 3  # colour mode data, image resources, layer and mask info: empty
    return header + sections + struct.pack(">H", 0) + arr.transpose(2, 0, 1).tobytes()


# Mean brightness a viewer shows for the high-bit-depth files (a gradient over the image's own range).
expected_grey = {
    "grey16_narrow.tif": 127.5,
    "grey12in16.tif": 127.5,
    "float32.tif": 127.5,
    "grey16.png": 127.5,
}


def make_odd_folder(dest: str | os.PathLike[str]) -> dict[bytes, str]:
    """Write >= 50 odd files into ``dest``; returns {file name (bytes): "ok" or a word of the failure reason}.

    Names are bytes because some of them are not valid UTF-8.
    """
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    out: dict[bytes, str] = {}

    def save(name: str, im: Image.Image, expect: str = "ok", **kw) -> None:
        im.save(d / name, **kw)
        out[name.encode()] = expect

    def raw(name: str | bytes, data: bytes, expect: str) -> None:
        bname = name if isinstance(name, bytes) else name.encode()
        with open(os.path.join(os.fsencode(d), bname), "wb") as f:
            f.write(data)
        out[bname] = expect

    # Plain formats, and the ones the scan used to skip by extension.
    save("plain.jpg", _rgb(1), format="JPEG")
    save("plain.png", _rgb(2))
    save("plain.webp", _rgb(4), format="WEBP")
    save("plain.bmp", _rgb(5))
    save("plain.tiff", _rgb(6), compression="tiff_lzw")
    save("plain.gif", _rgb(7).convert("P"))
    save("colour.ppm", _rgb(8))
    save("grey.pgm", _rgb(9).convert("L"))
    save("mono.pbm", _rgb(10).convert("1"))
    save("plain.tga", _rgb(11))
    save("icon.ico", _rgb(12, (32, 32)), sizes=[(16, 16), (32, 32)])
    save("plain.jp2", _rgb(13), format="JPEG2000")
    save("plain.j2k", _rgb(14), format="JPEG2000")
    save("plain.pcx", _rgb(15))
    save("plain.sgi", _rgb(16), format="SGI")
    save("plain.qoi", _rgb(17), format="QOI")
    mpo = [_rgb(18), _rgb(19)]
    save("stereo.mpo", mpo[0], format="MPO", save_all=True, append_images=mpo[1:])
    apng = [_rgb(20), _rgb(21)]
    save("anim.apng", apng[0], format="PNG", save_all=True, append_images=apng[1:], duration=100)
    gif = [_rgb(22).convert("P"), _rgb(23).convert("P")]
    save("anim.gif", gif[0], save_all=True, append_images=gif[1:], duration=100, loop=0)
    save("anim.webp", _rgb(24), format="WEBP", save_all=True, append_images=[_rgb(25)], duration=100)
    raw("flat.psd", psd_bytes(_rgb(26)), "ok")
    # Upper-case and odd extensions.
    save("UPPER.JPG", _rgb(27), format="JPEG")
    save("short.jpe", _rgb(28), format="JPEG")
    save("tiff.tif", _rgb(29))

    # Pixel formats.
    save("cmyk.jpg", _rgb(30).convert("CMYK"), format="JPEG")
    save("cmyk.tif", _rgb(31).convert("CMYK"))
    save("grey.jpg", _rgb(32).convert("L"), format="JPEG")
    save("la.png", _rgb(33).convert("LA"))
    save("rgba.png", _rgb(34).convert("RGBA"))
    pal = _rgb(35).convert("P")
    save("palette_trns.png", pal, transparency=0)
    save("palette_trns.gif", pal, transparency=0)
    rgb_png_with_trns(d / "rgb_trns.png")
    out[b"rgb_trns.png"] = "ok"
    grey_trns = _rgb(36).convert("L")
    save("grey_trns.png", grey_trns, transparency=int(np.asarray(grey_trns)[0, 0]))
    save("grey16_narrow.tif", Image.fromarray(_gradient16(291, 694)))
    save("grey12in16.tif", Image.fromarray(_gradient16(0, 4095)))
    save("grey16.png", Image.fromarray(_gradient16(1000, 60000)))
    save("float32.tif", Image.fromarray(np.linspace(-0.5, 2.5, 48 * 36, dtype=np.float32).reshape(36, 48)))
    save("int32.tif", Image.fromarray(np.linspace(-70000, 70000, 48 * 36).astype(np.int32).reshape(36, 48)))
    save("rgb48.tif", Image.fromarray(np.full((36, 48, 3), 40, np.uint8)))
    save("tiny_1x1.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("strip_1000x3.png", _rgb(37, (1000, 3)))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", _rgb(38, (60, 30)), format="JPEG", exif=exif)
    bad_exif = _rgb(39)
    save("broken_exif.jpg", bad_exif, format="JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        save("photo.heic", _rgb(40), format="HEIF")
    except ImportError:
        pass

    # Latin-1 names (bytes paths).
    for i, name in enumerate(LATIN1_NAMES):
        buf = io.BytesIO()
        fmt = {b".gif": "GIF", b".png": "PNG", b".jpg": "JPEG"}[os.path.splitext(name)[1]]
        _rgb(41 + i).save(buf, format=fmt)
        raw(name, buf.getvalue(), "ok")
    buf = io.BytesIO()
    _rgb(45).save(buf, format="PNG")
    raw("new\nline.png", buf.getvalue(), "ok")
    raw("emoji_\N{CAMERA}.png", buf.getvalue(), "ok")

    # Broken files: each must fail alone, with its reason.
    raw("zero.jpg", b"", "empty")
    raw("zero.png", b"", "empty")
    raw("text.jpg", b"this is not a picture\n", "not an image")
    raw("html.png", b"<html><body>404 Not Found</body></html>\n", "not an image")
    raw(
        "random.tif",
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "not an image",
    )
    for name, fmt in [
        ("truncated.jpg", "JPEG"),
        ("truncated.png", "PNG"),
        ("truncated.webp", "WEBP"),
        ("truncated.tif", "TIFF"),
        ("truncated.gif", "GIF"),
    ]:
        buf = io.BytesIO()
        _rgb(46, (200, 150)).save(buf, format=fmt)
        data = buf.getvalue()
        raw(name, data[: len(data) // 3], "")  # truncated or corrupt: any reason, as long as it is named
    raw("bomb.png", png_header_only(100_000, 100_000), "too large")
    raw(
        "bomb_gif.gif",
        b"GIF89a"
        + struct.pack("<HH", 65535, 65535)
        + b"\x00\x00\x00"
        + b","
        + struct.pack("<HHHH", 0, 0, 65535, 65535)
        + b"\x00\x02\x02\x44\x01\x00;",
        "too large",
    )
    raw("header_only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", "")
    raw("magic_only.png", b"\x89PNG\r\n\x1a\n", "")
    raw("libtiff_noise.tif", tiff_with_bad_tag_count(), "")
    raw("many_samples.tif", tiff_with_many_samples(), "not an image")

    # Files that are not images at all: counted as skipped, never opened.
    (d / "notes.txt").write_text("holiday notes\n")
    (d / "clip.mov").write_bytes(b"\x00\x00\x00\x14ftypqt  ")
    (d / "sidecar.xmp").write_text("<x:xmpmeta/>")
    return out


SKIPPED_NAMES = {"notes.txt", "clip.mov", "sidecar.xmp"}
