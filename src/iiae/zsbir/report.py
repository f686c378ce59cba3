"""report.md and the retrieval figure (like the paper's Figure 4) of a zero-shot SBIR run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from iiae.atomic import atomic_write, atomic_write_text
from iiae.data.image_modes import read_8bit
from iiae.run_files import REPORT
from iiae.runs.report import config_section
from iiae.zsbir.config import ZSConfig
from iiae.zsbir.metrics import top_k_indices

TILE, BORDER, GAP = 72, 4, 8
CORRECT, WRONG = (30, 160, 60), (210, 40, 40)


def measures(retrieval: dict) -> list[str]:
    """Measure names of a retrieval dict in display order: mAP@all, then P@K and mAP@K by K."""
    ks = sorted(int(name.rsplit("_", 1)[1]) for name in retrieval if name.startswith("precision_at_"))
    return ["map_all"] + [f"{kind}_at_{k}" for k in ks for kind in ("precision", "map")]


def header(measure: str) -> str:
    """``map_all`` -> mAP@all, ``precision_at_100`` -> P@100, ``map_at_200`` -> mAP@200."""
    if measure == "map_all":
        return "mAP@all"
    kind, k = measure.rsplit("_at_", 1)
    return f"{'P' if kind == 'precision' else 'mAP'}@{k}"


Border = tuple[int, int, int] | None  # a tile's frame colour; None: white


def _tile(path: Path, border: Border) -> Image.Image:
    tile = read_8bit(path, "RGB").resize((TILE - 2 * BORDER, TILE - 2 * BORDER), Image.BILINEAR)
    framed = Image.new("RGB", (TILE, TILE), border or (255, 255, 255))
    framed.paste(tile, (BORDER, BORDER))
    return framed


def retrieval_row(query: Path, results: Sequence[tuple[Path, Border]]) -> Image.Image:
    """One row of a retrieval figure (the paper's Figure 4): the query's tile, a gap, then one tile per result in
    rank order, each framed in its colour (None: white). ``TILE * (len(results) + 1) + GAP`` by ``TILE`` pixels."""
    row = Image.new("RGB", (TILE * (len(results) + 1) + GAP, TILE), (255, 255, 255))
    row.paste(_tile(query, None), (0, 0))
    for c, (path, border) in enumerate(results):
        row.paste(_tile(path, border), (TILE * (c + 1) + GAP, 0))
    return row


def save_retrieval_figure(sketch_codes: np.ndarray, photo_codes: np.ndarray, split, config: ZSConfig,
                          path: str | Path, top: int = 5) -> Path | None:
    """Rows: a query sketch of an unseen class, then its top-``top`` photos framed green (right) or red (wrong).

    ``sketch_codes`` and ``photo_codes`` are the retrieval codes of ``split``'s test sketches and photos. Needs the
    image files (raw-image data); returns None for precomputed features.
    """
    root = config.data.root
    if config.data.source != "images" or split.test_sketch.paths is None or root is None:
        return None
    rows = []
    for name in split.unseen[: config.evaluation.figure_classes]:
        rows += np.flatnonzero(split.test_sketch.classes == name)[: config.evaluation.figure_queries].tolist()
    if not rows:
        return None
    ranked = top_k_indices(sketch_codes[rows], photo_codes, k=top)
    canvas = Image.new("RGB", (TILE * (top + 1) + GAP, TILE * len(rows)), (255, 255, 255))
    for r, (query, retrieved) in enumerate(zip(rows, ranked)):
        results = [(Path(root) / split.test_image.paths[photo],
                    CORRECT if split.test_image.classes[photo] == split.test_sketch.classes[query] else WRONG)
                   for photo in retrieved]
        canvas.paste(retrieval_row(Path(root) / split.test_sketch.paths[query], results), (0, r * TILE))
    return atomic_write(path, lambda file: canvas.save(file, format="PNG"))


def results_table(metrics: dict) -> str:
    """Markdown: our numbers on this run's data, then the paper's Table 3 (Sketchy Extended) rows of the config."""
    ours = metrics["retrieval"]
    columns = measures(ours)
    lines = ["| method | data | " + " | ".join(header(m) for m in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    label = "IIAE (ours)" if metrics["method"] == "iiae" else "supervised embedding (ours)"
    if metrics["method"] == "iiae" and metrics["lambda"] == 0:
        label = "IIAE, lambda = 0 (ours)"
    lines.append(f"| {label} | this run | " + " | ".join(f"{ours[m]:.3f}" for m in columns) + " |")
    for method, values in metrics.get("paper", {}).items():
        cells = " | ".join("" if m not in values else f"{values[m]:.3f}" for m in columns)
        lines.append(f"| {method} (paper) | Sketchy Extended | {cells} |")
    return "\n".join(lines)


def write_zs_report(config: ZSConfig, metrics: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    retrieval = metrics["retrieval"]
    figure = (f"## Retrievals\n\nTop-5 photos of sketches of unseen classes; green: same class, red: another.\n\n"
              f"![retrievals]({metrics['figure']})\n") if metrics.get("figure") else ""
    text = f"""# Zero-shot sketch-based image retrieval: {config.name} ({metrics['method']})

Data: {metrics['source']}.
Training: {metrics['seen_classes']} seen classes, {metrics['train_sketches']} sketches and \
{metrics['train_photos']} photos.
Test: {len(metrics['unseen_classes'])} unseen classes, {metrics['test_sketches']} sketch queries against \
{metrics['test_photos']} photos.
Unseen classes: {', '.join(metrics['unseen_classes'])}.
Features ({metrics['feature_dim']}-d): {metrics['feature_stage'].get('features', '?')}.
Optimisation: {metrics['steps']} steps in {metrics['training_seconds']:.0f} s, seed {metrics['seed']}.

## Retrieval on the unseen classes (cosine similarity of shared codes)

{retrieval['queries']} queries, a gallery of {retrieval['gallery']} photos. The paper's numbers are for Sketchy
Extended with 512-d ImageNet VGG-16 features; numbers on other data are not comparable with them.

{results_table(metrics)}

{figure}
{config_section(config.to_dict())}"""
    return atomic_write_text(out_dir / REPORT, text)
