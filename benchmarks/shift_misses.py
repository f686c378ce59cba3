"""Where the shift suite's misses sit (issue 14): the colours-outside misses against the contrast of the digit,
the thinner-strokes misses against the ink a thinned digit keeps, and the clean set's misses.

    python benchmarks/shift_misses.py colours runs/main runs/main_aug [--pairs 1000]
    python benchmarks/shift_misses.py thinner runs/main [--pairs 1000]
    python benchmarks/shift_misses.py clean runs/main [--pairs 1000]
    python benchmarks/shift_misses.py every runs/main [--pairs 1000]

For each run (its exported model and config) the first ``--pairs`` test digits are drawn as the suite draws them,
and a pair is *missed* when shared retrieval does not put its partner first in either direction.

``colours``: the colours-outside set twice, as the suite draws it (every digit at least ``LOWEST_VALUE`` from its
background) and as it did before that guard (a greyer CB background could be a near-white grey, which hides the
white digit). Printed: shared top-1 both ways on each, and on the unguarded one the share of pairs missed by
the contrast of the digit with its background (CB: the darkest channel's distance from white; CD: the digit's
brightest channel).

``thinner``: the thinner set (stroke level +STROKE_SHIFT in both domains). Printed: how many pairs keep less than
0.5, 1, 1.5, 2 % of the image as ink in their thinner domain and how many of those are missed, the least ink of a
clean pair, and the miss rate by quartile of ink.

``clean``: the clean set (the suite's first set). Printed: the miss rate by quartile of ink (thinner domain), of
contrast (the lower of CB and CD), and of the correlation between the X and Y digit masks (the published-like
generator's per-domain strokes); and every missed query: its digit, ink, contrast, mask correlation, the
partner's rank and the digit of the pair retrieved instead.

``every``: each set of the suite (clean first). Printed per set: the pairs missed in either direction, how many
of those the clean set misses too, how many retrieve a pair of the same digit instead, and how many are in the
clean pairs' lowest quarter of ink or of contrast (the pairs and colours are the same digits in every set).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile

import numpy as np
import torch

from iiae.core.model import IIAE
from iiae.data.cdcb import PairedImages, make_cdcb
from iiae.data.cdcb_statistics import ink_fractions
from iiae.data.shifts import STROKE_SHIFT, colours_outside, shifted_test_sets, stroke_shift
from iiae.evaluation.retrieval import encode_pairs, partner_ranks
from iiae.evaluation.shift_suite import shift_suite_digits
from iiae.runs.trained import TrainedModel, load_trained

CONTRAST_BINS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.01)
INK_THRESHOLDS = (0.005, 0.01, 0.015, 0.02)


def ranks_and_nearest(model: IIAE, pairs: PairedImages) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per direction of shared retrieval (X->Y, then Y->X): every query's partner rank (0: found first), and for
    the missed queries (rank > 0, in order) the index of the candidate retrieved first instead."""
    codes = encode_pairs(model, pairs.x, pairs.y)
    directions = []
    for queries, candidates in ((codes.shared_x, codes.shared_y), (codes.shared_y, codes.shared_x)):
        ranks = partner_ranks(queries, candidates).numpy()
        nearest = torch.cdist(queries[ranks > 0].double(), candidates.double()).argmin(1).numpy()
        directions.append((ranks, nearest))
    return directions


def misses(model: IIAE, pairs: PairedImages) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, whether shared retrieval misses its partner X->Y and Y->X."""
    (ranks_x_to_y, _), (ranks_y_to_x, _) = ranks_and_nearest(model, pairs)
    return torch.from_numpy(ranks_x_to_y > 0), torch.from_numpy(ranks_y_to_x > 0)


def clean_pairs(trained: TrainedModel, images: np.ndarray, labels: np.ndarray, seed: int) -> PairedImages:
    """The clean set as the run's generator draws it, with both domains' digit masks (the classic generator's
    one mask stands for both)."""
    pairs = make_cdcb(images, labels, size=trained.model.config.image_size, seed=seed, keep_intensity=True,
                      generator=trained.run_config.data.generator)  # fmt: skip
    if pairs.intensity_y is None:
        pairs.intensity_y = pairs.intensity
    return pairs


def contrasts(pairs: PairedImages) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the contrast of the white CB digit with its background (the darkest background channel's
    distance from white) and of the CD digit with black (its brightest channel)."""
    return (1.0 - pairs.background_colour_x.min(1).values).numpy(), pairs.digit_colour_y.max(1).values.numpy()


