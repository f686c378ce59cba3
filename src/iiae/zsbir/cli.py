"""``iiae zs-sbir train|evaluate|retrieve``: zero-shot sketch-based image retrieval (hooked into :mod:`iiae.cli.main`).

    iiae zs-sbir train --data-root ../shared/data/sketchy_subset_128 --unseen seeded --out runs/zs
    iiae zs-sbir train --config zs_sketchy_yelamarthi --data-source official --data-root FEATURES --out runs/zs21
    iiae zs-sbir train --method supervised ... ; --set loss.lambda_=0 for the lambda = 0 ablation
    iiae zs-sbir evaluate runs/zs [--json out.json]
    iiae zs-sbir retrieve runs/zs --query my_sketch.png --gallery photos/ [--top 10] [--out retrieval.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iiae.atomic import atomic_write_json
from iiae.core.config import apply_overrides, refuse_overrides_of
from iiae.errors import CheckpointError, ConfigError, OutputError
from iiae.outputs import add_command_inputs, check_output
from iiae.readers import quote, read_json_object
from iiae.run_files import CONFIG, FEATURE_EXTRACTOR_DIR, MODEL_DIR


def build_zs_config(args: argparse.Namespace, base=None):
    """Bundled name or YAML (or ``base``), then --set overrides, then the flags; validated once."""
    from iiae.zsbir.config import load_zs_config, zs_config_from_dict

    flags = {("data", "source"): args.data_source, ("data", "root"): args.data_root, ("data", "unseen"): args.unseen,
             ("train", "steps"): args.steps, ("train", "seed"): args.seed, ("method",): args.method,
             ("feature_net", "cache_dir"): args.cache_dir, ("train", "threads"): args.threads}
    return zs_config_from_dict(apply_overrides((base or load_zs_config(args.config)).to_dict(), args.set or [], flags))


def zs_inputs(args: argparse.Namespace, config) -> list[Path]:  # noqa: ANN001
    """The files and folders a zs-sbir command reads besides a run: its --config file, the data root, a file of
    unseen classes and the feature cache. Never written by the command (iiae.outputs.check_output)."""
    paths = [args.config if args.config and Path(args.config).exists() else None, config.data.root,
             config.data.unseen if Path(config.data.unseen).is_file() else None, config.feature_net.cache_dir]
    return [Path(path) for path in paths if path]


def run_inputs(run: Path) -> list[Path]:
    """The parts of a zs-sbir run folder a command reads: its config, model and feature extractor."""
    return [run / CONFIG, run / MODEL_DIR, run / FEATURE_EXTRACTOR_DIR]


def check_retrieval_outputs(args: argparse.Namespace, inputs: list[Path], owner: Path | None,
                            default_cache: Path) -> None:  # fmt: skip
    """``iiae retrieve`` and ``iiae zs-sbir retrieve``: the panel --out and the --cache-dir are none of the inputs
    (the model's or run's files, the query, the gallery) nor inside them."""
    inputs = [*inputs, Path(args.query), Path(args.gallery)]
    add_command_inputs(inputs)
    check_output(args.out, inputs, owner=owner)
    if args.cache_dir is not None:
        check_output(args.cache_dir, inputs, folder=True, what="--cache-dir")
    else:  # where the gallery's codes go by default ($IIAE_CACHE_DIR): never inside the gallery or a run either
        check_output(default_cache, inputs, folder=True, what="the cache folder (--cache-dir, $IIAE_CACHE_DIR)")


def _train(args: argparse.Namespace) -> int:
    from iiae.runs.run_folder import (
        check_resume_config,
        default_run_dir,
        find_run_to_resume,
    )
    from iiae.zsbir.config import RESUMABLE_CHANGES, load_zs_config

    if args.resume is None:
        config = build_zs_config(args)
        out = Path(args.out) if args.out else default_run_dir(config)
    else:  # the run's own config; flags may change only what zsbir.config.RESUMABLE_CHANGES lists
        if args.out is not None:
            raise ConfigError("--resume continues a run in its own folder: give --resume RUN_DIR or --out, not both")
        if args.resume == "auto":
            raise ConfigError("iiae zs-sbir train --resume needs the run folder (auto is for iiae train)")
        out = find_run_to_resume(args.resume, "")
        saved = load_zs_config(out / CONFIG)
        config = build_zs_config(args, base=saved if args.config is None else None)
        check_resume_config(saved, config, out, RESUMABLE_CHANGES)
    check_output(out, zs_inputs(args, config), owner=out if args.resume is not None else None, folder=True,
                 what="--out" if args.resume is None else "--resume")  # fmt: skip
    data_inputs = [path for path in zs_inputs(args, config) if path != Path(config.feature_net.cache_dir or "")]
    add_command_inputs(data_inputs)  # the cache folder (--cache-dir, $IIAE_CACHE_DIR) is never inside the data
    if config.feature_net.cache_dir:
        check_output(config.feature_net.cache_dir, data_inputs, folder=True, what="feature_net.cache_dir (--cache-dir)")
    from iiae.zsbir.report import results_table
    from iiae.zsbir.train import run_zs_sbir

    metrics = run_zs_sbir(config, out, progress=not args.no_progress, resume=args.resume is not None)
    print(results_table(metrics))
    print(f"run folder: {metrics['run_dir']}  (report.md, metrics.json, model/)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from iiae.zsbir.config import load_zs_config

    run = Path(args.run)
    if not (run / CONFIG).is_file() or not (run / MODEL_DIR).is_dir():
        raise CheckpointError(f"{run} is not a zs-sbir run folder (expected config.yaml and model/)")
    try:
        saved = load_zs_config(run / CONFIG) if args.config is None else None
    except ConfigError as error:  # e.g. an image run's folder: its config has other keys
        raise CheckpointError(f"{run} is not a zs-sbir run folder: {error}") from None
    config = build_zs_config(args, base=saved)
    if saved is not None:
        refuse_overrides_of(args.set or [], config, saved, ("model", "feature_net"), f"the run {run}")
    if saved is not None:  # the run's unseen classes: other ones would score classes it trained on as zero-shot
        split_keys = ("unseen", "unseen_count", "split_seed")
        changed = [key for key in split_keys if getattr(config.data, key, None) != getattr(saved.data, key, None)]
        if changed:
            raise ConfigError(f"data.{changed[0]} differs from the run's ({quote(getattr(saved.data, changed[0]))}): "
                              "evaluate scores the unseen classes the run was trained without; other classes "
                              "may be ones it trained on")  # fmt: skip
    existing: dict = {}
    add_command_inputs(run_inputs(run) + [path for path in zs_inputs(args, config)
                                          if path != Path(config.feature_net.cache_dir or "")])  # fmt: skip
    if args.json:
        check_output(args.json, run_inputs(run) + zs_inputs(args, config), owner=run, what="--json")
        try:  # before any work: a file that is not a JSON object is never replaced
            existing = read_json_object(args.json, what="--json file", error=OutputError)
        except OutputError as error:
            raise OutputError(f"{error}: it is kept as it is; choose another --json path") from None
    from iiae.zsbir.baseline import load_model
    from iiae.zsbir.train import build_split, evaluate_model

    if config.train.threads > 0:
        import torch

        torch.set_num_threads(config.train.threads)
    split, _, _ = build_split(config)
    retrieval = evaluate_model(load_model(run / "model"), split, config)
    print(" ".join(f"{name}={value:.4f}" for name, value in retrieval.items() if name.startswith(("map", "prec"))))
    if args.json:  # an existing file keeps its other keys, as with iiae evaluate --json
        try:
            atomic_write_json(args.json, {**existing, "retrieval": retrieval})
        except OSError as error:
            raise OutputError(f"cannot write {args.json}: {error.strerror or error}") from None
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    from iiae.zsbir.retrieve import check_arguments, load_run, retrieve

    check_arguments(args.top, args.query_domain, args.out)  # before the run is loaded
    from iiae.zsbir.feature_net import default_cache_dir

    check_retrieval_outputs(args, run_inputs(Path(args.run)), Path(args.run), default_cache_dir())
    run = load_run(args.run)
    if run.config.train.threads > 0:
        import torch

        torch.set_num_threads(run.config.train.threads)
    result = retrieve(run, args.query, args.gallery, top=args.top, domain=args.query_domain, out=args.out,
                      cache_dir=args.cache_dir, owner=Path(args.run))
    print("\n".join(result.lines()))
    print(f"wrote {result.panel} (the query, then the top {len(result.matches)} of {result.gallery_size})")
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="bundled zs config (zs_sketchy, zs_sketchy_yelamarthi) or YAML file")
    parser.add_argument("--data-source", choices=["images", "official", "plain"], help="raw images or features")
    parser.add_argument("--data-root", help="Sketchy folder (photo/, sketch/) or feature folder")
    parser.add_argument("--unseen", help="sem_pcyc_25, yelamarthi_21, seeded, or a file of unseen classes")
    parser.add_argument("--method", choices=["iiae", "supervised"], help="IIAE or the supervised baseline")
    parser.add_argument("--cache-dir", help="feature cache folder [$IIAE_CACHE_DIR/zs_features]")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, repeatable")
    parser.add_argument("--steps", type=int, help="training batches (overrides train.epochs)")
    parser.add_argument("--seed", type=int, help="random seed of the run")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")


def add_zs_sbir_parser(commands) -> None:
    """Add ``zs-sbir train``, ``zs-sbir evaluate`` and ``zs-sbir retrieve`` to the subcommands of ``iiae``."""
    zs = commands.add_parser("zs-sbir", help="zero-shot sketch-based image retrieval (Sketchy)")
    verbs = zs.add_subparsers(dest="zs_command", required=True)
    train = verbs.add_parser("train", help="train on seen classes, evaluate on unseen ones, write a run folder")
    _flags(train)
    train.add_argument("--out", help="run folder to create [runs/<config>-<time>]")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an IIAE run from its newest checkpoint "
                       "(--steps N trains it further)")
    train.set_defaults(handler=_train)
    evaluate = verbs.add_parser("evaluate", help="mAP@all, P@K, mAP@K of a run on its unseen classes")
    evaluate.add_argument("run", help="run folder of zs-sbir train")
    _flags(evaluate)
    evaluate.add_argument("--json", help="also write the measures to this JSON file")
    evaluate.set_defaults(handler=_evaluate)
    retrieve = verbs.add_parser("retrieve", help="rank a folder of images for one image of your own (a sketch by "
                                "default), with a run trained from images; writes a PNG panel")
    retrieve.add_argument("run", help="run folder of zs-sbir train (trained from image files)")
    add_retrieve_flags(retrieve, ("sketch", "photo"), ".jpg, .jpeg, .png", "gallery feature cache folder "
                       "[$IIAE_CACHE_DIR/zs_features]")  # fmt: skip
    retrieve.set_defaults(handler=_retrieve)


def add_retrieve_flags(parser: argparse.ArgumentParser, domains: tuple[str, str], suffixes: str,
                       cache_help: str) -> None:  # fmt: skip
    """The flags of ``iiae zs-sbir retrieve`` and ``iiae retrieve``: the query file, the gallery folder (images of
    ``suffixes``), --top, the query's domain (one of ``domains``, the first by default), the panel, the cache."""
    parser.add_argument("--query", required=True, metavar="FILE", help="the query image (any size and mode)")
    parser.add_argument("--gallery", required=True, metavar="DIR",
                        help=f"folder of images to rank ({suffixes}, searched recursively)")
    parser.add_argument("--top", type=int, default=10, help="results to print and draw [10]")
    parser.add_argument("--query-domain", choices=domains, default=domains[0],
                        help=f"domain of the query; the gallery holds the other one [{domains[0]}]")
    parser.add_argument("--out", default="retrieval.png", metavar="PANEL.png",
                        help="the panel: the query, then the top results [retrieval.png]")
    parser.add_argument("--cache-dir", help=cache_help)
