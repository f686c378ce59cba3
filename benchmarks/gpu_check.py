"""The GPU path in one script (< 10 min on one GPU): pairs/s and memory of the official 256x256 model.

    python benchmarks/gpu_check.py                        # CUDA: batch 8 and 64 x fp32 / bf16, NCHW / channels_last
    python benchmarks/gpu_check.py --compile              # + the same with torch.compile
    python benchmarks/gpu_check.py --json gpu.json
    python benchmarks/gpu_check.py --device cpu --config mnist_cdcb --batch-sizes 4 --steps 1 --no-train  # smoke

For every batch size and mode it times ``--steps`` training steps (forward with sampling, the IIAE loss,
backward, Adam) on pre-built tensors already on the device, after ``--warmup`` steps, and reports pairs/s and
the peak memory the step allocated (``torch.cuda.max_memory_allocated``). Modes: ``fp32``; ``bf16`` =
``torch.autocast(bfloat16)`` around forward and loss, what ``train.precision: bf16-mixed`` makes Lightning do;
``fp32+cl``, ``bf16+cl`` = the model and inputs in channels_last (``train.channels_last: true``, the default
since it is 10 to 15 % faster on CPU: the GPU rows say whether it should be on GPUs too); with
``--compile`` also ``bf16+cl+compile`` (``train.compile: true``). A mode that fails (e.g. out of memory) is
reported as such and the others still run. Last, unless ``--no-train``, ``iiae train`` itself runs 30 steps of
the bundled MNIST-CDCB with the three switches on, to check that the run's flags work end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from datetime import date

import torch

from iiae.core.config import resolve_config
from iiae.core.model import IIAE
from iiae.core.objective import iiae_loss
from iiae.engine.training import make_optimizer


def train_step(model: IIAE, optimiser: torch.optim.Optimizer, config, x, y, bf16: bool) -> None:
    """One training step of :class:`iiae.engine.training.IIAELightning`, optionally under bf16 autocast."""
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        output = model(x, y, sample=True)
        loss = iiae_loss(x, y, output.reconstruction_x, output.reconstruction_y, output.posteriors, config.loss, 0)
    optimiser.zero_grad(set_to_none=True)
    loss["loss"].backward()
    optimiser.step()


def measure(config, batch: int, mode: str, steps: int, warmup: int, device: torch.device) -> dict:
    """pairs/s and peak memory of one (batch size, mode)."""
    torch.manual_seed(0)
    size, channels = config.model.image_size, config.model.x_channels
    model = IIAE(config.model).to(device).train()
    x = torch.rand(batch, channels, size, size, device=device) * 2 - 1
    y = torch.rand(batch, config.model.y_channels, size, size, device=device) * 2 - 1
    if "cl" in mode.split("+"):
        model = model.to(memory_format=torch.channels_last)
        x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    if "compile" in mode:
        model.compile()
    optimiser = make_optimizer(model, config.train)  # the run's optimiser: fused Adam on CUDA
    bf16 = mode.startswith("bf16")
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        train_step(model, optimiser, config, x, y, bf16)
    synchronise()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimiser, config, x, y, bf16)
    synchronise()
    seconds = (time.perf_counter() - started) / steps
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"batch": batch, "mode": mode, "pairs_per_second": batch / seconds, "step_ms": 1000 * seconds,
            "peak_memory_gib": memory}  # fmt: skip


def train_with_switches(device: torch.device) -> str:
    """``iiae train`` for 30 steps of the bundled MNIST-CDCB with bf16-mixed, channels_last and compile on."""
    from iiae.runs.runner import train_and_evaluate

    config = resolve_config("mnist_cdcb")
    config.train.steps, config.train.select_every, config.train.checkpoint_every = 30, 0, 30
    config.train.accelerator = "gpu" if device.type == "cuda" else "cpu"
    config.train.precision, config.train.channels_last, config.train.compile = "bf16-mixed", True, True
    with tempfile.TemporaryDirectory() as folder:
        metrics = train_and_evaluate(config, f"{folder}/run", progress=False)
    shared = metrics["retrieval"]["shared_x_to_y"]["top1"]
    return f"iiae train, 30 steps, bf16-mixed + channels_last + compile: ok ({metrics['training_seconds']} s, " \
           f"shared X->Y top-1 {shared:.1f} %)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="facades", help="the model's config [facades: official 256x256]")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time bf16+channels_last with torch.compile")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end iiae train check")
    parser.add_argument("--json", help="write the table to this file too")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu for a smoke run)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    config = resolve_config(args.config)
    modes = ["fp32", "fp32+cl", "bf16", "bf16+cl"] + (["bf16+cl+compile"] if args.compile else [])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{date.today()}  {name}  torch {torch.__version__}  model {args.config} "
          f"({config.model.image_size}x{config.model.image_size}, {config.model.architecture})")  # fmt: skip
    print(f"{'batch':>6} {'mode':>16} {'pairs/s':>10} {'ms/step':>9} {'peak GiB':>9}")
    rows = []
    for batch in args.batch_sizes:
        for mode in modes:
            try:
                row = measure(config, batch, mode, args.steps, args.warmup, device)
            except (RuntimeError, torch.OutOfMemoryError) as error:  # noqa: PERF203
                row = {"batch": batch, "mode": mode, "error": str(error).splitlines()[0][:120]}
                print(f"{batch:>6} {mode:>16}  failed: {row['error']}")
            else:
                print(f"{batch:>6} {mode:>16} {row['pairs_per_second']:>10.1f} {row['step_ms']:>9.1f} "
                      f"{row['peak_memory_gib']:>9.2f}")  # fmt: skip
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    check = None if args.no_train else train_with_switches(device)
    if check:
        print(check)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"date": str(date.today()), "device": name, "torch": torch.__version__, "config": args.config,
                       "cpu_count": os.cpu_count(), "rows": rows, "train_check": check}, handle, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
