"""The IIAE model: five encoders, two decoders, and the public API for codes and translation.

One class for images and for feature vectors (``model.architecture: mlp``, zero-shot SBIR, where the inputs are
standardised inside the model: :meth:`IIAE.fit_standardisation`). Pure PyTorch (no training engine here).
Typical use::

    from iiae import IIAE
    model = IIAE.from_pretrained("runs/mnist_cdcb/model")
    shared = model.encode_shared_x(x)          # r^x(z^s | x) mean, for retrieval
    y_fake = model.translate_x_to_y(x)         # z^y drawn from the prior
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from iiae.core.config import ModelConfig, _build
from iiae.core.networks import build_networks
from iiae.core.objective import Gaussian, Posteriors, split_gaussian
from iiae.errors import CheckpointError, ConfigError, OutputError
from iiae.readers import load_safetensors, parse_json, quote, read_bytes
from iiae.version import __version__

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_MODEL_CONFIG_BYTES = 1 << 20  # a model's config.json is about 1 kB
# Model folders of zero-shot SBIR runs written before the feature-vector model became the ``mlp`` architecture of
# this class: config.json holds {"kind": LEGACY_FEATURE_MODEL_KIND, "model": {<MLP sizes>}}, the same tensor names.
LEGACY_FEATURE_MODEL_KIND = "zs_sbir_mlp_iiae"


def legacy_feature_model_config(values: dict) -> ModelConfig:
    """The ``mlp`` ModelConfig of an old zero-shot SBIR model file (code_dim was the size of z^s, z^x and z^y;
    files from before standardisation existed hold unstandardised models)."""
    if not isinstance(values, dict):
        raise ConfigError(f"model must be a mapping of sizes, got {type(values).__name__}")
    values = dict(values)
    code_dim = values.pop("code_dim", 64)
    values.setdefault("standardise", "none")
    return _build(ModelConfig, {**values, "architecture": "mlp", "exclusive_dim": code_dim,
                                "shared_channels": code_dim}, "model")  # fmt: skip


def check_state_dict(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming the first tensor of ``expected`` that ``state`` lacks or holds with another shape
    or dtype, or the first tensor ``state`` has beyond ``expected``; ``source`` names the file in the message."""
    for name, tensor in expected.items():
        if name not in state:
            raise CheckpointError(f"{source}: tensor {name} is missing (a different model?)")
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(state[name].shape)} and dtype "
                f"{state[name].dtype}, the config expects {tuple(tensor.shape)} and {tensor.dtype}"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensor {unexpected[0]} (a different model?)")


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """CheckpointError naming the first floating-point tensor of ``state`` with a NaN or Inf value; ``source``
    names the file in the message."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: tensor {name} holds NaN or Inf values")


def check_finite_codes(codes: torch.Tensor | np.ndarray, source: str) -> torch.Tensor | np.ndarray:
    """``codes`` (features or latent codes a trained network computed) when every value is finite; else a
    CheckpointError naming ``source``: finite weights can still compute NaN (a negative batch-norm variance in a
    tampered file), and a ranking of NaN is a silent wrong result."""
    finite = bool(torch.isfinite(codes).all()) if isinstance(codes, torch.Tensor) else bool(np.isfinite(codes).all())
    if not finite:
        raise CheckpointError(f"{source} computes NaN or infinite values from these images: its weights are damaged "
                              "(e.g. a negative batch-norm variance); retrain or export it again")  # fmt: skip
    return codes


def training_memory(config: ModelConfig, batch_size: int) -> tuple[int, int]:
    """(parameters, bytes) one training step of ``config`` at ``batch_size`` needs, about: float32 weights,
    gradients and Adam's two moments (16 bytes per parameter) and every layer's output kept for the backward
    pass, twice (the outputs and their gradients). Measured by a forward pass on the meta device: nothing is
    allocated. ConfigError when the sizes do not even fit PyTorch's size arithmetic."""
    try:
        with torch.device("meta"):
            model = IIAE(config)
            outputs: list[int] = []
            for module in model.modules():
                if not list(module.children()):
                    module.register_forward_hook(
                        lambda _module, _inputs, output: outputs.append(output.numel())
                        if isinstance(output, torch.Tensor) else None
                    )  # fmt: skip
            if config.architecture == "mlp":
                x = y = torch.empty(batch_size, config.input_dim)
            else:
                x = torch.empty(batch_size, config.x_channels, config.image_size, config.image_size)
                y = torch.empty(batch_size, config.y_channels, config.image_size, config.image_size)
            model(x, y, sample=False)
    except RuntimeError as error:  # "Storage size calculation overflowed ...": sizes beyond any machine
        raise ConfigError(f"the model's sizes overflow PyTorch's size arithmetic ({str(error).splitlines()[0]}); "
                          "reduce model.image_size or the widths") from None  # fmt: skip
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return parameters, 16 * parameters + 2 * 4 * sum(outputs)


