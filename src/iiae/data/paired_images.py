"""Paired image folders, read lazily: the pix2pix side-by-side (AB) format and the two-folder format.

AB format (Facades, Maps, ``iiae data export``): one image file per pair, the left half is X and the right
half Y (``swap=True`` flips them), in one folder per split::

    root/train/1.jpg  root/train/2.jpg ...  root/val/...  root/test/...

Two-folder format: the same file stem in ``X/`` and ``Y/`` of each split (any image extensions)::

    root/train/X/cat.png  root/train/Y/cat.jpg ...  root/test/X/...  root/test/Y/...

Files are sorted by number when their stems are numbers (ASCII digits: ``2.jpg`` before ``10.jpg``), by name
otherwise. Each image is opened and made 8-bit RGB or L as every user image is (:mod:`iiae.data.image_modes`:
16-bit and float images scaled by their range, alpha dropped), then (each half for AB) resized to ``size`` x
``size`` (box filter, i.e. area averaging, when shrinking; bicubic when enlarging) and mapped to [-1, 1].

Every file is decoded once when a dataset is built (and dropped again), so every file's problem -- not an image,
truncated or corrupt pixels, a decompression bomb, an odd width, halves that are not square, an empty folder,
names without a partner -- is reported up front with the file's name (or skipped with ``data.skip_bad``),
before training; pixels are decoded again in ``__getitem__``, in DataLoader workers, so no dataset needs to
fit in memory. A file that cannot be decoded there (changed meanwhile) still raises a one-line
:class:`ImageFileError` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from iiae.data.image_modes import ImageFileError, open_image, reason, to_8bit
from iiae.errors import DataError

LOG = logging.getLogger("iiae.data")

#: Extensions read as images (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Relative tolerance on "square": |width - height| <= ASPECT_TOLERANCE * max(width, height).
ASPECT_TOLERANCE = 0.02
LAYOUTS = ("ab", "folders")


def is_number(stem: str) -> bool:
    """Whether a file stem is a number: ASCII digits only (``²`` or ``٣`` are digits to ``str.isdigit``, and
    ``int`` refuses the first)."""
    return stem.isascii() and stem.isdigit()


def sorted_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` (not recursive): by number when every stem is a number, else by name."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if all(is_number(p.stem) for p in files):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return sorted(files, key=lambda p: p.name)


def image_mode(channels: int) -> str:
    """The PIL mode of images with ``channels`` channels: L (1) or RGB (3)."""
    return "L" if channels == 1 else "RGB"


def _square_enough(width: int, height: int) -> bool:
    return abs(width - height) <= ASPECT_TOLERANCE * max(width, height)


def _inspect(path: Path) -> tuple[int, int, str]:
    """Width, height and PIL mode of an image file, its pixels decoded and made 8-bit once so that a damaged body
    or unusable pixels are found when the data set is built, before training (ImageFileError naming the file)."""
    with open_image(path) as image:
        to_8bit(image, None, path)
        return image.width, image.height, image.mode


def _to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image resized to size x size (area averaging when shrinking), as float32 [C, S, S] in [-1, 1]."""
    if image.size != (size, size):
        shrinking = image.width >= size and image.height >= size
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        image = image.resize((size, size), resample)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def image_tensor(image: Image.Image, size: int, mode: str, path: Path) -> torch.Tensor:
    """``image`` made 8-bit ``mode`` (RGB or L, :func:`iiae.data.image_modes.to_8bit`) and resized as every
    training image is (:func:`_to_tensor`); ImageFileError naming ``path`` when that fails."""
    image = to_8bit(image, mode, path)
    try:
        return _to_tensor(image, size)
    except (OSError, ValueError) as error:
        raise ImageFileError(f"image file {path} cannot be decoded ({reason(error)})") from None


@dataclass(frozen=True)
class PairSource:
    """Where one pair's images are: two files, or one AB file (``x_path == y_path``) and which half is X."""

    x_path: Path
    y_path: Path
    x_is_left: bool = True  # AB only

    @property
    def side_by_side(self) -> bool:
        return self.x_path == self.y_path


