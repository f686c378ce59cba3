"""Image files -> uint8 pixel tensors for the feature stage, decoded in DataLoader worker processes.

One :class:`Preprocessing` describes everything between a file and the network's input (side, resampling filter,
photos as RGB or edge maps, pixel normalisation), so that training and later retrieval embed files identically
(:class:`iiae.zsbir.feature_extractor.FeatureExtractor` stores it next to the weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import DataLoader, Dataset

from iiae.data.image_modes import read_8bit
from iiae.errors import ConfigError, DataError
from iiae.zsbir.efficientnet import normalise_pixels

RESAMPLING = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Domain = Literal["sketch", "photo"]


def normalise_minus_one_to_one(pixels: torch.Tensor) -> torch.Tensor:
    """pixel / 127.5 - 1: the small CNN's input scale."""
    return pixels.float().div(127.5).sub(1.0)


def normalise_lite0(pixels: torch.Tensor) -> torch.Tensor:
    """(pixel - 127) / 128: EfficientNet-Lite0's input scale (:func:`iiae.zsbir.efficientnet.normalise_pixels`)."""
    return normalise_pixels(pixels)


def normalise_imagenet(pixels: torch.Tensor) -> torch.Tensor:
    """(pixel / 255 - mean) / std with ImageNet's channel statistics (torchvision's backbones)."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


NORMALISATIONS = {"minus_one_to_one": normalise_minus_one_to_one, "lite0": normalise_lite0,
                  "imagenet": normalise_imagenet}


@dataclass(frozen=True)
class Preprocessing:
    """File -> network input: square ``image_size`` resize with ``resample``; photos as ``rgb`` or ``edges``."""

    image_size: int
    resample: Literal["bilinear", "bicubic"]
    photo_input: Literal["rgb", "edges"]
    normalisation: Literal["minus_one_to_one", "lite0", "imagenet"]

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.resample not in RESAMPLING or self.photo_input not in ("rgb", "edges") \
                or self.normalisation not in NORMALISATIONS:
            raise ConfigError(f"invalid image preprocessing {asdict(self)}")

    def edges_for(self, domain: Domain) -> bool:
        """Whether images of ``domain`` become edge maps (photos only, when ``photo_input`` is edges)."""
        if domain not in ("sketch", "photo"):
            raise ConfigError(f"image domain must be sketch or photo, got {domain!r}")
        return domain == "photo" and self.photo_input == "edges"

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] -> float network input."""
        return NORMALISATIONS[self.normalisation](pixels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**{name: values[name] for name in ("image_size", "resample", "photo_input", "normalisation")})


def edge_map(image: Image.Image) -> Image.Image:
    """A sketch-like rendering of a photo: dark edges (gradient magnitude) on white, in RGB."""
    grey = image.convert("L").filter(ImageFilter.GaussianBlur(1))
    edges = ImageOps.autocontrast(grey.filter(ImageFilter.FIND_EDGES), cutoff=1)
    return ImageOps.invert(edges).convert("RGB")


def decode_image(path: str | Path, size: int, resample: str, edges: bool = False) -> np.ndarray:
    """uint8 [3, size, size] RGB (greyscale repeated over the channels; an edge map when ``edges``), the file read
    as every user image is (:func:`iiae.data.image_modes.read_8bit`: any PIL mode, 16-bit and float scaled by
    their range). :class:`~iiae.data.image_modes.ImageFileError` (a DataError) naming the file when it cannot be
    read."""
    image = read_8bit(path, "RGB")
    if edges:
        image = edge_map(image)
    resized = image.resize((size, size), RESAMPLING[resample])
    return np.asarray(resized).transpose(2, 0, 1)


class ImageFileDataset(Dataset):
    """Image files -> (uint8 [3, S, S] tensor, error message or ""); errors are returned, not raised, so that the
    main process can raise one clean DataError instead of a worker's wrapped traceback."""

    def __init__(self, paths: Sequence[str | Path], preprocessing: Preprocessing, domain: Domain) -> None:
        self.paths = [str(path) for path in paths]
        self.size, self.resample = preprocessing.image_size, preprocessing.resample
        self.edges = preprocessing.edges_for(domain)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            pixels = decode_image(self.paths[index], self.size, self.resample, self.edges)
        except DataError as error:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(error)
        return torch.from_numpy(pixels.copy()), ""


def image_batches(paths: Sequence[str | Path], preprocessing: Preprocessing, domain: Domain, batch_size: int = 64,
                  workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 [B, 3, S, S] batches of ``paths`` in order, decoded by ``workers`` processes (0: in this process;
    a single batch is always decoded here, where starting processes cannot pay off)."""
    dataset = ImageFileDataset(paths, preprocessing, domain)
    workers = workers if len(dataset) > batch_size else 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    for pixels, errors in loader:
        failed = [message for message in errors if message]
        if failed:
            raise DataError(failed[0])
        yield pixels


def load_images(paths: Sequence[str | Path], preprocessing: Preprocessing, domain: Domain,
                workers: int = 0) -> np.ndarray:
    """Every image of ``paths`` as one uint8 [N, 3, S, S] array."""
    size = preprocessing.image_size
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    start = 0
    for pixels in image_batches(paths, preprocessing, domain, workers=workers):
        out[start : start + len(pixels)] = pixels.numpy()
        start += len(pixels)
    return out
