"""Image files -> 8-bit L or RGB pixels: the one way every command opens a user's image and reads its pixels.

:func:`open_image` opens a regular file only (a FIFO or a device is refused at once, never waited on), decodes
it whole under PIL's decompression-bomb limit, and raises :class:`ImageFileError` naming the file for anything
PIL cannot use. :func:`to_8bit` then maps the image's PIL mode to 8-bit ``L`` or ``RGB`` by :data:`MODES`, a
table with one row per PIL mode, so that no mode is silently saturated or blackened:

- 8-bit modes (``1``, ``L``, ``LA``, ``RGB``, ``RGBA``, ``RGBX``, ``CMYK``, ``YCbCr``, ``HSV``, ``P``) are
  converted by PIL; ``1`` becomes 0 or 255, ``YCbCr`` to ``L`` keeps its Y band.
- Alpha is **composited over white**, as an image viewer shows it: a sketch saved as black strokes on a
  transparent background (whose hidden colour is often black) reads as black on white, not as all black.
  Premultiplied modes (``La``, ``RGBa``) are unpremultiplied first (through ``LA`` /
  ``RGBA``); palette images with transparency (``P`` with a ``transparency`` entry, ``PA``) go through ``RGBA``,
  so a palette's own colours are kept and PIL's warning about them is never raised.
- ``LAB`` goes through ``RGB`` (PIL has no direct ``LAB`` to ``L``).
- 16-bit modes (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) are scaled by 255 / 65535, rounded: 65535 is 255,
  32768 is 128 (never clipped at 255).
- ``I`` (32-bit integers): values within 0..255 are kept, values within 0..65535 are scaled as 16-bit, any other
  range is stretched from the image's own minimum..maximum to 0..255.
- ``F`` (32-bit floats): values within [0, 1] are scaled by 255, values within [0, 255] are kept (rounded), any
  other range is stretched from the image's own minimum..maximum; a NaN or infinite pixel is refused
  (:class:`ImageFileError` naming the file). A constant image outside those ranges becomes black.

Every rule is monotone: a brighter input pixel never becomes darker. A mode outside the table (none that PIL
13 opens) is refused with an error naming the file and the mode. Warnings the image library raises while a file
is decoded (EXIF, TIFF tags, large images under the bomb limit) never reach stderr as Python warnings: each kind
becomes one ``iiae: note:`` on the ``iiae.data`` logger, once per process.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from iiae.errors import DataError
from iiae.readers import open_regular

LOG = logging.getLogger("iiae.data")

#: What PIL raises for a file that is no usable image: not an image, truncated or corrupt pixels, or more pixels
#: than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS x 2).
UNUSABLE_IMAGE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
NOTE_LIMIT = 200  # characters of a library warning quoted in a notice


class ImageFileError(DataError):
    """An image file that cannot be used, named in the message (one line, also from a DataLoader worker).

    A DataLoader re-raises a worker's exception as ``type(error)(text)`` where ``text`` holds the whole worker
    traceback; this class keeps only the original message, so the command line still prints one line.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def reason(error: BaseException) -> str:
    """An exception's message on one line (its class name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


# ------------------------------------------------------------------------------------------ library warnings
_NOTED: set[str] = set()


@contextmanager
def library_warnings(path: str | Path) -> Iterator[None]:
    """Run a decoding step with Python warnings caught: each kind of warning becomes one ``iiae: note:`` naming
    ``path`` (once per process, at most :data:`NOTE_LIMIT` characters of it); none reaches stderr raw."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for warning in caught:
            text = " ".join(str(warning.message).split())
            kind = f"{warning.category.__name__}: {re.sub(r'[0-9]+', '#', text)}"
            if kind not in _NOTED:
                _NOTED.add(kind)
                LOG.info("iiae: note: image file %s: %s (a warning of the image library; not repeated)",
                         path, text[:NOTE_LIMIT])  # fmt: skip


# ------------------------------------------------------------------------------------------------- the table
Rule = Callable[[Image.Image, Path], Image.Image]


def _as_is(image: Image.Image, path: Path) -> Image.Image:
    return image


def _through(mode: str) -> Rule:
    def rule(image: Image.Image, path: Path) -> Image.Image:
        return image.convert(mode)

    rule.__name__ = f"through_{mode}"
    return rule


def _palette(image: Image.Image, path: Path) -> Image.Image:
    return image.convert("RGBA") if image.has_transparency_data else image


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8))


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded to the nearest (65535 -> 255, 32768 -> 128)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The image's own range low..high -> 0..255 (a constant image -> 0)."""
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _sixteen_bit(image: Image.Image, path: Path) -> Image.Image:
    return _grey(_scale_16bit(np.asarray(image)))


