"""Several processes (Lightning DDP on CPU, gloo) train the model one process trains on the same global batch."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import ONE_THREAD, SLOW_CLI, run_cli, tiny_idx_folder
from torch import nn

from iiae.core.config import TrainConfig
from iiae.engine.distributed import GlobalBatchNorm, GlobalBatchNormSync, process_rank
from iiae.engine.resume import EpochShuffleSampler
from iiae.errors import ConfigError

pytestmark = pytest.mark.slow  # several processes and DDP runs: minutes on 2 cores

DDP_STEPS = 20
TINY = [
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4", "--steps", str(DDP_STEPS),
    "--batch-size", "8", "--no-progress", "--accelerator", "cpu", "--set", "train.log_every=1",
    "--set", "train.eval_batch_size=32", "--set", "train.select_every=5",
    # the main job's augmented pairs (drawn from (seed, epoch) keys under the process blocks), with the squared
    # error: the L1 loss's gradient at a residual of exactly 0 is 0 (else +-1), and when one pixel's reconstruction
    # equals its target exactly in one run but is one float step off in the other, that pixel's gradient differs by
    # 1/N and the runs drift apart to about 1e-4 (measured: with L1, step 7 of this run; BENCHMARKS.md)
    "--set", "data.augment=true", "--set", "loss.reconstruction=mse",
]  # fmt: skip


def test_process_blocks_make_up_the_single_process_batches() -> None:
    """Each process takes its block of every global batch; together they are the single process's batches."""
    for epoch in (0, 1):
        single = EpochShuffleSampler(29, seed=3)
        single.set_epoch(epoch)
        order = list(single)
        shards = []
        for rank in range(2):
            sampler = EpochShuffleSampler(29, seed=3, rank=rank, world=2, batch_size=4)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(shards[-1]) == len(sampler) == 12  # 3 global batches of 8; the last 5 pairs are dropped
        for batch in range(3):
            blocks = shards[0][4 * batch : 4 * batch + 4] + shards[1][4 * batch : 4 * batch + 4]
            assert blocks == order[8 * batch : 8 * batch + 8]
    assert shards != [list(range(12)), list(range(12, 24))]  # reshuffled (epoch 1 differs from identity)


def test_global_batch_norm_alone_is_batch_norm() -> None:
    """One process: the converted layers compute what BatchNorm computes, and convert back to their classes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5))
    x = torch.randn(6, 3, 8, 8)
    expected = model(x)
    converted = GlobalBatchNormSync().apply(model)
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[4], GlobalBatchNorm)
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    reverted = GlobalBatchNormSync().revert(converted)
    assert type(reverted[1]) is nn.BatchNorm2d and type(reverted[4]) is nn.BatchNorm1d


def test_global_batch_must_divide_among_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="divisible by train.devices x train.num_nodes = 3"):
        TrainConfig(batch_size=8, devices=3).validate()
    monkeypatch.setenv("RANK", "3")
    assert process_rank() == 3
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("NODE_RANK", "1")
    assert process_rank(devices=2) == 3


def _train_rows(run: Path) -> dict[int, dict[str, float]]:
    with (run / "logs" / "metrics.csv").open(newline="", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    return {int(row["step"]): {k: float(v) for k, v in row.items() if k.startswith("train/") and v} for row in rows}


DDP = ["--devices", "2", "--strategy", "ddp"]

# Runs the CLI with a NaN put into the logged term mse_x (TINY's reconstruction term; the loss and the gradients
# stay finite) at step NAN_STEP in process NAN_RANK only: the case where processes could disagree about a step.
# A file, not ``python -c``: Lightning's launcher starts process 1 by running the same script again.
NAN_IN_ONE_PROCESS = """
import os, sys
import iiae.engine.training as training
loss = training.iiae_loss
def loss_with_a_nan_term(*args, step, **kwargs):
    terms = loss(*args, step=step, **kwargs)
    if step == int(os.environ["NAN_STEP"]) and os.environ.get("LOCAL_RANK", "0") == os.environ["NAN_RANK"]:
        terms["mse_x"] = terms["mse_x"] * float("nan")
    return terms
