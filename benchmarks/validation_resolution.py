"""How well model selection's validation retrieval can tell models apart: the shared top-1 miss rate against the
size of the candidate set, on validation pairs only (issue 14).

    python benchmarks/validation_resolution.py runs/full_aug runs/full_aug_s1 [--data-root DIR] [--sizes 150 600]

Retrieval among N candidates gets harder as N grows: each extra candidate is one more chance of a lookalike
coming first. Model selection and early stopping score the validation pairs among themselves, so a validation set
much smaller than the test set measures an easier task than the figure reported. For each run (its exported model
and config.yaml) the run's own validation pairs are rebuilt as training built them (``build_splits``), encoded once,
and for every size N, ``--draws`` random subsets of N validation pairs (the same subsets for every run) are scored:
the shared X->Y and Y->X misses per 1,000 queries, mean over the draws, and the spread (standard deviation) of the
difference between the first run and each other run. The test pairs are never read.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from shared_data import default_root

from iiae.core.config import apply_overrides, config_from_dict
from iiae.data.datasets import build_splits
from iiae.evaluation.retrieval import encode_pairs, partner_ranks
from iiae.runs.trained import load_trained


def validation_codes(run: str, data_root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared codes (r^x, r^y posterior means) of ``run``'s validation pairs, rebuilt from its config.yaml with
    ``data.root`` set to ``data_root`` where the run read a folder."""
    trained = load_trained(run)
    if trained.run_config is None:
        raise SystemExit(f"{run}: no config.yaml beside the model; give a run folder")
    values = trained.experiment_config(trained.run_config).to_dict()
    config = config_from_dict(apply_overrides(values, [f"data.root={data_root}"] if values["data"]["root"] else []))
    splits = build_splits(config)
    if splits.validation is None:
        raise SystemExit(f"{run}: the run holds out no validation pairs (data.validation_fraction 0)")
    codes = encode_pairs(trained.model, splits.validation.x, splits.validation.y)
    return codes.shared_x.double(), codes.shared_y.double()


def misses_per_1000(shared_x: torch.Tensor, shared_y: torch.Tensor, subset: np.ndarray) -> tuple[float, float]:
    """Shared X->Y and Y->X misses per 1,000 queries when ``subset``'s pairs are scored among themselves."""
    x, y = shared_x[subset], shared_y[subset]
    return tuple(float((partner_ranks(q, c) > 0).double().mean()) * 1000 for q, c in ((x, y), (y, x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml + model/)")
    parser.add_argument("--data-root", default=default_root("mnist"), help="the IDX folder of runs with source idx")
    parser.add_argument("--sizes", type=int, nargs="+", help="candidate-set sizes [150 300 600 ... all]")
    parser.add_argument("--draws", type=int, default=20, help="random subsets per size [20]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    codes = [validation_codes(run, args.data_root) for run in args.runs]
    count = len(codes[0][0])
    if any(len(shared_x) != count for shared_x, _ in codes):
        raise SystemExit("the runs hold different numbers of validation pairs; compare runs of one config")
    sizes = args.sizes or [size for size in (150, 300, 600, 1200, 2500, 5000, 10000) if size < count] + [count]
    generator = np.random.default_rng(args.seed)
    print(f"{count} validation pairs; misses per 1,000 queries (X->Y / Y->X), mean of {args.draws} draws")
    print(f"| N | {' | '.join(args.runs)} | " + " | ".join(f"{run} - first (sd)" for run in args.runs[1:]) + " |")
    for size in sizes:
        if size > count:
            raise SystemExit(f"--sizes {size} exceeds the {count} validation pairs")
        draws = 1 if size == count else args.draws
        subsets = [generator.choice(count, size, replace=False) for _ in range(draws)]
        scores = np.array([[misses_per_1000(*run_codes, subset) for subset in subsets] for run_codes in codes])
        means = [f"{x_to_y:.1f} / {y_to_x:.1f}" for x_to_y, y_to_x in scores.mean(1)]
        differences = scores[1:] - scores[0]  # [other runs, draws, direction]
        gaps = [
            " / ".join(f"{mean:+.1f} ({sd:.1f})" for mean, sd in zip(difference.mean(0), difference.std(0)))
            for difference in differences
        ]
        print(f"| {size} | " + " | ".join(means + gaps) + " |")


if __name__ == "__main__":
    main()