class PairedImageFolder(Dataset):
    """Lazily loaded pairs (x, y), each float32 ``[C, size, size]`` in [-1, 1].

    ``x`` and ``y`` are sliceable views of one domain (``dataset.x[0:8]`` is an ``[8, C, S, S]`` tensor), so
    the retrieval evaluation and the figures use this dataset as they use in-memory tensors.
    """

    def __init__(self, pairs: Sequence[PairSource], size: int, x_channels: int = 3, y_channels: int = 3,
                 source: str = "") -> None:  # fmt: skip
        self.pairs = list(pairs)
        self.size, self.modes, self.source = size, (image_mode(x_channels), image_mode(y_channels)), source
        self.x, self.y = DomainView(self, 0), DomainView(self, 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        if pair.side_by_side:
            with self._open(pair.x_path) as image:
                return self._half(image, pair, 0), self._half(image, pair, 1)
        return self.load(index, 0), self.load(index, 1)

    def load(self, index: int, domain: int) -> torch.Tensor:
        """Image of one domain (0: X, 1: Y) of pair ``index``."""
        pair = self.pairs[index]
        with self._open(pair.x_path if domain == 0 else pair.y_path) as image:
            if pair.side_by_side:
                return self._half(image, pair, domain)
            return self._convert(image, domain, pair.x_path if domain == 0 else pair.y_path)

    def item_shape(self, domain: int) -> tuple[int, int, int]:
        """``(C, S, S)`` of one image of ``domain`` (0: X, 1: Y)."""
        return (1 if self.modes[domain] == "L" else 3, self.size, self.size)

    def subset(self, indices: Sequence[int]) -> PairedImageFolder:
        """The pairs at ``indices`` (e.g. a validation set held out of the training pairs)."""
        channels = [1 if mode == "L" else 3 for mode in self.modes]
        return PairedImageFolder([self.pairs[i] for i in indices], self.size, *channels, source=self.source)

    # ------------------------------------------------------------------------------------------- decoding
    @staticmethod
    def _open(path: Path) -> Image.Image:
        return open_image(path)

    def _half(self, image: Image.Image, pair: PairSource, domain: int) -> torch.Tensor:
        half = image.width // 2
        left = (domain == 0) == pair.x_is_left
        box = (0, 0, half, image.height) if left else (half, 0, 2 * half, image.height)
        whole = to_8bit(image, self.modes[domain], pair.x_path)  # the whole file's range scales both halves
        return self._convert(whole.crop(box), domain, pair.x_path)

    def _convert(self, image: Image.Image, domain: int, path: Path) -> torch.Tensor:
        return image_tensor(image, self.size, self.modes[domain], path)


class DomainView:
    """One domain of a lazy dataset, read like a float32 ``[N, C, S, S]`` tensor: ``len(view)``, ``view.shape``,
    ``view[i]`` and ``view[a:b]`` (stacked). The dataset provides ``load(index, domain)`` and ``item_shape(domain)``.
    """

    ndim = 4
    dtype = torch.float32

    def __init__(self, dataset: Dataset, domain: int) -> None:
        self.dataset, self.domain = dataset, domain

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.dataset), *self.dataset.item_shape(self.domain)))

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        if isinstance(index, slice):
            items = range(len(self.dataset))[index]
            return torch.stack([self.dataset.load(i, self.domain) for i in items])
        return self.dataset.load(index, self.domain)


# ---------------------------------------------------------------------------------------------- scanning
class _Problems:
    """Bad files found while scanning one split: raised at once, or skipped and counted (``skip_bad``)."""

    def __init__(self, folder: Path, skip_bad: bool) -> None:
        self.folder, self.skip_bad, self.messages = folder, skip_bad, []

    def add(self, message: str) -> None:
        if not self.skip_bad:
            raise ImageFileError(message)
        self.messages.append(message)

    def report(self, total: int) -> None:
        if self.messages:
            LOG.warning("iiae: skipped %d of %d files in %s (data.skip_bad); first: %s",
                        len(self.messages), total, self.folder, self.messages[0])  # fmt: skip


def _note_conversions(folder: Path, converted: dict[str, int], target: tuple[str, str]) -> None:
    """One notice per split when images had to be converted (grayscale, RGBA, palette ... to RGB)."""
    if converted:
        modes = ", ".join(f"{count} {mode}" for mode, count in sorted(converted.items()))
        LOG.info("iiae: note: images in %s converted to %s: %s", folder, "/".join(sorted(set(target))), modes)