training.iiae_loss = loss_with_a_nan_term
from iiae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny data folder, the run of one process (``one``) and of two (``two``) on it."""
    root = tmp_path_factory.mktemp("ddp")
    data = tiny_idx_folder(root / "data")
    for name, extra in (("one", []), ("two", DDP)):
        run = run_cli(["train", *_common(data), *extra, "--out", str(root / name)], cwd=root)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count("run folder:") == 1  # process 1 prints nothing
    return root


def _common(data: Path) -> list[str]:
    return ["--data-source", "idx", "--data-root", str(data), *TINY]


def _assert_rows_match(rows: dict[int, dict[str, float]], expected: dict[int, dict[str, float]]) -> None:
    assert sorted(rows) == sorted(expected) == list(range(DDP_STEPS))
    for step, terms in expected.items():
        assert terms.keys() == rows[step].keys()
        for name, value in terms.items():
            assert rows[step][name] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), (step, name)


def test_two_processes_match_one_process(runs: Path, tmp_path: Path) -> None:
    """2 CPU processes x 4 pairs = 1 process x 8 pairs: every loss term of 20 steps within 1e-5 (relative),
    the same model selection and the same final retrieval table; only process 0 wrote the run folder; and a
    2-process run resumed from its checkpoint continues exactly."""
    single, double = _train_rows(runs / "one"), _train_rows(runs / "two")
    _assert_rows_match(double, single)
    metrics_one = json.loads((runs / "one" / "metrics.json").read_text())
    metrics_two = json.loads((runs / "two" / "metrics.json").read_text())
    assert metrics_two["processes"] == 2
    assert metrics_two["retrieval"] == metrics_one["retrieval"]
    assert metrics_two["selection"]["history"] == metrics_one["selection"]["history"]
    assert sorted(p.name for p in runs.iterdir()) == ["data", "one", "two"]  # nothing written elsewhere
    assert not (runs / "two" / ".iiae.lock").exists()

    # a 2-process run of 10 steps (mid-epoch), resumed to 20 in 2 processes, ends as the run never stopped
    common = _common(runs / "data")
    half = run_cli(["train", *common, *DDP, "--steps", "10", "--out", str(tmp_path / "resumed")], cwd=tmp_path)
    assert half.returncode == 0, half.stderr[-3000:]
    rest = run_cli(["train", *common, *DDP, "--resume", str(tmp_path / "resumed")], cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert _train_rows(tmp_path / "resumed") == double
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["retrieval"] == metrics_two["retrieval"]


def test_torchrun_launch_trains_what_lightnings_launcher_trains(runs: Path, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m iiae.cli.main train --devices 2 ...`` (the README's multi-node form, one node)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*torchrun, "-m", "iiae.cli.main", "train", *_common(runs / "data"), *DDP, "--out", str(tmp_path / "run")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _train_rows(tmp_path / "run") == _train_rows(runs / "two")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["retrieval"] == json.loads((runs / "two" / "metrics.json").read_text())["retrieval"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_two_nodes_train_what_one_node_of_two_processes_trains(runs: Path, tmp_path: Path, launcher: str) -> None:
    """The README's multi-node launches, with two "nodes" of one process on this machine sharing the run folder:
    Lightning's launcher (MASTER_ADDR, MASTER_PORT, NODE_RANK) and torchrun --nnodes 2. Only node 0 writes."""
    port = _free_port()
    train = ["train", *_common(runs / "data"), "--devices", "1", "--num-nodes", "2", "--strategy", "ddp",
             "--out", str(tmp_path / "run")]  # fmt: skip
    nodes = []
    for node in (0, 1):
        if launcher == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                       "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                       "-m", "iiae.cli.main", *train]  # fmt: skip
            env = ONE_THREAD
        else:
            command = [sys.executable, "-m", "iiae.cli.main", *train]
            env = {**ONE_THREAD, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node)}
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=tmp_path))  # fmt: skip
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    assert outputs[0][0].count("run folder:") == 1 and "run folder:" not in outputs[1][0]  # node 1 prints nothing
    assert _train_rows(tmp_path / "run") == _train_rows(runs / "two")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["retrieval"] == json.loads((runs / "two" / "metrics.json").read_text())["retrieval"]


