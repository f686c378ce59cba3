"""Network architectures of IIAE: convolutional encoders and decoders for square images.

The design follows the official 256x256 network, scaled to any size that is a power-of-two multiple of the
shared map: 4x4 stride-2 convolutions, batch norm and LeakyReLU 0.2 in the encoders, transposed convolutions,
batch norm and ReLU in the decoders, tanh output in [-1, 1].

The shared code z^s is a *spatial* map (``shared_channels`` x s x s): cross-domain retrieval must identify the
exact partner of an image, so the shared code keeps the layout of the content it describes, as in the official
code (8x8x128 at 256x256). The exclusive codes z^x, z^y are flat vectors, tiled over the map in the decoders.
"""

from __future__ import annotations

import torch
from torch import nn

from iiae.config import ModelConfig


def _down(in_channels: int, out_channels: int, batch_norm: bool) -> nn.Sequential:
    """4x4 stride-2 convolution (halves the side), then batch norm (optional) and LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def _up(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles the side), batch norm, dropout (optional), ReLU."""
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def conv_trunk(in_channels: int, widths: list[int]) -> nn.Sequential:
    """Stack of stride-2 blocks; the first has no batch norm (as in the official code)."""
    blocks, channels = [], in_channels
    for index, width in enumerate(widths):
        blocks.append(_down(channels, width, batch_norm=index > 0))
        channels = width
    return nn.Sequential(*blocks)


class SharedEncoder(nn.Module):
    """r(z^s | image): a conv trunk whose last hidden features also feed the joint encoder q(z^s | x, y).

    ``forward`` returns the hidden features; :meth:`head` maps them to the mean and log-variance of the
    spatial shared map with one more 4x4 stride-2 convolution.
    """

    def __init__(self, in_channels: int, config: ModelConfig) -> None:
        super().__init__()
        self.trunk = conv_trunk(in_channels, config.encoder_widths)
        self.head = nn.Conv2d(config.encoder_widths[-1], 2 * config.shared_channels, 4, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trunk(image)


class JointSharedHead(nn.Module):
    """q(z^s | x, y): one stride-2 convolution over the concatenated hidden features of r^x and r^y."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.encoder_widths[-1]
        self.head = nn.Conv2d(2 * width, 2 * config.shared_channels, 4, 2, 1)

    def forward(self, features_x: torch.Tensor, features_y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([features_x, features_y], dim=1))


class ExclusiveEncoder(nn.Module):
    """q(z^x | x) or q(z^y | y): conv trunk and a dense head to the mean and log-variance of a flat code."""

    def __init__(self, in_channels: int, config: ModelConfig) -> None:
        super().__init__()
        self.trunk = conv_trunk(in_channels, config.exclusive_widths)
        side = config.image_size // 2 ** len(config.exclusive_widths)
        self.head = nn.Linear(config.exclusive_widths[-1] * side * side, 2 * config.exclusive_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(image).flatten(1))


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
