"""``iiae zs-sbir retrieve``: one image of one's own against a folder of images, with a trained zs-sbir run.

    iiae zs-sbir retrieve runs/zs --query my_sketch.png --gallery photos/ --top 10 --out panel.png
    iiae zs-sbir retrieve runs/zs --query photo.jpg --query-domain photo --gallery sketches/

The query and the gallery (every .jpg/.jpeg/.png under the folder, recursively, in sorted order) are embedded
by the run's saved feature extractor (``RUN/feature_extractor/``, kept by runs trained from image files), coded
by the run's model (a sketch by ``encode_shared_x``, a photo by ``encode_shared_y``; the gallery holds the other
domain) and ranked by the cosine similarity of the codes, exactly as the run's evaluation ranks them
(:func:`iiae.zsbir.metrics.top_k_indices`: ties in gallery order).

Gallery features are cached (``gallery-<key>.npz`` in ``--cache-dir`` or the feature stage's cache folder): the
key covers the extractor (its ``feature_extractor.json`` and the sha256 of its weights), the gallery's files
(relative paths, sizes, modification times) and the domain, so an unchanged gallery is embedded once.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iiae.atomic import atomic_write
from iiae.errors import CheckpointError, ConfigError, DataError, OutputError
from iiae.run_files import CONFIG, FEATURE_EXTRACTOR_DIR, MODEL_DIR
from iiae.zsbir.config import ZSConfig, load_zs_config
from iiae.zsbir.feature_extractor import CONFIG_FILE, WEIGHTS_FILE, FeatureExtractor
from iiae.zsbir.feature_net import default_cache_dir, torch_device
from iiae.zsbir.image_pipeline import Domain
from iiae.zsbir.metrics import top_k_indices
from iiae.zsbir.report import retrieval_row
from iiae.zsbir.train import load_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OTHER_DOMAIN: dict[str, Domain] = {"sketch": "photo", "photo": "sketch"}
PLURAL = {"sketch": "sketches", "photo": "photos"}
ENCODE_BATCH = 4096  # feature rows per model call
Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainedRun:
    """What retrieval needs of a run folder: its config, its model and its feature extractor."""

    folder: Path
    config: ZSConfig
    model: nn.Module
    extractor: FeatureExtractor
    extractor_dir: Path


@dataclass(frozen=True)
class Match:
    """One retrieved gallery image: its rank (1 = most similar), cosine similarity of the codes, and path."""

    rank: int
    similarity: float
    path: Path


@dataclass(frozen=True)
class Retrieval:
    """The outcome of :func:`retrieve`: the ranked matches, the gallery cache file and the panel written."""

    query: Path
    domain: Domain  # of the query; the gallery holds the other domain
    matches: list[Match]
    gallery_size: int
    cache: Path
    cached: bool  # the gallery's features were read from ``cache`` (not embedded)
    panel: Path | None


# --------------------------------------------------------------------------------------------- inputs
def check_arguments(top: int, domain: str, out: str | Path | None) -> None:
    """ConfigError / OutputError for arguments wrong before anything is read: top < 1, an unknown domain, an
    ``out`` that is not a .png file name."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if domain not in OTHER_DOMAIN:
        raise ConfigError(f"--query-domain must be sketch or photo, got {domain!r}")
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise OutputError(f"--out {out} is a folder; expected a .png file for the panel")
        if out.suffix.lower() != ".png":
            raise ConfigError(f"--out {out} must be a .png file")


