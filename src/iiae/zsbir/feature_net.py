"""The feature stage for raw Sketchy images: images -> feature vectors, trained on seen classes only.

The paper feeds IIAE 512-d VGG-16 features. With no pretrained weights reachable, the default here is a small
CNN (stride-2 conv + BN + ReLU blocks, global average pooling, a ``feature_dim`` ReLU layer) trained by this
project with cross-entropy over the SEEN classes, on their sketches and photos together; unseen classes are
never shown to it (checked, see :func:`train_feature_net`). Its penultimate layer gives the features of every
image. Features are cached per split (the key covers the unseen classes, the file list and the settings).
When torchvision and its ImageNet weights are available, ``backbone: vgg16`` (512-d, conv5 average-pooled) or
``resnet50`` (2048-d) can be chosen instead; they are not trained, and ImageNet covers some Sketchy classes
(the reason for the 21-class split of Yelamarthi et al.).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from torch import nn

from iiae.errors import ConfigError, DataError
from iiae.zsbir.config import FeatureNetConfig
from iiae.zsbir.features import FeatureSet, ImageList

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def edge_map(image: Image.Image) -> Image.Image:
    """A sketch-like rendering of a photo: dark edges (gradient magnitude) on white, in RGB."""
    grey = image.convert("L").filter(ImageFilter.GaussianBlur(1))
    edges = ImageOps.autocontrast(grey.filter(ImageFilter.FIND_EDGES), cutoff=1)
    return ImageOps.invert(edges).convert("RGB")


def load_images(paths: list[Path], size: int, edges: bool = False) -> np.ndarray:
    """uint8 [N, 3, size, size] RGB images (greyscale sketches repeated over the channels; photos as edge maps
    when ``edges``)."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if edges:
                    image = edge_map(image)
                resized = image.resize((size, size), Image.BILINEAR)
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"image {path} cannot be read: {error}") from None
        out[index] = np.asarray(resized).transpose(2, 0, 1)
    return out


def _to_float(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0)


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


def train_feature_net(pixels: np.ndarray, classes: np.ndarray, unseen: list[str], config: FeatureNetConfig
                      ) -> tuple[SmallCNN, list[str]]:
    """Train the small CNN on ``pixels`` of seen classes; returns it and the classes it was trained on.

    Raises AssertionError if any row belongs to an unseen class: the zero-shot protocol forbids it.
    """
    trained_on = sorted(set(classes.tolist()))
    leaked = sorted(set(trained_on) & set(unseen))
    if leaked:
        raise AssertionError(f"feature network would see unseen classes {leaked[:5]}: zero-shot protocol broken")
    index = {name: i for i, name in enumerate(trained_on)}
    labels = torch.as_tensor([index[name] for name in classes.tolist()])
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net = SmallCNN(config, len(trained_on))
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            if len(rows) < 2:
                continue
            images = _to_float(pixels[rows.numpy()])
            flip = torch.rand(len(rows), generator=generator) < 0.5  # horizontal flips
            images[flip] = images[flip].flip(-1)
            loss = nn.functional.cross_entropy(net(images), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net.eval(), trained_on


@torch.no_grad()
def extract(net: nn.Module, pixels: np.ndarray, batch_size: int = 256, normalise=None) -> np.ndarray:
    """Features of every image (float32 [N, D])."""
    net.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        images = _to_float(pixels[start : start + batch_size])
        if normalise is not None:
            images = normalise(images)
        out.append(net.features(images).float().numpy() if hasattr(net, "features") else net(images).numpy())
    return np.concatenate(out)


class _TorchvisionFeatures(nn.Module):
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


def _imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    images = (images + 1.0) / 2.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (images - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("IIAE_CACHE", Path.home() / ".cache" / "iiae")) / "zs_features"


def cache_key(root: Path, photos: ImageList, sketches: ImageList, unseen: list[str], config: FeatureNetConfig) -> str:
    settings = {k: v for k, v in asdict(config).items() if k != "cache_dir"}
    files = hashlib.sha256("\n".join(str(p.relative_to(root)) for p in photos.paths + sketches.paths).encode())
    payload = json.dumps({"settings": settings, "unseen": sorted(unseen), "files": files.hexdigest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def image_features(root: str | Path, photos: ImageList, sketches: ImageList, unseen: list[str],
                   config: FeatureNetConfig, log=print) -> tuple[FeatureSet, FeatureSet, dict]:
    """(sketch features, photo features, info) of every image; cached per split under ``config.cache_dir``."""
    root = Path(root)
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    key = cache_key(root, photos, sketches, unseen, config)
    path = cache / f"features-{key}.npz"
    rel = lambda items: np.asarray([str(p.relative_to(root)) for p in items.paths], dtype=str)  # noqa: E731
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            info = json.loads(str(data["info"]))
            sketch_features, photo_features = data["sketch"], data["photo"]
        info["cached"] = str(path)
        log(f"features: cached {path}")
    else:
        size = 224 if config.backbone != "small_cnn" else config.image_size
        log(f"features: loading {len(photos.paths)} photos and {len(sketches.paths)} sketches at {size}x{size}")
        photo_pixels = load_images(photos.paths, size, edges=config.photo_input == "edges")
        sketch_pixels = load_images(sketches.paths, size)
        if config.backbone == "small_cnn":
            seen_photo = ~np.isin(photos.classes, unseen)
            seen_sketch = ~np.isin(sketches.classes, unseen)
            pixels = np.concatenate([photo_pixels[seen_photo], sketch_pixels[seen_sketch]])
            classes = np.concatenate([photos.classes[seen_photo], sketches.classes[seen_sketch]])
            log(f"features: training the small CNN on {len(classes)} seen-class images, {config.epochs} epochs")
            net, trained_on = train_feature_net(pixels, classes, unseen, config)
            normalise = None
        else:
            net, trained_on, normalise = _TorchvisionFeatures(config.backbone), [], _imagenet_normalise
        sketch_features = extract(net, sketch_pixels, normalise=normalise)
        photo_features = extract(net, photo_pixels, normalise=normalise)
        info = {"backbone": config.backbone, "trained_on_classes": trained_on, "unseen": sorted(unseen),
                "pretrained": "ImageNet (torchvision)" if config.backbone != "small_cnn" else "none (seen classes)"}
        cache.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp.npz")
        np.savez(temporary, sketch=sketch_features, photo=photo_features, info=np.asarray(json.dumps(info)))
        temporary.replace(path)
        info["cached"] = f"written {path}"
    sketch = FeatureSet(sketch_features.astype(np.float32), sketches.classes, rel(sketches))
    photo = FeatureSet(photo_features.astype(np.float32), photos.classes, rel(photos))
    return sketch, photo, info
