"""Measures beyond the paper, for MNIST-CDCB where the ground-truth factors are known.

:func:`evaluate_measures` runs both on a trained model and returns what the main job writes into
``metrics.json``: ``translation_fidelity`` (digit classifier on translations, colour errors; see
:mod:`iiae.evaluation.fidelity`), ``leakage`` (linear probes from every code to every factor; see :mod:`iiae.evaluation.probes`)
and ``colour_intervention`` (how much of each code moves with the colour alone, against the digit alone; see
:mod:`iiae.evaluation.intervention`). :func:`measures_markdown` renders them for ``report.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from iiae.core.model import IIAE
from iiae.data import PairedImages
from iiae.evaluation.digit_classifier import (
    ClassifierSettings,
    load_or_train_classifier,
    single_thread,
)
from iiae.evaluation.fidelity import translation_fidelity
from iiae.evaluation.intervention import colour_intervention
from iiae.evaluation.probes import CODES, FACTORS, leakage_table
from iiae.evaluation.retrieval import encode_pairs

#: what evaluate_measures adds to metrics.json
MEASURE_KEYS = ("translation_fidelity", "leakage", "colour_intervention", "measure_seconds")
MAX_PROBE_FIT_PAIRS = 4000  # training pairs whose codes fit the probes (a seeded subset when there are more)
CODE_NAMES = {"shared_x": "z^s (r^x)", "shared_y": "z^s (r^y)", "exclusive_x": "z^x", "exclusive_y": "z^y"}
FACTOR_NAMES = {"digit_class": "digit class", "background_colour_x": "background colour (X)",
                "digit_colour_y": "digit colour (Y)"}  # fmt: skip


def subset(pairs: PairedImages, count: int, seed: int = 0) -> PairedImages:
    """At most ``count`` pairs, a seeded random subset when there are more."""
    if len(pairs) <= count:
        return pairs
    return pairs.subset(torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:count])


def evaluate_measures(
    model: IIAE,
    train: PairedImages,
    test: PairedImages,
    *,
    batch_size: int = 500,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    classifier_settings: ClassifierSettings | None = None,
    max_probe_fit_pairs: int = MAX_PROBE_FIT_PAIRS,
) -> dict:
    """Translation fidelity, the leakage table and the colour intervention of ``model``.

    The digit classifier is trained on (or loaded for) the ``train`` pairs, cached in ``cache_dir`` (default
    :func:`iiae.evaluation.digit_classifier.default_cache_dir`); probes are fitted on codes of at most
    ``max_probe_fit_pairs`` training pairs and scored on the codes of all ``test`` pairs; the colour intervention
    recolours seeded ``test`` digits (:func:`iiae.evaluation.intervention.colour_intervention`; left out for fewer
    than 2 test pairs).
    """
    with single_thread():  # small operations throughout; see iiae.evaluation.digit_classifier.single_thread
        started = time.perf_counter()
        classifier = load_or_train_classifier(train.x, train.labels, cache_dir, classifier_settings)
        classifier_seconds = time.perf_counter() - started
        fidelity = translation_fidelity(model, test, classifier, batch_size, seed)
        fit_pairs = subset(train, max_probe_fit_pairs, seed)
        leakage = leakage_table(
            encode_pairs(model, fit_pairs.x, fit_pairs.y, batch_size), fit_pairs,
            encode_pairs(model, test.x, test.y, batch_size), test, seed,
        )  # fmt: skip
        intervention_started = time.perf_counter()
        intervention = colour_intervention(model, test, seed=seed, batch_size=batch_size) if len(test) >= 2 else None
        intervention_seconds = time.perf_counter() - intervention_started
    fidelity["classifier_from_cache"] = classifier.from_cache
    measures = {"translation_fidelity": fidelity, "leakage": leakage}
    if intervention is not None:  # spreads need at least 2 test digits
        measures["colour_intervention"] = intervention
    measures["measure_seconds"] = {
        "classifier": round(classifier_seconds, 2),
        "colour_intervention": round(intervention_seconds, 2),
        "total": round(time.perf_counter() - started, 2),
    }
    return measures


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if metric == "accuracy %" else f"{value:.3f}"


def _error(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def leakage_markdown(leakage: dict) -> str:
    """The leakage table: one row per factor, one column per code; expected-high cells in bold."""
    header = "| factor (metric) | " + " | ".join(CODE_NAMES[code] for code in CODES) + " | chance |"
    lines = [header, "|---|" + "---:|" * (len(CODES) + 1)]
    for factor in FACTORS:
        row = leakage[factor]
        cells = [_cell(row[code], row["metric"]) for code in CODES]
        cells = [f"**{cell}**" if code in row["expected_high"] else cell for code, cell in zip(CODES, cells)]
        lines.append(f"| {FACTOR_NAMES[factor]} ({row['metric']}) | {' | '.join(cells)} | "
                     f"{_cell(row['chance'], row['metric'])} |")  # fmt: skip
    return "\n".join(lines)


def fidelity_markdown(fidelity: dict) -> str:
    """Classifier accuracy on real and translated test images, and the colour errors, as two tables."""
    accuracy, error, reference = fidelity["class_accuracy"], fidelity["colour_error"], fidelity["shuffled_reference"]
    return "\n".join([
        "| digit classifier on | real x | real y | X→Y (prior z^y) | Y→X (prior z^x) | X→Y (paired z^y) "
        "| Y→X (paired z^x) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| accuracy % | {accuracy['real_x']:.1f} | {accuracy['real_y']:.1f} | {accuracy['x_to_y']:.1f} | "
        f"{accuracy['y_to_x']:.1f} | {accuracy['x_to_y_paired_code']:.1f} | {accuracy['y_to_x_paired_code']:.1f} |",
        "",
        "| colour error (0 = perfect, [0, 1] units) | ours | random other pair's colour |",
        "|---|---:|---:|",
        f"| X→Y background vs black (prior z^y) | {_error(error['x_to_y_background_vs_black'])} | |",
        f"| X→Y digit colour vs paired y's (z^y of paired y) | {_error(error['x_to_y_digit_colour'])} | "
        f"{_error(reference['digit_colour'])} |",
        f"| Y→X background colour vs paired x's (z^x of paired x) | {_error(error['y_to_x_background_colour'])} | "
        f"{_error(reference['background_colour'])} |",
        f"| Y→X digit vs white (prior z^x) | {_error(error['y_to_x_digit_vs_white'])} | |",
    ])  # fmt: skip


def _ratio(value: float | None) -> str:
    return "n/a (digit spread 0)" if value is None else f"{value:.3g}"


def intervention_markdown(intervention: dict) -> str:
    """The colour-intervention table: one row per code, its colour and digit spreads, their ratio and the goal."""
    lines = ["| code | colour varied | colour spread | digit spread | colour / digit | goal |",
             "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for code in CODES:
        row = intervention[code]
        goal = "≈ 0" if code.startswith("shared") else "large"
        lines.append(f"| {CODE_NAMES[code]} | {FACTOR_NAMES[row['colour']]} | {row['colour_spread']:.4g} | "
                     f"{row['digit_spread']:.4g} | {_ratio(row['ratio'])} | {goal} |")  # fmt: skip
    return "\n".join(lines)


def intervention_section(metrics: dict) -> str:
    """The report section of the colour intervention, or an empty string when ``metrics`` has none."""
    if "colour_intervention" not in metrics:
        return ""
    intervention = metrics["colour_intervention"]
    return f"""
