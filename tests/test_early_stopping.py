"""Early stopping on the model-selection evaluations: the rule, its config, DDP agreement, an end-to-end tiny run
that stops early, and exact resume around the stopping step."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger
from tiny_runs import (
    ONE_THREAD,
    SLOW_CLI,
    expect_error,
    main_one_thread,
    newest_step,
    run_cli,
    start_cli,
    tiny_args,
    tiny_idx_folder,
    wait_until,
)
from torch.utils.data import DataLoader, TensorDataset

from iiae.core.config import ExperimentConfig, TrainConfig, resolve_config
from iiae.data.splits import held_out_indices
from iiae.engine.checkpoint_files import early_stopped_step, load_checkpoint
from iiae.engine.checkpointing import AtomicCheckpointIO, RunCheckpoint
from iiae.engine.selection import (
    PatienceStop,
    RetrievalSelection,
    selection_record,
)
from iiae.engine.training import IIAELightning
from iiae.errors import ConfigError
from iiae.runs.metrics import EarlyStoppingFacts, ImageRunMetrics, keys_of

TINY = {"model": {"image_size": 16, "encoder_widths": [8], "exclusive_widths": [8], "decoder_widths": [8]}}


def _table(shared: tuple[float, float], exclusive_hits: tuple[int, int]) -> dict[str, dict[str, float]]:
    """A synthetic retrieval table: shared top-1 % per direction, exclusive hits per direction."""

    def row(top1: float, hits: int) -> dict[str, float]:
        return {"top1": top1, "hits": hits, "recall_at_5": top1, "recall_at_10": top1, "median_rank": 1.0}

    return {"shared_x_to_y": row(shared[0], 0), "shared_y_to_x": row(shared[1], 0),
            "exclusive_x_to_y": row(0.0, exclusive_hits[0]), "exclusive_y_to_x": row(0.0, exclusive_hits[1])}  # fmt: skip


def _record(step: int, score: float, qualifies: bool = True) -> dict:
    return {"step": step, "score": score, "qualifies": qualifies}


# ------------------------------------------------------------------------------------------------------ the rule
def test_patience_counts_evaluations_without_improvement_and_an_improvement_resets_it():
    rule = PatienceStop(patience=2)
    assert not rule.update(_record(10, 50.0))  # the first qualifying evaluation improves
    assert not rule.update(_record(20, 40.0)) and rule.since_improvement == 1
    assert not rule.update(_record(30, 60.0)) and rule.since_improvement == 0  # improvement: reset
    assert (rule.reference, rule.reference_step) == (60.0, 30)
    assert not rule.update(_record(40, 60.0))  # a tie is no improvement
    assert rule.update(_record(50, 10.0)) and rule.since_improvement == 2  # patience reached


def test_min_delta_improvements_must_exceed_it_and_small_gains_add_up():
    rule = PatienceStop(patience=3, min_delta=1.0)
    rule.update(_record(1, 100.0))
    assert not rule.update(_record(2, 100.5)) and rule.since_improvement == 1  # within min_delta: no improvement
    assert not rule.update(_record(3, 101.0)) and rule.since_improvement == 2  # exactly min_delta: not more
    assert not rule.update(_record(4, 101.5)) and rule.since_improvement == 0  # 1.5 above the reference (100)
    assert rule.reference == 101.5


def test_non_qualifying_evaluations_count_only_once_one_qualified_and_patience_zero_never_stops():
    rule = PatienceStop(patience=1)
    assert not rule.update(_record(1, 200.0, qualifies=False)) and rule.since_improvement == 0  # nothing selected yet
    assert not rule.update(_record(2, 50.0))
    assert rule.update(_record(3, 200.0, qualifies=False))  # a better score whose exclusive codes leak: no improvement
    off = PatienceStop(patience=0)
    assert not any(off.update(_record(step, 0.0)) for step in range(1, 50))


def test_rule_state_round_trips_and_old_checkpoints_have_none():
    rule = PatienceStop(patience=4, min_delta=0.5)
    for step, score in ((5, 10.0), (10, 12.0), (15, 11.0)):
        rule.update(_record(step, score))
    rule.stopped_at = 15
    restored = PatienceStop(patience=4, min_delta=0.5)
    restored.load_state_dict(rule.state_dict())
    assert restored == rule
    fresh = PatienceStop(patience=4)
    fresh.load_state_dict({})  # a checkpoint written before early stopping existed
    assert fresh == PatienceStop(patience=4)
    assert early_stopped_step({"callbacks": {"RetrievalSelection": {"early_stop": rule.state_dict()}}}) == 15
    assert early_stopped_step({"callbacks": {"RetrievalSelection": {"history": []}}}) is None
    assert early_stopped_step({}) is None


# ---------------------------------------------------------------------------------------------------- the config
@pytest.mark.parametrize(
    ("train", "data", "message"),
    [
        ({"early_stop_patience": -1}, {}, "train.early_stop_patience must be >= 0"),
        ({"early_stop_patience": 2, "early_stop_min_delta": -0.5}, {}, "train.early_stop_min_delta must be >= 0"),
        ({"early_stop_min_delta": float("nan")}, {}, "train.early_stop_min_delta must be >= 0"),
        ({"early_stop_patience": 2, "select_every": 0}, {}, "needs train.select_every > 0"),
        ({"early_stop_patience": 2}, {"validation_fraction": 0.0}, "needs validation pairs"),
    ],
)
def test_config_refuses_impossible_early_stopping(train, data, message):
    config = ExperimentConfig()
    config.train = TrainConfig(**train)
    for key, value in data.items():
        setattr(config.data, key, value)
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_the_cli_says_a_bad_patience_in_one_line(tmp_path, capsys):
    expect_error(capsys, ["train", "--set", "train.early_stop_patience=-2", "--out", str(tmp_path / "run")],
                 "train.early_stop_patience must be >= 0")  # fmt: skip
    assert not (tmp_path / "run").exists()  # nothing written


def test_config_accepts_early_stopping_and_the_bundled_configs_set_it_as_documented():
    config = ExperimentConfig()
    config.train = TrainConfig(early_stop_patience=3, early_stop_min_delta=0.5)
    config.validate()
    assert resolve_config("mnist_cdcb").train.early_stop_patience == 0  # the main job trains all its steps
    full = resolve_config("mnist_cdcb_full").train
    assert full.early_stop_patience == 5 and full.select_every == 1000


def test_the_full_mnist_config_validates_among_as_many_pairs_as_it_tests():
    """Retrieval among more candidates is harder, so the full-MNIST protocol holds out exactly 10,000 of the
    60,000 training pairs: selection scores the same task as the 10,000 test pairs (BENCHMARKS.md)."""
    data = resolve_config("mnist_cdcb_full").data
    kept, held = held_out_indices(60_000, data.validation_fraction, data.split_seed)
    assert (len(kept), len(held)) == (50_000, 10_000)


# ---------------------------------------------------------------------------------------------- in the trainer
def test_the_trainer_stops_after_patience_and_checkpoints_the_stopping_step(tmp_path):
    """Scores 80, 100, 100, 90 every 2 steps with patience 2: the run stops after step 8 of 20, and the run
    checkpoint (the last callback) holds step 8 with the stop recorded."""
    torch.manual_seed(0)
    module = IIAELightning(TINY)
    pairs = TensorDataset(torch.rand(32, 3, 16, 16) * 2 - 1, torch.rand(32, 3, 16, 16) * 2 - 1)
    served = iter([_table((40, 40), (0, 0)), _table((50, 50), (0, 0)), _table((50, 50), (0, 0)),
                   _table((45, 45), (0, 0))])  # fmt: skip
    selection = RetrievalSelection(tmp_path / "checkpoints", every=2, measure=lambda model: next(served),
                                   early_stop=PatienceStop(patience=2))  # fmt: skip
    checkpoint = RunCheckpoint(tmp_path / "checkpoints", every=100, keep=1)
    trainer = Trainer(
        max_steps=20, max_epochs=-1, accelerator="cpu", logger=CSVLogger(tmp_path, name="", version="logs"),
        callbacks=[selection, checkpoint], plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, DataLoader(pairs, batch_size=8))
    assert trainer.global_step == 8 and selection.early_stop.stopped_at == 8
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8 and early_stopped_step(last) == 8
    assert load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 6  # the later of the tie


def _fake_trainer(step: int, decision: bool, world_size: int = 2) -> SimpleNamespace:
    calls = []

    def reduce_boolean_decision(value: bool, all: bool = True) -> bool:
        calls.append((value, all))
        return decision

    return SimpleNamespace(
        global_step=step, max_steps=100, world_size=world_size, loggers=[], should_stop=False, calls=calls,
        strategy=SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision),
        save_checkpoint=lambda path, weights_only: None,
    )  # fmt: skip


def test_under_ddp_all_processes_stop_when_any_one_decides_to():
    selection = RetrievalSelection("unused", every=5, measure=lambda model: _table((50, 50), (0, 0)),
                                   early_stop=PatienceStop(patience=3))  # fmt: skip
    module = SimpleNamespace(model=None)
    trainer = _fake_trainer(5, decision=True)  # this process improved; another one reached its patience
    selection.on_train_batch_end(trainer, module)
    assert trainer.calls == [(False, False)]  # "any process": all=False
    assert trainer.should_stop and selection.early_stop.stopped_at == 5
    assert "another process" in selection.early_stop.reason()
    alone = RetrievalSelection("unused", every=5, measure=lambda model: _table((50, 50), (0, 0)),
                               early_stop=PatienceStop(patience=1))  # fmt: skip
    alone.on_train_batch_end(trainer := _fake_trainer(5, decision=False), module)
    alone.on_train_batch_end(trainer := _fake_trainer(10, decision=False), module)
    assert trainer.calls == [(True, False)] and not trainer.should_stop  # no process may stop alone
    assert alone.early_stop.stopped_at is None


def test_a_run_resumed_after_its_stopping_step_stops_at_once():
    selection = RetrievalSelection("unused", every=5, measure=lambda model: {}, early_stop=PatienceStop(patience=1))
    selection.load_state_dict({"history": [], "best": None, "early_stop": {"stopped_at": 15, "since_improvement": 1}})
    trainer = _fake_trainer(15, decision=False, world_size=1)
    selection.on_train_start(trainer, None)
    assert trainer.should_stop


def test_selection_record_is_what_the_rule_reads():
    record = selection_record(4, _table((30, 20), (0, 3)), max_exclusive_hits=1)
    rule = PatienceStop(patience=1)
    assert not rule.update(record) and rule.reference is None  # not qualifying: nothing to stop at yet


# ----------------------------------------------------------------------------------------------- end to end
PATIENCE = ["--set", "train.max_exclusive_hits=null", "--set", "train.select_every=5",
            "--set", "train.early_stop_patience=3"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_idx_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data) -> tuple[Path, str, int]:
    """An uninterrupted tiny run that stops early; its folder, stderr and stopping step."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = run_cli(["train", "--out", str(out), *tiny_args(data), *PATIENCE])
    assert result.returncode == 0, result.stderr[-3000:]
    stop_step = json.loads((out / "metrics.json").read_text())["steps"]
    assert 20 <= stop_step < 30, stop_step  # the earliest stop: first evaluation at 5, then 3 without improvement
    return out, result.stderr, stop_step


