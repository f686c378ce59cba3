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
(relative paths, sizes, sha256 of their bytes: timestamps do not matter) and the domain, so an unchanged gallery
is embedded once; a damaged cache file is embedded again with one notice (:mod:`iiae.cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iiae.cache import (
    cache_key,
    file_listing,
    file_sha256,
    read_cached_array,
    write_cached_array,
)
from iiae.core.model import check_finite_codes
from iiae.data.image_files import check_image_file, find_images
from iiae.errors import CheckpointError, ConfigError
from iiae.evaluation.figures import check_panel_path, save_retrieval_panel
from iiae.evaluation.retrieval import FileRetrieval, Match
from iiae.outputs import check_output
from iiae.run_files import CONFIG, FEATURE_EXTRACTOR_DIR, MODEL_DIR
from iiae.zsbir.baseline import load_model
from iiae.zsbir.config import ZSConfig, load_zs_config
from iiae.zsbir.feature_extractor import CONFIG_FILE, WEIGHTS_FILE, FeatureExtractor
from iiae.zsbir.feature_net import default_cache_dir, torch_device
from iiae.zsbir.image_pipeline import Domain
from iiae.zsbir.metrics import top_k_indices

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


# --------------------------------------------------------------------------------------------- inputs
def check_arguments(top: int, domain: str, out: str | Path | None) -> None:
    """ConfigError / OutputError for arguments wrong before anything is read: top < 1, an unknown domain, an
    ``out`` that is not a .png file name."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if domain not in OTHER_DOMAIN:
        raise ConfigError(f"--query-domain must be sketch or photo, got {domain!r}")
    check_panel_path(out)


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


# ---------------------------------------------------------------------------------------------- cache
def extractor_fingerprint(extractor_dir: Path) -> dict:
    """The saved extractor's identity: its ``feature_extractor.json`` text and the sha256 of its weights file."""
    weights = extractor_dir / WEIGHTS_FILE
    return {"description": (extractor_dir / CONFIG_FILE).read_text(encoding="utf-8"),
            "weights_sha256": file_sha256(weights) if weights.is_file() else None}


def gallery_cache_key(fingerprint: dict, listing: list[list], domain: Domain) -> str:
    """24 hex digits naming the features of these gallery files, embedded as ``domain`` by this extractor."""
    return cache_key({"extractor": fingerprint, "files": listing, "domain": domain})


def gallery_features(extractor: FeatureExtractor, extractor_dir: Path, root: Path, files: Sequence[Path],
                     domain: Domain, cache_dir: str | Path | None = None, log: Log = print
                     ) -> tuple[np.ndarray, Path, bool]:
    """(features [N, D] of ``files`` as ``domain``, the cache file, whether it was read from the cache).

    The gallery is embedded only when no cache file matches (see :func:`gallery_cache_key`)."""
    key = gallery_cache_key(extractor_fingerprint(extractor_dir), file_listing(root, files, "gallery file"), domain)
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"gallery-{key}.npz"
    features = read_cached_array(path, key, len(files), extractor.feature_dim())
    if features is not None:
        log(f"gallery features: cached {path}")
        return features, path, True
    log(f"gallery features: embedding {len(files)} {PLURAL[domain]}")
    features = extractor.embed(files, domain)
    if write_cached_array(path, key, features):
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
    return check_finite_codes(torch.cat(parts).cpu().numpy(), f"the run's model (its {domain} encoder)")


def rank_gallery(query_code: np.ndarray, gallery_codes: np.ndarray, top: int) -> list[tuple[int, float]]:
    """(gallery index, cosine similarity) of the ``top`` most similar gallery codes (all when fewer), best first,
    ranked as the run's evaluation ranks (:func:`iiae.zsbir.metrics.top_k_indices`)."""
    order = top_k_indices(query_code[None], gallery_codes, k=min(top, len(gallery_codes)))[0]
    query = torch.nn.functional.normalize(torch.as_tensor(query_code).double()[None], dim=1)
    gallery = torch.nn.functional.normalize(torch.as_tensor(gallery_codes).double(), dim=1)
    similarity = (query @ gallery.T)[0]
    return [(int(index), float(similarity[index])) for index in order]


def retrieve(run: TrainedRun | str | Path, query: str | Path, gallery: str | Path, top: int = 10,
             domain: Domain = "sketch", out: str | Path | None = "retrieval.png", cache_dir: str | Path | None = None,
             log: Log = print, owner: str | Path | None = None) -> FileRetrieval:
    """Rank the images of ``gallery`` (the other domain) for the ``query`` image of ``domain``; write the panel
    to ``out`` (None: no panel; never the query, a gallery file or inside another run or model folder than
    ``owner``: iiae.outputs). Every input is checked (and the query embedded) before anything is written."""
    check_arguments(top, domain, out)
    if out is not None:
        check_output(out, [query, gallery], owner=owner)
    run = run if isinstance(run, TrainedRun) else load_run(run)
    query = check_image_file(query, "query image")
    root = Path(gallery)
    files = find_images(root, IMAGE_SUFFIXES)
    other = OTHER_DOMAIN[domain]
    log(f"query: {domain} {query}; gallery: {len(files)} {PLURAL[other]} in {root}")
    query_features = run.extractor.embed([query], domain)  # DataError naming the file when it is no image
    features, cache, cached = gallery_features(run.extractor, run.extractor_dir, root, files, other, cache_dir, log)
    ranked = rank_gallery(encode(run.model, query_features, domain)[0], encode(run.model, features, other), top)
    matches = [Match(rank, similarity, files[index]) for rank, (index, similarity) in enumerate(ranked, start=1)]
    result = FileRetrieval(query, domain, "cosine similarity", matches, len(files), cache, cached, None)
    if out is not None:  # the query, then the matches titled with rank and cosine (iiae.evaluation.figures)
        result = replace(result, panel=save_retrieval_panel(query, result.panel_results("cos"), out))
    return result
