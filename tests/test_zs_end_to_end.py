"""ZS-SBIR end to end on a tiny generated Sketchy-layout image set, through the CLI; the feature stage never
trains on unseen classes."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

import iiae.zsbir.feature_net as feature_net
from iiae.cli.main import main
from iiae.runs.metrics import ZeroShotRunMetrics, keys_of
from iiae.zsbir.backbones import TorchvisionFeatures
from iiae.zsbir.config import FeatureNetConfig

CLASSES = ["apple", "bat", "car_(sedan)", "door", "eel", "fan"]
UNSEEN = ["door", "fan"]


def make_sketchy(root, photos=3, sketches_per_photo=1, size=16):
    """photo/<class>/<id>.jpg and sketch/<class>/<id>-<k>.png; each class its own colour and shape position."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "photo" / name).mkdir(parents=True)
        (root / "sketch" / name).mkdir(parents=True)
        for i in range(photos):
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            box = [c * 2, c * 2, c * 2 + 6, c * 2 + 6]
            photo = Image.new("RGB", (size, size), colour)
            ImageDraw.Draw(photo).ellipse(box, fill=(255 - 40 * c, 40 * c, 120))
            photo.save(root / "photo" / name / f"n{c}_{i}.jpg")
            for k in range(1, sketches_per_photo + 1):
                sketch = Image.new("L", (size, size), 255)
                ImageDraw.Draw(sketch).rectangle([b + k - 1 for b in box], outline=0)
                sketch.save(root / "sketch" / name / f"n{c}_{i}-{k}.png")
    return root


