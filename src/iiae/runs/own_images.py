"""A trained image model on one's own image files: translation (``iiae translate --images``) and retrieval
(``iiae retrieve``).

    from iiae.runs.own_images import retrieve_images, translate_images
    from iiae.runs.trained import load_trained
    model = load_trained("runs/mine").model              # a run folder, a model folder or a .ckpt
    translate_images(model, ["a.png"], "x-to-y", "out/", seed=0)          # -> out/a_to_y.png
    result = retrieve_images(model, "a.png", "photos/", top=5, query_domain="x", out="panel.png")

Every file is read as the model's input (:func:`iiae.data.image_files.read_image`: any size and mode, converted
to RGB or L for the model's channels of its domain, resized to ``model.image_size``) and every input is read and
checked before anything is written; a file that cannot be used raises one error naming it.

**Translation** X->Y: the mean of r^x(z^s|x) of each input, decoded by p(y | z^y, z^s) with z^y drawn from the
prior N(0, I) by a generator seeded with ``seed`` (the i-th input takes the i-th draw: the same command gives the
same images), or, with ``style``, the mean of q(z^y | style) of an image of domain Y, one exclusive code for every
input. Y->X likewise. One PNG of ``model.image_size`` pixels per input, ``<input stem>_to_<domain>.png``.

**Retrieval**: the query's shared code (r^x for a query of domain X, r^y for Y) against those of every gallery
image from the other domain's shared encoder, ranked by the squared L2 distance of the flattened codes, exactly as
:mod:`iiae.evaluation.retrieval` ranks test pairs (float64, ties: gallery order). The gallery codes are cached
(``gallery-<key>.npz`` in ``cache_dir``, default ``$IIAE_CACHE_DIR/gallery_codes``) under a key of the model's
weights (sha256 of its tensors), the gallery's files (relative paths, sizes, sha256 of their bytes: timestamps do
not matter), the image size and channels and the encoder, so an unchanged gallery is encoded once and a cache hit
gives identical results; a damaged cache file is re-encoded with one notice (:mod:`iiae.cache`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from iiae.cache import (
    cache_key,
    cache_root,
    file_listing,
    read_cached_array,
    write_cached_array,
)
from iiae.core.model import IIAE
from iiae.data.image_files import (
    check_image_file,
    find_images,
    read_image,
    read_images,
    write_image,
)
from iiae.errors import CheckpointError, ConfigError, OutputError
from iiae.evaluation.figures import check_panel_path, save_retrieval_panel
from iiae.evaluation.retrieval import FileRetrieval, Match, rank_by_distance
from iiae.outputs import check_output, check_outputs, staged_files

Direction = Literal["x-to-y", "y-to-x"]
Domain = Literal["x", "y"]
DIRECTIONS: dict[str, tuple[Domain, Domain]] = {"x-to-y": ("x", "y"), "y-to-x": ("y", "x")}
OTHER: dict[str, Domain] = {"x": "y", "y": "x"}
MEASURE = "squared L2 distance"  # of the shared codes: lower is nearer
ENCODE_BATCH = 64  # gallery images read and encoded at a time
Log = Callable[[str], None]


def image_model(model: IIAE) -> IIAE:
    """``model`` in eval mode; CheckpointError for a feature-vector model (``architecture: mlp``), which takes no
    images."""
    if model.config.architecture == "mlp":
        raise CheckpointError("the model is a feature-vector model (architecture mlp, zero-shot SBIR): image files "
                              "need an image model (for zs-sbir runs: iiae zs-sbir retrieve)")  # fmt: skip
    return model.eval()


def channels(model: IIAE, domain: Domain) -> int:
    """Channels of the model's images of ``domain``."""
    return model.config.x_channels if domain == "x" else model.config.y_channels


def read_domain_images(model: IIAE, paths: Sequence[str | Path], domain: Domain) -> torch.Tensor:
    """The files as the model's inputs of ``domain``: ``[N, C, image_size, image_size]`` in [-1, 1]."""
    return read_images(paths, model.config.image_size, channels(model, domain))


