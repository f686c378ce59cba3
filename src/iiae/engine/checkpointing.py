"""Checkpoints that survive a crash and never run code on load.

- :class:`AtomicCheckpointIO`, a Lightning ``CheckpointIO`` plugin: every checkpoint is written to a temporary
  file in the same folder, fsync'ed, then renamed over its name, so a kill during the write leaves the previous
  checkpoint whole; every checkpoint is read with ``torch.load(weights_only=True)``, so a file that would need
  arbitrary unpickling (and could run code) is refused with a :class:`CheckpointError`.
- :class:`RunCheckpoint`, Lightning's ``ModelCheckpoint`` keeping ``checkpoints/last.ckpt`` and the newest
  ``train.keep_checkpoints`` files ``step=NNNNNNNN.ckpt``, written every ``train.checkpoint_every`` steps, at
  the last step (an early stop's included) and when a stop is requested. The state of step t is taken where Lightning takes it (the end of
  step t) but written just before step t+1 starts, once step t's row is in ``logs/metrics.csv``, together with
  the random generators' state at that point: a checkpoint never exists without the log it covers.

Reading checkpoint files (:func:`~iiae.engine.checkpoint_files.load_checkpoint`,
:func:`~iiae.engine.checkpoint_files.newest_checkpoint` for ``--resume``) is :mod:`iiae.engine.checkpoint_files`,
which needs no Lightning; the policy of what may be resumed is :mod:`iiae.runs.run_folder`'s; ``iiae export`` is
:mod:`iiae.runs.export`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from iiae.engine.checkpoint_files import (
    LOG_ROWS_KEY,
    RNG_KEY,
    atomic_torch_save,
    load_checkpoint,
)
from iiae.engine.resume import (
    collect_rng_states,
    count_log_rows,
    restore_rng_states,
)
from iiae.run_files import (
    LAST_CHECKPOINT,
    METRICS_LOG,
    STEP_CHECKPOINT,
    STEP_CHECKPOINT_FORMAT,
)

LOG = logging.getLogger("iiae.engine")


# ------------------------------------------------------------------------------------- the I/O plugin
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, with atomic writes, ``weights_only`` reads and optional deferred writes.

    Inside :meth:`deferred`, saves (and removals of old checkpoints) are queued; :meth:`flush` performs them in
    order. The queued dicts hold the live tensors, so they must be flushed before the next optimiser step.
    """

    def __init__(self) -> None:
        super().__init__()
        self._defer = False
        self.pending: list[tuple[str, Path, dict[str, Any] | None]] = []

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer = True
        try:
            yield
        finally:
            self._defer = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if self._defer:
            self.pending.append(("save", Path(path), checkpoint))
        else:
            atomic_torch_save(checkpoint, path)

    def remove_checkpoint(self, path: Any) -> None:
        if self.pending:
            self.pending.append(("remove", Path(path), None))
        else:
            Path(path).unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location if map_location is not None else "cpu")  # always weights_only

    def flush(self) -> None:
        """Write the queued checkpoints and remove the ones they replace, in the order they were asked for."""
        while self.pending:
            action, path, checkpoint = self.pending.pop(0)
            if action == "save":
                atomic_torch_save(checkpoint, path)
            else:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- the run checkpoints
#: ModelCheckpoint's private methods and attribute RunCheckpoint builds on (Lightning 2.4-2.6); checked at import so
#: that a Lightning release that renames them fails here, loudly, rather than by silently skipping checkpoints.
MODEL_CHECKPOINT_INTERNALS = ("_save_checkpoint", "_monitor_candidates", "_save_topk_checkpoint",
                              "_save_last_checkpoint")  # fmt: skip
