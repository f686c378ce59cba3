"""The IIAE model: shapes for several image sizes, the public API, save and load."""

from __future__ import annotations

import json

import pytest
import torch

from iiae import IIAE, CheckpointError, ModelConfig

SIZES = {
    16: ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8, 8], decoder_widths=[8]),
    32: ModelConfig(),
    64: ModelConfig(image_size=64, encoder_widths=[8, 16, 16], exclusive_widths=[8, 16], decoder_widths=[16, 8, 8]),
}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_shapes_for_image_sizes(size):
    config = SIZES[size]
    model = IIAE(config).eval()
    x, y = torch.rand(3, 3, size, size), torch.rand(3, 3, size, size)
    side = config.shared_size
    assert model.encode_shared_x(x).shape == (3, config.shared_channels, side, side)
    assert model.encode_shared_y(y).shape == (3, config.shared_channels, side, side)
    assert model.encode_exclusive_x(x).shape == (3, config.exclusive_dim)
    assert model.encode_exclusive_y(y).shape == (3, config.exclusive_dim)
    output = model(x, y)
    assert output.reconstruction_x.shape == x.shape and output.reconstruction_y.shape == y.shape
    assert model.translate_x_to_y(x).shape == y.shape
    assert model.translate_y_to_x(y).shape == x.shape
    assert output.reconstruction_x.abs().max() <= 1.0  # tanh output


def test_domains_with_different_channel_counts():
    config = ModelConfig(image_size=16, x_channels=1, y_channels=3, encoder_widths=[8], exclusive_widths=[8],
                         decoder_widths=[8])  # fmt: skip
    model = IIAE(config)
    output = model(torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16))
    assert output.reconstruction_x.shape == (2, 1, 16, 16)
    assert output.reconstruction_y.shape == (2, 3, 16, 16)


def test_translation_uses_the_shared_code_and_the_given_exclusive_code():
    torch.manual_seed(0)
    model = IIAE(SIZES[16]).eval()
    x = torch.rand(2, 3, 16, 16)
    exclusive_y = torch.randn(2, model.config.exclusive_dim)
    expected = model.decode_y(exclusive_y, model.encode_shared_x(x))
    assert torch.equal(model.translate_x_to_y(x, exclusive_y), expected)
    # z^y from the prior: reproducible from a generator, different across draws
    first = model.translate_x_to_y(x, generator=torch.Generator().manual_seed(1))
    again = model.translate_x_to_y(x, generator=torch.Generator().manual_seed(1))
    other = model.translate_x_to_y(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_evaluation_forward_uses_means_and_training_forward_samples():
    torch.manual_seed(0)
    model = IIAE(SIZES[16]).eval()
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x, y, sample=False).reconstruction_x, model(x, y, sample=False).reconstruction_x)
    assert not torch.equal(model(x, y, sample=True).reconstruction_x, model(x, y, sample=True).reconstruction_x)


def test_logvars_are_clamped():
    model = IIAE(ModelConfig(**{**SIZES[16].__dict__, "logvar_max": 0.5}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)  # pushes every pre-activation far up
    posteriors = model.eval().posteriors(torch.ones(2, 3, 16, 16), torch.ones(2, 3, 16, 16))
    for gaussian in vars(posteriors).values():
        assert gaussian.logvar.max() <= 0.5


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = IIAE(SIZES[16]).eval()
    model.save_pretrained(tmp_path)
    loaded = IIAE.from_pretrained(tmp_path)
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.encode_shared_x(x), loaded.encode_shared_x(x))
    assert loaded.config == model.config
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format_version"] == 1 and "iiae_version" in meta


def test_load_names_the_mismatched_tensor(tmp_path):
    IIAE(SIZES[16]).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["exclusive_dim"] = 4  # the file's tensors were made for 8
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="exclusive_encoder_x.head.weight"):
        IIAE.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage_config"])
def test_load_damaged_model_files(tmp_path, damage):
    IIAE(SIZES[16]).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        IIAE.from_pretrained(tmp_path)
