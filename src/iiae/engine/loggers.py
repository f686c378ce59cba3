"""The run's loggers (``train.loggers``), all writing the run's ``logs/`` folder: Lightning's CSVLogger
(``metrics.csv``, always: the report and ``--resume`` read it) and optionally its TensorBoardLogger (event files).

A resumed run logs no step twice. ``metrics.csv`` is cut back to the rows its checkpoint had seen
(:func:`iiae.engine.resume.trim_metrics_log`) and continued (:class:`iiae.engine.resume.ContinuingCSVLogger`).
Event files cannot be cut, and an interrupted process may have logged steps after its checkpoint (or not yet
flushed steps before it), so the resumed run rebuilds them from that CSV: the earlier event files are removed,
and a new one starts with TensorBoard's purge marker at step 0 (which hides any earlier file that could not be
removed) followed by every kept CSV row, exactly as the loggers received it; the resumed steps follow.
"""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from iiae.engine.resume import ContinuingCSVLogger
from iiae.errors import CheckpointError
from iiae.run_files import LOGS_DIR, METRICS_LOG

EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's event file names


def logged_rows(run_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """The rows of the run's ``logs/metrics.csv`` as the loggers received them: (step, metrics without the empty
    cells) in file order; none when there is no such file."""
    path = run_dir / METRICS_LOG
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as file:
            return [
                (int(row["step"]), {name: float(value) for name, value in row.items() if name != "step" and value})
                for row in csv.DictReader(file)
            ]
    except (UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"cannot resume: the run's log {path} is not a CSV file written by iiae ({type(error).__name__}); "
            "move it away to resume without its earlier rows"
        ) from None


def continue_tensorboard_log(logger: TensorBoardLogger, run_dir: Path) -> None:
    """Replace the run's event files by one that holds the rows of ``metrics.csv`` (call once, on resume, after
    the CSV was trimmed to the checkpoint)."""
    rows = logged_rows(run_dir)
    for path in Path(logger.log_dir).glob(EVENT_FILES):
        with contextlib.suppress(OSError):  # one that cannot be removed is hidden by the purge marker
            path.unlink()
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
    logger.experiment.flush()


def run_loggers(names: list[str], run_dir: Path, resuming: bool, writer: bool = True) -> list[Logger]:
    """The Lightning loggers of ``names`` (``train.loggers``) for ``run_dir``; the CSV logger first.

    ``resuming``: the run continues from a checkpoint, after its ``metrics.csv`` was trimmed to it; ``writer``:
    this process writes the run folder (process 0), so it rebuilds the TensorBoard log of a resumed run.
    """
    loggers: list[Logger] = [(ContinuingCSVLogger if resuming else CSVLogger)(run_dir, name="", version=LOGS_DIR)]
    if "tensorboard" in names:
        tensorboard = TensorBoardLogger(run_dir, name="", version=LOGS_DIR, default_hp_metric=False,
                                        purge_step=0 if resuming else None)  # fmt: skip
        if resuming and writer:
            continue_tensorboard_log(tensorboard, run_dir)
        loggers.append(tensorboard)
    return loggers
