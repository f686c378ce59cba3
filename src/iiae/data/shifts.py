"""Shifted MNIST-CDCB test sets: the same test digits, drawn in ways the training pairs never were.

Each function returns :class:`iiae.data.cdcb.PairedImages` (labels and the colours drawn included, so retrieval
and the MNIST-CDCB measures run on them unchanged) and is a function of its arguments (seeded)::

    from iiae.data.shifts import shifted_test_sets
    sets = shifted_test_sets(digits.test_images, digits.test_labels, size=32, seed=1, workdir=tmp)
    sets["colours_outside"], sets["strokes_thinner"], sets["jpeg_q30"], sets["ab_png_256"], ...

* :func:`colours_outside` -- every colour outside the generator's colour ranges (greyer or darker than any
  training colour);
* :func:`stroke_shift` -- strokes thinner or thicker than training's, per domain (published-like renderer);
* :func:`jpeg_pairs` -- the pairs JPEG-compressed and decoded again (8-bit, blocky, colour-subsampled);
* :func:`through_ab_pngs` -- the pairs exported as AB PNGs (256x256 halves, as ``iiae data export``) and read
  back through the image loader at the model's size.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iiae.data.cdcb import (
    COLOUR_RANGES,
    DEFAULT_GENERATOR,
    PairedImages,
    cdcb_intensities,
    check_generator,
    compose_cdcb,
    draw_cdcb,
    hsv_to_rgb,
    make_cdcb,
)
from iiae.data.export import export_pairs, to_uint8
from iiae.data.paired_images import scan_split
from iiae.data.strokes import PUBLISHED_STROKES, StrokeStyle, render_strokes
from iiae.errors import ConfigError

COLOUR_SHIFT_STREAM = 0xC0105  # second seed word of the outside-range colours (independent of the pairs' draws)
LOWEST_VALUE = 0.1  # the least contrast of a digit with its background, even outside the ranges (it must stay visible)
STROKE_SHIFT = 0.15  # stroke-level change of the suite's thinner / thicker sets (the training spread is +-0.15)
JPEG_QUALITIES = (75, 30)  # the suite's JPEG sets
STROKE_SETS = {  # the suite's stroke sets: stroke-level change of X, of Y (positive: thinner)
    "strokes_thinner": (STROKE_SHIFT, STROKE_SHIFT),
    "strokes_thicker": (-STROKE_SHIFT, -STROKE_SHIFT),
    "strokes_swapped": (-STROKE_SHIFT, STROKE_SHIFT),  # X thick, Y thin: the opposite of training
}


def _outside_colours(count: int, rng: np.random.Generator, saturation: tuple[float, float],
                     value: tuple[float, float], highest_value: float = 1.0) -> torch.Tensor:  # fmt: skip
    """``count`` RGB colours, each greyer (saturation below ``saturation``) or darker (value below ``value``, but
    at least LOWEST_VALUE) than the range, the other coordinate inside it, the value at most ``highest_value``;
    hue uniform. Half of each kind."""
    uniform = rng.random((count, 3))
    greyer = np.arange(count) % 2 == 0
    hsv = np.empty((count, 3))
    hsv[:, 0] = uniform[:, 0]
    inside_s = saturation[0] + uniform[:, 1] * (saturation[1] - saturation[0])
    inside_v = value[0] + uniform[:, 2] * (min(value[1], highest_value) - value[0])
    below_s = uniform[:, 1] * saturation[0]
    below_v = LOWEST_VALUE + uniform[:, 2] * max(value[0] - LOWEST_VALUE, 0.0)
    hsv[:, 1] = np.where(greyer, below_s, inside_s)
    hsv[:, 2] = np.where(greyer, inside_v, below_v)
    return torch.from_numpy(hsv_to_rgb(hsv).astype(np.float32))


def colours_outside(images: np.ndarray, labels: np.ndarray, *, size: int = 32, seed: int = 0,
                    generator: str = DEFAULT_GENERATOR,
                    highest_background_value: float = 1.0 - LOWEST_VALUE) -> PairedImages:  # fmt: skip
    """The pairs ``make_cdcb(images, labels, size=size, seed=seed, generator=generator)`` (same strokes) with
    every background and digit colour outside that generator's ranges: half greyer than its lowest saturation,
    half darker than its lowest value (down to ``LOWEST_VALUE``). Colours from
    ``numpy.random.default_rng([seed, COLOUR_SHIFT_STREAM])``.

    Every digit stays visible: a CD digit is at least LOWEST_VALUE brighter than its black background, and a CB
    background at least LOWEST_VALUE darker than the white digit in some channel (a greyer background's value is
    at most ``highest_background_value``, 1 - LOWEST_VALUE; with 1, as before that guard, about 4 % of the
    backgrounds were near-white greys on which the white digit all but vanishes, and the best models missed three
    in four of their partners: BENCHMARKS.md).
    """
    check_generator(generator)
    pairs = make_cdcb(images, labels, size=size, seed=seed, keep_intensity=True, generator=generator)
    ranges = COLOUR_RANGES[generator]
    rng = np.random.default_rng([seed, COLOUR_SHIFT_STREAM])
    background = _outside_colours(len(pairs), rng, ranges.saturation, ranges.background_value,
                                  highest_value=highest_background_value)  # fmt: skip
    digit_colour = _outside_colours(len(pairs), rng, ranges.saturation, ranges.digit_value)
    x, y = compose_cdcb(pairs.intensity, background, digit_colour, pairs.intensity_y)
    return replace(pairs, x=x, y=y, background_colour_x=background, digit_colour_y=digit_colour)


def stroke_shift(images: np.ndarray, labels: np.ndarray, *, level_change_x: float, level_change_y: float,
                 size: int = 32, seed: int = 0) -> PairedImages:  # fmt: skip
    """Published-like pairs (colours and poses of ``seed``) whose stroke levels are moved by ``level_change_x``
    and ``level_change_y``: positive is thinner, negative thicker (0.15 is the whole per-pair spread of training)."""
    style = StrokeStyle(level_x=PUBLISHED_STROKES.level_x + level_change_x,
                        level_y=PUBLISHED_STROKES.level_y + level_change_y)  # fmt: skip
    if not (0.05 < style.level_x - style.level_spread and style.level_x + style.level_spread < 0.95):
        raise ConfigError(f"stroke level change {level_change_x} of X leaves levels outside (0.05, 0.95)")
    if not (0.05 < style.level_y - style.level_spread and style.level_y + style.level_spread < 0.95):
        raise ConfigError(f"stroke level change {level_change_y} of Y leaves levels outside (0.05, 0.95)")
    draws = draw_cdcb(len(images), seed, "published_like")
    assert draws.strokes is not None
    shifted = replace(draws.strokes, level_x=draws.strokes.level_x + level_change_x,
                      level_y=draws.strokes.level_y + level_change_y)  # fmt: skip
    intensity, intensity_y = render_strokes(np.ascontiguousarray(images), shifted, size, style)
    x, y = compose_cdcb(intensity, draws.background_colour_x, draws.digit_colour_y, intensity_y)
    return PairedImages(x=x, y=y, labels=torch.as_tensor(np.asarray(labels), dtype=torch.int64),
                        background_colour_x=draws.background_colour_x, digit_colour_y=draws.digit_colour_y,
                        intensity=intensity, intensity_y=intensity_y, generator="published_like")  # fmt: skip


def _jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """``[N, 3, S, S]`` in [-1, 1] through a JPEG file of ``quality`` (PIL, 4:2:0 chroma) and back."""
    decoded = []
    for array in to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def jpeg_pairs(pairs: PairedImages, quality: int) -> PairedImages:
    """``pairs`` with X and Y JPEG-compressed at ``quality`` (1-95) and decoded again; everything else kept."""
    if not 1 <= quality <= 95:
        raise ConfigError(f"JPEG quality must be in 1..95, got {quality}")
    return replace(pairs, x=_jpeg(pairs.x, quality), y=_jpeg(pairs.y, quality))


def through_ab_pngs(images: np.ndarray, labels: np.ndarray, folder: str | Path, *, size: int = 32, seed: int = 0,
                    generator: str = DEFAULT_GENERATOR, export_size: int = 256) -> PairedImages:  # fmt: skip
    """The pairs of ``make_cdcb(..., seed=seed, generator=generator)`` rendered at ``export_size``, written as
    AB PNGs into ``folder/test`` (``iiae data export``'s format) and read back through the image loader at
    ``size`` (box-filter shrinking), as a user's exported data set would be. ``folder`` must not hold a test/."""
    folder = Path(folder)
    if (folder / "test").exists():
        raise ConfigError(f"{folder / 'test'} exists: through_ab_pngs writes a fresh test/ folder")
    check_generator(generator)
    draws = draw_cdcb(len(images), seed, generator)
    images = np.ascontiguousarray(images)
    written = 0
    for start in range(0, len(images), 256):
        chunk = slice(start, start + 256)
        part = draws.subset(chunk)
        intensity, intensity_y = cdcb_intensities(images[chunk], part, export_size)
        x, y = compose_cdcb(intensity, part.background_colour_x, part.digit_colour_y, intensity_y)
        written += export_pairs(x, y, folder / "test", "ab", first=written + 1)
    dataset = scan_split(folder, "test", "ab", size)
    x, y = dataset.x[0 : len(dataset)], dataset.y[0 : len(dataset)]
    return PairedImages(x=x, y=y, labels=torch.as_tensor(np.asarray(labels), dtype=torch.int64),
                        background_colour_x=draws.background_colour_x, digit_colour_y=draws.digit_colour_y)  # fmt: skip


# What each test set of the suite is, by name (the clean set and every key of shifted_test_sets), for reports.
SHIFT_DESCRIPTIONS = {
    "clean": "the run's test pairs (unshifted)",
    "colours_outside": "colours outside the training ranges (greyer or darker)",
    "strokes_thinner": "strokes thinner in both domains",
    "strokes_thicker": "strokes thicker in both domains",
    "strokes_swapped": "X's strokes thicker than Y's (the opposite of training)",
    "jpeg_q75": "JPEG quality 75",
    "jpeg_q30": "JPEG quality 30",
    "ab_png_256": "256x256 AB PNGs read back through the image loader",
}


def shifted_test_sets(images: np.ndarray, labels: np.ndarray, *, size: int = 32, seed: int = 0,
                      generator: str = DEFAULT_GENERATOR, workdir: str | Path) -> dict[str, PairedImages]:  # fmt: skip
    """Every shift of the suite, by name, from the test digits (``seed``: the test pairs' seed, so the unshifted
    test pairs are ``make_cdcb(images, labels, size=size, seed=seed, generator=generator)``). ``workdir`` (an
    empty or new folder) receives the AB PNGs of ``ab_png_256``."""
    sets = {"colours_outside": colours_outside(images, labels, size=size, seed=seed, generator=generator)}
    for name, (change_x, change_y) in STROKE_SETS.items():
        sets[name] = stroke_shift(images, labels, level_change_x=change_x, level_change_y=change_y, size=size,
                                  seed=seed)  # fmt: skip
    plain = make_cdcb(images, labels, size=size, seed=seed, generator=generator)
    for quality in JPEG_QUALITIES:
        sets[f"jpeg_q{quality}"] = jpeg_pairs(plain, quality)
    sets["ab_png_256"] = through_ab_pngs(images, labels, workdir, size=size, seed=seed, generator=generator)
    return sets
