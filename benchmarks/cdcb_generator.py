"""MNIST-CDCB generators: speed on the full 70,000 digits and the statistics that tell them apart (issue 14).

    python benchmarks/cdcb_generator.py --data-root ../shared/data/mnist     # or $IIAE_SHARED_DATA; else the
    python benchmarks/cdcb_generator.py --count 2000 --json out.json         # embedded digits, repeated

Times ``make_cdcb`` of both generators at ``--size`` (32) on one torch thread, then prints
:func:`iiae.data.cdcb_statistics.cdcb_statistics` of each on the embedded digits (4,000 training digits, 28 px).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from shared_data import data_folder

from iiae.data import load_digits, make_cdcb
from iiae.data.cdcb import GENERATORS
from iiae.data.cdcb_statistics import cdcb_statistics


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="folder of the MNIST IDX files [$IIAE_SHARED_DATA/mnist]")
    parser.add_argument("--count", type=int, default=70_000, help="digits to generate pairs from [70000]")
    parser.add_argument("--size", type=int, default=32, help="image side [32]")
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
