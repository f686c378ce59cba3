"""Class-level pairing of sketches and photos (the paper's zero-shot training).

Sketchy pairs are instance-level only for a few photos, so the paper pairs at the class level: every batch holds
one (sketch, photo) pair per seen class, the sketch and the photo drawn independently and uniformly among that
class's sketches and photos. With 100 seen classes a batch is 100 pairs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset


class ClassPairSampler:
    """Index pairs (sketch row, photo row): one pair per class per batch, independent uniform draws."""

    def __init__(self, sketch_classes: np.ndarray, photo_classes: np.ndarray, seed: int = 0) -> None:
        sketch_classes, photo_classes = np.asarray(sketch_classes), np.asarray(photo_classes)
        self.classes = sorted(set(sketch_classes.tolist()))
        if set(photo_classes.tolist()) != set(self.classes):
            raise ValueError("sketches and photos must cover the same classes for class-level pairing")
        self.sketch_rows = [np.flatnonzero(sketch_classes == name) for name in self.classes]
        self.photo_rows = [np.flatnonzero(photo_classes == name) for name in self.classes]
        self.rng = np.random.default_rng(seed)

    @property
    def batch_size(self) -> int:
        return len(self.classes)

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Sketch rows and photo rows of one batch; position c holds class ``self.classes[c]``."""
        sketches = np.fromiter((rows[self.rng.integers(len(rows))] for rows in self.sketch_rows), dtype=np.int64)
        photos = np.fromiter((rows[self.rng.integers(len(rows))] for rows in self.photo_rows), dtype=np.int64)
        return sketches, photos


class ClassPairBatches(IterableDataset):
    """``batches_per_epoch`` class-level batches of (sketch features, photo features) per pass (use batch_size=None).

    The generator lives across passes, so every epoch draws new pairs; the whole run is fixed by ``seed``.
    """

    def __init__(self, sketch_features: np.ndarray, sketch_classes: np.ndarray, photo_features: np.ndarray,
                 photo_classes: np.ndarray, batches_per_epoch: int, seed: int = 0) -> None:
        self.sketch = torch.as_tensor(sketch_features, dtype=torch.float32)
        self.photo = torch.as_tensor(photo_features, dtype=torch.float32)
        self.sampler = ClassPairSampler(sketch_classes, photo_classes, seed)
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            sketches, photos = self.sampler.batch()
            yield self.sketch[sketches], self.photo[photos]