@dataclass
class IIAEOutput:
    """What one training forward pass produces: the posteriors and the two reconstructions."""

    posteriors: Posteriors
    reconstruction_x: torch.Tensor  # p(x | z^x, z^s) with z^x ~ q(z^x|x), z^s ~ q(z^s|x,y)
    reconstruction_y: torch.Tensor  # p(y | z^y, z^s) with z^y ~ q(z^y|y), z^s ~ q(z^s|x,y)


class IIAE(nn.Module):
    """Interaction Information Auto-Encoder for paired images (or feature vectors) of two domains X and Y."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        networks = build_networks(config)  # config.architecture picks the builder (networks.ARCHITECTURES)
        self.exclusive_encoder_x = networks.exclusive_encoder_x  # q(z^x | x)
        self.exclusive_encoder_y = networks.exclusive_encoder_y  # q(z^y | y)
        self.shared_encoder_x = networks.shared_encoder_x  # r^x(z^s | x)
        self.shared_encoder_y = networks.shared_encoder_y  # r^y(z^s | y)
        self.joint_shared_head = networks.joint_shared_head  # q(z^s | x, y)
        self.decoder_x = networks.decoder_x  # p(x | z^x, z^s)
        self.decoder_y = networks.decoder_y  # p(y | z^y, z^s)
        if config.standardise != "none":  # (x - shift) / scale per input dimension, set by fit_standardisation
            for domain in ("x", "y"):
                self.register_buffer(f"shift_{domain}", torch.zeros(config.input_dim))
                self.register_buffer(f"scale_{domain}", torch.ones(config.input_dim))

    # ---------------------------------------------------------------------------------------- standardisation
    @torch.no_grad()
    def fit_standardisation(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        """Set the input shift and scale from training inputs of X [N, D] and Y [M, D] (``model.standardise``:
        per_domain, or one mean and std for both domains with shared; nothing to do for none)."""
        if self.config.standardise == "none":
            return
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        for domain, features in (("x", x), ("y", y)):
            if len(features) < 2:
                raise ConfigError(f"standardisation needs at least 2 training inputs of domain {domain}")
        if self.config.standardise == "per_domain":
            sources = {"x": x, "y": y}
        else:
            both = torch.cat([x, y])
            sources = {"x": both, "y": both}
        for domain, features in sources.items():
            # a dimension that never varies (e.g. a dead ReLU) keeps scale 1 instead of blowing up
            scale = features.std(dim=0)
            getattr(self, f"shift_{domain}").copy_(features.mean(dim=0))
            getattr(self, f"scale_{domain}").copy_(torch.where(scale > 1e-6, scale, torch.ones_like(scale)))

    def standardise_x(self, x: torch.Tensor) -> torch.Tensor:
        """x as the encoders see it and as the reconstruction of x is compared with (x itself for images)."""
        return x if self.config.standardise == "none" else (x - self.shift_x) / self.scale_x

    def standardise_y(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.config.standardise == "none" else (y - self.shift_y) / self.scale_y

    def standardise(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both domains in the model's input space: the reconstruction targets of :func:`iiae.iiae_loss`."""
        return self.standardise_x(x), self.standardise_y(y)

    # ----------------------------------------------------------------------------------------------- posteriors
    def _gaussian(self, parameters: torch.Tensor) -> Gaussian:
        return split_gaussian(parameters, self.config.logvar_max)

    def posteriors(self, x: torch.Tensor, y: torch.Tensor) -> Posteriors:
        """All five posteriors of a batch of pairs."""
        x, y = self.standardise(x, y)
        features_x = self.shared_encoder_x(x)
        features_y = self.shared_encoder_y(y)
        return Posteriors(
            exclusive_x=self._gaussian(self.exclusive_encoder_x(x)),
            exclusive_y=self._gaussian(self.exclusive_encoder_y(y)),
            shared_x=self._gaussian(self.shared_encoder_x.head(features_x)),
            shared_y=self._gaussian(self.shared_encoder_y.head(features_y)),
            shared_joint=self._gaussian(self.joint_shared_head(features_x, features_y)),
        )

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> IIAEOutput:
        """Encode a batch of pairs and reconstruct both domains from z^s of the joint encoder (in the
        standardised space of :meth:`standardise` for feature vectors).

        ``sample=True`` (training) uses reparameterised samples, ``sample=False`` the posterior means. ``shard``:
        (rank, processes) when the batch is one process's block of a global batch (see Gaussian.sample).
        """
        posteriors = self.posteriors(x, y)

        def draw(gaussian: Gaussian) -> torch.Tensor:
            return gaussian.sample(generator, shard) if sample else gaussian.mean

        shared = draw(posteriors.shared_joint)
        return IIAEOutput(
            posteriors=posteriors,
            reconstruction_x=self.decoder_x(draw(posteriors.exclusive_x), shared),
            reconstruction_y=self.decoder_y(draw(posteriors.exclusive_y), shared),
        )

    # ------------------------------------------------------------------------------------------ public codes
    def _finite(self, values: torch.Tensor, part: str) -> torch.Tensor:
        """``values`` a trained model computed, checked finite outside training (:func:`check_finite_codes`: finite
        weights can still compute NaN, e.g. a negative batch-norm variance or weights near the float32 limit);
        training has its own guard (iiae.engine.guards)."""
        return values if self.training else check_finite_codes(values, f"the model's {part}")

    def encode_shared_x(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of r^x(z^s | x): the shared code of a domain-X image (shape [N, C, s, s]; flat architectures
        [N, shared_channels])."""
        features = self.shared_encoder_x(self.standardise_x(x))
        return self._finite(self._gaussian(self.shared_encoder_x.head(features)).mean, "shared encoder r^x")

    def encode_shared_y(self, y: torch.Tensor) -> torch.Tensor:
        """Mean of r^y(z^s | y): the shared code of a domain-Y image."""
        features = self.shared_encoder_y(self.standardise_y(y))
        return self._finite(self._gaussian(self.shared_encoder_y.head(features)).mean, "shared encoder r^y")

    def encode_exclusive_x(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of q(z^x | x): what only domain X holds (shape [N, exclusive_dim])."""
        return self._finite(self._gaussian(self.exclusive_encoder_x(self.standardise_x(x))).mean, "encoder q(z^x|x)")

    def encode_exclusive_y(self, y: torch.Tensor) -> torch.Tensor:
        """Mean of q(z^y | y)."""
        return self._finite(self._gaussian(self.exclusive_encoder_y(self.standardise_y(y))).mean, "encoder q(z^y|y)")

    def decode_x(self, exclusive_x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z^x, z^s): an image in [-1, 1] (mlp: standardised features)."""
        return self._finite(self.decoder_x(exclusive_x, shared), "decoder p(x|z^x,z^s)")

    def decode_y(self, exclusive_y: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """Mean of p(y | z^y, z^s): an image in [-1, 1] (mlp: standardised features)."""
        return self._finite(self.decoder_y(exclusive_y, shared), "decoder p(y|z^y,z^s)")

    def sample_exclusive(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` exclusive codes drawn from the prior N(0, I)."""
        device = next(self.parameters()).device
        return torch.randn(count, self.config.exclusive_dim, generator=generator, device=device)

    def translate_x_to_y(
        self, x: torch.Tensor, exclusive_y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Domain-Y images with the shared content of ``x``; z^y from the prior when ``exclusive_y`` is None."""
        if exclusive_y is None:
            exclusive_y = self.sample_exclusive(x.shape[0], generator)
        return self.decode_y(exclusive_y, self.encode_shared_x(x))

    def translate_y_to_x(
        self, y: torch.Tensor, exclusive_x: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Domain-X images with the shared content of ``y``; z^x from the prior when ``exclusive_x`` is None."""
        if exclusive_x is None:
            exclusive_x = self.sample_exclusive(y.shape[0], generator)
        return self.decode_x(exclusive_x, self.encode_shared_y(y))

    # ------------------------------------------------------------------------------------------ save / load
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``folder``; nothing here is ever unpickled."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        try:
            save_file(state, str(folder / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        except SafetensorError as error:  # e.g. a full disk: safetensors reports it as its own error
            raise OutputError(f"cannot write {folder / WEIGHTS_FILE}: {str(error).splitlines()[0]}") from None
        meta = {"format_version": FORMAT_VERSION, "iiae_version": __version__, "model": asdict(self.config)}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> IIAE:
        """Load a model written by :meth:`save_pretrained`, checking every tensor against the config."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.exists():
                raise CheckpointError(f"model file {path} is missing; expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        meta = parse_json(read_bytes(config_path, MAX_MODEL_CONFIG_BYTES, "model file", CheckpointError),
                          f"model file {config_path}", CheckpointError)  # fmt: skip
        try:
            if isinstance(meta, dict) and meta.get("kind") == LEGACY_FEATURE_MODEL_KIND:
                config = legacy_feature_model_config(meta["model"])
            elif meta.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"{config_path}: format_version {quote(meta.get('format_version'))}, expected {FORMAT_VERSION}"
                )
            else:
                config = _build(ModelConfig, meta["model"], "model")
            config.validate()
        except (KeyError, TypeError, AttributeError, ConfigError) as error:
            raise CheckpointError(f"{config_path} is not an iiae model config: {quote(str(error))[1:-1]}") from None
        try:
            with torch.device("meta"):  # shapes only: an absurd config allocates nothing before the check below
                model = cls(config)
        except RuntimeError as error:  # sizes that overflow even PyTorch's size arithmetic
            raise CheckpointError(f"{config_path}: the model's sizes are impossible ({str(error).splitlines()[0]})"
                                  ) from None  # fmt: skip
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        # the header (names, shapes, offsets against the file size) is checked before a tensor is read
        state = load_safetensors(weights_path, expected, "model file", CheckpointError, device=str(map_location))
        check_state_dict(state, model.state_dict(), str(weights_path))
        check_finite(state, str(weights_path))
        model.load_state_dict(state, assign=True)
        return model.eval()
