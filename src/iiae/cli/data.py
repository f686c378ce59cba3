"""``iiae data download`` and ``iiae data export``: get the paper's image datasets, write ours as images.

    iiae data download facades --root data/facades           # or maps; --archive FILE for a manual download,
                                                             # --known-hash sha256:HEX to check the archive
    iiae data export mnist-cdcb --format ab --out data/cdcb  # 256x256 halves; --size, --limit, --config
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iiae.atomic import remove_stale_temporaries
from iiae.cli.options import build_config
from iiae.data.export import check_export_folder, export_cdcb
from iiae.errors import ConfigError
from iiae.outputs import check_output

EXPORTABLE = {"mnist-cdcb": "mnist_cdcb", "fashion-mnist-cdcb": "fashion_mnist_cdcb"}  # name -> bundled config


def _command_export(args: argparse.Namespace) -> int:
    from iiae.core.config import resolve_config

    out = Path(args.out)
    config = build_config(args, resolve_config(args.config or EXPORTABLE[args.dataset]))
    if config.data.dataset not in EXPORTABLE.values():
        raise ConfigError(f"iiae data export writes MNIST-CDCB configs; {args.config} has data.dataset "
                          f"{config.data.dataset!r}")  # fmt: skip
    inputs = [Path(args.config)] if args.config and Path(args.config).exists() else []
    check_output(out, inputs + ([Path(config.data.root)] if config.data.root else []), folder=True)
    check_export_folder(out)
    remove_stale_temporaries(out.parent)  # what an export that was killed left beside it (dead processes only)
    counts = export_cdcb(config, out, args.size, args.format, args.limit)
    layout = "X|Y side by side" if args.format == "ab" else "X/ and Y/ folders"
    print(f"wrote {counts['train']} train and {counts['test']} test pairs of {args.dataset} ({layout}, "
          f"{args.size}x{args.size} per image) into {out}")  # fmt: skip
    return 0


def _command_download(args: argparse.Namespace) -> int:
    from iiae.data.download import EXPECTED_COUNTS, ensure_pix2pix_dataset

    check_output(args.root, [args.archive] if args.archive else [], folder=True, what="--root")
    root = ensure_pix2pix_dataset(args.dataset, args.root, args.archive, args.known_hash)
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
    download.add_argument("--known-hash", help="md5:HEX or sha256:HEX the archive must have (none is published; "
                          "a download logs its sha256)")  # fmt: skip
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
