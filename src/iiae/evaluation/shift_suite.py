"""Retrieval on shifted MNIST-CDCB test sets (issue 14): does the shared code hold outside the training data?

The suite re-draws the run's own test digits (same digits, same seed as its test pairs) under each shift of
:func:`iiae.data.shifts.shifted_test_sets`: colours outside the training ranges, thinner / thicker / swapped
strokes per domain, JPEG-compressed pairs, and pairs written as 256x256 AB PNGs and read back through the image
loader. ``clean`` is the unshifted test set, for reference. Each set is scored by shared retrieval top-1 (%) in
both directions, with the partner found among all pairs of that set (:func:`iiae.evaluation.retrieval.evaluate_retrieval`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from iiae.core.config import DataConfig
from iiae.core.model import IIAE
from iiae.data.cdcb import make_cdcb
from iiae.data.mnist import load_digits
from iiae.data.shifts import SHIFT_DESCRIPTIONS, shifted_test_sets
from iiae.data.splits import cdcb_seeds
from iiae.errors import ConfigError
from iiae.evaluation.retrieval import evaluate_retrieval

SHIFT_DIRECTIONS = ("shared_x_to_y", "shared_y_to_x")
CDCB_DATASETS = {"mnist_cdcb": "mnist", "fashion_mnist_cdcb": "fashion_mnist"}


def shift_suite_retrieval(model: IIAE, data: DataConfig, image_size: int, batch_size: int = 500,
                          limit: int | None = None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Shared top-1 (%) X->Y and Y->X, and the pair count, of the clean and of every shifted test set, by name.

    ``data``: the run's data config (digits, seeds and generator of its test pairs); ``limit``: the first
    ``limit`` test digits only, their colours drawn anew for that count (None: all, and ``clean`` is exactly the
    run's test set). ConfigError for data that is not MNIST-CDCB-like.
    """
    if data.dataset not in CDCB_DATASETS:
        raise ConfigError(f"the shift suite re-draws MNIST-CDCB test pairs; this run's data.dataset is "
                          f"{data.dataset!r} (expected one of {', '.join(CDCB_DATASETS)})")  # fmt: skip
    if limit is not None and limit < 2:
        raise ConfigError(f"the shift suite needs at least 2 test pairs, got a limit of {limit}")
    digits = load_digits(data.source, data.root, dataset=CDCB_DATASETS[data.dataset], split_seed=data.split_seed)
    images, labels = digits.test_images[:limit], digits.test_labels[:limit]
    _, test_seed = cdcb_seeds(data)
    with tempfile.TemporaryDirectory(prefix="iiae-shift-suite-") as workdir:
        sets = {"clean": make_cdcb(images, labels, size=image_size, seed=test_seed, generator=data.generator)}
        sets.update(shifted_test_sets(images, labels, size=image_size, seed=test_seed, generator=data.generator,
                                      workdir=Path(workdir) / "ab"))  # fmt: skip
        results = {}
        for name, pairs in sets.items():
            table = evaluate_retrieval(model, pairs.x, pairs.y, batch_size)
            results[name] = {**{direction: table[direction]["top1"] for direction in SHIFT_DIRECTIONS},
                             "count": float(len(pairs.x))}  # fmt: skip
    return results


def shift_suite_markdown(metrics: dict) -> str:
    """The report section of ``metrics['shift_suite']`` (``iiae evaluate RUN --shift-suite``), or ``""``."""
    results = metrics.get("shift_suite")
    if not results:
        return ""
    rows = "\n".join(
        f"| {name} | {SHIFT_DESCRIPTIONS.get(name, '')} | {row['shared_x_to_y']:.2f} | {row['shared_y_to_x']:.2f} "
        f"| {int(row['count'])} |"
        for name, row in results.items()
    )
    return f"""## Robustness: the shift suite

Shared retrieval top-1 % on the run's own test digits drawn in ways its training pairs never were
(`iiae evaluate RUN --shift-suite`; see `iiae.data.shifts`). Each set is searched on its own: the partner among all
pairs of that set.

| test set | shift | X→Y top-1 % | Y→X top-1 % | pairs |
|---|---|---:|---:|---:|
{rows}
"""


def format_shift_suite(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per test set, shared top-1 % both ways."""
    lines = [f"{'test set':<18}{'X->Y top-1 %':>14}{'Y->X top-1 %':>14}{'pairs':>8}"]
    for name, row in results.items():
        lines.append(f"{name:<18}{row['shared_x_to_y']:>14.2f}{row['shared_y_to_x']:>14.2f}{int(row['count']):>8}")
    return "\n".join(lines)
