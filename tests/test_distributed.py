"""Several processes (Lightning DDP on CPU, gloo) train the model one process trains on the same global batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from iiae.config import TrainConfig
from iiae.distributed import GlobalBatchNorm, GlobalBatchNormSync, process_rank
from iiae.errors import ConfigError
from iiae.resume import EpochShuffleSampler
from tiny_runs import run_cli, tiny_idx_folder

DDP_STEPS = 20
TINY = [
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4", "--steps", str(DDP_STEPS),
    "--batch-size", "8", "--no-progress", "--accelerator", "cpu", "--set", "train.log_every=1",
    "--set", "train.eval_batch_size=32", "--set", "train.select_every=5",
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


def test_two_processes_match_one_process(tmp_path: Path) -> None:
    """2 CPU processes x 4 pairs = 1 process x 8 pairs: every loss term of 20 steps within 1e-5 (relative),
    the same model selection and the same final retrieval table; only process 0 wrote the run folder; and a
    2-process run resumed from its checkpoint continues exactly."""
    data = tiny_idx_folder(tmp_path / "data")
    common = ["--data-source", "idx", "--data-root", str(data), *TINY]
    one = run_cli(["train", *common, "--out", str(tmp_path / "one")], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = ["--devices", "2", "--strategy", "ddp"]
    two = run_cli(["train", *common, *ddp, "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("run folder:") == 1  # process 1 prints nothing

    single, double = _train_rows(tmp_path / "one"), _train_rows(tmp_path / "two")
    assert sorted(single) == sorted(double) == list(range(DDP_STEPS))
    for step, terms in single.items():
        assert terms.keys() == double[step].keys()
        for name, value in terms.items():
            assert double[step][name] == pytest.approx(value, rel=1e-5, abs=1e-5), (step, name)
    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics_two["processes"] == 2
    assert metrics_two["retrieval"] == metrics_one["retrieval"]
    assert metrics_two["selection"]["history"] == metrics_one["selection"]["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "one", "two"]  # nothing written elsewhere
    assert not (tmp_path / "two" / ".iiae.lock").exists()

    # a 2-process run of 10 steps (mid-epoch), resumed to 20 in 2 processes, ends as the run never stopped
    half = run_cli(["train", *common, *ddp, "--steps", "10", "--out", str(tmp_path / "resumed")], cwd=tmp_path)
    assert half.returncode == 0, half.stderr[-3000:]
    rest = run_cli(["train", *common, *ddp, "--resume", str(tmp_path / "resumed")], cwd=tmp_path)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert _train_rows(tmp_path / "resumed") == double
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["retrieval"] == metrics_two["retrieval"]


def test_flags_and_speed_switches_reach_the_run(tmp_path: Path) -> None:
    """--devices/--num-nodes/--strategy set the config; bf16-mixed and the contiguous layout train on CPU too."""
    from iiae.cli import build_config, make_parser

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
