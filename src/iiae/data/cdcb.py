"""MNIST-CDCB: paired "coloured background" and "coloured digit" images of the same MNIST digit.

Domain X (CB) shows a white digit on a background of a random colour; domain Y (CD) shows the same digit in a
random colour on a black background (Gonzalez-Garcia et al., 2018). The digit's intensity ``m`` in [0, 1]
blends the two colours of each domain::

    X = background * (1 - m) + white * m        Y = digit_colour * m

so the shared information is the digit's shape and the exclusive information is the colour of each domain.

Two generators (``data.generator``):

* ``published_like`` (the default) matches the published MNIST-CDCB in the three ways it is harder than plain
  MNIST in colour: colours from nearly the whole RGB cube (saturation down to 0.05, value down to 0.2 for the
  backgrounds and 0.4 for the digits: greyish and dark colours too), digits re-rendered at high resolution with
  a pose of their own, and a digit mask of each domain (Y's strokes thicker than X's, independently drawn per
  pair; :mod:`iiae.data.strokes`).
* ``classic``: the MNIST digit itself in both domains (one mask), saturation and value in [0.5, 1]. Bit-identical
  to the generator of iiae 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.functional import interpolate, max_pool2d, pad
from torch.utils.data import Dataset

from iiae.data.strokes import (
    DIGIT_SIDE,
    PADDED_SIDE,
    PUBLISHED_STROKES,
    StrokeDraws,
    draw_strokes,
    render_strokes,
)
from iiae.errors import ConfigError, DataError

MIN_SIZE = 8
SATURATION_RANGE = (0.5, 1.0)  # classic generator: saturation and value of every colour
VALUE_RANGE = (0.5, 1.0)
GENERATORS = ("published_like", "classic")  # values of data.generator
DEFAULT_GENERATOR = "published_like"


@dataclass(frozen=True)
class ColourRanges:
    """HSV ranges of a generator's colours (hue is always uniform in [0, 1))."""

    saturation: tuple[float, float]
    background_value: tuple[float, float]  # of the X (CB) backgrounds
    digit_value: tuple[float, float]  # of the Y (CD) digits


COLOUR_RANGES = {
    "classic": ColourRanges(SATURATION_RANGE, VALUE_RANGE, VALUE_RANGE),
    # The published pairs: greyish (saturation 0.05) and dark colours (value 0.2 behind a white digit, 0.4 for a
    # digit on black, where darker would hide it).
    "published_like": ColourRanges((0.05, 1.0), (0.2, 1.0), (0.4, 1.0)),
}


@dataclass(frozen=True)
class PairedImages:
    """Paired images of two domains, float32 ``[N, 3, S, S]`` in [-1, 1], with labels and the colours drawn.

    ``background_colour_x`` is the CB background colour of each X image and ``digit_colour_y`` the CD digit
    colour of each Y image, both float32 ``[N, 3]`` RGB in [0, 1]. ``intensity`` (optional, MNIST-CDCB only) is
    the digit intensity ``m`` of each X image, float32 ``[N, 1, S, S]``, and ``intensity_y`` that of each Y image
    where the domains' strokes differ (the published-like generator; None: Y's is ``intensity``): what
    :class:`RecolouredCDCB` needs to draw the pairs again in other colours, in the ranges of ``generator``, the
    MNIST-CDCB generator that made the pairs (None for other data sets).
    """

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor
    background_colour_x: torch.Tensor
    digit_colour_y: torch.Tensor
    intensity: torch.Tensor | None = None
    intensity_y: torch.Tensor | None = None
    generator: str | None = None

    def __post_init__(self) -> None:
        """Check that every field describes the same number of images."""
        counts = {len(self.x), len(self.y), len(self.labels), len(self.background_colour_x), len(self.digit_colour_y)}
        if len(counts) != 1:
            raise DataError(
                f"PairedImages fields have different lengths (x {len(self.x)}, y {len(self.y)}, labels "
                f"{len(self.labels)}, colours {len(self.background_colour_x)}/{len(self.digit_colour_y)}): "
                "expected one length"
            )

    def __len__(self) -> int:
        """Number of image pairs."""
        return len(self.labels)

    def subset(self, indices: list[int] | torch.Tensor) -> PairedImages:
        """The pairs at ``indices`` (e.g. validation pairs held out of the training pairs), with their labels."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return PairedImages(
            x=self.x[index],
            y=self.y[index],
            labels=self.labels[index],
            background_colour_x=self.background_colour_x[index],
            digit_colour_y=self.digit_colour_y[index],
            intensity=None if self.intensity is None else self.intensity[index],
            intensity_y=None if self.intensity_y is None else self.intensity_y[index],
            generator=self.generator,
        )


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Convert ``[..., 3]`` HSV values in [0, 1] (hue in [0, 1) turns) to RGB in [0, 1], vectorised."""
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector_float = np.floor(hue * 6.0)
    fraction = hue * 6.0 - sector_float
    sector = sector_float.astype(np.int64) % 6
    lowest = value * (1.0 - saturation)
    falling = value * (1.0 - saturation * fraction)
    rising = value * (1.0 - saturation * (1.0 - fraction))
    # For each of the six hue sectors, which of (value, rising, falling, lowest) feeds R, G and B.
    candidates = np.stack([value, rising, falling, lowest], axis=-1)
    sector_table = np.array([[0, 1, 3], [2, 0, 3], [3, 0, 1], [3, 2, 0], [1, 3, 0], [0, 3, 2]])
    return np.take_along_axis(candidates, sector_table[sector], axis=-1)


