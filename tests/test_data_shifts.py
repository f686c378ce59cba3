"""Shifted MNIST-CDCB test sets (iiae.data.shifts): each shift has the property its name promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.functional import avg_pool2d

from iiae.data import load_digits, make_cdcb
from iiae.data.cdcb import COLOUR_RANGES
from iiae.data.cdcb_statistics import ink_fractions, rgb_to_hsv
from iiae.data.export import to_uint8
from iiae.data.shifts import (
    LOWEST_VALUE,
    colours_outside,
    jpeg_pairs,
    shifted_test_sets,
    stroke_shift,
    through_ab_pngs,
)
from iiae.errors import ConfigError

COUNT = 120


@pytest.fixture(scope="module")
def digits():
    data = load_digits("embedded")
    return data.test_images[:COUNT], data.test_labels[:COUNT]


@pytest.mark.parametrize("generator", ["published_like", "classic"])
def test_colours_outside_the_training_ranges_on_the_same_strokes(digits, generator):
    images, labels = digits
    plain = make_cdcb(images, labels, seed=1, keep_intensity=True, generator=generator)
    shifted = colours_outside(images, labels, seed=1, generator=generator)
    assert torch.equal(shifted.intensity, plain.intensity) and torch.equal(shifted.labels, plain.labels)
    ranges = COLOUR_RANGES[generator]
    for colours, value in ((shifted.background_colour_x, ranges.background_value),
                           (shifted.digit_colour_y, ranges.digit_value)):  # fmt: skip
        hsv = rgb_to_hsv(colours.double())
        greyer, darker = hsv[:, 1] < ranges.saturation[0] - 1e-6, hsv[:, 2] < value[0] - 1e-6
        assert (greyer | darker).all()  # not one colour a training pair could have had
        assert greyer.double().mean() > 0.4 and darker.double().mean() > 0.4
        assert hsv[:, 2].min() >= LOWEST_VALUE - 1e-6
    # every digit stays visible: CD's digit is >= LOWEST_VALUE above black, CB's background >= LOWEST_VALUE below
    # the white digit in its darkest channel (near-white grey backgrounds hid the digit)
    assert shifted.digit_colour_y.max(1).values.min() >= LOWEST_VALUE - 1e-6
    assert (1.0 - shifted.background_colour_x.min(1).values).min() >= LOWEST_VALUE - 1e-6
    unit_y = (shifted.y + 1) / 2
    expected_y = shifted.digit_colour_y[:, :, None, None] * (plain.intensity_y if plain.intensity_y is not None
                                                             else plain.intensity)  # fmt: skip
    torch.testing.assert_close(unit_y, expected_y, atol=1e-6, rtol=0)


def test_strokes_thinner_thicker_and_swapped_per_domain(digits):
    images, labels = digits
    plain = make_cdcb(images, labels, seed=1, keep_intensity=True)
    ink = {name: (ink_fractions(pairs.intensity).mean(), ink_fractions(pairs.intensity_y).mean())
           for name, pairs in (("plain", plain),
                               ("thinner", stroke_shift(images, labels, level_change_x=0.15, level_change_y=0.15,
                                                        seed=1)),
                               ("thicker", stroke_shift(images, labels, level_change_x=-0.15, level_change_y=-0.15,
                                                        seed=1)),
                               ("swapped", stroke_shift(images, labels, level_change_x=-0.15, level_change_y=0.15,
                                                        seed=1)))}  # fmt: skip
    for domain in (0, 1):
        assert ink["thinner"][domain] < ink["plain"][domain] - 0.01 < ink["plain"][domain] + 0.01 < \
            ink["thicker"][domain]  # fmt: skip
    assert ink["plain"][0] < ink["plain"][1] and ink["swapped"][0] > ink["swapped"][1]  # Y thicker in training only
    unchanged = stroke_shift(images, labels, level_change_x=0.0, level_change_y=0.0, seed=1)
    assert torch.equal(unchanged.x, plain.x) and torch.equal(unchanged.y, plain.y)  # a shift of 0 is the test set
    with pytest.raises(ConfigError, match="outside"):
        stroke_shift(images, labels, level_change_x=0.5, level_change_y=0.0)


def test_jpeg_pairs_are_8_bit_and_lossier_at_lower_quality(digits):
    images, labels = digits
    plain = make_cdcb(images, labels, seed=1)
    errors = {}
    for quality in (90, 30):
        compressed = jpeg_pairs(plain, quality)
        assert compressed.x.shape == plain.x.shape and torch.equal(compressed.labels, plain.labels)
        assert torch.equal(compressed.digit_colour_y, plain.digit_colour_y)
        levels = (compressed.y + 1) * 127.5
        torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # decoded 8-bit pixels
        errors[quality] = float((compressed.x - plain.x).abs().mean() + (compressed.y - plain.y).abs().mean())
    assert 0.002 < errors[90] < errors[30] < 0.2, errors
    with pytest.raises(ConfigError, match="JPEG quality"):
        jpeg_pairs(plain, 0)


def test_ab_png_round_trip_reads_what_the_loader_reads(digits, tmp_path):
    images, labels = digits[0][:20], digits[1][:20]
    pairs = through_ab_pngs(images, labels, tmp_path, size=32, seed=1, export_size=64)
    files = sorted((tmp_path / "test").iterdir())
    assert len(files) == 20 and Image.open(files[0]).size == (128, 64)  # X | Y, 64x64 halves
    assert pairs.x.shape == (20, 3, 32, 32) and torch.equal(pairs.labels, torch.as_tensor(labels, dtype=torch.int64))
    direct = make_cdcb(images, labels, size=64, seed=1)  # the same pairs at the export size
    quantised = torch.from_numpy(to_uint8(direct.x)).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(pairs.x, avg_pool2d(quantised, 2), atol=1.01 / 127.5, rtol=0)  # box filter, 8 bits
    torch.testing.assert_close(pairs.background_colour_x, direct.background_colour_x)
    with pytest.raises(ConfigError, match="exists"):
        through_ab_pngs(images, labels, tmp_path, size=32, seed=1)


def test_the_suite_names_every_shift_on_the_same_digits(digits, tmp_path):
    images, labels = digits[0][:16], digits[1][:16]
    sets = shifted_test_sets(images, labels, size=32, seed=1, workdir=tmp_path)
    assert set(sets) == {"colours_outside", "strokes_thinner", "strokes_thicker", "strokes_swapped", "jpeg_q75",
                         "jpeg_q30", "ab_png_256"}  # fmt: skip
    for name, pairs in sets.items():
        assert pairs.x.shape == (16, 3, 32, 32) and pairs.y.shape == (16, 3, 32, 32), name
        assert torch.equal(pairs.labels, torch.as_tensor(np.asarray(labels), dtype=torch.int64)), name
    assert Image.open(tmp_path / "test" / "1.png").size == (512, 256)


def test_the_validation_suite_draws_the_held_out_digits_never_trained_or_tested_on(tmp_path):
    """``split="validation"``: the digits of the run's validation pairs (same labels, same order), none of them a
    digit the run trains or tests on, drawn with the training seed; the test split is the test digits."""
    from tiny_runs import tiny_idx_folder

    from iiae.core.config import DataConfig
    from iiae.data.splits import build_cdcb_splits, cdcb_seeds
    from iiae.evaluation.shift_suite import shift_suite_digits

    data = DataConfig(dataset="mnist_cdcb", source="idx", root=str(tiny_idx_folder(tmp_path, train=80, test=20)),
                      validation_fraction=0.25, split_seed=3, colour_seed=2)  # fmt: skip
    splits = build_cdcb_splits(data, 16)
    images, labels, seed = shift_suite_digits(data, "validation")
    assert splits.validation is not None and len(images) == len(splits.validation) == 20
    assert np.array_equal(labels, splits.validation.labels.numpy()) and seed == cdcb_seeds(data)[0]
    loaded = load_digits("idx", data.root, split_seed=data.split_seed)
    held = {image.tobytes() for image in images}
    assert sum(image.tobytes() in held for image in loaded.train_images) == 20  # the 60 trained on are others
    assert not held & {image.tobytes() for image in loaded.test_images}
    test_images, test_labels, test_seed = shift_suite_digits(data, "test")
    assert np.array_equal(test_images, loaded.test_images) and np.array_equal(test_labels, loaded.test_labels)
    assert test_seed == cdcb_seeds(data)[1]
    with pytest.raises(ConfigError, match="holds out 0 training digits"):
        shift_suite_digits(DataConfig(dataset="mnist_cdcb", source="idx", root=data.root, validation_fraction=0.0),
                           "validation")  # fmt: skip
    with pytest.raises(ConfigError, match="must be one of test, validation"):
        shift_suite_digits(data, "train")
