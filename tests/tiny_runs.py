"""Helpers of the reliability tests: a tiny IDX dataset and the flags of a tiny, fast training run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from iiae.cli.main import main
from iiae.data import write_idx

STEPS = 30
# 16x16 images, ~16k parameters, 8 pairs per batch: 8 batches per epoch, so 30 steps cross epoch boundaries.
TINY_MODEL = [
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4",
]  # fmt: skip
TINY_TRAIN = [
    "--steps", str(STEPS), "--batch-size", "8", "--no-progress", "--accelerator", "cpu",
    "--set", "train.log_every=1", "--set", "train.eval_batch_size=32", "--set", "train.keep_checkpoints=2",
    "--set", "train.select_every=4",  # model selection on 6 held-out pairs: its val/ rows must survive a resume
]  # fmt: skip
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # same arithmetic in every process, and no thread contention


def tiny_idx_folder(folder: Path, train: int = 64, test: int = 32) -> Path:
    """Four gzip IDX files of random 28x28 digits: a data set that loads in milliseconds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count, dtype=np.uint8))
    return folder


def tiny_args(data: Path, checkpoint_every: int = 1) -> list[str]:
    """Flags of the tiny run on the data in ``data`` (add --out or --resume)."""
    return [
        "--data-source", "idx", "--data-root", str(data), *TINY_MODEL, *TINY_TRAIN,
        "--set", f"train.checkpoint_every={checkpoint_every}",
    ]  # fmt: skip


# Runs the CLI with every checkpoint write followed by a pause, so a test can kill it at a chosen step.
SLOW_CLI = """
import os, sys, time
import iiae.engine.checkpointing as checkpointing
write = checkpointing.atomic_torch_save
def slow_write(obj, path):
    write(obj, path)
    time.sleep(float(os.environ.get("IIAE_TEST_PAUSE", "0.05")))
checkpointing.atomic_torch_save = slow_write
from iiae.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m iiae.cli.main ARGS`` in a fresh process with one thread."""
    return subprocess.run(
        [sys.executable, "-m", "iiae.cli.main", *args], capture_output=True, text=True, timeout=timeout, env=ONE_THREAD,
        cwd=cwd,
    )  # fmt: skip


def start_cli(script: str, args: list[str], cwd: Path | None = None, **env: str) -> subprocess.Popen:
    """Start ``python -c SCRIPT ARGS`` in the background (one thread, extra environment variables)."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**ONE_THREAD, **env}, cwd=cwd,
    )  # fmt: skip


def expect_error(capsys, argv: list[str], *fragments: str, prefix: str = "iiae") -> str:  # noqa: ANN001
    """``iiae.cli.main.main(argv)``: exit status 2 and exactly one stderr line, starting with ``prefix`` and holding
    ``: error: `` and every fragment (argparse's ``iiae train: error: ...`` included when ``prefix`` allows)."""
    from iiae.cli.main import main

    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse
        status = exit_.code
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert len(error.splitlines()) == 1 and error.startswith(prefix) and ": error: " in error, error
    for fragment in fragments:
        assert fragment in error, error
    return error


def main_one_thread(argv: list[str]) -> int:
    """The CLI in this process, with one thread as the subprocesses (CPU sums depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def newest_step(run: Path) -> int:
    """The step of the newest ``step=N.ckpt`` of a run folder (-1: none yet)."""
    names = [path.name for path in (run / "checkpoints").glob("step=*.ckpt")]
    return max((int(re.match(r"step=(\d+)", name).group(1)) for name in names), default=-1)


def wait_until(process, condition, what: str, timeout: float = 120) -> None:
    """Poll ``condition()`` while ``process`` runs; AssertionError if it ends first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (status {process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
