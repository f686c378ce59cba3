"""Checkpoint files, without Lightning: written atomically, read without running code, checked against a config,
and the newest one a run can resume from.

The commands that only read a trained run (``iiae evaluate``, ``translate``, ``retrieve``, ``export``) load
checkpoints through this module, so they never import Lightning (about 4 s of every such command). The
Lightning side of checkpointing (the ``CheckpointIO`` plugin and the run's ``ModelCheckpoint``) is
:mod:`iiae.engine.checkpointing`.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from iiae.atomic import atomic_write
from iiae.core.config import ExperimentConfig
from iiae.core.model import IIAE, check_finite, check_state_dict
from iiae.errors import CheckpointError
from iiae.readers import check_regular_file, open_regular, quote
from iiae.run_files import CHECKPOINTS, LAST_CHECKPOINT, STEP_CHECKPOINT

LOG = logging.getLogger("iiae.engine")
RNG_KEY = "iiae_rng_states"  # checkpoint entry: the random generators' states when it was written
LOG_ROWS_KEY = "iiae_metrics_log_rows"  # checkpoint entry: rows of logs/metrics.csv written when it was saved
SELECTION_STATE_KEY = "RetrievalSelection"  # Lightning's key of iiae.engine.selection.RetrievalSelection's state


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`iiae.atomic.atomic_write`: ``path`` is always whole or absent."""
    atomic_write(path, lambda file: torch.save(obj, file))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a Lightning checkpoint with ``weights_only=True``; CheckpointError naming the file for anything else.

    A file whose pickle names any object but tensors and plain containers (which could run code when
    unpickled) is refused: nothing in it is executed.
    """
    path = Path(path)
    with open_regular(path, "checkpoint", CheckpointError) as file:  # a FIFO or device is refused, not waited on
        if os.fstat(file.fileno()).st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty: expected a PyTorch checkpoint (.ckpt)")
        checkpoint = _torch_load(file, path, map_location)
    return _checked_checkpoint(checkpoint, path)


def _torch_load(file: Any, path: Path, map_location: Any) -> Any:  # noqa: ANN401
    """``torch.load(file, weights_only=True)``; CheckpointError naming ``path`` for whatever it refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol of foreign files
            return torch.load(file, map_location=map_location, weights_only=True)
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


def _checked_checkpoint(checkpoint: Any, path: Path) -> dict[str, Any]:  # noqa: ANN401
    """``checkpoint`` when it is a Lightning checkpoint of finite tensors; CheckpointError naming ``path``."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint: expected a dict with a state_dict")
    if not isinstance(checkpoint.get("global_step"), int) or checkpoint["global_step"] < 0:
        raise CheckpointError(f"checkpoint {path} has no valid global_step: expected a non-negative integer")
    for name, tensor in checkpoint["state_dict"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint {path}: state_dict entry {quote(name)} is not a tensor")
    check_finite(checkpoint["state_dict"], f"checkpoint {path}")
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The :class:`IIAE` weights of a Lightning checkpoint of :class:`iiae.engine.training.IIAELightning`
    (its ``model.*`` entries, without the prefix)."""
    prefix = "model."
    return {name.removeprefix(prefix): tensor for name, tensor in checkpoint["state_dict"].items()
            if name.startswith(prefix)}  # fmt: skip


def check_checkpoint_matches(checkpoint: dict[str, Any], config: ExperimentConfig, path: Path) -> None:
    """CheckpointError naming the first tensor whose name, shape or dtype the config's model does not have."""
    try:
        with torch.device("meta"):  # the LightningModule's state: the IIAE's, under "model."
            expected = {f"model.{name}": tensor for name, tensor in IIAE(config.model).state_dict().items()}
    except RuntimeError as error:  # sizes that overflow even PyTorch's size arithmetic
        raise CheckpointError(f"checkpoint {path}: its config's model sizes are impossible "
                              f"({str(error).splitlines()[0]})") from None  # fmt: skip
    check_state_dict(checkpoint["state_dict"], expected, f"checkpoint {path}")


