"""Translation fidelity on MNIST-CDCB: does the digit survive translation, and do the colours obey the codes?

Ground truth of a test pair i: its digit intensities (``m_i`` recovered exactly from y_i = c_i·m_i, and X's own
from x_i = b_i(1 - m) + m, which differs from Y's for the published-like generator), the X background colour
``b_i`` and the Y digit colour ``c_i`` (RGB in [0, 1]). Measures on X→Y outputs read Y's intensity, measures
on Y→X outputs X's. With images mapped to [0, 1]:

* **class accuracy**: the project's digit classifier (:mod:`iiae.evaluation.digit_classifier`) on real test images and on
  X→Y and Y→X translations whose exclusive code is drawn from the prior (the digit must survive);
* **X→Y background vs black**: mean |ŷ| over background pixels (m ≤ 0.01) of X→Y outputs, prior z^y;
* **X→Y digit colour**: with z^y the posterior mean of the paired y, the digit colour ĉ_i fitted by least
  squares to ŷ_i ≈ ĉ_i·m_i over digit pixels (m ≥ 0.5); error = mean |ĉ_i − c_i| over pairs and channels;
* **Y→X background colour**: with z^x the posterior mean of the paired x, b̂_i = mean of x̂_i over background
  pixels; error = mean |b̂_i − b_i|;
* **Y→X digit vs white**: mean |1 − x̂| over full-stroke pixels (m ≥ 0.99) of Y→X outputs, prior z^x.

Every error is in [0, 1] units (a fraction of the full intensity range); a perfect translation scores 0.
An error is None when the test images have no pixel of the kind it reads (e.g. digits with no background).
``shuffled_reference`` gives, for scale, the colour error of guessing another test pair's colour.
"""

from __future__ import annotations

import torch

from iiae.core.model import IIAE
from iiae.data import PairedImages
from iiae.evaluation.digit_classifier import DigitClassifier

BACKGROUND_MAX_INTENSITY = 0.01  # pixels at most this bright in the digit are background
DIGIT_MIN_INTENSITY = 0.5  # pixels at least this bright enter the digit-colour fit
STROKE_MIN_INTENSITY = 0.99  # full-stroke pixels, where a CB image is exactly white


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to [0, 1] (clamped)."""
    return (images.float().clamp(-1, 1) + 1) / 2


def intensity_from_y(y: torch.Tensor, digit_colour_y: torch.Tensor) -> torch.Tensor:
    """The digit intensity m [N, 1, S, S] of CD images y = c·m (in [-1, 1]) with known colours c [N, 3].

    Least squares over the channels: m = <y, c> / <c, c>, exact for MNIST-CDCB pairs.
    """
    colour = digit_colour_y.float()[:, :, None, None]
    return ((to_unit(y) * colour).sum(dim=1, keepdim=True) / colour.square().sum(dim=1, keepdim=True)).clamp(0, 1)


def intensity_from_x(x: torch.Tensor, background_colour_x: torch.Tensor) -> torch.Tensor:
    """The digit intensity m [N, 1, S, S] of CB images x = b(1 - m) + m (in [-1, 1]) with known backgrounds b [N, 3].

    Least squares over the channels: m = <x - b, 1 - b> / <1 - b, 1 - b>, exact for MNIST-CDCB pairs (a
    background is never white: its saturation is at least 0.05).
    """
    background = background_colour_x.float()[:, :, None, None]
    lift = 1.0 - background
    numerator = ((to_unit(x) - background) * lift).sum(dim=1, keepdim=True)
    return (numerator / lift.square().sum(dim=1, keepdim=True).clamp(min=1e-12)).clamp(0, 1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Mean of ``values`` [N, C, S, S] over the pixels where ``mask`` [N, 1, S, S] holds, all channels pooled
    (None when no pixel does)."""
    weights = mask.expand_as(values).float()
    total = weights.sum()
    return float((values * weights).sum() / total) if total > 0 else None


def background_error_vs_black(y_hat: torch.Tensor, intensity: torch.Tensor) -> float | None:
    """Mean |ŷ| in [0, 1] over background pixels: how far the background of domain-Y outputs is from black."""
    return _masked_mean(to_unit(y_hat), intensity <= BACKGROUND_MAX_INTENSITY)


def digit_error_vs_white(x_hat: torch.Tensor, intensity: torch.Tensor) -> float | None:
    """Mean |1 − x̂| over full-stroke pixels: how far the digit of domain-X outputs is from white."""
    return _masked_mean(1 - to_unit(x_hat), intensity >= STROKE_MIN_INTENSITY)


