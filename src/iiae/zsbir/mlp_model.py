"""The IIAE of the paper's zero-shot sketch-based image retrieval: every encoder and decoder an MLP on feature vectors.

X = sketch features, Y = photo features. Encoders q(z^x|x), q(z^y|y), r^x(z^s|x), r^y(z^s|y) are
``input -> 512 -> 256 -> 2 * 64`` (BatchNorm + LeakyReLU 0.2 between layers), split into a 64-d mean and
log-variance; the joint q(z^s|x,y) takes the first hidden layers of r^x and r^y, concatenated
(2 x 512 -> 512 -> 2 * 64); decoders p(x|z^x,z^s), p(y|z^y,z^s) are ``(z^s, z^x) -> 128 -> input`` with a
linear output. The loss is :func:`iiae.objective.iiae_loss` (``loss.reconstruction``: a Gaussian likelihood
summed over feature dimensions by default; the paper's recipe uses the mean squared error).
Retrieval embeds sketches with the mean of r^x and photos with the mean of r^y.

Features are standardised inside the model (``MLPModelConfig.standardise``): :meth:`MLPIIAE.fit_standardisation`
sets a per-dimension shift and scale from the training features, stored as buffers in the model file, so that
encoders, reconstructions and the retrieval of new features all see the same scale. Reconstructions are in the
standardised space (:meth:`MLPIIAE.standardise` gives the matching targets).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from iiae.config import _build
from iiae.errors import CheckpointError, ConfigError
from iiae.model import IIAEOutput
from iiae.objective import Gaussian, Posteriors, split_gaussian
from iiae.zsbir.config import MLPModelConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KIND = "zs_sbir_mlp_iiae"


def _block(inputs: int, outputs: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, outputs), nn.BatchNorm1d(outputs), nn.LeakyReLU(slope))


class MLPEncoder(nn.Module):
    """input -> hidden layers (BN + LeakyReLU) -> 2 * code_dim; ``first_hidden`` feeds the joint encoder."""

    def __init__(self, config: MLPModelConfig) -> None:
        super().__init__()
        widths = [config.input_dim, *config.hidden_dims]
        self.first = _block(widths[0], widths[1], config.negative_slope)
        self.rest = nn.Sequential(*[_block(a, b, config.negative_slope) for a, b in zip(widths[1:-1], widths[2:])])
        self.out = nn.Linear(widths[-1], 2 * config.code_dim)

    def first_hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.first(inputs)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.rest(hidden))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.first_hidden(inputs))


class MLPDecoder(nn.Module):
    """(z^s, z^exclusive) -> decoder_hidden_dim (BN + LeakyReLU) -> input_dim, linear output."""

    def __init__(self, config: MLPModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _block(2 * config.code_dim, config.decoder_hidden_dim, config.negative_slope),
            nn.Linear(config.decoder_hidden_dim, config.input_dim),
        )

    def forward(self, exclusive: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([shared, exclusive], dim=1))


class MLPIIAE(nn.Module):
    """IIAE on feature vectors of two domains (sketch X, photo Y)."""

    def __init__(self, config: MLPModelConfig) -> None:
        super().__init__()
        self.config = config
        self.exclusive_encoder_x = MLPEncoder(config)  # q(z^x | x)
        self.exclusive_encoder_y = MLPEncoder(config)  # q(z^y | y)
        self.shared_encoder_x = MLPEncoder(config)  # r^x(z^s | x)
        self.shared_encoder_y = MLPEncoder(config)  # r^y(z^s | y)
        self.joint_shared_head = nn.Sequential(  # q(z^s | x, y) from the first hidden layers of r^x and r^y
            _block(2 * config.hidden_dims[0], config.joint_hidden_dim, config.negative_slope),
            nn.Linear(config.joint_hidden_dim, 2 * config.code_dim),
        )
        self.decoder_x = MLPDecoder(config)  # p(x | z^x, z^s)
        self.decoder_y = MLPDecoder(config)  # p(y | z^y, z^s)
        if config.standardise != "none":  # (x - shift) / scale per feature dimension, set by fit_standardisation
            for name in ("x", "y"):
                self.register_buffer(f"shift_{name}", torch.zeros(config.input_dim))
                self.register_buffer(f"scale_{name}", torch.ones(config.input_dim))

    @torch.no_grad()
    def fit_standardisation(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        """Set the shift and scale from training features of X [N, D] and Y [M, D] (no-op for ``none``)."""
        if self.config.standardise == "none":
            return
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        for name, features in (("x", x), ("y", y)):
            if len(features) < 2:
                raise ConfigError(f"standardisation needs at least 2 training features of domain {name}")
        sources = {"x": x, "y": y} if self.config.standardise == "per_domain" else {"x": torch.cat([x, y])}
        sources.setdefault("y", sources["x"])  # shared: one mean and std for both domains
        for name, features in sources.items():
            # a dimension that never varies (e.g. a dead ReLU) keeps scale 1 instead of blowing up
            scale = features.std(dim=0)
            getattr(self, f"shift_{name}").copy_(features.mean(dim=0))
            getattr(self, f"scale_{name}").copy_(torch.where(scale > 1e-6, scale, torch.ones_like(scale)))

    def standardise(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of both domains in the model's standardised space (the reconstruction targets)."""
        return self.standardise_x(x), self.standardise_y(y)

    def standardise_x(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.config.standardise == "none" else (x - self.shift_x) / self.scale_x

    def standardise_y(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.config.standardise == "none" else (y - self.shift_y) / self.scale_y

    def _gaussian(self, parameters: torch.Tensor) -> Gaussian:
        return split_gaussian(parameters, self.config.logvar_max)

    def posteriors(self, x: torch.Tensor, y: torch.Tensor) -> Posteriors:
        """The five posteriors of raw (unstandardised) features x, y."""
        x, y = self.standardise(x, y)
        hidden_x = self.shared_encoder_x.first_hidden(x)
        hidden_y = self.shared_encoder_y.first_hidden(y)
        return Posteriors(
            exclusive_x=self._gaussian(self.exclusive_encoder_x(x)),
            exclusive_y=self._gaussian(self.exclusive_encoder_y(y)),
            shared_x=self._gaussian(self.shared_encoder_x.head(hidden_x)),
            shared_y=self._gaussian(self.shared_encoder_y.head(hidden_y)),
            shared_joint=self._gaussian(self.joint_shared_head(torch.cat([hidden_x, hidden_y], dim=1))),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor, sample: bool = True) -> IIAEOutput:
        """Posteriors and (standardised) reconstructions of both domains from z^s ~ q(z^s|x,y) (means when
        ``sample`` is False); compare them with :meth:`standardise` of x, y."""
        posteriors = self.posteriors(x, y)

        def draw(gaussian: Gaussian) -> torch.Tensor:
            return gaussian.sample() if sample else gaussian.mean

        shared = draw(posteriors.shared_joint)
        return IIAEOutput(
            posteriors=posteriors,
            reconstruction_x=self.decoder_x(draw(posteriors.exclusive_x), shared),
            reconstruction_y=self.decoder_y(draw(posteriors.exclusive_y), shared),
        )

    @torch.no_grad()
    def encode_shared_x(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of r^x(z^s | x): the retrieval code of a sketch."""
        return self._gaussian(self.shared_encoder_x(self.standardise_x(x))).mean

    @torch.no_grad()
    def encode_shared_y(self, y: torch.Tensor) -> torch.Tensor:
        """Mean of r^y(z^s | y): the retrieval code of a photo."""
        return self._gaussian(self.shared_encoder_y(self.standardise_y(y))).mean

    # ------------------------------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | Path) -> Path:
        return save_module(self, asdict(self.config), folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> MLPIIAE:
        values = read_module_config(folder, KIND)
        if isinstance(values, dict):  # files written before standardisation existed hold unstandardised models
            values.setdefault("standardise", "none")
        config = _build(MLPModelConfig, values, "model")
        return load_module_weights(cls(config), folder)


def save_module(module: nn.Module, config: dict, folder: str | Path, kind: str = KIND) -> Path:
    """``model.safetensors`` + ``config.json`` (kind and sizes); nothing is ever pickled."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"kind": kind, "model": config}, indent=2), encoding="utf-8")
    return folder


def read_module_config(folder: str | Path, kind: str) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"model file {path} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a model config: {error}") from None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {meta.get('kind') if isinstance(meta, dict) else '?'} model, "
                              f"expected {kind}")
    return meta["model"]


def load_module_weights(module: nn.Module, folder: str | Path) -> nn.Module:
    path = Path(folder) / WEIGHTS_FILE
    try:
        state = load_file(str(path))
        module.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError, ConfigError) as error:
        raise CheckpointError(f"{path} does not fit the model config: {str(error).splitlines()[0]}") from None
    return module.eval()