def tiny_config(tmp_path, method="iiae"):
    (tmp_path / "unseen.txt").write_text("\n".join(UNSEEN) + "\n")
    values = {
        "name": "zs_tiny",
        "method": method,
        "data": {"source": "images", "root": str(make_sketchy(tmp_path / "sketchy")),
                 "unseen": str(tmp_path / "unseen.txt")},
        "feature_net": {"backbone": "small_cnn", "image_size": 16, "widths": [4, 8], "feature_dim": 16, "epochs": 1,
                        "batch_size": 8, "cache_dir": str(tmp_path / "cache")},
        "model": {"input_dim": 16, "hidden_dims": [16, 8], "code_dim": 4, "joint_hidden_dim": 8,
                  "decoder_hidden_dim": 8},
        "train": {"steps": 4, "log_every": 1},
        "baseline": {"hidden_dim": 8, "embedding_dim": 4, "steps": 5, "batch_size": 8},
        "evaluation": {"ks": [2, 5], "figure_classes": 2, "figure_queries": 1},
        "paper": {"IIAE": {"map_all": 0.573, "precision_at_100": 0.659}},
    }
    path = tmp_path / "zs_tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_train_and_evaluate_through_the_cli_without_touching_unseen_classes(tmp_path, monkeypatch, capsys):
    seen_by_training = []
    original = feature_net.train_feature_net

    def spy(pixels, classes, unseen, config):
        seen_by_training.extend(sorted(set(classes.tolist())))
        return original(pixels, classes, unseen, config)

    monkeypatch.setattr(feature_net, "train_feature_net", spy)
    config = tiny_config(tmp_path)
    run = tmp_path / "run"
    assert main(["zs-sbir", "train", "--config", str(config), "--out", str(run), "--no-progress"]) == 0
    assert "IIAE (ours)" in capsys.readouterr().out

    assert seen_by_training == ["apple", "bat", "car_(sedan)", "eel"]  # never door or fan
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unseen_classes"] == UNSEEN and metrics["seen_classes"] == 4
    assert metrics["test_sketches"] == 6 and metrics["test_photos"] == 6 and metrics["steps"] == 4
    for name in ("map_all", "precision_at_2", "precision_at_5", "map_at_5"):
        assert 0.0 <= metrics["retrieval"][name] <= 1.0
    assert "small_cnn" in metrics["feature_stage"]["features"]
    report = (run / "report.md").read_text()
    assert "IIAE (paper)" in report and "retrievals.png" in report
    assert (run / "retrievals.png").is_file() and (run / "model" / "model.safetensors").is_file()
    assert (run / "logs" / "metrics.csv").read_text().count("train/nll_x") == 1

    cached = list((tmp_path / "cache").glob("features-*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as data:
        info = json.loads(str(data["info"]))
    assert set(info["trained_on_classes"]).isdisjoint(UNSEEN)

    assert main(["zs-sbir", "evaluate", str(run), "--json", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())["retrieval"]
    assert again["map_all"] == pytest.approx(metrics["retrieval"]["map_all"])
    assert len(seen_by_training) == 4  # evaluation read the cached features; nothing was retrained
    (tmp_path / "other.txt").write_text("apple\nfan\n")  # apple: a class the run trained on
    assert main(["zs-sbir", "evaluate", str(run), "--unseen", str(tmp_path / "other.txt")]) == 2
    assert "data.unseen differs from the run's" in capsys.readouterr().err
    assert main(["zs-sbir", "evaluate", str(run), "--set", "model.code_dim=8"]) == 2  # the run's model decides
    assert "--set model.code_dim: the model comes from the run" in capsys.readouterr().err

    # the baseline and lambda = 0 on the same (cached) features
    assert main(["zs-sbir", "train", "--config", str(config), "--method", "supervised", "--out",
                 str(tmp_path / "base"), "--no-progress"]) == 0
    assert main(["zs-sbir", "train", "--config", str(config), "--set", "loss.lambda_=0", "--out",
                 str(tmp_path / "lam0"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "lam0" / "metrics.json").read_text())["lambda"] == 0.0
    assert len(seen_by_training) == 4


def test_feature_network_refuses_unseen_classes():
    pixels = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(AssertionError, match="unseen classes \\['fan'\\]"):
        feature_net.train_feature_net(pixels, np.array(["apple", "apple", "fan", "bat"]), UNSEEN,
                                      FeatureNetConfig(image_size=8, widths=[2], feature_dim=4, epochs=1))


def test_torchvision_backbone_without_torchvision_is_a_config_error(monkeypatch):
    import sys

    from iiae.errors import ConfigError

    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails as if it were not installed
    with pytest.raises(ConfigError, match="needs torchvision"):
        TorchvisionFeatures("vgg16")


def test_train_on_plain_features_through_the_cli(tmp_path, capsys):
    data = plain_features(tmp_path / "features")  # the run goes beside the data, never inside it (iiae.outputs)
    run = tmp_path / "run"
    status = main(["zs-sbir", "train", "--data-source", "plain", "--data-root", str(data), "--unseen",
                   str(data / "unseen.txt"), "--steps", "3", "--set", "evaluation.ks=[5]", "--out", str(run),
                   "--no-progress"])
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["feature_dim"] == 12 and metrics["seen_classes"] == 3 and metrics["figure"] is None
    assert metrics["feature_extractor"] is None and not (run / "feature_extractor").exists()
    assert metrics["retrieval"]["queries"] == 12 and metrics["retrieval"]["gallery"] == 12
    assert "precomputed" in (run / "report.md").read_text()


def plain_features(folder, dim: int = 12):
    """sketch.npz and image.npz: 5 classes x 6 feature vectors (2 unseen, in unseen.txt), in a new ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, dim))
    labels = np.repeat(np.array(["a", "b", "c", "d", "e"]), 6)
    for domain, shift in (("sketch", 0.0), ("image", 1.0)):
        features = centres[np.repeat(np.arange(5), 6)] + shift + 0.1 * rng.normal(size=(30, dim))
        np.savez(folder / f"{domain}.npz", features=features.astype(np.float32), labels=labels)
    (folder / "unseen.txt").write_text("d\ne\n")
    return folder


def plain_args(folder, steps: int) -> list[str]:
    return ["--data-source", "plain", "--data-root", str(folder), "--unseen", str(folder / "unseen.txt"),
            "--steps", str(steps), "--set", "evaluation.ks=[5]", "--set", "train.checkpoint_every=1",
            "--set", "train.log_every=1", "--threads", "1", "--no-progress"]  # fmt: skip


def test_a_zero_shot_run_is_a_pipeline_run_with_checkpoints_and_resume_refuses_a_finished_one(tmp_path, capsys):
    features = plain_features(tmp_path / "features")
    run = tmp_path / "run"
    assert main(["zs-sbir", "train", *plain_args(features, 4), "--out", str(run)]) == 0
    capsys.readouterr()
    assert {path.name for path in (run / "checkpoints").iterdir()} == {"last.ckpt", "step=00000003.ckpt",
                                                                       "step=00000004.ckpt"}  # fmt: skip
    assert (run / "loss_curves.png").is_file() and not (run / ".iiae.lock").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["selection"]["selected"] == "last" and metrics["parameters"] > 0
    assert set(metrics) <= keys_of(ZeroShotRunMetrics), set(metrics) - keys_of(ZeroShotRunMetrics)  # the schema
    error = _zs_error(capsys, ["zs-sbir", "train", "--resume", str(run)])
    assert "already finished its 4 steps" in error
    error = _zs_error(capsys, ["zs-sbir", "train", "--resume", str(run), "--set", "loss.lambda_=0"])
    assert "loss.lambda_" in error  # a resumed run trains what it started with
    error = _zs_error(capsys, ["zs-sbir", "train", "--resume", str(run), "--method", "supervised"])
    assert "method" in error
    assert main(["zs-sbir", "train", "--resume", str(run), "--steps", "6"]) == 0  # train further
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6


def _zs_error(capsys, argv: list[str]) -> str:
    from tiny_runs import expect_error

    return expect_error(capsys, argv, prefix="iiae: error:")


@pytest.mark.slow
def test_sigkill_then_resume_of_a_zero_shot_run_is_bit_identical(tmp_path):
    import signal
    import time

    import torch
    from tiny_runs import SLOW_CLI, run_cli, start_cli

    from iiae.engine.checkpoint_files import load_checkpoint

    features, steps = plain_features(tmp_path / "features"), 16
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_cli(["zs-sbir", "train", *plain_args(features, steps), "--out", str(reference)]).returncode == 0
    process = start_cli(SLOW_CLI, ["zs-sbir", "train", *plain_args(features, steps), "--out", str(killed)],
                        IIAE_TEST_PAUSE="0.2")  # fmt: skip
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step=00000006.ckpt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended or hung before step 6"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "metrics.json").exists()
    result = run_cli(["zs-sbir", "train", "--resume", str(killed), "--threads", "1", "--no-progress"])
    assert result.returncode == 0, result.stderr[-2000:]
    ours, theirs = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (killed, reference))
    assert ours["global_step"] == theirs["global_step"] == steps
    for name, tensor in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], tensor), name
    assert (killed / "model" / "model.safetensors").read_bytes() == (reference / "model" / "model.safetensors").read_bytes()
    assert (killed / "logs" / "metrics.csv").read_text() == (reference / "logs" / "metrics.csv").read_text()
    ours, theirs = (json.loads((run / "metrics.json").read_text())["retrieval"] for run in (killed, reference))
    assert ours == theirs
