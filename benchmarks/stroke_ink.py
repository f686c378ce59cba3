"""Where the shift suite's ``strokes_thinner`` misses sit: failures against the ink a thinned digit keeps (issue 14).

    python benchmarks/stroke_ink.py runs/main runs/main_aug [--pairs 1000]

For each run (its exported model and config), the first ``--pairs`` test digits are drawn as the suite's thinner
set (stroke level +STROKE_SHIFT in both domains) and as its clean set. Printed: how many thinned pairs keep less
than 0.5, 1, 1.5, 2 % of the image as ink in their thinner domain and how many of those the model misses (shared
retrieval, either direction), the least ink of a clean pair, and the miss rate by quartile of ink.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from iiae.data.cdcb import make_cdcb
from iiae.data.cdcb_statistics import ink_fractions
from iiae.data.shifts import STROKE_SHIFT, stroke_shift
from iiae.evaluation.retrieval import encode_pairs, partner_ranks
from iiae.evaluation.shift_suite import shift_suite_digits
from iiae.runs.trained import load_trained

THRESHOLDS = (0.005, 0.01, 0.015, 0.02)


def least_ink(intensity_x: torch.Tensor, intensity_y: torch.Tensor) -> np.ndarray:
    """Per pair (``[N, 1, S, S]`` intensities), the ink fraction of its thinner domain."""
    return np.minimum(ink_fractions(intensity_x).numpy(), ink_fractions(intensity_y).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    for run in args.runs:
        trained = load_trained(run)
        data = trained.run_config.data
        size = trained.model.config.image_size
        images, labels, seed = shift_suite_digits(data, "test")
        images, labels = images[: args.pairs], labels[: args.pairs]
        thinner = stroke_shift(images, labels, level_change_x=STROKE_SHIFT, level_change_y=STROKE_SHIFT, size=size,
                               seed=seed)  # fmt: skip
        clean = make_cdcb(images, labels, size=size, seed=seed, keep_intensity=True, generator="published_like")
        codes = encode_pairs(trained.model, thinner.x, thinner.y)
        missed = ((partner_ranks(codes.shared_x, codes.shared_y) > 0)
                  | (partner_ranks(codes.shared_y, codes.shared_x) > 0)).numpy()  # fmt: skip
        ink = least_ink(thinner.intensity, thinner.intensity_y)
        print(f"{run}: {int(missed.sum())} of {len(ink)} thinner pairs missed; the least ink of a clean pair "
              f"{least_ink(clean.intensity, clean.intensity_y).min() * 100:.2f} %")
        for threshold in THRESHOLDS:
            below = ink < threshold
            print(f"  ink under {threshold * 100:.1f} %: {int(below.sum())} pairs, {int(missed[below].sum())} missed")
        edges = np.quantile(ink, [0.0, 0.25, 0.5, 0.75, 1.0])
        for low, high in itertools.pairwise(edges):
            chosen = (ink >= low) & (ink <= high)
            print(f"  ink {low * 100:.2f}-{high * 100:.2f} %: {int(chosen.sum())} pairs, missed "
                  f"{missed[chosen].mean() * 100:.1f} %")


if __name__ == "__main__":
    main()