def random_colours(
    count: int,
    generator: np.random.Generator,
    saturation: tuple[float, float] = SATURATION_RANGE,
    value: tuple[float, float] = VALUE_RANGE,
) -> np.ndarray:
    """Draw ``count`` RGB colours, float32 ``[count, 3]`` in [0, 1], from ``count x 3`` uniform numbers.

    Hue is uniform in [0, 1), saturation and value uniform in their ranges (by default [0.5, 1], the classic
    generator's bright colours, clearly visible both behind a white digit and as a digit on black).
    """
    if count < 0:
        raise ConfigError(f"colour count must be >= 0, got {count}")
    uniform = generator.random((count, 3))
    low = np.array([0.0, saturation[0], value[0]])
    high = np.array([1.0, saturation[1], value[1]])
    hsv = low + uniform * (high - low)
    return hsv_to_rgb(hsv).astype(np.float32)


def _check_inputs(images: np.ndarray, labels: np.ndarray, size: int) -> None:
    """DataError for images that are not uint8 [N, 28, 28] or labels of another length; ConfigError for size."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"CDCB image size must be an integer >= {MIN_SIZE}, got {size!r}")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE):
        raise DataError(
            f"CDCB needs uint8 digit images of shape (N, {DIGIT_SIDE}, {DIGIT_SIDE}), got {images.dtype} "
            f"of shape {images.shape}"
        )
    if labels.shape != (len(images),):
        raise DataError(f"CDCB needs one label per image: {len(images)} images but labels of shape {labels.shape}")


def digit_intensity(images: np.ndarray, size: int) -> torch.Tensor:
    """The digit intensity ``m`` in [0, 1] as float32 ``[N, 1, size, size]``.

    Size 28 keeps the digits, size 32 pads them by 2 zero pixels on each side (exact pixels), any other size
    resizes them with antialiased bilinear interpolation.
    """
    digits = torch.from_numpy(images).unsqueeze(1)
    if size == PADDED_SIDE:
        margin = (PADDED_SIDE - DIGIT_SIDE) // 2
        return pad(digits, (margin, margin, margin, margin)).to(torch.float32).div_(255.0)
    intensity = digits.to(torch.float32).div_(255.0)
    if size == DIGIT_SIDE:
        return intensity
    resized = interpolate(intensity, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)


def check_generator(generator: str) -> None:
    """ConfigError unless ``generator`` is one of :data:`GENERATORS`."""
    if generator not in GENERATORS:
        raise ConfigError(f"MNIST-CDCB generator must be one of {', '.join(GENERATORS)}; got {generator!r}")


def draw_colours(
    count: int, generator: np.random.Generator, name: str = "classic"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` CB background colours, then ``count`` CD digit colours, in the ranges of generator ``name``."""
    ranges = COLOUR_RANGES[name]
    background = torch.from_numpy(random_colours(count, generator, ranges.saturation, ranges.background_value))
    return background, torch.from_numpy(random_colours(count, generator, ranges.saturation, ranges.digit_value))