def colours(trained: TrainedModel, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    generator = trained.run_config.data.generator
    size = trained.model.config.image_size
    guarded = colours_outside(images, labels, size=size, seed=seed, generator=generator)
    unguarded = colours_outside(images, labels, size=size, seed=seed, generator=generator,
                                highest_background_value=1.0)  # fmt: skip
    for name, pairs in (("suite (guarded)", guarded), ("unguarded", unguarded)):
        x_to_y, y_to_x = misses(trained.model, pairs)
        print(f"  {name:<16} top-1 X->Y {100 - x_to_y.double().mean() * 100:.1f} %, "
              f"Y->X {100 - y_to_x.double().mean() * 100:.1f} %")
    missed = (x_to_y | y_to_x).numpy()  # the unguarded set's
    contrast_x, contrast_y = contrasts(unguarded)
    for low, high in itertools.pairwise(CONTRAST_BINS):
        cells = []
        for domain, contrast in (("CB", contrast_x), ("CD", contrast_y)):
            chosen = (contrast >= low) & (contrast < high)
            rate = f"{missed[chosen].mean():.2f}" if chosen.any() else "-"
            cells.append(f"{domain} {chosen.sum():4d} pairs, missed {rate}")
        print(f"    contrast [{low:.1f}, {min(high, 1.0):.1f}): " + "; ".join(cells))


def least_ink(pairs: PairedImages) -> np.ndarray:
    """Per pair, the ink fraction of its thinner domain."""
    return np.minimum(ink_fractions(pairs.intensity).numpy(), ink_fractions(pairs.intensity_y).numpy())


def thinner(trained: TrainedModel, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    size = trained.model.config.image_size
    pairs = stroke_shift(images, labels, level_change_x=STROKE_SHIFT, level_change_y=STROKE_SHIFT, size=size,
                         seed=seed)  # fmt: skip
    clean = make_cdcb(images, labels, size=size, seed=seed, keep_intensity=True, generator="published_like")
    x_to_y, y_to_x = misses(trained.model, pairs)
    missed = (x_to_y | y_to_x).numpy()
    ink = least_ink(pairs)
    print(f"  {int(missed.sum())} of {len(ink)} thinner pairs missed; the least ink of a clean pair "
          f"{least_ink(clean).min() * 100:.2f} %")
    for threshold in INK_THRESHOLDS:
        below = ink < threshold
        print(f"  ink under {threshold * 100:.1f} %: {int(below.sum())} pairs, {int(missed[below].sum())} missed")
    for low, high in itertools.pairwise(np.quantile(ink, [0.0, 0.25, 0.5, 0.75, 1.0])):
        chosen = (ink >= low) & (ink <= high)
        print(f"  ink {low * 100:.2f}-{high * 100:.2f} %: {int(chosen.sum())} pairs, missed "
              f"{missed[chosen].mean() * 100:.1f} %")


def mask_correlation(pairs: PairedImages) -> np.ndarray:
    """Per pair, the Pearson correlation of its X and Y digit masks."""
    x, y = (mask.flatten(1).double() for mask in (pairs.intensity, pairs.intensity_y))
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-12)).numpy()


def print_by_quartile(name: str, values: np.ndarray, missed: np.ndarray) -> None:
    edges = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    cells = [f"{low:.3g}-{high:.3g}: {missed[(values >= low) & (values <= high)].mean() * 100:.1f} %"
             for low, high in itertools.pairwise(edges)]  # fmt: skip
    print(f"  missed by quartile of {name}: " + ", ".join(cells))


def clean(trained: TrainedModel, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    pairs = clean_pairs(trained, images, labels, seed)
    ink, correlation = least_ink(pairs), mask_correlation(pairs)
    contrast = np.minimum(*contrasts(pairs))
    label = np.asarray(labels)
    any_missed = np.zeros(len(label), dtype=bool)
    for direction, (ranks, retrieved) in zip(("X->Y", "Y->X"), ranks_and_nearest(trained.model, pairs)):
        missed = ranks > 0
        any_missed |= missed
        same_digit = int((label[retrieved] == label[missed]).sum())
        print(f"  {direction}: {int(missed.sum())} of {len(label)} missed; the pair retrieved instead shows the same "
              f"digit for {same_digit}")
        for query, instead in zip(np.flatnonzero(missed), retrieved):
            print(f"    pair {query}: digit {label[query]}, ink {ink[query] * 100:.1f} %, contrast "
                  f"{contrast[query]:.2f}, mask correlation {correlation[query]:.2f}, partner rank {ranks[query]}, "
                  f"retrieved digit {label[instead]}")
    print(f"  all pairs: ink {np.median(ink) * 100:.1f} % (median), contrast {np.median(contrast):.2f}, mask "
          f"correlation {np.median(correlation):.2f}")
    for name, values in (("ink", ink), ("contrast", contrast), ("mask correlation", correlation)):
        print_by_quartile(name, values, any_missed)


def every(trained: TrainedModel, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
    generator, size = trained.run_config.data.generator, trained.model.config.image_size
    plain = clean_pairs(trained, images, labels, seed)
    ink = least_ink(plain)
    contrast = np.minimum(*contrasts(plain))
    thin, faint = ink <= np.quantile(ink, 0.25), contrast <= np.quantile(contrast, 0.25)
    label = np.asarray(labels)
    with tempfile.TemporaryDirectory() as workdir:
        sets = {"clean": plain, **shifted_test_sets(images, labels, size=size, seed=seed, generator=generator,
                                                    workdir=workdir)}  # fmt: skip
    clean_missed = None
    print("  set: missed pairs (either direction); of them: missed clean too, same digit retrieved, "
          "lowest-quarter ink, lowest-quarter contrast")
    for name, pairs in sets.items():
        missed, same_digit = np.zeros(len(label), dtype=bool), np.zeros(len(label), dtype=bool)
        for ranks, retrieved in ranks_and_nearest(trained.model, pairs):
            wrong = ranks > 0
            same_digit[np.flatnonzero(wrong)[label[retrieved] == label[wrong]]] = True
            missed |= wrong
        clean_missed = missed if clean_missed is None else clean_missed
        counts = [int((missed & among).sum()) for among in (clean_missed, same_digit, thin, faint)]
        print(f"  {name:<16} {int(missed.sum()):3d}; " + ", ".join(f"{count:3d}" for count in counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shift", choices=["colours", "thinner", "clean", "every"])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    analyse = {"colours": colours, "thinner": thinner, "clean": clean, "every": every}[args.shift]
    for run in args.runs:
        trained = load_trained(run)
        data = trained.run_config.data
        images, labels, seed = shift_suite_digits(data, "test")
        print(f"{run} ({data.generator} pairs, {min(len(images), args.pairs)} test digits)")
        analyse(trained, images[: args.pairs], labels[: args.pairs], seed)


if __name__ == "__main__":
    main()
