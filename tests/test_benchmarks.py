"""The benchmark scripts run (tiny sizes; the figures themselves are in BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import ONE_THREAD

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_MODEL = [
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4",
]  # fmt: skip


@pytest.mark.slow
def test_throughput_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    args = ["--synthetic", "--batch-size", "8", "--steps", "1", "--rounds", "1", "--ablation", *TINY_MODEL,
            "--json", str(out)]  # fmt: skip
    run = subprocess.run([sys.executable, str(BENCHMARKS / "throughput.py"), *args], capture_output=True, text=True,
                         env=ONE_THREAD, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["image_size"] == 16 and results["batch_size"] == 8 and results["data"] == "synthetic"
    for key in ("pairs_per_second_tensors", "pairs_per_second_loader", "loader_to_tensor_ratio", "gflop_per_step",
                "achieved_gflops", "gemm_peak_gflops", "utilisation"):  # fmt: skip
        assert results[key] > 0, key
    assert results["channels_last"] is True and results["fused_adam"] is True  # the run's defaults are timed
    assert [row["variant"].split(" ")[0] for row in results["ablation"]] == ["plain", "+", "+", "+"]
    assert all(row["ms_per_step"] > 0 and row["utilisation"] > 0 for row in results["ablation"])


def test_time_to_accuracy_curve() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from mnist_cdcb_full import first_time_at, time_to_accuracy_curve
    finally:
        sys.path.remove(str(BENCHMARKS))
    history = [{"step": step, "top1": {"shared_x_to_y": x, "shared_y_to_x": y}}
               for step, x, y in ((100, 50.0, 40.0), (200, 99.5, 98.9), (300, 99.2, 99.0))]  # fmt: skip
    curve = time_to_accuracy_curve({"history": history}, training_seconds=60.0, steps=300)
    assert [point["seconds"] for point in curve] == [20.0, 40.0, 60.0]
    assert first_time_at(curve, 99.0) == 60.0 and first_time_at(curve, 99.9) is None


def test_validation_resolution_scores_a_subset_among_itself() -> None:
    """Pair 1's X code lies nearest pair 2's Y code: a miss X->Y among all three pairs, none among pairs 0 and 1,
    and Y->X finds every partner (misses per 1,000 queries)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from validation_resolution import misses_per_1000
    finally:
        sys.path.remove(str(BENCHMARKS))
    shared_y = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 3.0]], dtype=torch.float64)
    shared_x = torch.tensor([[0.0, 0.1], [10.0, 1.9], [10.0, 3.5]], dtype=torch.float64)
    assert misses_per_1000(shared_x, shared_y, np.array([0, 1, 2])) == pytest.approx((1000 / 3, 0.0))
    assert misses_per_1000(shared_x, shared_y, np.array([0, 1])) == (0.0, 0.0)


@pytest.mark.slow
def test_cdcb_generator_benchmark_times_both_generators(tmp_path: Path) -> None:
    out = tmp_path / "generators.json"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "cdcb_generator.py"), "--count", "300", "--oracle-pairs",
                          "500", "--json", str(out)], capture_output=True, text=True, env=ONE_THREAD, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["count"] == 300 and results["seconds_classic"] > 0 and results["seconds_published_like"] > 0
    published, classic = results["statistics_published_like"], results["statistics_classic"]
    assert classic["mask_correlation_x_y"] == pytest.approx(1.0) and published["mask_correlation_x_y"] < 0.98
    # The mask oracle: the classic generator's one mask finds every partner; the published-like per-domain strokes
    # make some pairs' masks closer to another pair's (most of them 1s), and blurring recovers part of them.
    oracle_classic, oracle_published = results["mask_oracle_classic"], results["mask_oracle_published_like"]
    assert oracle_classic["pairs"] == oracle_published["pairs"] == 500
    assert all(oracle_classic[blur]["x_to_y"] == oracle_classic[blur]["y_to_x"] == 100.0
               for blur in ("blur_0", "blur_0.7", "blur_1", "blur_1.5", "blur_2"))  # fmt: skip
    raw, blurred = oracle_published["blur_0"], oracle_published["blur_1"]
    assert min(raw["x_to_y"], raw["y_to_x"]) < 100.0 and sum(raw["missed_digits"]) > 0
    assert blurred["x_to_y"] + blurred["y_to_x"] >= raw["x_to_y"] + raw["y_to_x"]
    assert {f"mask_oracle_strokes_{kind}" for kind in ("thinner", "thicker", "swapped")} <= results.keys()
