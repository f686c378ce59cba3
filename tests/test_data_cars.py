"""The Cars loader on generated car_XXX_mesh.mat files of the documented layout, and its bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from iiae.cli.main import main
from iiae.data.cars import load_cars, read_car
from iiae.errors import DataError

scipy_io = pytest.importorskip("scipy.io")


def write_car(path, number: int, side: int = 8, key: str = "im", shape=None) -> np.ndarray:
    """Renderings whose pixel values encode (car, view, elevation), in the layout [H, W, 3, 24, 4]."""
    images = np.zeros(shape or (side, side, 3, 24, 4), dtype=np.uint8)
    if shape is None:
        for view in range(24):
            for elevation in range(4):
                images[:, :, 0, view, elevation] = number
                images[:, :, 1, view, elevation] = 10 * view
                images[:, :, 2, view, elevation] = 50 * elevation
    scipy_io.savemat(str(path / f"car_{number:03d}_mesh.mat"), {key: images})
    return images


def test_pairs_are_view_zero_and_another_view_at_the_same_elevation(tmp_path):
    for number in (1, 2):
        write_car(tmp_path, number)
    cars = load_cars(tmp_path, [1, 2, 3], size=8, views=[5, 7])
    assert len(cars) == 2 * 4 * 2  # cars x elevations x views (car 3 is not there)
    x, y = cars[3]  # car 1, elevation 1, view 7
    as_uint8 = lambda t: ((t + 1) * 127.5).round()  # noqa: E731
    assert as_uint8(x)[:, 0, 0].tolist() == [1, 0, 50] and as_uint8(y)[:, 0, 0].tolist() == [1, 70, 50]
    assert cars.x[0:4].shape == (4, 3, 8, 8) and cars.y.shape == (16, 3, 8, 8)
    resized = read_car(tmp_path / "car_001_mesh.mat", 4)
    assert resized.shape == (24, 4, 3, 4, 4) and resized.dtype == torch.uint8
    test = load_cars(tmp_path, [1, 2], size=8, views=list(range(1, 24)), one_view_seed=0)
    assert len(test) == 8 and len({(c, e) for c, e, _ in test.index}) == 8  # one Y view per car and elevation


@pytest.mark.parametrize(("damage", "fragment"), [("key", "has no 'im' array"), ("shape", "expected [H, W, 3, 24, 4]"),
                                                  ("garbage", "cannot be read")])  # fmt: skip
def test_bad_mat_files_are_named(tmp_path, damage, fragment):
    if damage == "key":
        write_car(tmp_path, 1, key="images")
    elif damage == "shape":
        write_car(tmp_path, 1, shape=(8, 8, 3, 24))
    else:
        (tmp_path / "car_001_mesh.mat").write_bytes(b"MATLAB? no")
    with pytest.raises(DataError) as error:
        load_cars(tmp_path, [1], size=8, views=[1])
    assert fragment in str(error.value) and "car_001_mesh.mat" in str(error.value)


def test_train_on_cars_through_the_cli(tmp_path, capsys):
    data = tmp_path / "cars"  # the runs go beside the data, never inside it (iiae.outputs)
    data.mkdir()
    for number in (1, 2, 3, 192, 193):
        write_car(data, number, side=16)
    out = tmp_path / "run"
    argv = ["train", "--config", "cars", "--data-root", str(data), "--out", str(out), "--steps", "2",
            "--batch-size", "4", "--no-progress", "--set", "model.image_size=16", "--set", "data.num_workers=0",
            "--set", "data.cars_y_views=[1, 2]", "--set", "data.validation_fraction=0.0"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_pairs"] == 3 * 4 * 2 and metrics["test_pairs"] == 2 * 4
    (data / "car_192_mesh.mat").write_bytes(b"broken")
    assert main([*argv[:6], str(tmp_path / "run2"), *argv[7:]]) == 2
    assert "car_192_mesh.mat" in capsys.readouterr().err
