"""Checkpoints that survive a crash and never run code on load.

- :class:`AtomicCheckpointIO`, a Lightning ``CheckpointIO`` plugin: every checkpoint is written to a temporary
  file in the same folder, fsync'ed, then renamed over its name, so a kill during the write leaves the previous
  checkpoint whole; every checkpoint is read with ``torch.load(weights_only=True)``, so a file that would need
  arbitrary unpickling (and could run code) is refused with a :class:`CheckpointError`.
- :class:`RunCheckpoint`, Lightning's ``ModelCheckpoint`` keeping ``checkpoints/last.ckpt`` and the newest
  ``train.keep_checkpoints`` files ``step=NNNNNNNN.ckpt``, written every ``train.checkpoint_every`` steps, at
  the last step and when a stop is requested. The state of step t is taken where Lightning takes it (the end of
  step t) but written just before step t+1 starts, once step t's row is in ``logs/metrics.csv``, together with
  the random generators' state at that point: a checkpoint never exists without the log it covers.
- :func:`load_checkpoint` and :func:`newest_checkpoint` for ``--resume``; :class:`RunLock` so that two runs
  never write into one folder; :func:`export_model` for ``iiae export``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from iiae.config import ExperimentConfig
from iiae.errors import CheckpointError, OutputError
from iiae.model import check_finite, check_state_dict
from iiae.resume import LOG_ROWS_KEY, collect_rng_states, count_log_rows, restore_rng_states

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")
RNG_KEY = "iiae_rng_states"
LOCK_FILE = ".iiae.lock"


# ------------------------------------------------------------------------------------------ writing, reading
def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` into a temporary file beside ``path``, fsync, rename: ``path`` is always whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as file:  # usual permissions (mkstemp would make it private)
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself reaches the disk
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a Lightning checkpoint with ``weights_only=True``; CheckpointError naming the file for anything else.

    A file whose pickle names any object but tensors and plain containers (which could run code when
    unpickled) is refused: nothing in it is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty: expected a PyTorch checkpoint (.ckpt)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        paragraphs = [text.strip() for text in str(error).split("\n\n") if text.strip()]
        detail = paragraphs[-2] if len(paragraphs) >= 3 else "unsupported content"
        if "GLOBAL" in detail:  # a Python object to build: the way a pickle runs code
            raise CheckpointError(
                f"checkpoint {path} needs arbitrary unpickling ({detail}); refused, nothing in it was run: "
                "expected tensors and plain containers only (loaded with weights_only=True)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch checkpoint readable with weights_only=True ({detail}); "
            "refused, nothing in it was run"
        ) from None
    except Exception as error:  # noqa: BLE001 - whatever a damaged file makes torch.load raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {path} is truncated or not a PyTorch checkpoint ({first_line})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint: expected a dict with a state_dict")
    if not isinstance(checkpoint.get("global_step"), int) or checkpoint["global_step"] < 0:
        raise CheckpointError(f"checkpoint {path} has no valid global_step: expected a non-negative integer")
    for name, tensor in checkpoint["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: state_dict entry {name} is not a tensor")
    check_finite(checkpoint["state_dict"], f"checkpoint {path}")
    return checkpoint


def check_checkpoint_matches(checkpoint: dict[str, Any], config: ExperimentConfig, path: Path) -> None:
    """CheckpointError naming the first tensor whose name, shape or dtype the config's model does not have."""
    from iiae.training import IIAELightning

    with torch.device("meta"):
        expected = IIAELightning(config.to_dict()).state_dict()
    check_state_dict(checkpoint["state_dict"], expected, f"checkpoint {path}")


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
class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` plus the newest ``keep`` step checkpoints, every ``every`` steps, at the end and on a stop.

    ``stop`` is an object with a boolean ``stopping`` attribute (:class:`iiae.guards.GracefulStop`): when set at
    the end of a step, that step is checkpointed whatever ``every`` says. Needs :class:`AtomicCheckpointIO`.
    """

    def __init__(self, dirpath: str | Path, every: int, keep: int, stop: Any = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="step={step:08d}",
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
        with warnings.catch_warnings():  # a new run's folder is empty; a resumed run's holds its checkpoints
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            super().setup(trainer, pl_module, stage)

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
            LOG_ROWS_KEY: count_log_rows(Path(logger.log_dir) / "metrics.csv")
            for logger in trainer.loggers
            if isinstance(logger, CSVLogger)
        }
        states = collect_rng_states()
        for _, _, checkpoint in checkpoint_io.pending:
            if checkpoint is not None:
                checkpoint.update({RNG_KEY: states, **logged})
        # last.ckpt first: a kill between two writes then leaves last.ckpt the newest, and resuming from it lets
        # the step files rotate (Lightning never deletes the file it resumed from)
        checkpoint_io.pending.sort(key=lambda action: action[1].name != LAST)
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
            print(f"iiae: warning: could not write the last checkpoint: {error}", file=sys.stderr)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """On resume: remove step files the run no longer tracks (a removal a kill interrupted; a moved folder)."""
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path is None or self.dirpath is None:
            return
        kept = {Path(path).resolve() for path in self.best_k_models} | {Path(trainer.ckpt_path).resolve()}
        for path in Path(self.dirpath).glob("step=*.ckpt"):
            match = STEP_FILE.match(path.name)
            if match and int(match.group(1)) <= trainer.global_step and path.resolve() not in kept:
                path.unlink(missing_ok=True)
        for leftover in Path(self.dirpath).glob(".*.tmp"):  # a write that a kill interrupted
            leftover.unlink(missing_ok=True)


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first by their step (``last.ckpt`` before a step file of the same step)."""
    folder = run_dir / CHECKPOINT_DIR
    files = []
    for path in folder.glob("*.ckpt") if folder.is_dir() else []:
        match = STEP_FILE.match(path.name)
        if match:
            files.append((int(match.group(1)), 0, path))
        elif path.name == LAST:
            try:
                step = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
            except Exception:  # noqa: BLE001 - any unreadable last.ckpt is ranked last and reported on load
                step = -1
            files.append((int(step), 1, path))
    return [path for _, _, path in sorted(files, key=lambda item: (item[0], item[1]), reverse=True)]


def newest_checkpoint(run_dir: Path, config: ExperimentConfig) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run that loads and fits its config; unreadable newer ones are skipped, said so."""
    files = checkpoint_files(run_dir)
    if not files:
        raise CheckpointError(f"cannot resume {run_dir}: {run_dir / CHECKPOINT_DIR} holds no checkpoint (*.ckpt)")
    problems = []
    for path in files:
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            if "needs arbitrary unpickling" in str(error):
                raise
            problems.append(str(error))
            continue
        check_checkpoint_matches(checkpoint, config, path)
        for problem in problems:
            print(f"iiae: warning: skipped {problem}", file=sys.stderr)
        return path, checkpoint
    raise CheckpointError(f"cannot resume {run_dir}: no checkpoint loads ({problems[0]})")


# ------------------------------------------------------------------------------------------------ run lock
class RunLock:
    """An exclusive ``flock`` on ``<run>/.iiae.lock``: a second run (or resume) on the same folder refuses.

    The lock dies with its process (even on SIGKILL), so a crashed run never blocks its own resumption.
    ``new_run``: create the folder and refuse it if it holds anything but the lock file.
    """

    def __init__(self, folder: Path, new_run: bool) -> None:
        self.folder, self.new_run, self._handle = Path(folder), new_run, -1

    def __enter__(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / LOCK_FILE
            while True:
                handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = os.read(handle, 64).decode(errors="replace").strip() or "unknown"
                    os.close(handle)
                    raise OutputError(
                        f"run folder {self.folder} is in use by another iiae run (pid {owner}); "
                        "wait for it or choose another folder"
                    ) from None
                if os.path.exists(path) and os.stat(path).st_ino == os.fstat(handle).st_ino:
                    break
                os.close(handle)  # the previous holder removed the file while we waited: lock the new one
        except OSError as error:
            if isinstance(error, OutputError):
                raise
            raise OutputError(f"cannot lock run folder {self.folder}: {error.strerror or error}") from None
        self._handle = handle
        os.ftruncate(handle, 0)
        os.write(handle, str(os.getpid()).encode())
        if self.new_run and any(path.name != LOCK_FILE for path in self.folder.iterdir()):
            self.__exit__()
            raise OutputError(f"output folder {self.folder} is not empty; choose a new --out (runs are never mixed)")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._handle >= 0:
            (self.folder / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._handle)  # releases the flock
            self._handle = -1


# --------------------------------------------------------------------------------------------------- export
def export_model(source: Path, out: Path, last: bool = False) -> tuple[Path, int]:
    """Write a run's model as ``out/model.safetensors`` + ``out/config.json``; returns the checkpoint and its step.

    ``source`` is a run folder (its selected model ``checkpoints/best.ckpt`` when model selection kept one, else
    its newest checkpoint; ``last``: always the newest), or a checkpoint file. Works for an interrupted run too.
    ``out`` must not hold files; it appears only once complete.
    """
    from iiae.config import load_config
    from iiae.runner import check_output_dir
    from iiae.trained import load_trained

    source, out = Path(source), Path(out)
    check_output_dir(out)
    if source.is_dir():
        config_path = source / "config.yaml"
        if not config_path.is_file():
            raise CheckpointError(f"cannot export {source}: no config.yaml; expected a run folder or a .ckpt file")
        best = source / CHECKPOINT_DIR / "best.ckpt"
        source = best if best.is_file() and not last else newest_checkpoint(source, load_config(config_path))[0]
    trained = load_trained(source)  # weights_only, checked against the config saved in the checkpoint
    staging = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        trained.model.save_pretrained(staging)  # creates it, with the usual permissions
        if out.exists():
            out.rmdir()  # empty (checked above): the rename needs the name free
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return source, int(trained.step or 0)


def resumable_checkpoint(run_dir: Path, config: ExperimentConfig) -> Path:
    """The checkpoint ``--resume`` continues from; OutputError if the run already finished its steps."""
    path, checkpoint = newest_checkpoint(run_dir, config)
    step = int(checkpoint["global_step"])
    if step >= config.train.steps and (run_dir / "metrics.json").is_file():
        raise OutputError(
            f"run {run_dir} already finished its {step} steps (metrics.json is written); "
            f"pass --steps N with N > {step} to train it further"
        )
    return path