# ------------------------------------------------------------------------------------------------ translation
def translation_name(path: str | Path, target: Domain) -> str:
    """``a.png`` -> ``a_to_y.png``: the output file of one input."""
    return f"{Path(path).stem}_to_{target}.png"


def check_direction(direction: str) -> tuple[Domain, Domain]:
    """(source, target) domains of ``x-to-y`` or ``y-to-x``; ConfigError otherwise."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction must be x-to-y or y-to-x, got {direction!r}")
    return DIRECTIONS[direction]


@torch.no_grad()
def translate_tensors(model: IIAE, inputs: torch.Tensor, direction: Direction, seed: int = 0,
                      style: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Translations of ``inputs`` (images of the source domain, [N, C, S, S]); the exclusive code of the target
    domain from ``style`` (one image [C, S, S] of the target domain) or drawn from the prior (seeded)."""
    source, target = check_direction(direction)
    model = image_model(model)
    device = next(model.parameters()).device
    inputs = inputs.to(device)
    encode_exclusive = model.encode_exclusive_y if target == "y" else model.encode_exclusive_x
    if style is None:
        exclusive = model.sample_exclusive(len(inputs), torch.Generator(device=device).manual_seed(seed))
    else:
        exclusive = encode_exclusive(style.to(device)[None]).expand(len(inputs), -1)
    if source == "x":
        return model.translate_x_to_y(inputs, exclusive).cpu()
    return model.translate_y_to_x(inputs, exclusive).cpu()


def translate_images(model: IIAE, images: Sequence[str | Path], direction: Direction, out: str | Path,
                     seed: int = 0, style: str | Path | None = None, owner: str | Path | None = None
                     ) -> list[Path]:  # fmt: skip
    """Translate image files into ``out`` (a folder, created if needed): one ``<stem>_to_<target>.png`` per input.
    No output may be an input (:func:`iiae.outputs.check_outputs`; ``owner``: the run or model folder whose own
    outputs may be written); every output is computed before any is written, then all of them appear together
    (:func:`iiae.outputs.staged_files`) or none. Returns the paths written."""
    source, target = check_direction(direction)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; expected a folder for the translated images")
    names = [translation_name(path, target) for path in images]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ConfigError(f"several inputs would be written to {out / clashes[0]}: give inputs with different names")
    sources = [*map(Path, images), *([Path(style)] if style is not None else [])]
    targets = check_outputs([out / name for name in names], sources, owner=owner, what="--out")
    model = image_model(model)
    inputs = read_domain_images(model, images, source)
    style_image = None
    if style is not None:
        style_image = read_image(check_image_file(style, "style image"), model.config.image_size,
                                 channels(model, target))  # fmt: skip
    outputs = translate_tensors(model, inputs, direction, seed, style_image)
    with staged_files(targets) as temporaries:
        for image, temporary, name in zip(outputs, temporaries, names, strict=True):
            try:
                write_image(image, temporary)
            except OutputError as error:  # name the output the user asked for, not the temporary file
                raise OutputError(str(error).replace(str(temporary), str(out / name))) from None
    return targets


# -------------------------------------------------------------------------------------------------- retrieval
@torch.no_grad()
def encode_shared(model: IIAE, images: torch.Tensor, domain: Domain) -> torch.Tensor:
    """Flattened means of r^x(z^s|x) (domain x) or r^y(z^s|y) (domain y) of ``images``: [N, D] float32 on the CPU."""
    model = image_model(model)
    encoder = model.encode_shared_x if domain == "x" else model.encode_shared_y
    return encoder(images.to(next(model.parameters()).device)).flatten(1).float().cpu()  # finite: IIAE._finite