## Leakage by intervention: colour against digit

{intervention['digits']} test digits, each drawn in the same {intervention['colourings']} colourings (background
colour for X, digit colour for Y, drawn like the training colours; seed {intervention['seed']}), encoded with
posterior means. Colour spread: the variance of a code across the colourings of one digit (summed over its
dimensions, mean over the digits); digit spread: its variance across the digits in one colouring (mean over the
colourings). Their ratio is scale-aware where the probes' R² is not: ≈ 0 when the colour is a tiny part of the code
(the goal for z^s), large when it dominates (the goal for z^x, z^y). See `iiae.evaluation.intervention`.

{intervention_markdown(intervention)}
"""


def measures_markdown(metrics: dict) -> str:
    """The report section of the measures, or an empty string when ``metrics`` has none."""
    if "leakage" not in metrics or "translation_fidelity" not in metrics:
        return ""
    leakage = metrics["leakage"]
    return f"""## Translation fidelity

A digit classifier trained by the project on the training digits (on the digit map recovered from an image of
either domain; see `iiae.evaluation.digit_classifier`) reads the test images and their translations: the digit must
survive X→Y and Y→X. The colours must obey the codes: X→Y backgrounds black, X→Y digits in the colour of the
z^y used, Y→X backgrounds in the colour of the z^x used, Y→X digits white.

{fidelity_markdown(metrics['translation_fidelity'])}

## Leakage: linear probes on frozen codes

Probes fitted on the posterior-mean codes of {leakage['fit_pairs']} training pairs, scored on the
{leakage['score_pairs']} test pairs (logistic regression for the class, accuracy %; ridge regression for the
colours, R²). Expected for a disentangled model (bold cells): digit class high from z^s and near chance (~10 %)
from z^x and z^y; background colour high from z^x and low (R² near 0) from z^s and z^y; digit colour high
from z^y and low from z^s and z^x.

{leakage_markdown(leakage)}
{intervention_section(metrics)}"""


def measures_summary(measures: dict) -> str:
    """Two printed lines: how many translated digits the classifier reads, and what the codes leak."""
    accuracy = measures["translation_fidelity"]["class_accuracy"]
    leakage = measures["leakage"]
    colours = [f"{FACTOR_NAMES[factor]} from z^s (r^x / r^y) R^2 {leakage[factor]['shared_x']:.2f} / "
               f"{leakage[factor]['shared_y']:.2f}" for factor in ("background_colour_x", "digit_colour_y")]  # fmt: skip
    return (
        f"translation fidelity: digit classifier reads {accuracy['real_x']:.1f} % of real digits, "
        f"{accuracy['x_to_y']:.1f} % of X->Y and {accuracy['y_to_x']:.1f} % of Y->X translations (prior codes)\n"
        f"leakage: digit class from z^s {leakage['digit_class']['shared_x']:.1f} %, from z^x / z^y "
        f"{leakage['digit_class']['exclusive_x']:.1f} / {leakage['digit_class']['exclusive_y']:.1f} %; "
        + "; ".join(colours)
        + _intervention_line(measures)
    )


def _intervention_line(measures: dict) -> str:
    if "colour_intervention" not in measures:
        return ""
    intervention = measures["colour_intervention"]
    ratios = " / ".join(_ratio(intervention[code]["ratio"]) for code in CODES)
    return f"\ncolour intervention: colour / digit spread of r^x / r^y / z^x / z^y {ratios} (≈ 0 for r^x, r^y)"


def run_measures(model: IIAE, splits, batch_size: int = 500, cache_dir: str | Path | None = None) -> dict:
    """The main job's measures for ``splits`` (:class:`iiae.data.splits.PairedSplits`): those of
    :func:`evaluate_measures` for MNIST-CDCB-like pairs (labels and colours known), nothing for other data."""
    if not (isinstance(splits.train, PairedImages) and isinstance(splits.test, PairedImages)):
        return {}
    return evaluate_measures(model, splits.train, splits.test, batch_size=batch_size, cache_dir=cache_dir)
