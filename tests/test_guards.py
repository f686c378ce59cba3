"""Numerical safety: NaN/Inf in the loss stops (or skips) training and leaves the last good checkpoint intact;
the log-variance clamps keep every KL finite for extreme encoder outputs."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import tiny_args, tiny_idx_folder

import iiae.engine.training
from iiae.cli.main import main, make_parser
from iiae.cli.options import build_config
from iiae.core.objective import (
    LOGVAR_MIN,
    kl_between,
    kl_to_standard_normal,
    split_gaussian,
)
from iiae.engine.checkpoint_files import load_checkpoint, newest_checkpoint
from iiae.engine.guards import NonFiniteGuard
from iiae.errors import NonFiniteError
from iiae.runs.runner import train_and_evaluate

BAD_STEP = 5


@pytest.fixture
def nan_at_step(monkeypatch):
    """kl_joint (and so the loss) becomes NaN at step BAD_STEP."""
    real_loss = iiae.engine.training.iiae_loss

    def loss_with_a_nan(*args, step, **kwargs):
        terms = real_loss(*args, step=step, **kwargs)
        if step == BAD_STEP:
            terms["kl_joint"] = terms["kl_joint"] * float("nan")
            terms["loss"] = terms["loss"] + terms["kl_joint"]
        return terms

    monkeypatch.setattr(iiae.engine.training, "iiae_loss", loss_with_a_nan)


def _config(tmp_path, *extra):
    data = tiny_idx_folder(tmp_path / "data")
    args = ["train", *tiny_args(data, checkpoint_every=2), "--steps", "10", *extra]
    return build_config(make_parser().parse_args(args))


def test_a_nan_loss_stops_naming_the_step_and_term_and_keeps_the_last_checkpoint(tmp_path, nan_at_step, one_thread):
    config, out = _config(tmp_path), tmp_path / "run"
    with pytest.raises(NonFiniteError, match=rf"step {BAD_STEP} .*loss term kl_joint is NaN") as error:
        train_and_evaluate(config, out, progress=False)
    assert "train.skip_nonfinite_steps" in str(error.value) and len(str(error.value).splitlines()) == 1
    path, checkpoint = newest_checkpoint(out, config)  # loads: every tensor finite (load_checkpoint checks)
    assert path.name == "last.ckpt" and checkpoint["global_step"] == 4  # the last step checkpointed before the NaN
    assert not (out / "model").exists() and not (out / "metrics.json").exists()


def test_the_cli_reports_a_nan_in_one_line(tmp_path, nan_at_step, one_thread, capsys):
    data = tiny_idx_folder(tmp_path / "data")
    assert main(["train", "--out", str(tmp_path / "run"), *tiny_args(data), "--steps", "8"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("iiae: error: step 5 (numbered as in logs/metrics.csv): loss term kl_joint is NaN")


def test_skipping_nonfinite_steps_up_to_a_limit(tmp_path, nan_at_step, one_thread, capsys):
    config, out = _config(tmp_path, "--set", "train.skip_nonfinite_steps=1"), tmp_path / "run"
    metrics = train_and_evaluate(config, out, progress=False)
    assert metrics["steps"] == 10
    assert f"step {BAD_STEP}: loss term kl_joint is NaN; step skipped (1 of" in capsys.readouterr().err
    last = load_checkpoint(out / "checkpoints/last.ckpt")  # finite weights and batch-norm statistics
    assert last["callbacks"]["NonFiniteGuard"]["skipped"] == 1


def test_a_nonfinite_gradient_is_named():
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    assert NonFiniteGuard.find_problem(layer) is None
    layer.weight.grad[0, 1] = float("inf")
    assert NonFiniteGuard.find_problem(layer) == "gradient of weight is infinite"
    layer.last_terms = {"loss": torch.tensor(float("nan")), "l1_x": torch.tensor(float("nan"))}
    assert NonFiniteGuard.find_problem(layer) == "loss term l1_x is NaN"  # the term that went bad, not the total


def test_kls_stay_finite_for_extreme_encoder_outputs():
    for mean in (0.0, 1e3, 1e6, -1e6):
        for logvar_q in (9.21, 50.0, -20.0, -100.0, -1e4, float("-inf")):
            for logvar_r in (9.21, 1e4, -30.0, -100.0, -1e4):
                _check_kls(mean, logvar_q, logvar_r)


def _check_kls(mean: float, logvar_q: float, logvar_r: float) -> None:
    case = f"mean {mean}, logvar q {logvar_q}, logvar r {logvar_r}"
    raw_q = torch.cat([torch.full((2, 3, 2, 2), mean), torch.full((2, 3, 2, 2), logvar_q)], dim=1).requires_grad_()
    raw_r = torch.cat([torch.full((2, 3, 2, 2), -mean), torch.full((2, 3, 2, 2), logvar_r)], dim=1).requires_grad_()
    q, r = split_gaussian(raw_q, logvar_max=9.21), split_gaussian(raw_r, logvar_max=9.21)
    assert LOGVAR_MIN <= float(q.logvar.detach().min()) and float(q.logvar.detach().max()) <= 9.21 + 1e-5, case
    for kl in (kl_to_standard_normal(q), kl_between(q, r), kl_between(r, q), kl_between(q, q)):
        value = float(kl.detach())
        assert torch.isfinite(kl) and value >= -1e-3 * (1 + abs(value)), case
        gradients = torch.autograd.grad(kl, [raw_q, raw_r], allow_unused=True, retain_graph=True)
        assert all(gradient is None or torch.isfinite(gradient).all() for gradient in gradients), case


def test_ctrl_c_finishes_the_step_then_stops_and_a_second_one_stops_at_once(capsys):
    import os
    import signal

    from iiae.engine.guards import GracefulStop
    from iiae.errors import RunInterrupted

    class Trainer:
        global_step = 7

    stop, trainer = GracefulStop(resume_hint="iiae train --resume runs/x"), Trainer()
    before = signal.getsignal(signal.SIGINT)
    stop.on_train_start(trainer, None)
    try:
        stop.on_train_batch_start(trainer, None, None, 0)  # nothing requested: the step runs
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the step: no KeyboardInterrupt
        assert "SIGINT received: finishing the current step" in capsys.readouterr().err
        stop.on_train_batch_end(trainer, None, None, None, 0)  # the checkpoint callback sees stop.stopping
        assert stop.stopping
        with pytest.raises(RunInterrupted, match="stopped by SIGINT after 7 steps.*--resume runs/x") as error:
            stop.on_train_batch_start(trainer, None, None, 0)
        assert error.value.exit_status == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C
    finally:
        stop.on_exception(trainer, None, RuntimeError())
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
