"""Configs: bundled files load, round-trip through YAML, and every wrong key or value is named."""

from __future__ import annotations

import pytest

from iiae.core.config import (
    ExperimentConfig,
    bundled_config_names,
    config_from_dict,
    load_config,
    resolve_config,
    save_config,
)
from iiae.errors import ConfigError


def test_bundled_configs_load_and_the_default_is_mnist_cdcb():
    names = bundled_config_names()
    assert {"mnist_cdcb", "mnist_cdcb_full", "fashion_mnist_cdcb"} <= set(names)
    for name in names:
        assert resolve_config(name).name == name
    default = resolve_config(None)
    assert default.name == "mnist_cdcb" and default.data.source == "embedded"
    assert default.paper["iiae_x_to_y"] == 99.7


def test_yaml_round_trip(tmp_path):
    config = resolve_config("mnist_cdcb")
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_partial_config_takes_defaults_and_converts_int_to_float():
    config = config_from_dict({"loss": {"beta": 1}, "train": {"steps": 7}})
    assert config.loss.beta == 1.0 and isinstance(config.loss.beta, float)
    assert config.train.steps == 7 and config.model == ExperimentConfig().model


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": {"widths": [1]}}, "unknown config key model.widths"),
        ({"trian": {}}, "unknown config key trian"),
        ({"train": {"steps": 0}}, "train.steps must be > 0"),
        ({"train": {"batch_size": -4}}, "train.batch_size must be > 0"),
        ({"train": {"steps": "many"}}, "train.steps must be an integer"),
        ({"train": {"steps": 1.5}}, "train.steps must be an integer"),
        ({"loss": {"lambda_": -1}}, "loss.lambda_ must be >= 0"),
        ({"loss": {"beta": "x"}}, "loss.beta must be a number"),
        ({"model": {"image_size": -32}}, "model.image_size must be > 0"),
        ({"model": {"image_size": 36}}, "model.image_size = 36 must be divisible"),
        ({"model": {"decoder_widths": [8]}}, "model.decoder_widths needs 2 entries"),
        ({"model": {"encoder_widths": []}}, "model.encoder_widths must be a non-empty list"),
        ({"data": {"source": "ftp"}}, "data.source must be one of embedded, idx, download"),
        ({"data": {"num_workers": -1}}, "data.num_workers must be >= 0"),
        ({"model": 3}, "model must be a mapping"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config_from_dict(values)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("model: [1, 2", "not valid YAML"), ("train:\n  stepz: 3\n", "unknown config key train.stepz")],
)
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_missing_config_file_and_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="neither a YAML file nor a bundled config"):
        resolve_config("no_such_experiment")


@pytest.mark.parametrize("text, expected", [("1e-4", 1e-4), ("1e6", 1e6), ("2.5e-3", 2.5e-3), ("+.5E1", 5.0),
                                            ("3", 3.0), ("0.001", 0.001)])
def test_numbers_are_read_as_people_write_them(text, expected):
    """YAML 1.1 reads 1e-4 (no dot) as a string; a float key takes it as the number it is, from --set or a file."""
    from iiae.core.config import parse_override

    path, value = parse_override(f"train.learning_rate={text}")
    config = config_from_dict({"train": {"learning_rate": value}})
    assert path == ["train", "learning_rate"]
    assert config.train.learning_rate == pytest.approx(expected) and isinstance(config.train.learning_rate, float)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400", "'abc'", "1e-4x"])
def test_non_finite_or_non_numeric_floats_are_refused(value):
    import yaml

    with pytest.raises(ConfigError, match="train.learning_rate must be a (finite )?number"):
        config_from_dict({"train": {"learning_rate": yaml.safe_load(value)}})
