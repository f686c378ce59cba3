"""Several processes (Lightning DDP, torchrun, SLURM): which process this is, and batch norm over the global batch.

``iiae train --devices N --num-nodes M`` trains one model in N x M processes. ``train.batch_size`` stays the
global batch; each process trains on its block of it (:class:`iiae.engine.resume.EpochShuffleSampler`), draws the
sampling noise of its rows of the global batch (:meth:`iiae.core.objective.Gaussian.sample`), and normalises with
the statistics of the whole global batch (:class:`GlobalBatchNorm`), so that N processes compute the gradient a
single process computes on the global batch (up to the order of float additions). Only process 0 writes files.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import nn
from torch.distributed.nn.functional import all_reduce

from iiae.errors import ConfigError

# torch 2.13 marks it deprecated in favour of a private module; it is the differentiable all-reduce needed here
warnings.filterwarnings("ignore", message=r".*torch\.distributed\.nn\.functional\.all_reduce is deprecated.*")


def lightning_accelerator(requested: str) -> str:
    """The Lightning name of a config's accelerator (``cuda`` is Lightning's ``gpu``)."""
    return "gpu" if requested in ("cuda", "gpu") else requested


def check_accelerator(accelerator: str, devices: int = 1) -> None:
    """ConfigError, before anything is written, when GPUs are asked for (``gpu``, or ``auto`` on a CUDA
    machine) and this machine has none or fewer than ``devices``."""
    wants_gpu = lightning_accelerator(accelerator) == "gpu"
    count = torch.cuda.device_count()
    if wants_gpu and count == 0:
        raise ConfigError(
            f"train.accelerator {accelerator}: no CUDA GPU is visible here (torch {torch.__version__}); "
            "use --accelerator cpu (or auto)"
        )
    if (wants_gpu or (accelerator == "auto" and count > 0)) and devices > count:
        raise ConfigError(f"train.devices = {devices} GPUs per node requested, this machine has {count}")


def process_rank(devices: int = 1) -> int:
    """Global rank of this process from the launcher's environment (torchrun, Lightning, SLURM); 0 alone."""
    if "RANK" in os.environ:  # torchrun
        return int(os.environ["RANK"])
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ:  # Lightning's launcher: NODE_RANK per machine,
        node, local = int(os.environ.get("NODE_RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))  # LOCAL_RANK
        return node * devices + local  # for the processes it starts there
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:  # srun, one task per device
        return int(os.environ["SLURM_PROCID"])
    return 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch of all processes, on CPU or GPU.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one all-reduces (differentiably) the per-channel sum,
    then the sum of squared deviations from the global mean, which also works with gloo. Same parameters and
    buffers as ``BatchNorm1d/2d`` (checkpoints are interchangeable); alone or in eval mode it is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        values = input.float()  # statistics in float32, also under bf16 autocast (as batch norm computes them)
        count = all_reduce(torch.tensor(float(values.numel() // values.shape[1]), device=input.device)).detach()
        mean = all_reduce(values.sum(dims)) / count
        centred = values - mean.view(shape)
        variance = all_reduce(centred.square().sum(dims)) / count  # biased, as batch norm normalises
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        output = output.to(input.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(variance.detach() * count / (count - 1).clamp(min=1), momentum)
        return output


def _convert(module: nn.Module, source: type, target: type | None) -> nn.Module:
    """``module`` with every ``source`` layer replaced by ``target`` (None: the class it was converted from)."""
    converted = module
    if isinstance(module, source) and type(module) is not target:
        cls = target or getattr(module, "original_class", nn.BatchNorm2d)
        converted = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        converted.original_class = type(module)
    for name, child in module.named_children():
        converted.add_module(name, _convert(child, source, target))
    return converted


class GlobalBatchNormSync(LayerSync):
    """Lightning plugin: every BatchNorm becomes :class:`GlobalBatchNorm` under DDP (CPU/gloo and GPU alike)."""

    def apply(self, model: nn.Module) -> nn.Module:
        return _convert(model, nn.modules.batchnorm._BatchNorm, GlobalBatchNorm)

    def revert(self, model: nn.Module) -> nn.Module:
        return _convert(model, GlobalBatchNorm, None)