def load_run(folder: str | Path, device: str | torch.device | None = None) -> TrainedRun:
    """The config, model and feature extractor (on ``device``, default :func:`retrieval_device`) of a zs-sbir run
    folder; CheckpointError when ``folder`` is not one, or has no feature extractor (precomputed features)."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / MODEL_DIR).is_dir():
        raise CheckpointError(f"{folder} is not a zs-sbir run folder (expected config.yaml and model/ of "
                              "iiae zs-sbir train)")
    try:
        config = load_zs_config(folder / CONFIG)
    except ConfigError as error:
        raise CheckpointError(f"{folder} is not a zs-sbir run folder: {error}") from None
    extractor_dir = folder / FEATURE_EXTRACTOR_DIR
    if not (extractor_dir / CONFIG_FILE).is_file():
        if config.data.source != "images":
            raise CheckpointError(f"{folder} was trained on precomputed features (data.source = "
                                  f"{config.data.source}) and has no {FEATURE_EXTRACTOR_DIR}/: retrieval of image files "
                                  "needs a run trained from images")
        raise CheckpointError(f"{folder} has no {FEATURE_EXTRACTOR_DIR}/ (made before runs kept their feature extractor): "
                              "retrieval of image files needs a run trained from images by this version")
    model = load_model(folder / MODEL_DIR).eval()
    extractor = FeatureExtractor.load(extractor_dir, device=device or retrieval_device(config),
                                      workers=config.feature_net.workers)
    return TrainedRun(folder, config, model, extractor, extractor_dir)


def retrieval_device(config: ZSConfig) -> str:
    """The run's accelerator when it is a GPU present here, else the CPU."""
    return "cuda" if torch_device(config.train.accelerator) == "cuda" and torch.cuda.is_available() else "cpu"