def model_fingerprint(model: IIAE) -> str:
    """sha256 (hex) of the model's tensors (names, dtypes, shapes, values): the same weights, the same text,
    whichever file (model folder or checkpoint) they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def code_size(model: IIAE, domain: Domain) -> int:
    """Length of a flattened shared code of ``domain`` (one blank image encoded): the columns a cache must hold."""
    blank = torch.zeros(1, channels(model, domain), model.config.image_size, model.config.image_size)
    return int(encode_shared(model, blank, domain).shape[1])


def default_cache_dir() -> Path:
    """``gallery_codes`` under the project's cache folder (:func:`iiae.cache.cache_root`)."""
    return cache_root() / "gallery_codes"


def gallery_codes(model: IIAE, root: Path, files: Sequence[Path], domain: Domain,
                  cache_dir: str | Path | None = None, log: Log = print) -> tuple[np.ndarray, Path, bool]:  # fmt: skip
    """(shared codes [N, D] of ``files`` as images of ``domain``, the cache file, whether it was read from there);
    the files are read and encoded only when no cache file matches (see the module docstring)."""
    size, count = model.config.image_size, len(files)
    key = cache_key({"model_sha256": model_fingerprint(model), "files": file_listing(root, files, "gallery file"),
                     "image_size": size, "channels": channels(model, domain), "encoder": f"r^{domain}"})  # fmt: skip
    path = (Path(cache_dir) if cache_dir else default_cache_dir()) / f"gallery-{key}.npz"
    codes = read_cached_array(path, key, count, code_size(model, domain))
    if codes is not None:
        log(f"gallery codes: cached {path}")
        return codes, path, True
    log(f"gallery codes: encoding {count} images of domain {domain}")
    parts = [encode_shared(model, read_domain_images(model, files[start : start + ENCODE_BATCH], domain), domain)
             for start in range(0, count, ENCODE_BATCH)]  # fmt: skip
    codes = torch.cat(parts).numpy()
    if write_cached_array(path, key, codes):
        log(f"gallery codes: written {path}")
    return codes, path, False


def check_retrieval_arguments(top: int, query_domain: str, out: str | Path | None) -> None:
    """ConfigError / OutputError for arguments wrong before anything is read: top < 1, a domain other than x or
    y, an ``out`` that is not a .png file name (:func:`iiae.evaluation.figures.check_panel_path`)."""
    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if query_domain not in OTHER:
        raise ConfigError(f"--query-domain must be x or y, got {query_domain!r}")
    check_panel_path(out)


def retrieve_images(model: IIAE, query: str | Path, gallery: str | Path, top: int = 10, query_domain: Domain = "x",
                    out: str | Path | None = "retrieval.png", cache_dir: str | Path | None = None,
                    log: Log = print, owner: str | Path | None = None) -> FileRetrieval:  # fmt: skip
    """Rank the images under ``gallery`` (any image files, recursively; the other domain) for the ``query`` image
    of ``query_domain``, and draw the query and the ``top`` nearest into the PNG ``out`` (None: no panel; never
    the query, a gallery file or inside another run or model folder than ``owner``: iiae.outputs). The query
    and every gallery image are read before anything is written."""
    check_retrieval_arguments(top, query_domain, out)
    if out is not None:
        check_output(out, [query, gallery], owner=owner)
    model = image_model(model)
    query = check_image_file(query, "query image")
    root = Path(gallery)
    files = find_images(root)
    other = OTHER[query_domain]
    log(f"query: {query} (domain {query_domain}); gallery: {len(files)} images in {root} (domain {other})")
    query_code = encode_shared(model, read_domain_images(model, [query], query_domain), query_domain)[0]
    codes, cache, cached = gallery_codes(model, root, files, other, cache_dir, log)
    order, distances = rank_by_distance(query_code, torch.from_numpy(codes))
    matches = [Match(rank, float(distance), files[int(index)])
               for rank, (index, distance) in enumerate(zip(order[:top], distances[:top]), start=1)]  # fmt: skip
    result = FileRetrieval(query, query_domain, MEASURE, matches, len(files), cache, cached, None)
    if out is not None:
        result = replace(result, panel=save_retrieval_panel(query, result.panel_results("d"), out))
    return result
