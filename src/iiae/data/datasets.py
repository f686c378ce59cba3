"""Dataset registry: ``data.dataset`` of a config -> the function that builds its train / test pairs.

Every builder takes the data and model sections of a config and returns :class:`iiae.data.splits.PairedSplits`
whose ``train`` and ``test`` hold ``x`` and ``y`` (tensors, or sliceable lazy views for image folders), so the
training, the retrieval evaluation and the figures treat every dataset the same way::

    from iiae.data.datasets import build_splits
    splits = build_splits(config)          # picks DATASETS[config.data.dataset]

Validation pairs are always disjoint from the training pairs: a ``validation_split`` folder (Facades: val/),
or else ``validation_fraction`` of the training pairs held out by ``split_seed`` (Maps, whose official run
validated on copies of training images; Cars hold out whole cars), in ``splits.validation``.

Evaluating a trained model needs only test pairs: ``build_splits(config, for_training=False)`` reads an image
folder that holds its ``test_split`` folder alone, or the test images directly (AB files, or X/ and Y/), and
reads no training images (their ``train`` is empty).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from iiae.core.config import DataConfig, ExperimentConfig, ModelConfig
from iiae.data.cars import TEST_CARS, TRAIN_CARS, car_files, load_cars
from iiae.data.download import ensure_pix2pix_dataset
from iiae.data.paired_images import PairedImageFolder, scan_split, sorted_images
from iiae.data.splits import PairedImages, PairedSplits, build_cdcb_splits, held_out_indices
from iiae.errors import ConfigError, DataError

Builder = Callable[[DataConfig, ModelConfig], PairedSplits]
TestBuilder = Callable[[DataConfig, ModelConfig], PairedSplits]  # the test pairs only (train empty)


def _root(data: DataConfig) -> Path:
    if data.root is None:
        raise ConfigError(f"data.dataset {data.dataset!r} needs data.root (--data-root DIR): the folder of its files")
    return Path(data.root)


def build_image_splits(data: DataConfig, model: ModelConfig) -> PairedSplits:
    """Pairs of an AB or two-folder image set (``paired_images``, ``facades``, ``maps``)."""
    root = _root(data)
    for name in ("test_split", "validation_split"):
        if getattr(data, name) == data.train_split:
            raise ConfigError(f"data.{name} = data.train_split = {data.train_split!r}: it must be disjoint from training")
    if data.source == "download":
        if data.dataset not in ("facades", "maps"):
            raise ConfigError(f"data.source 'download' works for facades and maps, not {data.dataset!r}")
        ensure_pix2pix_dataset(data.dataset, root)

    def scan(split: str):
        return scan_split(root, split, data.layout, model.image_size, model.x_channels, model.y_channels,
                          data.swap, data.skip_bad)  # fmt: skip

    if not (root / data.train_split).is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        where = f"{root} holds: {', '.join(present)}" if present else f"{root} does not exist or holds no folders"
        raise DataError(f"training needs the split folder {root / data.train_split}, which does not exist ({where}); "
                        "iiae evaluate reads a folder of test pairs alone")  # fmt: skip
    train, test = scan(data.train_split), scan(data.test_split)
    if data.validation_split is not None:
        validation = scan(data.validation_split)
    else:
        kept, held = held_out_indices(len(train), data.validation_fraction, data.split_seed)
        if not kept:
            raise ConfigError(f"data.validation_fraction = {data.validation_fraction} leaves no training pairs")
        validation = train.subset(held) if held else None
        train = train.subset(kept) if held else train
    splits = f"train {data.train_split}/, test {data.test_split}/"
    source = f"{data.dataset} images in {root} ({data.layout} layout; {splits})"
    return PairedSplits(train=train, test=test, source=source, validation=validation)


def _holds_test_pairs_directly(root: Path, layout: str) -> bool:
    """True if ``root`` itself holds pairs: AB image files, or X/ and Y/ folders (``layout`` folders)."""
    if layout == "folders":
        return (root / "X").is_dir() and (root / "Y").is_dir()
    return bool(sorted_images(root))


def build_image_test_split(data: DataConfig, model: ModelConfig) -> PairedSplits:
    """The test pairs of an image set, without its training pairs: ``root/<test_split>``, else the pairs directly
    inside ``root`` (a folder of test pairs alone); ``train`` is empty."""
    root = _root(data)
    if data.source == "download" and data.dataset in ("facades", "maps"):
        ensure_pix2pix_dataset(data.dataset, root)
    size, channels = model.image_size, (model.x_channels, model.y_channels)
    if not (root / data.test_split).is_dir() and root.is_dir() and _holds_test_pairs_directly(root, data.layout):
        test = scan_split(root.parent, root.name, data.layout, size, *channels, data.swap, data.skip_bad)
        where = f"{root}"
    else:
        test = scan_split(root, data.test_split, data.layout, size, *channels, data.swap, data.skip_bad)
        where = f"{root / data.test_split}"
    empty = PairedImageFolder([], size, *channels, source="no training pairs read (evaluation)")
    source = f"{data.dataset} test images in {where} ({data.layout} layout)"
    return PairedSplits(train=empty, test=test, source=source)


def build_cars_splits(data: DataConfig, model: ModelConfig) -> PairedSplits:
    """Cars 1-191 (less the held-out validation cars) for training, 192-199 for testing."""
    root = _root(data)
    files = car_files(root)
    present = [n for n in TRAIN_CARS if n in files]
    if not present:
        raise DataError(f"Cars folder {root} holds none of the training cars 1-191 (car_001_mesh.mat ...)")
    kept, held = held_out_indices(len(present), data.validation_fraction, data.split_seed)
    if not kept:
        raise ConfigError(f"data.validation_fraction = {data.validation_fraction} leaves no training cars in {root}")
    train = load_cars(root, [present[i] for i in kept], model.image_size, data.cars_y_views)
    views, seed = data.cars_y_views, data.split_seed
    validation = load_cars(root, [present[i] for i in held], model.image_size, views, seed) if held else None
    test = load_cars(root, list(TEST_CARS), model.image_size, views, seed)
    return PairedSplits(train=train, test=test, source=f"{train.source}; test: {test.source}", validation=validation)


def _cdcb(data: DataConfig, model: ModelConfig) -> PairedSplits:
    return build_cdcb_splits(data, model.image_size)


#: ``data.dataset`` -> builder of its splits.
DATASETS: dict[str, Builder] = {
    "mnist_cdcb": _cdcb,
    "fashion_mnist_cdcb": _cdcb,
    "paired_images": build_image_splits,
    "facades": build_image_splits,
    "maps": build_image_splits,
    "cars": build_cars_splits,
}


#: ``data.dataset`` -> builder of its test pairs alone, where reading them alone saves reading the training pairs.
TEST_ONLY: dict[str, TestBuilder] = {
    "paired_images": build_image_test_split,
    "facades": build_image_test_split,
    "maps": build_image_test_split,
}


def build_splits(config: ExperimentConfig, *, for_training: bool = True) -> PairedSplits:
    """Train and test pairs of ``config.data.dataset`` at the model's image size and channels; DataError when a
    split a run needs is empty (found before any training, not after it).

    ``for_training=False`` (evaluation): image sets read their test pairs alone (:func:`build_image_test_split`:
    no training split needed); the in-memory data sets are built whole (MNIST-CDCB's measures train a digit
    classifier on its training pairs).
    """
    if not for_training and config.data.dataset in TEST_ONLY:
        splits = TEST_ONLY[config.data.dataset](config.data, config.model)
        if len(splits.test) == 0:
            raise DataError(f"the test split of {splits.source} holds no pairs")
        return splits
    splits = DATASETS[config.data.dataset](config.data, config.model)
    for name, pairs in (("training", splits.train), ("test", splits.test)):
        if len(pairs) == 0:
            raise DataError(f"the {name} split of {splits.source} holds no pairs: a run needs training and test pairs")
    if for_training:  # evaluation checks the data against the loaded model instead (iiae.cli.main)
        check_channels(splits.test, config.model.x_channels, config.model.y_channels, "the config's model",
                       "set model.x_channels / model.y_channels to the data's or leave them out")  # fmt: skip
    return splits


def check_channels(test: PairedImages, x_channels: int, y_channels: int, expected_by: str, hint: str) -> None:
    """DataError when the images of ``test`` do not have ``x_channels`` / ``y_channels`` channels (``expected_by``:
    what asks for them, ``hint``: what to do), found before any training or evaluation (a mismatch failed inside
    the first convolution). Folder pairs read lazily are checked when they are read."""
    for domain, images, channels in (("X", test.x, x_channels), ("Y", test.y, y_channels)):
        if isinstance(images, torch.Tensor) and (images.ndim != 4 or images.shape[1] != channels):
            raise DataError(f"the test images of domain {domain} have shape {tuple(images.shape[1:])}, but "
                            f"{expected_by} expects {channels} channels: {hint}")