@pytest.mark.slow
def test_a_tiny_run_stops_early_and_records_why(stopped, capsys):
    out, stderr, stop_step = stopped
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) <= keys_of(ImageRunMetrics), set(metrics) - keys_of(ImageRunMetrics)
    early = metrics["early_stopping"]
    assert set(early) <= keys_of(EarlyStoppingFacts), set(early) - keys_of(EarlyStoppingFacts)
    assert early["early_stopped"] is True and early["stopped_at_step"] == stop_step == metrics["steps"]
    assert early["patience"] == 3 and early["evaluations_without_improvement"] == 3
    assert early["last_improvement_step"] == stop_step - 15
    history = metrics["selection"]["history"]
    assert [record["step"] for record in history] == list(range(5, stop_step + 1, 5))
    replay = PatienceStop(patience=3)  # the recorded evaluations, through the rule: it stops at the last one
    assert [replay.update(record) for record in history] == [False] * (len(history) - 1) + [True]
    assert f"iiae: early stop at step {stop_step}: no improvement" in stderr  # the log says why
    assert f"Early stopping: **stopped at step {stop_step}**" in (out / "report.md").read_text()
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == stop_step
    with open(out / "logs" / "metrics.csv", newline="") as handle:
        assert max(int(row["step"]) for row in csv.DictReader(handle)) == stop_step  # nothing after the stop
    # finished: --resume refuses, even with more steps
    assert main_one_thread(["train", "--resume", str(out), "--steps", "60"]) == 2
    assert f"already finished: it stopped early at step {stop_step}" in capsys.readouterr().err


