"""The main job: train IIAE on a config, evaluate it, and write a self-contained run folder.

Run folder layout::

    config.yaml            the exact config of the run
    checkpoints/last.ckpt  Lightning checkpoint (weights, optimiser, step, data position, random generators),
                           with step=N.ckpt files: ``iiae train --resume`` continues from them (iiae.checkpointing)
    model/                 model.safetensors + config.json (load with IIAE.from_pretrained)
    logs/metrics.csv       every loss term, every ``log_every`` steps
    metrics.json           retrieval table, training time, data source
    loss_curves.png, translation.png, report.md

All user input (config, data files, output folder) is checked before the folder is created, so a mistake
leaves nothing behind. While a run writes its folder, the folder is locked (``.iiae.lock``).
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
from lightning.pytorch.loggers import CSVLogger

from iiae.checkpointing import AtomicCheckpointIO, RunCheckpoint, RunLock, load_checkpoint
from iiae.checkpointing import resumable_checkpoint
from iiae.config import ExperimentConfig, save_config
from iiae.errors import OutputError
from iiae.evaluation import evaluate_retrieval, format_retrieval_table
from iiae.figures import save_figures, save_loss_curves
from iiae.guards import GracefulStop, NonFiniteGuard
from iiae.measures import run_measures
from iiae.report import write_report
from iiae.resume import ContinuingCSVLogger, trim_metrics_log
from iiae.selection import RetrievalSelection, selected_model
from iiae.datasets import build_splits
from iiae.distributed import GlobalBatchNormSync, check_accelerator, lightning_accelerator, process_rank
from iiae.training import IIAELightning, PairedDataModule, PairedSplits, apply_speed_switches

FIGURE_PAIRS = 8  # columns of the translation grid
RUN_DIR_VARIABLE = "IIAE_RUN_DIR"  # the run folder of process 0, for the other processes of a DDP run


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


def train_and_evaluate(
    config: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True, resume: bool = False
) -> dict | None:
    """Train, evaluate and write the run folder; returns the metrics written to ``metrics.json``.

    ``resume``: ``out_dir`` is a run folder to continue from its newest checkpoint (see :mod:`iiae.resume`).
    Several processes (``train.devices`` x ``train.num_nodes``): every process trains, only process 0 writes
    files and evaluates; the others return None.
    """
    config.validate()
    check_accelerator(config.train.accelerator, config.train.devices)
    rank = process_rank(config.train.devices)
    if out_dir is None and rank > 0:  # Lightning's launcher re-runs the command: use process 0's folder
        if RUN_DIR_VARIABLE not in os.environ:
            raise OutputError("several processes started by torchrun or srun need --out (the same folder for all)")
        out_dir = os.environ[RUN_DIR_VARIABLE]
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    os.environ[RUN_DIR_VARIABLE] = str(out_dir)  # inherited by the processes Lightning's DDP launcher starts
    checkpoint_path = resumable_checkpoint(out_dir, config) if resume else None
    if rank > 0:  # DDP: process 0 creates, locks and writes the folder; the others only train
        return _train_and_evaluate_in(out_dir, config, progress, build_splits(config), checkpoint_path)
    if not resume:
        check_output_dir(out_dir)
    splits = build_splits(config)  # data.dataset picks the builder (iiae.datasets.DATASETS); errors before any file
    with RunLock(out_dir, new_run=not resume):  # a second run on this folder refuses, even one started meanwhile
        return _train_and_evaluate_in(out_dir, config, progress, splits, checkpoint_path)


def _train_and_evaluate_in(
    out_dir: Path, config: ExperimentConfig, progress: bool, splits: PairedSplits, checkpoint_path: Path | None
) -> dict | None:
    writer = process_rank(config.train.devices) == 0  # only process 0 writes files
    if writer and checkpoint_path is not None:  # keep the log rows up to the checkpoint; the resumed run adds more
        trim_metrics_log(out_dir, load_checkpoint(checkpoint_path))
    if writer:
        save_config(config, out_dir / "config.yaml")
    L.seed_everything(config.train.seed, workers=True, verbose=False)  # the same seed in every process
    module = IIAELightning(config.to_dict())
    train = config.train
    apply_speed_switches(module.model, train)  # channels_last, compile; precision is the Trainer's below
    processes = train.devices * train.num_nodes
    data_module = PairedDataModule(splits, config.train.batch_size, config.data.num_workers, config.train.seed)
    stop = GracefulStop(resume_hint=f"iiae train --resume {out_dir}")  # SIGTERM / Ctrl-C: checkpoint, then stop
    checkpoint = RunCheckpoint(out_dir / "checkpoints", train.checkpoint_every, train.keep_checkpoints, stop)
    guard = NonFiniteGuard(config.train.skip_nonfinite_steps, str(out_dir / "checkpoints"))  # NaN/Inf: stop or skip
    selection = RetrievalSelection.for_run(train, splits.validation, out_dir / "checkpoints")  # keeps best.ckpt
    trainer = L.Trainer(
        max_steps=config.train.steps,
        max_epochs=-1,
        accelerator=lightning_accelerator(config.train.accelerator),
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,  # auto: DDP when processes > 1
        precision=train.precision,
        use_distributed_sampler=False,  # ResumableDataLoader shards the epoch itself (iiae.resume)
        logger=(ContinuingCSVLogger if checkpoint_path else CSVLogger)(out_dir, name="", version="logs"),
        callbacks=[stop, guard, selection, checkpoint],
        # atomic writes, weights_only reads; DDP: batch norm over the global batch (torch's SyncBatchNorm is GPU-only)
        plugins=[AtomicCheckpointIO(), *([GlobalBatchNormSync()] if processes > 1 else [])],
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
        trainer.fit(module, datamodule=data_module, ckpt_path=checkpoint_path, weights_only=True)
    stop.raise_if_stopped(trainer.global_step)
    training_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:  # DDP: process 0 evaluates the model (identical in every process) and writes
        return None

    chosen = selected_model(module, selection, trainer.global_step)  # best.ckpt's weights, or the last ones
    model = module.model.cpu().eval()
    model.save_pretrained(out_dir / "model")
    retrieval = evaluate_retrieval(model, splits.test.x, splits.test.y, config.train.eval_batch_size)
    save_loss_curves(out_dir / "logs" / "metrics.csv", out_dir / "loss_curves.png")
    save_figures(model, splits.test.x[:FIGURE_PAIRS], splits.test.y[:FIGURE_PAIRS], out_dir)  # + analogy, traversal
    metrics = {
        "experiment": config.name,
        "run_dir": str(out_dir),
        "retrieval": retrieval,
        "paper": config.paper,
        "training_seconds": round(training_seconds, 1),
        "steps": int(trainer.global_step),
        "selection": chosen,
        "train_pairs": len(splits.train),
        "validation_pairs": 0 if splits.validation is None else len(splits.validation),
        "test_pairs": len(splits.test),
        "data_source": splits.source,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processes": processes,
    }
    metrics.update(run_measures(model, splits, config.train.eval_batch_size))  # fidelity + leakage (MNIST-CDCB)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_report(config, metrics, out_dir)
    return metrics


def summary(metrics: dict) -> str:
    """The lines printed at the end of the main job."""
    return (
        f"{format_retrieval_table(metrics['retrieval'])}\n"
        f"trained {metrics['steps']} steps in {metrics['training_seconds']:.0f} s on {metrics['train_pairs']} "
        f"pairs; evaluated on {metrics['test_pairs']} test pairs\n"
        f"evaluated model: {metrics['selection']['selected']} (step {metrics['selection']['step']}); "
        f"{metrics['selection']['reason']}\n"
        f"run folder: {metrics['run_dir']}  (report.md, metrics.json, translation.png, analogy.png, traversal.png, "
        "loss_curves.png, model/)"
    )