def _thirty_two_bit(image: Image.Image, path: Path) -> Image.Image:
    values = np.asarray(image)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low >= 0 and high <= 255:
        return _grey(values)
    if low >= 0 and high <= 65535:
        return _grey(_scale_16bit(values))
    return _grey(_stretch(values, low, high))


def _float(image: Image.Image, path: Path) -> Image.Image:
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise ImageFileError(f"image file {path} has NaN or infinite pixel values (PIL mode F); expected finite "
                             "values")  # fmt: skip
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        return _grey(np.clip(np.rint(values * np.float32(255)), 0, 255))
    if low >= 0 and high <= 255:
        return _grey(np.clip(np.rint(values), 0, 255))
    return _grey(_stretch(values, low, high))


#: Every PIL mode -> the step that makes it ready for PIL's conversion to 8-bit L or RGB (see the module
#: docstring); the image's mode after the step is L, LA, RGB, RGBA or another mode PIL converts directly.
MODES: dict[str, Rule] = {
    "1": _as_is, "L": _as_is, "LA": _as_is, "La": _through("LA"),
    "P": _palette, "PA": _through("RGBA"),
    "RGB": _as_is, "RGBA": _as_is, "RGBa": _through("RGBA"), "RGBX": _as_is,
    "CMYK": _as_is, "YCbCr": _as_is, "LAB": _through("RGB"), "HSV": _as_is,
    "I;16": _sixteen_bit, "I;16L": _sixteen_bit, "I;16B": _sixteen_bit, "I;16N": _sixteen_bit,
    "I": _thirty_two_bit, "F": _float,
}  # fmt: skip
ONE_CHANNEL = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def _over_white(image: Image.Image) -> Image.Image:
    """An LA or RGBA image composited over opaque white (as L or RGB); any other image as it is."""
    if image.mode not in ("LA", "RGBA"):
        return image
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    composited = Image.alpha_composite(white, image.convert("RGBA"))
    return composited.convert("L" if image.mode == "LA" else "RGB")


def to_8bit(image: Image.Image, mode: str | None, path: str | Path) -> Image.Image:
    """``image`` as an 8-bit PIL image of ``mode`` (``"L"`` or ``"RGB"``; None: L for one-channel modes, RGB
    for the others), by :data:`MODES` (see the module docstring). The image itself when it already is ``mode``.
    ImageFileError naming ``path`` for a mode outside the table, NaN or infinite values, or a failed conversion."""
    rule = MODES.get(image.mode)
    if rule is None:
        raise ImageFileError(f"image file {path} has PIL mode {image.mode!r}, which cannot be read as 8-bit L or "
                             f"RGB (expected one of {', '.join(MODES)})")  # fmt: skip
    mode = mode or ("L" if image.mode in ONE_CHANNEL else "RGB")
    try:
        with library_warnings(path):
            ready = _over_white(rule(image, Path(path)))
            return ready if ready.mode == mode else ready.convert(mode)
    except (OSError, ValueError) as error:
        if isinstance(error, ImageFileError):
            raise
        raise ImageFileError(f"image file {path} cannot be converted from PIL mode {image.mode} to {mode} "
                             f"({reason(error)})") from None  # fmt: skip


# --------------------------------------------------------------------------------------------------- opening
def open_image(path: str | Path) -> Image.Image:
    """The image in ``path`` with its pixels decoded, in its own PIL mode (see :func:`to_8bit`).

    Only a regular file is opened (a FIFO, device or folder is refused at once); ImageFileError naming the file
    when it is missing, not an image, truncated or corrupt, or has more pixels than PIL's decompression-bomb
    limit. Library warnings become notices (:func:`library_warnings`)."""
    with open_regular(path, "image file", ImageFileError) as file:
        try:
            with library_warnings(path):
                image = Image.open(file)
                image.load()
        except UNUSABLE_IMAGE as error:
            why = "not an image format PIL reads" if isinstance(error, UnidentifiedImageError) else reason(error)
            raise ImageFileError(f"image file {path} cannot be decoded ({why})") from None
    return image


def read_8bit(path: str | Path, mode: str | None) -> Image.Image:
    """:func:`open_image` then :func:`to_8bit`: the file's pixels as an 8-bit L or RGB PIL image."""
    with open_image(path) as image:
        converted = to_8bit(image, mode, path)
        return converted.copy() if converted is image else converted
