"""The supervised embedding baseline of the zero-shot experiment: one MLP for sketch and photo features, trained
with cross-entropy over the seen classes; retrieval compares the embeddings by cosine.

Its model folder: ``model.safetensors`` + ``config.json`` (``{"kind": KIND, "model": {sizes}}``); nothing pickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from iiae.atomic import atomic_folder, atomic_write_json
from iiae.core.model import IIAE
from iiae.errors import CheckpointError
from iiae.readers import load_safetensors, parse_json, quote, read_bytes
from iiae.zsbir.config import ZSConfig
from iiae.zsbir.features import ZeroShotSplit

MAX_CONFIG_BYTES = 1 << 20
KIND = "zs_sbir_supervised_embedding"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


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


# ------------------------------------------------------------------------------------------- save / load
def save_supervised(model: SupervisedEmbedding, config: ZSConfig, split: ZeroShotSplit, folder: str | Path) -> Path:
    """Write the embedding's model folder (it appears whole or not at all)."""
    sizes = {"input_dim": split.feature_dim, "hidden_dim": config.baseline.hidden_dim,
             "embedding_dim": config.baseline.embedding_dim, "num_classes": len(split.seen)}
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_folder(folder) as staging:
        save_file(state, str(staging / WEIGHTS_FILE))
        atomic_write_json(staging / CONFIG_FILE, {"kind": KIND, "model": sizes})
    return Path(folder)


def _description(folder: Path) -> dict | None:
    path = folder / CONFIG_FILE
    try:
        meta = parse_json(read_bytes(path, MAX_CONFIG_BYTES, "model file", CheckpointError), str(path), CheckpointError)
    except CheckpointError:
        return None
    return meta if isinstance(meta, dict) else None


def is_supervised_model(folder: str | Path) -> bool:
    """Whether ``folder`` holds a supervised embedding (not an IIAE)."""
    meta = _description(Path(folder))
    return meta is not None and meta.get("kind") == KIND


def load_supervised(folder: str | Path) -> SupervisedEmbedding:
    """The embedding of :func:`save_supervised`; CheckpointError naming the file when it does not fit."""
    folder = Path(folder)
    meta = _description(folder)
    if meta is None or meta.get("kind") != KIND or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a supervised embedding's config ({KIND})")
    path = folder / WEIGHTS_FILE
    try:
        with torch.device("meta"):  # shapes only: absurd sizes in the config allocate nothing
            model = SupervisedEmbedding(**meta["model"])
    except (RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CONFIG_FILE} does not describe a model: {quote(str(error))[1:-1]}") from None
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    tensors = load_safetensors(path, expected, "model file", CheckpointError)  # checked before a tensor is read
    model.load_state_dict(tensors, assign=True)
    return model.eval()


def load_model(folder: Path) -> nn.Module:
    """An IIAE (also one saved before it was the ``mlp`` architecture of :class:`iiae.IIAE`) or the supervised
    embedding, from a run's model folder."""
    return load_supervised(folder) if is_supervised_model(folder) else IIAE.from_pretrained(folder)
