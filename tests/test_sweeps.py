"""Several runs from one command line: --seeds, --sweep, their summary, and one clear error per bad value."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from iiae.cli.main import main
from iiae.core.config import ExperimentConfig
from iiae.data import write_idx
from iiae.errors import ConfigError
from iiae.runs.sweeps import (
    flatten_numbers,
    mean_and_std,
    parse_seeds,
    parse_sweep,
    plan_runs,
    run_sweep,
    summarise,
    summary_markdown,
)

TINY = [
    "--steps", "2", "--batch-size", "8", "--no-progress", "--accelerator", "cpu",
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4", "--set", "train.log_every=1",
    "--set", "train.eval_batch_size=32",
]  # fmt: skip


def test_parse_seeds_and_sweep():
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    assert parse_sweep("loss.lambda_=0,0.5,1,2") == ("loss.lambda_", [0, 0.5, 1, 2])
    assert parse_sweep("model.decoder_dropout=0.1") == ("model.decoder_dropout", [0.1])
    for bad in ("", "0,,1", "a", "-1", "1.5", "1,1"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    for bad in ("lambda", "loss.lambda_", "loss.lambda_=", "lambda_=1", "loss.lambda_=1,,2", "loss.lambda_=1,1"):
        with pytest.raises(ConfigError, match="--sweep"):
            parse_sweep(bad)


def test_plan_runs_folders_and_configs(tmp_path):
    runs = plan_runs(ExperimentConfig(), tmp_path, [3, 4], ("loss.lambda_", [0, 0.5]))
    assert [run.out_dir.relative_to(tmp_path).as_posix() for run in runs] == [
        "loss.lambda_=0/seed-3", "loss.lambda_=0/seed-4", "loss.lambda_=0.5/seed-3", "loss.lambda_=0.5/seed-4"
    ]  # fmt: skip
    assert [(run.config.loss.lambda_, run.config.train.seed) for run in runs] == [(0, 3), (0, 4), (0.5, 3), (0.5, 4)]
    assert [run.out_dir for run in plan_runs(ExperimentConfig(), tmp_path, None, ("loss.beta", [1]))] == [
        tmp_path / "loss.beta=1"
    ]
    assert [run.out_dir for run in plan_runs(ExperimentConfig(), tmp_path, [0], None)] == [tmp_path / "seed-0"]
    with pytest.raises(ConfigError, match="loss.lambda_ must be >= 0"):
        plan_runs(ExperimentConfig(), tmp_path, None, ("loss.lambda_", [1, -1]))
    with pytest.raises(ConfigError, match="unknown config key loss.nope"):
        plan_runs(ExperimentConfig(), tmp_path, None, ("loss.nope", [1]))


def _fake_metrics(value: float) -> dict:
    return {
        "retrieval": {"shared_x_to_y": {"top1": value, "hits": int(value), "count": 10}},
        "leakage": {"fit_pairs": 5, "digit_class": {"shared_x": 2 * value, "metric": "accuracy %"}},
        "translation_fidelity": {"class_accuracy": {"x_to_y": value + 1}, "classifier_from_cache": True},
        "training_seconds": 3.0,
    }


def test_flatten_mean_std_and_summary():
    assert flatten_numbers(_fake_metrics(4.0)) == {
        "retrieval.shared_x_to_y.top1": 4.0, "retrieval.shared_x_to_y.hits": 4.0,
        "leakage.digit_class.shared_x": 8.0, "translation_fidelity.class_accuracy.x_to_y": 5.0,
    }  # fmt: skip  (sizes, strings and booleans are left out)
    assert mean_and_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_and_std([5.0]) == (5.0, 0.0)
    runs = plan_runs(ExperimentConfig(), __import__("pathlib").Path("r"), [0, 1, 2], ("loss.lambda_", [0, 1]))
    summary = summarise(runs, [_fake_metrics(v) for v in (1, 2, 6, 10, 10, 10)], "loss.lambda_", [0, 1, 2])
    lambda_0, lambda_1 = summary["groups"]
    assert lambda_0["runs"] == 3 and lambda_0["seeds"] == [0, 1, 2] and lambda_0["sweep_value"] == 0
    top1 = lambda_0["metrics"]["retrieval.shared_x_to_y.top1"]
    assert top1["values"] == [1, 2, 6] and top1["mean"] == 3.0 and top1["std"] == pytest.approx(math.sqrt(7))
    assert lambda_1["metrics"]["leakage.digit_class.shared_x"] == {"mean": 20.0, "std": 0.0, "values": [20, 20, 20]}
    text = summary_markdown(summary)
    assert "| loss.lambda_ | runs |" in text and "| 0 | 3 | 3.0 ± 2.6 |" in text and "plain joint VAE" in text
    partial = summarise(runs, [_fake_metrics(1)], "loss.lambda_", [0, 1, 2])
    assert partial["finished_runs"] == 1 and partial["planned_runs"] == 6 and len(partial["groups"]) == 1


def test_run_sweep_writes_a_summary_after_every_run(tmp_path):
    calls = []

    def fake_train(config, out_dir, progress=True):
        calls.append((config.loss.lambda_, config.train.seed, out_dir))
        out_dir.mkdir(parents=True)
        return _fake_metrics(config.loss.lambda_ * 10 + config.train.seed)

    summary = run_sweep(ExperimentConfig(), tmp_path / "s", [0, 1], ("loss.lambda_", [0, 2]), train=fake_train,
                        echo=lambda line: None)  # fmt: skip
    assert [(lam, seed) for lam, seed, _ in calls] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    written = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary)) and written["finished_runs"] == 4
    assert [group["metrics"]["retrieval.shared_x_to_y.top1"]["mean"] for group in written["groups"]] == [0.5, 20.5]
    assert (tmp_path / "s" / "summary.md").read_text().startswith("# IIAE sweep summary")


def _idx_folder(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 48), ("t10k", 24)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count, dtype=np.uint8))
    return folder


@pytest.mark.slow
def test_seeds_and_sweep_end_to_end(tmp_path, capsys):
    """Two real tiny runs (--sweep with one value and --seeds 0,1): folders, metrics, summary mean and std."""
    data, out = _idx_folder(tmp_path / "digits"), tmp_path / "sweep"
    argv = ["train", "--out", str(out), "--data-source", "idx", "--data-root", str(data), *TINY,
            "--seeds", "0,1", "--sweep", "loss.lambda_=0.5"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "summary.md" in printed and "| loss.lambda_ | runs |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished_runs"] == 2 and summary["run_dir"] == str(out)
    (group,) = summary["groups"]
    assert group["group"] == "loss.lambda_=0.5" and group["runs"] == 2 and group["seeds"] == [0, 1]
    runs = [json.loads((out / "loss.lambda_=0.5" / f"seed-{seed}" / "metrics.json").read_text()) for seed in (0, 1)]
    flat = [flatten_numbers(metrics) for metrics in runs]
    assert set(group["metrics"]) == set(flat[0]) | set(flat[1])  # every retrieval, fidelity and leakage number
    assert any(key.startswith("leakage.digit_class.") for key in flat[0])
    assert any(key.startswith("translation_fidelity.colour_error.") for key in flat[0])
    for key in group["metrics"]:
        values = [numbers[key] for numbers in flat if key in numbers]  # undefined ones (None) are left out
        assert group["metrics"][key]["values"] == values
        assert group["metrics"][key]["mean"] == pytest.approx(np.mean(values))
        assert group["metrics"][key]["std"] == pytest.approx(np.std(values, ddof=1))
    for seed in (0, 1):
        config = (out / "loss.lambda_=0.5" / f"seed-{seed}" / "config.yaml").read_text()
        assert "lambda_: 0.5" in config and f"seed: {seed}" in config
    assert "## Every number" in (out / "summary.md").read_text()
    assert "## Leakage" in (out / "loss.lambda_=0.5" / "seed-0" / "report.md").read_text()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--seeds", "0,a"], "--seeds expects"),
        (["--seeds", "1,1"], "lists a seed twice"),
        (["--sweep", "loss.lambda_"], "--sweep expects"),
        (["--sweep", "loss.nope=1,2"], "unknown config key loss.nope"),
        (["--sweep", "loss.lambda_=1,-1"], "loss.lambda_ must be >= 0"),
        (["--seeds", "0,1", "--seed", "3"], "--seed and --seeds"),
    ],
)
def test_bad_seeds_and_sweeps_give_one_error_line(tmp_path, capsys, flags, fragment):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("iiae: error:") and len(error.splitlines()) == 1 and fragment in error, error
    assert not out.exists()
