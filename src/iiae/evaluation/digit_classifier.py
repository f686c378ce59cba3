"""A small digit classifier that judges translations: does the digit survive X→Y and Y→X?

It reads neither domain directly. Every image, of either domain, real or generated, is first turned into its
*digit map*: the distance of each pixel's colour from the image's background colour, scaled so the digit's
strokes are 1. For MNIST-CDCB this recovers the digit intensity ``m`` (up to one scale per image, the same
for both domains), whatever the colours::

    X = b(1 - m) + m·white   ->  |X - b| = m·|white - b|         Y = c·m   ->  |Y - black| = m·|c|

(the background colour is read from the border ring of the image, which holds no digit; the median distance,
a background pixel's since a digit covers less than half the image, is subtracted so that a generated image
whose background drifts away from its border colour still gives a clean map). One classifier thus scores
real test images and translated outputs of both domains. It is trained on the digit maps of the *training*
pairs only (a few seconds: 12 epochs of a three-layer CNN), with a fixed seed, and cached on disk under a key
that hashes those images, their labels and every training setting, so it is trained once per dataset.

Cache folder: ``cache_dir`` argument, else ``$IIAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iiae``, else
``~/.cache/iiae``. Files are ``digit-classifier-<key>.safetensors``; nothing is unpickled. A cache file is checked
before its weights are used (its safetensors header against the file, the network's tensor names and shapes, finite
values: :func:`iiae.readers.load_safetensors`); one that fails is retrained with one notice
(:func:`iiae.cache.damaged`), one of other training data (another key) is simply retrained.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.nn.functional import cross_entropy, interpolate

from iiae.atomic import atomic_write_bytes
from iiae.cache import CacheDamaged, cache_root, damaged
from iiae.readers import load_safetensors, safetensors_header

MAP_SIDE = 32  # digit maps are resized to this side before classification
CLASS_COUNT = 10
STROKE_QUANTILE = 0.99  # this quantile of the distances is the stroke level (robust to stray pixels)
MIN_CONTRAST = 0.05  # least stroke-to-background contrast, so a flat image is not amplified into noise
ARCHITECTURE_VERSION = 2  # bump when the network or the digit map changes: old cache files are then ignored


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, restoring the thread count afterwards.

    The measures are many small operations (a tiny CNN, small L-BFGS fits): on one thread they pay no
    thread start-up cost, do not fight other processes for cores, and give the same numbers on every machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- digit maps
def border_ring(side: int) -> torch.Tensor:
    """Boolean [side, side] mask of the outer ring (side // 16 pixels, at least 1) read as the background."""
    width = max(1, side // 16)
    mask = torch.ones(side, side, dtype=torch.bool)
    mask[width:-width, width:-width] = False
    return mask


@torch.no_grad()
def digit_map(images: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """Digit maps [N, 1, 32, 32] in [0, 1] of images [N, C, S, S] in [-1, 1] of either domain.

    Background colour = per-channel median of the border ring; d = L2 colour distance of each pixel from it;
    map = (d − median d) / (99th percentile of d − median d), the divisor at least ``MIN_CONTRAST``, clipped
    to [0, 1]. Computed ``chunk_size`` images at a time (``torch.quantile`` refuses very large inputs).
    """
    if len(images) > chunk_size:
        return torch.cat([digit_map(images[start : start + chunk_size]) for start in range(0, len(images), chunk_size)])
    unit = (images.float().clamp(-1, 1) + 1) / 2
    ring = border_ring(unit.shape[-1])
    background = unit[:, :, ring].median(dim=2).values  # [N, C]
    distance = (unit - background[:, :, None, None]).square().sum(dim=1, keepdim=True).sqrt()
    background_level = distance.flatten(1).median(dim=1).values
    stroke_level = torch.quantile(distance.flatten(1), STROKE_QUANTILE, dim=1)
    contrast = (stroke_level - background_level).clamp(min=MIN_CONTRAST)
    maps = ((distance - background_level[:, None, None, None]) / contrast[:, None, None, None]).clamp(0, 1)
    if maps.shape[-1] != MAP_SIDE:
        maps = interpolate(maps, size=(MAP_SIDE, MAP_SIDE), mode="bilinear", antialias=True, align_corners=False)
    return maps


# ------------------------------------------------------------------------------------------------ the network
def build_network() -> nn.Sequential:
    """Three stride-2 conv + ReLU layers (32 -> 16 -> 8 -> 4; 16, 32, 64 channels), then a linear layer to 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * (MAP_SIDE // 8) ** 2, CLASS_COUNT),
    )  # fmt: skip


@dataclass(frozen=True)
class ClassifierSettings:
    """How the classifier is trained; every field enters the cache key."""

    epochs: int = 12  # passes over the training maps
    batch_size: int = 128
    max_shift: int = 2  # each batch is shifted by up to this many pixels (augmentation; 0 disables)
    learning_rate: float = 2e-3  # Adam
    weight_decay: float = 1e-4
    seed: int = 0  # initialisation and shuffling


def default_cache_dir() -> Path:
    """``$IIAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iiae``, else ``~/.cache/iiae`` (:func:`iiae.cache.cache_root`)."""
    return cache_root()


def cache_key(images: torch.Tensor, labels: torch.Tensor, settings: ClassifierSettings) -> str:
    """SHA-256 (hex) of the training images (as 8-bit levels, so float rounding cannot change the key), their
    labels, the settings and the architecture version (which covers the digit map)."""
    digest = hashlib.sha256()
    header = {"architecture": ARCHITECTURE_VERSION, "settings": asdict(settings), "shape": list(images.shape)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    levels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    digest.update(levels.contiguous().numpy().tobytes())
    digest.update(labels.detach().to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


class DigitClassifier:
    """A trained digit-map classifier; :meth:`predict` takes images of either domain in [-1, 1]."""

    def __init__(self, network: nn.Module, key: str, from_cache: bool, path: Path | None) -> None:
        self.network = network.eval()
        self.key = key  # cache key: identifies the training data and settings
        self.from_cache = from_cache  # True when the weights were loaded rather than trained
        self.path = path  # the cache file (None when it could not be written)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Predicted class (int64 [N]) of each image."""
        predictions = [
            self.network(digit_map(images[start : start + batch_size])).argmax(dim=1)
            for start in range(0, len(images), batch_size)
        ]
        return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Percentage of images whose predicted class is their label."""
        return 100.0 * (self.predict(images) == labels).double().mean().item()


def train_network(maps: torch.Tensor, labels: torch.Tensor, settings: ClassifierSettings) -> nn.Module:
    """Train :func:`build_network` on digit maps, deterministically (seeded; the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]), single_thread():  # fastest for a network this small, same everywhere
        torch.manual_seed(settings.seed)
        network = build_network()
        generator = torch.Generator().manual_seed(settings.seed)
        optimiser = torch.optim.Adam(
            network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        network.train()
        for _ in range(settings.epochs):
            order = torch.randperm(len(maps), generator=generator)
            for start in range(0, len(maps), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                shift = torch.randint(-settings.max_shift, settings.max_shift + 1, (2,), generator=generator)
                inputs = torch.roll(maps[batch], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
                loss = cross_entropy(network(inputs), labels[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
    return network.eval()


def _load_cached(path: Path, key: str) -> nn.Module | None:
    """The cached network at ``path`` if it was trained under ``key`` and passes every check; None otherwise:
    absent or another key (a miss), or damaged (its header does not fit the file, other tensor names or shapes
    than the network's, NaN or infinite weights: one notice, :func:`iiae.cache.damaged`)."""
    if not path.exists() and not path.is_symlink():
        return None
    network = build_network()
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    try:
        header = safetensors_header(path, "cache file", CacheDamaged)  # the file fits its header: metadata next
        with safe_open(str(path), framework="pt") as opened:
            if (opened.metadata() or {}).get("key") != key:
                return None
        stored = sorted({dtype for dtype, _ in header.values()})
        if stored != ["F32"]:
            raise CacheDamaged(f"its tensors are {stored}, expected F32")
        network.load_state_dict(load_safetensors(path, expected, "cache file", CacheDamaged))
    except (CacheDamaged, SafetensorError, OSError, RuntimeError, ValueError) as failure:  # CacheDamaged: checks
        damaged(path, failure)
        return None
    return network


def _save_cached(network: nn.Module, path: Path, key: str) -> bool:
    """Write the weights atomically (:mod:`iiae.atomic`); False, with a warning, when impossible."""
    state = {name: tensor.detach().contiguous() for name, tensor in network.state_dict().items()}
    data = save_safetensors(state, metadata={"key": key, "architecture": str(ARCHITECTURE_VERSION)})
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        warnings.warn(f"could not cache the digit classifier in {path.parent} ({error.strerror})", stacklevel=2)
        return False
    return True


def load_or_train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    cache_dir: str | Path | None = None,
    settings: ClassifierSettings | None = None,
) -> DigitClassifier:
    """The classifier of training ``images`` (either domain) and ``labels``: loaded from the cache, or trained.

    The main job passes the training X images: the digit maps of the Y images are the same maps (to float
    rounding, a test checks it), so one copy serves both domains.
    """
    settings = settings or ClassifierSettings()
    if len(images) != len(labels):
        raise ValueError(f"images and labels must have one length, got {len(images)} and {len(labels)}")
    key = cache_key(images, labels, settings)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"digit-classifier-{key[:24]}.safetensors"
    network = _load_cached(path, key)
    if network is not None:
        return DigitClassifier(network, key, from_cache=True, path=path)
    network = train_network(digit_map(images), labels.long(), settings)
    saved = _save_cached(network, path, key)
    return DigitClassifier(network, key, from_cache=False, path=path if saved else None)
