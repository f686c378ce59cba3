"""Leakage by intervention on MNIST-CDCB: how far each code moves when only the colour changes, measured against
how far it moves when only the digit changes.

The linear probes of :mod:`iiae.evaluation.probes` say *whether* a code holds a factor (an R² near 1 even when the
factor is a sliver of the code's variation); this measure says *how much* of the code the factor is.

Design: ``M`` test digits (a seeded subset of the test pairs; their intensities ``m_i`` recovered exactly from
each domain's image, :func:`iiae.evaluation.fidelity.intensity_from_x` and ``intensity_from_y``: published-like
pairs have a digit mask per domain) and ``K`` colourings, colouring ``k`` being one CB background colour ``b_k``
and one CD digit colour ``c_k`` drawn by :func:`iiae.data.cdcb.cdcb_colours` in the colour ranges of the test
pairs' generator (the distribution of the training colours). Every digit is drawn in every colouring by
:func:`iiae.data.cdcb.compose_cdcb`: ``x_ik`` (white digit i on background b_k) and ``y_ik`` (digit i in colour
c_k on black), M·K pairs in all. Each code is the posterior mean (eval mode) of its encoder: ``e_ik`` in R^D is
r^x(x_ik) or q(z^x|x_ik) for the X codes, r^y(y_ik) or q(z^y|y_ik) for the Y codes, so each code sees only its own
domain's colour factor.

With ``Var`` the unbiased sample variance (n − 1 in the denominator) of one code dimension d::

    colour spread  S_c = (1/M) Σ_i Σ_d Var_k(e_ikd)    per digit, the variance across its K colourings
    digit spread   S_d = (1/K) Σ_k Σ_d Var_i(e_ikd)    per colouring, the variance across the M digits
    ratio          S_c / S_d                          (None when S_d = 0)

For a code additive in the factors, e_ik = f(m_i) + g(colour_k), S_c is the sample variance of g over the
colourings and S_d that of f over the digits, both unbiased, so the ratio estimates Var g / Var f whatever M and
K are. A ratio near 0: the code ignores the colour (the goal for the shared codes r^x, r^y); large: the colour
dominates it (the goal for the exclusive codes z^x, z^y). The raw spreads are in squared code units and compare
only within one code.
"""

from __future__ import annotations

import torch

from iiae.core.model import IIAE
from iiae.data import PairedImages
from iiae.data.cdcb import cdcb_colours, compose_cdcb
from iiae.evaluation.fidelity import intensity_from_x, intensity_from_y
from iiae.evaluation.retrieval import PairCodes, encode_pairs

INTERVENTION_DIGITS = 100  # M: test digits drawn in every colouring
INTERVENTION_COLOURINGS = 10  # K: colourings of every digit
#: code -> the colour factor its domain varies (each code sees only its own domain's images)
INTERVENED_COLOUR = {
    "shared_x": "background_colour_x",
    "shared_y": "digit_colour_y",
    "exclusive_x": "background_colour_x",
    "exclusive_y": "digit_colour_y",
}


def intervention_spreads(codes: torch.Tensor) -> dict[str, float | None]:
    """Colour spread, digit spread and their ratio of codes ``[M, K, D]`` (digit i, colouring k, dimension d).

    ``colour_spread`` = mean over i of Σ_d Var_k, ``digit_spread`` = mean over k of Σ_d Var_i (unbiased
    variances, computed in float64), ``ratio`` = colour_spread / digit_spread, None when the digit spread is 0.
    """
    if codes.ndim != 3 or codes.shape[0] < 2 or codes.shape[1] < 2:
        raise ValueError(f"codes must be [M >= 2 digits, K >= 2 colourings, D], got shape {tuple(codes.shape)}")
    values = codes.double()
    colour_spread = values.var(dim=1, correction=1).sum(dim=-1).mean().item()
    digit_spread = values.var(dim=0, correction=1).sum(dim=-1).mean().item()
    ratio = colour_spread / digit_spread if digit_spread > 0 else None
    return {"colour_spread": colour_spread, "digit_spread": digit_spread, "ratio": ratio}


def recoloured_pairs(
    test: PairedImages, digits: int, colourings: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x and y ``[M·K, 3, S, S]`` of ``digits`` seeded test digits each drawn in ``colourings`` seeded colourings
    (row i·K + k: digit i in colouring k), with the background colours and digit colours ``[K, 3]`` used.

    M = min(``digits``, number of test pairs); the digits are the first M of ``torch.randperm`` seeded with ``seed``,
    the colours :func:`iiae.data.cdcb.cdcb_colours` ``(colourings, seed)``.
    """
    if colourings < 2 or digits < 2 or len(test) < 2:
        raise ValueError(f"need at least 2 digits and 2 colourings, got {min(digits, len(test))} and {colourings}")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:digits]
    # each domain's own digit mask [M, 1, S, S] (published-like pairs draw X's and Y's strokes apart), exact for CDCB
    intensity_x = intensity_from_x(test.x[order], test.background_colour_x[order])
    intensity_y = intensity_from_y(test.y[order], test.digit_colour_y[order])
    background, digit_colour = cdcb_colours(colourings, seed, test.generator or "classic")  # the data's ranges
    count = len(order)
    x, y = compose_cdcb(intensity_x.repeat_interleave(colourings, dim=0), background.repeat(count, 1),
                        digit_colour.repeat(count, 1), intensity_y.repeat_interleave(colourings, dim=0))  # fmt: skip
    return x, y, background, digit_colour


def colour_intervention(
    model: IIAE,
    test: PairedImages,
    *,
    digits: int = INTERVENTION_DIGITS,
    colourings: int = INTERVENTION_COLOURINGS,
    seed: int = 0,
    batch_size: int = 500,
) -> dict:
    """The spreads of every code of ``model`` under recolouring (see the module docstring).

    Returns ``{"digits": M, "colourings": K, "seed": seed, code: {"colour_spread", "digit_spread", "ratio",
    "colour": the factor varied}}`` for the four codes of :class:`iiae.evaluation.retrieval.PairCodes`.
    Deterministic for a given model, test pairs and seed (no sampling: posterior means).
    """
    x, y, _, _ = recoloured_pairs(test, digits, colourings, seed)
    count = len(x) // colourings
    codes = encode_pairs(model, x, y, batch_size)
    result: dict = {"digits": count, "colourings": colourings, "seed": seed}
    for code in PairCodes.__dataclass_fields__:
        values = getattr(codes, code).reshape(count, colourings, -1)
        result[code] = {**intervention_spreads(values), "colour": INTERVENED_COLOUR[code]}
    return result
