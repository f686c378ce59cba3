"""Zero-shot SBIR runs: data -> (feature stage) -> MLP IIAE or supervised baseline -> retrieval on unseen classes.

Run folder::

    config.yaml      the exact config
    model/           model.safetensors + config.json (MLP IIAE or supervised embedding)
    feature_extractor/  the image -> feature network (raw-image data; ``iiae zs-sbir retrieve`` embeds new files)
    logs/metrics.csv loss terms (IIAE)
    metrics.json     mAP@all, P@K, mAP@K on the unseen classes, the split, the feature stage used
    retrievals.png   top-5 photos of a few unseen-class sketches (raw-image data), report.md
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from iiae.config import LossConfig
from iiae.objective import iiae_loss
from iiae.runner import check_output_dir
from iiae.distributed import check_accelerator, lightning_accelerator
from iiae.zsbir.config import ZSConfig, save_zs_config
from iiae.zsbir.feature_extractor import FeatureExtractor
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
from iiae.zsbir.mlp_model import MLPIIAE, load_module_weights, read_module_config, save_module
from iiae.zsbir.report import save_retrieval_figure, write_zs_report
from iiae.zsbir.sampler import ClassPairBatches

BASELINE_KIND = "zs_sbir_supervised_embedding"


# ------------------------------------------------------------------------------------------------- data
EXTRACTOR_DIR = "feature_extractor"  # the run's image -> feature network (raw-image data only)


def build_split(config: ZSConfig, log=print) -> tuple[ZeroShotSplit, dict, FeatureExtractor | None]:
    """The seen/unseen split of the configured data, a description of the features used, and the feature
    extractor that embedded the images (None for precomputed features: data.source official or plain)."""
    from iiae.errors import DataError

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
    from iiae.zsbir.feature_net import image_features, torch_device

    photos, sketches = scan_sketchy_folder(root)
    classes = sorted(set(photos.classes.tolist()) | set(sketches.classes.tolist()))
    unseen = resolve_unseen(data.unseen, classes, data.unseen_count, data.split_seed)
    sketch, photo, info, extractor = image_features(root, photos, sketches, unseen, config.feature_net, log=log,
                                                    device=torch_device(config.train.accelerator))
    info["features"] = f"{info['description']} on raw images ({root}); pretrained: {info['pretrained']}"
    return split_zero_shot(sketch, photo, unseen, f"Sketchy images {root}"), info, extractor


# ------------------------------------------------------------------------------------------------- IIAE
class MLPIIAELightning(L.LightningModule):
    """Optimises :func:`iiae.objective.iiae_loss` for the MLP IIAE on class-level (sketch, photo) batches."""

    def __init__(self, model: MLPIIAE, loss: LossConfig, config: ZSConfig) -> None:
        super().__init__()
        self.model, self.loss_config, self.train_config = model, loss, config.train

    def training_step(self, batch, batch_index: int) -> torch.Tensor:
        x, y = batch  # x: sketch features, y: photo features
        output = self.model(x, y, sample=True)
        target_x, target_y = self.model.standardise(x, y)  # reconstructions live in the standardised space
        terms = iiae_loss(target_x, target_y, output.reconstruction_x, output.reconstruction_y, output.posteriors,
                          self.loss_config, step=self.global_step)
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()})
        return terms["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        train = self.train_config
        return torch.optim.Adam(self.model.parameters(), lr=train.learning_rate,
                                betas=(train.adam_beta1, train.adam_beta2))


def training_steps(config: ZSConfig, split: ZeroShotSplit) -> int:
    """train.steps, or train.epochs x ceil(training sketches / seen classes)."""
    if config.train.steps > 0:
        return config.train.steps
    return config.train.epochs * math.ceil(len(split.train_sketch) / len(split.seen))


def train_iiae(config: ZSConfig, split: ZeroShotSplit, out_dir: Path, progress: bool = False) -> MLPIIAE:
    L.seed_everything(config.train.seed, verbose=False)
    model = MLPIIAE(replace(config.model, input_dim=split.feature_dim))
    model.fit_standardisation(split.train_sketch.features, split.train_image.features)  # seen classes only
    steps = training_steps(config, split)
    batches = ClassPairBatches(split.train_sketch.features, split.train_sketch.classes, split.train_image.features,
                               split.train_image.classes, batches_per_epoch=steps, seed=config.train.seed)
    trainer = L.Trainer(
        max_steps=steps, max_epochs=-1, accelerator=lightning_accelerator(config.train.accelerator), devices=1,
        logger=CSVLogger(out_dir, name="", version="logs"), log_every_n_steps=min(config.train.log_every, steps),
        enable_progress_bar=progress, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=out_dir,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*IterableDataset.*has `__len__` defined.*")
        trainer.fit(MLPIIAELightning(model, config.loss, config), DataLoader(batches, batch_size=None))
    return model.cpu().eval()


# ------------------------------------------------------------------------------------------- baseline
class SupervisedEmbedding(nn.Module):
    """One MLP for sketches and photos (input -> hidden -> embedding) and a linear classifier over seen classes."""

    def __init__(self, input_dim: int, hidden_dim: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                   nn.Linear(hidden_dim, embedding_dim))
        self.classify = nn.Linear(embedding_dim, num_classes)

    @torch.no_grad()
    def encode_shared_x(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    encode_shared_y = encode_shared_x


def train_supervised(config: ZSConfig, split: ZeroShotSplit) -> SupervisedEmbedding:
    """Cross-entropy over seen classes on sketch and photo features together, Adam, ``baseline.steps`` batches."""
    torch.manual_seed(config.train.seed)
    b = config.baseline
    model = SupervisedEmbedding(split.feature_dim, b.hidden_dim, b.embedding_dim, len(split.seen))
    features = torch.cat([torch.as_tensor(split.train_sketch.features), torch.as_tensor(split.train_image.features)])
    index = {name: i for i, name in enumerate(split.seen)}
    labels = torch.as_tensor([index[c] for c in np.concatenate([split.train_sketch.classes,
                                                                split.train_image.classes]).tolist()])
    generator = torch.Generator().manual_seed(config.train.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=b.learning_rate)
    model.train()
    for _ in range(b.steps):
        rows = torch.randint(len(labels), (min(b.batch_size, len(labels)),), generator=generator)
        loss = nn.functional.cross_entropy(model.classify(model.embed(features[rows])), labels[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


# ----------------------------------------------------------------------------------------- evaluation
def embed_test(model: nn.Module, split: ZeroShotSplit, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Sketch codes (r^x means) and photo codes (r^y means) of the unseen-class test sets."""
    model.eval()

    def run(encode, features: np.ndarray) -> np.ndarray:
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


