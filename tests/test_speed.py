"""The CPU speed-ups of the training step change nothing but the speed: in-place activations, channels_last
and the fused Adam give the values and gradients of the plain versions (to rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from iiae import IIAE, ModelConfig
from iiae.core.config import LossConfig, TrainConfig
from iiae.core.objective import iiae_loss
from iiae.engine.training import apply_speed_switches, make_optimizer

SMALL = ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8, 8], decoder_widths=[8], shared_channels=4)
OFFICIAL = ModelConfig(image_size=16, architecture="official", decoder_dropout=0.0, encoder_widths=[8],
                       exclusive_widths=[8, 8], decoder_widths=[8], shared_channels=4)  # fmt: skip
FLAT = ModelConfig(image_size=16, architecture="official_flat", encoder_widths=[8], exclusive_widths=[8, 8],
                   decoder_widths=[8], shared_channels=4, flat_hidden=16)  # fmt: skip


def _loss_and_gradients(model: IIAE, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    output = model(x, y, sample=True, generator=torch.Generator().manual_seed(3))
    terms = iiae_loss(x, y, output.reconstruction_x, output.reconstruction_y, output.posteriors, LossConfig(), 10)
    model.zero_grad(set_to_none=True)
    terms["loss"].backward()
    return terms["loss"].item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _pairs(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    shape = (6, 3, config.image_size, config.image_size)
    return torch.rand(shape, generator=generator) * 2 - 1, torch.rand(shape, generator=generator) * 2 - 1


@pytest.mark.parametrize("config", [SMALL, OFFICIAL, FLAT], ids=["small", "official", "official_flat"])
def test_in_place_activations_give_the_gradients_of_out_of_place_ones(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = IIAE(config).train()
    activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert activations and all(m.inplace for m in activations)  # the speed-up is on ...
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            module.inplace = False  # ... and this copy is the reference without it
    x, y = _pairs(config)
    loss, gradients = _loss_and_gradients(model, x, y)
    plain_loss, plain_gradients = _loss_and_gradients(plain, x, y)
    assert loss == plain_loss
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, plain_gradients[name], rtol=0, atol=0, msg=name)


def test_channels_last_gives_the_values_and_gradients_of_the_contiguous_layout() -> None:
    torch.manual_seed(0)
    model = IIAE(SMALL).train()
    nhwc = copy.deepcopy(model)
    apply_speed_switches(nhwc, TrainConfig(channels_last=True))
    assert nhwc.shared_encoder_x.trunk[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = _pairs(SMALL)
    loss, gradients = _loss_and_gradients(model, x, y)
    cl = torch.channels_last
    nhwc_loss, nhwc_gradients = _loss_and_gradients(nhwc, x.to(memory_format=cl), y.to(memory_format=cl))
    assert nhwc_loss == pytest.approx(loss, rel=1e-5)
    for name, gradient in gradients.items():
        torch.testing.assert_close(nhwc_gradients[name], gradient, rtol=1e-4, atol=1e-5, msg=name)


def test_channels_last_model_saves_contiguous_weights_that_load_back(tmp_path) -> None:
    model = IIAE(SMALL)
    apply_speed_switches(model, TrainConfig(channels_last=True))
    model.save_pretrained(tmp_path / "model")
    loaded = IIAE.from_pretrained(tmp_path / "model")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_fused_adam_on_cpu_makes_the_plain_adam_update() -> None:
    torch.manual_seed(0)
    model = IIAE(SMALL).train()
    reference, initial = copy.deepcopy(model), copy.deepcopy(model)
    train = TrainConfig(learning_rate=1e-3, adam_beta1=0.5, adam_beta2=0.99)
    optimiser = make_optimizer(model, train)
    assert optimiser.defaults["fused"] is True
    plain = torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.99), foreach=False)
    x, y = _pairs(SMALL)
    for _ in range(3):
        for module, step in ((model, optimiser), (reference, plain)):
            _loss_and_gradients(module, x, y)
            step.step()
    for (name, parameter), reference_parameter in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(parameter, reference_parameter, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(model.decoder_x.layers[-2].weight, initial.decoder_x.layers[-2].weight)  # it trained


def test_fused_adam_is_left_out_where_a_parameter_cannot_use_it() -> None:
    model = nn.Linear(2, 2).to(torch.float64)
    model.register_parameter("count", nn.Parameter(torch.zeros(1, dtype=torch.int64), requires_grad=False))
    assert make_optimizer(model, TrainConfig()).defaults["fused"] is None
