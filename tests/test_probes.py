"""Linear probes: they find a planted factor in the code that holds it and not in the codes that do not."""

from __future__ import annotations

import pytest
import torch

from iiae.data import PairedImages
from iiae.evaluation.digit_classifier import single_thread
from iiae.evaluation.probes import (
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
