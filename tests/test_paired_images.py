"""Paired image folders (AB and two-folder): reading, training through the CLI, and every bad input named."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from iiae.cli.main import main
from iiae.data.paired_images import ImageFileError, scan_split, sorted_images
from iiae.errors import DataError
from iiae.runs.metrics import ImageRunMetrics, keys_of

TINY = ["--steps", "2", "--batch-size", "4", "--no-progress", "--set", "model.image_size=16",
        "--set", "train.log_every=1"]  # fmt: skip


def _pixels(seed: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def make_ab(root, counts=(("train", 10), ("val", 4), ("test", 6)), side=16, suffix=".png"):
    """AB files: a random X half and a Y half that is X inverted, so each pair is recognisable."""
    for split, count in counts:
        (root / split).mkdir(parents=True)
        for index in range(1, count + 1):
            x = _pixels(index + 100 * len(split), side, side)
            Image.fromarray(np.concatenate([x, 255 - x], axis=1)).save(root / split / f"{index}{suffix}")
    return root


def make_two_folders(root, counts=(("train", 10), ("test", 6)), side=16):
    for split, count in counts:
        for name in ("X", "Y"):
            (root / split / name).mkdir(parents=True)
        for index in range(count):
            x = _pixels(index, side, side)
            Image.fromarray(x).save(root / split / "X" / f"img{index}.png")
            Image.fromarray(255 - x).save(root / split / "Y" / f"img{index}.bmp")
    return root


def test_ab_split_is_read_lazily_with_halves_in_minus_one_one(tmp_path):
    make_ab(tmp_path, counts=(("train", 3),))
    dataset = scan_split(tmp_path, "train", "ab", size=16)
    assert len(dataset) == 3 and len(dataset.x) == 3
    x, y = dataset[0]
    expected = torch.from_numpy(_pixels(1 + 500, 16, 16)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(x, expected) and torch.allclose(y, -expected, atol=1e-6)  # 255 - p maps to -(p / 127.5 - 1)
    assert dataset.x[0:2].shape == (2, 3, 16, 16) and torch.equal(dataset.y[0:1][0], y)
    assert dataset.x.shape == (3, 3, 16, 16) and dataset.y.ndim == 4  # reads like a tensor
    swapped = scan_split(tmp_path, "train", "ab", size=16, swap=True)
    assert torch.equal(swapped[0][0], y) and torch.equal(swapped[0][1], x)
    small = scan_split(tmp_path, "train", "ab", size=8)
    assert small[0][0].shape == (3, 8, 8)  # box-filter downscaling: the mean of each 2x2 block
    assert torch.allclose(small[0][0], torch.nn.functional.avg_pool2d(x[None], 2)[0], atol=1 / 127.5)


def test_numeric_names_sort_by_number(tmp_path):
    for name in ("10.png", "2.png", "1.png"):
        Image.fromarray(_pixels(0, 4, 8)).save(tmp_path / name)
    assert [p.name for p in sorted_images(tmp_path)] == ["1.png", "2.png", "10.png"]


def test_two_folders_pair_by_stem_whatever_the_extension(tmp_path):
    make_two_folders(tmp_path, counts=(("train", 3),))
    dataset = scan_split(tmp_path, "train", "folders", size=16)
    assert len(dataset) == 3 and [p.x_path.stem for p in dataset.pairs] == ["img0", "img1", "img2"]
    x, y = dataset[1]
    assert torch.allclose(x, -y, atol=1e-6)  # Y is a BMP of 255 - X, X a PNG
    swapped = scan_split(tmp_path, "train", "folders", size=16, swap=True)
    assert torch.equal(swapped[1][0], y) and torch.equal(swapped.x[1], y)  # Y/ is domain X now


def test_dataloader_workers_read_the_images(tmp_path):
    make_ab(tmp_path, counts=(("train", 4),))
    dataset = scan_split(tmp_path, "train", "ab", size=16)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=1))
    assert torch.equal(batches[1][0][1], dataset[3][0])


@pytest.mark.parametrize("layout", ["ab", "folders"])
def test_train_a_few_steps_through_the_cli(tmp_path, layout, capsys):
    root = make_ab(tmp_path / "data") if layout == "ab" else make_two_folders(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--config", "facades_64", "--data-root", str(root), "--out", str(out), *TINY,
            "--set", f"data.layout={layout}", "--set", f"data.num_workers={1 if layout == 'ab' else 0}"]  # fmt: skip
    if layout == "folders":
        argv += ["--set", "data.validation_split=null", "--swap"]  # no val/: hold out of train/; Y/ is domain X
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) <= keys_of(ImageRunMetrics), set(metrics) - keys_of(ImageRunMetrics)  # the declared schema
    assert metrics["steps"] == 2 and metrics["test_pairs"] == 6
    assert (out / "translation.png").is_file() and (out / "model" / "model.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert "paper (CdDN) top-1 %" in report and "84.9" in report and "44.3" in report  # the paper's table
    assert main(["evaluate", str(out), "--json", str(tmp_path / "all.json")]) == 0  # the run config's images
    assert "shared_x_to_y" in capsys.readouterr().out
    _evaluate_test_pairs_alone(tmp_path, root, out, layout, capsys)


def _evaluate_test_pairs_alone(tmp_path, root, run, layout, capsys):
    """A folder of test pairs alone (test/ only, or the pairs directly inside) evaluates as the whole data set
    does; training on it says the train split is missing."""
    only_test, direct = tmp_path / "only_test", tmp_path / "direct"
    shutil.copytree(root / "test", only_test / "test")
    shutil.copytree(root / "test", direct)
    expected = json.loads((tmp_path / "all.json").read_text())["retrieval"]
    for folder in (only_test, direct):
        result = tmp_path / f"{folder.name}.json"
        assert main(["evaluate", str(run), "--data-root", str(folder), "--json", str(result)]) == 0, folder
        metrics = json.loads(result.read_text())
        assert metrics["retrieval"] == expected and metrics["evaluated"]["test_pairs"] == 6
        assert str(folder) in metrics["evaluated"]["data_source"]  # names the folder the pairs came from
    argv = ["train", "--config", "facades_64", "--data-root", str(only_test), "--out", str(tmp_path / "no"), *TINY,
            "--set", f"data.layout={layout}"]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "training needs the split folder" in error and str(only_test / "train") in error and "holds: test" in error
    assert not (tmp_path / "no").exists()


# -------------------------------------------------------------------------------------------- bad input
def _expect_cli_error(capsys, root, *fragments, extra=()):
    argv = ["train", "--config", "facades_64", "--data-root", str(root), "--out", str(root.parent / "run"), *TINY,
            *extra]  # fmt: skip
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("iiae: error:"), error
    for fragment in fragments:
        assert fragment in error[0], error[0]
    assert not (root.parent / "run").exists()


def test_undecodable_image_is_named(tmp_path, capsys):
    root = make_ab(tmp_path / "data")
    (root / "train" / "3.png").write_bytes(b"not an image at all")
    _expect_cli_error(capsys, root, "3.png", "cannot be decoded")


def test_truncated_image_in_a_worker_is_one_named_line(tmp_path, capsys):
    root = make_ab(tmp_path / "data", suffix=".jpg")
    target = root / "train" / "2.jpg"
    target.write_bytes(target.read_bytes()[:200])  # the header reads, the pixels do not
    _expect_cli_error(capsys, root, "2.jpg", extra=["--set", "data.num_workers=1"])


def test_odd_width_and_wrong_aspect_ab_images(tmp_path, capsys):
    root = make_ab(tmp_path / "data")
    Image.fromarray(_pixels(0, 16, 33)).save(root / "train" / "4.png")
    _expect_cli_error(capsys, root, "4.png", "odd width 33")
    Image.fromarray(_pixels(0, 16, 48)).save(root / "train" / "4.png")
    _expect_cli_error(capsys, root, "4.png", "48x16", "not square")


def test_bad_files_can_be_skipped_and_counted(tmp_path, caplog):
    root = make_ab(tmp_path, counts=(("train", 5),))
    (root / "train" / "3.png").write_bytes(b"garbage")
    Image.fromarray(_pixels(0, 16, 33)).save(root / "train" / "4.png")
    with caplog.at_level(logging.WARNING, logger="iiae.data"):
        dataset = scan_split(root, "train", "ab", size=16, skip_bad=True)
    assert len(dataset) == 3
    assert "skipped 2 of 5 files" in caplog.text and "3.png" in caplog.text


def test_grayscale_and_rgba_are_converted_with_one_notice(tmp_path, caplog):
    root = make_ab(tmp_path, counts=(("train", 2),))
    Image.fromarray(_pixels(0, 16, 32, channels=1)).save(root / "train" / "3.png")
    Image.fromarray(_pixels(1, 16, 32, channels=4)).save(root / "train" / "4.png")
    Image.fromarray(_pixels(2, 16, 32, channels=1)).save(root / "train" / "5.png")
    with caplog.at_level(logging.INFO, logger="iiae.data"):
        dataset = scan_split(root, "train", "ab", size=16)
    notices = [r for r in caplog.records if "converted" in r.getMessage()]
    assert len(notices) == 1 and "2 L, 1 RGBA" in notices[0].getMessage()
    x, y = dataset[2]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1])  # grey repeated over RGB
    assert dataset[3][0].shape == (3, 16, 16)
    grey = scan_split(root, "train", "ab", size=16, x_channels=1, y_channels=1)
    assert grey[0][0].shape == (1, 16, 16)


def test_empty_and_missing_split_folders(tmp_path, capsys):
    root = make_ab(tmp_path / "data")
    for path in (root / "test").iterdir():
        path.unlink()
    _expect_cli_error(capsys, root, str(root / "test"), "holds no images")
    (root / "test").rmdir()
    _expect_cli_error(capsys, root, str(root / "test"), "does not exist", "train")


def test_mismatched_two_folder_names_are_reported(tmp_path, capsys, caplog):
    root = make_two_folders(tmp_path / "data")
    (root / "train" / "Y" / "img3.bmp").rename(root / "train" / "Y" / "other.bmp")
    extra = ["--set", "data.layout=folders", "--set", "data.validation_split=null"]
    _expect_cli_error(capsys, root, "mismatched names", "img3.png", "other.bmp", extra=extra)
    with caplog.at_level(logging.WARNING, logger="iiae.data"):
        dataset = scan_split(root, "train", "folders", size=16, skip_bad=True)
    assert len(dataset) == 9 and "img3.png" in caplog.text


def test_worker_error_keeps_one_line():
    wrapped = "Caught ImageFileError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n" \
              '  File "x.py", line 1\niiae.data.paired_images.ImageFileError: image file a.jpg cannot be decoded (x)\n'
    assert str(ImageFileError(wrapped)) == "image file a.jpg cannot be decoded (x)"
    assert isinstance(ImageFileError("m"), DataError)


def test_validation_pairs_are_a_folder_or_held_out_of_train(tmp_path):
    from iiae.core.config import config_from_dict
    from iiae.data.datasets import build_splits

    root = make_ab(tmp_path)
    base = {"model": {"image_size": 16, "encoder_widths": [8], "exclusive_widths": [8], "decoder_widths": [8]},
            "data": {"dataset": "paired_images", "root": str(root), "validation_split": "val"}}  # fmt: skip
    splits = build_splits(config_from_dict(base))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (10, 4, 6)
    base["data"].update(validation_split=None, validation_fraction=0.3)
    splits = build_splits(config_from_dict(base))  # Maps: val/ is the test set, validation comes out of train/
    train = {p.x_path.name for p in splits.train.pairs}
    validation = {p.x_path.name for p in splits.validation.pairs}
    assert len(train) == 7 and len(validation) == 3 and not train & validation
    assert train | validation == {f"{i}.png" for i in range(1, 11)}
