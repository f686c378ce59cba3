"""Zero-shot SBIR runs: data -> (feature stage) -> IIAE (``mlp`` architecture) or the supervised baseline ->
retrieval on unseen classes. The IIAE trains through the engine's LightningModule (:mod:`iiae.engine.training`).

Run folder::

    config.yaml      the exact config
    model/           model.safetensors + config.json (iiae.IIAE, or the supervised embedding)
    feature_extractor/  the image -> feature network (raw-image data; ``iiae zs-sbir retrieve`` embeds new files)
    logs/metrics.csv loss terms (IIAE)
    metrics.json     mAP@all, P@K, mAP@K on the unseen classes, the split, the feature stage used
    retrievals.png   top-5 photos of a few unseen-class sketches (raw-image data), report.md
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iiae.atomic import atomic_write_json, save_model_folder
from iiae.core.config import ExperimentConfig, TrainConfig, save_config
from iiae.core.model import IIAE
from iiae.engine.distributed import check_accelerator
from iiae.errors import ConfigError, DataError
from iiae.run_files import (
    CONFIG,
    FEATURE_EXTRACTOR_DIR,
    METRICS,
    MODEL_DIR,
    RETRIEVALS_FIGURE,
)
from iiae.runs.metrics import SupervisedFacts, TrainingFacts
from iiae.runs.run_folder import RunLock, check_output_dir, resumable_checkpoint
from iiae.runs.runner import Job, execute
from iiae.zsbir.baseline import (
    save_supervised,
    train_supervised,
)
from iiae.zsbir.config import ZSConfig
from iiae.zsbir.feature_extractor import FeatureExtractor
from iiae.zsbir.feature_net import image_features, torch_device
from iiae.zsbir.features import (
    ZeroShotSplit,
    load_official_features,
    load_plain_features,
    resolve_unseen,
    scan_sketchy_folder,
    split_official,
    split_zero_shot,
)
from iiae.zsbir.metrics import retrieval_metrics
from iiae.zsbir.report import save_retrieval_figure, write_zs_report
from iiae.zsbir.sampler import ClassPairBatches, ClassPairDataModule

# ------------------------------------------------------------------------------------------------- data


def build_split(config: ZSConfig, log=print) -> tuple[ZeroShotSplit, dict, FeatureExtractor | None]:
    """The seen/unseen split of the configured data, a description of the features used, and the feature
    extractor that embedded the images (None for precomputed features: data.source official or plain)."""
    data = config.data
    if data.root is None:
        raise DataError("data.root is not set; pass --data-root (a Sketchy folder or a feature folder)")
    root = Path(data.root)
    if data.source == "official":
        sets = load_official_features(root)
        classes = sorted({c for s in sets.values() for c in s.class_names()})
        unseen = None if data.unseen == "test" else resolve_unseen(data.unseen, classes, data.unseen_count,
                                                                     data.split_seed)
        split = split_official(sets, unseen, f"official features {root}")
        return split, {"features": f"precomputed ({root})"}, None
    if data.source == "plain":
        sets = load_plain_features(root)
        classes = sorted(set(sets["sketch"].class_names()) | set(sets["image"].class_names()))
        unseen = resolve_unseen(data.unseen, classes, data.unseen_count, data.split_seed)
        split = split_zero_shot(sets["sketch"], sets["image"], unseen, f"plain features {root}")
        return split, {"features": f"precomputed ({root})"}, None
    photos, sketches = scan_sketchy_folder(root)
    classes = sorted(set(photos.classes.tolist()) | set(sketches.classes.tolist()))
    unseen = resolve_unseen(data.unseen, classes, data.unseen_count, data.split_seed)
    sketch, photo, info, extractor = image_features(root, photos, sketches, unseen, config.feature_net, log=log,
                                                    device=torch_device(config.train.accelerator))
    info["features"] = f"{info['description']} on raw images ({root}); pretrained: {info['pretrained']}"
    return split_zero_shot(sketch, photo, unseen, f"Sketchy images {root}"), info, extractor


# ------------------------------------------------------------------------------------------------- IIAE
def training_steps(config: ZSConfig, split: ZeroShotSplit) -> int:
    """train.steps, or train.epochs x ceil(training sketches / seen classes)."""
    if config.train.steps > 0:
        return config.train.steps
    return config.train.epochs * math.ceil(len(split.train_sketch) / len(split.seen))


def experiment_config(config: ZSConfig, split: ZeroShotSplit) -> ExperimentConfig:
    """The run's IIAE as the engine trains it: the ``mlp`` architecture at the data's feature size, the loss, and
    one optimiser step per class-level batch (one (sketch, photo) pair per seen class)."""
    steps = training_steps(config, split)
    train = TrainConfig(steps=steps, batch_size=len(split.seen), learning_rate=config.train.learning_rate,
                        adam_beta1=config.train.adam_beta1, adam_beta2=config.train.adam_beta2,
                        seed=config.train.seed, accelerator=config.train.accelerator,
                        log_every=min(config.train.log_every, steps), checkpoint_every=config.train.checkpoint_every,
                        keep_checkpoints=config.train.keep_checkpoints, select_every=0, channels_last=False)
    return ExperimentConfig(name=config.name, model=config.model.model_config(split.feature_dim), loss=config.loss,
                            train=train, paper={})  # fmt: skip


def zs_job(config: ZSConfig, split: ZeroShotSplit, info: dict, extractor: FeatureExtractor | None) -> Job:
    """The run pipeline's :class:`iiae.runs.runner.Job` of a zero-shot IIAE run: class-level batches of the seen
    classes, the input standardisation fitted on them, mAP / P@K on the unseen classes."""
    batches = ClassPairBatches(split.train_sketch.features, split.train_sketch.classes, split.train_image.features,
                               split.train_image.classes, batches_per_epoch=math.ceil(len(split.train_sketch)
                                                                                       / len(split.seen)),
                               seed=config.train.seed)  # fmt: skip

    def prepare(model: IIAE) -> None:
        model.fit_standardisation(split.train_sketch.features, split.train_image.features)  # seen classes only

    return Job(
        experiment=experiment_config(config, split), config=config,
        data_module=ClassPairDataModule(batches, config.train.seed), prepare=prepare,
        finish=lambda model, out_dir, facts: finish_run(model, config, split, info, extractor, out_dir, facts),
        report=lambda metrics, out_dir: write_zs_report(config, metrics, out_dir),
        resume_command="iiae zs-sbir train --resume",
    )


def train_iiae(config: ZSConfig, split: ZeroShotSplit, out_dir: Path, progress: bool = False) -> IIAE:
    """Train (and evaluate) an IIAE on ``split`` through the run pipeline in the new folder ``out_dir``; returns
    the trained model (for benchmarks that compare many settings on one split)."""
    check_output_dir(Path(out_dir))
    with RunLock(Path(out_dir), new_run=True):
        execute(zs_job(config, split, {}, None), Path(out_dir), progress, None)
    return IIAE.from_pretrained(Path(out_dir) / MODEL_DIR)


# ----------------------------------------------------------------------------------------- evaluation
def embed_test(model: nn.Module, split: ZeroShotSplit, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Sketch codes (r^x means) and photo codes (r^y means) of the unseen-class test sets."""
    model.eval()

    @torch.no_grad()
    def run(encode, features: np.ndarray) -> np.ndarray:  # noqa: ANN001
        parts = [encode(torch.as_tensor(features[i : i + batch_size])) for i in range(0, len(features), batch_size)]
        return torch.cat(parts).numpy()

    return run(model.encode_shared_x, split.test_sketch.features), run(model.encode_shared_y, split.test_image.features)


