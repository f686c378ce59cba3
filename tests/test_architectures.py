"""The official 256x256 network and its scaled 128 and 64 versions: parameter count, shapes, block order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iiae import IIAE, ModelConfig
from iiae.core.config import resolve_config
from iiae.core.networks import ARCHITECTURES

OFFICIAL_256_PARAMETERS = 16_800_934  # the issue: "about 16.8 M trainable parameters"


def _official(size: int) -> ModelConfig:
    """The official design at ``size``: the first log2(256 / size) levels dropped, widths divided by 256 / size."""
    scale = 256 // size
    levels = {256: 0, 128: 1, 64: 2}[size]
    return ModelConfig(image_size=size, architecture="official", decoder_dropout=0.5, shared_channels=128 // scale,
                       encoder_widths=[w // scale for w in [32, 64, 128, 256][levels:]],
                       exclusive_widths=[w // scale for w in [32, 64, 128, 256][levels:]],
                       decoder_widths=[w // scale for w in [512, 256, 128, 64][: 4 - levels]])  # fmt: skip


def test_the_configs_use_the_official_design():
    assert resolve_config("facades").model == _official(256) == resolve_config("maps").model
    assert resolve_config("facades_64").model == _official(64) == resolve_config("maps_64").model
    cars = resolve_config("cars").model
    assert cars.architecture == "official_flat" and cars.shared_channels == 128
    assert set(ARCHITECTURES) == {"small", "official", "official_flat", "mlp"}  # mlp: feature vectors (zs-sbir)


def test_official_256_parameter_count_and_shapes():
    torch.manual_seed(0)
    model = IIAE(_official(256))
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"official 256x256 IIAE: {count:,} trainable parameters")
    assert count == OFFICIAL_256_PARAMETERS
    model.eval()
    x, y = torch.rand(1, 3, 256, 256) * 2 - 1, torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        features = model.shared_encoder_x(x)
        assert features.shape == (1, 256, 16, 16)  # what the joint encoder q(z^s | x, y) sees
        output = model(x, y, sample=False)
    assert output.posteriors.shared_x.mean.shape == (1, 128, 8, 8)  # 8x8x128 spatial shared code
    assert output.posteriors.shared_joint.mean.shape == (1, 128, 8, 8)
    assert output.posteriors.exclusive_x.mean.shape == (1, 8)
    assert output.reconstruction_x.shape == x.shape and output.reconstruction_y.shape == y.shape


def test_official_block_order_and_decoder_dropout():
    model = IIAE(_official(64))
    first, second = model.shared_encoder_x.trunk[0], model.shared_encoder_x.trunk[1]
    assert [type(m) for m in first] == [nn.Conv2d]  # the first conv sees the image
    assert [type(m) for m in second] == [nn.BatchNorm2d, nn.LeakyReLU, nn.Conv2d]  # BN, LeakyReLU, then conv
    assert [type(m) for m in model.joint_shared_head.head] == [nn.BatchNorm2d, nn.LeakyReLU, nn.Conv2d]
    dropouts = [m.p for m in model.decoder_x.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.5, 0.5]  # the first two decoder layers
    small = IIAE(ModelConfig())
    assert isinstance(small.shared_encoder_x.head, nn.Conv2d)  # the default model keeps its layout


@pytest.mark.parametrize("size", [64, 128])
def test_scaled_versions_shapes(size):
    torch.manual_seed(0)
    config = _official(size)
    model = IIAE(config).eval()
    x = torch.rand(2, 3, size, size)
    assert model.encode_shared_x(x).shape == (2, 128 * size // 256, 8, 8)
    assert model.translate_x_to_y(x).shape == x.shape
    model.train()
    output = model(x, x)
    output.reconstruction_x.mean().backward()  # gradients reach the encoders
    assert model.shared_encoder_x.trunk[0][0].weight.grad is not None


def test_official_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = IIAE(_official(64)).eval()
    model.save_pretrained(tmp_path)
    loaded = IIAE.from_pretrained(tmp_path)
    assert loaded.config.architecture == "official"
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.encode_shared_x(x), loaded.encode_shared_x(x))


def test_flat_shared_code_of_the_cars_variant():
    torch.manual_seed(0)
    model = IIAE(resolve_config("cars").model)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    output = model(x, y)
    assert output.posteriors.shared_joint.mean.shape == (2, 128)  # flat 128-d z^s
    assert output.posteriors.shared_x.mean.shape == (2, 128) and output.reconstruction_y.shape == y.shape
    dense = [m for m in model.shared_encoder_x.head.modules() if isinstance(m, nn.Linear)]
    assert len(dense) == 2  # two dense layers on the conv trunk
    print(f"Cars variant (64x64, flat 128-d z^s): {sum(p.numel() for p in model.parameters()):,} parameters")
