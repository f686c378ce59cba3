"""Digit strokes of the published-like MNIST-CDCB: re-rendered at high resolution, a little different per domain.

The published MNIST-CDCB (Gonzalez-Garcia et al., 2018) is not MNIST pasted into two colour schemes: its 256 px
digits are re-rendered. Brought back to 28 px a published digit correlates only about 0.90 with its MNIST
original, and the two images of a pair do not share one mask: their digit masks correlate about 0.96, the
coloured digit on black (CD, our Y) has the thicker strokes (ink about 13 % of the image against 11 % for the
digit on a coloured background, CB, our X; issue 14 measured published pairs read through our loader, in our
X / Y order, and found Y thicker). :func:`render_strokes` reproduces these statistics:

1. the 28 px digit is smoothed by a Gaussian pen (``smoothing`` MNIST pixels) and scaled so its peak is 1;
2. one pose per pair (rotation, scale, shift; shared by X and Y, as a re-drawn digit sits a little elsewhere)
   resamples it bicubically onto a grid twice as fine as the output (at least 56 px across the digit frame);
3. each domain cuts the smooth field at its own stroke level (a soft threshold): a level drawn per pair and per
   domain around that domain's mean, so each domain's strokes are thinner or thicker independently;
4. an area average down to the output size anti-aliases the edges.

All of it is batched torch (a few seconds per 10,000 digits on one core); the per-pair draws come from the numpy
generator of :func:`iiae.data.cdcb.make_cdcb`, so the strokes are a function of the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.functional import avg_pool2d, conv2d, grid_sample

DIGIT_SIDE = 28
PADDED_SIDE = 32  # size 32 shows the 28 px digit frame with a 2 px margin (as the classic generator pads)
SUPERSAMPLING = 2  # high-resolution pixels per output pixel and side (the soft cut anti-aliases the rest) ...
MIN_RENDER_SIDE = 56  # ... or more, so that the fine grid spans at least this many pixels across the digit frame
UNSAMPLED_FROM = 128  # outputs whose digit frame spans this many pixels are cut at their own resolution
CHUNK_PIXELS = 1 << 19  # high-resolution pixels rendered at once (2 MB per float32 tensor: stays in cache)
DRAWS_PER_PAIR = 6  # uniform numbers each pair takes from the generator: two levels, rotation, scale, two shifts


@dataclass(frozen=True)
class StrokeStyle:
    """How the published-like strokes are drawn; the defaults match the published MNIST-CDCB's statistics."""

    smoothing: float = 0.6  # Gaussian pen, in MNIST pixels: turns MNIST's ink into a smooth stroke field
    level_x: float = 0.595  # mean stroke level of X (CB), a fraction of the digit's peak: higher is thinner
    level_y: float = 0.475  # mean stroke level of Y (CD): thicker than X, as in the published pairs
    level_spread: float = 0.15  # each pair's level of each domain: uniform in mean +- spread, independently
    rotation_degrees: float = 6.0  # each pair's pose: rotation uniform in +- this ...
    scale_fraction: float = 0.06  # ... scale uniform in 1 +- this ...
    shift_pixels: float = 0.5  # ... and a shift uniform in +- this many MNIST pixels along each axis
    edge_softness: float = 0.1  # width of the soft threshold, in stroke-field units (anti-aliases the cut)


PUBLISHED_STROKES = StrokeStyle()


@dataclass(frozen=True)
class StrokeDraws:
    """Per-pair random stroke parameters: stroke levels of X and Y ``[N]`` and the pose ``[N, 2, 3]`` (the affine
    map of :func:`torch.nn.functional.affine_grid` from output to digit coordinates, before the frame scale)."""

    level_x: torch.Tensor
    level_y: torch.Tensor
    pose: torch.Tensor

    def __len__(self) -> int:
        return len(self.level_x)

    def subset(self, index: torch.Tensor | slice) -> StrokeDraws:
        """The draws of the pairs at ``index``."""
        return StrokeDraws(self.level_x[index], self.level_y[index], self.pose[index])


