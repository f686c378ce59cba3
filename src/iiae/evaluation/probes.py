"""Linear probes on frozen codes: which code holds which ground-truth factor (the leakage table).

For each code (shared r^x and r^y means, exclusive q(z^x|x) and q(z^y|y) means) and each factor of
MNIST-CDCB, a linear probe is fitted on the codes of one set of pairs and scored on another:

* digit class: multinomial logistic regression, score = accuracy % (chance: the most frequent class, ~10 %);
* background colour of X, digit colour of Y: ridge regression, score = R² = 1 − Σ(t − t̂)² / Σ(t − mean t)²
  pooled over the three channels (0: the probe explains nothing; it can go negative on held-out pairs).

Features are standardised with the fit set's mean and standard deviation. The L2 strength of each probe is
chosen on a held-out fifth of the fit set (seeded split) from a small grid, then the probe is refitted on the
whole fit set. The solvers are scikit-learn's (:class:`~sklearn.linear_model.LogisticRegression` with L-BFGS,
:class:`~sklearn.linear_model.Ridge` in float64); the codes, splits and scores stay torch tensors.

The disentangled pattern: class from z^s high and from z^x, z^y near chance; background colour from z^x high
and from z^s, z^y low; digit colour from z^y high and from z^s, z^x low.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from iiae.data import PairedImages
from iiae.evaluation.retrieval import PairCodes

CODES = ("shared_x", "shared_y", "exclusive_x", "exclusive_y")
LOGISTIC_L2_GRID = (1e-4, 1e-2)  # penalty on the mean cross-entropy: l2 * |W|^2
RIDGE_ALPHA_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # penalty on the summed squared error: alpha * |W|^2
VALIDATION_FRACTION = 0.2
MIN_PAIRS_FOR_SELECTION = 10  # fewer fit pairs: no validation split, the strongest regularisation of the grid
LOGISTIC_MAX_ITERATIONS = 1000
LOGISTIC_TOLERANCE = 1e-6  # L-BFGS stops when the projected gradient is below this
#: factor -> (kind of probe, codes in which a disentangled model keeps it)
FACTORS = {
    "digit_class": ("classification", ("shared_x", "shared_y")),
    "background_colour_x": ("regression", ("exclusive_x",)),
    "digit_colour_y": ("regression", ("exclusive_y",)),
}


def standardise(fit: torch.Tensor, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets centred and scaled with the fit set's statistics (constant features keep scale 1)."""
    mean, std = fit.mean(dim=0), fit.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (fit - mean) / std, (score - mean) / std