def save_model(model: nn.Module, config: ZSConfig, split: ZeroShotSplit, folder: Path) -> None:
    if isinstance(model, MLPIIAE):
        model.save_pretrained(folder)
    else:
        sizes = {"input_dim": split.feature_dim, "hidden_dim": config.baseline.hidden_dim,
                 "embedding_dim": config.baseline.embedding_dim, "num_classes": len(split.seen)}
        save_module(model, sizes, folder, kind=BASELINE_KIND)


def load_model(folder: Path) -> nn.Module:
    path = folder / "config.json"
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if isinstance(meta, dict) and meta.get("kind") == BASELINE_KIND:
        return load_module_weights(SupervisedEmbedding(**read_module_config(folder, BASELINE_KIND)), folder)
    return MLPIIAE.from_pretrained(folder)


def run_zs_sbir(config: ZSConfig, out_dir: str | Path, progress: bool = False, log=print) -> dict:
    """Train (IIAE or the supervised baseline), evaluate on the unseen classes, write the run folder."""
    config.validate()
    check_accelerator(config.train.accelerator)
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    split, info, extractor = build_split(config, log=log)  # every data error before the folder exists
    out_dir.mkdir(parents=True, exist_ok=True)
    save_zs_config(config, out_dir / "config.yaml")
    log(f"training {config.method} on {len(split.seen)} seen classes ({len(split.train_sketch)} sketches, "
        f"{len(split.train_image)} photos); testing on {len(split.unseen)} unseen classes")
    started = time.perf_counter()
    model = train_iiae(config, split, out_dir, progress) if config.method == "iiae" else train_supervised(config, split)
    seconds = time.perf_counter() - started
    save_model(model, config, split, out_dir / "model")
    if extractor is not None:  # before metrics.json, which marks a complete run folder
        extractor.save(out_dir / EXTRACTOR_DIR)
    sketch_codes, photo_codes = embed_test(model, split)
    retrieval = evaluate_codes(sketch_codes, photo_codes, split, config)
    metrics = {
        "experiment": config.name, "method": config.method, "lambda": config.loss.lambda_, "seed": config.train.seed,
        "retrieval": retrieval, "paper": config.paper, "training_seconds": round(seconds, 1),
        "steps": training_steps(config, split) if config.method == "iiae" else config.baseline.steps,
        "seen_classes": len(split.seen), "unseen_classes": split.unseen, "source": split.source,
        "train_sketches": len(split.train_sketch), "train_photos": len(split.train_image),
        "test_sketches": len(split.test_sketch), "test_photos": len(split.test_image),
        "feature_dim": split.feature_dim, "feature_stage": {k: v for k, v in info.items() if k != "trained_on_classes"},
        "feature_extractor": None if extractor is None else f"{EXTRACTOR_DIR}/",
        "run_dir": str(out_dir),
    }
    figure = save_retrieval_figure(sketch_codes, photo_codes, split, config, out_dir / "retrievals.png")
    metrics["figure"] = None if figure is None else figure.name
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    write_zs_report(config, metrics, out_dir)
    return metrics
