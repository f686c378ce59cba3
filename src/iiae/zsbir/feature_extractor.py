"""Image files -> feature vectors, exactly as the feature stage computed them, for training and for later queries.

A :class:`FeatureExtractor` is a backbone network plus its :class:`~iiae.zsbir.image_pipeline.Preprocessing`.
``save(folder)`` writes ``feature_extractor.json`` (backbone, ImageNet weight hash, preprocessing, architecture)
and, when this project trained or fine-tuned weights, ``feature_extractor.safetensors`` (only the trained
tensors: the whole small CNN, or the fine-tuned top blocks of EfficientNet-Lite0). ``load(folder)`` rebuilds it;
the pretrained EfficientNet-Lite0 weights are reloaded from their package and must have the recorded sha256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from iiae.core.model import check_finite_codes
from iiae.errors import CheckpointError
from iiae.readers import load_safetensors, parse_json, quote, read_bytes
from iiae.zsbir import pretrained_features
from iiae.zsbir.backbones import SmallCNN, TorchvisionFeatures
from iiae.zsbir.config import FeatureNetConfig
from iiae.zsbir.efficientnet import fold_batch_norm
from iiae.zsbir.image_pipeline import Domain, Preprocessing, image_batches
from iiae.zsbir.pretrained_features import tuned_state

CONFIG_FILE, WEIGHTS_FILE = "feature_extractor.json", "feature_extractor.safetensors"
FORMAT = "iiae-zsbir-feature-extractor/1"
EMBED_BATCH = 64  # images per inference batch (and per decoding task)

MAX_LAYER_WIDTH = 1 << 14  # channels of a small CNN layer a description may name (a 10^9-wide one: no network)
MAX_DESCRIPTION_BYTES = 1 << 20  # a feature extractor's config.json is a few kB


class FeatureExtractor:
    """``embed(paths, domain)`` -> float32 [N, D]. ``network`` has ``features(float input) -> [N, D]``.

    ``architecture`` holds what :meth:`load` needs to rebuild ``network`` (small CNN: widths, feature_dim,
    num_classes; EfficientNet-Lite0: padding); ``tuned_blocks`` > 0 marks a fine-tuned EfficientNet-Lite0.
    """

    def __init__(self, backbone: str, network: nn.Module, preprocessing: Preprocessing, *,
                 weights_sha256: str | None = None, architecture: dict | None = None, tuned_blocks: int = 0,
                 trained_on_classes: Sequence[str] = (), device: str | torch.device = "cpu", workers: int = 0) -> None:
        self.backbone, self.network, self.preprocessing = backbone, network.eval(), preprocessing
        self.weights_sha256, self.architecture = weights_sha256, dict(architecture or {})
        self.tuned_blocks, self.trained_on_classes = tuned_blocks, list(trained_on_classes)
        self.device, self.workers = torch.device(device), workers
        self._inference: nn.Module | None = None
        self._feature_dim: int | None = None

    @property
    def trained(self) -> bool:
        """Whether this project trained some of the weights (then they are saved with :meth:`save`)."""
        return self.backbone == "small_cnn" or self.tuned_blocks > 0

    def inference_network(self) -> nn.Module:
        """The network used by :meth:`embed`: eval mode, channels_last, on ``device`` (EfficientNet-Lite0 with its
        batch norms folded into the convolutions)."""
        if self._inference is None:
            network = self.network.eval()
            if self.backbone == "efficientnet_lite0":
                network = fold_batch_norm(network)
            self._inference = network.to(self.device, memory_format=torch.channels_last).eval()
        return self._inference

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Features (float32 [N, D]) of uint8 [N, 3, S, S] images already decoded with ``preprocessing``."""
        pixels = torch.as_tensor(pixels)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[2:] != (self.preprocessing.image_size,) * 2:
            raise ValueError(f"expected uint8 [N, 3, {self.preprocessing.image_size}, "
                             f"{self.preprocessing.image_size}] pixels, got {tuple(pixels.shape)}")
        network = self.inference_network()
        parts = []
        for start in range(0, len(pixels), EMBED_BATCH):
            parts.append(self._features(network, pixels[start : start + EMBED_BATCH]))
        return np.concatenate(parts) if parts else np.empty((0, self.feature_dim()), dtype=np.float32)

    def embed(self, paths: Sequence[str | Path], domain: Domain) -> np.ndarray:
        """Features (float32 [N, D]) of image files, decoded in ``workers`` processes. ``domain`` is sketch or
        photo (photos may become edge maps, see ``preprocessing.photo_input``). DataError names a bad file."""
        network = self.inference_network()
        parts = []
        with torch.inference_mode():
            for pixels in image_batches(paths, self.preprocessing, domain, EMBED_BATCH, self.workers):
                parts.append(self._features(network, pixels))
        return np.concatenate(parts) if parts else np.empty((0, self.feature_dim()), dtype=np.float32)

    def _features(self, network: nn.Module, pixels: torch.Tensor) -> np.ndarray:
        inputs = self.preprocessing.normalise(pixels.to(self.device, non_blocking=True))
        features = network.features(inputs.contiguous(memory_format=torch.channels_last))
        return check_finite_codes(features.float().cpu().numpy(), f"the feature extractor ({self.backbone})")

    def feature_dim(self) -> int:
        """D, the length of each feature vector (one probe image through the network, once)."""
        if self._feature_dim is None:
            size = self.preprocessing.image_size
            with torch.inference_mode():
                probe = torch.full((1, 3, size, size), 127, dtype=torch.uint8)
                self._feature_dim = int(self._features(self.inference_network(), probe).shape[1])
        return self._feature_dim

    def describe(self) -> dict:
        """The JSON-able description saved by :meth:`save` (and put in reports)."""
        return {"format": FORMAT, "backbone": self.backbone, "weights_sha256": self.weights_sha256,
                "preprocessing": self.preprocessing.to_dict(), "architecture": self.architecture,
                "tuned_blocks": self.tuned_blocks, "trained_on_classes": self.trained_on_classes,
                "weights_file": WEIGHTS_FILE if self.trained else None}

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this project trained: the whole small CNN, or the fine-tuned part of EfficientNet-Lite0."""
        if self.backbone == "small_cnn":
            state = self.network.state_dict()
        elif self.tuned_blocks > 0:
            state = tuned_state(self.network, self.tuned_blocks)
        else:
            return {}
        return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}

    def save(self, folder: str | Path) -> Path:
        """Write ``feature_extractor.json`` (+ ``feature_extractor.safetensors`` for trained weights)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.trained:
            save_file(self.trained_tensors(), str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(self.describe(), indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", workers: int = 0) -> FeatureExtractor:
        """The extractor saved in ``folder``; CheckpointError when it is missing, damaged, or when the pretrained
        weights installed here are not the ones it was made with."""
        folder = Path(folder)
        meta = _read_description(folder / CONFIG_FILE)
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        backbone, tuned_blocks = meta["backbone"], int(meta.get("tuned_blocks") or 0)
        network = _build_network(backbone, meta, folder)
        extractor = cls(backbone, network, preprocessing, weights_sha256=meta.get("weights_sha256"),
                        architecture=meta.get("architecture"), tuned_blocks=tuned_blocks,
                        trained_on_classes=meta.get("trained_on_classes") or [], device=device, workers=workers)
        if extractor.trained:
            expected = set(extractor.trained_tensors())
            _load_trained_tensors(network, folder / WEIGHTS_FILE, expected)
        return extractor


def _read_description(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: not a saved feature extractor")
    meta = parse_json(read_bytes(path, MAX_DESCRIPTION_BYTES, "feature extractor description", CheckpointError),
                      str(path), CheckpointError)  # fmt: skip
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a feature extractor description (format {FORMAT})")
    for key in ("backbone", "preprocessing"):
        if key not in meta:
            raise CheckpointError(f"{path} lacks {key!r}")
    try:
        Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid preprocessing {quote(meta['preprocessing'])} ({quote(str(error))[1:-1]})"
                              ) from None  # fmt: skip
    return meta


def _build_network(backbone: str, meta: dict, folder: Path) -> nn.Module:
    """The untrained (small CNN) or pretrained (ImageNet) network named in a saved description."""
    architecture = meta.get("architecture") or {}
    if backbone == "small_cnn":
        try:
            config = FeatureNetConfig(widths=list(architecture["widths"]), feature_dim=int(architecture["feature_dim"]))
            sizes = [*config.widths, config.feature_dim, int(architecture["num_classes"])]
            if not all(type(size) is int and 0 < size <= MAX_LAYER_WIDTH for size in sizes) or len(sizes) > 34:
                raise ValueError(f"widths, feature_dim and num_classes must be integers in [1, {MAX_LAYER_WIDTH}] "
                                 f"(at most 32 layers), got {quote(sizes)}")  # fmt: skip
            return SmallCNN(config, int(architecture["num_classes"]))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{folder / CONFIG_FILE}: invalid small CNN architecture ({error})") from None
    if backbone == "efficientnet_lite0":
        if not meta.get("weights_sha256"):
            raise CheckpointError(f"{folder / CONFIG_FILE} records no sha256 of the EfficientNet-Lite0 weights")
        return pretrained_features.load_pretrained_backbone(meta["weights_sha256"])
    if backbone in ("vgg16", "resnet50"):
        return TorchvisionFeatures(backbone)
    raise CheckpointError(f"{folder / CONFIG_FILE} names unknown backbone {backbone!r}")


def _load_trained_tensors(network: nn.Module, path: Path, expected: set[str]) -> None:
    """Copy the tensors of ``path`` into ``network``: exactly the ``expected`` names, with the network's shapes."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: the trained feature-extractor weights are missing")
    state = network.state_dict()
    shapes = {name: tuple(state[name].shape) for name in expected}
    # header, names and shapes checked before a tensor is read; every tensor finite (a NaN extractor is refused)
    tensors = load_safetensors(path, shapes, "feature-extractor weights", CheckpointError)
    network.load_state_dict(tensors, strict=False)