def cdcb_colours(count: int, seed: int | list[int], generator: str = "classic") -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` CB background colours, then ``count`` CD digit colours, from ``numpy.random.default_rng(seed)``."""
    return draw_colours(count, np.random.default_rng(seed), generator)


@dataclass(frozen=True)
class CDCBDraws:
    """Everything random about ``N`` MNIST-CDCB pairs: colours ``[N, 3]`` and (published-like) stroke draws."""

    background_colour_x: torch.Tensor
    digit_colour_y: torch.Tensor
    strokes: StrokeDraws | None  # None: the classic generator (the MNIST digit itself in both domains)

    def __len__(self) -> int:
        return len(self.background_colour_x)

    def subset(self, index: slice | torch.Tensor) -> CDCBDraws:
        """The draws of the pairs at ``index``."""
        strokes = None if self.strokes is None else self.strokes.subset(index)
        return CDCBDraws(self.background_colour_x[index], self.digit_colour_y[index], strokes)


def draw_cdcb(count: int, seed: int, generator: str = DEFAULT_GENERATOR) -> CDCBDraws:
    """The random part of ``count`` pairs, from ``numpy.random.default_rng(seed)``: the background colours, the
    digit colours, then (published-like) 6 numbers per pair for the strokes. A function of (seed, count)."""
    check_generator(generator)
    rng = np.random.default_rng(seed)
    background, digit_colour = draw_colours(count, rng, generator)
    strokes = draw_strokes(count, rng) if generator == "published_like" else None
    return CDCBDraws(background, digit_colour, strokes)


def cdcb_intensities(images: np.ndarray, draws: CDCBDraws, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Digit intensities ``[N, 1, size, size]`` of X and of Y (None: Y's is X's, the classic generator)."""
    if draws.strokes is None:
        return digit_intensity(images, size), None
    return render_strokes(images, draws.strokes, size, PUBLISHED_STROKES)


def compose_cdcb(
    intensity: torch.Tensor,
    background: torch.Tensor,
    digit_colour: torch.Tensor,
    intensity_y: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """X (white digit on ``background``) and Y (digit in ``digit_colour`` on black), ``[N, 3, S, S]`` in [-1, 1],
    from the digit intensity ``[N, 1, S, S]`` (of X, and of Y unless ``intensity_y`` is given) and ``[N, 3]``
    colours."""
    # In [-1, 1]: X = 2*(b*(1-m) + m) - 1 = (2b - 1) + m*(2 - 2b);  Y = 2*c*m - 1. One pass over the output each.
    b, c = background[:, :, None, None], digit_colour[:, :, None, None]
    x = torch.addcmul(2.0 * b - 1.0, intensity, 2.0 - 2.0 * b)
    y = torch.addcmul(torch.tensor(-1.0), intensity if intensity_y is None else intensity_y, 2.0 * c)
    return x, y


def make_cdcb(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    size: int = 32,
    seed: int = 0,
    keep_intensity: bool = False,
    generator: str = DEFAULT_GENERATOR,
) -> PairedImages:
    """Build MNIST-CDCB pairs from uint8 ``[N, 28, 28]`` digits with ``generator`` (see the module doc).

    ``numpy.random.default_rng(seed)`` draws the N CB background colours first, then the N CD digit colours,
    then (published-like) the strokes (:func:`draw_cdcb`). Returns X (white digit on coloured background) and Y
    (coloured digit on black), ``[N, 3, size, size]`` float32 in [-1, 1]; with ``keep_intensity`` also the
    digit intensities (for :class:`RecolouredCDCB`).
    """
    images = np.ascontiguousarray(images)  # torch.from_numpy refuses negative strides (e.g. images[::-1])
    labels = np.asarray(labels)
    _check_inputs(images, labels, size)
    draws = draw_cdcb(len(images), seed, generator)
    intensity, intensity_y = cdcb_intensities(images, draws, int(size))
    x, y = compose_cdcb(intensity, draws.background_colour_x, draws.digit_colour_y, intensity_y)
    return PairedImages(
        x=x,
        y=y,
        labels=torch.from_numpy(labels.astype(np.int64)),
        background_colour_x=draws.background_colour_x,
        digit_colour_y=draws.digit_colour_y,
        intensity=intensity if keep_intensity else None,
        intensity_y=intensity_y if keep_intensity else None,
        generator=generator,
    )


# data.augment: colours from nearly the whole RGB cube (a digit or background darker than 0.1 would vanish) ...
AUGMENTATION_COLOURS = ColourRanges(saturation=(0.0, 1.0), background_value=(0.1, 1.0), digit_value=(0.1, 1.0))
STROKE_CHANGE = 0.6  # ... and strokes moved up to this fraction of a 3x3 dilation (thicker) or erosion (thinner)


def change_strokes(intensity: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Thicker (``amount`` > 0) or thinner (< 0) strokes: ``[N, 1, S, S]`` intensities moved ``|amount|`` of the
    way to their 3x3 grey dilation (max) or erosion (min); ``amount`` ``[N]`` in [-1, 1], 0 leaves them as they are."""
    weight = amount.to(intensity.dtype)[:, None, None, None]
    grown = max_pool2d(intensity, 3, stride=1, padding=1)
    shrunk = -max_pool2d(-intensity, 3, stride=1, padding=1)
    return torch.lerp(intensity, torch.where(weight >= 0, grown, shrunk), weight.abs())


class RecolouredCDCB(Dataset):
    """MNIST-CDCB training pairs drawn in new colours every epoch (``data.recolour_every_epoch``), or augmented
    (``data.augment``).

    Recoloured: epoch 0 serves ``pairs`` as they are (the fixed colours); epoch e > 0 draws every pair's CB
    background and CD digit colour again from ``numpy.random.default_rng([seed, e])``, in the colour ranges of
    the generator that made the pairs; the digits (and strokes) never change.

    Augmented: every epoch, e = 0 included, draws from ``numpy.random.default_rng([seed, e])`` every pair's
    colours in :data:`AUGMENTATION_COLOURS` and, per domain, a stroke change in [-STROKE_CHANGE, STROKE_CHANGE]
    (:func:`change_strokes`): the shared code sees each digit greyer, darker, thinner and thicker than the data
    set draws it, independently in X and Y.

    Either way the pairs are a function of (seed, epoch), so a resumed or multi-process run sees the pairs a
    single uninterrupted run sees. Keys are ``(epoch, index)`` (:class:`iiae.engine.resume.EpochShuffleSampler`
    with ``with_epoch``), so the epoch reaches DataLoader workers too.
    """

    indexed_by_epoch = True  # read by iiae.engine.resume.ResumableDataLoader

    def __init__(self, pairs: PairedImages, seed: int, augment: bool = False) -> None:
        if pairs.intensity is None or pairs.generator is None:
            raise DataError("RecolouredCDCB needs pairs made with make_cdcb(..., keep_intensity=True)")
        check_generator(pairs.generator)
        self.pairs, self.seed, self.generator, self.augment = pairs, seed, pairs.generator, augment
        # (epoch, backgrounds, digit colours, stroke changes [N, 2] or None) of the last epoch asked for
        self._draws: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def _epoch_draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not self.augment and epoch == 0:
            return self.pairs.background_colour_x, self.pairs.digit_colour_y, None
        if self._draws is None or self._draws[0] != epoch:
            if self.augment:
                rng, ranges = np.random.default_rng([self.seed, epoch]), AUGMENTATION_COLOURS
                background = random_colours(len(self.pairs), rng, ranges.saturation, ranges.background_value)
                digit_colour = random_colours(len(self.pairs), rng, ranges.saturation, ranges.digit_value)
                strokes = torch.from_numpy(rng.uniform(-STROKE_CHANGE, STROKE_CHANGE, (len(self.pairs), 2)))
                self._draws = (epoch, torch.from_numpy(background), torch.from_numpy(digit_colour), strokes.float())
            else:
                self._draws = (epoch, *cdcb_colours(len(self.pairs), [self.seed, epoch], self.generator), None)
        return self._draws[1], self._draws[2], self._draws[3]

    def colours(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``[N, 3]`` background and digit colours of every pair in ``epoch`` (cached for the last epoch)."""
        background, digit_colour, _ = self._epoch_draws(epoch)
        return background, digit_colour

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch of (x, y) from ``(epoch, index)`` keys of one epoch."""
        epochs = {epoch for epoch, _ in keys}
        if len(epochs) != 1:
            raise DataError(f"a batch of RecolouredCDCB must come from one epoch, got epochs {sorted(epochs)}")
        epoch = epochs.pop()
        index = torch.as_tensor([position for _, position in keys], dtype=torch.long)
        if not self.augment and epoch == 0:
            return self.pairs.x[index], self.pairs.y[index]
        background, digit_colour, strokes = self._epoch_draws(epoch)
        intensity, intensity_y = self.pairs.intensity, self.pairs.intensity_y
        assert intensity is not None
        mask_x = intensity[index]
        mask_y = None if intensity_y is None else intensity_y[index]
        if strokes is not None:  # per domain: X and Y change independently
            mask_y = change_strokes(mask_x if mask_y is None else mask_y, strokes[index, 1])
            mask_x = change_strokes(mask_x, strokes[index, 0])
        return compose_cdcb(mask_x, background[index], digit_colour[index], mask_y)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([key])
        return x[0], y[0]