# ------------------------------------------------------------------------------------------ logistic probe
def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, class_count: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [D, K] and bias [K] minimising mean cross-entropy + l2·|W|² (bias not penalised).

    scikit-learn's :class:`~sklearn.linear_model.LogisticRegression` (L-BFGS) minimises C·Σ cross-entropy
    + ½|W|², the same objective with C = 1 / (2·N·l2); with two classes it fits one weight vector w of the logit
    difference, whose softmax form is W = [−w/2, w/2] at penalty l2·|W|² = (l2/2)·|w|², so C = 1 / (N·l2).
    Classes absent from the fit set get bias −inf: they are never predicted.
    """
    features_np, labels_np = features.double().numpy(), labels.long().numpy()
    present = np.unique(labels_np)
    weight = torch.zeros(features.shape[1], class_count, dtype=torch.float64)
    bias = torch.full((class_count,), float("-inf"), dtype=torch.float64)
    if len(present) == 1:  # one class: it is always the answer
        bias[int(present[0])] = 0.0
        return weight.float(), bias.float()
    count = len(labels_np)
    c = 1.0 / (count * l2) if len(present) == 2 else 1.0 / (2.0 * count * l2)
    from sklearn.exceptions import ConvergenceWarning  # scikit-learn (1.5 s to import) only where a probe is fit
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=LOGISTIC_MAX_ITERATIONS, tol=LOGISTIC_TOLERANCE)
    with warnings.catch_warnings():  # a probe stopped at the iteration cap is still a probe (as the torch one was)
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features_np, labels_np)
    coef, intercept = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
    if len(present) == 2:  # sklearn's binary model: the logit of the second class against the first
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    columns = torch.from_numpy(present)
    weight[:, columns], bias[columns] = coef.T, intercept
    return weight.float(), bias.float()


def logistic_accuracy(
    fit: torch.Tensor, fit_labels: torch.Tensor, score: torch.Tensor, score_labels: torch.Tensor, l2: float,
    class_count: int,
) -> float:  # fmt: skip
    """Accuracy % on (score, score_labels) of a logistic probe fitted on (fit, fit_labels)."""
    weight, bias = fit_logistic(fit, fit_labels, class_count, l2)
    return 100.0 * ((score.float() @ weight + bias).argmax(dim=1) == score_labels).double().mean().item()


# --------------------------------------------------------------------------------------------- ridge probe
def ridge_solutions(features: torch.Tensor, targets: torch.Tensor, alphas: tuple[float, ...]) -> list[torch.Tensor]:
    """Ridge weights [D, T] (float64) for centred features [N, D] and centred targets [N, T], one per alpha:
    argmin |T − XW|² + α|W|², by scikit-learn's :class:`~sklearn.linear_model.Ridge` without intercept (it solves
    the N×N dual system when D > N, so an 8,192-d code costs no more than the number of pairs allows)."""
    from sklearn.linear_model import Ridge

    features_np, targets_np = features.double().numpy(), targets.double().numpy()
    solutions = []
    for alpha in alphas:
        model = Ridge(alpha=alpha, fit_intercept=False).fit(features_np, targets_np)
        solutions.append(torch.from_numpy(np.atleast_2d(model.coef_)).T.contiguous())
    return solutions


def r_squared(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """1 − SSE / SST over all outputs pooled, SST around the targets' own mean (scikit-learn's ``r2_score`` with
    ``multioutput="variance_weighted"``); NaN for constant targets."""
    from sklearn.metrics import r2_score

    targets_np, predicted_np = targets.double().numpy(), predicted.double().numpy()
    if not np.any(targets_np != targets_np[:1]):
        return float("nan")
    return float(r2_score(targets_np, predicted_np, multioutput="variance_weighted"))


def ridge_r_squared(
    fit: torch.Tensor, fit_targets: torch.Tensor, score: torch.Tensor, score_targets: torch.Tensor,
    alphas: tuple[float, ...],
) -> list[float]:  # fmt: skip
    """Held-out R² of a ridge probe (with intercept: both sides centred with the fit set's means) for each alpha."""
    target_mean = fit_targets.double().mean(dim=0)
    fit_mean = fit.double().mean(dim=0)
    weights = ridge_solutions(fit.double() - fit_mean, fit_targets.double() - target_mean, alphas)
    centred_score = score.double() - fit_mean
    return [r_squared(centred_score @ weight + target_mean, score_targets) for weight in weights]


# -------------------------------------------------------------------------------------- probe with selection
def _validation_split(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held_out = max(1, int(round(VALIDATION_FRACTION * count)))
    return permutation[held_out:], permutation[:held_out]


def probe_score(
    kind: str, fit: torch.Tensor, fit_target: torch.Tensor, score: torch.Tensor, score_target: torch.Tensor,
    seed: int = 0,
) -> float:  # fmt: skip
    """Held-out score of a linear probe: accuracy % (``classification``) or R² (``regression``).

    The regularisation strength is chosen on a seeded fifth of the fit set; ties go to the stronger one.
    """
    if kind not in ("classification", "regression"):
        raise ValueError(f"probe kind must be 'classification' or 'regression', got {kind!r}")
    fit, score = standardise(fit.float(), score.float())
    train, validation = _validation_split(len(fit), seed)
    select = len(fit) >= MIN_PAIRS_FOR_SELECTION
    if kind == "classification":
        class_count = int(max(fit_target.max(), score_target.max())) + 1
        grid = sorted(LOGISTIC_L2_GRID, reverse=True)
        validation_scores = [
            logistic_accuracy(fit[train], fit_target[train], fit[validation], fit_target[validation], l2, class_count)
            for l2 in (grid if select else [])
        ]
        best = grid[_best_index(validation_scores)]
        return logistic_accuracy(fit, fit_target, score, score_target, best, class_count)
    grid = tuple(sorted(RIDGE_ALPHA_GRID, reverse=True))
    validation_scores = (
        ridge_r_squared(fit[train], fit_target[train], fit[validation], fit_target[validation], grid) if select else []
    )
    return ridge_r_squared(fit, fit_target, score, score_target, (grid[_best_index(validation_scores)],))[0]


def _best_index(scores: list[float]) -> int:
    """Index of the highest score, the first (strongest regularisation) on ties or NaN; 0 for no scores."""
    finite = [(score if score == score else float("-inf"), -index) for index, score in enumerate(scores)]
    return -max(finite)[1] if finite else 0


def factor_targets(pairs: PairedImages) -> dict[str, torch.Tensor]:
    """The ground-truth factors of MNIST-CDCB pairs, by the names of :data:`FACTORS`."""
    return {
        "digit_class": pairs.labels.long(),
        "background_colour_x": pairs.background_colour_x.float(),
        "digit_colour_y": pairs.digit_colour_y.float(),
    }


def leakage_table(
    fit_codes: PairCodes, fit_pairs: PairedImages, score_codes: PairCodes, score_pairs: PairedImages, seed: int = 0
) -> dict:
    """Probe score of every factor from every code: ``table[factor][code]``, with chance and expectations.

    Each factor's entry holds the four code scores (None where undefined), ``metric`` ("accuracy %" or "R^2"),
    ``chance`` (the most frequent fit-set class's accuracy on the score set, or 0 for R²) and ``expected_high``
    (the codes a disentangled model keeps the factor in; it should be near chance in the others).
    """
    fit_targets, score_targets = factor_targets(fit_pairs), factor_targets(score_pairs)
    table: dict = {"fit_pairs": len(fit_pairs), "score_pairs": len(score_pairs)}
    for factor, (kind, expected_high) in FACTORS.items():
        row: dict = {}
        for code in CODES:
            score = probe_score(
                kind, getattr(fit_codes, code), fit_targets[factor], getattr(score_codes, code),
                score_targets[factor], seed,
            )  # fmt: skip
            row[code] = score if math.isfinite(score) else None  # R² of constant targets is undefined
        if kind == "classification":
            majority = torch.bincount(fit_targets[factor]).argmax()
            row["chance"] = 100.0 * (score_targets[factor] == majority).double().mean().item()
            row["metric"] = "accuracy %"
        else:
            row["chance"] = 0.0
            row["metric"] = "R^2"
        row["expected_high"] = list(expected_high)
        table[factor] = row
    return table
