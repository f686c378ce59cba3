"""Tests of MNIST-CDCB: colours, pixel-exact composition of both domains, geometry and reproducibility.

Most of them pin the classic generator (one digit mask in both domains, the exact pixels of the digit); the
published-like generator, the default, has its own tests in test_data_cdcb_generators.py.
"""

from __future__ import annotations

import colorsys
from dataclasses import replace

import numpy as np
import pytest
import torch

from iiae.data.cdcb import (
    VALUE_RANGE,
    PairedImages,
    RecolouredCDCB,
    digit_intensity,
    hsv_to_rgb,
    make_cdcb,
    random_colours,
)
from iiae.errors import ConfigError, DataError


def _digits(count: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic digits: a block of full ink, a block of partial ink, the rest black (a 2-pixel frame stays 0)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 6:14, 8:20] = 255
    images[:, 14:22, 8:20] = rng.integers(1, 255, size=(count, 8, 12), dtype=np.uint8)
    return images, np.arange(count) % 10


@pytest.fixture(scope="module")
def pairs() -> PairedImages:
    images, labels = _digits()
    return make_cdcb(images, labels, seed=3, generator="classic")


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """Map [-1, 1] back to [0, 1]."""
    return (images + 1.0) / 2.0


def test_shapes_dtypes_and_range(pairs: PairedImages) -> None:
    assert len(pairs) == 12
    for images in (pairs.x, pairs.y):
        assert images.shape == (12, 3, 32, 32) and images.dtype == torch.float32
        assert images.min() >= -1.0 and images.max() <= 1.0
    assert pairs.labels.dtype == torch.int64 and pairs.labels.tolist() == list(np.arange(12) % 10)
    assert pairs.background_colour_x.shape == (12, 3) and pairs.digit_colour_y.shape == (12, 3)
    assert pairs.background_colour_x.dtype == torch.float32


