"""Property-based tests of the error contract (hypothesis): random config values and random, truncated or
bit-flipped files give either a result or the package's one-line error, never another exception, and a failed
command leaves no partial output.

``IIAE_FUZZ_EXAMPLES=N`` runs N examples per property instead of the default few dozen (under a minute in all).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny_runs import expect_error, tiny_idx_folder

from iiae import IIAE, ModelConfig
from iiae.cli.main import main
from iiae.core.config import ExperimentConfig, config_from_dict
from iiae.data.idx import read_idx, write_idx
from iiae.data.paired_images import ImageFileError, _inspect
from iiae.engine.checkpoint_files import load_checkpoint
from iiae.errors import CheckpointError, ConfigError, DataError

EXAMPLES = int(os.environ.get("IIAE_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ------------------------------------------------------------------------------------------------ configs
SCHEMA = ExperimentConfig().to_dict()
KEYS = [(section, key) for section, values in SCHEMA.items() if isinstance(values, dict) for key in values]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4), st.dictionaries(st.text(max_size=3), st.integers()),
)  # fmt: skip


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4), st.booleans())
def test_any_config_values_validate_or_are_named(changes, unknown_key):
    values = ExperimentConfig().to_dict()
    for (section, key), value in changes:
        values[section][key] = value
    if unknown_key:
        values["train"]["stepz"] = 3
    try:
        config = config_from_dict(values)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error)
        return
    assert not unknown_key
    config.validate()  # what config_from_dict returns is valid


# ------------------------------------------------------------------------------------------------ damage
def damage(data: bytes, draw) -> bytes:  # noqa: ANN001
    """Truncate, flip bits, overwrite a span with random bytes, or append garbage."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "append"]))
    if kind == "truncate" or not data:
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    buffer = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(buffer) - 1))
            buffer[position] ^= 1 << draw(st.integers(0, 7))
    elif kind == "overwrite":
        start = draw(st.integers(0, len(buffer) - 1))
        junk = draw(st.binary(min_size=1, max_size=32))
        buffer[start : start + len(junk)] = junk
    else:
        buffer += draw(st.binary(min_size=1, max_size=64))
    return bytes(buffer)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("originals")
    write_idx(folder / "images.idx", np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))
    png = io.BytesIO()
    Image.new("RGB", (32, 16), (10, 200, 30)).save(png, format="PNG")
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 16), (10, 200, 30)).save(jpeg, format="JPEG")
    torch.manual_seed(0)
    model = IIAE(ModelConfig(image_size=16, encoder_widths=[4], exclusive_widths=[4, 4], decoder_widths=[4],
                             exclusive_dim=2, shared_channels=2))  # fmt: skip
    model.save_pretrained(folder / "model")
    checkpoint = io.BytesIO()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "global_step": 3}, checkpoint)
    return {
        "idx": (folder / "images.idx").read_bytes(), "png": png.getvalue(), "jpeg": jpeg.getvalue(),
        "config.json": (folder / "model" / "config.json").read_bytes(),
        "model.safetensors": (folder / "model" / "model.safetensors").read_bytes(), "ckpt": checkpoint.getvalue(),
    }  # fmt: skip


@FUZZ
@given(data=st.data())
def test_damaged_files_load_or_raise_the_package_error(tmp_path, originals, data):
    kind = data.draw(st.sampled_from(["idx", "png", "jpeg", "ckpt"]))
    path = tmp_path / f"damaged.{kind}"
    path.write_bytes(damage(originals[kind], data.draw))
    expected = {"idx": DataError, "png": ImageFileError, "jpeg": ImageFileError, "ckpt": CheckpointError}[kind]
    load = {"idx": read_idx, "png": _inspect, "jpeg": _inspect, "ckpt": load_checkpoint}[kind]
    try:
        load(path)
    except expected as error:
        assert str(path) in str(error) and "\n" not in str(error)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_idx_folder(tmp_path_factory.mktemp("data"), train=16, test=8)


@FUZZ
@given(data=st.data())
def test_evaluating_a_damaged_model_folder_is_a_result_or_one_line(tmp_path_factory, originals, tiny_data, data, capsys):
    folder = tmp_path_factory.mktemp("model")
    damaged = data.draw(st.sampled_from(["config.json", "model.safetensors"]))
    for name in ("config.json", "model.safetensors"):
        content = originals[name]
        (folder / name).write_bytes(damage(content, data.draw) if name == damaged else content)
    out = folder.parent / f"{folder.name}.json"
    argv = ["evaluate", str(folder), "--data-source", "idx", "--data-root", str(tiny_data), "--no-measures",
            "--json", str(out)]  # fmt: skip
    capsys.readouterr()
    status = main(argv)
    error = capsys.readouterr().err.strip()
    if status == 0:
        assert json.loads(out.read_text())["retrieval"]
    else:
        assert status == 2 and len(error.splitlines()) == 1 and error.startswith("iiae: error: "), error
        assert not out.exists()  # nothing half-written


def test_the_damage_helper_is_seen_by_the_loaders(tmp_path, originals, capsys):
    """Guards the properties above: a cut model file is refused with one line (so they can fail)."""
    (tmp_path / "config.json").write_bytes(originals["config.json"])
    (tmp_path / "model.safetensors").write_bytes(originals["model.safetensors"][:100])
    expect_error(capsys, ["evaluate", str(tmp_path), "--no-measures"], "model.safetensors", prefix="iiae: error:")
