"""A trained model for ``iiae evaluate`` and ``iiae translate``: found, loaded and checked, with its run's config.

Accepted paths:

- a run folder written by ``iiae train`` (its exported ``model/`` is loaded, its ``config.yaml`` read);
- a model folder (``config.json`` + ``model.safetensors``, see :meth:`iiae.IIAE.save_pretrained`);
- a Lightning checkpoint file (``checkpoints/best.ckpt``, ``last.ckpt``, ``step=N.ckpt``), read with
  ``weights_only=True``; its config is the one saved inside it.

A path that is missing, truncated or belongs to another model raises :class:`iiae.errors.CheckpointError` with a
one-line message naming the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from iiae.atomic import atomic_write_json
from iiae.core.config import (
    ExperimentConfig,
    config_from_dict,
    load_saved_config,
    saved_config_from_dict,
)
from iiae.core.model import CONFIG_FILE, IIAE, WEIGHTS_FILE
from iiae.engine.checkpoint_files import (
    check_checkpoint_matches,
    load_checkpoint,
    model_state,
)
from iiae.errors import CheckpointError, ConfigError, OutputError
from iiae.evaluation.measures import MEASURE_KEYS
from iiae.readers import read_json_object
from iiae.run_files import CHECKPOINTS, CONFIG, METRICS, MODEL_DIR
from iiae.runs.metrics import Evaluated

MAX_METRICS_BYTES = 16 << 20  # a run's metrics.json is a few kB


@dataclass
class TrainedModel:
    """A loaded model, where it came from, and the config of its run when one is known."""

    model: IIAE
    source: Path  # the model folder or checkpoint file that was read
    run_config: ExperimentConfig | None  # config.yaml of the run, or the config saved in the checkpoint
    run_dir: Path | None  # the run folder, when the model belongs to one
    step: int | None  # training step of a checkpoint (None for an exported model folder)

    def experiment_config(self, config: ExperimentConfig) -> ExperimentConfig:
        """``config`` with the loaded model's own architecture (the data must be built at the model's image size)."""
        values = config.to_dict()
        values["model"] = asdict(self.model.config)
        return config_from_dict(values)


def _run_config(folder: Path) -> ExperimentConfig | None:
    path = folder / CONFIG
    return load_saved_config(path) if path.is_file() else None


def _from_checkpoint(path: Path) -> TrainedModel:
    checkpoint = load_checkpoint(path)
    hyper_parameters = checkpoint.get("hyper_parameters")
    saved = hyper_parameters.get("config") if isinstance(hyper_parameters, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds no iiae config (hyper_parameters.config): not an iiae run?")
    try:
        config = saved_config_from_dict(saved)
    except ConfigError as error:
        raise CheckpointError(f"checkpoint {path} holds an invalid iiae config: {error}") from None
    check_checkpoint_matches(checkpoint, config, path)
    model = IIAE(config.model)
    model.load_state_dict(model_state(checkpoint))
    run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else None
    if run_dir is not None and not (run_dir / CONFIG).is_file():
        run_dir = None
    return TrainedModel(model.eval(), path, config, run_dir, int(checkpoint["global_step"]))


@dataclass(frozen=True)
class ModelPath:
    """What a model path names, found without reading a weight (for the output checks before any work)."""

    source: Path  # the model folder or checkpoint file to read
    run_dir: Path | None  # the run folder it belongs to

    @property
    def inputs(self) -> list[Path]:
        """The files a command reads the model (and its run's config) from: never written by it."""
        files = [self.source] if self.source.is_file() else [self.source / CONFIG_FILE, self.source / WEIGHTS_FILE]
        return files + ([self.run_dir / CONFIG] if self.run_dir is not None else [])

    def default_metrics_path(self) -> Path:
        """Where ``iiae evaluate`` writes by default: the run's metrics.json for the run's exported model, else
        ``metrics.json`` in the model folder, or ``<name>.metrics.json`` beside a checkpoint (never clobbering
        the run's metrics with another checkpoint's)."""
        if self.source.is_file():
            return self.source.with_name(f"{self.source.stem}.metrics.json")
        if self.run_dir is not None:
            return self.run_dir / METRICS
        return self.source / METRICS

    @property
    def owner(self) -> Path | None:
        """The run folder or model folder whose own outputs (metrics.json, figures) a command may write."""
        return self.run_dir if self.run_dir is not None else None if self.source.is_file() else self.source


def locate_model(path: str | Path) -> ModelPath:
    """The model folder or checkpoint file a run folder, model folder or checkpoint path names, and its run
    folder (see the module docstring); CheckpointError naming the path when it is none of them."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"model path {path} does not exist; expected a run folder, its model/ folder or a .ckpt checkpoint"
        )
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else None
        return ModelPath(path, run_dir if run_dir is not None and (run_dir / CONFIG).is_file() else None)
    if not (path / CONFIG_FILE).exists() and (path / MODEL_DIR).is_dir():
        return ModelPath(path / MODEL_DIR, path)
    if (path / CONFIG_FILE).exists():
        return ModelPath(path, path.parent if (path.parent / CONFIG).is_file() else None)
    if (path / CONFIG).is_file():
        raise CheckpointError(
            f"run folder {path} has no exported model/ (an interrupted run?); evaluate one of its checkpoints "
            f"({path / 'checkpoints' / 'last.ckpt'}) or export it with iiae export"
        )
    raise CheckpointError(
        f"{path} is neither a run folder nor a model folder: expected config.yaml + model/, or {CONFIG_FILE} "
        "+ model.safetensors"
    )


def load_trained(path: str | Path) -> TrainedModel:
    """Load a run folder, a model folder or a checkpoint file (see the module docstring)."""
    located = locate_model(path)
    if located.source.is_file():
        return _from_checkpoint(located.source)
    model = IIAE.from_pretrained(located.source)
    run_dir = located.run_dir
    return TrainedModel(model, located.source, _run_config(run_dir) if run_dir else None, run_dir, None)


def existing_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics file ``path`` holds already (``{}``: none), read bounded (at most 16 MB, nested at most 32
    levels: iiae.readers); OutputError when it is not a JSON object (it is never replaced)."""
    try:
        return read_json_object(path, MAX_METRICS_BYTES, "metrics file", OutputError)
    except OutputError as error:
        raise OutputError(f"{error}: it is kept as it is; choose another --json path") from None


def write_metrics(
    path: str | Path,
    table: dict,
    trained: TrainedModel,
    test_pairs: int,
    data_source: str,
    measures: dict | None = None,
    shift_suite: dict[str, dict[str, float]] | None = None,
    shift_suite_key: str = "shift_suite",
) -> dict[str, Any]:
    """Write the retrieval table (and what was evaluated) as JSON; an existing metrics file keeps its other keys.
    Returns the metrics as written.

    So evaluating a run folder refreshes the ``retrieval`` of its ``metrics.json`` and leaves the training
    facts (time, steps, model selection) as the main job wrote them. ``measures`` (``iiae.evaluation.measures``: fidelity
    and leakage of this model on these pairs) replace the file's measures; ``{}`` (data without known factors)
    removes them, as they would describe other data; None leaves them as they are. ``shift_suite`` goes under
    ``shift_suite_key`` (``validation_shift_suite`` for the suite on validation digits).
    """
    path = Path(path)
    existing = existing_metrics(path)
    existing["retrieval"] = table
    if shift_suite is not None:  # iiae.evaluation.shift_suite; a file's earlier suite is kept otherwise
        existing[shift_suite_key] = shift_suite
    if measures is not None:
        for key in MEASURE_KEYS:
            existing.pop(key, None)
        existing.update(measures)
    evaluated: Evaluated = {
        "model": str(trained.source),
        "step": trained.step,
        "test_pairs": test_pairs,
        "data_source": data_source,
        "date": datetime.now().isoformat(timespec="seconds"),
    }
    existing["evaluated"] = evaluated
    try:
        atomic_write_json(path, existing)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    return existing
