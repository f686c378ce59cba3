"""Linear probes: they find a planted factor in the code that holds it and not in the codes that do not, and give
the numbers of the hand-written torch probes they replaced (scikit-learn solvers since issue 15)."""

from __future__ import annotations

import pytest
import torch

from iiae.data import PairedImages
from iiae.evaluation.digit_classifier import single_thread
from iiae.evaluation.probes import (
    fit_logistic,
    leakage_table,
    probe_score,
    r_squared,
    ridge_solutions,
)
from iiae.evaluation.retrieval import PairCodes


def _pairs(count: int, generator: torch.Generator) -> PairedImages:
    """Pairs whose images do not matter: only labels and colours are read by the probes."""
    return PairedImages(
        x=torch.zeros(count, 3, 8, 8),
        y=torch.zeros(count, 3, 8, 8),
        labels=torch.randint(0, 10, (count,), generator=generator),
        background_colour_x=torch.rand(count, 3, generator=generator),
        digit_colour_y=torch.rand(count, 3, generator=generator),
    )


def _planted_codes(pairs: PairedImages, mixing: dict[str, torch.Tensor], generator: torch.Generator) -> PairCodes:
    """Shared codes: a linear function of the one-hot class; z^x of the background colour; z^y of the digit
    colour; each plus a little noise and some pure-noise dimensions."""
    count = len(pairs)

    def code(signal: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        planted = signal @ matrix + 0.05 * torch.randn(count, matrix.shape[1], generator=generator)
        return torch.cat([planted, torch.randn(count, 6, generator=generator)], dim=1)

    one_hot = torch.nn.functional.one_hot(pairs.labels, 10).float()
    return PairCodes(
        shared_x=code(one_hot, mixing["shared_x"]),
        shared_y=code(one_hot, mixing["shared_y"]),
        exclusive_x=code(pairs.background_colour_x - 0.5, mixing["exclusive_x"]),
        exclusive_y=code(pairs.digit_colour_y - 0.5, mixing["exclusive_y"]),
    )


#: leakage_table of test_planted_factors_are_found_in_their_code_only as the torch probes (L-BFGS, eigendecomposition
#: ridge) computed it before scikit-learn replaced them.
TORCH_PROBES_TABLE = {
    "digit_class": {"shared_x": 100.0, "shared_y": 100.0, "exclusive_x": 10.333333333333334,
                    "exclusive_y": 9.333333333333334, "chance": 9.0},
    "background_colour_x": {"shared_x": -0.008886886649629, "shared_y": -0.019393136463155658,
                            "exclusive_x": 0.9927082805663282, "exclusive_y": -0.013462688806831657, "chance": 0.0},
    "digit_colour_y": {"shared_x": -0.010303927560115556, "shared_y": -0.007393801145005208,
                       "exclusive_x": -0.012057387585540535, "exclusive_y": 0.9924068368767877, "chance": 0.0},
}  # fmt: skip


def test_planted_factors_are_found_in_their_code_only():
    generator = torch.Generator().manual_seed(0)
    mixing = {
        "shared_x": torch.randn(10, 12, generator=generator),
        "shared_y": torch.randn(10, 12, generator=generator),
        "exclusive_x": torch.randn(3, 5, generator=generator),
        "exclusive_y": torch.randn(3, 5, generator=generator),
    }
    fit_pairs, score_pairs = _pairs(600, generator), _pairs(300, generator)
    fit_codes = _planted_codes(fit_pairs, mixing, generator)
    score_codes = _planted_codes(score_pairs, mixing, generator)
    with single_thread():  # as the main job runs the probes
        table = leakage_table(fit_codes, fit_pairs, score_codes, score_pairs)
        again = leakage_table(fit_codes, fit_pairs, score_codes, score_pairs)

    digit_class = table["digit_class"]
    assert digit_class["shared_x"] > 95 and digit_class["shared_y"] > 95
    assert digit_class["exclusive_x"] < 25 and digit_class["exclusive_y"] < 25  # chance is ~10 %
    assert 5 < digit_class["chance"] < 20 and digit_class["metric"] == "accuracy %"
    background, digit_colour = table["background_colour_x"], table["digit_colour_y"]
    assert background["exclusive_x"] > 0.95 and digit_colour["exclusive_y"] > 0.95
    for code in ("shared_x", "shared_y", "exclusive_y"):
        assert background[code] < 0.05, (code, background[code])
    for code in ("shared_x", "shared_y", "exclusive_x"):
        assert digit_colour[code] < 0.05, (code, digit_colour[code])
    assert background["expected_high"] == ["exclusive_x"] and table["fit_pairs"] == 600
    assert table == again  # deterministic
    for factor, expected in TORCH_PROBES_TABLE.items():  # the replaced torch probes' numbers
        tolerance = 1.0 if factor == "digit_class" else 1e-9  # accuracy: 3 of 300 pairs; R²: the same solution
        for code, value in expected.items():
            assert table[factor][code] == pytest.approx(value, abs=tolerance), (factor, code)


def test_ridge_dual_form_equals_the_primal_solution():
    generator = torch.Generator().manual_seed(1)
    wide = torch.randn(20, 50, generator=generator, dtype=torch.float64)  # more dimensions than samples
    targets = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    (dual,) = ridge_solutions(wide, targets, (0.5,))
    primal = torch.linalg.solve(wide.T @ wide + 0.5 * torch.eye(50, dtype=torch.float64), wide.T @ targets)
    torch.testing.assert_close(dual, primal)
    tall = wide[:, :10]
    (solution,) = ridge_solutions(tall, targets, (0.5,))
    expected = torch.linalg.solve(tall.T @ tall + 0.5 * torch.eye(10, dtype=torch.float64), tall.T @ targets)
    torch.testing.assert_close(solution, expected)


def test_r_squared_definition():
    targets = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    assert r_squared(targets, targets) == pytest.approx(1.0)
    assert r_squared(targets.mean(dim=0).expand_as(targets), targets) == pytest.approx(0.0)
    assert r_squared(torch.zeros_like(targets), targets) < 0  # worse than the mean


def test_probe_on_a_handful_of_pairs_and_a_bad_kind():
    generator = torch.Generator().manual_seed(2)
    codes, labels = torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 0, 1, 0, 1])
    # too few pairs for a validation split: the strongest regularisation of the grid still separates 6 points in 4-d
    assert probe_score("classification", codes, labels, codes, labels) == 100.0
    assert probe_score("classification", codes, labels, codes, 1 - labels) == 0.0  # scored against the targets given
    with pytest.raises(ValueError, match="probe kind"):
        probe_score("clustering", codes, labels, codes, labels)


