"""MNIST-CDCB generators: speed on the full 70,000 digits and the statistics that tell them apart (issue 14).

    python benchmarks/cdcb_generator.py --data-root ../shared/data/mnist     # or $IIAE_SHARED_DATA; else the
    python benchmarks/cdcb_generator.py --count 2000 --json out.json         # embedded digits, repeated

Times ``make_cdcb`` of both generators at ``--size`` (32) on one torch thread, then prints
:func:`iiae.data.cdcb_statistics.cdcb_statistics` of each on the embedded digits (4,000 training digits, 28 px),
and the *mask oracle* on the test digits (full MNIST's 10,000 with ``--data-root``, else the embedded 1,000):
each generator's clean test pairs, drawn as a run draws them, and the shift suite's stroke sets (thinner, thicker,
swapped). The oracle retrieves each partner X->Y and Y->X by the colour-free digit masks themselves (Pearson
correlation; raw, and Gaussian-blurred with each of ``ORACLE_BLURS`` px, all printed, none chosen). It says how far
the pairs can be told apart without learning anything: the classic generator's identical masks give 100 %, the
published-like generator's per-domain strokes less, which puts a learned shared code's top-1 on the same test
pairs in context.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from shared_data import data_folder

from iiae.core.config import DataConfig
from iiae.data import load_digits, make_cdcb
from iiae.data.cdcb import GENERATORS, PairedImages
from iiae.data.cdcb_statistics import cdcb_statistics
from iiae.data.shifts import STROKE_SETS, stroke_shift
from iiae.data.strokes import gaussian_blur
from iiae.evaluation.retrieval import partner_ranks
from iiae.evaluation.shift_suite import shift_suite_digits

ORACLE_BLURS = (0.0, 0.7, 1.0, 1.5, 2.0)  # Gaussian sigma in pixels; 0: the masks as drawn


def digits_to_time(root: Path | None, count: int) -> tuple[np.ndarray, str]:
    """``count`` digits: the full MNIST (train then test) from ``root``, else the embedded ones repeated."""
    if root is not None:
        digits = load_digits("idx", root)
        images = np.concatenate([digits.train_images, digits.test_images])
        source = f"full MNIST from {root}"
    else:
        digits = load_digits("embedded")
        images = np.concatenate([digits.train_images, digits.test_images])
        source = "embedded digits, repeated"
    return np.resize(images, (count, 28, 28)), source


def standardised(masks: torch.Tensor) -> torch.Tensor:
    """Each mask flattened, centred and scaled to unit norm: squared L2 between two is 2 - 2 x their correlation."""
    flat = masks.flatten(1).double()
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def mask_oracle(pairs: PairedImages) -> dict:
    """Top-1 % X->Y / Y->X of partner retrieval by digit-mask correlation, per blur, and the digits of the pairs
    missed either way (count per class 0-9). ``pairs`` hold their masks (``keep_intensity``)."""
    mask_x = pairs.intensity.float()
    mask_y = mask_x if pairs.intensity_y is None else pairs.intensity_y.float()  # classic: one mask for both
    labels = pairs.labels.numpy()
    results = {}
    for sigma in ORACLE_BLURS:
        codes_x, codes_y = standardised(gaussian_blur(mask_x, sigma)), standardised(gaussian_blur(mask_y, sigma))
        missed_x_to_y = (partner_ranks(codes_x, codes_y) > 0).numpy()
        missed_y_to_x = (partner_ranks(codes_y, codes_x) > 0).numpy()
        results[f"blur_{sigma:g}"] = {
            "x_to_y": 100.0 * (1 - missed_x_to_y.mean()),
            "y_to_x": 100.0 * (1 - missed_y_to_x.mean()),
            "missed_digits": np.bincount(labels[missed_x_to_y | missed_y_to_x], minlength=10).tolist(),
        }  # fmt: skip
    return results


def oracle_sets(images: np.ndarray, labels: np.ndarray, seed: int, size: int) -> dict[str, PairedImages]:
    """The clean test pairs of each generator, and the shift suite's stroke sets (published-like; the suite's
    other sets change colours or compression, not the masks)."""
    sets = {generator: make_cdcb(images, labels, size=size, seed=seed, keep_intensity=True, generator=generator)
            for generator in GENERATORS}  # fmt: skip
    for name, (change_x, change_y) in STROKE_SETS.items():
        sets[name] = stroke_shift(images, labels, level_change_x=change_x, level_change_y=change_y, size=size,
                                  seed=seed)  # fmt: skip
    return sets


def test_digits(root: Path | None) -> tuple[np.ndarray, np.ndarray, int, str]:
    """The test digits and the seed a run draws its test pairs with (the configs' data.colour_seed 0)."""
    data = DataConfig(source="idx", root=str(root)) if root is not None else DataConfig(source="embedded")
    images, labels, seed = shift_suite_digits(data, "test")
    source = f"the {len(images):,} full-MNIST test digits" if root is not None else "the embedded test digits"
    return images, np.asarray(labels), seed, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder of the MNIST IDX files [$IIAE_SHARED_DATA/mnist]")
    parser.add_argument("--count", type=int, default=70_000, help="digits to generate pairs from [70000]")
    parser.add_argument("--size", type=int, default=32, help="image side [32]")
    parser.add_argument("--oracle-pairs", type=int, default=10_000, help="test digits for the mask oracle [all]")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, source = digits_to_time(data_folder(args.data_root, "mnist"), args.count)
    labels = np.zeros(len(images), np.int64)
    results: dict = {"count": len(images), "size": args.size, "digits": source, "torch_threads": 1}
    for generator in GENERATORS:
        started = time.perf_counter()
        make_cdcb(images, labels, size=args.size, seed=0, generator=generator)
        results[f"seconds_{generator}"] = time.perf_counter() - started
        print(f"{generator:>15}: {len(images):,} pairs at {args.size}x{args.size} in "
              f"{results[f'seconds_{generator}']:.1f} s (one thread; {source})")  # fmt: skip
    embedded = load_digits("embedded")
    for generator in GENERATORS:
        pairs = make_cdcb(embedded.train_images, embedded.train_labels, size=28, seed=0, keep_intensity=True,
                          generator=generator)  # fmt: skip
        statistics = cdcb_statistics(pairs, embedded.train_images)
        results[f"statistics_{generator}"] = statistics
        print(f"{generator:>15}: " + ", ".join(f"{key} {value:.3f}" for key, value in statistics.items()))
    images, labels, seed, source = test_digits(data_folder(args.data_root, "mnist"))
    for name, pairs in oracle_sets(images[: args.oracle_pairs], labels[: args.oracle_pairs], seed, args.size).items():
        oracle = mask_oracle(pairs)
        results[f"mask_oracle_{name}"] = {"pairs": len(pairs.labels), "digits": source, **oracle}
        for blur, row in oracle.items():
            print(f"{name:>15} mask oracle, {blur}: top-1 X->Y {row['x_to_y']:.2f} %, Y->X {row['y_to_x']:.2f} "
                  f"%, missed pairs by digit {row['missed_digits']} ({source}, {args.size} px)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
