"""Digit data for IIAE: IDX files, MNIST / Fashion-MNIST loading and the paired MNIST-CDCB domains."""

from __future__ import annotations

from iiae.data.cdcb import (
    PairedImages,
    RecolouredCDCB,
    compose_cdcb,
    digit_intensity,
    hsv_to_rgb,
    make_cdcb,
    random_colours,
)
from iiae.data.idx import read_idx, write_idx
from iiae.data.mnist import DATASETS, SOURCES, DigitSet, load_digits, split_indices

__all__ = [
    "DATASETS",
    "SOURCES",
    "DigitSet",
    "PairedImages",
    "RecolouredCDCB",
    "compose_cdcb",
    "digit_intensity",
    "hsv_to_rgb",
    "load_digits",
    "make_cdcb",
    "random_colours",
    "read_idx",
    "split_indices",
    "write_idx",
]
