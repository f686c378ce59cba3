"""Training throughput of IIAE: pairs per second, FLOPs per step, and utilisation of the measured GEMM peak.

    python benchmarks/throughput.py                       # default 32x32 model, batch 64, CPU
    python benchmarks/throughput.py --steps 30 --json out.json
    python benchmarks/throughput.py --config facades --synthetic --batch-size 8   # official 256x256 model
    python benchmarks/throughput.py --ablation            # each speed-up of the step off and on, interleaved

Three measurements in one process:
1. the fp32 matrix-multiply peak of this machine (a square GEMM, best of several runs);
2. the run's training step (``IIAELightning.training_step``: forward with sampling, loss; backward; the run's
   optimiser; the config's speed switches) on pre-built tensors: pairs/s, FLOPs per step counted by
   ``torch.utils.flop_counter.FlopCounterMode``, achieved GFLOP/s and the utilisation ratio;
3. the same step fed by the real data loader (the run's ``PairedDataModule``): the data-path ratio
   loader/tensors, which should stay at or above 0.9.
The three alternate in rounds and the best round of each is kept, so that the load of a shared machine
favours none of them (a peak measured once, at a quiet moment, would understate the utilisation, and the
reverse).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import time
import warnings
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode

from iiae.cli.options import build_config
from iiae.data import PairedImages
from iiae.data.datasets import build_splits
from iiae.engine.training import (
    IIAELightning,
    PairedDataModule,
    PairedSplits,
    apply_speed_switches,
)


def gemm_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of a square matrix multiply."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def make_step(config, in_place: bool = True, fused_adam: bool = True):
    """The run's training step: ``IIAELightning.training_step`` (forward with sampling, loss, the config's
    channels_last inputs) with its optimiser (``make_optimizer``: fused Adam where available) and speed switches.

    ``in_place=False`` / ``fused_adam=False`` turn those two speed-ups off (``--ablation``)."""
    module = IIAELightning(config.to_dict())
    apply_speed_switches(module.model, config.train)
    if not in_place:
        for layer in module.model.modules():
            if isinstance(layer, (torch.nn.ReLU, torch.nn.LeakyReLU)):
                layer.inplace = False
    optimiser = module.configure_optimizers()
    if not fused_adam:
        optimiser = torch.optim.Adam(module.model.parameters(), **{**optimiser.defaults, "fused": None})

    def step(x: torch.Tensor, y: torch.Tensor, index: int) -> None:
        loss = module.training_step((x, y), index)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return module.model.train(), optimiser, step


#: --ablation: the speed-ups of the training step, added one at a time (the last row is the default).
ABLATION = {  # variant: (channels_last, in-place activations, fused Adam)
    "plain (NCHW, out-of-place activations, per-tensor Adam)": (False, False, False),
    "+ in-place activations": (False, True, False),
    "+ channels_last": (True, True, False),
    "+ fused Adam (the default)": (True, True, True),
}


def ablation(config, x: torch.Tensor, y: torch.Tensor, flops: int, steps: int, rounds: int) -> list[dict]:
    """ms per step of each ABLATION variant on the same tensors, variants interleaved in every round (best kept),
    and the utilisation against the best GEMM peak measured between the rounds."""
    variants = {}
    for name, (channels_last, in_place, fused_adam) in ABLATION.items():
        variant = copy.deepcopy(config)
        variant.train.channels_last = channels_last
        _, _, step = make_step(variant, in_place=in_place, fused_adam=fused_adam)
        timed(step, itertools.repeat((x, y)), 3)  # warm-up
        variants[name] = step
    best, peak = {name: float("inf") for name in variants}, 0.0
    for _ in range(rounds):
        peak = max(peak, gemm_peak_gflops())
        for name, step in variants.items():
            best[name] = min(best[name], timed(step, itertools.repeat((x, y)), steps))
    return [{"variant": name, "ms_per_step": 1000 * seconds, "utilisation": flops / seconds / 1e9 / peak,
             "gemm_peak_gflops": peak} for name, seconds in best.items()]  # fmt: skip


def flops_per_step(config, x: torch.Tensor, y: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    _, _, step = make_step(config)
    with counter:
        step(x, y, 0)
    return counter.get_total_flops()


def timed(step, batches, count: int) -> float:
    """Seconds per step over ``count`` steps drawn from the iterator ``batches``."""
    started = time.perf_counter()
    for index in range(count):
        x, y = next(batches)
        step(x, y, index)
    return (time.perf_counter() - started) / count


def synthetic_splits(config, count: int) -> PairedSplits:
    """Random pairs of the config's image shapes, held in memory (the model's speed does not depend on pixels)."""
    generator = torch.Generator().manual_seed(0)
    size, model = config.model.image_size, config.model

    def pairs(n: int) -> PairedImages:
        return PairedImages(
            x=torch.rand(n, model.x_channels, size, size, generator=generator) * 2 - 1,
            y=torch.rand(n, model.y_channels, size, size, generator=generator) * 2 - 1,
            labels=torch.zeros(n, dtype=torch.long),
            background_colour_x=torch.zeros(n, 3),
            digit_colour_y=torch.zeros(n, 3),
        )

    return PairedSplits(train=pairs(count), test=pairs(config.train.batch_size), source="synthetic")


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mnist_cdcb")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (tensors, loader); best is kept")
    parser.add_argument("--synthetic", action="store_true", help="random in-memory pairs instead of the dataset")
    parser.add_argument("--ablation", action="store_true", help="also time each speed-up of the step on and off")
    parser.add_argument("--json", help="write the results to this file too")
    args = parser.parse_args()

    flags = argparse.Namespace(config=args.config, set=args.set, data_source=None, data_root=None, steps=None,
                               batch_size=args.batch_size, seed=None, accelerator=None)  # fmt: skip
    config = build_config(flags)
    batch = config.train.batch_size
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here

    splits = synthetic_splits(config, 20 * batch) if args.synthetic else build_splits(config)
    loader = forever(PairedDataModule(splits, batch, config.data.num_workers, seed=0).train_dataloader())
    x, y = next(loader)
    flops = flops_per_step(config, x, y)
    model, optimiser, step = make_step(config)

    tensors = itertools.repeat((x, y))
    timed(step, tensors, 3)  # warm-up
    timed(step, loader, 3)
    seconds_tensors, seconds_loader, peak = float("inf"), float("inf"), 0.0
    for _ in range(args.rounds):  # alternating, so that a change of machine load hits all three alike
        peak = max(peak, gemm_peak_gflops())
        seconds_tensors = min(seconds_tensors, timed(step, tensors, args.steps))
        seconds_loader = min(seconds_loader, timed(step, loader, args.steps))

    achieved = flops / seconds_tensors / 1e9
    results = {
        "config": args.config,
        "overrides": args.set,
        "data": splits.source,
        "image_size": config.model.image_size,
        "batch_size": batch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads",
        "load_average_1min": os.getloadavg()[0],
        "torch": torch.__version__,
        "channels_last": config.train.channels_last,
        "fused_adam": bool(optimiser.defaults["fused"]),
        "pairs_per_second_tensors": batch / seconds_tensors,
        "pairs_per_second_loader": batch / seconds_loader,
        "loader_to_tensor_ratio": seconds_tensors / seconds_loader,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": achieved,
        "gemm_peak_gflops": peak,
        "utilisation": achieved / peak,
    }
    if args.ablation:
        results["ablation"] = ablation(config, x, y, flops, args.steps, args.rounds)
    for key, value in results.items():
        if key == "ablation":
            for row in value:
                print(f"{row['variant']:>56}: {row['ms_per_step']:.1f} ms/step, utilisation {row['utilisation']:.3f}")
            continue
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