def draw_strokes(count: int, generator: np.random.Generator, style: StrokeStyle = PUBLISHED_STROKES) -> StrokeDraws:
    """Draw ``count`` pairs' stroke levels and poses: ``count x 6`` uniform numbers from ``generator``."""
    uniform = generator.random((count, DRAWS_PER_PAIR))
    signed = torch.from_numpy(2.0 * uniform - 1.0)  # float64 in [-1, 1)
    level_x = style.level_x + style.level_spread * signed[:, 0]
    level_y = style.level_y + style.level_spread * signed[:, 1]
    angle = signed[:, 2] * math.radians(style.rotation_degrees)
    scale = 1.0 + style.scale_fraction * signed[:, 3]
    shift = signed[:, 4:6] * (2.0 * style.shift_pixels / DIGIT_SIDE)  # affine_grid's [-1, 1] spans 28 pixels
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    pose = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return StrokeDraws(level_x.float(), level_y.float(), pose.float())


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets.square() / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[N, 1, H, W]`` float images blurred by a separable Gaussian of ``sigma`` pixels (zero padding, the size
    kept); ``sigma`` <= 0 returns them as they are."""
    if sigma <= 0:
        return images
    kernel = _gaussian_kernel(sigma)
    radius = (len(kernel) - 1) // 2
    images = conv2d(images, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return conv2d(images, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def stroke_field(images: np.ndarray | torch.Tensor, smoothing: float) -> torch.Tensor:
    """The smooth stroke field ``[N, 1, 28, 28]`` of uint8 digits: Gaussian-smoothed ink, each digit's peak 1
    (an empty digit stays 0)."""
    field = gaussian_blur(torch.as_tensor(images).unsqueeze(1).to(torch.float32).div_(255.0), smoothing)
    peak = field.flatten(1).amax(dim=1).clamp_(min=1e-6)
    return field.div_(peak[:, None, None, None])


def render_geometry(size: int) -> tuple[int, float]:
    """(high-resolution factor, frame scale) of an output of ``size`` pixels: how many high-resolution pixels
    per side make one output pixel (2 at sizes 28 to 127, more below 28, 1 from 128 on, where the soft cut spans
    more than half a pixel), and how many 28 px digit frames one output spans (32/28 at size 32, else 1)."""
    frame_pixels = DIGIT_SIDE if size == PADDED_SIDE else size  # output pixels across the digit frame
    if frame_pixels >= UNSAMPLED_FROM:
        return 1, size / frame_pixels
    return max(SUPERSAMPLING, -(-MIN_RENDER_SIDE // frame_pixels)), size / frame_pixels


def pose_grid(pose: torch.Tensor, side: int, frame: float) -> torch.Tensor:
    """The sampling grid ``[N, side, side, 2]`` of :func:`torch.nn.functional.grid_sample` for poses ``[N, 2, 3]``
    whose output spans ``frame`` digit frames: :func:`torch.nn.functional.affine_grid` with ``align_corners=False``
    written out (broadcast products instead of its batched matrix product: a third faster here)."""
    coords = (torch.arange(side, dtype=torch.float32) * 2.0 + 1.0) / side - 1.0  # pixel centres in [-1, 1]
    columns, rows = coords[None, None, :] * frame, coords[None, :, None] * frame
    linear, shift = pose[:, :, :2, None, None], pose[:, :, 2, None, None]  # [N, 2, 2, 1, 1], [N, 2, 1, 1]
    grid_x = linear[:, 0, 0] * columns + linear[:, 0, 1] * rows + shift[:, 0]
    grid_y = linear[:, 1, 0] * columns + linear[:, 1, 1] * rows + shift[:, 1]
    return torch.stack([grid_x, grid_y], dim=-1)


def render_strokes(
    images: np.ndarray, draws: StrokeDraws, size: int, style: StrokeStyle = PUBLISHED_STROKES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digit intensities of X and Y, float32 ``[N, 1, size, size]`` in [0, 1], of uint8 ``[N, 28, 28]`` digits
    re-rendered with ``draws`` (see the module doc). The digit frame fills the image, with a 2 px margin at size
    32 (the classic generator's geometry)."""
    factor, frame = render_geometry(size)
    side = size * factor
    chunk = max(1, CHUNK_PIXELS // (side * side))
    parts_x, parts_y = [], []
    for start in range(0, len(images), chunk):
        window = slice(start, start + chunk)
        field = stroke_field(images[window], style.smoothing)
        fine = grid_sample(field, pose_grid(draws.pose[window], side, frame), mode="bicubic", padding_mode="zeros",
                           align_corners=False)  # fmt: skip
        steepness = torch.tensor(1.0 / style.edge_softness)
        for level, parts in ((draws.level_x[window], parts_x), (draws.level_y[window], parts_y)):
            offset = (0.5 - level / style.edge_softness)[:, None, None, None]
            cut = torch.addcmul(offset, fine, steepness).clamp_(0.0, 1.0)  # (fine - level) / softness + 1/2
            parts.append(avg_pool2d(cut, factor) if factor > 1 else cut)
    if not parts_x:
        empty = torch.zeros(0, 1, size, size)
        return empty, empty.clone()
    return torch.cat(parts_x), torch.cat(parts_y)
