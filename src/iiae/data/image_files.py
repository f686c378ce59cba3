"""Image files of one's own, one at a time: list a folder's images, read a file as a model's input, write one.

A file of any size and mode is read as the training images are (:mod:`iiae.data.paired_images`): a regular file
only, decoded whole (a file that is not an image, is truncated, or has more pixels than PIL's decompression-bomb
limit raises :class:`ImageFileError` naming it), made 8-bit RGB or L for the model's channels by the table of
:mod:`iiae.data.image_modes` (16-bit and float images scaled by their range, alpha dropped), resized to ``size`` x
``size`` (area averaging when shrinking, bicubic when enlarging; the aspect ratio is not kept) and mapped to
[-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from iiae.atomic import atomic_write
from iiae.data.export import to_pil_image, to_uint8
from iiae.data.image_modes import ImageFileError, open_image
from iiae.data.paired_images import IMAGE_SUFFIXES, image_mode, image_tensor
from iiae.errors import DataError, OutputError

__all__ = ["IMAGE_SUFFIXES", "ImageFileError", "check_image_file", "find_images", "read_image", "read_images",
           "write_image"]  # fmt: skip


def check_image_file(path: str | Path, what: str = "image file") -> Path:
    """``path`` as a Path; DataError (``what`` names it) when it does not exist or is not a file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file")
    return path


def find_images(folder: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, what: str = "gallery folder"
                ) -> list[Path]:  # fmt: skip
    """Every file under ``folder`` (recursively) whose extension is one of ``suffixes``, sorted by relative path;
    DataError (``what`` names the folder) when the folder is missing or holds no such file."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{what} {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{what} {folder} is not a folder (expected a folder of {', '.join(suffixes)} images)")
    files = [path for path in folder.rglob("*") if path.suffix.lower() in suffixes and path.is_file()]
    if not files:
        raise DataError(f"{what} {folder} holds no images ({', '.join(suffixes)}, searched recursively)")
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


def read_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """The image file as a model input: float32 ``[channels, size, size]`` in [-1, 1] (see the module docstring)."""
    path = check_image_file(path)
    with open_image(path) as image:
        return image_tensor(image, size, image_mode(channels), path)


def read_images(paths: Sequence[str | Path], size: int, channels: int) -> torch.Tensor:
    """:func:`read_image` of every path, stacked: ``[N, channels, size, size]``."""
    if not paths:
        raise DataError("no image files given")
    return torch.stack([read_image(path, size, channels) for path in paths])


def write_image(image: torch.Tensor, path: str | Path) -> Path:
    """One image ``[C, H, W]`` in [-1, 1] as an 8-bit PNG (L for one channel, RGB for three), written atomically."""
    picture = to_pil_image(to_uint8(image[None])[0])
    try:
        return atomic_write(path, lambda file: picture.save(file, format="PNG"))
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
