"""Exact resume after a crash, atomic checkpoints, graceful SIGTERM, run locks, export and determinism.

Every run is the tiny configuration of ``tiny_runs`` (16x16 images, 30 steps, a checkpoint every step) in a
fresh process with one thread; a reference run that is never interrupted is the yardstick.
"""

from __future__ import annotations

import json
import random
import re
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import (
    SLOW_CLI,
    STEPS,
    main_one_thread,
    newest_step,
    run_cli,
    start_cli,
    tiny_args,
    tiny_idx_folder,
    wait_until,
)

from iiae import IIAE
from iiae.cli.main import main
from iiae.core.config import load_config
from iiae.engine.checkpoint_files import load_checkpoint, newest_checkpoint
from iiae.errors import OutputError
from iiae.runs.run_folder import RunLock


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_idx_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> Path:
    """A run of STEPS steps that nothing interrupts."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli(["train", "--out", str(out), *tiny_args(data)])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical weights (exported model and last checkpoint, optimiser included) and identical metrics."""
    model_file = Path("model") / "model.safetensors"
    assert (run / model_file).read_bytes() == (reference / model_file).read_bytes()
    ours, theirs = load_checkpoint(run / "checkpoints/last.ckpt"), load_checkpoint(reference / "checkpoints/last.ckpt")
    assert ours["global_step"] == theirs["global_step"] == STEPS
    for name, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], tensor), name
    for ours_state, theirs_state in zip(ours["optimizer_states"][0]["state"].values(),
                                        theirs["optimizer_states"][0]["state"].values()):  # fmt: skip
        for key, value in theirs_state.items():
            assert torch.equal(ours_state[key], value), key
    assert (run / "logs/metrics.csv").read_text() == (reference / "logs/metrics.csv").read_text()  # every loss term
    metrics, expected = (json.loads((folder / "metrics.json").read_text()) for folder in (run, reference))
    assert metrics["retrieval"] == expected["retrieval"] and metrics["steps"] == expected["steps"]


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, data, reference):
    k = random.Random(20201206).randint(3, STEPS - 8)  # seeded: a failure names a step that reproduces it
    out = tmp_path / "killed"
    process = start_cli(SLOW_CLI, ["train", "--out", str(out), *tiny_args(data)])
    wait_until(process, lambda: newest_step(out) >= k, f"a checkpoint of step >= {k}")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    killed_at = newest_step(out)
    assert k <= killed_at < STEPS, (k, killed_at)

    assert main_one_thread(["train", "--resume", str(out)]) == 0, f"killed at step {killed_at}"
    assert_same_run(out, reference)
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert len(list((out / "checkpoints").glob("step=*.ckpt"))) == 2  # keep_checkpoints, stale ones removed


