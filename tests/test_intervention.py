"""Leakage by intervention: the spreads by hand, synthetic encoders that ignore or read the colour, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iiae.data import compose_cdcb, load_digits, make_cdcb
from iiae.data.cdcb import cdcb_colours
from iiae.evaluation.intervention import colour_intervention, intervention_spreads, recoloured_pairs
from iiae.evaluation.measures import intervention_markdown, measures_summary

CODES = ("shared_x", "shared_y", "exclusive_x", "exclusive_y")


@pytest.fixture(scope="module")
def test_pairs():
    """60 MNIST-CDCB test pairs of real digits, with their intensities kept for the checks."""
    data = load_digits("embedded")
    return make_cdcb(data.test_images[:60], data.test_labels[:60], size=32, seed=1, keep_intensity=True)


# ---------------------------------------------------------------------------------------- the spreads by hand
def test_spreads_of_an_additive_code_by_hand():
    digit_part, colour_part = torch.tensor([0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])  # M = 2, K = 3
    codes = torch.stack(torch.broadcast_tensors(digit_part[:, None], colour_part[None, :]), dim=-1)  # [2, 3, 2]
    spreads = intervention_spreads(codes)
    # per digit, across colourings: dimension 0 constant, dimension 1 has Var([0, 1, 2]) = 1
    # per colouring, across digits: dimension 0 has Var([0, 2]) = 2, dimension 1 constant
    assert spreads == pytest.approx({"colour_spread": 1.0, "digit_spread": 2.0, "ratio": 0.5})


def test_spreads_of_an_interacting_code_by_hand():
    digit_part, colour_part = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0, 2.0])
    codes = (digit_part[:, None] * colour_part[None, :])[..., None]  # e_ik = f_i · g_k, one dimension
    spreads = intervention_spreads(codes)
    # colour: mean_i f_i² Var(g) = (1 + 9) / 2 · 1 = 5; digit: mean_k g_k² Var(f) = (0 + 2 + 8) / 3
    assert spreads == pytest.approx({"colour_spread": 5.0, "digit_spread": 10 / 3, "ratio": 1.5})


def test_a_code_blind_to_the_digit_has_no_ratio_and_bad_shapes_are_refused():
    codes = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])[..., None]  # 3 digits, the code follows the colour
    assert intervention_spreads(codes) == {"colour_spread": 0.5, "digit_spread": 0.0, "ratio": None}
    for shape in [(4, 5), (1, 5, 3), (4, 1, 3)]:
        with pytest.raises(ValueError, match="codes must be"):
            intervention_spreads(torch.zeros(shape))


# --------------------------------------------------------------------------------------- the recoloured pairs
def test_recoloured_pairs_draw_each_digit_in_every_colouring(test_pairs):
    x, y, background, digit_colour = recoloured_pairs(test_pairs, digits=7, colourings=4, seed=3)
    assert x.shape == y.shape == (28, 3, 32, 32) and background.shape == digit_colour.shape == (4, 3)
    expected_background, expected_digit_colour = cdcb_colours(4, 3, "published_like")  # the data's colour ranges
    assert torch.equal(background, expected_background) and torch.equal(digit_colour, expected_digit_colour)
    order = torch.randperm(60, generator=torch.Generator().manual_seed(3))[:7]
    for i, k in [(0, 0), (2, 3), (6, 1)]:
        index = order[i : i + 1]
        want_x, want_y = compose_cdcb(test_pairs.intensity[index], background[k : k + 1], digit_colour[k : k + 1],
                                      test_pairs.intensity_y[index])  # fmt: skip
        torch.testing.assert_close(x[i * 4 + k], want_x[0], atol=1e-5, rtol=0)  # each domain's own mask recovered
        torch.testing.assert_close(y[i * 4 + k], want_y[0], atol=1e-5, rtol=0)
    all_digits, _, _, _ = recoloured_pairs(test_pairs, digits=500, colourings=2)
    assert len(all_digits) == 120  # at most every test digit
    with pytest.raises(ValueError, match="at least 2"):
        recoloured_pairs(test_pairs, digits=7, colourings=1)


# ----------------------------------------------------------------------------------------- synthetic encoders
def _unit(images: torch.Tensor) -> torch.Tensor:
    return (images + 1) / 2


def _digit_from_x(x: torch.Tensor) -> torch.Tensor:
    """m [N, 1, S, S] of CB images: unit = b(1 − m) + m per channel, b the channel's minimum (background pixels);
    read on the channel of the darkest background (b <= 0.5 for the CDCB colours)."""
    unit = _unit(x)
    background = unit.amin(dim=(2, 3), keepdim=True)
    channel = background.argmin(dim=1, keepdim=True)
    m = (unit - background) / (1 - background)
    return m.gather(1, channel.expand(-1, 1, *m.shape[2:]))


def _digit_from_y(y: torch.Tensor) -> torch.Tensor:
    """m / max m [N, 1, S, S] of CD images (unit = c·m per channel), on the brightest channel."""
    unit = _unit(y)
    peak = unit.amax(dim=(2, 3), keepdim=True)
    channel = peak.argmax(dim=1, keepdim=True)
    normalised = unit / peak
    return normalised.gather(1, channel.expand(-1, 1, *unit.shape[2:]))


def _colour_from_x(x: torch.Tensor) -> torch.Tensor:
    return _unit(x)[:, :, 0, 0]  # the corner pixel: the background colour


def _colour_from_y(y: torch.Tensor) -> torch.Tensor:
    peak = _unit(y).amax(dim=(2, 3))
    return peak / peak.amax(dim=1, keepdim=True)  # c / max(c): the digit's colour, whatever its brightness


BOTH_DIGIT_WEIGHT = 10.0  # the digit's mean intensity varies little: scaled up to the colours' order


class SyntheticEncoders(nn.Module):
    """The four encoders of :class:`iiae.core.model.IIAE` that :func:`iiae.evaluation.retrieval.encode_pairs` calls,
    as fixed functions of the images: ``digit`` (the digit map, pooled to 8×8: blind to the colour), ``colour``
    (the domain's colour, plus ``digit_weight`` × the digit's mean intensity), or ``both`` (the colour and
    :data:`BOTH_DIGIT_WEIGHT` × the digit's mean intensity)."""

    def __init__(self, kind: str, digit_weight: float = 0.0) -> None:
        super().__init__()
        self.kind, self.digit_weight = kind, digit_weight
        self.anchor = nn.Parameter(torch.zeros(()))  # encode_pairs finds the device from the parameters

    def _code(self, digit: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        digit_map = nn.functional.avg_pool2d(digit, 4).flatten(1)
        if self.kind == "digit":
            return digit_map
        if self.kind == "colour":
            return torch.cat([colour, self.digit_weight * digit.mean(dim=(1, 2, 3))[:, None]], dim=1)
        return torch.cat([colour, BOTH_DIGIT_WEIGHT * digit.mean(dim=(1, 2, 3))[:, None]], dim=1)

    def encode_shared_x(self, x: torch.Tensor) -> torch.Tensor:
        return self._code(_digit_from_x(x), _colour_from_x(x))

    def encode_shared_y(self, y: torch.Tensor) -> torch.Tensor:
        return self._code(_digit_from_y(y), _colour_from_y(y))

    encode_exclusive_x = encode_shared_x
    encode_exclusive_y = encode_shared_y


def test_an_encoder_blind_to_the_colour_has_ratio_zero(test_pairs):
    result = colour_intervention(SyntheticEncoders("digit"), test_pairs, digits=40, colourings=6)
    for code in CODES:
        assert result[code]["digit_spread"] > 0.1  # 64 pooled pixels of different digits
        assert result[code]["colour_spread"] < 1e-9 and result[code]["ratio"] < 1e-8
    assert result["shared_x"]["colour"] == "background_colour_x" and result["shared_y"]["colour"] == "digit_colour_y"


def test_an_encoder_of_the_colour_only_has_a_large_ratio(test_pairs):
    result = colour_intervention(SyntheticEncoders("colour", digit_weight=1e-3), test_pairs, digits=40, colourings=6)
    for code in CODES:
        assert result[code]["colour_spread"] > 0.01 and result[code]["ratio"] > 1e3
    blind = colour_intervention(SyntheticEncoders("colour"), test_pairs, digits=40, colourings=6)
    assert blind["shared_x"]["digit_spread"] == 0 and blind["shared_x"]["ratio"] is None  # background: exact
    assert "n/a (digit spread 0)" in intervention_markdown(blind)


def test_an_encoder_of_both_has_the_ratio_of_its_parts(test_pairs):
    """Code [colour (3), 10 × mean intensity (1)]: the colour spread is the colours' summed variance, the digit spread
    the variance of the digits' mean intensity (for y: of m / max m), each from the ground truth."""
    digits, colourings, seed = 40, 6, 5
    result = colour_intervention(SyntheticEncoders("both"), test_pairs, digits=digits, colourings=colourings,
                                 seed=seed)  # fmt: skip
    background, digit_colour = cdcb_colours(colourings, seed, "published_like")
    order = torch.randperm(60, generator=torch.Generator().manual_seed(seed))[:digits]
    intensity, intensity_y = test_pairs.intensity[order], test_pairs.intensity_y[order]  # each domain's own mask
    x_colour_spread = background.double().var(dim=0).sum().item()
    y_colour = digit_colour.double() / digit_colour.double().amax(dim=1, keepdim=True)
    y_colour_spread = y_colour.var(dim=0).sum().item()
    x_digit_spread = BOTH_DIGIT_WEIGHT**2 * intensity.double().mean(dim=(1, 2, 3)).var().item()
    y_digit_spread = BOTH_DIGIT_WEIGHT**2 * (intensity_y.double() / intensity_y.double().amax(
        dim=(1, 2, 3), keepdim=True)).mean(dim=(1, 2, 3)).var().item()  # fmt: skip
    for code, colour_spread, digit_spread in [
        ("shared_x", x_colour_spread, x_digit_spread), ("exclusive_x", x_colour_spread, x_digit_spread),
        ("shared_y", y_colour_spread, y_digit_spread), ("exclusive_y", y_colour_spread, y_digit_spread),
    ]:  # fmt: skip
        assert result[code]["colour_spread"] == pytest.approx(colour_spread, rel=1e-4)
        assert result[code]["digit_spread"] == pytest.approx(digit_spread, rel=1e-4)
        assert result[code]["ratio"] == pytest.approx(colour_spread / digit_spread, rel=2e-4)
    assert 0.1 < result["shared_x"]["ratio"] < 10  # neither factor alone: an intermediate ratio


def test_the_intervention_is_deterministic_from_its_seed(test_pairs):
    encoders = SyntheticEncoders("both")
    first = colour_intervention(encoders, test_pairs, digits=30, colourings=5, seed=2, batch_size=7)
    assert first == colour_intervention(encoders, test_pairs, digits=30, colourings=5, seed=2, batch_size=7)
    other_batches = colour_intervention(encoders, test_pairs, digits=30, colourings=5, seed=2, batch_size=150)
    for code in CODES:
        assert other_batches[code]["ratio"] == pytest.approx(first[code]["ratio"], rel=1e-6)
    other_seed = colour_intervention(encoders, test_pairs, digits=30, colourings=5, seed=3)
    assert other_seed["shared_x"]["colour_spread"] != first["shared_x"]["colour_spread"]
    assert {key: first[key] for key in ("digits", "colourings", "seed")} == {"digits": 30, "colourings": 5, "seed": 2}
    assert encoders.training  # encode_pairs restores the mode


def test_the_summary_line_names_the_ratios(test_pairs):
    intervention = colour_intervention(SyntheticEncoders("both"), test_pairs, digits=20, colourings=4)
    leakage = {factor: {"shared_x": 0.5, "shared_y": 0.5, "exclusive_x": 0.5, "exclusive_y": 0.5}
               for factor in ("digit_class", "background_colour_x", "digit_colour_y")}  # fmt: skip
    accuracy = {"real_x": 99.0, "x_to_y": 90.0, "y_to_x": 90.0}
    line = measures_summary({"translation_fidelity": {"class_accuracy": accuracy}, "leakage": leakage,
                             "colour_intervention": intervention}).splitlines()[-1]  # fmt: skip
    assert line.startswith("colour intervention: colour / digit spread of r^x / r^y / z^x / z^y ")
    assert f"{intervention['shared_x']['ratio']:.3g}" in line
