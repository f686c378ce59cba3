"""Class-level pairing of sketches and photos (the paper's zero-shot training).

Sketchy pairs are instance-level only for a few photos, so the paper pairs at the class level: every batch holds
one (sketch, photo) pair per seen class, the sketch and the photo drawn independently and uniformly among that
class's sketches and photos. With 100 seen classes a batch is 100 pairs.

Batch ``index`` of ``epoch`` is a pure function of (seed, epoch, index): the engine's resumable loader
(:class:`iiae.engine.resume.ResumableDataLoader`) can then stop anywhere and continue with the very batches an
uninterrupted run draws.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from iiae.engine.resume import ResumableDataLoader


class ClassPairSampler:
    """Index pairs (sketch row, photo row): one pair per class per batch, independent uniform draws."""

    def __init__(self, sketch_classes: np.ndarray, photo_classes: np.ndarray, seed: int = 0) -> None:
        sketch_classes, photo_classes = np.asarray(sketch_classes), np.asarray(photo_classes)
        self.classes = sorted(set(sketch_classes.tolist()))
        if set(photo_classes.tolist()) != set(self.classes):
            raise ValueError("sketches and photos must cover the same classes for class-level pairing")
        self.sketch_rows = [np.flatnonzero(sketch_classes == name) for name in self.classes]
        self.photo_rows = [np.flatnonzero(photo_classes == name) for name in self.classes]
        self.seed = seed

    @property
    def batch_size(self) -> int:
        return len(self.classes)

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sketch rows and photo rows of batch ``index`` of ``epoch``; position c holds class ``self.classes[c]``."""
        rng = np.random.default_rng([self.seed, epoch, index])
        sketches = np.fromiter((rows[rng.integers(len(rows))] for rows in self.sketch_rows), dtype=np.int64)
        photos = np.fromiter((rows[rng.integers(len(rows))] for rows in self.photo_rows), dtype=np.int64)
        return sketches, photos


class ClassPairBatches(Dataset):
    """``batches_per_epoch`` class-level batches of (sketch features, photo features); item ``(epoch, index)`` is
    one whole batch (every epoch draws new pairs; the whole run is fixed by ``seed``)."""

    indexed_by_epoch = True  # read by ResumableDataLoader: items are keyed (epoch, index)

    def __init__(self, sketch_features: np.ndarray, sketch_classes: np.ndarray, photo_features: np.ndarray,
                 photo_classes: np.ndarray, batches_per_epoch: int, seed: int = 0) -> None:  # fmt: skip
        self.sketch = torch.as_tensor(sketch_features, dtype=torch.float32)
        self.photo = torch.as_tensor(photo_features, dtype=torch.float32)
        self.sampler = ClassPairSampler(sketch_classes, photo_classes, seed)
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        sketches, photos = self.sampler.batch(*key)
        return self.sketch[sketches], self.photo[photos]

    def epoch(self, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` in index order (the loader visits them in a seeded order)."""
        return [self[epoch, index] for index in range(len(self))]


def single_item(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate of a loader over whole batches (batch_size 1): the batch itself."""
    return items[0]


class ClassPairDataModule(L.LightningDataModule):
    """The training batches of a zero-shot run: class-level batches, in a resumable order (one process)."""

    def __init__(self, batches: ClassPairBatches, seed: int) -> None:
        super().__init__()
        self.batches, self.seed = batches, seed

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.batches, batch_size=1, seed=self.seed, collate_fn=single_item)
