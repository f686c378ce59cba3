"""``iiae data download`` and ``iiae data export``: get the paper's image datasets, write ours as images.

    iiae data download facades --root data/facades           # or maps; --archive FILE for a manual download
    iiae data export mnist-cdcb --format ab --out data/cdcb  # 256x256 halves; --size, --limit, --config
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from iiae.data.export import check_export_folder, export_pairs
from iiae.errors import ConfigError

EXPORTABLE = {"mnist-cdcb": "mnist_cdcb", "fashion-mnist-cdcb": "fashion_mnist_cdcb"}  # name -> bundled config
_CHUNK = 256


def _render_cdcb(digits, background: torch.Tensor, digit_colour: torch.Tensor, size: int):
    """MNIST-CDCB at ``size`` with given colours (:func:`iiae.data.cdcb.compose_cdcb`), in chunks."""
    from iiae.data.cdcb import compose_cdcb, digit_intensity

    for start in range(0, len(digits), _CHUNK):
        chunk = slice(start, start + _CHUNK)
        yield compose_cdcb(digit_intensity(digits[chunk], size), background[chunk], digit_colour[chunk])


def export_cdcb(config, out: Path, size: int, layout: str, limit: int | None) -> dict[str, int]:
    """Write the train and test pairs of a CDCB config (colours exactly as training draws them)."""
    from iiae.data import load_digits
    from iiae.training import build_cdcb_splits

    data = config.data  # every training pair is written: a reader holds out validation pairs by the same rule
    colours = build_cdcb_splits(replace(data, validation_fraction=0.0), 8)  # training's colours; size 8 is cheap
    dataset = "fashion_mnist" if data.dataset == "fashion_mnist_cdcb" else "mnist"
    digits = load_digits(data.source, data.root, dataset=dataset, split_seed=data.split_seed)
    counts = {}
    splits = (("train", digits.train_images, colours.train), ("test", digits.test_images, colours.test))
    for split, images, pairs in splits:
        images = images[:limit] if limit else images
        written = 0
        background, digit_colour = pairs.background_colour_x[: len(images)], pairs.digit_colour_y[: len(images)]
        for x, y in _render_cdcb(images, background, digit_colour, size):
            written += export_pairs(x, y, out / split, layout, first=written + 1)
        counts[split] = written
    return counts


def _command_export(args: argparse.Namespace) -> int:
    from iiae.cli import build_config
    from iiae.config import resolve_config

    out = Path(args.out)
    check_export_folder(out)
    config = build_config(args, resolve_config(args.config or EXPORTABLE[args.dataset]))
    if config.data.dataset not in EXPORTABLE.values():
        raise ConfigError(f"iiae data export writes MNIST-CDCB configs; {args.config} has data.dataset "
                          f"{config.data.dataset!r}")  # fmt: skip
    counts = export_cdcb(config, out, args.size, args.format, args.limit)
    layout = "X|Y side by side" if args.format == "ab" else "X/ and Y/ folders"
    print(f"wrote {counts['train']} train and {counts['test']} test pairs of {args.dataset} ({layout}, "
          f"{args.size}x{args.size} per image) into {out}")  # fmt: skip
    return 0


def _command_download(args: argparse.Namespace) -> int:
    from iiae.data.download import EXPECTED_COUNTS, ensure_pix2pix_dataset

    root = ensure_pix2pix_dataset(args.dataset, args.root, args.archive)
    counts = ", ".join(f"{split}/ {count}" for split, count in EXPECTED_COUNTS[args.dataset].items())
    print(f"{args.dataset} is ready in {root} ({counts} images); train with --config {args.dataset} --data-root {root}")
    return 0


def add_data_parser(commands) -> None:
    """Add ``iiae data download|export`` to the top-level sub-command parsers."""
    data = commands.add_parser("data", help="download the paper's image datasets, export ours as images")
    actions = data.add_subparsers(dest="data_command", required=True)

    download = actions.add_parser("download", help="fetch, check and unpack Facades or Maps (pix2pix archives)")
    download.add_argument("dataset", choices=["facades", "maps"])
    download.add_argument("--root", required=True, help="folder to hold train/, val/ (and test/)")
    download.add_argument("--archive", help="unpack this already downloaded .tar.gz instead of downloading")
    download.set_defaults(handler=_command_download)

    export = actions.add_parser("export", help="write MNIST-CDCB as paired image files")
    export.add_argument("dataset", choices=sorted(EXPORTABLE))
    export.add_argument("--format", choices=["ab", "folders"], default="ab", help="side by side, or X/ and Y/ [ab]")
    export.add_argument("--out", required=True, help="folder to create (must not hold files)")
    export.add_argument("--size", type=int, default=256, help="side of each image [256]")
    export.add_argument("--limit", type=int, help="at most this many pairs per split")
    export.add_argument("--config", help="a CDCB config (colour and split seeds) [mnist_cdcb]")
    export.add_argument("--data-source", choices=["embedded", "idx", "download"], help="where the digits come from")
    export.add_argument("--data-root", help="folder of the MNIST / Fashion-MNIST IDX files")
    export.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, repeatable")
    export.set_defaults(handler=_command_export, steps=None, batch_size=None, seed=None, accelerator=None)