def fitted_digit_colour(y_hat: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """Per-image colour ĉ [N, 3] minimising Σ |ŷ − ĉ·m|² over digit pixels (m ≥ 0.5)."""
    weight = intensity * (intensity >= DIGIT_MIN_INTENSITY)
    numerator = (to_unit(y_hat) * weight).sum(dim=(2, 3))
    return numerator / weight.square().sum(dim=(2, 3))  # NaN for an image without digit pixels


def fitted_background_colour(x_hat: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
    """Per-image mean colour [N, 3] of the background pixels (m ≤ 0.01); NaN for an image without any."""
    mask = (intensity <= BACKGROUND_MAX_INTENSITY).float()
    return (to_unit(x_hat) * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))


def colour_error(estimated: torch.Tensor, true: torch.Tensor) -> float | None:
    """Mean absolute difference of two [N, 3] colour tables, in [0, 1], over the rows where ``estimated`` is
    defined (finite); None when none is."""
    difference = (estimated.float() - true.float()).abs()
    defined = difference.isfinite().all(dim=1)
    return float(difference[defined].mean()) if defined.any() else None


def shuffled_colour_error(colours: torch.Tensor, seed: int = 0) -> float | None:
    """Error of guessing a random other pair's colour: the scale a colour error should be read against."""
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(colours), generator=generator)
    return colour_error(colours[permutation], colours)


@torch.no_grad()
def translate_test_pairs(
    model: IIAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500, seed: int = 0
) -> dict[str, torch.Tensor]:
    """X→Y and Y→X outputs (CPU, in [-1, 1]) with prior exclusive codes and with the paired posterior means.

    Keys: ``x_to_y_prior``, ``y_to_x_prior``, ``x_to_y_paired``, ``y_to_x_paired``. The prior codes come from
    a generator seeded with ``seed``; the model's training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs: dict[str, list[torch.Tensor]] = {
        "x_to_y_prior": [], "y_to_x_prior": [], "x_to_y_paired": [], "y_to_x_paired": []
    }  # fmt: skip
    try:
        for start in range(0, len(x), batch_size):
            x_batch, y_batch = x[start : start + batch_size].to(device), y[start : start + batch_size].to(device)
            shared_x, shared_y = model.encode_shared_x(x_batch), model.encode_shared_y(y_batch)
            prior_y = model.sample_exclusive(len(x_batch), generator)
            prior_x = model.sample_exclusive(len(y_batch), generator)
            outputs["x_to_y_prior"].append(model.decode_y(prior_y, shared_x).cpu())
            outputs["y_to_x_prior"].append(model.decode_x(prior_x, shared_y).cpu())
            outputs["x_to_y_paired"].append(model.decode_y(model.encode_exclusive_y(y_batch), shared_x).cpu())
            outputs["y_to_x_paired"].append(model.decode_x(model.encode_exclusive_x(x_batch), shared_y).cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in outputs.items()}


def colour_errors(
    translations: dict[str, torch.Tensor],
    test: PairedImages,
    intensity: torch.Tensor | None = None,
    intensity_x: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """The four colour errors of :func:`translate_test_pairs` outputs against the test pairs' ground truth:
    X→Y outputs read Y's digit intensity (``intensity``, else recovered from ``test.y``), Y→X outputs X's
    (``intensity_x``, else recovered from ``test.x``)."""
    if intensity is None:
        intensity = intensity_from_y(test.y, test.digit_colour_y)
    if intensity_x is None:
        intensity_x = intensity_from_x(test.x, test.background_colour_x)
    return {
        "x_to_y_background_vs_black": background_error_vs_black(translations["x_to_y_prior"], intensity),
        "x_to_y_digit_colour": colour_error(
            fitted_digit_colour(translations["x_to_y_paired"], intensity), test.digit_colour_y
        ),
        "y_to_x_background_colour": colour_error(
            fitted_background_colour(translations["y_to_x_paired"], intensity_x), test.background_colour_x
        ),
        "y_to_x_digit_vs_white": digit_error_vs_white(translations["y_to_x_prior"], intensity_x),
    }


def translation_fidelity(
    model: IIAE, test: PairedImages, classifier: DigitClassifier, batch_size: int = 500, seed: int = 0
) -> dict:
    """Classifier accuracy (%) on real and translated test images, and the colour errors (see module doc)."""
    translations = translate_test_pairs(model, test.x, test.y, batch_size, seed)
    labels = test.labels
    return {
        "class_accuracy": {
            "real_x": classifier.accuracy(test.x, labels),
            "real_y": classifier.accuracy(test.y, labels),
            "x_to_y": classifier.accuracy(translations["x_to_y_prior"], labels),
            "y_to_x": classifier.accuracy(translations["y_to_x_prior"], labels),
            "x_to_y_paired_code": classifier.accuracy(translations["x_to_y_paired"], labels),
            "y_to_x_paired_code": classifier.accuracy(translations["y_to_x_paired"], labels),
        },
        "colour_error": colour_errors(translations, test),
        "shuffled_reference": {
            "digit_colour": shuffled_colour_error(test.digit_colour_y, seed),
            "background_colour": shuffled_colour_error(test.background_colour_x, seed),
        },
        "classifier_key": classifier.key[:24],
    }
