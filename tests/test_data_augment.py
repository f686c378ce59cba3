"""data.augment: MNIST-CDCB training pairs in new colours and per-domain stroke thickness every epoch (issue 14)."""

from __future__ import annotations

import pytest
import torch

from iiae.core.config import DataConfig
from iiae.data import load_digits, make_cdcb
from iiae.data.cdcb import AUGMENTATION_COLOURS, STROKE_CHANGE, RecolouredCDCB, change_strokes
from iiae.data.cdcb_statistics import ink_fractions, rgb_to_hsv
from iiae.errors import ConfigError


@pytest.fixture(scope="module")
def pairs():
    digits = load_digits("embedded")
    return make_cdcb(digits.train_images[:200], digits.train_labels[:200], size=32, seed=3, keep_intensity=True)


def test_stroke_changes_move_towards_the_dilation_or_the_erosion():
    intensity = torch.zeros(3, 1, 8, 8)
    intensity[:, :, 3:5, 3:5] = 1.0  # a 2x2 stroke
    changed = change_strokes(intensity, torch.tensor([0.0, 1.0, -1.0]))
    assert torch.equal(changed[0], intensity[0])
    assert changed[1].sum() == 16 and changed[1][0, 2:6, 2:6].min() == 1  # dilated to 4x4
    assert changed[2].sum() == 0  # a 2x2 stroke erodes away
    half = change_strokes(intensity, torch.tensor([0.5]))
    torch.testing.assert_close(half[0].sum(), torch.tensor(10.0))  # halfway: 4 + 0.5 x 12


def test_augmented_epochs_are_a_function_of_seed_and_epoch_and_differ_from_the_data(pairs):
    keys = [(0, 5), (0, 17), (0, 150)]
    first, again = RecolouredCDCB(pairs, seed=7, augment=True), RecolouredCDCB(pairs, seed=7, augment=True)
    x, y = first.__getitems__(keys)
    x_again, y_again = again.__getitems__(keys)
    assert torch.equal(x, x_again) and torch.equal(y, y_again)  # resumable: (seed, epoch, index) only
    assert not torch.equal(x, pairs.x[[5, 17, 150]])  # epoch 0 is augmented too
    other_epoch = first.__getitems__([(1, 5), (1, 17), (1, 150)])[0]
    assert not torch.equal(x, other_epoch)
    assert not torch.equal(x, RecolouredCDCB(pairs, seed=8, augment=True).__getitems__(keys)[0])
    assert torch.equal(RecolouredCDCB(pairs, seed=7).__getitems__(keys)[0], pairs.x[[5, 17, 150]])  # recolour only


def test_augmented_colours_and_strokes_span_their_ranges_independently_per_domain(pairs):
    dataset = RecolouredCDCB(pairs, seed=1, augment=True)
    background, digit_colour, strokes = dataset._epoch_draws(2)
    for colours, value in ((background, AUGMENTATION_COLOURS.background_value),
                           (digit_colour, AUGMENTATION_COLOURS.digit_value)):  # fmt: skip
        hsv = rgb_to_hsv(colours)
        assert hsv[:, 1].min() < 0.05 and hsv[:, 1].max() > 0.95  # greyer than the data set draws, and vivid
        assert value[0] - 1e-6 <= hsv[:, 2].min() < 0.15 and hsv[:, 2].max() > 0.95
    assert strokes.abs().max() <= STROKE_CHANGE and strokes.min() < -0.5 and strokes.max() > 0.5
    assert abs(torch.corrcoef(strokes.T)[0, 1]) < 0.2  # X and Y thickened or thinned independently
    x, y = dataset.__getitems__([(2, index) for index in range(len(pairs))])
    thicker = strokes[:, 1] > 0.3
    ink_y = ink_fractions(pairs.intensity_y)
    augmented_ink_y = ink_fractions(change_strokes(pairs.intensity_y, strokes[:, 1]))
    assert (augmented_ink_y[thicker] > ink_y[thicker]).all()
    assert y.shape == pairs.y.shape and x.min() >= -1 and x.max() <= 1


def test_augment_applies_to_mnist_cdcb_only():
    DataConfig(augment=True).validate()
    with pytest.raises(ConfigError, match="data.augment applies to mnist_cdcb and fashion_mnist_cdcb only"):
        DataConfig(dataset="facades", augment=True).validate()
