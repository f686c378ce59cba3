"""Zero-shot sketch-based image retrieval data: feature sets, unseen-class splits, the Sketchy folder layout.

Three sources, all checked row by row before anything trains:

* the official precomputed layout: ``{train,test}_{sketch,image}_{features,paths}.npy`` in one folder, the class
  of each row being the parent folder of its path (``.../airplane/n02691156_10151-1.png`` is ``airplane``);
* a plain layout of our own: ``sketch.npz`` and ``image.npz`` (arrays ``features`` and ``labels``), or
  ``{sketch,image}_features.npy`` with ``{sketch,image}_labels.npy``; labels are class names, or integers whose
  names are their decimal strings;
* raw images in the Sketchy layout ``photo/<class>/<id>.jpg`` and ``sketch/<class>/<id>-<k>.png`` (turned into
  vectors by :mod:`iiae.zsbir.feature_net`).

Classes are split into seen (training) and unseen (retrieval test) by a list of unseen classes: a bundled split
(``sem_pcyc_25``, ``yelamarthi_21``), a text file with one class per line, or a seeded random draw.
X = sketch, Y = photo (the paper's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from iiae.cache import read_npy, read_npz
from iiae.errors import DataError
from iiae.readers import read_text

BUNDLED_SPLITS = {"sem_pcyc_25": "sketchy_sem_pcyc_25.txt", "yelamarthi_21": "sketchy_yelamarthi_21.txt"}
OFFICIAL_SETS = ("train_sketch", "train_image", "test_sketch", "test_image")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
SKETCH_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class FeatureSet:
    """Feature vectors of one domain with their class names (and source paths when known)."""

    features: np.ndarray  # float32 [N, D]
    classes: np.ndarray  # str [N]: the class name of each row
    paths: np.ndarray | None = None  # str [N]: where each row came from

    def __len__(self) -> int:
        return len(self.features)

    def class_names(self) -> list[str]:
        return sorted(set(self.classes.tolist()))

    def restrict(self, names: set[str] | list[str]) -> FeatureSet:
        """The rows whose class is in ``names``."""
        keep = np.isin(self.classes, np.asarray(sorted(names), dtype=str))
        return FeatureSet(self.features[keep], self.classes[keep], None if self.paths is None else self.paths[keep])


@dataclass
class ZeroShotSplit:
    """Training sets (seen classes only) and test sets (unseen classes only) of both domains."""

    train_sketch: FeatureSet
    train_image: FeatureSet
    test_sketch: FeatureSet
    test_image: FeatureSet
    seen: list[str]
    unseen: list[str]
    source: str

    @property
    def feature_dim(self) -> int:
        return int(self.train_sketch.features.shape[1])


# ----------------------------------------------------------------------------------------------- checks
def checked_features(features: np.ndarray, count: int | None, where: str) -> np.ndarray:
    """A float32 [N, D] copy of ``features``; DataError on a wrong shape, a count mismatch or NaN/inf."""
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
        raise DataError(f"{where}: features must be a 2-D numeric array [count, dim], got shape {features.shape}")
    if count is not None and len(features) != count:
        raise DataError(f"{where}: {len(features)} feature rows but {count} labels/paths; the counts must match")
    features = features.astype(np.float32)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} feature rows hold NaN or inf (first: row {int(np.argmax(bad))})")
    return features


def _load_npy(path: Path) -> np.ndarray:
    """The array of a user's .npy file, its header checked against the file's size before anything is allocated
    (:func:`iiae.cache.read_npy`); DataError naming the file for a missing, damaged or pickled (object) array."""
    if not path.exists():
        raise DataError(f"feature file {path} is missing")
    return read_npy(path, None, "feature file", DataError)


def class_of_path(path: str) -> str:
    """The class of a file in ``.../<class>/<file>``: its parent folder."""
    parts = str(path).replace("\\", "/").rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2]:
        raise DataError(f"path {path!r} has no parent folder to name its class (expected .../<class>/<file>)")
    return parts[-2]


# ------------------------------------------------------------------------------------------ feature layouts
def load_official_features(root: str | Path) -> dict[str, FeatureSet]:
    """The four sets of the official layout: ``train_sketch``, ``train_image``, ``test_sketch``, ``test_image``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"feature folder {root} does not exist")
    sets = {}
    for name in OFFICIAL_SETS:
        paths = _load_npy(root / f"{name}_paths.npy")
        if paths.ndim != 1 or paths.dtype.kind not in "US":
            raise DataError(f"{root / f'{name}_paths.npy'}: expected a 1-D array of path strings")
        paths = paths.astype(str)
        features_path = root / f"{name}_features.npy"
        features = checked_features(_load_npy(features_path), len(paths), str(features_path))
        classes = np.asarray([class_of_path(p) for p in paths], dtype=str)
        sets[name] = FeatureSet(features, classes, paths)
    dims = {s.features.shape[1] for s in sets.values()}
    if len(dims) != 1:
        raise DataError(f"{root}: the four feature files have different dimensions {sorted(dims)}")
    return sets