def test_x_is_white_digit_on_background_colour(pairs: PairedImages) -> None:
    images, _ = _digits()
    mask = digit_intensity(images, 32)[:, 0]  # [N, 32, 32]
    x = _to_unit(pairs.x).permute(0, 2, 3, 1)  # [N, 32, 32, 3]
    background = pairs.background_colour_x[:, None, None, :].expand_as(x)
    torch.testing.assert_close(x[mask == 0], background[mask == 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(x[mask == 1], torch.ones_like(x[mask == 1]), atol=1e-6, rtol=0)
    partial = (mask > 0) & (mask < 1)
    expected = background * (1 - mask[..., None]) + mask[..., None]
    torch.testing.assert_close(x[partial], expected[partial], atol=1e-6, rtol=0)


def test_y_is_coloured_digit_on_black(pairs: PairedImages) -> None:
    images, _ = _digits()
    mask = digit_intensity(images, 32)[:, 0]
    y = _to_unit(pairs.y).permute(0, 2, 3, 1)
    colour = pairs.digit_colour_y[:, None, None, :].expand_as(y)
    torch.testing.assert_close(y[mask == 0], torch.zeros_like(y[mask == 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(y[mask == 1], colour[mask == 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(y, colour * mask[..., None], atol=1e-6, rtol=0)


def test_size_32_pads_exact_pixels_with_background(pairs: PairedImages) -> None:
    images, _ = _digits()
    mask = digit_intensity(images, 32)[:, 0]
    assert torch.equal(mask[:, 2:30, 2:30], torch.from_numpy(images).float() / 255)
    assert mask[:, :2].abs().sum() == 0 and mask[:, :, -2:].abs().sum() == 0
    corner = _to_unit(pairs.x)[:, :, 0, 0]
    torch.testing.assert_close(corner, pairs.background_colour_x, atol=1e-6, rtol=0)


def test_same_digit_mask_in_both_domains(pairs: PairedImages) -> None:
    # Where Y has any ink, X must have been lightened towards white, and vice versa.
    ink_y = _to_unit(pairs.y).amax(dim=1) > 1e-6
    background = pairs.background_colour_x[:, :, None, None]
    ink_x = (_to_unit(pairs.x) - background).abs().amax(dim=1) > 1e-6
    assert torch.equal(ink_x, ink_y)
    assert ink_y.float().mean() > 0.1


@pytest.mark.parametrize("generator", ["classic", "published_like"])
def test_same_seed_identical_different_seed_different(generator: str) -> None:
    images, labels = _digits()
    first, again, other = (make_cdcb(images, labels, seed=seed, generator=generator) for seed in (5, 5, 6))
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert not torch.allclose(first.background_colour_x, other.background_colour_x)
    assert not torch.allclose(first.digit_colour_y, other.digit_colour_y)
    assert not torch.allclose(first.background_colour_x, first.digit_colour_y)  # domains drawn independently


def test_colours_follow_the_documented_draw_order() -> None:
    images, labels = _digits(count=7)
    pairs = make_cdcb(images, labels, seed=11, generator="classic")
    generator = np.random.default_rng(11)
    np.testing.assert_array_equal(pairs.background_colour_x.numpy(), random_colours(7, generator))
    np.testing.assert_array_equal(pairs.digit_colour_y.numpy(), random_colours(7, generator))


def test_random_colours_stay_in_hsv_ranges() -> None:
    colours = random_colours(5000, np.random.default_rng(0))
    assert colours.shape == (5000, 3) and colours.dtype == np.float32
    hsv = np.array([colorsys.rgb_to_hsv(*colour) for colour in colours.astype(np.float64)])
    assert hsv[:, 1].min() >= 0.5 - 1e-5 and hsv[:, 1].max() <= 1.0 + 1e-6
    assert hsv[:, 2].min() >= 0.5 - 1e-5 and hsv[:, 2].max() <= 1.0 + 1e-6
    assert np.histogram(hsv[:, 0], bins=6, range=(0, 1))[0].min() > 700  # every hue sector is drawn
    assert colours.max(axis=1).min() >= 0.5 - 1e-6  # bright: a white digit and a black background both contrast


def test_hsv_to_rgb_matches_colorsys() -> None:
    hsv = np.random.default_rng(1).random((500, 3))
    expected = np.array([colorsys.hsv_to_rgb(*row) for row in hsv])
    np.testing.assert_allclose(hsv_to_rgb(hsv), expected, atol=1e-12)


@pytest.mark.parametrize("generator", ["classic", "published_like"])
@pytest.mark.parametrize("size", [28, 32, 64, 16])
def test_sizes(size: int, generator: str) -> None:
    images, labels = _digits(count=4)
    pairs = make_cdcb(images, labels, size=size, generator=generator)
    assert pairs.x.shape == (4, 3, size, size) and pairs.y.shape == (4, 3, size, size)
    assert pairs.x.min() >= -1 and pairs.x.max() <= 1 and pairs.y.min() >= -1 and pairs.y.max() <= 1


def test_size_28_keeps_pixels_and_resizing_keeps_the_ink_where_it_was() -> None:
    images, labels = _digits(count=4)
    plain = make_cdcb(images, labels, size=28, generator="classic")
    mask = torch.from_numpy(images).float() / 255
    torch.testing.assert_close(
        _to_unit(plain.y), plain.digit_colour_y[:, :, None, None] * mask[:, None], atol=1e-6, rtol=0
    )
    large = digit_intensity(images, 56)[:, 0]
    assert large.shape == (4, 56, 56)
    # Upscaling by 2: the full-ink block rows 6..13 / columns 8..19 become 12..27 / 16..39 and stay full.
    torch.testing.assert_close(large[:, 14:26, 18:38], torch.ones(4, 12, 20), atol=1e-5, rtol=0)
    assert large[:, :10].abs().max() < 1e-6


@pytest.mark.parametrize("size", [7, 0, -3])
def test_too_small_size_is_a_config_error(size: int) -> None:
    images, labels = _digits(count=2)
    with pytest.raises(ConfigError, match="size"):
        make_cdcb(images, labels, size=size)


def test_bad_images_or_labels_are_data_errors() -> None:
    images, labels = _digits(count=3)
    with pytest.raises(DataError, match="uint8"):
        make_cdcb(images.astype(np.float32), labels)
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        make_cdcb(np.zeros((3, 32, 32), np.uint8), labels)
    with pytest.raises(DataError, match="one label per image"):
        make_cdcb(images, labels[:2])


@pytest.mark.parametrize("generator", ["classic", "published_like"])
def test_empty_input_gives_empty_pairs(generator: str) -> None:
    pairs = make_cdcb(np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64), generator=generator)
    assert len(pairs) == 0 and pairs.x.shape == (0, 3, 32, 32)


# ------------------------------------------------------------------------------- re-colouring every epoch
def _recoloured(count: int = 12) -> RecolouredCDCB:
    images, labels = _digits(count)
    return RecolouredCDCB(make_cdcb(images, labels, seed=3, keep_intensity=True, generator="classic"), seed=3)


def test_epoch_zero_serves_the_fixed_pairs_later_epochs_new_colours_of_the_same_digits() -> None:
    dataset = _recoloured()
    fixed = dataset.pairs
    keys = [3, 0, 7]
    x0, y0 = dataset.__getitems__([(0, index) for index in keys])
    assert torch.equal(x0, fixed.x[keys]) and torch.equal(y0, fixed.y[keys])
    x1, y1 = dataset.__getitems__([(1, index) for index in keys])
    background, digit_colour = dataset.colours(1)
    assert not torch.allclose(background, fixed.background_colour_x)  # new colours ...
    assert torch.equal((y1 > -1).any(dim=1), (y0 > -1).any(dim=1))  # ... on the same digit pixels
    # the CDCB formulas with epoch 1's colours: X's background pixels, Y's full-ink pixels
    torch.testing.assert_close(_to_unit(x1[:, :, 0, 0]), background[keys])
    torch.testing.assert_close(_to_unit(y1[:, :, 8, 10]), digit_colour[keys])  # row 8 is full ink (255)
    torch.testing.assert_close(dataset.__getitem__((1, 3))[0], x1[0])
    assert torch.equal(_recoloured().__getitems__([(1, index) for index in keys])[0], x1)  # (seed, epoch) decide
    assert not torch.equal(dataset.__getitems__([(2, index) for index in keys])[0], x1)
    lowest = torch.cat(dataset.colours(5)).max(dim=1).values.min()
    assert lowest >= VALUE_RANGE[0] - 1e-6  # the documented bright HSV range, every epoch


def test_recoloured_needs_intensities_and_one_epoch_per_batch() -> None:
    images, labels = _digits()
    with pytest.raises(DataError, match="keep_intensity=True"):
        RecolouredCDCB(make_cdcb(images, labels), seed=0)
    with pytest.raises(ConfigError, match="generator must be one of published_like, classic"):
        RecolouredCDCB(replace(make_cdcb(images, labels, keep_intensity=True), generator="pastel"), seed=0)
    with pytest.raises(DataError, match=r"one epoch, got epochs \[0, 1\]"):
        _recoloured().__getitems__([(0, 1), (1, 2)])


def test_recolouring_is_a_config_switch_of_the_cdcb_data_sets_only() -> None:
    from iiae.core.config import DataConfig

    assert DataConfig().recolour_every_epoch is False  # the paper's fixed data set is the default
    DataConfig(dataset="fashion_mnist_cdcb", recolour_every_epoch=True).validate()
    with pytest.raises(ConfigError, match="recolour_every_epoch applies to mnist_cdcb and fashion_mnist_cdcb"):
        DataConfig(dataset="facades", recolour_every_epoch=True).validate()


def test_the_training_loader_recolours_every_epoch_and_keeps_the_order() -> None:
    from iiae.data.splits import PairedSplits
    from iiae.engine.training import PairedDataModule

    dataset = _recoloured(16)
    plain = PairedSplits(train=dataset.pairs, test=dataset.pairs, source="synthetic")
    recoloured = PairedSplits(train=dataset.pairs, test=dataset.pairs, source="synthetic", recolour_seed=3)
    loaders = [PairedDataModule(splits, 8, seed=1).train_dataloader() for splits in (plain, recoloured)]
    for epoch in (0, 1):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        batches = [list(loader) for loader in loaders]
        for (x_plain, y_plain), (x_new, y_new) in zip(*batches):
            assert torch.equal((y_plain > -1).any(dim=1), (y_new > -1).any(dim=1))  # same pairs, same order
            assert torch.equal(x_plain, x_new) == (epoch == 0)  # colours change after the first epoch only
