"""Network architectures of IIAE: convolutional encoders and decoders for square images, MLPs for feature vectors.

The design follows the official 256x256 network, scaled to any size that is a power-of-two multiple of the
shared map: 4x4 stride-2 convolutions, batch norm and LeakyReLU 0.2 in the encoders, transposed convolutions,
batch norm and ReLU in the decoders, tanh output in [-1, 1].

The shared code z^s is a *spatial* map (``shared_channels`` x s x s): cross-domain retrieval must identify the
exact partner of an image, so the shared code keeps the layout of the content it describes, as in the official
code (8x8x128 at 256x256). The exclusive codes z^x, z^y are flat vectors, tiled over the map in the decoders.

Four architectures, chosen by ``model.architecture`` through :data:`ARCHITECTURES`:

- ``small`` (default): each encoder block is conv -> batch norm -> LeakyReLU (no batch norm after the first
  conv); the heads see activated features.
- ``official``: the order of the official 256x256 network, batch norm and LeakyReLU 0.2 *before* each conv
  but the first (pre-activation), so the trunk hands raw conv outputs to the heads, which normalise and
  activate them first; the same holds for the joint head and for the dense head of the exclusive encoders.
  With the widths of ``configs/facades.yaml`` it has 16,800,934 trainable parameters.
- ``official_flat`` (Cars): the official order with a *flat* shared code of ``shared_channels`` dimensions,
  two dense layers (``flat_hidden`` wide) on the conv trunks of r^x, r^y and q(z^s|x,y); the decoders first
  map z^s with a dense layer to a ``shared_channels`` x s x s map, then proceed as the spatial decoders.

- ``mlp`` (zero-shot SBIR on feature vectors, the paper's Table 3 model): encoders ``input_dim -> hidden_dims ->
  code`` (Linear, BatchNorm, LeakyReLU ``negative_slope``); q(z^s|x,y) takes the first hidden layers of r^x and
  r^y, concatenated, through ``joint_hidden_dim``; decoders ``(z^s, z^exclusive) -> decoder_hidden_dim ->
  input_dim`` with a linear output. Every code is flat (z^s of ``shared_channels``, z^x and z^y of
  ``exclusive_dim`` dimensions).

The spatial decoders are the same in the three image architectures: transposed conv -> batch norm -> dropout (first two layers,
``decoder_dropout``) -> ReLU, tanh output.

Every activation runs in place (each follows a layer whose backward does not need its output): one memory pass
less per activation: 4 % (32x32) to 10 % (256x256) of a CPU training step (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from iiae.core.config import ModelConfig


def _down(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """4x4 stride-2 convolution (halves the side), then batch norm (optional) and LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles the side), batch norm, dropout (optional), ReLU."""
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _pre_activation(channels: int) -> nn.Sequential:
    """Batch norm and LeakyReLU 0.2 applied to a conv output before the next layer (official order)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.LeakyReLU(0.2, inplace=True))


def _pre_activated_down(in_channels: int, out_channels: int, first: bool) -> nn.Sequential:
    """Batch norm and LeakyReLU 0.2 (except before the first conv, which sees the image), then a 4x4 stride-2 conv."""
    layers: list[nn.Module] = [] if first else list(_pre_activation(in_channels))
    layers.append(nn.Conv2d(in_channels, out_channels, 4, 2, 1))
    return nn.Sequential(*layers)


def conv_trunk(in_channels: int, widths: list[int], pre_activation: bool = False) -> nn.Sequential:
    """Stack of stride-2 blocks; the first has no batch norm (as in the official code).

    ``pre_activation`` puts batch norm and LeakyReLU before each conv but the first (the official order), so
    the trunk's output is a raw conv output.
    """
    blocks, channels = [], in_channels
    for index, width in enumerate(widths):
        if pre_activation:
            blocks.append(_pre_activated_down(channels, width, first=index == 0))
        else:
            blocks.append(_down(channels, width, batch_norm=index > 0))
        channels = width
    return nn.Sequential(*blocks)


class SharedEncoder(nn.Module):
    """r(z^s | image): a conv trunk whose last hidden features also feed the joint encoder q(z^s | x, y).

    ``forward`` returns the hidden features; :meth:`head` maps them to the mean and log-variance of the
    spatial shared map with one more 4x4 stride-2 convolution.
    """

    def __init__(self, in_channels: int, config: ModelConfig, pre_activation: bool = False) -> None:
        super().__init__()
        width = config.encoder_widths[-1]
        self.trunk = conv_trunk(in_channels, config.encoder_widths, pre_activation)
        head = nn.Conv2d(width, 2 * config.shared_channels, 4, 2, 1)
        self.head = nn.Sequential(*_pre_activation(width), head) if pre_activation else head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image)


