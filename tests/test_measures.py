"""Translation fidelity: the digit map, the cached digit classifier, the colour errors, the main-job measures."""

from __future__ import annotations

import logging

import pytest
import torch

from iiae import IIAE, ModelConfig
from iiae.data import load_digits, make_cdcb
from iiae.data.shifts import stroke_shift
from iiae.evaluation.digit_classifier import (
    ClassifierSettings,
    digit_map,
    load_or_train_classifier,
)
from iiae.evaluation.fidelity import (
    colour_errors,
    fitted_background_colour,
    fitted_digit_colour,
    intensity_from_x,
    intensity_from_y,
    translate_test_pairs,
)
from iiae.evaluation.measures import evaluate_measures, measures_markdown

FAST = ClassifierSettings(epochs=2)


@pytest.fixture(scope="module")
def digits():
    """300 training and 100 test MNIST-CDCB pairs of real digits (train and test colours differ), of the classic
    generator: one digit mask in both domains, which the exact identities below rely on."""
    data = load_digits("embedded")
    train = make_cdcb(data.train_images[:300], data.train_labels[:300], size=32, seed=0, generator="classic")
    test = make_cdcb(data.test_images[:100], data.test_labels[:100], size=32, seed=1, generator="classic")
    return train, test


def test_digit_map_is_the_same_for_both_domains_and_any_colours(digits):
    train, _ = digits
    maps_x, maps_y = digit_map(train.x), digit_map(train.y)
    assert maps_x.shape == (300, 1, 32, 32) and 0 <= maps_x.min() and maps_x.max() <= 1
    torch.testing.assert_close(maps_x, maps_y, atol=1e-4, rtol=0)
    recoloured = make_cdcb(load_digits("embedded").train_images[:300], train.labels.numpy(), size=32, seed=7,
                           generator="classic")  # fmt: skip
    torch.testing.assert_close(digit_map(recoloured.x), maps_x, atol=1e-4, rtol=0)
    small = make_cdcb(load_digits("embedded").train_images[:4], train.labels[:4].numpy(), size=16, seed=0)
    assert digit_map(small.y).shape == (4, 1, 32, 32)  # other sizes are resized


def test_classifier_is_cached_and_keyed_by_its_data(digits, tmp_path):
    train, test = digits
    first = load_or_train_classifier(train.x, train.labels, tmp_path, FAST)
    assert not first.from_cache and first.path is not None and first.path.is_file()
    second = load_or_train_classifier(train.x, train.labels, tmp_path, FAST)
    assert second.from_cache and second.key == first.key
    assert torch.equal(second.predict(test.y), first.predict(test.y))
    assert first.accuracy(test.x, test.labels) == first.accuracy(test.y, test.labels)  # same maps, same answers
    assert first.accuracy(test.x, test.labels) > 30  # 2 epochs on 300 digits: far above chance already

    retrained = load_or_train_classifier(train.x, train.labels, tmp_path / "elsewhere", FAST)
    assert not retrained.from_cache and retrained.key == first.key  # deterministic: same key, same weights
    assert torch.equal(retrained.predict(test.x), first.predict(test.x))

    other_data = load_or_train_classifier(train.x[:299], train.labels[:299], tmp_path, FAST)
    other_labels = load_or_train_classifier(train.x, train.labels.roll(1), tmp_path, FAST)
    other_settings = load_or_train_classifier(train.x, train.labels, tmp_path, ClassifierSettings(epochs=1))
    keys = {first.key, other_data.key, other_labels.key, other_settings.key}
    assert len(keys) == 4 and not other_data.from_cache
    assert len(list(tmp_path.glob("digit-classifier-*.safetensors"))) == 4


def test_a_damaged_cache_file_is_retrained(digits, tmp_path):
    train, _ = digits
    first = load_or_train_classifier(train.x[:64], train.labels[:64], tmp_path, ClassifierSettings(epochs=1))
    first.path.write_bytes(first.path.read_bytes()[:100])
    notices = []
    handler = logging.Handler()
    handler.emit = lambda record: notices.append(record.getMessage())
    logging.getLogger("iiae.cache").addHandler(handler)
    try:
        again = load_or_train_classifier(train.x[:64], train.labels[:64], tmp_path, ClassifierSettings(epochs=1))
    finally:
        logging.getLogger("iiae.cache").removeHandler(handler)
    assert len(notices) == 1 and f"cache {first.path} was damaged" in notices[0] and "rebuilding" in notices[0]
    assert not again.from_cache and again.key == first.key
    assert load_or_train_classifier(train.x[:64], train.labels[:64], tmp_path, ClassifierSettings(epochs=1)).from_cache


def _perfect(test):
    """What a perfect model outputs: X->Y gives the paired y, Y->X the paired x (prior and paired codes alike)."""
    return {"x_to_y_prior": test.y, "x_to_y_paired": test.y, "y_to_x_prior": test.x, "y_to_x_paired": test.x}


