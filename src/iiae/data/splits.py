"""The pairs a run trains, validates and tests on: in-memory pair datasets and the train / validation / test split.

:func:`iiae.data.datasets.build_splits` picks the builder of ``data.dataset``; MNIST-CDCB's is here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from iiae.core.config import DataConfig
from iiae.data.cdcb import PairedImages, make_cdcb
from iiae.data.mnist import load_digits
from iiae.errors import ConfigError


class PairDataset(Dataset):
    """(x, y) pairs held as two tensors in memory."""

    def __init__(self, pairs: PairedImages) -> None:
        self.x, self.y = pairs.x, pairs.y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch by one index per tensor (the DataLoader's batched fetch; see :func:`whole_batch`)."""
        index = torch.as_tensor(indices)
        return self.x[index], self.y[index]


def whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate of :class:`PairDataset`: ``__getitems__`` already built the batch (no per-pair stacking)."""
    return batch


@dataclass
class PairedSplits:
    """Train, test and (optional) validation pairs of one dataset, with a description of where they came from.

    ``validation`` pairs are never training pairs (they are held out of them, or a separate folder); model
    selection (:mod:`iiae.engine.selection`) measures on them so that the test pairs stay untouched until the end.
    """

    train: PairedImages
    test: PairedImages
    source: str
    validation: PairedImages | None = None
    recolour_seed: int | None = None  # MNIST-CDCB with data.recolour_every_epoch: training draws RecolouredCDCB
    augment: bool = False  # MNIST-CDCB with data.augment: RecolouredCDCB augments every epoch (colours, strokes)


def held_out_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) sorted indices of ``count`` items: ``round(fraction * count)`` held out, chosen by the
    permutation ``numpy.random.default_rng(seed)`` draws (the same rule as the image datasets of iiae.data.datasets)."""
    held = int(round(fraction * count)) if count > 1 else 0
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


def cdcb_seeds(data: DataConfig) -> tuple[int, int]:
    """Seeds of the random draws (:func:`iiae.data.cdcb.draw_cdcb`) of the training and of the test pairs."""
    return 2 * data.colour_seed, 2 * data.colour_seed + 1


def build_cdcb_splits(data: DataConfig, image_size: int) -> PairedSplits:
    """MNIST-CDCB (or Fashion-MNIST-CDCB) train, validation and test pairs, made by ``data.generator``.

    Train and test colours use different seeds; ``data.validation_fraction`` of the training pairs (by
    ``data.split_seed``) are held out as validation pairs, disjoint from the pairs trained on. The test pairs do
    not depend on the validation split.
    """
    dataset = "fashion_mnist" if data.dataset == "fashion_mnist_cdcb" else "mnist"
    digits = load_digits(data.source, data.root, dataset=dataset, split_seed=data.split_seed)
    train_seed, test_seed = cdcb_seeds(data)
    train = make_cdcb(digits.train_images, digits.train_labels, size=image_size, seed=train_seed,
                      keep_intensity=data.recolour_every_epoch or data.augment, generator=data.generator)  # fmt: skip
    kept, held = held_out_indices(len(train), data.validation_fraction, data.split_seed)
    if not kept:
        raise ConfigError(f"data.validation_fraction = {data.validation_fraction} leaves no training pairs")
    return PairedSplits(
        train=train.subset(kept) if held else train,
        test=make_cdcb(
            digits.test_images, digits.test_labels, size=image_size, seed=test_seed, generator=data.generator
        ),
        source=digits.source,
        validation=train.subset(held) if held else None,
        recolour_seed=train_seed if data.recolour_every_epoch or data.augment else None,
        augment=data.augment,
    )
