"""The ZS-SBIR feature stage: backbone choice, decoding in worker processes, the cache key, EfficientNet-Lite0
fine-tuning that never sees an unseen class, and FeatureExtractor embedding new files exactly as training did.

EfficientNet-Lite0 runs here with random weights at 32 px (``fake_weights``), so nothing needs the weight
package; tests/test_efficientnet.py checks the real weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_zs_end_to_end import UNSEEN, make_sketchy

from iiae.errors import CheckpointError, ConfigError, DataError
from iiae.zsbir import efficientnet, feature_net, pretrained_features
from iiae.zsbir.config import FeatureNetConfig, zs_config_from_dict
from iiae.zsbir.feature_extractor import CONFIG_FILE, FeatureExtractor
from iiae.zsbir.features import scan_sketchy_folder
from iiae.zsbir.image_pipeline import Preprocessing, image_batches

SEEN = ["apple", "bat", "car_(sedan)", "eel"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def fake_weights(monkeypatch, tmp_path):
    """EfficientNet-Lite0 'installed' with seeded random weights (the same network on every load)."""

    def load(expected_sha256: str = efficientnet.WEIGHTS_SHA256) -> efficientnet.EfficientNetLite0:
        torch.manual_seed(0)
        return efficientnet.EfficientNetLite0().eval()

    monkeypatch.setattr(efficientnet, "default_weights_path", lambda: tmp_path / "weights.pth")
    monkeypatch.setattr(pretrained_features, "load_pretrained_backbone", load)
    return load


@pytest.fixture
def sketchy(tmp_path):
    """6 classes x 3 photos + 3 sketches at 32 px (door and fan unseen)."""
    root = make_sketchy(tmp_path / "sketchy", size=32)
    return (root, *scan_sketchy_folder(root))


def lite0_config(tmp_path, **values) -> FeatureNetConfig:
    return FeatureNetConfig(backbone="efficientnet_lite0", image_size=32, workers=0, cache_dir=str(tmp_path / "cache"),
                            **values)  # fmt: skip


def test_auto_backbone_image_size_and_photo_input(monkeypatch, fake_weights):
    monkeypatch.setattr(efficientnet, "weights_available", lambda: True)
    choice = feature_net.choose_backbone(FeatureNetConfig())
    assert choice.name == "efficientnet_lite0" and not choice.trained
    assert choice.preprocessing == Preprocessing(224, "bicubic", "rgb", "lite0")
    assert choice.weights_sha256 == efficientnet.WEIGHTS_SHA256
    assert choice.description.startswith(f"EfficientNet-Lite0 (ImageNet, sha256 {efficientnet.WEIGHTS_SHA256[:12]}")
    explicit = feature_net.choose_backbone(FeatureNetConfig(image_size=96, photo_input="edges"))
    assert explicit.preprocessing == Preprocessing(96, "bicubic", "edges", "lite0")  # explicit values are kept

    monkeypatch.setattr(efficientnet, "weights_available", lambda: False)
    choice = feature_net.choose_backbone(FeatureNetConfig())
    assert choice.name == "small_cnn" and choice.trained
    assert choice.preprocessing == Preprocessing(64, "bilinear", "edges", "minus_one_to_one")
    assert "install iiae[pretrained]" in choice.description
    with pytest.raises(ConfigError, match="fine_tune_blocks = 2 needs the EfficientNet-Lite0 weights"):
        feature_net.choose_backbone(FeatureNetConfig(fine_tune_blocks=2))


def test_config_checks_the_new_values():
    for values, message in (({"image_size": -1}, "image_size"), ({"fine_tune_blocks": 17}, "fine_tune_blocks"),
                            ({"backbone": "small_cnn", "fine_tune_blocks": 1}, "needs backbone efficientnet_lite0"),
                            ({"workers": -1}, "workers"), ({"fine_tune_learning_rate": 0}, "fine_tune_learning")):
        with pytest.raises(ConfigError, match=message):
            zs_config_from_dict({"feature_net": values})
    assert zs_config_from_dict({}).feature_net.backbone == "auto"


def test_decoding_in_workers_matches_in_process_and_names_a_bad_file(tmp_path):
    paths = []
    for index in range(9):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((20, 30, 3), index * 25, dtype=np.uint8)).save(path)
        paths.append(path)
    preprocessing = Preprocessing(16, "bicubic", "edges", "lite0")
    in_process = torch.cat(list(image_batches(paths, preprocessing, "sketch", batch_size=4, workers=0)))
    in_workers = torch.cat(list(image_batches(paths, preprocessing, "sketch", batch_size=4, workers=2)))
    assert in_process.shape == (9, 3, 16, 16) and in_process.dtype == torch.uint8
    assert torch.equal(in_process, in_workers) and in_process[3].float().mean() == 75.0
    edges = torch.cat(list(image_batches(paths, preprocessing, "photo", batch_size=4)))
    assert not torch.equal(edges, in_process)  # photos become edge maps, sketches stay as they are

    paths[6].write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"image file {paths[6]} cannot be decoded") as error:
        list(image_batches(paths, preprocessing, "sketch", batch_size=4, workers=2))
    assert len(str(error.value).splitlines()) == 1


def test_fine_tuning_never_sees_unseen_classes_and_the_extractor_reproduces_the_features(
        tmp_path, monkeypatch, fake_weights, sketchy):  # fmt: skip
    root, photos, sketches = sketchy
    trained_classes, activation_paths = [], []
    original_train = pretrained_features.train_tuned_blocks
    original_activations = pretrained_features.frozen_activations

    def spy_train(network, activations, classes, unseen, config, device="cpu"):
        trained_classes.append(sorted(set(classes.tolist())))
        return original_train(network, activations, classes, unseen, config, device)

    def spy_activations(network, groups, *args, **kwargs):
        activation_paths.extend(path for paths, _ in groups for path in paths)
        return original_activations(network, groups, *args, **kwargs)

    monkeypatch.setattr(pretrained_features, "train_tuned_blocks", spy_train)
    monkeypatch.setattr(pretrained_features, "frozen_activations", spy_activations)
    config = lite0_config(tmp_path, fine_tune_blocks=2, fine_tune_epochs=2, fine_tune_batch_size=4,
                          fine_tune_learning_rate=1e-2)
    sketch, photo, info, extractor = feature_net.image_features(root, photos, sketches, UNSEEN, config, log=print)

    assert trained_classes == [SEEN]  # never door or fan
    assert len(activation_paths) == 24 and {path.parent.name for path in activation_paths} == set(SEEN)
    assert sketch.features.shape == (18, 1280) and photo.features.shape == (18, 1280)
    assert info["trained_on_classes"] == SEEN and info["fine_tune_blocks"] == 2
    assert info["weights_sha256"] == efficientnet.WEIGHTS_SHA256 and info["backbone"] == "efficientnet_lite0"
    json.dumps(info)  # reports take it as it is
    pretrained, tuned = fake_weights().state_dict(), extractor.network.state_dict()
    assert not torch.equal(tuned["_blocks.15._project_conv.weight"], pretrained["_blocks.15._project_conv.weight"])
    assert not torch.equal(tuned["_conv_head.weight"], pretrained["_conv_head.weight"])
    for name in ("_blocks.13._project_conv.weight", "_blocks.14._bn1.running_mean", "_conv_stem.weight"):
        assert torch.equal(tuned[name], pretrained[name]), name  # frozen part; tuned batch norm keeps its stats

    # new files are embedded exactly as training embedded them, also after save / load
    assert np.array_equal(extractor.embed(sketches.paths, "sketch"), sketch.features)
    loaded = FeatureExtractor.load(extractor.save(tmp_path / "extractor"))
    assert np.array_equal(loaded.embed(photos.paths, "photo"), photo.features)
    saved = json.loads((tmp_path / "extractor" / CONFIG_FILE).read_text())
    assert saved["tuned_blocks"] == 2 and saved["preprocessing"]["image_size"] == 32

    # the cache returns the same features and extractor without training again
    again = feature_net.image_features(root, photos, sketches, UNSEEN, config, log=print)
    assert len(trained_classes) == 1 and np.array_equal(again[0].features, sketch.features)
    assert np.array_equal(again[3].embed(sketches.paths, "sketch"), sketch.features)


def test_tuning_refuses_unseen_classes(fake_weights):
    activations = torch.zeros(2, 3, 192, 1, 1, dtype=torch.float16)
    with pytest.raises(AssertionError, match="unseen classes \\['fan'\\]"):
        pretrained_features.train_tuned_blocks(fake_weights(), activations, np.array(["apple", "fan", "bat"]),
                                               UNSEEN, FeatureNetConfig(fine_tune_blocks=1))


def test_frozen_features_are_shared_by_splits_trained_ones_are_not(tmp_path, fake_weights, sketchy):
    root, photos, sketches = sketchy
    frozen = lite0_config(tmp_path)
    logs = []
    first = feature_net.image_features(root, photos, sketches, UNSEEN, frozen, log=logs.append)
    assert [line for line in logs if "EfficientNet" in line] == [f"features: {first[2]['description']}"]
    second = feature_net.image_features(root, photos, sketches, ["apple"], frozen, log=logs.append)
    assert logs[-1].startswith("features: cached") and second[2]["unseen"] == ["apple"]
    assert np.array_equal(first[1].features, second[1].features) and not second[3].trained
    model = fake_weights()
    pixels = torch.as_tensor(np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BICUBIC))
                                       for p in photos.paths[:4]])).permute(0, 3, 1, 2)
    with torch.inference_mode():
        direct = model.features(efficientnet.normalise_pixels(pixels)).numpy()
    assert np.allclose(first[1].features[:4], direct, atol=1e-4)  # folded BN + channels_last change nothing

    small = FeatureNetConfig(backbone="small_cnn", image_size=16, widths=[4], feature_dim=8, epochs=1, workers=0,
                             cache_dir=str(tmp_path / "small"))
    for unseen in (UNSEEN, ["apple"]):
        _, _, info, extractor = feature_net.image_features(root, photos, sketches, unseen, small, log=print)
        assert set(info["trained_on_classes"]).isdisjoint(unseen) and extractor.trained
    assert len(list((tmp_path / "small").glob("features-*.npz"))) == 2
    assert len(list((tmp_path / "cache").glob("features-*.npz"))) == 1

    (photos.paths[0]).write_bytes((photos.paths[0]).read_bytes() + b"\0")  # one file changed: new key
    feature_net.image_features(root, photos, sketches, UNSEEN, frozen, log=print)
    assert len(list((tmp_path / "cache").glob("features-*.npz"))) == 2


def test_small_cnn_extractor_round_trip(tmp_path, sketchy):
    root, photos, sketches = sketchy
    config = FeatureNetConfig(backbone="small_cnn", image_size=16, widths=[4, 8], feature_dim=8, epochs=1,
                              workers=0, cache_dir=str(tmp_path / "cache"))
    sketch, photo, _, extractor = feature_net.image_features(root, photos, sketches, UNSEEN, config, log=print)
    loaded = FeatureExtractor.load(extractor.save(tmp_path / "extractor"))
    assert loaded.preprocessing == Preprocessing(16, "bilinear", "edges", "minus_one_to_one")
    assert np.allclose(loaded.embed(photos.paths, "photo"), photo.features, atol=1e-6)
    assert np.allclose(loaded.embed(sketches.paths, "sketch"), sketch.features, atol=1e-6)
    with pytest.raises(CheckpointError, match="feature_extractor.json does not exist"):
        FeatureExtractor.load(tmp_path)


def test_loading_checks_the_pretrained_weight_hash(tmp_path, monkeypatch, fake_weights):
    extractor = FeatureExtractor("efficientnet_lite0", fake_weights(), Preprocessing(32, "bicubic", "rgb", "lite0"),
                                 weights_sha256="0" * 64, architecture={"padding": "symmetric"})
    folder = extractor.save(tmp_path / "extractor")
    assert not (folder / "feature_extractor.safetensors").exists()  # frozen: nothing trained to save
    weights = tmp_path / "weights.pth"
    torch.save(fake_weights().state_dict(), weights)
    monkeypatch.setattr(pretrained_features, "load_pretrained_backbone",
                        lambda sha: efficientnet.load_efficientnet_lite0(weights, expected_sha256=sha))
    with pytest.raises(CheckpointError, match=f"{weights} has sha256 .*expected 0000"):
        FeatureExtractor.load(folder)