def test_colour_errors_are_zero_for_a_perfect_translation_and_large_for_wrong_colours(digits):
    _, test = digits
    intensity = intensity_from_y(test.y, test.digit_colour_y)
    torch.testing.assert_close(fitted_digit_colour(test.y, intensity), test.digit_colour_y, atol=1e-4, rtol=0)
    torch.testing.assert_close(fitted_background_colour(test.x, intensity), test.background_colour_x, atol=1e-4, rtol=0)
    perfect = colour_errors(_perfect(test), test)
    assert max(perfect.values()) < 5e-3, perfect  # "vs white" reads pixels with m >= 0.99: at most 1 % off white
    assert perfect["x_to_y_digit_colour"] < 1e-4 and perfect["y_to_x_background_colour"] < 1e-4

    recoloured = make_cdcb(load_digits("embedded").test_images[:100], test.labels.numpy(), size=32, seed=99,
                           generator="classic")  # fmt: skip
    wrong = colour_errors(
        {"x_to_y_prior": recoloured.x, "x_to_y_paired": recoloured.y,  # a coloured background; other digit colours
         "y_to_x_prior": recoloured.y, "y_to_x_paired": recoloured.x},  # a coloured digit; other backgrounds
        test,
    )  # fmt: skip
    assert wrong["x_to_y_background_vs_black"] > 0.3 and wrong["y_to_x_digit_vs_white"] > 0.2
    assert wrong["x_to_y_digit_colour"] > 0.15 and wrong["y_to_x_background_colour"] > 0.15


def test_colour_errors_read_each_domains_own_strokes():
    """Published-like pairs: X's digit mask is not Y's, so Y→X outputs are judged against X's own intensity.

    X is drawn thicker than Y here (the default draws Y thicker): Y's thinner mask would then count X's stroke
    edges as background, the bias this avoids."""
    data = load_digits("embedded")
    test = stroke_shift(data.test_images[:100], data.test_labels[:100], level_change_x=-0.25, level_change_y=0.0,
                        size=32, seed=1)  # fmt: skip
    assert not torch.allclose(test.intensity, test.intensity_y, atol=0.1)
    torch.testing.assert_close(intensity_from_x(test.x, test.background_colour_x), test.intensity, atol=1e-4, rtol=0)
    torch.testing.assert_close(intensity_from_y(test.y, test.digit_colour_y), test.intensity_y, atol=1e-4, rtol=0)
    perfect = colour_errors(_perfect(test), test)
    assert max(perfect.values()) < 5e-3, perfect
    assert perfect["x_to_y_digit_colour"] < 1e-4 and perfect["y_to_x_background_colour"] < 1e-4
    with_y_mask = colour_errors(_perfect(test), test, intensity_x=test.intensity_y)  # the error this avoids
    assert with_y_mask["y_to_x_background_colour"] > 10 * perfect["y_to_x_background_colour"] + 1e-3


def _tiny_model() -> IIAE:
    torch.manual_seed(0)
    config = ModelConfig(encoder_widths=[8, 8], exclusive_widths=[8, 8, 8], decoder_widths=[8, 8], shared_channels=4)
    return IIAE(config).train()


def test_translations_are_seeded_and_keep_the_training_mode(digits):
    _, test = digits
    model = _tiny_model()
    first = translate_test_pairs(model, test.x[:10], test.y[:10], batch_size=4, seed=3)
    assert model.training
    again = translate_test_pairs(model, test.x[:10], test.y[:10], batch_size=10, seed=3)
    assert set(first) == {"x_to_y_prior", "y_to_x_prior", "x_to_y_paired", "y_to_x_paired"}
    assert first["x_to_y_paired"].shape == (10, 3, 32, 32)
    torch.testing.assert_close(first["x_to_y_paired"], again["x_to_y_paired"])


def test_evaluate_measures_on_a_tiny_model(digits, tmp_path):
    train, test = digits
    model = _tiny_model()
    measures = evaluate_measures(
        model, train, test, batch_size=64, cache_dir=tmp_path, classifier_settings=FAST, max_probe_fit_pairs=200
    )
    fidelity, leakage = measures["translation_fidelity"], measures["leakage"]
    assert fidelity["class_accuracy"]["real_x"] == fidelity["class_accuracy"]["real_y"]
    assert set(fidelity["colour_error"]) == {
        "x_to_y_background_vs_black", "x_to_y_digit_colour", "y_to_x_background_colour", "y_to_x_digit_vs_white"
    }  # fmt: skip
    assert leakage["fit_pairs"] == 200 and leakage["score_pairs"] == 100
    for factor in ("digit_class", "background_colour_x", "digit_colour_y"):
        assert set(leakage[factor]) >= {"shared_x", "shared_y", "exclusive_x", "exclusive_y", "chance"}
    assert not fidelity["classifier_from_cache"]
    intervention = measures["colour_intervention"]  # iiae.evaluation.intervention: 100 test digits x 10 colourings
    assert (intervention["digits"], intervention["colourings"]) == (100, 10)
    for code in ("shared_x", "shared_y", "exclusive_x", "exclusive_y"):
        spreads = intervention[code]
        assert spreads["colour_spread"] > 0 and spreads["digit_spread"] > 0  # an untrained net sees both
        assert spreads["ratio"] == pytest.approx(spreads["colour_spread"] / spreads["digit_spread"])
    assert evaluate_measures(model, train, test, batch_size=64, cache_dir=tmp_path, classifier_settings=FAST,
                             max_probe_fit_pairs=200)["translation_fidelity"]["classifier_from_cache"]  # fmt: skip
    one_pair = evaluate_measures(model, train, test.subset([0]), batch_size=64, cache_dir=tmp_path,
                                 classifier_settings=FAST, max_probe_fit_pairs=200)  # fmt: skip
    assert "colour_intervention" not in one_pair and one_pair["leakage"]["score_pairs"] == 1  # no spread of 1 digit
    report = measures_markdown(measures)
    assert "## Leakage" in report and "| digit class (accuracy %) |" in report and "X→Y background" in report
    assert "## Leakage by intervention" in report and "| z^s (r^x) | background colour (X) |" in report
    assert "## Leakage by intervention" not in measures_markdown({k: v for k, v in measures.items()
                                                                  if k != "colour_intervention"})  # fmt: skip
    assert measures_markdown({"retrieval": {}}) == ""
