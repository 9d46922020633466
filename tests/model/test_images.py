"""The one image loader (lexsearch/model/images.py): every pixel format right, one guard, one set of reasons."""

from __future__ import annotations

import numpy as np
import pytest
from oddfiles import make_odd_folder, png_header_only, psd_bytes, rgb_png_with_trns
from PIL import Image

from lexsearch.errors import DataError
from lexsearch.index.scan import is_image_name
from lexsearch.model.images import MAX_MEGAPIXELS, load_image, open_image

LIMIT = int(MAX_MEGAPIXELS * 1e6)


def _gradient(lo, hi, dtype, w=64, h=48):
    return np.linspace(lo, hi, w * h).reshape(h, w).astype(dtype)


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("grey16_narrow.tif", _gradient(291, 694, np.uint16)),  # a 16-bit scan using a sliver of the range
        ("grey12in16.tif", _gradient(0, 4095, np.uint16)),  # 12-bit sensor data in 16-bit words
        ("grey16.png", _gradient(1000, 60000, np.uint16)),
        ("float32.tif", _gradient(-0.5, 2.5, np.float32)),  # a float map: outside 0..1 on both sides
        ("int32.tif", _gradient(0, 70000, np.int32)),
    ],
)
def test_wide_greyscale_is_rescaled_by_its_own_range(tmp_path, name, array):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    rgb, facts = load_image(str(path), max_pixels=LIMIT)
    pixels = np.asarray(rgb, np.float64)
    assert rgb.mode == "RGB" and (facts["width"], facts["height"]) == (64, 48)
    # A gradient over the image's own range: black to white, mid-grey on average (clipping gives a page
    # that is all white or all black, mean ~255 or ~0, with no gradient in it).
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
    assert abs(pixels.mean() - 127.5) < 2
    assert np.all(np.diff(pixels[:, :, 0].ravel()) >= 0)  # monotone, as the source


def test_float_image_with_nan_and_flat_images(tmp_path):
    arr = _gradient(0.0, 1.0, np.float32)
    arr[0, :5] = np.nan
    Image.fromarray(arr).save(tmp_path / "nan.tif")
    rgb, _ = load_image(str(tmp_path / "nan.tif"), max_pixels=LIMIT)
    assert np.asarray(rgb)[-1, -1, 0] == 255 and np.asarray(rgb)[0, 0, 0] == 0
    # A flat 16-bit frame keeps its absolute level: a black frame stays black, not mid-grey.
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(tmp_path / "black16.tif")
    assert np.asarray(load_image(str(tmp_path / "black16.tif"), max_pixels=LIMIT)[0]).max() == 0


def test_rgb_png_with_a_transparent_colour(tmp_path):
    path = tmp_path / "trns.png"
    rgb_png_with_trns(path)
    with Image.open(path) as raw:
        assert raw.mode == "RGB" and isinstance(raw.info.get("transparency"), tuple)
        key = raw.getpixel((0, 0))
        keyed = np.all(np.asarray(raw) == np.array(key), axis=2)
    rgb, _ = load_image(str(path), max_pixels=LIMIT)
    assert "transparency" not in rgb.info  # savers choke on an RGB image that still carries a tRNS key
    assert np.all(np.asarray(rgb)[keyed] == 255)  # the keyed colour is transparent: white, as a viewer shows
    rgb.save(tmp_path / "again.png")  # and the result saves


def test_formats_beyond_the_photo_ones(tmp_path):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), np.uint8))
    im.save(tmp_path / "a.jp2", format="JPEG2000")
    im.save(tmp_path / "a.ppm")
    im.convert("L").save(tmp_path / "a.pgm")
    im.save(tmp_path / "a.tga")
    im.save(tmp_path / "a.ico", sizes=[(32, 24)])
    im.save(tmp_path / "a.mpo", format="MPO", save_all=True, append_images=[im])
    im.save(tmp_path / "a.apng", format="PNG", save_all=True, append_images=[im.rotate(90)])
    (tmp_path / "a.psd").write_bytes(psd_bytes(im))
    for name in ["a.jp2", "a.ppm", "a.pgm", "a.tga", "a.ico", "a.mpo", "a.apng", "a.psd"]:
        rgb, _ = load_image(str(tmp_path / name), max_pixels=LIMIT)
        assert rgb.mode == "RGB" and rgb.size[0] == 32, name
        assert is_image_name(name), name  # and the scan hands them to the loader instead of skipping them


def test_one_megapixel_guard_and_one_message(tmp_path):
    # 189 MP by header: under the guard, so every command decodes it (here it fails as truncated). Pillow's
    # own bomb check (179 MP) used to refuse it in explain and query --image while index accepted it.
    (tmp_path / "big.png").write_bytes(png_header_only(15_000, 12_600))
    with pytest.raises(DataError) as info:
        open_image(tmp_path / "big.png")
    assert "too large" not in str(info.value) and "truncated" in str(info.value)
    # Over the guard: refused from the header, in the same words by the loader and by open_image.
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(DataError) as info:
        open_image(tmp_path / "bomb.png")
    message = str(info.value)
    assert "too large: 100000x100000 = 10000000000 pixels is over the 200 megapixel guard" in message
    assert "400" not in message and "178956970" not in message


def test_every_odd_file_loads_or_fails_with_a_reason(tmp_path):
    import os

    expected = make_odd_folder(tmp_path)
    assert len(expected) >= 50
    for name, want in expected.items():
        path = os.fsdecode(os.path.join(os.fsencode(tmp_path), name))
        if want == "ok":
            rgb, _ = load_image(path, max_pixels=LIMIT)
            assert rgb.mode == "RGB" and "transparency" not in rgb.info, name
        else:
            with pytest.raises(DataError) as info:
                open_image(path)
            assert want in str(info.value), (name, str(info.value))
