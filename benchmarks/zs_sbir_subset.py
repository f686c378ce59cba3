"""Zero-shot SBIR on the real Sketchy subset (125 classes x 25 photos + 25 sketches, 128x128): every method on the
same features and the same unseen classes, several seeds, for one or more splits.

Methods: features only (cosine on the raw features, and on features standardised per domain with statistics of
the seen classes), the supervised embedding (cross-entropy over the seen classes), IIAE with lambda = 0, IIAE with
the paper's recipe (``zs_sketchy_paper``) and IIAE with this project's recipe (``zs_sketchy``). Settings were
chosen on a validation split of the seen classes (``benchmarks/zs_sbir_ablations.py``), never on these unseen
classes. Not comparable with the paper's Sketchy Extended numbers (1/30 of the data, other features).

    python benchmarks/zs_sbir_subset.py --data-root ../shared/data/sketchy_subset_128 \\
        --unseen seeded sem_pcyc_25 yelamarthi_21 --seeds 0 1 2 --jobs 2 --json zs_subset.json
    python benchmarks/zs_sbir_subset.py ... --fine-tune-blocks 3      # backbone fine-tuned on each split's seen classes
    python benchmarks/zs_sbir_subset.py ... --write-features FOLDER   # frozen features in the plain layout
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from shared_data import (
    data_folder,  # this folder is on sys.path when a benchmark script runs
)
from zs_sbir_ablations import (
    features_only,  # this folder is on sys.path when a benchmark script runs
)

from iiae.zsbir.config import ZSConfig, load_zs_config
from iiae.zsbir.features import ZeroShotSplit
from iiae.zsbir.metrics import retrieval_metrics
from iiae.zsbir.train import (
    build_split,
    evaluate_model,
    train_iiae,
    train_supervised,
    training_steps,
)

MEASURES = ("map_all", "precision_at_100", "precision_at_200", "map_at_200")
IIAE = "IIAE (zs_sketchy)"
LAMBDA0_FITTED = "IIAE, lambda = 0, r^x/r^y fitted"
COMPARED = ("features only, standardised", "supervised embedding", LAMBDA0_FITTED, "IIAE, lambda = 0")


def _quiet(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def train_and_score(method: str, config: ZSConfig, split: ZeroShotSplit, threads: int) -> dict:
    """Train one method with one seed and score it on the unseen classes (runs in a worker process)."""
    _quiet(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zs-subset-") as folder:
        model = train_supervised(config, split) if method == "supervised embedding" else \
            train_iiae(config, split, Path(folder))
        result = evaluate_model(model, split, config)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def method_configs(base: ZSConfig, paper: ZSConfig) -> dict[str, ZSConfig]:
    """lambda = 0 alone leaves r^x, r^y untrained (the --set loss.lambda_=0 ablation); the fitted variant trains
    them on the detached joint posterior (loss.r_fit_weight = 1), the fair "no interaction information" baseline."""
    return {"supervised embedding": base, "IIAE, lambda = 0": replace(base, loss=replace(base.loss, lambda_=0.0)),
            LAMBDA0_FITTED: replace(base, loss=replace(base.loss, lambda_=0.0, r_fit_weight=1.0)),
            "IIAE (paper recipe, zs_sketchy_paper)": paper, IIAE: base}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for measure in MEASURES:
        values = [run[measure] for run in runs]
        out[measure] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}
    return out


def margin(ours: dict, other: dict) -> float:
    """(mean_ours - mean_other) / sqrt(std_ours^2 + std_other^2): the difference in its own standard deviations."""
    spread = math.hypot(ours["std"], other["std"])
    difference = ours["mean"] - other["mean"]
    return math.copysign(math.inf, difference) if spread == 0 else difference / spread


def run_split(args, unseen: str, pool: ProcessPoolExecutor) -> dict:
    base, paper = load_zs_config("zs_sketchy"), load_zs_config("zs_sketchy_paper")
    data = replace(base.data, root=str(args.features or args.data_root), source="plain" if args.features else "images",
                   unseen=unseen, unseen_count=25, split_seed=args.split_seed)
    feature_net = replace(base.feature_net, cache_dir=args.cache_dir, fine_tune_blocks=args.fine_tune_blocks)
    base = replace(base, data=data, feature_net=feature_net)
    paper = replace(paper, data=data, feature_net=feature_net)
    started = time.perf_counter()
    split, info, _ = build_split(base)
    feature_seconds = time.perf_counter() - started
    print(f"\n## {unseen}: {len(split.seen)} seen / {len(split.unseen)} unseen classes; features: "
          f"{info['features']} ({feature_seconds:.0f} s)", flush=True)
    if args.write_features:
        folder = Path(args.write_features) / unseen
        folder.mkdir(parents=True, exist_ok=True)
        for name, train, test in (("sketch", split.train_sketch, split.test_sketch),
                                  ("image", split.train_image, split.test_image)):
            np.savez(folder / f"{name}.npz", features=np.concatenate([train.features, test.features]),
                     labels=np.concatenate([train.classes, test.classes]))
    results: dict[str, list[dict]] = {}
    ks = base.evaluation.ks
    results["features only, raw"] = [retrieval_metrics(split.test_sketch.features, split.test_sketch.classes,
                                                       split.test_image.features, split.test_image.classes, ks=ks)]
    results["features only, standardised"] = [features_only(split, base)]  # the model's per-domain standardisation
    jobs = {}
    for name, config in method_configs(base, paper).items():
        for seed in args.seeds:
            seeded = replace(config, train=replace(config.train, seed=seed))
            jobs[name, seed] = pool.submit(train_and_score, name, seeded, split, args.threads)
    for (name, seed), job in jobs.items():
        results.setdefault(name, []).append(job.result())
    summary = {name: summarise(runs) for name, runs in results.items()}
    print("| method | " + " | ".join(MEASURES) + " |\n|---|" + "---:|" * len(MEASURES))
    for name, measures in summary.items():
        cells = [f"{m['mean']:.3f} ± {m['std']:.3f}" for m in measures.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    margins = {other: round(margin(summary[IIAE]["map_all"], summary[other]["map_all"]), 2) for other in COMPARED}
    print("IIAE's mAP@all margin over " + ", ".join(f"{k}: {v} sd" for k, v in margins.items()), flush=True)
    return {"unseen": split.unseen, "features": info["features"], "feature_seconds": round(feature_seconds, 1),
            "feature_stage": {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool))},
            "iiae_steps": training_steps(base, split), "test_sketches": len(split.test_sketch),
            "test_photos": len(split.test_image), "summary": summary, "margins_map_all": margins, "runs": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", help="the sketchy_subset_128 folder [$IIAE_SHARED_DATA/sketchy_subset_128]")
    parser.add_argument("--unseen", nargs="+", default=["seeded"], help="splits: seeded, sem_pcyc_25, yelamarthi_21")
    parser.add_argument("--features", help="use these plain-layout features instead of the images' feature stage")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the 25 unseen classes of 'seeded'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fine-tune-blocks", type=int, default=0, help="fine-tune the backbone's last N blocks")
    parser.add_argument("--cache-dir", help="feature cache [$IIAE_CACHE_DIR/zs_features]")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the seeds and methods")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--write-features", help="also write each split's features here (plain layout)")
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args(argv)
    _quiet(args.threads)
    args.data_root = data_folder(args.data_root, "sketchy_subset_128")
    if not args.features and args.data_root is None:
        print("zs_sbir_subset: no data; pass --data-root or set IIAE_SHARED_DATA", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        splits = {unseen: run_split(args, unseen, pool) for unseen in args.unseen}
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "machine": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": args.threads, "jobs": args.jobs, "seeds": args.seeds,
        "split_seed": args.split_seed, "fine_tune_blocks": args.fine_tune_blocks,
        "minutes": round((time.perf_counter() - started) / 60, 1), "splits": splits,
    }
    print(f"total: {summary['minutes']} min")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