# ---------------------------------------------------------------------------------- the replaced torch probes
def _blobs(count: int, classes: int, dims: int, signal: float, generator: torch.Generator):
    labels = (torch.arange(count) % classes)[torch.randperm(count, generator=generator)]
    centres = torch.randn(classes, dims, generator=generator)
    return signal * centres[labels] + torch.randn(count, dims, generator=generator), labels


def _linear(count: int, dims: int, noise: float, generator: torch.Generator):
    targets = torch.rand(count, 3, generator=generator)
    mixing = torch.randn(3, dims, generator=generator)
    return (targets - 0.5) @ mixing + noise * torch.randn(count, dims, generator=generator), targets


def _reference_cases() -> dict[str, tuple]:
    """Probe problems of moderate signal, where the regularisation strength matters: (kind, fit codes, fit
    targets, score codes, score targets)."""
    generator = torch.Generator().manual_seed(15)
    cases = {}
    for name, classes, dims, signal in [("four_classes", 4, 6, 0.8), ("two_classes", 2, 5, 0.5),
                                        ("ten_classes_wide", 10, 40, 0.6)]:  # fmt: skip
        codes, labels = _blobs(300, classes, dims, signal, generator)
        cases[name] = ("classification", codes[:200], labels[:200], codes[200:], labels[200:])
    for name, dims, noise in [("tall", 8, 1.0), ("wide", 300, 3.0), ("few", 5, 0.5)]:
        count, cut = (12, 8) if name == "few" else (300, 200)  # wide: more dimensions than pairs; few: no selection
        codes, targets = _linear(count, dims, noise, generator)
        cases[name] = ("regression", codes[:cut], targets[:cut], codes[cut:], targets[cut:])
    return cases


