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

from iiae.errors import OutputError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] to uint8 ``[N, H, W, C]`` (the quantisation of the exported PNGs)."""
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pil(array: np.ndarray) -> Image.Image:
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
                    _pil(np.concatenate([image_x, image_y], axis=1)).save(folder / name)
                else:
                    _pil(image_x).save(folder / "X" / name)
                    _pil(image_y).save(folder / "Y" / name)
    except OSError as error:
        raise OutputError(f"cannot write exported images into {folder}: {error.strerror or error}") from None
    return len(x)


def check_export_folder(out: Path) -> None:
    """Refuse a folder that already holds files, so two exports are never mixed."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"export folder {out} already exists and is not empty; choose a new --out")