_missing = [name for name in MODEL_CHECKPOINT_INTERNALS if not callable(getattr(ModelCheckpoint, name, None))]
if _missing:
    raise ImportError(f"iiae's RunCheckpoint needs ModelCheckpoint.{', '.join(_missing)}, which this Lightning lacks")


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` plus the newest ``keep`` step checkpoints, every ``every`` steps, at the end and on a stop.

    ``stop`` is an object with a boolean ``stopping`` attribute (:class:`iiae.engine.guards.GracefulStop`): when set at
    the end of a step, that step is checkpointed whatever ``every`` says. Needs :class:`AtomicCheckpointIO`.

    Order and deferral, relied on (and asserted in :meth:`setup`):

    1. At the end of step t this callback runs after every other callback (Lightning moves checkpoint callbacks
       last; :meth:`setup` checks it): the stop request and the model-selection record of step t (callback
       states) are then in step t's checkpoint.
    2. The checkpoint dict of step t is built there (weights, optimiser, loops, callback states) but written only
       at the start of step t + 1 (:meth:`flush`), after the loggers have written step t's rows, with the random
       generators' state of that moment; so a checkpoint never exists without the log rows it counts, and a
       resumed run draws the same random numbers. The queued dict holds live tensors: it must be flushed before
       the next optimiser step, which on_train_batch_start guarantees.
    """

    def __init__(self, dirpath: str | Path, every: int, keep: int, stop: Any = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=STEP_CHECKPOINT_FORMAT,
            auto_insert_metric_name=False,
            monitor="step",  # the newest steps are the "best": top-k keeps the newest k
            mode="max",
            save_top_k=keep,
            save_last=True,
            every_n_train_steps=every,
            enable_version_counter=False,
        )
        self.stop = stop
        self._rng_to_restore: dict[str, Any] | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        later = trainer.callbacks[trainer.callbacks.index(self) + 1 :]
        if any(not isinstance(callback, ModelCheckpoint) for callback in later):  # a bug, not user input
            raise RuntimeError(f"RunCheckpoint must be the last callback; after it: {later}")
        with warnings.catch_warnings():  # a new run's folder is empty; a resumed run's holds its checkpoints
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath is not None and Path(self.dirpath).is_dir():
            for leftover in Path(self.dirpath).glob(".*.tmp"):  # a write that a kill interrupted (before training:
                leftover.unlink(missing_ok=True)  # a resumed run that has no step left to train removes it too)

    @staticmethod
    def _io(trainer: Any) -> AtomicCheckpointIO:
        checkpoint_io = trainer.strategy.checkpoint_io
        if not isinstance(checkpoint_io, AtomicCheckpointIO):
            raise TypeError("RunCheckpoint needs Trainer(plugins=[AtomicCheckpointIO()])")  # a bug, not user input
        return checkpoint_io

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        with self._io(trainer).deferred():
            super()._save_checkpoint(trainer, filepath)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        final = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        final = final or trainer.should_stop  # early stopping (iiae.engine.selection) ends the run after this step
        stopping = bool(self.stop is not None and self.stop.stopping)
        if (final or stopping) and self._last_global_step_saved != trainer.global_step:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    def flush(self, trainer: Any) -> None:
        """Write what the previous step queued: first the log rows, then the checkpoints with the RNG states."""
        checkpoint_io = self._io(trainer)
        if not checkpoint_io.pending:
            return
        for logger in trainer.loggers:
            logger.save()
        logged = {
            LOG_ROWS_KEY: count_log_rows(Path(logger.log_dir) / METRICS_LOG.name)
            for logger in trainer.loggers
            if isinstance(logger, CSVLogger)
        }
        states = collect_rng_states()
        for _, _, checkpoint in checkpoint_io.pending:
            if checkpoint is not None:
                checkpoint.update({RNG_KEY: states, **logged})
        # last.ckpt first: a kill between two writes then leaves last.ckpt the newest, and resuming from it lets
        # the step files rotate (Lightning never deletes the file it resumed from)
        checkpoint_io.pending.sort(key=lambda action: action[1].name != LAST_CHECKPOINT)
        checkpoint_io.flush()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.flush(trainer)
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        self.flush(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        try:
            self.flush(trainer)  # the queued state is from before the failing step: still good
        except OSError as error:
            if isinstance(exception, OSError) and exception.errno == error.errno:  # the same failure: said once
                LOG.debug("iiae: could not write the last checkpoint either: %s", error)
            else:
                LOG.warning("iiae: warning: could not write the last checkpoint: %s", error)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        with warnings.catch_warnings():  # a moved or copied run: on_train_start rebuilds what is not restored
            warnings.filterwarnings("ignore", ".*dirpath has changed.*")
            super().load_state_dict(state_dict)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """On resume: track the newest ``keep`` step files on disk and remove older ones.

        The kept-file list is rebuilt from the folder rather than taken from the checkpoint: Lightning does not
        restore it when the run folder was moved or copied (it would then forget, and delete, the older step
        files at once), and a file a kill left unremoved, or one a user deleted, is seen as it is.
        """
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path is None or self.dirpath is None:
            return
        on_disk = self._track_step_files_on_disk(trainer.global_step)
        kept = {Path(path).resolve() for path in self.best_k_models} | {Path(trainer.ckpt_path).resolve()}
        for path in on_disk:
            if path.resolve() not in kept:
                path.unlink(missing_ok=True)

    def _track_step_files_on_disk(self, global_step: int) -> list[Path]:
        """Set ModelCheckpoint's top-k state to the newest ``save_top_k`` step files up to ``global_step``; returns
        every step file up to ``global_step``."""
        on_disk = []
        for path in Path(self.dirpath).glob("step=*.ckpt"):
            match = STEP_CHECKPOINT.match(path.name)
            if match and int(match.group(1)) <= global_step:
                on_disk.append((int(match.group(1)), path))
        on_disk.sort(reverse=True)
        kept = on_disk if self.save_top_k < 0 else on_disk[: self.save_top_k]
        self.best_k_models = {str(path): torch.tensor(step) for step, path in kept}
        if kept:  # "best" is the newest step (monitor="step", mode="max"); the k-th best is the oldest kept
            self.best_model_path, self.best_model_score = str(kept[0][1]), torch.tensor(kept[0][0])
            self.kth_best_model_path, self.kth_value = str(kept[-1][1]), torch.tensor(kept[-1][0])
        return [path for _, path in on_disk]
