"""The ``iiae`` command line.

    iiae train                              # the main job: MNIST-CDCB from the bundled digits, ~10 min on 2 CPUs
    iiae train --config mnist_cdcb_full --data-root ../shared/data/mnist --out runs/full
    iiae evaluate runs/<run>                # retrieval table of a trained model
    iiae translate runs/<run> --out grid.png

User mistakes print one line ``iiae: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from iiae.errors import ConfigError, IIAEError


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE (e.g. loss.lambda_=0.5), got {text!r}")
    key, raw = text.split("=", 1)
    return key.split("."), yaml.safe_load(raw)


def build_config(args: argparse.Namespace, base_config=None):
    """The config file (or bundled name, or ``base_config``), then --set overrides, then the flags; validated once."""
    from iiae.config import config_from_dict, resolve_config

    base = (base_config or resolve_config(args.config)).to_dict()
    overrides: list[tuple[list[str], object]] = [_parse_override(text) for text in args.set or []]
    flags = {
        ("data", "source"): args.data_source,
        ("data", "root"): args.data_root,
        ("train", "steps"): args.steps,
        ("train", "batch_size"): args.batch_size,
        ("train", "seed"): args.seed,
        ("train", "accelerator"): args.accelerator,
    }
    overrides += [(list(path), value) for path, value in flags.items() if value is not None]
    for path, value in overrides:
        section = base
        for part in path[:-1]:
            if not isinstance(section.get(part), dict):
                raise ConfigError(f"unknown config key {'.'.join(path)}")
            section = section[part]
        if path[-1] not in section:
            raise ConfigError(f"unknown config key {'.'.join(path)}; expected one of: {', '.join(section)}")
        section[path[-1]] = value
    return config_from_dict(base)


def _command_train(args: argparse.Namespace) -> int:
    from iiae.runner import summary, train_and_evaluate

    config = build_config(args)
    metrics = train_and_evaluate(config, args.out, progress=not args.no_progress)
    print(summary(metrics))
    return 0


def _load_model(path: str):
    """A model folder (config.json + model.safetensors) or a run folder holding one in model/."""
    from iiae.errors import CheckpointError
    from iiae.model import CONFIG_FILE, IIAE

    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"model path {folder} does not exist; expected a run folder or its model/ folder")
    if not (folder / CONFIG_FILE).exists() and (folder / "model" / CONFIG_FILE).exists():
        folder = folder / "model"
    return IIAE.from_pretrained(folder), folder


def _test_pairs(args: argparse.Namespace, model_folder: Path):
    """Test pairs for a trained model: the run's config when next to the model, else the given/default one."""
    from iiae.config import load_config
    from iiae.training import build_cdcb_splits

    run_config = model_folder.parent / "config.yaml"
    base = load_config(run_config) if args.config is None and run_config.exists() else None
    config = build_config(args, base)
    return build_cdcb_splits(config.data, config.model.image_size).test, config


def _command_evaluate(args: argparse.Namespace) -> int:
    from iiae.evaluation import evaluate_retrieval, format_retrieval_table

    model, folder = _load_model(args.model)
    test, config = _test_pairs(args, folder)
    table = evaluate_retrieval(model, test.x, test.y, config.train.eval_batch_size)
    print(format_retrieval_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps({"retrieval": table}, indent=2), encoding="utf-8")
    return 0


def _command_translate(args: argparse.Namespace) -> int:
    from iiae.figures import save_translation_grid

    model, folder = _load_model(args.model)
    test, _ = _test_pairs(args, folder)
    path = save_translation_grid(model, test.x[: args.count], test.y[: args.count], args.out, seed=args.seed or 0)
    print(f"wrote {path}")
    return 0


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="bundled config name (mnist_cdcb, ...) or YAML file [mnist_cdcb]")
    parser.add_argument("--data-source", choices=["embedded", "idx", "download"], help="where the digits come from")
    parser.add_argument("--data-root", help="folder of the MNIST / Fashion-MNIST IDX files")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, repeatable")
    parser.add_argument("--steps", type=int, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, help="pairs per batch")
    parser.add_argument("--seed", type=int, help="random seed of the run")
    parser.add_argument("--accelerator", "--device", help="cpu, gpu or auto")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iiae", description="Interaction Information Auto-Encoder")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, evaluate and write a run folder (the main job)")
    _add_config_flags(train)
    train.add_argument("--out", help="run folder to create (must not hold files) [runs/<config>-<time>]")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_command_train)

    evaluate = commands.add_parser("evaluate", help="cross-domain retrieval of a trained model")
    evaluate.add_argument("model", help="run folder or model folder")
    _add_config_flags(evaluate)
    evaluate.add_argument("--json", help="also write the table to this JSON file")
    evaluate.set_defaults(handler=_command_evaluate)

    translate = commands.add_parser("translate", help="translation grid PNG of a trained model")
    translate.add_argument("model", help="run folder or model folder")
    _add_config_flags(translate)
    translate.add_argument("--out", default="translation.png", help="PNG file to write")
    translate.add_argument("--count", type=int, default=8, help="test pairs to show")
    translate.set_defaults(handler=_command_translate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except IIAEError as error:
        print(f"iiae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iiae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
