"""What a run needs to continue exactly where it stopped: `iiae train --resume RUN_DIR` (or ``auto``).

Lightning's ``trainer.fit(ckpt_path=...)`` restores the weights, the optimiser, the global step (the KL annealing
reads it) and the loops' epoch and position. This module adds the rest, so that a run killed at step k and
resumed ends bit-identical (on CPU) to a run that never stopped:

- the order of the training pairs is a pure function of (seed, epoch) (:class:`EpochShuffleSampler`), and the
  data loader is *stateful* (:class:`ResumableDataLoader`): Lightning saves how many batches of the epoch were
  consumed and the resumed loader skips them;
- the random generators (python, numpy, torch, CUDA) are saved with every checkpoint and restored right before
  the first resumed step (see :class:`iiae.engine.checkpointing.RunCheckpoint`);
- ``logs/metrics.csv`` keeps the rows written before the checkpoint (it records how many) and drops the rows
  logged after it (the resumed run logs them again, with the same values);
- the config of the resumed run must equal the run's ``config.yaml`` except for keys that do not change what is
  computed (:data:`iiae.runs.run_folder.RESUMABLE_CHANGES`).
"""

from __future__ import annotations

import csv
import io
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from iiae.atomic import atomic_write_text
from iiae.engine.checkpoint_files import LOG_ROWS_KEY
from iiae.errors import CheckpointError
from iiae.run_files import METRICS_LOG


# ----------------------------------------------------------------------------------------------- data order
class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(size)`` that depends only on (seed, epoch); Lightning sets the epoch.

    Several processes (DDP): every process draws the same permutation and cuts it into global batches of
    ``world x batch_size`` pairs; process ``rank`` takes the ``rank``-th block of ``batch_size`` pairs of each,
    and the incomplete global batch at the end is dropped. Global batch k is then pairs ``order[k B:(k + 1) B]``
    whatever the number of processes, the pairs one process of a ``world = 1`` run with ``batch_size = B`` sees.
    ``start`` skips the first indices (of this process) of the next iteration (set by :class:`ResumableDataLoader`
    on resume). ``with_epoch`` yields ``(epoch, index)`` keys instead of indices, for a dataset whose items
    depend on the epoch (:class:`iiae.data.RecolouredCDCB`).
    """

    def __init__(
        self, size: int, seed: int, rank: int = 0, world: int = 1, batch_size: int = 1, with_epoch: bool = False
    ) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0
        self.rank, self.world, self.batch_size, self.with_epoch = rank, world, batch_size, with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world == 1:
            return self.size
        return self.size // (self.world * self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        entropy = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(int(entropy)))
        if self.world > 1:  # [global batches, processes, pairs] -> this process's blocks, in order
            batches = self.size // (self.world * self.batch_size)
            order = order[: batches * self.world * self.batch_size].view(batches, self.world, self.batch_size)
            order = order[:, self.rank].reshape(-1)
        start, self.start = self.start, 0
        if self.with_epoch:
            yield from ((self.epoch, index) for index in order[start:].tolist())  # type: ignore[misc]
        else:
            yield from order[start:].tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader over an :class:`EpochShuffleSampler` that Lightning can save and restore mid-epoch.

    ``state_dict`` is the epoch and the number of batches handed out in it; after ``load_state_dict`` the next
    iteration of that epoch skips those batches (Lightning calls both: a loader with these two methods is
    "stateful" to it).
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, **kwargs: Any
    ) -> None:
        """``batch_size``: pairs per process; ``rank`` of ``world`` processes (see :class:`EpochShuffleSampler`).
        A dataset with ``indexed_by_epoch = True`` gets ``(epoch, index)`` keys."""
        with_epoch = getattr(dataset, "indexed_by_epoch", False)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffleSampler(len(dataset), seed, rank, world, batch_size, with_epoch),  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(seed),  # worker seeds: never the global generator
            **kwargs,
        )
        self._epoch, self._batches = 0, 0
        self._resume_at: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochShuffleSampler = self.sampler  # type: ignore[assignment]
        skip = 0
        if self._resume_at is not None and self._resume_at[0] == sampler.epoch:
            skip = self._resume_at[1]
        self._resume_at = None
        sampler.start = skip * self.batch_size  # type: ignore[operator]
        self._epoch, self._batches = sampler.epoch, skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches"]))


# ------------------------------------------------------------------------------------------ random generators
def collect_rng_states() -> dict[str, Any]:
    """The state of every random generator, as tensors and plain values (loadable with ``weights_only``)."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set every random generator from :func:`collect_rng_states`'s output."""
    version, mt_state, gauss = states["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------------------------------------ the log


def count_log_rows(path: Path) -> int:
    """Data rows of a CSV log (0 when it does not exist yet)."""
    if not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8") as file:
        return max(sum(1 for _ in csv.reader(file)) - 1, 0)


def trim_metrics_log(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Keep the rows of ``logs/metrics.csv`` written before ``checkpoint`` was; the resumed run logs the others.

    The checkpoint records that count (:data:`LOG_ROWS_KEY`); without it, the rows of steps before its step.
    """
    path = run_dir / METRICS_LOG
    if not path.is_file():
        return
    keep_rows = checkpoint.get(LOG_ROWS_KEY)  # an int >= 0 or None (checked when the checkpoint was chosen)
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            fields = reader.fieldnames or []
            if keep_rows is not None:
                rows = [row for _, row in zip(range(int(keep_rows)), reader)]
            else:
                step = int(checkpoint["global_step"])
                rows = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) < step]
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise CheckpointError(
            f"cannot resume: the run's log {path} is not a CSV file written by iiae ({type(error).__name__}); "
            "move it away to resume without its earlier rows"
        ) from None
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\r\n")  # as the csv module writes it
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps the rows already in metrics.csv (the resumed run's past)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):  # its columns, so that new rows extend the header
            with open(self.metrics_file_path, newline="", encoding="utf-8") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _check_log_dir_exists(self) -> None:
        pass


class ContinuingCSVLogger(CSVLogger):
    """A CSVLogger that appends to the metrics.csv of the run being resumed instead of deleting it."""

    @property
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
