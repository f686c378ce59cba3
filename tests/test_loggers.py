"""train.loggers: the CSV log always, TensorBoard on request (checked at config time), and a resumed run whose
TensorBoard log holds every step once, as its metrics.csv does."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from iiae.core.config import TrainConfig
from iiae.errors import ConfigError
from iiae.run_files import METRICS_LOG

NO_TENSORBOARD = "the tensorboard extra is not installed (pip install 'iiae[tensorboard]')"


def test_the_csv_logger_is_required_and_each_logger_listed_once():
    assert TrainConfig().loggers == ["csv"]
    for loggers in (["tensorboard"], [], ["csv", "csv"]):
        with pytest.raises(ConfigError, match="train.loggers must hold 'csv'"):
            TrainConfig(loggers=loggers).validate()


def test_tensorboard_without_its_package_is_one_line_naming_the_extra(monkeypatch):
    find_spec = importlib.util.find_spec

    def without_tensorboard(name: str, *args: object) -> object:
        return None if name == "tensorboard" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install 'iiae\[tensorboard\]'") as caught:
        TrainConfig(loggers=["csv", "tensorboard"]).validate()
    assert "\n" not in str(caught.value)
    TrainConfig(loggers=["csv"]).validate()  # the CSV log alone needs nothing more


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for ``log_dir``: tag -> [(step, value)], purges applied."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}  # fmt: skip


def _csv_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """The same view of a metrics.csv (values as float32, as TensorBoard stores them)."""
    import numpy as np

    scalars: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            for name, value in row.items():
                if name != "step" and value:
                    scalars.setdefault(name, []).append((int(row["step"]), float(np.float32(value))))
    return scalars


def test_a_resumed_tensorboard_log_holds_each_step_once_and_equals_the_csv_log(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    from lightning.pytorch.loggers import TensorBoardLogger

    from iiae.engine.loggers import run_loggers

    run = tmp_path / "run"
    # What an interrupted run leaves: events of steps 0..5 (the process got past its checkpoint), and the rows of
    # steps 0..3 in metrics.csv (trimmed to the checkpoint of step 4: the training rows of steps 0..3 and the
    # validation row logged at step 4).
    before = TensorBoardLogger(run, name="", version="logs", default_hp_metric=False)
    for step in range(6):
        before.log_metrics({"train/loss": 10.0 - step, "epoch": 0.0}, step=step)
    before.log_metrics({"val/score": 0.5}, step=4)
    before.experiment.close()
    (run / METRICS_LOG).write_text(
        "epoch,step,train/loss,val/score\r\n0,0,10.0,\r\n0,1,9.0,\r\n0,2,8.0,\r\n0,3,7.0,\r\n,4,,0.5\r\n"
    )
    csv_logger, tensorboard = run_loggers(["csv", "tensorboard"], run, resuming=True)
    for step in (4, 5, 6):  # the resumed run: steps 4.. again, with other values than the lost ones
        for logger in (csv_logger, tensorboard):
            logger.log_metrics({"train/loss": 100.0 + step, "epoch": 0.0}, step=step)
    csv_logger.save()
    tensorboard.experiment.flush()

    shown = _scalars(run / "logs")
    assert shown["train/loss"] == [(0, 10.0), (1, 9.0), (2, 8.0), (3, 7.0), (4, 104.0), (5, 105.0), (6, 106.0)]
    assert shown["val/score"] == [(4, 0.5)]  # logged before the checkpoint: kept, once
    assert shown == _csv_scalars(run / METRICS_LOG)
    assert len(list((run / "logs").glob("events.out.tfevents.*"))) == 1  # the stale file is gone


def test_a_new_run_with_tensorboard_writes_its_events_beside_the_csv_log(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    from iiae.engine.loggers import run_loggers

    run = tmp_path / "run"
    run.mkdir()
    csv_logger, tensorboard = run_loggers(["csv", "tensorboard"], run, resuming=False)
    for step in range(3):
        for logger in (csv_logger, tensorboard):
            logger.log_metrics({"train/loss": float(step)}, step=step)
    csv_logger.save()
    tensorboard.experiment.flush()
    assert tensorboard.log_dir == csv_logger.log_dir == str(run / "logs")
    assert _scalars(run / "logs") == _csv_scalars(run / METRICS_LOG) == {"train/loss": [(0, 0.0), (1, 1.0), (2, 2.0)]}
    assert [logger.__class__.__name__ for logger in run_loggers(["csv"], run, resuming=False)] == ["CSVLogger"]


def test_tensorboard_added_on_resume_gets_the_whole_run_so_far(tmp_path):
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    from iiae.engine.loggers import run_loggers
    from iiae.runs.run_folder import RESUMABLE_CHANGES

    assert "train.loggers" in RESUMABLE_CHANGES
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / METRICS_LOG).write_text("epoch,step,train/loss\r\n0,0,3.5\r\n0,1,2.5\r\n")  # a run without TensorBoard
    _, tensorboard = run_loggers(["csv", "tensorboard"], run, resuming=True)
    tensorboard.experiment.flush()
    assert _scalars(run / "logs") == {"epoch": [(0, 0.0), (1, 0.0)], "train/loss": [(0, 3.5), (1, 2.5)]}