class JointSharedHead(nn.Module):
    """q(z^s | x, y): one stride-2 convolution over the concatenated hidden features of r^x and r^y."""

    def __init__(self, config: ModelConfig, pre_activation: bool = False) -> None:
        super().__init__()
        width = config.encoder_widths[-1]
        head = nn.Conv2d(2 * width, 2 * config.shared_channels, 4, 2, 1)
        self.head = nn.Sequential(*_pre_activation(2 * width), head) if pre_activation else head

    def forward(self, features_x: torch.Tensor, features_y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([features_x, features_y], dim=1))


class ExclusiveEncoder(nn.Module):
    """q(z^x | x) or q(z^y | y): conv trunk and a dense head to the mean and log-variance of a flat code."""

    def __init__(self, in_channels: int, config: ModelConfig, pre_activation: bool = False) -> None:
        super().__init__()
        width = config.exclusive_widths[-1]
        self.trunk = conv_trunk(in_channels, config.exclusive_widths, pre_activation)
        self.activation = _pre_activation(width) if pre_activation else nn.Identity()
        side = config.image_size // 2 ** len(config.exclusive_widths)
        self.head = nn.Linear(width * side * side, 2 * config.exclusive_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.activation(self.trunk(image)).flatten(1))


class Decoder(nn.Module):
    """p(image | z^exclusive, z^s): the exclusive code is tiled over the shared map, then upsampled."""

    def __init__(self, out_channels: int, config: ModelConfig) -> None:
        super().__init__()
        channels = config.shared_channels + config.exclusive_dim
        blocks: list[nn.Module] = []
        for index, width in enumerate(config.decoder_widths):
            blocks.append(_up(channels, width, config.decoder_dropout if index < 2 else 0.0))
            channels = width
        blocks += [nn.ConvTranspose2d(channels, out_channels, 4, 2, 1), nn.Tanh()]
        self.layers = nn.Sequential(*blocks)

    def forward(self, exclusive: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        side = shared.shape[-1]
        tiled = exclusive[:, :, None, None].expand(-1, -1, side, side)
        return self.layers(torch.cat([shared, tiled], dim=1))


def _flat_head(in_features: int, config: ModelConfig) -> nn.Sequential:
    """Two dense layers from flattened (pre-activated) conv features to the mean and log-variance of a flat z^s."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, config.flat_hidden),
        nn.BatchNorm1d(config.flat_hidden),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Linear(config.flat_hidden, 2 * config.shared_channels),
    )


def _trunk_features(config: ModelConfig) -> tuple[int, int]:
    """Channels and side of the conv trunk's output of a shared encoder."""
    return config.encoder_widths[-1], config.image_size // 2 ** len(config.encoder_widths)


class FlatSharedEncoder(SharedEncoder):
    """r(z^s | image) with a flat shared code: the official trunk, then batch norm, LeakyReLU and two dense layers."""

    def __init__(self, in_channels: int, config: ModelConfig) -> None:
        super().__init__(in_channels, config, pre_activation=True)
        width, side = _trunk_features(config)
        self.head = nn.Sequential(*_pre_activation(width), _flat_head(width * side * side, config))


class FlatJointSharedHead(JointSharedHead):
    """q(z^s | x, y) with a flat shared code: two dense layers over the concatenated trunk features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, pre_activation=True)
        width, side = _trunk_features(config)
        self.head = nn.Sequential(*_pre_activation(2 * width), _flat_head(2 * width * side * side, config))


class FlatDecoder(Decoder):
    """p(image | z^exclusive, z^s) for a flat z^s: a dense layer to a spatial map, then the spatial decoder."""

    def __init__(self, out_channels: int, config: ModelConfig) -> None:
        super().__init__(out_channels, config)
        self.side, self.channels = config.shared_size, config.shared_channels
        self.to_map = nn.Sequential(nn.Linear(self.channels, self.channels * self.side**2), nn.ReLU(inplace=True))

    def forward(self, exclusive: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        shared_map = self.to_map(shared).view(-1, self.channels, self.side, self.side)
        return super().forward(exclusive, shared_map)


@dataclass
class Networks:
    """The seven networks of one IIAE model, named as the attributes of :class:`iiae.IIAE`."""

    exclusive_encoder_x: nn.Module  # q(z^x | x): input -> mean and log-variance
    exclusive_encoder_y: nn.Module  # q(z^y | y)
    shared_encoder_x: nn.Module  # r^x(z^s | x): input -> features; .head(features) -> mean and log-variance
    shared_encoder_y: nn.Module  # r^y(z^s | y)
    joint_shared_head: nn.Module  # q(z^s | x, y): (features of x, features of y) -> mean and log-variance
    decoder_x: nn.Module  # p(x | z^x, z^s): (exclusive, shared) -> x
    decoder_y: nn.Module  # p(y | z^y, z^s)


def _networks(config: ModelConfig, pre_activation: bool) -> Networks:
    return Networks(
        exclusive_encoder_x=ExclusiveEncoder(config.x_channels, config, pre_activation),
        exclusive_encoder_y=ExclusiveEncoder(config.y_channels, config, pre_activation),
        shared_encoder_x=SharedEncoder(config.x_channels, config, pre_activation),
        shared_encoder_y=SharedEncoder(config.y_channels, config, pre_activation),
        joint_shared_head=JointSharedHead(config, pre_activation),
        decoder_x=Decoder(config.x_channels, config),
        decoder_y=Decoder(config.y_channels, config),
    )


def small_networks(config: ModelConfig) -> Networks:
    """conv -> batch norm -> LeakyReLU blocks (the default, used by the MNIST-CDCB configs)."""
    return _networks(config, pre_activation=False)


def official_networks(config: ModelConfig) -> Networks:
    """The official 256x256 order: batch norm and LeakyReLU before each conv but the first."""
    return _networks(config, pre_activation=True)


def official_flat_networks(config: ModelConfig) -> Networks:
    """The official order with a flat shared code of ``shared_channels`` dimensions (the paper's Cars variant)."""
    return Networks(
        exclusive_encoder_x=ExclusiveEncoder(config.x_channels, config, pre_activation=True),
        exclusive_encoder_y=ExclusiveEncoder(config.y_channels, config, pre_activation=True),
        shared_encoder_x=FlatSharedEncoder(config.x_channels, config),
        shared_encoder_y=FlatSharedEncoder(config.y_channels, config),
        joint_shared_head=FlatJointSharedHead(config),
        decoder_x=FlatDecoder(config.x_channels, config),
        decoder_y=FlatDecoder(config.y_channels, config),
    )


# ------------------------------------------------------------------------------------------ feature vectors
def _mlp_block(inputs: int, outputs: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, outputs), nn.BatchNorm1d(outputs), nn.LeakyReLU(slope))


class MLPEncoder(nn.Module):
    """input -> hidden layers (Linear, BatchNorm, LeakyReLU) -> mean and log-variance of a flat code.

    As an exclusive encoder, ``forward`` gives the code's parameters. As a shared encoder (:class:`MLPSharedEncoder`),
    ``forward`` gives the first hidden layer, which also feeds the joint encoder, and :meth:`head` the rest.
    """

    def __init__(self, config: ModelConfig, code_dim: int) -> None:
        super().__init__()
        widths = [config.input_dim, *config.hidden_dims]
        self.first = _mlp_block(widths[0], widths[1], config.negative_slope)
        self.rest = nn.Sequential(*[_mlp_block(a, b, config.negative_slope) for a, b in zip(widths[1:-1], widths[2:])])
        self.out = nn.Linear(widths[-1], 2 * code_dim)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.rest(hidden))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.first(features))