def _same_stopped_run(run: Path, reference: Path, stop_step: int) -> None:
    assert (run / "logs/metrics.csv").read_text() == (reference / "logs/metrics.csv").read_text()
    model_file = Path("model") / "model.safetensors"
    assert (run / model_file).read_bytes() == (reference / model_file).read_bytes()
    metrics, expected = (json.loads((folder / "metrics.json").read_text()) for folder in (run, reference))
    assert metrics["steps"] == expected["steps"] == stop_step
    assert metrics["early_stopping"] == expected["early_stopping"]
    assert metrics["selection"]["history"] == expected["selection"]["history"]


@pytest.mark.slow
def test_a_run_killed_before_its_stop_resumes_and_stops_at_the_same_step(tmp_path, data, stopped):
    reference, _, stop_step = stopped
    improved_at = json.loads((reference / "metrics.json").read_text())["early_stopping"]["last_improvement_step"]
    # killed between the last improvement and the stop: a resumed run that lost the counter would train on
    k = random.Random(14).randint(improved_at + 1, stop_step - 2)
    out = tmp_path / "killed"
    process = start_cli(SLOW_CLI, ["train", "--out", str(out), *tiny_args(data), *PATIENCE])
    wait_until(process, lambda: newest_step(out) >= k, f"a checkpoint of step >= {k}")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    killed_at = newest_step(out)
    assert not (out / "metrics.json").exists() and k <= killed_at < stop_step, killed_at
    assert main_one_thread(["train", "--resume", str(out)]) == 0, f"killed at step {killed_at}"
    _same_stopped_run(out, reference, stop_step)