def early_stopped_step(checkpoint: dict[str, Any]) -> int | None:
    """The step a run stopped early at, as its checkpoint (of the stopping step) records it; None if it did not."""
    state = (checkpoint.get("callbacks") or {}).get(SELECTION_STATE_KEY)
    early_stop = state.get("early_stop") if isinstance(state, dict) else None
    stopped_at = early_stop.get("stopped_at") if isinstance(early_stop, dict) else None
    return stopped_at if isinstance(stopped_at, int) and not isinstance(stopped_at, bool) else None


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first by their step (``last.ckpt`` before a step file of the same step)."""
    folder = run_dir / CHECKPOINTS
    files = []
    for path in folder.glob("*.ckpt") if folder.is_dir() else []:
        match = STEP_CHECKPOINT.match(path.name)
        if match:
            files.append((int(match.group(1)), 0, path))
        elif path.name == LAST_CHECKPOINT:
            try:
                check_regular_file(path, "checkpoint", CheckpointError)  # a FIFO named last.ckpt: never opened
                step = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
            except Exception:  # noqa: BLE001 - any unreadable last.ckpt is ranked last and reported on load
                step = -1
            files.append((int(step), 1, path))
    return [path for _, _, path in sorted(files, key=lambda item: (item[0], item[1]), reverse=True)]


def check_resume_fields(checkpoint: dict[str, Any], path: Path) -> None:
    """CheckpointError naming the first field that resuming reads and that has the wrong type or range (a damaged
    or foreign file): the optimiser state, the loops, the callbacks, the random generators, the log row count."""

    def refuse(key: str, expected: str) -> None:
        value = checkpoint.get(key)
        raise CheckpointError(f"checkpoint {path}: {key} is {type(value).__name__}, expected {expected}")

    optimizers = checkpoint.get("optimizer_states")
    if not isinstance(optimizers, list) or len(optimizers) != 1 or not all(
        isinstance(state, dict) and isinstance(state.get("state"), dict) and isinstance(state.get("param_groups"), list)
        for state in optimizers
    ):
        refuse("optimizer_states", "a list with one Adam state (state and param_groups)")
    if not isinstance(checkpoint.get("loops"), dict):
        refuse("loops", "a mapping (Lightning's loop progress)")
    if not isinstance(checkpoint.get("callbacks", {}), dict):
        refuse("callbacks", "a mapping of callback states")
    rows = checkpoint.get(LOG_ROWS_KEY, 0)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        refuse(LOG_ROWS_KEY, "a number of log rows >= 0")
    rng = checkpoint.get(RNG_KEY)
    if rng is not None:
        valid = (
            isinstance(rng, dict)
            and isinstance(rng.get("python"), (list, tuple)) and len(rng["python"]) == 3
            and isinstance(rng.get("numpy"), (list, tuple)) and len(rng["numpy"]) == 5
            and isinstance(rng["numpy"][1], torch.Tensor) and rng["numpy"][1].numel() == 624
            and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
        )  # fmt: skip
        if not valid:
            refuse(RNG_KEY, "the random generators' states saved by iiae")


def newest_checkpoint(run_dir: Path, config: ExperimentConfig) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run that loads, holds what resuming reads and fits its config; unreadable or
    damaged newer ones are skipped, said so."""
    files = checkpoint_files(run_dir)
    if not files:
        raise CheckpointError(f"cannot resume {run_dir}: {run_dir / CHECKPOINTS} holds no checkpoint (*.ckpt)")
    problems, mismatches = [], []
    for path in files:
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            if "needs arbitrary unpickling" in str(error):
                raise
            problems.append(str(error))
            continue
        try:
            check_checkpoint_matches(checkpoint, config, path)
        except CheckpointError as error:
            problems.append(str(error))
            mismatches.append(str(error))
            continue
        try:
            check_resume_fields(checkpoint, path)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        for problem in problems:  # a newer file damaged (its weights too): an older one that fits is used
            LOG.warning("iiae: warning: skipped %s", problem)
        return path, checkpoint
    if mismatches and len(mismatches) == len(files):  # every checkpoint is another model's: config.yaml changed
        raise CheckpointError(mismatches[0])
    raise CheckpointError(f"cannot resume {run_dir}: no checkpoint loads ({problems[0]})")