#: probe_score of each reference case as the torch probes computed it before scikit-learn replaced them.
TORCH_PROBES_SCORES = {
    "four_classes": 74.0,
    "two_classes": 72.0,
    "ten_classes_wide": 95.0,
    "tall": 0.35385841003622753,
    "wide": 0.5987064096042681,
    "few": -0.41344080240894954,
}


def test_probe_scores_equal_the_replaced_torch_probes():
    with single_thread():
        for name, (kind, *problem) in _reference_cases().items():
            tolerance = 1.0 if kind == "classification" else 1e-9  # accuracy: 1 of 100 pairs; R²: same solution
            assert probe_score(kind, *problem) == pytest.approx(TORCH_PROBES_SCORES[name], abs=tolerance), name


@pytest.mark.parametrize("classes", [2, 3])
def test_the_logistic_probe_minimises_mean_cross_entropy_plus_l2_times_the_squared_weights(classes):
    """At the returned weights the gradient of the documented objective vanishes: this fails if the penalty is
    translated to scikit-learn's C wrongly (the binary case has its own factor) or the binary weights are mapped
    to the softmax form wrongly. Class 3 is absent from the fit set: never predicted."""
    generator = torch.Generator().manual_seed(3)
    features, labels = _blobs(90, classes, 4, 1.0, generator)
    l2 = 0.01
    weight, bias = fit_logistic(features, labels, classes + 1, l2)
    assert weight.shape == (4, classes + 1) and bias.shape == (classes + 1,)
    assert bias[classes] == float("-inf") and not weight[:, classes].any()
    weight = weight[:, :classes].double().requires_grad_()
    bias = bias[:classes].double().requires_grad_()
    loss = torch.nn.functional.cross_entropy(features.double() @ weight + bias, labels) + l2 * weight.square().sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4, (weight.grad, bias.grad)
    assert weight.abs().max() > 0.1  # a real fit, not the zero start


def test_perfectly_predictive_codes_score_1_and_independent_noise_scores_chance():
    generator = torch.Generator().manual_seed(4)
    labels = torch.arange(400) % 5
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    with single_thread():
        assert probe_score("classification", one_hot[:300], labels[:300], one_hot[300:], labels[300:]) == 100.0
        noise = torch.randn(400, 8, generator=generator)
        chance = probe_score("classification", noise[:300], labels[:300], noise[300:], labels[300:])
        assert 5 <= chance <= 35, chance  # 20 % expected; 100 score pairs
        targets = torch.rand(400, 3, generator=generator)
        planted = targets @ torch.randn(3, 6, generator=generator)
        codes = torch.cat([planted, torch.randn(400, 2, generator=generator)], dim=1)  # and two noise dimensions
        assert probe_score("regression", codes[:300], targets[:300], codes[300:], targets[300:]) > 0.999
        unrelated = probe_score("regression", noise[:300], targets[:300], noise[300:], targets[300:])
        assert -0.1 < unrelated < 0.05, unrelated  # nothing to explain: ~0, slightly below on held-out pairs


def test_a_fit_set_of_one_class_predicts_that_class():
    codes = torch.randn(12, 3, generator=torch.Generator().manual_seed(5))
    labels = torch.full((12,), 2)
    weight, bias = fit_logistic(codes, labels, 4, 0.01)
    assert ((codes @ weight + bias).argmax(dim=1) == 2).all()
    assert probe_score("classification", codes, labels, codes, torch.tensor([2] * 6 + [1] * 6)) == 50.0