def evaluate_model(model: nn.Module, split: ZeroShotSplit, config: ZSConfig) -> dict:
    return evaluate_codes(*embed_test(model, split), split, config)


def evaluate_codes(sketch_codes: np.ndarray, photo_codes: np.ndarray, split: ZeroShotSplit, config: ZSConfig
                   ) -> dict:
    """mAP@all, P@K and mAP@K of the unseen-class test codes."""
    return retrieval_metrics(sketch_codes, split.test_sketch.classes, photo_codes, split.test_image.classes,
                             ks=config.evaluation.ks)


def run_zs_sbir(config: ZSConfig, out_dir: str | Path, progress: bool = False, log=print,  # noqa: ANN001
                resume: bool = False) -> dict:
    """Train (IIAE or the supervised baseline), evaluate on the unseen classes, write the run folder.

    The IIAE trains through the run pipeline (:func:`iiae.runs.runner.execute`: atomic checkpoints, exact resume,
    SIGTERM, NaN guard, run lock); ``resume``: ``out_dir`` is such a run to continue from its newest checkpoint.
    """
    config.validate()
    check_accelerator(config.train.accelerator)
    out_dir = Path(out_dir)
    if resume and config.method != "iiae":
        raise ConfigError("--resume continues IIAE runs; the supervised baseline trains in seconds: start it again")
    if not resume:
        check_output_dir(out_dir)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    split, info, extractor = build_split(config, log=log)  # every data error before the folder exists
    log(f"training {config.method} on {len(split.seen)} seen classes ({len(split.train_sketch)} sketches, "
        f"{len(split.train_image)} photos); testing on {len(split.unseen)} unseen classes")
    if config.method == "supervised":
        with RunLock(out_dir, new_run=True):
            save_config(config, out_dir / CONFIG)
            started = time.perf_counter()
            model = train_supervised(config, split)
            facts: SupervisedFacts = {"training_seconds": round(time.perf_counter() - started, 1),
                                      "steps": config.baseline.steps}
            save_supervised(model, config, split, out_dir / MODEL_DIR)
            metrics = finish_run(model, config, split, info, extractor, out_dir, facts)
            atomic_write_json(out_dir / METRICS, metrics)
            write_zs_report(config, metrics, out_dir)
            return metrics
    job = zs_job(config, split, info, extractor)
    checkpoint_path = resumable_checkpoint(out_dir, job.experiment) if resume else None
    with RunLock(out_dir, new_run=not resume):  # a second run on this folder refuses, even one started meanwhile
        metrics = execute(job, out_dir, progress, checkpoint_path)
    assert metrics is not None  # one process: it evaluates
    return metrics


