"""ZS-SBIR data: the official feature layout, the plain one, class splits, and one-line errors through the CLI."""

from importlib import resources

import numpy as np
import pytest

from iiae.cli.main import main
from iiae.errors import DataError
from iiae.zsbir.features import (
    load_official_features,
    load_plain_features,
    read_class_list,
    resolve_unseen,
    split_official,
    split_zero_shot,
)


def write_official(root, dim=6, seed=0):
    """train: classes a, b, c; test: classes d, e (paths like the official ones: .../<class>/<file>)."""
    rng = np.random.default_rng(seed)
    layout = {"train": ["a", "b", "c"], "test": ["d", "e"]}
    for part, classes in layout.items():
        for domain, suffix in (("sketch", "-1.png"), ("image", ".jpg")):
            paths = [f"/data/Sketchy/{domain}/{c}/n{i:03d}{suffix}" for c in classes for i in range(3)]
            np.save(root / f"{part}_{domain}_paths.npy", np.array(paths))
            np.save(root / f"{part}_{domain}_features.npy", rng.normal(size=(len(paths), dim)).astype(np.float32))
    return root


def test_official_layout_classes_from_parent_folders(tmp_path):
    sets = load_official_features(write_official(tmp_path))
    assert sets["train_sketch"].features.shape == (9, 6) and sets["train_sketch"].features.dtype == np.float32
    assert sets["test_image"].class_names() == ["d", "e"]
    assert sets["train_image"].classes[:4].tolist() == ["a", "a", "a", "b"]
    split = split_official(sets, None, "official")  # unseen: the classes only in test
    assert split.unseen == ["d", "e"] and split.seen == ["a", "b", "c"]
    assert len(split.test_sketch) == 6 and split.feature_dim == 6


def test_plain_layout_npz_and_npy_with_integer_labels(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "sketch.npz", features=rng.normal(size=(8, 4)), labels=np.array([0, 1, 2, 3] * 2))
    np.save(tmp_path / "image_features.npy", rng.normal(size=(12, 4)))
    np.save(tmp_path / "image_labels.npy", np.array([0, 1, 2, 3] * 3))
    sets = load_plain_features(tmp_path)
    (tmp_path / "unseen.txt").write_text("# unseen\n3\n")
    unseen = resolve_unseen(str(tmp_path / "unseen.txt"), ["0", "1", "2", "3"])
    split = split_zero_shot(sets["sketch"], sets["image"], unseen, "plain")
    assert split.seen == ["0", "1", "2"] and split.unseen == ["3"]
    assert len(split.train_sketch) == 6 and len(split.test_image) == 3


def test_bundled_splits_name_sketchy_classes():
    folder = resources.files("iiae.zsbir") / "splits"
    with resources.as_file(folder / "sketchy_classes_125.txt") as path:
        classes = read_class_list(path)
    assert len(classes) == 125
    assert len(resolve_unseen("sem_pcyc_25", classes)) == 25
    yelamarthi = resolve_unseen("yelamarthi_21", classes)
    assert len(yelamarthi) == 21 and "wheelchair" in yelamarthi
    seeded = resolve_unseen("seeded", classes, count=25, seed=3)
    assert len(seeded) == 25 and seeded == resolve_unseen("seeded", classes, count=25, seed=3)


def test_errors_name_the_problem(tmp_path):
    root = write_official(tmp_path)
    np.save(root / "train_sketch_features.npy", np.zeros((8, 6)))  # 9 paths
    with pytest.raises(DataError, match="8 feature rows but 9 labels/paths"):
        load_official_features(root)
    write_official(root)
    bad = np.zeros((6, 6))
    bad[4, 2] = np.nan
    np.save(root / "test_image_features.npy", bad)
    with pytest.raises(DataError, match="NaN or inf \\(first: row 4\\)"):
        load_official_features(root)
    (tmp_path / "unseen.txt").write_text("a\nunicorn\n")
    with pytest.raises(DataError, match="names class 'unicorn', which is not in the data"):
        resolve_unseen(str(tmp_path / "unseen.txt"), ["a", "b", "c"])


def run_cli(args, capsys):
    status = main(["zs-sbir", "train", "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    return status, err


def test_cli_exits_2_with_one_line_for_bad_data(tmp_path, capsys):
    features = tmp_path / "features"
    features.mkdir()
    write_official(features)
    np.save(features / "test_sketch_features.npy", np.zeros((5, 6)))
    status, err = run_cli(["--data-source", "official", "--data-root", str(features), "--unseen", "sem_pcyc_25",
                           "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "5 feature rows but 6 labels/paths" in err

    write_official(features)
    (tmp_path / "unseen.txt").write_text("d\ndragon\n")
    status, err = run_cli(["--data-source", "official", "--data-root", str(features), "--unseen",
                           str(tmp_path / "unseen.txt"), "--out", str(tmp_path / "run")], capsys)
    assert status == 2 and len(err.splitlines()) == 1 and "'dragon'" in err
    assert not (tmp_path / "run").exists()  # nothing written on a data error

    np.save(features / "train_image_features.npy", np.full((9, 6), np.nan))
    status, err = run_cli(["--data-source", "official", "--data-root", str(features), "--out", str(tmp_path / "r")],
                          capsys)
    assert status == 2 and "NaN" in err and err.startswith("iiae: error:")

    status, err = run_cli(["--data-source", "plain", "--data-root", str(tmp_path / "missing")], capsys)
    assert status == 2 and "does not exist" in err
    status, err = run_cli(["--set", "loss.reconstruction=l2", "--data-root", str(tmp_path)], capsys)
    assert status == 2 and "loss.reconstruction" in err
    status, err = run_cli(["--out", str(tmp_path / "r")], capsys)
    assert status == 2 and "data.root is not set" in err
    assert main(["zs-sbir", "evaluate", str(tmp_path)]) == 2
    assert "not a zs-sbir run folder" in capsys.readouterr().err


def test_a_split_must_leave_two_seen_classes(tmp_path):
    """A class-level batch holds one pair per seen class and batch norm needs two: an --unseen list leaving one
    class is refused with the split (it failed inside the first training step, status 1)."""
    from iiae.errors import DataError
    from iiae.zsbir.features import resolve_unseen

    classes = ["apple", "bat", "cat", "door"]
    (tmp_path / "unseen.txt").write_text("\ufeffapple\nbat\ncat\n")  # a byte-order mark, as Notepad writes
    with pytest.raises(DataError, match="makes 3 of 4 classes unseen; one class is left"):
        resolve_unseen(str(tmp_path / "unseen.txt"), classes)
    (tmp_path / "unseen.txt").write_text("\ufeffapple\nbat\n")
    assert resolve_unseen(str(tmp_path / "unseen.txt"), classes) == ["apple", "bat"]