def check_query(path: str | Path) -> Path:
    """``path`` as a Path; DataError when it does not exist or is not a file (a bad image fails when embedded)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"query image {path} does not exist")
    if not path.is_file():
        raise DataError(f"query image {path} is not a file")
    return path


def gallery_files(folder: str | Path) -> list[Path]:
    """Every .jpg/.jpeg/.png file under ``folder`` (recursively), sorted by relative path; DataError when the
    folder is missing or holds no images."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"gallery folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"gallery {folder} is not a folder (expected a folder of .jpg, .jpeg or .png images)")
    files = [path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not files:
        raise DataError(f"gallery folder {folder} holds no images (.jpg, .jpeg, .png, searched recursively)")
    return sorted(files, key=lambda path: path.relative_to(folder).as_posix())


# ---------------------------------------------------------------------------------------------- cache
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extractor_fingerprint(extractor_dir: Path) -> dict:
    """The saved extractor's identity: its ``feature_extractor.json`` text and the sha256 of its weights file."""
    weights = extractor_dir / WEIGHTS_FILE
    return {"description": (extractor_dir / CONFIG_FILE).read_text(encoding="utf-8"),
            "weights_sha256": _file_sha256(weights) if weights.is_file() else None}


def gallery_listing(root: Path, files: Sequence[Path]) -> list[list]:
    """[relative path, size in bytes, mtime in ns] of each gallery file: changes whenever a file does."""
    listing = []
    for path in files:
        stat = path.stat()
        listing.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
    return listing


def gallery_cache_key(fingerprint: dict, listing: list[list], domain: Domain) -> str:
    """24 hex digits naming the features of these gallery files, embedded as ``domain`` by this extractor."""
    payload = {"extractor": fingerprint, "files": listing, "domain": domain}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _read_cached(path: Path, key: str, count: int) -> np.ndarray | None:
    """The cached features, or None when the file is absent, unreadable or not for this key and gallery size."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            features, stored_key = data["features"], str(data["key"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if stored_key != key or features.ndim != 2 or len(features) != count:
        return None
    return features.astype(np.float32, copy=False)


def _write_cached(path: Path, key: str, features: np.ndarray, log: Log) -> bool:
    """Write the features atomically to ``path``; an unwritable cache is only logged."""
    try:
        atomic_write(path, lambda file: np.savez(file, features=features, key=np.asarray(key)))
    except OSError as error:
        log(f"gallery features: not cached ({path}: {error.strerror or error})")
        return False
    return True


def gallery_features(extractor: FeatureExtractor, extractor_dir: Path, root: Path, files: Sequence[Path],
                     domain: Domain, cache_dir: str | Path | None = None, log: Log = print
                     ) -> tuple[np.ndarray, Path, bool]:
    """(features [N, D] of ``files`` as ``domain``, the cache file, whether it was read from the cache).

    The gallery is embedded only when no cache file matches (see :func:`gallery_cache_key`)."""
    key = gallery_cache_key(extractor_fingerprint(extractor_dir), gallery_listing(root, files), domain)
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"gallery-{key}.npz"
    features = _read_cached(path, key, len(files))
    if features is not None:
        log(f"gallery features: cached {path}")
        return features, path, True
    log(f"gallery features: embedding {len(files)} {PLURAL[domain]}")
    features = extractor.embed(files, domain)
    if _write_cached(path, key, features, log):
        log(f"gallery features: written {path}")
    return features, path, False


# -------------------------------------------------------------------------------------------- ranking
def encode(model: nn.Module, features: np.ndarray, domain: Domain) -> np.ndarray:
    """Retrieval codes of features: ``encode_shared_x`` for sketches, ``encode_shared_y`` for photos."""
    encoder = model.encode_shared_x if domain == "sketch" else model.encode_shared_y
    model.eval()
    with torch.no_grad():
        parts = [encoder(torch.as_tensor(features[start : start + ENCODE_BATCH], dtype=torch.float32))
                 for start in range(0, len(features), ENCODE_BATCH)]
    return torch.cat(parts).cpu().numpy()


def rank_gallery(query_code: np.ndarray, gallery_codes: np.ndarray, top: int) -> list[tuple[int, float]]:
    """(gallery index, cosine similarity) of the ``top`` most similar gallery codes (all when fewer), best first,
    ranked as the run's evaluation ranks (:func:`iiae.zsbir.metrics.top_k_indices`)."""
    order = top_k_indices(query_code[None], gallery_codes, k=min(top, len(gallery_codes)))[0]
    query = torch.nn.functional.normalize(torch.as_tensor(query_code).double()[None], dim=1)
    gallery = torch.nn.functional.normalize(torch.as_tensor(gallery_codes).double(), dim=1)
    similarity = (query @ gallery.T)[0]
    return [(int(index), float(similarity[index])) for index in order]


def save_panel(query: Path, results: Sequence[Path], out: str | Path) -> Path:
    """The query's tile, a gap, then the results' tiles in rank order (:func:`iiae.zsbir.report.retrieval_row`),
    written atomically as PNG to ``out``."""
    out = Path(out)
    row = retrieval_row(query, [(path, None) for path in results])
    try:
        atomic_write(out, lambda file: row.save(file, format="PNG"))
    except OSError as error:
        raise OutputError(f"cannot write the panel {out}: {error.strerror or error}") from None
    return out


def retrieve(run: TrainedRun | str | Path, query: str | Path, gallery: str | Path, top: int = 10,
             domain: Domain = "sketch", out: str | Path | None = "retrieval.png", cache_dir: str | Path | None = None,
             log: Log = print) -> Retrieval:
    """Rank the images of ``gallery`` (the other domain) for the ``query`` image of ``domain``; write the panel
    to ``out`` (None: no panel). Every input is checked (and the query embedded) before anything is written."""
    check_arguments(top, domain, out)
    run = run if isinstance(run, TrainedRun) else load_run(run)
    query = check_query(query)
    root = Path(gallery)
    files = gallery_files(root)
    other = OTHER_DOMAIN[domain]
    log(f"query: {domain} {query}; gallery: {len(files)} {PLURAL[other]} in {root}")
    query_features = run.extractor.embed([query], domain)  # DataError naming the file when it is no image
    features, cache, cached = gallery_features(run.extractor, run.extractor_dir, root, files, other, cache_dir, log)
    ranked = rank_gallery(encode(run.model, query_features, domain)[0], encode(run.model, features, other), top)
    matches = [Match(rank, similarity, files[index]) for rank, (index, similarity) in enumerate(ranked, start=1)]
    panel = None if out is None else save_panel(query, [match.path for match in matches], out)
    return Retrieval(query, domain, matches, len(files), cache, cached, panel)