def _labels_as_names(labels: np.ndarray, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array, got shape {labels.shape}")
    if labels.dtype.kind in "US":
        return labels.astype(str)
    if labels.dtype.kind in "iu":
        return np.asarray([str(int(v)) for v in labels], dtype=str)
    raise DataError(f"{where}: labels must be class names (str) or integers, got dtype {labels.dtype}")


def load_plain_features(root: str | Path) -> dict[str, FeatureSet]:
    """``sketch`` and ``image`` feature sets of the plain layout (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"feature folder {root} does not exist")
    sets = {}
    for domain in ("sketch", "image"):
        archive = root / f"{domain}.npz"
        if archive.exists():
            data = read_npz(archive, {"features": None, "labels": None}, "feature file", DataError)
            features, labels, where = data["features"], data["labels"], str(archive)
        else:
            features = _load_npy(root / f"{domain}_features.npy")
            labels = _load_npy(root / f"{domain}_labels.npy")
            where = str(root / f"{domain}_features.npy")
        names = _labels_as_names(labels, where)
        sets[domain] = FeatureSet(checked_features(features, len(names), where), names)
    if sets["sketch"].features.shape[1] != sets["image"].features.shape[1]:
        raise DataError(f"{root}: sketch and image features have different dimensions")
    return sets


# ------------------------------------------------------------------------------------------- class splits
def read_class_list(path: str | Path) -> list[str]:
    """Class names, one per line; blank lines and ``#`` comments are ignored. DataError naming the file when it is
    missing, not a regular file, over 1 MiB or not UTF-8 (:func:`iiae.readers.read_text`)."""
    path = Path(path)
    names = [line.split("#", 1)[0].strip() for line in read_text(path, 1 << 20, "class list").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise DataError(f"class list {path} names no class")
    if len(set(names)) != len(names):
        raise DataError(f"class list {path} names a class twice")
    return names


def bundled_split_path(name: str):
    return resources.files("iiae.zsbir") / "splits" / BUNDLED_SPLITS[name]


def resolve_unseen(spec: str, classes: list[str], count: int = 25, seed: int = 0) -> list[str]:
    """Unseen classes from a bundled split name, a class-list file, or ``seeded`` (``count`` drawn with ``seed``).

    Every named class must exist in the data; otherwise DataError names the first one that does not.
    """
    classes = sorted(classes)
    if spec == "seeded":
        if not 0 < count < len(classes):
            raise DataError(f"cannot draw {count} unseen classes from {len(classes)}; need 0 < count < classes")
        order = np.random.default_rng(seed).permutation(len(classes))
        return sorted(classes[i] for i in order[:count])
    if spec in BUNDLED_SPLITS:
        with resources.as_file(bundled_split_path(spec)) as path:
            names, where = read_class_list(path), f"bundled split {spec}"
    else:
        names, where = read_class_list(spec), f"unseen-class file {spec}"
    known = set(classes)
    for name in names:
        if name not in known:
            shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
            raise DataError(
                f"{where} names class {name!r}, which is not in the data ({len(classes)} classes: {shown})"
            )
    if len(names) >= len(classes) - 1:  # a batch holds one pair per seen class; batch norm needs two
        left = "no class is" if len(names) == len(classes) else "one class is"
        raise DataError(f"{where} makes {len(names)} of {len(classes)} classes unseen; {left} left to train on "
                        "(a class-level batch needs at least 2 seen classes)")  # fmt: skip
    return sorted(names)


def split_zero_shot(sketch: FeatureSet, image: FeatureSet, unseen: list[str], source: str) -> ZeroShotSplit:
    """Seen-class rows for training, unseen-class rows for the retrieval test."""
    classes = sorted(set(sketch.class_names()) | set(image.class_names()))
    seen = [name for name in classes if name not in set(unseen)]
    return _finish(sketch.restrict(seen), image.restrict(seen), sketch.restrict(unseen), image.restrict(unseen),
                   seen, unseen, source)


def split_official(sets: dict[str, FeatureSet], unseen: list[str] | None, source: str) -> ZeroShotSplit:
    """Official sets: train rows of seen classes, test rows of unseen ones (unseen = test-only classes if None)."""
    train_classes = set(sets["train_sketch"].class_names()) | set(sets["train_image"].class_names())
    test_classes = set(sets["test_sketch"].class_names()) | set(sets["test_image"].class_names())
    if unseen is None:
        unseen = sorted(test_classes - train_classes)
    seen = sorted((train_classes | test_classes) - set(unseen))
    return _finish(sets["train_sketch"].restrict(seen), sets["train_image"].restrict(seen),
                   sets["test_sketch"].restrict(unseen), sets["test_image"].restrict(unseen), seen, sorted(unseen),
                   source)


def _finish(train_sketch, train_image, test_sketch, test_image, seen, unseen, source) -> ZeroShotSplit:
    for name, rows in (("training sketches", train_sketch), ("training photos", train_image),
                       ("test sketches", test_sketch), ("test photos", test_image)):
        if len(rows) == 0:
            raise DataError(f"{source}: no {name} after the seen/unseen split ({len(unseen)} unseen classes)")
    if len(set(train_sketch.class_names())) < 2:  # a batch holds one pair per seen class; batch norm needs two
        raise DataError(f"{source}: {len(set(train_sketch.class_names()))} seen class after the seen/unseen split; "
                        "a class-level batch needs at least 2")  # fmt: skip
    missing = sorted(set(train_sketch.class_names()) ^ set(train_image.class_names()))
    if missing:
        raise DataError(f"{source}: seen class {missing[0]!r} has sketches or photos but not both; "
                        "class-level pairing needs both")
    return ZeroShotSplit(train_sketch, train_image, test_sketch, test_image,
                         sorted(train_sketch.class_names()), sorted(unseen), source)


# ------------------------------------------------------------------------------------------ Sketchy images
@dataclass
class ImageList:
    """Image files of one domain and their classes."""

    paths: list[Path]
    classes: np.ndarray  # str [N]


def scan_sketchy_folder(root: str | Path) -> tuple[ImageList, ImageList]:
    """(photos, sketches) of a Sketchy-layout folder: ``photo/<class>/<id>.jpg``, ``sketch/<class>/<id>-<k>.png``."""
    root = Path(root)
    lists = []
    for domain, suffixes in (("photo", PHOTO_SUFFIXES), ("sketch", SKETCH_SUFFIXES)):
        folder = root / domain
        if not folder.is_dir():
            raise DataError(f"{root} is not in the Sketchy layout: folder {folder} is missing "
                            "(expected photo/<class>/<id>.jpg and sketch/<class>/<id>-<k>.png)")
        paths = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in suffixes and p.is_file())
        if not paths:
            raise DataError(f"{folder} holds no images in <class>/<file> folders")
        lists.append(ImageList(paths, np.asarray([p.parent.name for p in paths], dtype=str)))
    return lists[0], lists[1]
