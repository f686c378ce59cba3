"""The main job: train IIAE on a config, evaluate it, and write a self-contained run folder.

Run folder layout::

    config.yaml            the exact config of the run
    checkpoints/last.ckpt  Lightning checkpoint (weights, optimiser, step)
    model/                 model.safetensors + config.json (load with IIAE.from_pretrained)
    logs/metrics.csv       every loss term, every ``log_every`` steps
    metrics.json           retrieval table, training time, data source
    loss_curves.png, translation.png, report.md

All user input (config, data files, output folder) is checked before the folder is created, so a mistake
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from iiae.config import ExperimentConfig, save_config
from iiae.errors import OutputError
from iiae.evaluation import evaluate_retrieval, format_retrieval_table
from iiae.figures import save_loss_curves, save_translation_grid
from iiae.report import write_report
from iiae.training import IIAELightning, PairedDataModule, build_cdcb_splits

FIGURE_PAIRS = 8  # columns of the translation grid


def default_run_dir(config: ExperimentConfig, root: str | Path = "runs") -> Path:
    """``runs/<config name>-<date>-<time>``; a suffix keeps it fresh if that already exists."""
    base = Path(root) / f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, index = base, 1
    while candidate.exists():
        candidate, index = Path(f"{base}-{index}"), index + 1
    return candidate


def check_output_dir(out_dir: Path) -> None:
    """Refuse a folder that holds files already, or whose parent cannot be written, before any work."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"output path {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            raise OutputError(f"output folder {out_dir} is not empty; choose a new --out (runs are never mixed)")
    parent = out_dir if out_dir.exists() else next(p for p in [out_dir, *out_dir.parents] if p.exists())
    if not parent.is_dir():
        raise OutputError(f"cannot create output folder {out_dir}: {parent} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".iiae-write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"output folder {out_dir} cannot be written ({parent}: {error.strerror})") from None


def _accelerator(requested: str) -> str:
    if requested in ("cuda", "gpu"):
        return "gpu"
    return requested


def train_and_evaluate(config: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train, evaluate and write the run folder; returns the metrics written to ``metrics.json``."""
    config.validate()
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    check_output_dir(out_dir)
    splits = build_cdcb_splits(config.data, config.model.image_size)  # data errors before any file is made

    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    module = IIAELightning(config.to_dict())
    data_module = PairedDataModule(splits, config.train.batch_size, config.data.num_workers, config.train.seed)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer = L.Trainer(
        max_steps=config.train.steps,
        max_epochs=-1,
        accelerator=_accelerator(config.train.accelerator),
        devices=1,
        logger=CSVLogger(out_dir, name="", version="logs"),
        callbacks=[checkpoint],
        log_every_n_steps=min(config.train.log_every, config.train.steps),  # short runs log too
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=out_dir,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        trainer.fit(module, datamodule=data_module)
    training_seconds = time.perf_counter() - started

    model = module.model.cpu().eval()
    model.save_pretrained(out_dir / "model")
    retrieval = evaluate_retrieval(model, splits.test.x, splits.test.y, config.train.eval_batch_size)
    save_loss_curves(out_dir / "logs" / "metrics.csv", out_dir / "loss_curves.png")
    save_translation_grid(
        model, splits.test.x[:FIGURE_PAIRS], splits.test.y[:FIGURE_PAIRS], out_dir / "translation.png"
    )
    metrics = {
        "experiment": config.name,
        "run_dir": str(out_dir),
        "retrieval": retrieval,
        "paper": config.paper,
        "training_seconds": round(training_seconds, 1),
        "steps": int(trainer.global_step),
        "train_pairs": len(splits.train),
        "test_pairs": len(splits.test),
        "data_source": splits.source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_report(config, metrics, out_dir)
    return metrics


def summary(metrics: dict) -> str:
    """The lines printed at the end of the main job."""
    return (
        f"{format_retrieval_table(metrics['retrieval'])}\n"
        f"trained {metrics['steps']} steps in {metrics['training_seconds']:.0f} s on {metrics['train_pairs']} "
        f"pairs; evaluated on {metrics['test_pairs']} test pairs\n"
        f"run folder: {metrics['run_dir']}  (report.md, metrics.json, translation.png, loss_curves.png, model/)"
    )