def _split_folder(root: Path, split: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        where = f"{root} holds: {', '.join(present)}" if present else f"{root} does not exist or holds no folders"
        raise DataError(f"split folder {folder} does not exist ({where})")
    return folder


def _images_of(folder: Path, what: str) -> list[Path]:
    files = sorted_images(folder)
    if not files:
        raise DataError(f"{what} {folder} holds no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def scan_ab_split(folder: Path, size: int, x_channels: int = 3, y_channels: int = 3, swap: bool = False,
                  skip_bad: bool = False) -> PairedImageFolder:  # fmt: skip
    """Pairs of one AB split folder, every header checked (see the module docstring)."""
    files = _images_of(folder, "split folder")
    problems, converted, pairs = _Problems(folder, skip_bad), {}, []
    target = (image_mode(x_channels), image_mode(y_channels))
    for path in files:
        try:
            width, height, mode = _inspect(path)
        except ImageFileError as error:
            problems.add(str(error))
            continue
        if width % 2:
            problems.add(f"AB image {path} has an odd width {width}: expected X and Y side by side, equal halves")
        elif not _square_enough(width // 2, height):
            problems.add(f"AB image {path} is {width}x{height}: its halves ({width // 2}x{height}) are not square; "
                         "expected X and Y side by side, each square (e.g. 512x256)")  # fmt: skip
        else:
            pairs.append(PairSource(path, path, x_is_left=not swap))
            if mode not in target:
                converted[mode] = converted.get(mode, 0) + 1
    problems.report(len(files))
    _note_conversions(folder, converted, target)
    if not pairs:
        raise DataError(f"split folder {folder} holds no usable AB image (all {len(files)} skipped)")
    return PairedImageFolder(pairs, size, x_channels, y_channels, source=f"AB folder {folder}")


def scan_two_folder_split(folder: Path, size: int, x_channels: int = 3, y_channels: int = 3,
                          skip_bad: bool = False) -> PairedImageFolder:  # fmt: skip
    """Pairs of ``folder/X`` and ``folder/Y`` matched by file stem; files without a partner are reported."""
    by_stem: list[dict[str, Path]] = []
    for name in ("X", "Y"):
        if not (folder / name).is_dir():
            raise DataError(f"two-folder split {folder} has no {name}/ folder (expected {folder}/X and {folder}/Y)")
        stems: dict[str, Path] = {}
        for path in _images_of(folder / name, "folder"):
            if path.stem in stems:
                raise DataError(f"{stems[path.stem]} and {path} have the same stem: pairs are matched by stem")
            stems[path.stem] = path
        by_stem.append(stems)
    x_files, y_files = by_stem
    alone_x = [x_files[stem].name for stem in sorted(set(x_files) - set(y_files))]
    alone_y = [y_files[stem].name for stem in sorted(set(y_files) - set(x_files))]
    if alone_x or alone_y:
        parts = [f"{len(files)} in {folder / name} without a partner ({', '.join(files[:3])}"
                 f"{', ...' if len(files) > 3 else ''})" for name, files in (("X", alone_x), ("Y", alone_y)) if files]
        message = f"mismatched names in {folder}: " + "; ".join(parts)
        if not skip_bad:
            raise DataError(message + " (pairs are matched by file stem; set data.skip_bad to skip them)")
        LOG.warning("iiae: skipped %s", message)
    problems, converted, pairs = _Problems(folder, skip_bad), {}, []
    target = (image_mode(x_channels), image_mode(y_channels))
    common = sorted(set(x_files) & set(y_files), key=lambda s: (0, int(s), s) if is_number(s) else (1, 0, s))
    for stem in common:
        headers = []
        for path in (x_files[stem], y_files[stem]):
            try:
                width, height, mode = _inspect(path)
            except ImageFileError as error:
                problems.add(str(error))
                break
            if not _square_enough(width, height):
                problems.add(f"image {path} is {width}x{height}: expected a square image (crop or pad it)")
                break
            headers.append(mode)
        if len(headers) == 2:
            pairs.append(PairSource(x_files[stem], y_files[stem]))
            for mode, wanted in zip(headers, target):
                if mode != wanted:
                    converted[mode] = converted.get(mode, 0) + 1
    problems.report(2 * len(common))
    _note_conversions(folder, converted, target)
    if not pairs:
        raise DataError(f"two-folder split {folder} holds no usable pair")
    return PairedImageFolder(pairs, size, x_channels, y_channels, source=f"two-folder split {folder}")


def scan_split(root: str | Path, split: str, layout: str, size: int, x_channels: int = 3, y_channels: int = 3,
               swap: bool = False, skip_bad: bool = False) -> PairedImageFolder:  # fmt: skip
    """The pairs of ``root/split`` in ``layout`` ``"ab"`` or ``"folders"``."""
    folder = _split_folder(Path(root), split)
    if layout == "ab":
        return scan_ab_split(folder, size, x_channels, y_channels, swap, skip_bad)
    if layout == "folders":
        if swap:
            x_channels, y_channels = y_channels, x_channels
        dataset = scan_two_folder_split(folder, size, x_channels, y_channels, skip_bad)
        if swap:
            dataset = PairedImageFolder([PairSource(p.y_path, p.x_path) for p in dataset.pairs], size,
                                        y_channels, x_channels, source=dataset.source)  # fmt: skip
        return dataset
    raise DataError(f"unknown image layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
