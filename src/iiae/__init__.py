"""iiae: the Interaction Information Auto-Encoder (Hwang, Kim, Hong and Kim, NeurIPS 2020) in PyTorch.

Public API::

    from iiae import IIAE, ExperimentConfig, ModelConfig, LossConfig, iiae_loss
"""

from iiae.core.config import (
    DataConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from iiae.core.model import IIAE, IIAEOutput
from iiae.core.objective import (
    Gaussian,
    Posteriors,
    iiae_loss,
    kl_between,
    kl_to_standard_normal,
)
from iiae.errors import CheckpointError, ConfigError, DataError, IIAEError, OutputError
from iiae.version import __version__

__all__ = [
    "IIAE",
    "IIAEOutput",
    "ExperimentConfig",
    "ModelConfig",
    "LossConfig",
    "DataConfig",
    "TrainConfig",
    "load_config",
    "iiae_loss",
    "kl_between",
    "kl_to_standard_normal",
    "Gaussian",
    "Posteriors",
    "IIAEError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "OutputError",
    "__version__",
]
