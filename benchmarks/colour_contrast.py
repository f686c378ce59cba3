"""Where the shift suite's ``colours_outside`` misses sit: failures against the digit's contrast (issue 14).

    python benchmarks/colour_contrast.py runs/main runs/main_aug [--pairs 1000]

For each run (its exported model and config), the first ``--pairs`` test digits are drawn with colours outside
the training ranges twice: as the suite draws them (every digit at least ``LOWEST_VALUE`` from its background)
and as it did before that guard (a greyer CB background could be a near-white grey, which hides the white
digit). Printed: shared top-1 both ways on each set and, on the unguarded one, the rate of pairs missed in
either direction by the contrast of the digit with its background (CB: the darkest channel's distance from
white; CD: the digit's brightest channel).
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace

import numpy as np
import torch

from iiae.core.model import IIAE
from iiae.data.cdcb import COLOUR_RANGES, PairedImages, compose_cdcb, make_cdcb
from iiae.data.shifts import COLOUR_SHIFT_STREAM, _outside_colours, colours_outside
from iiae.evaluation.retrieval import encode_pairs, partner_ranks
from iiae.evaluation.shift_suite import shift_suite_digits
from iiae.runs.trained import load_trained

BINS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.01)


def unguarded_colours_outside(images: np.ndarray, labels: np.ndarray, seed: int, generator: str) -> PairedImages:
    """colours_outside as it was before the visibility guard (greyer backgrounds up to value 1)."""
    pairs = make_cdcb(images, labels, size=32, seed=seed, keep_intensity=True, generator=generator)
    ranges = COLOUR_RANGES[generator]
    rng = np.random.default_rng([seed, COLOUR_SHIFT_STREAM])
    background = _outside_colours(len(pairs), rng, ranges.saturation, ranges.background_value)
    digit_colour = _outside_colours(len(pairs), rng, ranges.saturation, ranges.digit_value)
    x, y = compose_cdcb(pairs.intensity, background, digit_colour, pairs.intensity_y)
    return replace(pairs, x=x, y=y, background_colour_x=background, digit_colour_y=digit_colour)


def misses(model: IIAE, pairs: PairedImages) -> tuple[torch.Tensor, torch.Tensor]:
    codes = encode_pairs(model, pairs.x, pairs.y)
    return partner_ranks(codes.shared_x, codes.shared_y) > 0, partner_ranks(codes.shared_y, codes.shared_x) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    for run in args.runs:
        trained = load_trained(run)
        data = trained.run_config.data
        images, labels, seed = shift_suite_digits(data, "test")
        images, labels = images[: args.pairs], labels[: args.pairs]
        print(f"{run} ({data.generator} pairs, {len(images)} test digits)")
        for name, pairs in (("suite (guarded)", colours_outside(images, labels, seed=seed, generator=data.generator)),
                            ("unguarded", unguarded_colours_outside(images, labels, seed, data.generator))):  # fmt: skip
            x_to_y, y_to_x = misses(trained.model, pairs)
            print(f"  {name:<16} top-1 X->Y {100 - x_to_y.double().mean() * 100:.1f} %, "
                  f"Y->X {100 - y_to_x.double().mean() * 100:.1f} %")
        missed = (x_to_y | y_to_x).numpy()
        contrast_x = (1.0 - pairs.background_colour_x.min(1).values).numpy()
        contrast_y = pairs.digit_colour_y.max(1).values.numpy()
        for low, high in itertools.pairwise(BINS):
            cells = []
            for domain, contrast in (("CB", contrast_x), ("CD", contrast_y)):
                chosen = (contrast >= low) & (contrast < high)
                rate = f"{missed[chosen].mean():.2f}" if chosen.any() else "-"
                cells.append(f"{domain} {chosen.sum():4d} pairs, missed {rate}")
            print(f"    contrast [{low:.1f}, {min(high, 1.0):.1f}): " + "; ".join(cells))


if __name__ == "__main__":
    main()
