"""Networks of the zero-shot feature stage besides EfficientNet-Lite0 (:mod:`iiae.zsbir.efficientnet`): the small
CNN trained here on the seen classes, and torchvision's ImageNet models when torchvision is installed."""

from __future__ import annotations

import torch
from torch import nn

from iiae.errors import ConfigError
from iiae.zsbir.config import FeatureNetConfig


class SmallCNN(nn.Module):
    """Stride-2 conv blocks -> global average pool -> ``feature_dim`` ReLU features -> class logits."""

    def __init__(self, config: FeatureNetConfig, num_classes: int) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(channels, config.feature_dim), nn.ReLU())
        self.classify = nn.Linear(config.feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.conv(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))


class TorchvisionFeatures(nn.Module):
    """torchvision's ImageNet VGG-16 (conv5, average-pooled) or ResNet-50 (pooled), frozen; needs torchvision."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        try:
            import torchvision
        except ImportError:
            raise ConfigError(f"feature_net.backbone = {backbone} needs torchvision (pip install torchvision); "
                              "use small_cnn without it") from None
        try:
            if backbone == "vgg16":
                model = torchvision.models.vgg16(weights="DEFAULT")
                self.body = nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            else:
                model = torchvision.models.resnet50(weights="DEFAULT")
                model.fc = nn.Identity()
                self.body = model
        except Exception as error:  # noqa: BLE001 - a download or cache failure of the weights
            raise ConfigError(f"pretrained {backbone} weights are not available: {error}") from None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)
