"""Statistics that tell MNIST-CDCB generators apart (and from the published data set).

Measured on the published pairs (issue 14): colours from nearly the whole RGB cube (saturation down to about
0.05, value down to about 0.2 for backgrounds and 0.4 for digits); digits that, brought back to 28 px, correlate
about 0.90 with their MNIST originals; digit masks of the two images of a pair that correlate about 0.96, with
ink on about 13 % (CB) and 11 % (CD) of the image. ``benchmarks/cdcb_generator.py`` prints them for our generators.
"""

from __future__ import annotations

import numpy as np
import torch

from iiae.data.cdcb import PairedImages

INK_LEVEL = 0.5  # a pixel whose digit intensity exceeds this is ink


def image_correlations(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of images ``[N, ...]`` over their pixels, ``[N]`` float64 (0 where an
    image is constant)."""
    a, b = first.flatten(1).double(), second.flatten(1).double()
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)


def ink_fractions(intensity: torch.Tensor) -> torch.Tensor:
    """Fraction of each image's pixels that are ink (intensity above ``INK_LEVEL``), ``[N]``."""
    return (intensity > INK_LEVEL).flatten(1).double().mean(dim=1)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` RGB in [0, 1] to HSV in [0, 1] (saturation 0 for black), vectorised."""
    value = rgb.amax(dim=-1)
    spread = value - rgb.amin(dim=-1)
    saturation = torch.where(value > 0, spread / value.clamp(min=1e-12), torch.zeros_like(value))
    red, green, blue = rgb.unbind(-1)
    safe = spread.clamp(min=1e-12)
    hue = torch.where(value == red, (green - blue) / safe, torch.where(value == green, 2 + (blue - red) / safe,
                                                                          4 + (red - green) / safe))  # fmt: skip
    hue = torch.where(spread > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=-1)


def cdcb_statistics(pairs: PairedImages, digits: np.ndarray) -> dict[str, float]:
    """The statistics of pairs made with ``keep_intensity=True`` at size 28 from uint8 ``digits`` [N, 28, 28]:
    mean X-Y mask correlation, mean correlation of each domain's digit with its MNIST original, mean ink
    fractions, the share of pairs whose Y strokes are thicker, and the colour ranges (HSV minima)."""
    if pairs.intensity is None or pairs.x.shape[-1] != digits.shape[-1]:
        raise ValueError("cdcb_statistics needs pairs made at the digits' size with keep_intensity=True")
    intensity_x = pairs.intensity
    intensity_y = intensity_x if pairs.intensity_y is None else pairs.intensity_y
    original = torch.from_numpy(np.ascontiguousarray(digits)).double().div(255.0)
    background, digit = rgb_to_hsv(pairs.background_colour_x), rgb_to_hsv(pairs.digit_colour_y)
    ink_x, ink_y = ink_fractions(intensity_x), ink_fractions(intensity_y)
    return {
        "mask_correlation_x_y": float(image_correlations(intensity_x, intensity_y).mean()),
        "mnist_correlation_x": float(image_correlations(intensity_x, original).mean()),
        "mnist_correlation_y": float(image_correlations(intensity_y, original).mean()),
        "ink_x": float(ink_x.mean()),
        "ink_y": float(ink_y.mean()),
        "share_y_thicker": float((ink_y > ink_x).double().mean()),
        "share_x_thicker": float((ink_x > ink_y).double().mean()),
        "min_saturation": float(torch.cat([background[:, 1], digit[:, 1]]).min()),
        "min_background_value": float(background[:, 2].min()),
        "min_digit_value": float(digit[:, 2].min()),
    }