def test_a_sigkilled_two_process_run_resumes_exactly(runs: Path, tmp_path: Path) -> None:
    """SIGKILL of the launching process mid-run: no process is left behind, and --resume in 2 processes logs
    the losses of the run that was never stopped."""
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    out = tmp_path / "killed"
    args = [*_common(runs / "data"), *DDP, "--set", "train.checkpoint_every=1", "--out", str(out)]
    process = subprocess.Popen([sys.executable, str(script), "train", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={**ONE_THREAD, "IIAE_TEST_PAUSE": "0.3"},
                               cwd=tmp_path)  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(int(path.name[5:-5]) >= 8 for path in out.glob("checkpoints/step=*.ckpt")):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint of step 8 within 2 minutes"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (out / "metrics.json").exists()
    for _ in range(100):  # process 1 notices that process 0 is gone (its pipe to the launcher closes)
        if str(script) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("a training process outlived the SIGKILL of the launcher by 10 s")
    rest = run_cli(["train", *_common(runs / "data"), *DDP, "--resume", str(out)], cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert _train_rows(out) == _train_rows(runs / "two")
    assert json.loads((out / "metrics.json").read_text())["retrieval"] == json.loads(
        (runs / "two" / "metrics.json").read_text()
    )["retrieval"]


def test_a_nan_in_one_process_skips_the_step_in_every_process(runs: Path, tmp_path: Path) -> None:
    """A NaN seen by process 1 only: both processes skip that step (their weights stay equal, so the run logs
    what one process logs when it skips the same step); with no skips allowed both stop, none hangs."""
    script = tmp_path / "nan_cli.py"
    script.write_text(NAN_IN_ONE_PROCESS)
    skip = ["--set", "train.skip_nonfinite_steps=1"]

    def run(name: str, nan_rank: int, extra: list[str]) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script), "train", *_common(runs / "data"), *extra, "--out", str(tmp_path / name)]
        env = {**ONE_THREAD, "NAN_STEP": "5", "NAN_RANK": str(nan_rank)}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)

    one = run("one", 0, skip)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run("two", 1, [*DDP, *skip])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "step 5: loss term mse_x is NaN; step skipped" in two.stderr  # process 1
    assert "step 5: a loss term or gradient of another process is NaN or infinite; step skipped" in two.stderr
    _assert_rows_match(_train_rows(tmp_path / "two"), _train_rows(tmp_path / "one"))
    skipped, unskipped = _train_rows(tmp_path / "one"), _train_rows(runs / "one")
    assert all(skipped[step]["train/loss"] != unskipped[step]["train/loss"] for step in range(6, DDP_STEPS))

    stopped = run("stopped", 1, DDP)
    assert stopped.returncode != 0
    assert stopped.stderr.count("iiae: error: step 5 (numbered as in logs/metrics.csv)") == 2, stopped.stderr[-3000:]


def test_flags_and_speed_switches_reach_the_run(tmp_path: Path) -> None:
    """--devices/--num-nodes/--strategy set the config; bf16-mixed and the contiguous layout train on CPU too."""
    from iiae.cli.main import make_parser
    from iiae.cli.options import build_config

    flags = ["train", "--devices", "2", "--num-nodes", "3", "--strategy", "ddp", "--batch-size", "12"]
    train = build_config(make_parser().parse_args(flags)).train
    assert (train.devices, train.num_nodes, train.strategy) == (2, 3, "ddp")
    assert (train.precision, train.channels_last, train.compile) == ("32-true", True, False)  # defaults
    data = tiny_idx_folder(tmp_path / "data")
    switches = ["--set", "train.precision=bf16-mixed", "--set", "train.channels_last=false", "--steps", "3"]
    tiny = ["--data-source", "idx", "--data-root", str(data), *TINY]
    run = run_cli(["train", *tiny, *switches, "--out", str(tmp_path / "run")])
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 3


def test_strategies_other_than_ddp_are_refused_in_one_line(tmp_path: Path) -> None:
    """ddp_spawn crashed with a traceback (it cannot pickle the run's callbacks); fsdp/deepspeed would break the
    checkpoints: both are refused before anything is written."""
    from iiae.cli.main import make_parser
    from iiae.cli.options import build_config

    with pytest.raises(ConfigError, match="train.strategy must be one of auto, ddp; got 'fsdp'"):
        build_config(make_parser().parse_args(["train", "--set", "train.strategy=fsdp"]))
    run = run_cli(["train", "--strategy", "ddp_spawn", "--out", str(tmp_path / "run")])
    assert run.returncode == 2 and "invalid choice: 'ddp_spawn'" in run.stderr and len(run.stderr.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_gpus_this_machine_lacks_are_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--accelerator gpu without a GPU (or more --devices than GPUs) was a Lightning traceback after config.yaml
    had been written (in zs-sbir, after the feature stage); now one line, exit 2, no folder."""
    from iiae.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--accelerator", "gpu", "--out", str(out)]) == 2
    assert "train.accelerator gpu: no CUDA GPU is visible here" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["train", "--accelerator", "auto", "--devices", "2", "--out", str(out)]) == 2
    assert "train.devices = 2 GPUs per node requested, this machine has 1" in capsys.readouterr().err
    assert not out.exists()

    from iiae.zsbir.config import load_zs_config
    from iiae.zsbir.train import run_zs_sbir

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    zs = load_zs_config("zs_sketchy")
    zs.train.accelerator = "gpu"
    with pytest.raises(ConfigError, match="no CUDA GPU is visible here"):  # before the feature stage (minutes)
        run_zs_sbir(zs, tmp_path / "zs")
    assert not (tmp_path / "zs").exists()
