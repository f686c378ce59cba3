"""Training with PyTorch Lightning: the LightningModule around :class:`iiae.IIAE` and the paired-data module.

The maths lives in :mod:`iiae.core.objective` and the networks in :mod:`iiae.core.networks`; this module only wires them to
Lightning's loop, optimiser, logging and checkpoints.
"""

from __future__ import annotations

import os

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from iiae.core.config import ExperimentConfig, TrainConfig, config_from_dict
from iiae.core.model import IIAE
from iiae.core.objective import iiae_loss
from iiae.data.cdcb import RecolouredCDCB
from iiae.data.splits import PairDataset, PairedSplits, whole_batch
from iiae.engine.resume import (
    ResumableDataLoader,
    collect_rng_states,
    restore_rng_states,
)
from iiae.errors import ConfigError


class PairedDataModule(L.LightningDataModule):
    """Shuffled training batches of paired images (the last incomplete batch is dropped).

    ``batch_size`` is the global batch; under DDP each process loads its block of batch_size / processes pairs.
    """

    def __init__(self, splits: PairedSplits, batch_size: int, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.splits, self.batch_size, self.seed = splits, batch_size, seed
        # more loader processes than CPUs only slow decoding down (PyTorch warns about it): the CPUs this process
        # may use bound them; the batches do not depend on the count
        self.num_workers = min(num_workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        train = self.splits.train  # lazy image datasets are Datasets already; in-memory pairs get wrapped
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if world > 1 and len(train) < self.batch_size:  # every process would get an empty epoch
            raise ConfigError(f"{len(train)} training pairs are fewer than the global batch ({self.batch_size})")
        if isinstance(train, Dataset):
            dataset, extra = train, {}
        else:  # in memory: whole batches, one index per tensor
            recolour = self.splits.recolour_seed  # not None: new colours every epoch, from (seed, epoch)
            dataset = PairDataset(train) if recolour is None else RecolouredCDCB(train, recolour,
                                                                                 augment=self.splits.augment)
            extra = {"collate_fn": whole_batch}
        return ResumableDataLoader(  # order = f(seed, epoch); Lightning saves the position for --resume
            dataset,
            batch_size=self.batch_size // world,
            seed=self.seed,
            rank=rank,
            world=world,
            drop_last=len(self.splits.train) >= self.batch_size,
            **extra,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


class IIAELightning(L.LightningModule):
    """Optimises the IIAE loss; logs every term of it under ``train/<term>``. The one LightningModule of the
    package: image runs and zero-shot SBIR runs (``model.architecture: mlp``) train through it."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config: ExperimentConfig = config_from_dict(config)
        self.model = IIAE(self.config.model)
        self.rng_at_build = collect_rng_states()  # see on_train_start

    def on_train_start(self) -> None:
        """Put the random generators back as they were once the model was built: Lightning's DDP re-seeds them
        meanwhile, a single process does not; the first step then draws the same noise with any number of
        processes. (A resumed run restores its checkpoint's generators afterwards; iiae.engine.checkpointing.)"""
        restore_rng_states(self.rng_at_build)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        x, y = batch
        if self.config.train.channels_last:  # NHWC convolutions (apply_speed_switches converted the weights)
            x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
        world = self._trainer.world_size if self._trainer is not None else 1
        output = self.model(x, y, sample=True, shard=(self.global_rank, world))  # DDP: this process's noise rows
        target_x, target_y = self.model.standardise(x, y)  # feature vectors: the model's input space; images: x, y
        terms = iiae_loss(
            target_x,
            target_y,
            output.reconstruction_x,
            output.reconstruction_y,
            output.posteriors,
            self.config.loss,
            step=self.global_step,
        )
        self.last_terms = {name: value.detach() for name, value in terms.items()}  # read by guards.NonFiniteGuard
        synced = world > 1  # the mean over processes is the global batch's mean (equal blocks)
        logged = {f"train/{name}": value for name, value in self.last_terms.items()}
        self.log_dict(logged, prog_bar=False, sync_dist=synced)
        self.log("loss", terms["loss"].detach(), prog_bar=True, logger=False, sync_dist=synced)
        return terms["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model, self.config.train)


#: Devices whose Adam has a fused kernel (one pass over all parameters instead of a dozen small ops each).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Adam:
    """Adam with the config's learning rate and betas; the fused implementation when every parameter is a
    floating-point tensor on a device that has it (the same update up to rounding; up to 5 % of a CPU step saved)."""
    parameters = list(model.parameters())
    fused = all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in parameters)
    betas = (train.adam_beta1, train.adam_beta2)
    return torch.optim.Adam(parameters, lr=train.learning_rate, betas=betas, fused=fused or None)


def apply_speed_switches(model: IIAE, train: TrainConfig) -> None:
    """``train.channels_last`` (NHWC weights; training_step converts the inputs) and ``train.compile``, in place
    (the state dict keeps its names and shapes)."""
    if train.channels_last:
        model.to(memory_format=torch.channels_last)
    if train.compile:
        model.compile()
