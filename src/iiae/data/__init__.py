"""Digit data for IIAE: IDX files, MNIST / Fashion-MNIST loading and the paired MNIST-CDCB domains (two
generators, :mod:`iiae.data.cdcb`; shifted test sets, :mod:`iiae.data.shifts`)."""

from __future__ import annotations

from iiae.data.cdcb import (
    GENERATORS,
    PairedImages,
    RecolouredCDCB,
    compose_cdcb,
    digit_intensity,
    draw_cdcb,
    hsv_to_rgb,
    make_cdcb,
    random_colours,
)
from iiae.data.idx import read_idx, write_idx
from iiae.data.mnist import DATASETS, SOURCES, DigitSet, load_digits, split_indices

__all__ = [
    "DATASETS",
    "GENERATORS",
    "SOURCES",
    "DigitSet",
    "PairedImages",
    "RecolouredCDCB",
    "compose_cdcb",
    "digit_intensity",
    "draw_cdcb",
    "hsv_to_rgb",
    "load_digits",
    "make_cdcb",
    "random_colours",
    "read_idx",
    "split_indices",
    "write_idx",
]
