"""Figures of a run: the paper's translation grid and the loss curves of every objective term."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from iiae.model import IIAE  # noqa: E402

LOSS_TERMS = ("loss", "l1_x", "l1_y", "kl_exclusive_x", "kl_exclusive_y", "kl_joint", "kl_joint_to_r_x",
              "kl_joint_to_r_y")  # fmt: skip


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


def save_image_grid(rows: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """Save labelled rows of images (each [N, C, H, W] in [-1, 1]) as one PNG."""
    columns = rows[0][1].shape[0]
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(1.0 * columns + 1.6, 1.0 * len(rows) + 0.4), squeeze=False
    )
    for row_index, (label, images) in enumerate(rows):
        pictures = _to_image(images)
        for column in range(columns):
            axis = axes[row_index][column]
            axis.imshow(pictures[column], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row_index][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def save_translation_grid(model: IIAE, x: torch.Tensor, y: torch.Tensor, path: str | Path, seed: int = 0) -> Path:
    """The paper's translation figure for the given pairs, saved as PNG."""
    return save_image_grid(translation_rows(model, x, y, seed=seed), path, "Cross-domain translation")


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
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False)
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
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
