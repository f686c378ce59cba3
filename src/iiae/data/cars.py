"""3D car renderings (Reed et al., 2015) read straight from their ``.mat`` files.

Each file ``car_XXX_mesh.mat`` holds one car model under the key ``im``: uint8 RGB renderings indexed
``[H, W, 3, view (24), elevation (4)]``. Pairs (as the paper's Cars experiment): X = view 0 at an elevation,
Y = another view (``views``, default 1..23) at the same elevation, so the shared code carries the car and its
elevation and the exclusive code of Y the view. Cars 1-191 train, 192-199 test (by the number in the name).

Every file of a split is read once when the dataset is built (scipy, an optional dependency: ``pip install
iiae[cars]``) and kept as uint8 at the model's image size: about 4.7 MB per car at 128x128, 1.2 MB at 64x64.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import interpolate
from torch.utils.data import Dataset

from iiae.data.paired_images import DomainView
from iiae.errors import ConfigError, DataError

VIEWS, ELEVATIONS = 24, 4
TRAIN_CARS = range(1, 192)  # cars 1-191
TEST_CARS = range(192, 200)  # cars 192-199
FILE_PATTERN = re.compile(r"car_(\d+)_mesh\.mat")


def car_files(root: str | Path) -> dict[int, Path]:
    """Car number -> ``car_XXX_mesh.mat`` file in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Cars folder {root} does not exist (expected car_001_mesh.mat ... car_199_mesh.mat)")
    files = {int(m.group(1)): p for p in root.iterdir() if (m := FILE_PATTERN.fullmatch(p.name))}
    if not files:
        raise DataError(f"Cars folder {root} holds no car_XXX_mesh.mat file")
    return files


def read_car(path: str | Path, size: int) -> torch.Tensor:
    """The 96 renderings of one car as uint8 ``[views 24, elevations 4, 3, size, size]``."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ConfigError("the Cars loader needs scipy: pip install 'iiae[cars]' (or pip install scipy)") from None
    path = Path(path)
    try:
        contents = loadmat(str(path), variable_names=["im"])
    except Exception as error:  # scipy raises ValueError, MatReadError, OSError, ... for a bad file
        raise DataError(f"Cars file {path} cannot be read as a .mat file ({' '.join(str(error).split())})") from None
    if "im" not in contents:
        raise DataError(f"Cars file {path} has no 'im' array (expected uint8 [H, W, 3, 24, 4] renderings)")
    images = np.asarray(contents["im"])
    if images.ndim != 5 or images.shape[2:] != (3, VIEWS, ELEVATIONS) or images.shape[0] != images.shape[1]:
        raise DataError(f"Cars file {path}: 'im' has shape {images.shape}, expected [H, W, 3, 24, 4] with H = W")
    if images.dtype != np.uint8:
        raise DataError(f"Cars file {path}: 'im' is {images.dtype}, expected uint8")
    tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 4, 2, 0, 1)))  # [24, 4, 3, H, W]
    if tensor.shape[-1] == size:
        return tensor
    flat = tensor.reshape(VIEWS * ELEVATIONS, 3, *tensor.shape[-2:]).float()
    resized = interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).reshape(VIEWS, ELEVATIONS, 3, size, size)


class CarPairs(Dataset):
    """Pairs (view 0, view v) at the same elevation of every car, float32 ``[3, S, S]`` in [-1, 1].

    Every view of ``views`` gives a pair, or, with ``one_view_seed``, one view per car and elevation drawn by
    that seed: test pairs then have distinct X images, so retrieving the partner is well defined.
    """

    def __init__(self, cars: dict[int, torch.Tensor], views: Sequence[int], source: str = "",
                 one_view_seed: int | None = None) -> None:  # fmt: skip
        self.cars, self.views, self.source = cars, list(views), source
        places = [(car, elevation) for car in sorted(cars) for elevation in range(ELEVATIONS)]
        if one_view_seed is None:
            self.index = [(car, elevation, view) for car, elevation in places for view in self.views]
        else:
            drawn = np.random.default_rng(one_view_seed).choice(self.views, size=len(places))
            self.index = [(car, elevation, int(view)) for (car, elevation), view in zip(places, drawn)]
        self.x, self.y = DomainView(self, 0), DomainView(self, 1)

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int, domain: int) -> torch.Tensor:
        car, elevation, view = self.index[index]
        return self.cars[car][0 if domain == 0 else view, elevation].float().div(127.5).sub(1.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load(index, 0), self.load(index, 1)

    def item_shape(self, domain: int) -> tuple[int, int, int]:
        """``(3, S, S)``: every rendering is RGB at the loaded size."""
        return tuple(next(iter(self.cars.values())).shape[-3:])


def load_cars(root: str | Path, numbers: Sequence[int], size: int, views: Sequence[int],
              one_view_seed: int | None = None) -> CarPairs:  # fmt: skip
    """The pairs of the cars ``numbers`` found in ``root`` (at least one must be there)."""
    files = car_files(root)
    chosen = [n for n in numbers if n in files]
    if not chosen:
        raise DataError(f"Cars folder {root} holds none of cars {min(numbers)}-{max(numbers)} (car_XXX_mesh.mat)")
    cars = {number: read_car(files[number], size) for number in chosen}
    source = f"Cars folder {root} (cars {chosen[0]}-{chosen[-1]}, {len(chosen)} files)"
    return CarPairs(cars, views, source, one_view_seed)
