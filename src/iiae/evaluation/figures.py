"""Figures of a run: the paper's translation grid, visual analogies, latent traversals and the loss curves; the
panel of a retrieval (a query image and its ranked results)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import ImageOps

from iiae.atomic import atomic_write
from iiae.core.model import IIAE
from iiae.data.image_modes import read_8bit
from iiae.errors import ConfigError, OutputError

LOSS_TERMS = ("loss", "l1_x", "l1_y", "mse_x", "mse_y", "nll_x", "nll_y", "kl_exclusive_x", "kl_exclusive_y",
              "kl_joint", "kl_joint_to_r_x", "kl_joint_to_r_y", "kl_detached_joint_to_r")  # those a run logged are drawn
FIGURE_DPI = 100  # every PNG here has an exact, documented pixel size at this resolution
CELL_PIXELS = 60  # one image cell of the analogy and traversal figures
GAP_PIXELS = 40  # margin left of, right of and between panels, and below them
TITLE_PIXELS = 50  # band above the panels for their titles
PANEL_TILE_PIXELS = 96  # one image of a retrieval panel
PANEL_SPACE_PIXELS = 12  # between two results of a retrieval panel (the query stands GAP_PIXELS apart)
TRAVERSAL_VALUES = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)  # prior units: N(0, 1) spans about -2..2


def save_png(figure: Figure, path: str | Path, dpi: float) -> Path:
    """``figure`` as a PNG at ``path``, written atomically (a full disk leaves no half-written image)."""
    return atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=dpi))


def _inches(pixels: float) -> float:
    """Figure inches giving exactly ``pixels`` at FIGURE_DPI (matplotlib truncates; half a pixel absorbs rounding)."""
    return (pixels + 0.5) / FIGURE_DPI


def _to_image(batch: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] to [N, H, W, 3] in [0, 1] (grey images repeated to RGB)."""
    images = ((batch.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return np.repeat(images, 3, axis=3) if images.shape[3] == 1 else images


@torch.no_grad()
def translation_rows(
    model: IIAE, x: torch.Tensor, y: torch.Tensor, prior_samples: int = 3, seed: int = 0
) -> list[tuple[str, torch.Tensor]]:
    """Labelled rows of the paper's translation figure, for pairs (x, y).

    X->Y: the input x, then decoded with r^x(x)'s mean and ``prior_samples`` z^y drawn from the prior, then
    with z^y the posterior mean of the paired y (should look like y); Y->X the same way round.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    rows: list[tuple[str, torch.Tensor]] = [("x", x)]
    for index in range(prior_samples):
        rows.append((f"x→y, z^y~p #{index + 1}", model.translate_x_to_y(x, generator=generator)))
    rows.append(("x→y, z^y of paired y", model.translate_x_to_y(x, model.encode_exclusive_y(y))))
    rows.append(("y", y))
    for index in range(prior_samples):
        rows.append((f"y→x, z^x~p #{index + 1}", model.translate_y_to_x(y, generator=generator)))
    rows.append(("y→x, z^x of paired x", model.translate_y_to_x(y, model.encode_exclusive_x(x))))
    model.train(was_training)
    return rows


def _figure(**options: Any) -> Figure:
    """A matplotlib Figure drawn by the Agg canvas: matplotlib's object API, no global backend or pyplot state."""
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def save_image_grid(rows: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """Save labelled rows of images (each [N, C, H, W] in [-1, 1]) as one PNG of (100 x columns + 160) by
    (100 x rows + 40) pixels: a 100-pixel cell per image, the labels on the left, the title on top."""
    columns = rows[0][1].shape[0]
    width, height = 100 * columns + 160, 100 * len(rows) + 40
    figure = _figure(figsize=(_inches(width), _inches(height)), dpi=FIGURE_DPI)
    axis = figure.add_axes((150 / width, 10 / height, 100 * columns / width, 100 * len(rows) / height))
    axis.imshow(_mosaic([list(images) for _, images in rows]), interpolation="nearest", aspect="auto")
    axis.set_axis_off()
    for index, (label, _) in enumerate(rows):
        figure.text(145 / width, 1 - (30 + 100 * index + 50) / height, label, ha="right", va="center", fontsize=8)
    if title:
        figure.text(0.5, 1 - 15 / height, title, ha="center", va="center", fontsize=10)
    save_png(figure, path, dpi=FIGURE_DPI)
    return Path(path)


def save_translation_grid(model: IIAE, x: torch.Tensor, y: torch.Tensor, path: str | Path, seed: int = 0) -> Path:
    """The paper's translation figure for the given pairs, saved as PNG."""
    return save_image_grid(translation_rows(model, x, y, seed=seed), path, "Cross-domain translation")


# ---------------------------------------------------------------------------------- analogies and traversals
def _coders(model: IIAE, domain: str):
    if domain not in ("x", "y"):
        raise ValueError(f"domain must be 'x' or 'y', got {domain!r}")
    if domain == "x":
        return model.encode_shared_x, model.encode_exclusive_x, model.decode_x
    return model.encode_shared_y, model.encode_exclusive_y, model.decode_y


@torch.no_grad()
def analogy_grid(model: IIAE, content: torch.Tensor, exclusive_from: torch.Tensor, domain: str = "x") -> torch.Tensor:
    """Visual analogies within one domain: ``[I, J, C, H, W]`` whose cell (i, j) is the image decoded from the
    shared code of ``content[i]`` and the exclusive code of ``exclusive_from[j]`` (posterior means, eval mode).

    Domain x: cell (i, j) = p(x | z^x = mean q(z^x | x_j), z^s = mean r^x(z^s | x_i)); domain y likewise.
    """
    encode_shared, encode_exclusive, decode = _coders(model, domain)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        shared = encode_shared(content.to(device))
        exclusive = encode_exclusive(exclusive_from.to(device))
        rows, columns = len(shared), len(exclusive)
        images = decode(exclusive.repeat(rows, 1), shared.repeat_interleave(columns, dim=0))  # row-major cells
    finally:
        model.train(was_training)
    return images.reshape(rows, columns, *images.shape[1:])


@torch.no_grad()
def traversal_grid(
    model: IIAE, image: torch.Tensor, domain: str = "x", values: tuple[float, ...] = TRAVERSAL_VALUES
) -> torch.Tensor:
    """Latent traversal of one image: ``[D, V, C, H, W]`` whose cell (k, v) is decoded with the image's shared code
    and exclusive code (posterior means), except exclusive dimension k set to ``values[v]``."""
    encode_shared, encode_exclusive, decode = _coders(model, domain)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        image = image.to(device).reshape(1, *image.shape[-3:])
        shared, exclusive = encode_shared(image), encode_exclusive(image)
        dimensions, steps = exclusive.shape[1], len(values)
        codes = exclusive.repeat(dimensions * steps, 1).reshape(dimensions, steps, dimensions)
        setting = torch.tensor(values, dtype=codes.dtype, device=device)
        codes[torch.arange(dimensions), :, torch.arange(dimensions)] = setting  # codes[k, v, k] = values[v]
        images = decode(codes.reshape(-1, dimensions), shared.expand(dimensions * steps, *shared.shape[1:]))
    finally:
        model.train(was_training)
    return images.reshape(dimensions, steps, *images.shape[1:])


def panel_figure_size(panels: list[tuple[int, int]]) -> tuple[int, int]:
    """Width and height in pixels of the PNG of side-by-side panels of (rows, columns) image cells."""
    width = sum(columns for _, columns in panels) * CELL_PIXELS + (len(panels) + 1) * GAP_PIXELS
    height = max(rows for rows, _ in panels) * CELL_PIXELS + TITLE_PIXELS + GAP_PIXELS
    return width, height


def _mosaic(cells: list[list[torch.Tensor | None]], gap: int = 2) -> np.ndarray:
    """One RGB array of image cells ([C, H, W] in [-1, 1], or None for a blank), ``gap`` white pixels apart."""
    sample = next(cell for row in cells for cell in row if cell is not None)
    height, width = sample.shape[-2:]
    mosaic = np.ones((len(cells) * (height + gap) - gap, len(cells[0]) * (width + gap) - gap, 3), dtype=np.float32)
    for row_index, row in enumerate(cells):
        for column_index, cell in enumerate(row):
            if cell is not None:
                top, left = row_index * (height + gap), column_index * (width + gap)
                mosaic[top : top + height, left : left + width] = _to_image(cell[None])[0]
    return mosaic


def save_panels(panels: list[tuple[str, list[list[torch.Tensor | None]]]], path: str | Path) -> Path:
    """Titled mosaics side by side in one PNG of exactly :func:`panel_figure_size` x FIGURE_DPI pixels."""
    shapes = [(len(cells), len(cells[0])) for _, cells in panels]
    width, height = panel_figure_size(shapes)
    figure = _figure(figsize=(_inches(width), _inches(height)), dpi=FIGURE_DPI)
    left = GAP_PIXELS
    for (title, cells), (rows, columns) in zip(panels, shapes):
        bottom = height - TITLE_PIXELS - rows * CELL_PIXELS
        box = (left / width, bottom / height, columns * CELL_PIXELS / width, rows * CELL_PIXELS / height)
        axis = figure.add_axes(box)
        axis.imshow(_mosaic(cells), interpolation="nearest", aspect="auto")
        axis.set_axis_off()
        axis.set_title(title, fontsize=8)
        left += columns * CELL_PIXELS + GAP_PIXELS
    save_png(figure, path, dpi=FIGURE_DPI)
    return Path(path)


def save_analogy_grid(model: IIAE, x: torch.Tensor, y: torch.Tensor, path: str | Path) -> Path:
    """Analogy grids of both domains in one PNG: the top border shows whose exclusive code each column takes,
    the left border whose shared code each row takes (the diagonal reconstructs the inputs)."""
    panels = []
    for domain, images in (("x", x), ("y", y)):
        grid = analogy_grid(model, images, images, domain)
        cells: list[list[torch.Tensor | None]] = [[None, *images]]
        cells += [[images[i], *grid[i]] for i in range(len(images))]
        panels.append((f"{domain}: rows give z^s, columns z^{domain}", cells))
    return save_panels(panels, path)


def save_traversal_grid(
    model: IIAE, x: torch.Tensor, y: torch.Tensor, path: str | Path, values: tuple[float, ...] = TRAVERSAL_VALUES
) -> Path:
    """Traversals of every dimension of z^x (of image ``x``) and of z^y (of ``y``), the input in the first column."""
    panels = []
    for domain, image in (("x", x), ("y", y)):
        grid = traversal_grid(model, image, domain, values)
        cells: list[list[torch.Tensor | None]] = [[image.reshape(grid.shape[2:]), *row] for row in grid]
        panels.append((f"{domain}: row k sets z^{domain}_k to {values[0]:g}..{values[-1]:g}", cells))
    return save_panels(panels, path)


def save_figures(model: IIAE, x: torch.Tensor, y: torch.Tensor, folder: str | Path, seed: int = 0) -> list[Path]:
    """translation.png, analogy.png and traversal.png of test pairs (x, y) into ``folder`` (the main job's and
    ``iiae translate``'s figures); the analogy uses the first 6 pairs, the traversals the first pair."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [
        save_translation_grid(model, x, y, folder / "translation.png", seed=seed),
        save_analogy_grid(model, x[:6], y[:6], folder / "analogy.png"),
        save_traversal_grid(model, x[0], y[0], folder / "traversal.png"),
    ]


# --------------------------------------------------------------------------------------------- retrieval panel
def retrieval_panel_size(results: int) -> tuple[int, int]:
    """Width and height in pixels of the PNG of :func:`save_retrieval_panel` with ``results`` results."""
    tiles = (results + 1) * PANEL_TILE_PIXELS + max(results - 1, 0) * PANEL_SPACE_PIXELS
    return tiles + 3 * GAP_PIXELS, PANEL_TILE_PIXELS + TITLE_PIXELS + GAP_PIXELS // 2


def _panel_tile(path: Path) -> np.ndarray:
    """The image file as an RGB tile of PANEL_TILE_PIXELS, aspect kept, padded with white."""
    image = read_8bit(path, "RGB")  # every PIL mode by the one table (16-bit, float, transparency)
    return np.asarray(ImageOps.pad(image, (PANEL_TILE_PIXELS, PANEL_TILE_PIXELS), color=(255, 255, 255)))


def _short(name: str, length: int = 18) -> str:
    """A file name for a title: cut to ``length`` characters, the bytes of a name that is not UTF-8 (held as
    surrogates) shown as the replacement character, control characters as spaces."""
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    name = "".join(" " if not char.isprintable() else char for char in name)
    return name if len(name) <= length else name[: length - 1] + "…"


def check_panel_path(out: str | Path | None) -> None:
    """OutputError when ``out`` is a folder, ConfigError when it does not name a .png file (None: no panel)."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; expected a .png file for the panel")
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out} must be a .png file")


def save_retrieval_panel(query: Path, results: Sequence[tuple[Path, str]], path: str | Path) -> Path:
    """The query image, a gap, then each result image in rank order, every image titled (the query by its file
    name, a result by its label and file name); one PNG of :func:`retrieval_panel_size` pixels, written
    atomically (OutputError when it cannot be). ``results``: (image file, label such as ``#1 0.123``) pairs."""
    width, height = retrieval_panel_size(len(results))
    figure = _figure(figsize=(_inches(width), _inches(height)), dpi=FIGURE_DPI)
    tiles = [(query, f"query\n{_short(query.name)}")]
    tiles += [(file, f"{label}\n{_short(file.name)}") for file, label in results]
    left = GAP_PIXELS
    for index, (file, title) in enumerate(tiles):
        box = (left / width, (GAP_PIXELS // 2) / height, PANEL_TILE_PIXELS / width, PANEL_TILE_PIXELS / height)
        axis = figure.add_axes(box)
        axis.imshow(_panel_tile(file), interpolation="nearest", aspect="auto")
        axis.set_axis_off()
        axis.set_title(title, fontsize=7)
        left += PANEL_TILE_PIXELS + (GAP_PIXELS if index == 0 else PANEL_SPACE_PIXELS)
    try:
        return save_png(figure, path, dpi=FIGURE_DPI)
    except OSError as error:
        raise OutputError(f"cannot write the panel {path}: {error.strerror or error}") from None


def read_logged_terms(metrics_csv: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Steps and values of every ``train/<term>`` column of a Lightning CSVLogger file."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    if not Path(metrics_csv).is_file():  # nothing was logged (a run shorter than its logging interval)
        return {}
    with open(metrics_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key and key.startswith("train/") and value not in ("", None):
                    steps, values = series.setdefault(key.removeprefix("train/"), ([], []))
                    steps.append(float(row["step"]))
                    values.append(float(value))
    return {name: (np.asarray(steps), np.asarray(values)) for name, (steps, values) in series.items()}


def save_loss_curves(metrics_csv: str | Path, path: str | Path) -> Path:
    """One panel per objective term (log scale where positive), from the run's CSV log."""
    series = read_logged_terms(metrics_csv)
    names = [name for name in LOSS_TERMS if name in series]
    columns = 4
    rows = max(1, -(-len(names) // columns))
    figure = _figure(figsize=(3.2 * columns, 2.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis, name in zip(axes.flat, names):
        steps, values = series[name]
        axis.plot(steps, values, linewidth=1)
        if np.all(values > 0):
            axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    if not names:
        axes[0][0].text(0, 0.5, "no loss values were logged", fontsize=10)
    figure.tight_layout()
    save_png(figure, path, dpi=100)
    return Path(path)
