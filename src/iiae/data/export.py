"""Write paired images to disk in the formats :mod:`iiae.data.paired_images` reads.

``iiae data export mnist-cdcb --format ab --out DIR`` writes our MNIST-CDCB as side-by-side PNGs
(``DIR/train/1.png`` ... ``DIR/test/1.png``, X on the left, 256x256 halves by default), so other
implementations can train on it and ours reads it back (PNG is lossless: the pairs come back as the 8-bit
quantised images). ``--format folders`` writes ``DIR/<split>/X/<n>.png`` and ``DIR/<split>/Y/<n>.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iiae.atomic import atomic_folder
from iiae.core.config import ExperimentConfig
from iiae.data.cdcb import CDCBDraws, cdcb_intensities, compose_cdcb, draw_cdcb
from iiae.data.mnist import load_digits
from iiae.data.splits import cdcb_seeds
from iiae.errors import ConfigError, OutputError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] to uint8 ``[N, H, W, C]`` (the quantisation of the exported PNGs)."""
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_pil_image(array: np.ndarray) -> Image.Image:
    """A uint8 ``[H, W, C]`` array as a PIL image: L for one channel, RGB for three."""
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def export_pairs(x: torch.Tensor, y: torch.Tensor, folder: str | Path, layout: str = "ab", first: int = 1) -> int:
    """Write pairs ``(x[i], y[i])`` as ``<first + i>.png`` into ``folder`` (a split folder); returns the count."""
    folder = Path(folder)
    try:
        for sub in (["X", "Y"] if layout == "folders" else [""]):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for start in range(0, len(x), 256):
            xs, ys = to_uint8(x[start : start + 256]), to_uint8(y[start : start + 256])
            for offset, (image_x, image_y) in enumerate(zip(xs, ys)):
                name = f"{first + start + offset}.png"
                if layout == "ab":
                    to_pil_image(np.concatenate([image_x, image_y], axis=1)).save(folder / name)
                else:
                    to_pil_image(image_x).save(folder / "X" / name)
                    to_pil_image(image_y).save(folder / "Y" / name)
    except OSError as error:
        raise OutputError(f"cannot write exported images into {folder}: {error.strerror or error}") from None
    return len(x)


def check_export_folder(out: Path) -> None:
    """Refuse a folder that already holds files, so two exports are never mixed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"export folder {out} already exists and is not empty; choose a new --out")


# --------------------------------------------------------------------------------------------- MNIST-CDCB
_CHUNK = 256  # pairs rendered at once, at most
CHUNK_BYTES = 2**28  # and at most this many bytes of float pixels (X and Y): 256 MiB
MAX_EXPORT_SIZE = 2048  # pixels a side (the published pairs are 256)


def _render_cdcb(digits: np.ndarray, draws: CDCBDraws, size: int):
    """MNIST-CDCB at ``size`` from the pairs' random draws (:func:`iiae.data.cdcb.compose_cdcb`), in chunks."""
    pairs = max(1, min(_CHUNK, CHUNK_BYTES // (2 * 3 * 4 * size * size)))
    for start in range(0, len(digits), pairs):
        chunk = slice(start, start + pairs)
        part = draws.subset(chunk)
        intensity, intensity_y = cdcb_intensities(digits[chunk], part, size)
        yield compose_cdcb(intensity, part.background_colour_x, part.digit_colour_y, intensity_y)


def export_cdcb(config: ExperimentConfig, out: Path, size: int, layout: str, limit: int | None) -> dict[str, int]:
    """Write the train and test pairs of a CDCB config: colours and strokes exactly as training draws them
    (:func:`iiae.data.splits.build_cdcb_splits`), rendered at ``size``. ``out`` (absent or empty) is filled in
    a staging folder beside it and appears only once every image is written."""
    if not 1 <= size <= MAX_EXPORT_SIZE:
        raise ConfigError(f"--size must be in [1, {MAX_EXPORT_SIZE}] pixels, got {size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1 pairs per split, got {limit}")
    data = config.data  # every training pair is written: a reader holds out validation pairs by the same rule
    dataset = "fashion_mnist" if data.dataset == "fashion_mnist_cdcb" else "mnist"
    digits = load_digits(data.source, data.root, dataset=dataset, split_seed=data.split_seed)
    counts = {}
    train_seed, test_seed = cdcb_seeds(data)
    splits = (("train", digits.train_images, train_seed), ("test", digits.test_images, test_seed))
    staging = out
    try:
        with atomic_folder(out) as staging:
            for split, images, seed in splits:
                draws = draw_cdcb(len(images), seed, data.generator)  # all pairs' draws, as training draws them
                images = images[:limit] if limit else images
                written = 0
                for x, y in _render_cdcb(images, draws.subset(slice(0, len(images))), size):
                    written += export_pairs(x, y, staging / split, layout, first=written + 1)
                counts[split] = written
    except OutputError as error:  # name the folder the user asked for, not the staging folder (removed)
        raise OutputError(str(error).replace(str(staging), str(out))) from None
    except OSError as error:
        raise OutputError(f"cannot write the export folder {out}: {error.strerror or error}") from None
    return counts
