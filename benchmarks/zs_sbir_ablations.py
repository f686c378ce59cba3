"""Why IIAE falls below its own features in zero-shot SBIR, and which recipe fixes it: ablations measured on a
VALIDATION split of the seen classes, never on the unseen (test) classes.

Protocol: the unseen test classes of ``--unseen`` are removed first; of the remaining seen classes, ``--val-count``
are drawn (``--val-seed``) as validation classes; every variant trains on the other seen classes and is scored by
mAP@all of validation sketches against validation photos (the zero-shot setting, one level down). Each variant is
run for every ``--seeds`` (model seeds; features and splits fixed) and reported as mean ± std.

    python benchmarks/zs_sbir_ablations.py --features FEATURES --json ablations.json
    python benchmarks/zs_sbir_ablations.py --features FEATURES --only paper default lambda0 --seeds 0 1 2

FEATURES is a folder of the ``plain`` layout (sketch.npz, image.npz with ``features`` and ``labels``), e.g. the
frozen EfficientNet-Lite0 features written by ``benchmarks/zs_sbir_subset.py --write-features``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from iiae import IIAE
from iiae.zsbir.config import ZSConfig, load_zs_config
from iiae.zsbir.features import (
    ZeroShotSplit,
    load_plain_features,
    resolve_unseen,
    split_zero_shot,
)
from iiae.zsbir.metrics import retrieval_metrics
from iiae.zsbir.train import evaluate_model, train_iiae, train_supervised

# name -> (method, overrides by config section), relative to the bundled zs_sketchy config (the default recipe:
# standardised features, Gaussian likelihood, no KL annealing, 40 epochs). Round 1 of the search ran around the
# earlier recipe R1 = the default with KL annealing T = 2,000 (variants "r1*"); round 2 around the default.
PAPER = {"loss": {"reconstruction": "mse", "reconstruction_weight": 10.0, "kl_anneal_steps": 2000.0},
         "model": {"standardise": "none"}, "train": {"epochs": 10}}
R1 = {"kl_anneal_steps": 2000.0}
VARIANTS: dict[str, tuple[str, dict]] = {
    "features_raw": ("features", {"model": {"standardise": "none"}}),
    "features_shared_std": ("features", {"model": {"standardise": "shared"}}),
    "features_domain_std": ("features", {"model": {"standardise": "per_domain"}}),
    "supervised": ("supervised", {}),
    # round 1: the paper's recipe, then one change at a time around R1
    "paper": ("iiae", PAPER),
    "paper_1000_steps": ("iiae", {**PAPER, "train": {"epochs": 40}}),
    "paper_domain_std": ("iiae", {**PAPER, "model": {"standardise": "per_domain"}}),
    "r1_mse_w1000": ("iiae", {"loss": {**R1, "reconstruction": "mse", "reconstruction_weight": 1000.0}}),
    "r1": ("iiae", {"loss": R1}),
    "r1_no_std": ("iiae", {"loss": R1, "model": {"standardise": "none"}}),
    "r1_w0.1": ("iiae", {"loss": {**R1, "reconstruction_weight": 0.1}}),
    "r1_w10": ("iiae", {"loss": {**R1, "reconstruction_weight": 10.0}}),
    "r1_lambda0": ("iiae", {"loss": {**R1, "lambda_": 0.0}}),
    "r1_lambda0_fit_r": ("iiae", {"loss": {**R1, "lambda_": 0.0, "r_fit_weight": 1.0}}),
    "r1_lambda4": ("iiae", {"loss": {**R1, "lambda_": 4.0}}),
    "r1_beta1": ("iiae", {"loss": {**R1, "beta": 1.0}}),
    "r1_no_anneal": ("iiae", {}),  # = default
    "r1_anneal500": ("iiae", {"loss": {"kl_anneal_steps": 500.0}}),
    "r1_code128": ("iiae", {"loss": R1, "model": {"code_dim": 128}}),
    "r1_steps250": ("iiae", {"loss": R1, "train": {"epochs": 10}}),
    "r1_steps2000": ("iiae", {"loss": R1, "train": {"epochs": 80}}),
    "r1_lr1e-3": ("iiae", {"loss": R1, "train": {"learning_rate": 1e-3}}),
    # round 2: around the default
    "default": ("iiae", {}),
    "beta1": ("iiae", {"loss": {"beta": 1.0}}),
    "lambda0": ("iiae", {"loss": {"lambda_": 0.0}}),
    "lambda0_fit_r": ("iiae", {"loss": {"lambda_": 0.0, "r_fit_weight": 1.0}}),
    "lambda2": ("iiae", {"loss": {"lambda_": 2.0}}),
    "w0.5": ("iiae", {"loss": {"reconstruction_weight": 0.5}}),
    "code128": ("iiae", {"model": {"code_dim": 128}}),
    "steps500": ("iiae", {"train": {"epochs": 20}}),
    "steps2000": ("iiae", {"train": {"epochs": 80}}),
}


def validation_split(features_root: Path, unseen_spec: str, split_seed: int, val_count: int, val_seed: int
                     ) -> tuple[ZeroShotSplit, list[str]]:
    """Train on seen classes minus ``val_count`` validation classes, test on those; the unseen classes unused."""
    sets = load_plain_features(features_root)
    classes = sorted(set(sets["sketch"].class_names()) | set(sets["image"].class_names()))
    unseen = resolve_unseen(unseen_spec, classes, 25, split_seed)
    seen = [name for name in classes if name not in set(unseen)]
    validation = resolve_unseen("seeded", seen, val_count, val_seed)
    split = split_zero_shot(sets["sketch"].restrict(seen), sets["image"].restrict(seen), validation,
                            f"validation classes of {features_root}")
    assert not set(split.seen) & set(unseen) and not set(validation) & set(unseen)  # unseen classes untouched
    return split, unseen


def configure(base: ZSConfig, overrides: dict, seed: int) -> ZSConfig:
    sections = {name: replace(getattr(base, name), **values) for name, values in overrides.items()}
    config = replace(base, **sections)
    return replace(config, train=replace(config.train, seed=seed))


def features_only(split: ZeroShotSplit, config: ZSConfig) -> dict:
    """Cosine retrieval on the features, standardised as ``config.model.standardise`` (fitted on training rows)."""
    model = IIAE(config.model.model_config(split.feature_dim))
    model.fit_standardisation(split.train_sketch.features, split.train_image.features)
    with torch.no_grad():
        sketch = model.standardise_x(torch.as_tensor(split.test_sketch.features))
        photo = model.standardise_y(torch.as_tensor(split.test_image.features))
    return retrieval_metrics(sketch, split.test_sketch.classes, photo, split.test_image.classes,
                             ks=config.evaluation.ks)


def active_units(model, split: ZeroShotSplit, threshold: float = 0.01) -> dict[str, int]:
    """Latent dimensions whose posterior mean varies across validation inputs (variance > ``threshold``, as in
    Burda et al. 2016): a code collapsed to the prior has none, whatever its size."""
    with torch.no_grad():
        sketches = torch.as_tensor(split.test_sketch.features)
        photos = torch.as_tensor(split.test_image.features)
        count = min(len(sketches), len(photos))
        posteriors = model.posteriors(sketches[:count], photos[:count])
    return {name: int((getattr(posteriors, name).mean.var(dim=0) > threshold).sum())
            for name in ("shared_x", "shared_y", "exclusive_x", "exclusive_y")}


def run_variant(method: str, split: ZeroShotSplit, config: ZSConfig) -> dict:
    if method == "features":
        return features_only(split, config)
    with tempfile.TemporaryDirectory(prefix="zs-ablation-") as folder:
        model = train_iiae(config, split, Path(folder)) if method == "iiae" else train_supervised(config, split)
        result = evaluate_model(model, split, config)
    if method == "iiae":
        result["active_units"] = active_units(model, split)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="plain-layout feature folder (sketch.npz, image.npz)")
    parser.add_argument("--unseen", default="seeded", help="test classes to leave out: seeded, sem_pcyc_25, ...")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--val-count", type=int, default=20, help="validation classes drawn from the seen ones")
    parser.add_argument("--val-seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run [all]")
    parser.add_argument("--steps", type=int, help="override train.steps of every IIAE variant (quick checks)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="append one JSON line per variant to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    split, unseen = validation_split(Path(args.features), args.unseen, args.split_seed, args.val_count,
                                     args.val_seed)
    print(f"validation: train on {len(split.seen)} seen classes, score on {len(split.unseen)} validation classes "
          f"({', '.join(split.unseen)}); {len(unseen)} test classes left out", flush=True)
    base = load_zs_config("zs_sketchy")
    print("| variant | method | mAP@all (validation) | P@100 | active units r^x / q(z^x) | seconds |\n"
          "|---|---|---:|---:|---:|---:|", flush=True)
    for name in args.only or list(VARIANTS):
        method, overrides = VARIANTS[name]
        runs = []
        for seed in args.seeds if method != "features" else args.seeds[:1]:
            config = configure(base, overrides, seed)
            if args.steps and method == "iiae":
                config = replace(config, train=replace(config.train, steps=args.steps))
            started = time.perf_counter()
            result = run_variant(method, split, config)
            result["seconds"] = round(time.perf_counter() - started, 1)
            runs.append(result)
        maps = [run["map_all"] for run in runs]
        precision = [run["precision_at_100"] for run in runs]
        spread = statistics.stdev(maps) if len(maps) > 1 else 0.0
        active = runs[0].get("active_units", {})
        units = f"{active['shared_x']} / {active['exclusive_x']}" if active else "-"
        print(f"| {name} | {method} | {statistics.mean(maps):.3f} ± {spread:.3f} | {statistics.mean(precision):.3f} "
              f"| {units} | {sum(run['seconds'] for run in runs):.0f} |", flush=True)
        if args.json:
            record = {"variant": name, "method": method, "overrides": overrides, "seeds": args.seeds,
                      "unseen": args.unseen, "split_seed": args.split_seed, "validation_classes": split.unseen,
                      "map_all": maps, "precision_at_100": precision, "runs": runs}
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
