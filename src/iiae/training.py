"""Training with PyTorch Lightning: the LightningModule around :class:`iiae.IIAE` and the MNIST-CDCB data module.

The maths lives in :mod:`iiae.objective` and the networks in :mod:`iiae.networks`; this module only wires them to
Lightning's loop, optimiser, logging and checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from iiae.config import DataConfig, ExperimentConfig, config_from_dict
from iiae.data import PairedImages, load_digits, make_cdcb
from iiae.model import IIAE
from iiae.objective import iiae_loss


class PairDataset(Dataset):
    """(x, y) pairs held as two tensors in memory."""

    def __init__(self, pairs: PairedImages) -> None:
        self.x, self.y = pairs.x, pairs.y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


@dataclass
class PairedSplits:
    """Train and test pairs of one dataset, with a description of where they came from."""

    train: PairedImages
    test: PairedImages
    source: str


def build_cdcb_splits(data: DataConfig, image_size: int) -> PairedSplits:
    """MNIST-CDCB (or Fashion-MNIST-CDCB) train and test pairs; train and test colours use different seeds."""
    dataset = "fashion_mnist" if data.dataset == "fashion_mnist_cdcb" else "mnist"
    digits = load_digits(data.source, data.root, dataset=dataset, split_seed=data.split_seed)
    return PairedSplits(
        train=make_cdcb(digits.train_images, digits.train_labels, size=image_size, seed=2 * data.colour_seed),
        test=make_cdcb(digits.test_images, digits.test_labels, size=image_size, seed=2 * data.colour_seed + 1),
        source=digits.source,
    )


class PairedDataModule(L.LightningDataModule):
    """Shuffled training batches of paired images (the last incomplete batch is dropped)."""

    def __init__(self, splits: PairedSplits, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.splits, self.batch_size, self.num_workers, self.seed = splits, batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            PairDataset(self.splits.train),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.splits.train) >= self.batch_size,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )


class IIAELightning(L.LightningModule):
    """Optimises the IIAE loss; logs every term of it under ``train/<term>``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config: ExperimentConfig = config_from_dict(config)
        self.model = IIAE(self.config.model)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        x, y = batch
        output = self.model(x, y, sample=True)
        terms = iiae_loss(
            x,
            y,
            output.reconstruction_x,
            output.reconstruction_y,
            output.posteriors,
            self.config.loss,
            step=self.global_step,
        )
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()}, prog_bar=False)
        self.log("loss", terms["loss"].detach(), prog_bar=True, logger=False)
        return terms["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        train = self.config.train
        return torch.optim.Adam(
            self.model.parameters(), lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2)
        )