@pytest.mark.slow
def test_sigkill_then_resume_with_tensorboard_logs_every_step_once(tmp_path, data, reference):
    """TensorBoard beside the CSV log: after a kill past a checkpoint and a resume, metrics.csv is the reference's
    byte for byte and TensorBoard shows exactly its rows (each step once, the lost steps' events dropped)."""
    from test_loggers import NO_TENSORBOARD, _csv_scalars, _scalars

    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)

    out = tmp_path / "killed"
    args = ["train", "--out", str(out), *tiny_args(data), "--set", "train.loggers=[csv, tensorboard]"]
    process = start_cli(SLOW_CLI, args)
    wait_until(process, lambda: newest_step(out) >= 9, "a checkpoint of step >= 9")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert newest_step(out) < STEPS and len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    assert main_one_thread(["train", "--resume", str(out)]) == 0
    assert (out / "logs/metrics.csv").read_text() == (reference / "logs/metrics.csv").read_text()
    shown = _scalars(out / "logs")
    assert shown == _csv_scalars(out / "logs/metrics.csv")
    assert [step for step, _ in shown["train/loss"]] == list(range(STEPS))


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_resume_auto_continues(tmp_path, data, reference, monkeypatch):
    out = tmp_path / "runs" / "mnist_cdcb-sigterm"  # --resume auto: the newest run of the config under runs/
    process = start_cli(SLOW_CLI, ["train", "--out", str(out), *tiny_args(data, checkpoint_every=7)], cwd=tmp_path)
    wait_until(process, lambda: newest_step(out) >= 7, "the first checkpoint")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last_line = stderr.strip().splitlines()[-1]
    stopped_at = int(re.search(r"after (\d+) steps", last_line).group(1))
    assert last_line == (
        f"iiae: stopped by SIGTERM after {stopped_at} steps, checkpoint written; "
        f"continue with: iiae train --resume {out}"
    )
    assert 7 <= stopped_at < STEPS
    assert load_checkpoint(out / "checkpoints/last.ckpt")["global_step"] == stopped_at  # not a multiple of 7 in general
    assert not (out / "metrics.json").exists()

    monkeypatch.chdir(tmp_path)
    assert main_one_thread(["train", "--resume", "auto", *tiny_args(data)[:4]]) == 0  # --data-* flags may be given
    assert_same_run(out, reference)  # the checkpoint cadence (7 vs 1) changes nothing either


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, data):
    out, marker = tmp_path / "run", tmp_path / "half-written"
    hang_at_step = 4
    script = SLOW_CLI.replace(
        "checkpointing.atomic_torch_save = slow_write",
        f"""import io, torch
real_save = torch.save
def hanging_save(obj, file):  # writes half of the step-{hang_at_step} checkpoint, then hangs until killed
    if isinstance(obj, dict) and obj.get("global_step") == {hang_at_step}:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        file.flush()
        open({str(marker)!r}, "w").close()
        time.sleep(600)
    real_save(obj, file)
torch.save = hanging_save""",
    )
    process = start_cli(script, ["train", "--out", str(out), *tiny_args(data)], IIAE_TEST_PAUSE="0")
    wait_until(process, marker.exists, "the half-written checkpoint")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    checkpoints = out / "checkpoints"
    partial = list(checkpoints.glob(".*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the interrupted write
    assert not (checkpoints / f"step={hang_at_step:08d}.ckpt").exists()
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == hang_at_step - 1  # the previous one, whole
    path, checkpoint = newest_checkpoint(out, load_config(out / "config.yaml"))
    assert checkpoint["global_step"] == hang_at_step - 1 and path.suffix == ".ckpt"


@pytest.mark.slow
def test_same_seed_and_config_give_identical_runs(tmp_path, data, reference):
    assert main_one_thread(["train", "--out", str(tmp_path / "again"), *tiny_args(data, checkpoint_every=10)]) == 0
    assert_same_run(tmp_path / "again", reference)  # in this process, the reference in another one


@pytest.mark.slow
def test_recoloured_epochs_resume_exactly_and_change_the_run(tmp_path, data):
    """data.recolour_every_epoch (without data.augment, the main job's default): a run stopped at step 12 (epoch 1
    of 8-batch epochs) and resumed to 30 ends bit-identical to one never stopped; and it trained on other colours
    than the fixed data set. (The augmented default is what ``reference`` and the other resume tests run.)"""
    fixed = [*tiny_args(data, checkpoint_every=6), "--set", "data.augment=false"]
    recolour = [*fixed, "--set", "data.recolour_every_epoch=true"]
    assert main_one_thread(["train", "--out", str(tmp_path / "fixed"), *fixed]) == 0
    assert main_one_thread(["train", "--out", str(tmp_path / "straight"), *recolour]) == 0
    assert main_one_thread(["train", "--out", str(tmp_path / "resumed"), *recolour, "--steps", "12"]) == 0
    assert main_one_thread(["train", "--resume", str(tmp_path / "resumed"), "--steps", str(STEPS)]) == 0
    assert_same_run(tmp_path / "resumed", tmp_path / "straight")
    losses = [path.read_text().splitlines() for path in (tmp_path / "straight" / "logs/metrics.csv",
                                                         tmp_path / "fixed" / "logs/metrics.csv")]  # fmt: skip
    assert losses[0][:9] == losses[1][:9]  # header and epoch 0 (steps 0-7): the same fixed pairs
    assert losses[0][10:] != losses[1][10:]


@pytest.mark.slow
def test_export_writes_a_safetensors_model_that_loads(tmp_path, reference, capsys):
    assert main(["export", str(reference), "--out", str(tmp_path / "exported")]) == 0
    model = IIAE.from_pretrained(tmp_path / "exported")
    expected = load_file(str(reference / "model" / "model.safetensors"))  # the run's selected model
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in expected.items())
    meta = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["iiae_version"]
    assert main(["export", str(reference), "--last", "--out", str(tmp_path / "last")]) == 0
    assert "step 30" in capsys.readouterr().out.splitlines()[-1]
    last = load_checkpoint(reference / "checkpoints" / "last.ckpt")["state_dict"]
    exported = IIAE.from_pretrained(tmp_path / "last").state_dict()
    assert all(torch.equal(tensor, last[f"model.{name}"]) for name, tensor in exported.items())
    assert main(["export", str(reference), "--out", str(tmp_path / "exported")]) == 2  # never overwrites


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_refuses(tmp_path, data, reference, monkeypatch):
    import iiae.runs.runner as runner
    from iiae.cli.main import make_parser
    from iiae.cli.options import build_config

    config = build_config(make_parser().parse_args(["train", *tiny_args(data), "--steps", "40"]))
    # resuming a run while another process holds it
    with RunLock(reference, new_run=False), pytest.raises(OutputError, match="in use by another iiae run"):
        runner.train_and_evaluate(config, reference, resume=True)
    # two runs started at once on one new folder: the second passed the emptiness check before the first locked
    out = tmp_path / "shared"
    real_check = runner.check_output_dir
    competitor = RunLock(out, new_run=True)

    def check_then_lose_the_race(folder):
        real_check(folder)
        competitor.__enter__()

    monkeypatch.setattr(runner, "check_output_dir", check_then_lose_the_race)
    with pytest.raises(OutputError, match="in use by another iiae run"):
        runner.train_and_evaluate(config, out)
    assert [p.name for p in out.iterdir()] == [".iiae.lock"]  # nothing of the second run
    competitor.__exit__()


def test_the_run_checkpoint_runs_after_every_other_callback(tmp_path):
    """RunCheckpoint relies on running last at the end of a step; Lightning moves it there, and it refuses
    any other order."""
    import lightning as L

    from iiae.engine.checkpointing import RunCheckpoint
    from iiae.engine.guards import GracefulStop

    checkpoint, stop = RunCheckpoint(tmp_path, every=1, keep=1), GracefulStop()
    trainer = L.Trainer(callbacks=[checkpoint, stop], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    assert trainer.callbacks.index(stop) < trainer.callbacks.index(checkpoint)

    class MisorderedTrainer:
        callbacks = [checkpoint, stop]

    with pytest.raises(RuntimeError, match="must be the last callback"):
        checkpoint.setup(MisorderedTrainer(), None, "fit")