def finish_run(model: nn.Module, config: ZSConfig, split: ZeroShotSplit, info: dict,
               extractor: FeatureExtractor | None, out_dir: Path, facts: TrainingFacts | SupervisedFacts
               ) -> dict:  # fmt: skip
    """Evaluate the trained model on the unseen classes, save the feature extractor and the figure; returns the
    run's metrics.json contents (:class:`iiae.runs.metrics.ZeroShotRunMetrics`; ``facts``: what training
    reported)."""
    if extractor is not None:  # before metrics.json, which marks a complete run folder
        save_model_folder(out_dir / FEATURE_EXTRACTOR_DIR, extractor.save)
    sketch_codes, photo_codes = embed_test(model, split)
    metrics = {
        "experiment": config.name, "method": config.method, "lambda": config.loss.lambda_, "seed": config.train.seed,
        "retrieval": evaluate_codes(sketch_codes, photo_codes, split, config), "paper": config.paper, **facts,
        "seen_classes": len(split.seen), "unseen_classes": split.unseen, "source": split.source,
        "train_sketches": len(split.train_sketch), "train_photos": len(split.train_image),
        "test_sketches": len(split.test_sketch), "test_photos": len(split.test_image),
        "feature_dim": split.feature_dim, "feature_stage": {k: v for k, v in info.items() if k != "trained_on_classes"},
        "feature_extractor": None if extractor is None else f"{FEATURE_EXTRACTOR_DIR}/",
        "run_dir": str(out_dir),
    }
    figure = save_retrieval_figure(sketch_codes, photo_codes, split, config, out_dir / RETRIEVALS_FIGURE)
    metrics["figure"] = None if figure is None else figure.name
    return metrics