# Stops the run after training (its stopping step checkpointed), before metrics.json: a kill lands there.
HANG_AFTER_TRAINING = """
import sys, time
from pathlib import Path
import iiae.runs.runner as runner
def hang(*args, **kwargs):
    Path(sys.argv[sys.argv.index("--out") + 1], "trained").touch()
    time.sleep(600)
runner.selected_model = hang
from iiae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_run_killed_after_its_stopping_step_finishes_without_training_more(tmp_path, data, stopped):
    reference, _, stop_step = stopped
    out = tmp_path / "killed"
    process = start_cli(HANG_AFTER_TRAINING, ["train", "--out", str(out), *tiny_args(data), *PATIENCE])
    wait_until(process, lambda: (out / "trained").exists(), "the end of training")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "metrics.json").exists()
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == stop_step
    assert main_one_thread(["train", "--resume", str(out)]) == 0
    _same_stopped_run(out, reference, stop_step)


# Runs the CLI with process 1 alone deciding to stop at step STOP_AT (its rule patched): under DDP process 0 must
# stop with it. A file, not ``python -c``: Lightning's launcher starts process 1 by running the same script again.
STOP_IN_ONE_PROCESS = """
import os, sys
import iiae.engine.selection as selection
update = selection.PatienceStop.update
def update_in_one_process(self, record):
    alone = record["step"] == int(os.environ["STOP_AT"]) and os.environ.get("LOCAL_RANK", "0") == "1"
    return update(self, record) or alone
selection.PatienceStop.update = update_in_one_process
from iiae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_stop_together_when_one_decides(tmp_path, data):
    script = tmp_path / "stop_cli.py"
    script.write_text(STOP_IN_ONE_PROCESS)
    out = tmp_path / "run"
    command = [sys.executable, str(script), "train", "--out", str(out), *tiny_args(data), "--steps", "20",
               "--set", "train.select_every=5", "--set", "train.early_stop_patience=100",
               "--devices", "2", "--strategy", "ddp"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                            env={**ONE_THREAD, "STOP_AT": "10"}, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 10
    assert metrics["early_stopping"]["early_stopped"] and metrics["early_stopping"]["stopped_at_step"] == 10
    assert "another process reached train.early_stop_patience" in metrics["early_stopping"]["reason"]  # process 0
    assert result.stderr.count("iiae: early stop at step 10") == 2, result.stderr[-3000:]  # both processes
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["global_step"] == 10
