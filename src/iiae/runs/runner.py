"""The run pipeline: train an IIAE with the engine, evaluate it, and write a self-contained run folder.

Every kind of run goes through :func:`execute`: the main job (:func:`train_and_evaluate`, paired images) and the
zero-shot SBIR runs (:mod:`iiae.zsbir.train`). A :class:`Job` says what differs: the data, the model selection
pairs, and how the trained model is measured and reported; the engine's atomic checkpoints, exact resume,
SIGTERM handling, NaN guard, run lock and DDP are the same for all.

Run folder layout::

    config.yaml            the exact config of the run
    checkpoints/last.ckpt  Lightning checkpoint (weights, optimiser, step, data position, random generators),
                           with step=N.ckpt files: ``iiae train --resume`` continues from them (iiae.engine.checkpointing)
    model/                 model.safetensors + config.json (load with IIAE.from_pretrained)
    logs/metrics.csv       every loss term, every ``log_every`` steps
    metrics.json           retrieval table, training time, data source
    loss_curves.png, translation.png, report.md

All user input (config, data files, output folder) is checked before the folder is created, so a mistake
leaves nothing behind. While a run writes its folder, the folder is locked (``.iiae.lock``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from iiae.atomic import atomic_write_json, save_model_folder
from iiae.core.config import ExperimentConfig, save_config
from iiae.core.model import IIAE
from iiae.data.datasets import build_splits
from iiae.data.splits import PairedSplits
from iiae.engine.checkpoint_files import load_checkpoint
from iiae.engine.checkpointing import AtomicCheckpointIO, RunCheckpoint
from iiae.engine.distributed import (
    GlobalBatchNormSync,
    check_accelerator,
    lightning_accelerator,
    process_rank,
)
from iiae.engine.guards import GracefulStop, NonFiniteGuard
from iiae.engine.loggers import run_loggers
from iiae.engine.progress import PlainProgress
from iiae.engine.resume import trim_metrics_log
from iiae.engine.selection import (
    RetrievalSelection,
    early_stopping_facts,
    selected_model,
)
from iiae.engine.training import IIAELightning, PairedDataModule, apply_speed_switches
from iiae.errors import OutputError
from iiae.evaluation.figures import save_figures, save_loss_curves
from iiae.evaluation.measures import run_measures
from iiae.evaluation.retrieval import evaluate_retrieval, format_retrieval_table
from iiae.outputs import add_command_inputs, check_output
from iiae.run_files import (
    CHECKPOINTS,
    CONFIG,
    LOSS_CURVES_FIGURE,
    METRICS,
    METRICS_LOG,
    MODEL_DIR,
)
from iiae.runs.metrics import ImageRunMetrics, TrainingFacts
from iiae.runs.report import write_report
from iiae.runs.run_folder import (
    RunLock,
    check_memory,
    check_output_dir,
    check_same_data,
    default_run_dir,
    resumable_checkpoint,
)

FIGURE_PAIRS = 8  # columns of the translation grid
RUN_DIR_VARIABLE = "IIAE_RUN_DIR"  # the run folder of process 0, for the other processes of a DDP run


@dataclass
class Job:
    """One run for :func:`execute`: what the engine trains, on which batches, and how the result is measured."""

    experiment: ExperimentConfig  # model, loss and optimisation as the engine trains them (checkpoints hold it)
    config: Any  # the run's own config, written as config.yaml (an ExperimentConfig, or a zs-sbir ZSConfig)
    data_module: L.LightningDataModule  # the training batches, in a resumable order
    finish: Callable[[IIAE, Path, TrainingFacts], dict]  # (model, run folder, training facts) -> metrics.json
    report: Callable[[dict, Path], Path]  # writes report.md from metrics.json's contents
    validation: Any = None  # pairs (.x, .y) for model selection; None: the last model is evaluated
    prepare: Callable[[IIAE], None] = field(default=lambda model: None)  # before training, e.g. standardisation
    resume_command: str = "iiae train --resume"  # what the user runs to continue (named when a run is stopped)


def train_and_evaluate(
    config: ExperimentConfig, out_dir: str | Path | None = None, progress: bool = True, resume: bool = False
) -> dict | None:
    """The main job: train on the config's paired images, evaluate, and write the run folder; returns the
    metrics written to ``metrics.json``.

    ``resume``: ``out_dir`` is a run folder to continue from its newest checkpoint (see :mod:`iiae.engine.resume`).
    Several processes (``train.devices`` x ``train.num_nodes``): every process trains, only process 0 writes
    files and evaluates; the others return None.
    """
    config.validate()
    check_accelerator(config.train.accelerator, config.train.devices)
    accelerator = config.train.accelerator
    check_memory(config, accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()))
    rank = process_rank(config.train.devices)
    if out_dir is None and rank > 0:  # Lightning's launcher re-runs the command: use process 0's folder
        if RUN_DIR_VARIABLE not in os.environ:
            raise OutputError("several processes started by torchrun or srun need --out (the same folder for all)")
        out_dir = os.environ[RUN_DIR_VARIABLE]
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    os.environ[RUN_DIR_VARIABLE] = str(out_dir)  # inherited by the processes Lightning's DDP launcher starts
    checkpoint_path = resumable_checkpoint(out_dir, config) if resume else None
    if rank > 0:  # DDP: process 0 creates, locks and writes the folder; the others only train
        return execute(image_job(config, build_splits(config)), out_dir, progress, checkpoint_path)
    # never inside the data, nor another run's or model's folder (iiae.outputs); a resumed run writes its own
    add_command_inputs([config.data.root])  # the digit classifier's cache is never written into the data
    check_output(out_dir, [config.data.root] if config.data.root else [], owner=out_dir if resume else None,
                 folder=True, what="--resume" if resume else "--out")  # fmt: skip
    if not resume:
        check_output_dir(out_dir)
    splits = build_splits(config)  # data.dataset picks the builder (iiae.data.datasets.DATASETS); errors before any file
    with RunLock(out_dir, new_run=not resume):  # a second run on this folder refuses, even one started meanwhile
        check_same_data(out_dir, config, resume)  # a resumed run trains on the data it started with
        return execute(image_job(config, splits), out_dir, progress, checkpoint_path)


def image_job(config: ExperimentConfig, splits: PairedSplits) -> Job:
    """The main job's :class:`Job`: shuffled pairs, model selection on the validation pairs, the retrieval table,
    translation figures and the MNIST-CDCB measures."""

    def finish(model: IIAE, out_dir: Path, facts: TrainingFacts) -> ImageRunMetrics:
        retrieval = evaluate_retrieval(model, splits.test.x, splits.test.y, config.train.eval_batch_size)
        save_figures(model, splits.test.x[:FIGURE_PAIRS], splits.test.y[:FIGURE_PAIRS], out_dir)  # + analogy, traversal
        metrics: ImageRunMetrics = {
            "experiment": config.name,
            "run_dir": str(out_dir),
            "retrieval": retrieval,
            "paper": config.paper,
            "train_pairs": len(splits.train),
            "validation_pairs": 0 if splits.validation is None else len(splits.validation),
            "test_pairs": len(splits.test),
            "data_source": splits.source,
            **facts,
        }
        metrics.update(run_measures(model, splits, config.train.eval_batch_size))  # fidelity + leakage (MNIST-CDCB)
        return metrics

    data_module = PairedDataModule(splits, config.train.batch_size, config.data.num_workers, config.train.seed)
    return Job(experiment=config, config=config, data_module=data_module, finish=finish,
               report=lambda metrics, out_dir: write_report(config, metrics, out_dir), validation=splits.validation)


def execute(job: Job, out_dir: Path, progress: bool, checkpoint_path: Path | None) -> dict | None:
    """Train ``job`` in ``out_dir`` (from ``checkpoint_path`` when resuming), then evaluate and write the run
    folder; returns metrics.json's contents (None in DDP processes other than 0). The caller holds the run lock."""
    config = job.experiment
    writer = process_rank(config.train.devices) == 0  # only process 0 writes files
    if writer and checkpoint_path is not None:  # keep the log rows up to the checkpoint; the resumed run adds more
        trim_metrics_log(out_dir, load_checkpoint(checkpoint_path))
    if writer:
        save_config(job.config, out_dir / CONFIG)
    L.seed_everything(config.train.seed, workers=True, verbose=False)  # the same seed in every process
    module = IIAELightning(config.to_dict())
    job.prepare(module.model)
    train = config.train
    apply_speed_switches(module.model, train)  # channels_last, compile; precision is the Trainer's below
    processes = train.devices * train.num_nodes
    stop = GracefulStop(resume_hint=f"{job.resume_command} {out_dir}")  # SIGTERM / Ctrl-C: checkpoint, then stop
    checkpoint = RunCheckpoint(out_dir / CHECKPOINTS, train.checkpoint_every, train.keep_checkpoints, stop)
    guard = NonFiniteGuard(config.train.skip_nonfinite_steps, str(out_dir / CHECKPOINTS))  # NaN/Inf: stop or skip
    selection = RetrievalSelection.for_run(train, job.validation, out_dir / CHECKPOINTS)  # best.ckpt, early stopping
    progress_bar = progress and sys.stderr.isatty()  # Lightning's bar on a terminal; one line per log_every steps else
    plain_progress = progress and not progress_bar
    trainer = L.Trainer(
        max_steps=config.train.steps,
        max_epochs=-1,
        accelerator=lightning_accelerator(config.train.accelerator),
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,  # auto: DDP when processes > 1
        precision=train.precision,
        use_distributed_sampler=False,  # ResumableDataLoader shards the epoch itself (iiae.engine.resume)
        logger=run_loggers(train.loggers, out_dir, resuming=checkpoint_path is not None, writer=writer),  # in logs/
        # Lightning runs checkpoint callbacks last (RunCheckpoint.setup asserts it): step t's checkpoint holds the
        # stop request and the selection record of step t, and an early stop decided at step t checkpoints step t
        callbacks=[stop, guard, selection, *([PlainProgress(train.log_every)] if plain_progress else []), checkpoint],
        # atomic writes, weights_only reads; DDP: batch norm over the global batch (torch's SyncBatchNorm is GPU-only)
        plugins=[AtomicCheckpointIO(), *([GlobalBatchNormSync()] if processes > 1 else [])],
        log_every_n_steps=min(config.train.log_every, config.train.steps),  # short runs log too
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=out_dir,
    )
    if train.num_nodes > 1:  # the rendezvous waits for every node (torch's timeout: 30 min): say so, not silence
        address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '(a free port)')}"
        logging.getLogger("iiae.runs").warning(
            "iiae: node %s of %d: training starts once all %d nodes have joined at %s (every node runs this command "
            "with its own NODE_RANK; README, 'Several processes')", os.environ.get("NODE_RANK", "0"),
            train.num_nodes, train.num_nodes, address)  # fmt: skip
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*IterableDataset.*has `__len__` defined.*")
        trainer.fit(module, datamodule=job.data_module, ckpt_path=checkpoint_path, weights_only=True)
    stop.raise_if_stopped(trainer.global_step)
    training_seconds = time.perf_counter() - started
    if not trainer.is_global_zero:  # DDP: process 0 evaluates the model (identical in every process) and writes
        return None

    chosen = selected_model(module, selection, trainer.global_step)  # best.ckpt's weights, or the last ones
    model = module.model.cpu().eval()
    save_model_folder(out_dir / MODEL_DIR, model.save_pretrained)
    save_loss_curves(out_dir / METRICS_LOG, out_dir / LOSS_CURVES_FIGURE)
    facts: TrainingFacts = {
        "training_seconds": round(training_seconds, 1),
        "steps": int(trainer.global_step),
        "selection": chosen,
        "early_stopping": early_stopping_facts(selection),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processes": processes,
    }
    metrics = job.finish(model, out_dir, facts)
    atomic_write_json(out_dir / METRICS, metrics)  # its presence marks a finished run (resume refuses then)
    job.report(metrics, out_dir)
    return metrics


def summary(metrics: dict) -> str:
    """The lines printed at the end of the main job."""
    early = metrics.get("early_stopping") or {}
    stopped = (
        f"stopped early at step {early['stopped_at_step']}: {early['reason']}\n" if early.get("early_stopped") else ""
    )
    return (
        f"{format_retrieval_table(metrics['retrieval'])}\n"
        f"{stopped}"
        f"trained {metrics['steps']} steps in {metrics['training_seconds']:.0f} s on {metrics['train_pairs']} "
        f"pairs; evaluated on {metrics['test_pairs']} test pairs\n"
        f"evaluated model: {metrics['selection']['selected']} (step {metrics['selection']['step']}); "
        f"{metrics['selection']['reason']}\n"
        f"run folder: {metrics['run_dir']}  (report.md, metrics.json, translation.png, analogy.png, traversal.png, "
        "loss_curves.png, model/)"
    )

