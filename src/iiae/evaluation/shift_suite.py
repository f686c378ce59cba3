"""Retrieval on shifted MNIST-CDCB test sets (issue 14): does the shared code hold outside the training data?

The suite re-draws the run's own test digits (same digits, same seed as its test pairs) under each shift of
:func:`iiae.data.shifts.shifted_test_sets`: colours outside the training ranges, thinner / thicker / swapped
strokes per domain, JPEG-compressed pairs, and pairs written as 256x256 AB PNGs and read back through the image
loader. ``clean`` is the unshifted test set, for reference. Each set is scored by shared retrieval top-1 (%) in
both directions, with the partner found among all pairs of that set (:func:`iiae.evaluation.retrieval.evaluate_retrieval`).

The same suite drawn from the run's *validation* digits (``split="validation"``: held out of training, never
tested on) is the signal for choosing settings such as ``data.augment`` or the training length without looking
at test numbers; it goes to metrics.json as ``validation_shift_suite``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from iiae.core.config import DataConfig
from iiae.core.model import IIAE
from iiae.data.cdcb import make_cdcb
from iiae.data.mnist import load_digits
from iiae.data.shifts import SHIFT_DESCRIPTIONS, shifted_test_sets
from iiae.data.splits import cdcb_seeds, held_out_indices
from iiae.errors import ConfigError
from iiae.evaluation.retrieval import evaluate_retrieval

SHIFT_DIRECTIONS = ("shared_x_to_y", "shared_y_to_x")
CDCB_DATASETS = {"mnist_cdcb": "mnist", "fashion_mnist_cdcb": "fashion_mnist"}
SHIFT_SUITE_KEYS = {"test": "shift_suite", "validation": "validation_shift_suite"}  # split -> metrics.json key


def shift_suite_digits(data: DataConfig, split: str = "test") -> tuple[np.ndarray, np.ndarray, int]:
    """The digit images, labels and draw seed the suite of ``split`` uses: the run's test digits and test seed,
    or the digits held out of training as its validation pairs (in their order) and the training seed.
    ConfigError for data that is not MNIST-CDCB-like or holds out fewer than 2 validation digits."""
    if data.dataset not in CDCB_DATASETS:
        raise ConfigError(f"the shift suite re-draws MNIST-CDCB test pairs; this run's data.dataset is "
                          f"{data.dataset!r} (expected one of {', '.join(CDCB_DATASETS)})")  # fmt: skip
    if split not in SHIFT_SUITE_KEYS:
        raise ConfigError(f"the shift suite's split must be one of {', '.join(SHIFT_SUITE_KEYS)}, got {split!r}")
    digits = load_digits(data.source, data.root, dataset=CDCB_DATASETS[data.dataset], split_seed=data.split_seed)
    train_seed, test_seed = cdcb_seeds(data)
    if split == "test":
        return digits.test_images, digits.test_labels, test_seed
    _, held = held_out_indices(len(digits.train_images), data.validation_fraction, data.split_seed)
    if len(held) < 2:
        raise ConfigError(f"data.validation_fraction = {data.validation_fraction} holds out {len(held)} training "
                          "digits: the shift suite on validation digits needs at least 2")  # fmt: skip
    return digits.train_images[held], digits.train_labels[held], train_seed


def shift_suite_retrieval(model: IIAE, data: DataConfig, image_size: int, batch_size: int = 500,
                          limit: int | None = None, split: str = "test") -> dict[str, dict[str, float]]:  # fmt: skip
    """Shared top-1 (%) X->Y and Y->X, and the pair count, of the clean and of every shifted set, by name.

    ``data``: the run's data config (digits, seeds and generator of its pairs); ``split``: ``"test"`` (the run's
    test digits, drawn with its test seed: with ``limit`` None, ``clean`` is exactly the run's test set) or
    ``"validation"`` (the digits ``data.validation_fraction`` held out of training, drawn with the training seed;
    ``clean`` is those digits in newly drawn colours); ``limit``: the first ``limit`` digits only, their colours
    drawn anew for that count. ConfigError for data that is not MNIST-CDCB-like or has no such digits.
    """
    if limit is not None and limit < 2:
        raise ConfigError(f"the shift suite needs at least 2 pairs, got a limit of {limit}")
    images, labels, seed = shift_suite_digits(data, split)
    images, labels = images[:limit], labels[:limit]
    with tempfile.TemporaryDirectory(prefix="iiae-shift-suite-") as workdir:
        sets = {"clean": make_cdcb(images, labels, size=image_size, seed=seed, generator=data.generator)}
        sets.update(shifted_test_sets(images, labels, size=image_size, seed=seed, generator=data.generator,
                                      workdir=Path(workdir) / "ab"))  # fmt: skip
        results = {}
        for name, pairs in sets.items():
            table = evaluate_retrieval(model, pairs.x, pairs.y, batch_size)
            results[name] = {**{direction: table[direction]["top1"] for direction in SHIFT_DIRECTIONS},
                             "count": float(len(pairs.x))}  # fmt: skip
    return results


def _suite_rows(results: dict[str, dict[str, float]]) -> str:
    return "\n".join(
        f"| {name} | {SHIFT_DESCRIPTIONS.get(name, '')} | {row['shared_x_to_y']:.2f} | {row['shared_y_to_x']:.2f} "
        f"| {int(row['count'])} |"
        for name, row in results.items()
    )


_TABLE_HEAD = """| test set | shift | X→Y top-1 % | Y→X top-1 % | pairs |
|---|---|---:|---:|---:|"""


def shift_suite_markdown(metrics: dict) -> str:
    """The report sections of ``metrics['shift_suite']`` and ``metrics['validation_shift_suite']`` (``iiae evaluate
    RUN --shift-suite [--shift-split validation]``), or ``""`` when neither was measured."""
    sections = []
    if metrics.get("shift_suite"):
        sections.append(f"""## Robustness: the shift suite

Shared retrieval top-1 % on the run's own test digits drawn in ways its training pairs never were
(`iiae evaluate RUN --shift-suite`; see `iiae.data.shifts`). Each set is searched on its own: the partner among all
pairs of that set.

{_TABLE_HEAD}
{_suite_rows(metrics["shift_suite"])}
""")
    if metrics.get("validation_shift_suite"):
        sections.append(f"""## Robustness on validation digits: the shift suite for choosing settings

The same shifts drawn from the validation digits (held out of training; `iiae evaluate RUN --shift-suite
--shift-split validation`): the numbers to compare settings by, leaving the test digits unseen.

{_TABLE_HEAD}
{_suite_rows(metrics["validation_shift_suite"])}
""")
    return "\n".join(sections)


def format_shift_suite(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one row per test set, shared top-1 % both ways."""
    lines = [f"{'test set':<18}{'X->Y top-1 %':>14}{'Y->X top-1 %':>14}{'pairs':>8}"]
    for name, row in results.items():
        lines.append(f"{name:<18}{row['shared_x_to_y']:>14.2f}{row['shared_y_to_x']:>14.2f}{int(row['count']):>8}")
    return "\n".join(lines)
