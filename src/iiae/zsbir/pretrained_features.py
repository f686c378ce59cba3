"""EfficientNet-Lite0 (ImageNet) as the feature stage: frozen, or its top blocks fine-tuned on the SEEN classes.

Frozen (``feature_net.fine_tune_blocks: 0``): the 1280-d pooled features of the ImageNet network, the same for
every split, so cached once for all of them.

Fine-tuned (``fine_tune_blocks: N`` > 0): the last N MBConv blocks and the head convolution + batch norm are
trained with cross-entropy over the seen classes, on seen-class sketches and photos together, through a new
linear classifier (dropout 0.2) on the pooled feature. Cheap on a CPU: the frozen part below the tuned blocks
runs once per seen-class image and once for its horizontal flip (:func:`frozen_activations`, held in memory as
float16), and the training steps run only the top (:func:`train_tuned_blocks`). Batch norm in the tuned part
stays frozen (eval mode: ImageNet running statistics, only its scale and shift learn): with batches of mixed
sketches and photos, updated statistics would be an average of two very different domains and would differ
between training (batch statistics) and embedding (running statistics), and a few thousand images are too few
to re-estimate them. Unseen-class images are never shown to the training (AssertionError otherwise); afterwards
every image, seen and unseen, is embedded with the tuned network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from iiae.zsbir.config import FeatureNetConfig
from iiae.zsbir.efficientnet import (
    FEATURE_DIM,
    NUM_BLOCKS,
    WEIGHTS_SHA256,
    EfficientNetLite0,
    fold_batch_norm,
    load_efficientnet_lite0,
)
from iiae.zsbir.features import ImageList
from iiae.zsbir.image_pipeline import Domain, Preprocessing, image_batches

PRETRAINED_IMAGE_SIZE = 224  # the resolution EfficientNet-Lite0 was trained at
CLASSIFIER_LR_FACTOR = 10.0  # the new classifier starts from scratch: 10x the tuned blocks' learning rate
DROPOUT, LABEL_SMOOTHING = 0.2, 0.1
# part of the cache key of fine-tuned features: change it whenever the recipe below changes
FINE_TUNE_RECIPE = "flips, frozen BN, dropout 0.2, label smoothing 0.1, AdamW wd 1e-4, cosine, classifier lr x10"


def load_pretrained_backbone(expected_sha256: str = WEIGHTS_SHA256) -> EfficientNetLite0:
    """The ImageNet EfficientNet-Lite0 of the weight package, its file checked against ``expected_sha256``."""
    return load_efficientnet_lite0(expected_sha256=expected_sha256)


def tuned_prefixes(blocks: int) -> tuple[str, ...]:
    """State-dict name prefixes of the fine-tuned part: the last ``blocks`` MBConv blocks and the head conv + BN."""
    return tuple(f"_blocks.{index}." for index in range(NUM_BLOCKS - blocks, NUM_BLOCKS)) + ("_conv_head.", "_bn1.")


def tuned_state(network: EfficientNetLite0, blocks: int) -> dict[str, torch.Tensor]:
    """The tensors (parameters and batch-norm buffers) of the fine-tuned part."""
    prefixes = tuned_prefixes(blocks)
    return {name: tensor for name, tensor in network.state_dict().items() if name.startswith(prefixes)}


def seen_images(photos: ImageList, sketches: ImageList, unseen: list[str]
                ) -> list[tuple[list[Path], np.ndarray, Domain]]:
    """(paths, classes, domain) of the seen-class photos and sketches: the only images fine-tuning may use."""
    groups = []
    for images, domain in ((photos, "photo"), (sketches, "sketch")):
        keep = ~np.isin(images.classes, np.asarray(sorted(unseen), dtype=str))
        groups.append(([path for path, kept in zip(images.paths, keep) if kept], images.classes[keep], domain))
    return groups


@torch.inference_mode()
def frozen_activations(network: EfficientNetLite0, groups: Sequence[tuple[Sequence[Path], Domain]],
                       preprocessing: Preprocessing, start_block: int, flips: bool = True, workers: int = 0,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """float16 [views, N, C, h, w] inputs of block ``start_block`` for every image of ``groups`` in order (view 0:
    the image, view 1: its horizontal flip when ``flips``), computed once by the frozen, BN-folded lower part."""
    lower = fold_batch_norm(network).to(device, memory_format=torch.channels_last)
    count = sum(len(paths) for paths, _ in groups)
    out: torch.Tensor | None = None
    row = 0
    for paths, domain in groups:
        for pixels in image_batches(paths, preprocessing, domain, 64, workers):
            for view, batch in enumerate([pixels, pixels.flip(-1)] if flips else [pixels]):
                inputs = preprocessing.normalise(batch.to(device)).contiguous(memory_format=torch.channels_last)
                hidden = lower.run_blocks(lower.stem(inputs), 0, start_block).half().cpu()
                if out is None:
                    with torch.inference_mode(False):  # a normal tensor: training reads it with autograd on
                        out = torch.empty((2 if flips else 1, count, *hidden.shape[1:]), dtype=torch.float16)
                out[view, row : row + len(hidden)] = hidden
            row += len(pixels)
    if out is None:
        raise ValueError("no seen-class image to fine-tune on")
    return out


def train_tuned_blocks(network: EfficientNetLite0, activations: torch.Tensor, classes: np.ndarray,
                       unseen: list[str], config: FeatureNetConfig, device: str | torch.device = "cpu"
                       ) -> tuple[EfficientNetLite0, list[str]]:
    """Fine-tune the last ``config.fine_tune_blocks`` blocks + head on ``activations`` ([views, N, C, h, w], the
    inputs of the first tuned block) of images of ``classes``; returns the network (eval mode, on the CPU) and
    the classes it was trained on.

    Raises AssertionError if any row belongs to an unseen class: the zero-shot protocol forbids it.
    """
    trained_on = sorted(set(classes.tolist()))
    leaked = sorted(set(trained_on) & set(unseen))
    if leaked:
        raise AssertionError(f"feature network would see unseen classes {leaked[:5]}: zero-shot protocol broken")
    if activations.shape[1] != len(classes):
        raise ValueError(f"{activations.shape[1]} activation rows for {len(classes)} class labels")
    blocks, start = config.fine_tune_blocks, NUM_BLOCKS - config.fine_tune_blocks
    index = {name: i for i, name in enumerate(trained_on)}
    labels = torch.as_tensor([index[name] for name in classes.tolist()])
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    network = network.to(device).eval()  # batch norm stays in eval mode throughout (module docstring)
    tuned = _select_tuned_parameters(network, blocks)
    classifier = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(FEATURE_DIM, len(trained_on))).to(device)
    optimiser = torch.optim.AdamW([{"params": tuned, "lr": config.fine_tune_learning_rate},
                                   {"params": classifier.parameters(),
                                    "lr": config.fine_tune_learning_rate * CLASSIFIER_LR_FACTOR}], weight_decay=1e-4)
    steps = config.fine_tune_epochs * math.ceil(len(labels) / config.fine_tune_batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    classifier.train()
    for _ in range(config.fine_tune_epochs):
        order = torch.randperm(len(labels), generator=generator)
        views = torch.randint(len(activations), (len(labels),), generator=generator)  # image or its flip
        for first in range(0, len(order), config.fine_tune_batch_size):
            rows = order[first : first + config.fine_tune_batch_size]
            if len(rows) < 2:
                continue
            hidden = activations[views[rows], rows].to(device).float().contiguous(memory_format=torch.channels_last)
            logits = classifier(network.head(network.run_blocks(hidden, start)))
            loss = nn.functional.cross_entropy(logits, labels[rows].to(device), label_smoothing=LABEL_SMOOTHING)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    network.requires_grad_(False)
    return network.cpu().eval(), trained_on


def _select_tuned_parameters(network: EfficientNetLite0, blocks: int) -> list[nn.Parameter]:
    """Freeze everything but the last ``blocks`` blocks and the head conv + BN; their parameters, to train."""
    network.requires_grad_(False)
    prefixes = tuned_prefixes(blocks)
    tuned = [parameter for name, parameter in network.named_parameters() if name.startswith(prefixes)]
    for parameter in tuned:
        parameter.requires_grad_(True)
    return tuned


def fine_tune_efficientnet(network: EfficientNetLite0, photos: ImageList, sketches: ImageList, unseen: list[str],
                           config: FeatureNetConfig, preprocessing: Preprocessing, device: str | torch.device = "cpu",
                           workers: int = 0, log: Callable[[str], None] = print
                           ) -> tuple[EfficientNetLite0, list[str]]:
    """The network with its top ``config.fine_tune_blocks`` blocks fine-tuned on the seen classes (module doc)."""
    groups = seen_images(photos, sketches, unseen)
    classes = np.concatenate([group_classes for _, group_classes, _ in groups])
    start = NUM_BLOCKS - config.fine_tune_blocks
    log(f"features: computing the frozen blocks 0-{start - 1} for {len(classes)} seen-class images and their "
        "flips")
    activations = frozen_activations(network, [(paths, domain) for paths, _, domain in groups], preprocessing,
                                     start, flips=True, workers=workers, device=device)
    megabytes = activations.numel() * activations.element_size() / 2**20
    log(f"features: fine-tuning blocks {start}-{NUM_BLOCKS - 1} + head on {len(classes)} seen-class images "
        f"({megabytes:.0f} MiB of activations), {config.fine_tune_epochs} epochs")
    return train_tuned_blocks(network, activations, classes, unseen, config, device)