class MLPSharedEncoder(MLPEncoder):
    """r^x(z^s | x) or r^y(z^s | y) on feature vectors: ``forward`` -> first hidden layer, :meth:`head` -> z^s."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.first(features)


class MLPJointSharedHead(nn.Sequential):
    """q(z^s | x, y): the first hidden layers of r^x and r^y, concatenated -> joint_hidden_dim -> z^s."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(
            _mlp_block(2 * config.hidden_dims[0], config.joint_hidden_dim, config.negative_slope),
            nn.Linear(config.joint_hidden_dim, 2 * config.shared_channels),
        )

    def forward(self, features_x: torch.Tensor, features_y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.cat([features_x, features_y], dim=1))


class MLPDecoder(nn.Module):
    """p(features | z^exclusive, z^s): (z^s, z^exclusive) -> decoder_hidden_dim -> input_dim, linear output."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _mlp_block(config.shared_channels + config.exclusive_dim, config.decoder_hidden_dim, config.negative_slope),
            nn.Linear(config.decoder_hidden_dim, config.input_dim),
        )

    def forward(self, exclusive: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([shared, exclusive], dim=1))


def mlp_networks(config: ModelConfig) -> Networks:
    """Every network an MLP on feature vectors (the paper's zero-shot SBIR model: 512 -> 256 -> 64-d codes)."""
    return Networks(
        exclusive_encoder_x=MLPEncoder(config, config.exclusive_dim),
        exclusive_encoder_y=MLPEncoder(config, config.exclusive_dim),
        shared_encoder_x=MLPSharedEncoder(config, config.shared_channels),
        shared_encoder_y=MLPSharedEncoder(config, config.shared_channels),
        joint_shared_head=MLPJointSharedHead(config),
        decoder_x=MLPDecoder(config),
        decoder_y=MLPDecoder(config),
    )


#: ``model.architecture`` -> builder of the seven networks.
ARCHITECTURES: dict[str, Callable[[ModelConfig], Networks]] = {
    "small": small_networks,
    "official": official_networks,
    "official_flat": official_flat_networks,
    "mlp": mlp_networks,
}


def build_networks(config: ModelConfig) -> Networks:
    """The networks of ``config.architecture`` (a key of :data:`ARCHITECTURES`)."""
    return ARCHITECTURES[config.architecture](config)
