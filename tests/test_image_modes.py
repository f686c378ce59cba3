"""Every PIL mode becomes 8-bit L or RGB by one table (iiae.data.image_modes), through every image reader.

A table of one case per mode, written as real files in a format that holds the mode (PNG, TIFF) where one does;
a property test over random modes, bit depths and sizes; warnings, FIFOs and Unicode-digit file stems.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from iiae.data import image_modes
from iiae.data.image_files import read_image
from iiae.data.image_modes import MODES, ImageFileError, open_image, read_8bit, to_8bit
from iiae.data.paired_images import scan_split, sorted_images
from iiae.errors import DataError
from iiae.zsbir.image_pipeline import decode_image
from iiae.zsbir.report import retrieval_row

PALETTE = [0, 0, 0, 255, 255, 255, 90, 90, 90, 10, 200, 30]  # index 3: a green


def over_white(rgb: tuple[int, int, int], alpha: int) -> tuple[int, int, int]:
    """The colour ``rgb`` at opacity ``alpha`` over opaque white: rgb * a + 255 * (1 - a), rounded as PIL does."""
    white = Image.new("RGBA", (1, 1), (255, 255, 255, 255))
    return Image.alpha_composite(white, Image.new("RGBA", (1, 1), (*rgb, alpha))).getpixel((0, 0))[:3]


def luma(rgb: tuple[int, int, int]) -> int:
    """PIL's RGB -> L (ITU-R 601-2, rounded as PIL rounds)."""
    return (rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16


def image_of(mode: str, pixels: list) -> Image.Image:
    """A 1 x len(pixels) image of ``mode`` holding ``pixels`` (palette modes get PALETTE)."""
    image = Image.new(mode, (len(pixels), 1))
    if mode in ("P", "PA"):
        image.putpalette(PALETTE)
    for column, value in enumerate(pixels):
        image.putpixel((column, 0), value)
    return image


# mode, the format that holds it (None: none does; tested in memory), pixels, expected L, expected RGB (None: L
# repeated). Alpha composited over white; 16-bit scaled by 255/65535; I and F by their range rules.
CASES = [
    ("1", "PNG", [0, 255], [0, 255], None),
    ("L", "PNG", [0, 77, 255], [0, 77, 255], None),
    ("LA", "PNG", [(77, 0), (200, 255)], [255, 200], None),
    ("La", None, [(64, 128), (0, 0)], [over_white((127,) * 3, 128)[0], 255], None),
    ("P", "PNG", [3, 1], [luma((10, 200, 30)), 255], [(10, 200, 30), (255, 255, 255)]),
    ("PA", "TIFF", [(3, 128), (1, 0)], [luma(over_white((10, 200, 30), 128)), 255],
     [over_white((10, 200, 30), 128), (255, 255, 255)]),
    ("RGB", "PNG", [(10, 200, 30)], [luma((10, 200, 30))], [(10, 200, 30)]),
    ("RGBA", "PNG", [(10, 200, 30, 0), (255, 0, 0, 128)], [255, luma(over_white((255, 0, 0), 128))],
     [(255, 255, 255), over_white((255, 0, 0), 128)]),
    ("RGBa", None, [(64, 32, 16, 128)], [luma(over_white((127, 63, 31), 128))], [over_white((127, 63, 31), 128)]),
    ("RGBX", None, [(10, 200, 30, 0)], [luma((10, 200, 30))], [(10, 200, 30)]),
    ("CMYK", "TIFF", [(0, 0, 0, 0), (0, 255, 255, 0)], [255, luma((255, 0, 0))], [(255, 255, 255), (255, 0, 0)]),
    ("YCbCr", None, [(128, 128, 128)], [128], [(128, 128, 128)]),  # Pillow 10.3 cannot read back a 1-pixel YCbCr TIFF
    ("LAB", "TIFF", [(128, 128, 128)], [119], [(119, 119, 119)]),  # L* = 50: sRGB grey 119
    ("HSV", None, [(0, 255, 255)], [luma((255, 0, 0))], [(255, 0, 0)]),
    ("I;16", "PNG", [0, 32768, 65535], [0, 128, 255], None),
    ("I;16L", None, [0, 32768, 65535], [0, 128, 255], None),
    ("I;16B", "TIFF", [0, 32768, 65535], [0, 128, 255], None),
    ("I;16N", None, [0, 32768, 65535], [0, 128, 255], None),
    ("I", "TIFF", [0, 77, 255], [0, 77, 255], None),  # within 0..255: kept
    ("I", "TIFF", [0, 32768, 65535], [0, 128, 255], None),  # within 0..65535: 16-bit
    ("I", "TIFF", [-1000, 0, 1000], [0, 128, 255], None),  # otherwise its own range
    ("F", "TIFF", [0.0, 0.5, 1.0], [0, 128, 255], None),  # within [0, 1]: x 255
    ("F", "TIFF", [0.0, 100.4, 255.0], [0, 100, 255], None),  # within [0, 255]: kept
    ("F", "TIFF", [-2.0, 0.0, 2.0], [0, 128, 255], None),  # otherwise its own range
]  # fmt: skip


def test_the_table_covers_every_mode_pil_knows():
    assert set(Image.MODES) <= set(MODES)  # older Pillows list fewer (10.3 leaves out LA, PA, La, RGBa, I;16*)
    assert {case[0] for case in CASES} == set(MODES)


@pytest.mark.parametrize(("mode", "file_format", "pixels", "grey", "colour"), CASES,
                         ids=[f"{c[0]}-{c[1] or 'memory'}-{i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_every_mode_maps_to_8bit_by_the_table(tmp_path, mode, file_format, pixels, grey, colour):
    image = image_of(mode, pixels)
    if file_format:
        path = tmp_path / f"image.{file_format.lower()}"
        image.save(path, format=file_format)
        image = open_image(path)
        assert image.mode == mode  # the format holds the mode: the file is really tested
    else:
        path = tmp_path / "in-memory"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        as_grey, as_colour = to_8bit(image, "L", path), to_8bit(image, "RGB", path)
    assert not caught, [str(w.message) for w in caught]
    assert as_grey.mode == "L" and as_colour.mode == "RGB"
    assert np.asarray(as_grey)[0].tolist() == grey
    expected = colour or [(value,) * 3 for value in grey]
    assert [tuple(p) for p in np.asarray(as_colour)[0].tolist()] == expected


def test_palette_with_transparency_goes_through_rgba_without_a_warning(tmp_path, recwarn):
    image = image_of("P", [3, 1, 2])
    image.save(tmp_path / "p.png", transparency=bytes([255, 0, 128, 255]))
    with Image.open(tmp_path / "p.png") as raw:  # what PIL alone does with it
        assert isinstance(raw.info["transparency"], bytes)
        with pytest.warns(UserWarning, match="Palette images with Transparency"):
            raw.convert("RGB")
    recwarn.clear()
    pixels = np.asarray(read_8bit(tmp_path / "p.png", "RGB"))[0].tolist()
    assert pixels == [[10, 200, 30], [255, 255, 255], list(over_white((90, 90, 90), 128))]  # over white
    assert len(recwarn) == 0


def test_sixteen_bit_and_float_files_through_every_reader(tmp_path):
    """The reported failures: a 16-bit PNG read as white, a float TIFF as black (training, own images, zero-shot)."""
    Image.new("I;16", (16, 16), 32768).save(tmp_path / "half.png")
    Image.new("F", (16, 16), 0.5).save(tmp_path / "half.tif")
    for name in ("half.png", "half.tif"):
        assert torch.allclose(read_image(tmp_path / name, 8, 1), torch.full((1, 8, 8), 128 / 127.5 - 1), atol=1e-6)
        assert (decode_image(tmp_path / name, 8, "bilinear") == 128).all()
    tile = np.asarray(retrieval_row(tmp_path / "half.png", [(tmp_path / "half.tif", None)]))
    assert tile[36, 36].tolist() == [128, 128, 128]  # the middle of the query's tile
    ab = tmp_path / "data" / "train"
    ab.mkdir(parents=True)
    sixteen = np.concatenate([np.full((8, 8), 16384), np.full((8, 8), 65535)], axis=1).astype(np.uint16)
    Image.fromarray(sixteen).save(ab / "1.png")
    x, y = scan_split(tmp_path / "data", "train", "ab", size=8)[0]
    assert torch.allclose(x, torch.full_like(x, 64 / 127.5 - 1), atol=1e-6) and torch.equal(y, torch.ones_like(y))


def test_nan_pixels_and_modes_outside_the_table_are_refused(tmp_path, monkeypatch):
    Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ImageFileError, match="nan.tif has NaN or infinite pixel values"):
        read_image(tmp_path / "nan.tif", 4, 1)
    with pytest.raises(DataError, match="1.tif has NaN"):
        scan_split(_ab_folder(tmp_path / "data", tmp_path / "nan.tif"), "train", "ab", size=4)
    monkeypatch.delitem(MODES, "HSV")
    with pytest.raises(ImageFileError, match=r"hsv has PIL mode 'HSV', which cannot be read"):
        to_8bit(Image.new("HSV", (2, 2)), "RGB", "hsv")


def _ab_folder(root: Path, image: Path) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "train" / "1.tif").write_bytes(image.read_bytes())
    return root


def test_decompression_bombs_refused_and_large_images_noted_once(tmp_path, monkeypatch, caplog, recwarn):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(image_modes, "_NOTED", set())
    Image.new("L", (15, 15)).save(tmp_path / "bomb.png")  # 225 > 2 x 100 pixels: refused
    Image.new("L", (12, 12)).save(tmp_path / "large.png")  # 144 > 100: PIL warns
    Image.new("L", (11, 11)).save(tmp_path / "large2.png")
    recwarn.clear()
    with pytest.raises(ImageFileError, match="bomb.png cannot be decoded .*pixels"):
        open_image(tmp_path / "bomb.png")
    with caplog.at_level("INFO", logger="iiae.data"):
        assert read_8bit(tmp_path / "large.png", "L").size == (12, 12)
        assert read_8bit(tmp_path / "large2.png", "L").size == (11, 11)
    notes = [r.getMessage() for r in caplog.records if "DecompressionBomb" in r.getMessage()
             or "decompression bomb" in r.getMessage()]  # fmt: skip
    assert len(notes) == 1 and notes[0].startswith("iiae: note: image file") and "large.png" in notes[0]
    assert len(recwarn) == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_fifo_or_device_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    readers = [lambda p: open_image(p), lambda p: read_8bit(p, "RGB"), lambda p: decode_image(p, 8, "bicubic"),
               lambda p: read_image(p, 8, 3)]  # fmt: skip
    targets = [fifo, tmp_path] + ([Path("/dev/null")] if Path("/dev/null").exists() else [])
    for read in readers:
        for target in targets:
            outcome: list = []

            def attempt(read=read, target=target, outcome=outcome) -> None:
                try:
                    read(target)
                except DataError as error:
                    outcome.append(str(error))

            thread = threading.Thread(target=attempt, daemon=True)
            thread.start()
            thread.join(timeout=5)
            assert not thread.is_alive(), f"reading {target} blocked"
            assert outcome and str(target) in outcome[0], outcome


def test_unicode_digit_stems_are_names_not_numbers(tmp_path):
    root = tmp_path / "data"
    for side in ("X", "Y"):
        (root / "train" / side).mkdir(parents=True)
        for stem in ("²", "10", "9", "٣"):
            Image.new("RGB", (8, 8), (len(stem), 0, 0)).save(root / "train" / side / f"{stem}.png")
    dataset = scan_split(root, "train", "folders", size=8)
    assert [p.x_path.stem for p in dataset.pairs] == ["9", "10", "²", "٣"]  # numbers first, then by name
    assert [p.stem for p in sorted_images(root / "train" / "X")] == ["10", "9", "²", "٣"]  # not all numbers: names


# -------------------------------------------------------------------------------------------- property test
NUMERIC = {"I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I;16N": np.uint16, "I": np.int32,
           "F": np.float32}  # fmt: skip
FILES = {"I;16": "PNG", "I;16B": "TIFF", "I": "TIFF", "F": "TIFF", "L": "PNG", "RGB": "PNG", "RGBA": "PNG",
         "LA": "PNG", "CMYK": "TIFF", "1": "PNG"}  # fmt: skip
BOUNDS = {np.uint16: [(0, 255), (0, 65535)], np.int32: [(0, 255), (0, 65535), (-(2**31), 2**31 - 1)],
          np.float32: [(0.0, 1.0), (0.0, 255.0), (-1e30, 1e30)]}  # fmt: skip


@st.composite
def images(draw) -> tuple[Image.Image, np.ndarray | None]:
    """A random image: a mode of the table, a size, and values of a random bit depth / range; with the values of
    one-channel numeric modes (None for the others)."""
    mode = draw(st.sampled_from(sorted(MODES)))
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    if mode in NUMERIC:
        dtype = NUMERIC[mode]
        low, high = draw(st.sampled_from(BOUNDS[dtype]))
        if dtype is np.float32:
            elements = st.floats(low, high, width=32, allow_nan=False, allow_infinity=False)
        else:
            elements = st.integers(low, high)
        values = draw(hnp.arrays(dtype, shape, elements=elements))
        image = Image.new(mode, shape[::-1])
        image.frombytes(values.astype(">u2" if mode == "I;16B" else values.dtype).tobytes())
        return image, values
    bands = Image.getmodebands(mode)
    raw = draw(hnp.arrays(np.uint8, (*shape, bands)))
    image = Image.frombytes("L" if mode == "1" else mode, shape[::-1], raw.tobytes()).convert(mode)
    if mode in ("P", "PA"):
        image.putpalette(draw(hnp.arrays(np.uint8, 768)).tolist())
    return image, None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("modes")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=images(), wanted=st.sampled_from(["L", "RGB"]))
def test_random_modes_depths_and_sizes_give_monotone_uint8(scratch, drawn, wanted):
    image, values = drawn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if image.mode in FILES:
            path = scratch / f"random.{FILES[image.mode].lower()}"
            image.save(path, format=FILES[image.mode])
            result = read_8bit(path, wanted)
        else:
            result = to_8bit(image, wanted, "random")
    assert not caught, [str(w.message) for w in caught]
    pixels = np.asarray(result)
    assert result.mode == wanted and pixels.dtype == np.uint8
    assert pixels.shape == (image.height, image.width) + (() if wanted == "L" else (3,))
    if values is not None:
        grey = pixels if wanted == "L" else pixels[..., 0]
        order = np.argsort(values, axis=None, kind="stable")
        assert (np.diff(grey.reshape(-1)[order].astype(int)) >= 0).all()  # brighter in, never darker out
        if image.mode.startswith("I;16"):
            assert np.array_equal(grey, np.rint(values / 257.0).astype(np.uint8))
        if values.min() < 0 and values.max() > values.min():  # stretched by its own range
            assert grey.min() == 0 and grey.max() == 255
