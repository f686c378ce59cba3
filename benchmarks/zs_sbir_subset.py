"""Zero-shot SBIR on the real Sketchy subset (125 classes x 25 photos + 25 sketches, 128x128): IIAE, IIAE with
lambda = 0, and a supervised embedding baseline, on the same features and the same seeded split of 25 unseen
classes; several seeds. Not comparable with the paper's Sketchy Extended numbers (far less data, a small CNN
trained here on the 100 seen classes instead of ImageNet VGG-16 features).

    python benchmarks/zs_sbir_subset.py --data-root ../shared/data/sketchy_subset_128 --seeds 0 1 2
    IIAE_SHARED_DATA=../shared/data python benchmarks/zs_sbir_subset.py --json zs_subset.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from iiae.zsbir.config import load_zs_config
from iiae.zsbir.metrics import retrieval_metrics
from iiae.zsbir.train import build_split, evaluate_model, train_iiae, train_supervised, training_steps

MEASURES = ("map_all", "precision_at_100", "precision_at_200", "map_at_200")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="the sketchy_subset_128 folder [$IIAE_SHARED_DATA/sketchy_subset_128]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 25 unseen classes")
    parser.add_argument("--steps", type=int, default=0, help="IIAE batches (0: the config's 10 epochs)")
    parser.add_argument("--cache-dir", help="feature cache [$IIAE_CACHE/zs_features]")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("--photo-input", choices=["rgb", "edges"], default="edges", help="photos to the small CNN")
    parser.add_argument("--feature-epochs", type=int, default=20, help="epochs of the small CNN")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on a shared CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = args.data_root or (Path(os.environ["IIAE_SHARED_DATA"]) / "sketchy_subset_128"
                              if "IIAE_SHARED_DATA" in os.environ else None)
    if root is None or not Path(root).is_dir():
        print("zs_sbir_subset: no data; pass --data-root or set IIAE_SHARED_DATA", file=sys.stderr)
        return 2
    config = load_zs_config("zs_sketchy")
    config.data = replace(config.data, root=str(root), unseen="seeded", unseen_count=25, split_seed=args.split_seed)
    config.feature_net = replace(config.feature_net, cache_dir=args.cache_dir, photo_input=args.photo_input,
                                 epochs=args.feature_epochs)
    if args.steps:
        config.train = replace(config.train, steps=args.steps)

    started = time.perf_counter()
    split, info = build_split(config)
    feature_seconds = time.perf_counter() - started
    print(f"features: {info['features']} ({feature_seconds:.0f} s); unseen: {', '.join(split.unseen)}")

    methods = {
        "IIAE": lambda cfg: train_iiae(cfg, split, Path(tempfile.mkdtemp(prefix="zs-iiae-"))),
        "IIAE, lambda = 0": lambda cfg: train_iiae(replace(cfg, loss=replace(cfg.loss, lambda_=0.0)), split,
                                                    Path(tempfile.mkdtemp(prefix="zs-iiae0-"))),
        "supervised embedding": lambda cfg: train_supervised(cfg, split),
    }
    results: dict[str, list[dict]] = {name: [] for name in methods}
    for seed in args.seeds:
        seeded = replace(config, train=replace(config.train, seed=seed))
        for name, train in methods.items():
            tick = time.perf_counter()
            retrieval = evaluate_model(train(seeded), split, seeded)
            retrieval["seconds"] = round(time.perf_counter() - tick, 1)
            results[name].append(retrieval)
            print(f"seed {seed} {name:22s} " + " ".join(f"{m}={retrieval[m]:.4f}" for m in MEASURES))

    raw = retrieval_metrics(split.test_sketch.features, split.test_sketch.classes, split.test_image.features,
                            split.test_image.classes, ks=config.evaluation.ks)
    results["features only (cosine, no training)"] = [raw]
    print("\n| method | " + " | ".join(MEASURES) + " |\n|---|" + "---:|" * len(MEASURES))
    for name, runs in results.items():
        cells = []
        for measure in MEASURES:
            values = [run[measure] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "seeds": args.seeds,
        "split_seed": args.split_seed, "unseen": split.unseen, "features": info["features"],
        "feature_seconds": round(feature_seconds, 1), "iiae_steps": training_steps(config, split),
        "baseline_steps": config.baseline.steps, "test_sketches": len(split.test_sketch),
        "test_photos": len(split.test_image), "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
