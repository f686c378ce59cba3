"""From command-line flags to a config: the bundled name or YAML file, then ``--set`` overrides, then the flags."""

from __future__ import annotations

import argparse

from iiae.core.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    resolve_config,
)


def build_config(args: argparse.Namespace, base_config: ExperimentConfig | None = None) -> ExperimentConfig:
    """The config file (or bundled name, or ``base_config``), then --set overrides, then the flags; validated once."""
    flags = {
        ("data", "source"): args.data_source,
        ("data", "root"): args.data_root,
        ("train", "steps"): args.steps,
        ("train", "batch_size"): args.batch_size,
        ("train", "seed"): args.seed,
        ("train", "accelerator"): args.accelerator,
        ("train", "devices"): getattr(args, "devices", None),  # iiae train only (DDP)
        ("train", "num_nodes"): getattr(args, "num_nodes", None),
        ("train", "strategy"): getattr(args, "strategy", None),
        ("data", "swap"): True if getattr(args, "swap", False) else None,  # image pairs: the right half is X
    }
    values = (base_config or resolve_config(args.config)).to_dict()
    return config_from_dict(apply_overrides(values, args.set or [], flags))

