"""Does a 2-process DDP run log what one process logs, step by step, and where do they part (issue 14)?

    python benchmarks/ddp_agreement.py                        # the main job's L1 loss and augmented pairs
    python benchmarks/ddp_agreement.py --reconstruction mse   # the same with the squared error

Trains the tiny 16x16 model of tests/test_distributed.py on random IDX digits (64 training images) for 20 steps of
global batch 8, once in one process and once in two (``--devices 2 --strategy ddp``, gloo), each with
OMP_NUM_THREADS=1. Printed per step: the largest relative difference of the logged loss terms, and in how many
pixels of the global batch a reconstruction equals its target exactly (per run). The L1 loss's gradient there is 0
instead of +-1: one such pixel in one run only is enough for the two runs' gradients to differ.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from iiae.data.idx import write_idx

# Runs the CLI with the loss wrapped to append, per step, the pixels whose reconstruction equals the target.
COUNTING_CLI = """
import os, sys
import iiae.engine.training as training
loss = training.iiae_loss
def counting(target_x, target_y, reconstruction_x, reconstruction_y, *args, step, **kwargs):
    exact = ((reconstruction_x == target_x).sum() + (reconstruction_y == target_y).sum()).item()
    with open(os.environ["EXACT_LOG"] + "." + os.environ.get("LOCAL_RANK", "0"), "a") as file:
        file.write(f"{step} {exact}\\n")
    return loss(target_x, target_y, reconstruction_x, reconstruction_y, *args, step=step, **kwargs)
training.iiae_loss = counting
from iiae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
STEPS = 20
TINY = [
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4", "--steps", str(STEPS),
    "--batch-size", "8", "--no-progress", "--accelerator", "cpu", "--set", "train.log_every=1",
    "--set", "train.eval_batch_size=32", "--set", "train.select_every=5",
]  # fmt: skip


def logged_terms(run: Path) -> dict[int, dict[str, float]]:
    with (run / "logs" / "metrics.csv").open(newline="", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    return {int(row["step"]): {k: float(v) for k, v in row.items() if k.startswith("train/") and v} for row in rows}


def exact_pixels(log_prefix: Path) -> dict[int, int]:
    """Per step, the exact pixels summed over the processes' logs."""
    counts: dict[int, int] = {}
    for log in log_prefix.parent.glob(log_prefix.name + ".*"):
        for line in log.read_text().splitlines():
            step, exact = map(int, line.split())
            counts[step] = counts.get(step, 0) + exact
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reconstruction", choices=["l1", "mse"], default="l1")
    parser.add_argument("--augment", choices=["true", "false"], default="true", help="data.augment")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rng = np.random.default_rng(0)
        for prefix, count in (("train", 64), ("t10k", 32)):
            write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28), dtype=np.uint8))
            write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count, dtype=np.uint8))
        (root / "counting_cli.py").write_text(COUNTING_CLI)
        common = ["train", "--data-source", "idx", "--data-root", str(root), *TINY,
                  "--set", f"loss.reconstruction={args.reconstruction}", "--set", f"data.augment={args.augment}"]  # fmt: skip
        exact = {}
        for name, extra in (("one", []), ("two", ["--devices", "2", "--strategy", "ddp"])):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "EXACT_LOG": str(root / f"exact_{name}")}
            command = [sys.executable, str(root / "counting_cli.py"), *common, *extra, "--out", str(root / name)]
            run = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=root)
            if run.returncode != 0:
                sys.exit(f"the {name}-process run failed:\n{run.stderr[-3000:]}")
            exact[name] = exact_pixels(root / f"exact_{name}")
        one, two = logged_terms(root / "one"), logged_terms(root / "two")
    print(f"reconstruction {args.reconstruction}, data.augment {args.augment}")
    print("| step | largest relative difference | exact pixels, 1 process | exact pixels, 2 processes |")
    print("|---:|---:|---:|---:|")
    for step in sorted(one):
        worst = max(abs(one[step][k] - two[step][k]) / max(abs(one[step][k]), 1e-12) for k in one[step])
        print(f"| {step} | {worst:.1e} | {exact['one'].get(step, 0)} | {exact['two'].get(step, 0)} |")


if __name__ == "__main__":
    main()
