"""The ``iiae`` command line.

    iiae train                              # the main job: MNIST-CDCB from the bundled digits, ~3 min on 2 CPUs
    iiae train --config mnist_cdcb_full --data-root ../shared/data/mnist --out runs/full
    iiae evaluate runs/<run>                # retrieval (+ MNIST-CDCB measures) of a trained model -> metrics.json
    iiae evaluate runs/<run>/checkpoints/best.ckpt --json best.json
    iiae translate runs/<run> --out figures/  # translation.png, analogy.png, traversal.png
    iiae translate runs/<run> --images a.png b.jpg --direction x-to-y --out out/   # out/a_to_y.png, out/b_to_y.png
    iiae retrieve runs/<run> --query a.png --gallery photos/ --top 5 --out panel.png

User mistakes print one line ``iiae: error: ...`` on stderr and exit with status 2; an unexpected failure (a bug)
prints one line naming the file that holds its traceback (``error.log`` in the run folder during a run) and exits
with status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, NoReturn

from iiae.atomic import save_traceback
from iiae.cli.options import build_config
from iiae.core.config import refuse_overrides_of
from iiae.data.paired_images import IMAGE_SUFFIXES
from iiae.errors import ConfigError, IIAEError, RunInterrupted, bounded
from iiae.outputs import add_command_inputs, check_output, check_outputs, clear_command_inputs
from iiae.readers import quote
from iiae.version import __version__
from iiae.zsbir.cli import (  # iiae zs-sbir train|evaluate|retrieve
    add_retrieve_flags,
    add_zs_sbir_parser,
    check_retrieval_outputs,
)


def _command_train(args: argparse.Namespace) -> int:
    if args.resume is not None and (args.seeds is not None or args.sweep is not None):
        raise ConfigError("--resume continues one run: it cannot be combined with --seeds or --sweep")
    if (args.seeds is not None or args.sweep is not None) and (args.devices or 1) * (args.num_nodes or 1) > 1:
        raise ConfigError("--seeds and --sweep run in one process: they cannot be combined with --devices > 1")
    if args.seeds is not None or args.sweep is not None:  # several runs and a summary: iiae.runs.sweeps
        return _train_many(args)
    if args.resume is None:
        config, out = build_config(args), args.out
    else:
        config, out = _resume_config(args)
    from iiae.runs.runner import summary, train_and_evaluate  # checks --out (iiae.outputs) before any work

    metrics = train_and_evaluate(config, out, progress=not args.no_progress, resume=args.resume is not None)
    if metrics is not None:  # None: a DDP process other than 0 (process 0 prints)
        print(summary(metrics))
    return 0


def _train_many(args: argparse.Namespace) -> int:
    """``iiae train`` with ``--seeds`` and/or ``--sweep``: check the flags, run every run, print the summary."""
    from iiae.runs.sweeps import parse_seeds, parse_sweep, run_sweep, summary_markdown

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    sweep = parse_sweep(args.sweep) if args.sweep is not None else None
    if seeds is not None and args.seed is not None:
        raise ConfigError("--seed and --seeds exclude each other: give the seeds of every run with --seeds")
    if getattr(args, "resume", None) is not None:
        raise ConfigError("--resume continues one run; it cannot be combined with --seeds or --sweep")
    base = build_config(args)
    summary = run_sweep(base, args.out, seeds, sweep, progress=not args.no_progress)
    table = summary_markdown(summary).split("\n## Every number")[0]
    print(table.rstrip())
    print(f"summary: {Path(summary['run_dir']) / 'summary.md'} and summary.json; one run folder per row and seed")
    return 0


def _resume_config(args: argparse.Namespace):
    """--resume RUN_DIR|auto: the run folder and its config (flags may change only iiae.runs.run_folder.RESUMABLE_CHANGES)."""
    from iiae.core.config import load_saved_config, resolve_config
    from iiae.runs.run_folder import check_resume_config, find_run_to_resume

    if args.out is not None:
        raise ConfigError("--resume continues a run in its own folder: give --resume RUN_DIR or --out, not both")
    run_dir = find_run_to_resume(args.resume, resolve_config(args.config).name)
    saved = load_saved_config(run_dir / "config.yaml")
    config = build_config(args, None if args.config else saved)
    check_resume_config(saved, config, run_dir)
    return config, run_dir


def _config_inputs(args: argparse.Namespace, config: Any = None) -> list[Path]:
    """The files and folders a command reads besides its model: the --config file and the data root (of
    ``config`` when given, else --data-root). Never written by the command (iiae.outputs.check_output)."""
    inputs = [Path(args.config)] if getattr(args, "config", None) and Path(args.config).exists() else []
    root = config.data.root if config is not None else getattr(args, "data_root", None)
    return inputs + ([Path(root)] if root else [])


def _model_inputs(args: argparse.Namespace):
    """(the model path located without loading it: iiae.runs.trained.ModelPath, every input the command reads)."""
    from iiae.core.config import load_saved_config
    from iiae.run_files import CONFIG
    from iiae.runs.trained import locate_model

    located = locate_model(args.model)
    saved = located.run_dir / CONFIG if located.run_dir is not None else None
    base = load_saved_config(saved) if saved is not None and not args.config else None
    inputs = located.inputs + _config_inputs(args, build_config(args, base))
    add_command_inputs(inputs)  # also for the cache folders it writes (iiae.outputs)
    return located, inputs


def _command_export(args: argparse.Namespace) -> int:
    from iiae.runs.export import export_model

    checkpoint, step = export_model(Path(args.run), Path(args.out), last=args.last)
    print(f"wrote {args.out} (model.safetensors + config.json) from {checkpoint}, step {step}")
    return 0


def _trained_and_test_pairs(args: argparse.Namespace):
    """The trained model (run folder, model folder or .ckpt; see iiae.runs.trained), its run's config (unless --config
    is given; flags apply on top, the model's own architecture always wins) and that config's test pairs (an image
    folder may hold its test pairs alone: no training split is read)."""
    from iiae.data.datasets import build_splits, check_channels
    from iiae.runs.trained import load_trained

    trained = load_trained(args.model)
    requested = build_config(args, None if args.config else trained.run_config)
    refuse_overrides_of(args.set or [], requested, trained.experiment_config(requested), ("model",),
                        f"the model {trained.source}")  # fmt: skip
    config = trained.experiment_config(requested)
    splits = build_splits(config, for_training=False)
    model = trained.model.config
    check_channels(splits.test, model.x_channels, model.y_channels, f"the model {trained.source}",
                   "evaluate it on the data it was trained on")  # fmt: skip
    return trained, splits, config


def _command_evaluate(args: argparse.Namespace) -> int:
    from iiae.evaluation.measures import measures_summary, run_measures
    from iiae.evaluation.retrieval import evaluate_retrieval, format_retrieval_table
    from iiae.evaluation.shift_suite import SHIFT_SUITE_KEYS, format_shift_suite, shift_suite_retrieval
    from iiae.run_files import METRICS
    from iiae.runs.report import refresh_report
    from iiae.runs.trained import existing_metrics, write_metrics

    if args.json and args.out:
        raise ConfigError("give --json FILE or --out DIR, not both")
    if args.shift_pairs is not None and not args.shift_suite:
        raise ConfigError("--shift-pairs sets the size of the shift suite's test sets: give it with --shift-suite")
    if args.shift_split is not None and not args.shift_suite:
        raise ConfigError("--shift-split chooses the digits of the shift suite: give it with --shift-suite")
    shift_split = args.shift_split or "test"
    located, inputs = _model_inputs(args)
    path = Path(args.json) if args.json else Path(args.out) / METRICS if args.out else located.default_metrics_path()
    check_output(path, inputs, owner=located.owner, replaces=[located.default_metrics_path()],
                 what="--json" if args.json else "--out")  # fmt: skip
    existing_metrics(path)  # not a JSON object: refused before any work
    trained, splits, config = _trained_and_test_pairs(args)
    table = evaluate_retrieval(trained.model, splits.test.x, splits.test.y, config.train.eval_batch_size)
    print(format_retrieval_table(table))
    measures = None if args.no_measures else run_measures(trained.model, splits, config.train.eval_batch_size)
    if measures:
        print(measures_summary(measures))
    shift_suite = None
    if args.shift_suite:
        shift_suite = shift_suite_retrieval(trained.model, config.data, config.model.image_size,
                                            config.train.eval_batch_size, args.shift_pairs, shift_split)  # fmt: skip
        print(f"shift suite on {shift_split} digits:")
        print(format_shift_suite(shift_suite))
    written = write_metrics(path, table, trained, len(splits.test), splits.source, measures, shift_suite,
                            SHIFT_SUITE_KEYS[shift_split])  # fmt: skip
    print(f"wrote {path}")
    if trained.run_dir is not None and trained.run_config is not None and path == trained.run_dir / METRICS:
        report = refresh_report(trained.run_dir, trained.run_config, written)
        if report is not None:
            print(f"wrote {report}")
    return 0


def _command_translate(args: argparse.Namespace) -> int:
    from iiae.errors import OutputError
    from iiae.evaluation.figures import save_figures
    from iiae.outputs import staged_folder
    from iiae.run_files import ANALOGY_FIGURE, TRANSLATION_FIGURE, TRAVERSAL_FIGURE

    if args.images is not None:
        return _translate_images(args)
    if args.direction is not None or args.style is not None:
        raise ConfigError("--direction and --style translate image files: give them with --images FILE ...")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; expected a folder for translation.png, analogy.png, traversal.png")
    count = 8 if args.count is None else args.count
    if not 1 <= count <= MAX_FIGURE_PAIRS:  # a figure of 10^20 columns took 8.5 GB before it failed
        raise ConfigError(f"--count must be in [1, {MAX_FIGURE_PAIRS}] (test pairs in the translation grid), "
                          f"got {quote(count)}")  # fmt: skip
    located, inputs = _model_inputs(args)
    names = [TRANSLATION_FIGURE, ANALOGY_FIGURE, TRAVERSAL_FIGURE]
    check_output(out, inputs, owner=located.owner, folder=True)
    check_outputs([out / name for name in names], inputs, owner=located.owner, what="--out")
    trained, splits, _ = _trained_and_test_pairs(args)
    x, y = splits.test.x[:count], splits.test.y[:count]
    try:
        with staged_folder(out, names) as staging:  # the three figures appear together or not at all
            save_figures(trained.model, x, y, staging, seed=args.seed or 0)
        paths = [out / name for name in names]
    except OSError as error:
        raise OutputError(f"cannot write figures into {out}: {error.strerror or error}") from None
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


MAX_FIGURE_PAIRS = 64  # columns of the translation grid

_DATA_SET_FLAGS = ("config", "data_source", "data_root", "set", "steps", "batch_size", "accelerator", "count")


def _translate_images(args: argparse.Namespace) -> int:
    """``iiae translate MODEL --images FILE ... --direction x-to-y|y-to-x``: one PNG per file (iiae.runs.own_images)."""
    from iiae.runs.own_images import check_direction, translate_images, translation_name
    from iiae.runs.trained import load_trained

    given = [name for name in _DATA_SET_FLAGS if getattr(args, name) is not None] + (["swap"] if args.swap else [])
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(f"{flag} applies to the data set figures; --images translates the files given")
    if args.direction is None:
        raise ConfigError("--images needs --direction x-to-y or y-to-x (the domain of the files, and the target)")
    located, inputs = _model_inputs(args)
    inputs += [*map(Path, args.images), *([Path(args.style)] if args.style else [])]
    _, target_domain = check_direction(args.direction)
    check_output(args.out, inputs, owner=located.owner, folder=True)
    check_outputs([Path(args.out) / translation_name(path, target_domain) for path in args.images], inputs,
                  owner=located.owner)  # fmt: skip
    trained = load_trained(args.model)
    paths = translate_images(trained.model, args.images, args.direction, args.out,
                             seed=args.seed or 0, style=args.style, owner=located.owner)  # fmt: skip
    target = args.direction[-1]
    code = f"z^{target} of {args.style}" if args.style else f"z^{target} from the prior, seed {args.seed or 0}"
    print(f"wrote {len(paths)} image(s) ({code}): " + ", ".join(str(path) for path in paths))
    return 0


def _command_retrieve(args: argparse.Namespace) -> int:
    from iiae.runs.own_images import check_retrieval_arguments, default_cache_dir, retrieve_images
    from iiae.runs.trained import load_trained, locate_model

    check_retrieval_arguments(args.top, args.query_domain, args.out)  # before the model is loaded
    located = locate_model(args.model)
    check_retrieval_outputs(args, located.inputs, located.owner, default_cache_dir())
    trained = load_trained(args.model)
    result = retrieve_images(trained.model, args.query, args.gallery, top=args.top, query_domain=args.query_domain,
                             out=args.out, cache_dir=args.cache_dir, owner=located.owner)  # fmt: skip
    print("\n".join(result.lines()))
    print(f"wrote {result.panel} (the query, then the {len(result.matches)} nearest of {result.gallery_size}; "
          f"{result.measure} of the shared codes)")  # fmt: skip
    return 0


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="bundled config name (mnist_cdcb, ...) or YAML file [mnist_cdcb]")
    parser.add_argument("--data-source", choices=["embedded", "idx", "download"], help="where the digits come from")
    parser.add_argument("--data-root", help="folder of the data: IDX files, image split folders or Cars .mat files")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, repeatable")
    parser.add_argument("--steps", type=int, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, help="pairs per batch")
    parser.add_argument("--seed", type=int, help="random seed of the run")
    parser.add_argument("--accelerator", "--device", help="cpu, gpu or auto")
    parser.add_argument("--swap", action="store_true", help="image pairs: X is the right half (or the Y/ folder)")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``iiae train: error: ...``), like every other iiae error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iiae", description="Interaction Information Auto-Encoder")  # sub-commands inherit it
    parser.add_argument("--version", action="version", version=f"iiae {__version__}")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only, no progress")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="also debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train, evaluate and write a run folder (the main job)")
    _add_config_flags(train)
    train.add_argument("--out", help="run folder to create (must not hold files) [runs/<config>-<time>]")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint ('auto': newest run of --config)"
    )
    train.add_argument("--seeds", metavar="S1,S2,...", help="one run per seed (RUN/seed-S); summary.md: mean ± std")
    train.add_argument(
        "--sweep", metavar="KEY=V1,V2,...",
        help="one run per value of a config key (RUN/KEY=V), e.g. loss.lambda_=0,0.5,1,2 (values without commas)",
    )  # fmt: skip
    train.add_argument("--devices", type=int, help="processes per node, one per GPU (DDP; README) [1]")
    train.add_argument("--num-nodes", type=int, help="machines (DDP over nodes; README) [1]")
    train.add_argument("--strategy", choices=["auto", "ddp"], help="Lightning strategy: auto (ddp when several "
                       "processes) or ddp [auto]")  # fmt: skip
    train.set_defaults(handler=_command_train)

    evaluate = commands.add_parser("evaluate", help="cross-domain retrieval of a trained model (prints, writes JSON)")
    evaluate.add_argument("model", help="run folder, model folder or checkpoint file (.ckpt)")
    _add_config_flags(evaluate)
    evaluate.add_argument("--out", help="folder for metrics.json [the run folder; beside a .ckpt: NAME.metrics.json]")
    evaluate.add_argument("--json", help="JSON file to write instead (an existing one keeps its other keys)")
    evaluate.add_argument("--no-measures", action="store_true",
                          help="retrieval only: skip the translation-fidelity and leakage measures (MNIST-CDCB); "
                          "a file's earlier measures are left as they are")  # fmt: skip
    evaluate.add_argument("--shift-suite", action="store_true",
                          help="also score shared retrieval on shifted MNIST-CDCB test sets (colours outside the "
                          "training ranges, other strokes, JPEG, 256 px PNGs read back)")  # fmt: skip
    evaluate.add_argument("--shift-pairs", type=int, metavar="N",
                          help="pairs per shifted test set [all test digits]")
    evaluate.add_argument("--shift-split", choices=["test", "validation"],
                          help="digits of the shift suite: the test digits, or the validation digits held out of "
                          "training (to compare settings without test numbers; metrics.json's "
                          "validation_shift_suite) [test]")  # fmt: skip
    evaluate.set_defaults(handler=_command_evaluate)

    translate = commands.add_parser("translate", help="translation, analogy and traversal PNGs of a trained model")
    translate.add_argument("model", help="run folder, model folder or checkpoint file (.ckpt)")
    _add_config_flags(translate)
    translate.add_argument("--out", default=".", help="folder for translation.png, analogy.png, traversal.png, or "
                           "for the translated --images [.]")  # fmt: skip
    translate.add_argument("--count", type=int, help="test pairs in the translation grid [8]")
    translate.add_argument("--images", nargs="+", metavar="FILE", help="translate these image files instead (any "
                           "size and mode): one PNG each, FILE_to_y.png or FILE_to_x.png in --out")  # fmt: skip
    translate.add_argument("--direction", choices=["x-to-y", "y-to-x"], help="with --images: x-to-y (the files "
                           "are of domain X) or y-to-x")  # fmt: skip
    translate.add_argument("--style", metavar="IMAGE", help="with --images: take the target domain's exclusive code "
                           "from this image of the target domain [drawn from the prior, seeded by --seed]")  # fmt: skip
    translate.set_defaults(handler=_command_translate)

    retrieve = commands.add_parser("retrieve", help="rank a folder of images for one image of your own by shared "
                                   "codes; prints the ranking, writes a PNG panel")  # fmt: skip
    retrieve.add_argument("model", help="run folder, model folder or checkpoint file (.ckpt)")
    add_retrieve_flags(retrieve, ("x", "y"), ", ".join(IMAGE_SUFFIXES), "gallery code cache folder "
                       "[$IIAE_CACHE_DIR/gallery_codes]")  # fmt: skip
    retrieve.set_defaults(handler=_command_retrieve)

    export = commands.add_parser("export", help="write a run's model as safetensors + JSON (loads without pickle)")
    export.add_argument("run", help="run folder (its selected model, else its newest checkpoint) or .ckpt file")
    export.add_argument("--last", action="store_true", help="export the run's newest checkpoint, not the selected one")
    export.add_argument("--out", required=True, help="model folder to create (must not hold files)")
    export.set_defaults(handler=_command_export)

    add_zs_sbir_parser(commands)

    from iiae.cli.data import (
        add_data_parser,  # iiae data download|export (image datasets)
    )

    add_data_parser(commands)
    return parser


def one_line(message: str) -> str:
    """``message`` on one line: a line break inside it (a file name may hold one) is shown as ``\\n``, and the
    bytes of a file name that is not UTF-8 as ``\\xff`` escapes (Python holds them as surrogates)."""
    return escape_undecodable(message.replace("\r", "\\r").replace("\n", "\\n"))


def escape_undecodable(text: str) -> str:
    """``text`` with every byte of a file name that is not UTF-8 (Python holds it as a surrogate) as a ``\\xff``
    escape, and any other character that UTF-8 cannot hold as ``\\udXXX``: printing it never fails."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Stdout:
    """``sys.stdout`` while a command runs. A reader that went away (``iiae train ... | head -1``) ends the
    output, not the work: the rest goes to os.devnull (as the Python docs advise for a broken pipe) and the
    command finishes with its own status. A file name that is not UTF-8 is printed with backslash escapes
    where the stream cannot encode it."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.reader_gone = stream, False

    def write(self, text: str) -> int:
        if self.reader_gone:
            return len(text)
        try:
            try:
                return self.stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "utf-8"
                self.stream.write(escape_undecodable(text).encode(encoding, "backslashreplace").decode(encoding))
                return len(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._to_devnull()

    def _to_devnull(self) -> None:
        self.reader_gone = True
        try:  # what the stream still buffers is flushed to os.devnull at exit, without a second error
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError):  # a stream without a file descriptor (tests): nothing is flushed later
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


# The loggers of Lightning's rank_zero_info notes. Their parents ("lightning.pytorch", ...) get their level set
# by Lightning when it is imported; these children do not, so setting them needs no import of Lightning here.
LIGHTNING_LOGGERS = tuple(f"{package}.utilities.rank_zero" for package in
                          ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"))  # fmt: skip


class _Stderr(logging.Handler):
    """The package's log records as plain lines on the current stderr (``iiae: ...``)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def configure_logging(verbosity: int) -> None:
    """Messages of the ``iiae`` loggers on stderr: warnings only (-q), progress and notes (default), debug (-v)."""
    logger = logging.getLogger("iiae")
    for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(handler)  # main() may run several times in one process (tests, notebooks)
    logger.addHandler(_Stderr())
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False
    # Lightning's own notes ("GPU available: False", its logger tip, "`Trainer.fit` stopped") repeat what the run
    # says itself: shown with -v only; its warnings always.
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    # matplotlib's notes about its own cache folder (an unwritable $XDG_CACHE_HOME: "mkdir -p failed ...", then it
    # uses a temporary one) are no concern of the command's: shown with -v only
    logging.getLogger("matplotlib").setLevel(logging.WARNING if verbosity > 0 else logging.ERROR)


WARNINGS = logging.getLogger("iiae.warnings")
# Notices for the developers of a library (PIL, Lightning, NumPy, torch), not for a user of iiae: -v shows them
DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:  # fmt: skip
    """:func:`warnings.showwarning` of the command line: a Python warning (of iiae or of a library) as one bounded
    ``iiae: warning: ...`` line on the ``iiae`` logger, never Python's two-line format with a source line; a
    library's deprecation notice as a debug message (-v)."""
    text = one_line(" ".join(str(message).split()))[:300]
    if text in _SHOWN:  # once per command: torch repeats its C++ warnings at every call
        return
    _SHOWN.add(text)
    if issubclass(category, DEVELOPER_WARNINGS):
        WARNINGS.debug("iiae: note: %s (%s, %s:%s)", text, category.__name__, Path(filename).name, lineno)
    else:
        WARNINGS.warning("iiae: warning: %s", text)


_SHOWN: set[str] = set()  # the warnings this command has shown


class Terminated(BaseException):
    """SIGTERM outside training (training finishes its step and checkpoints: iiae.engine.guards.GracefulStop):
    unwinds the command like Ctrl-C, so that staged outputs and temporary files are removed on the way out."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        with warnings.catch_warnings():  # restored on return: main() may run in a test or a notebook
            warnings.showwarning = show_warning
            _SHOWN.clear()
            clear_command_inputs()
            return _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    if args.quiet and hasattr(args, "no_progress"):
        args.no_progress = True
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = _Stdout(stdout)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a reader that went away after the work is complete: no error (_Stdout)
        return status
    except RunInterrupted as stop:  # SIGTERM / Ctrl-C: a checkpoint was written
        print(f"iiae: {stop}", file=sys.stderr)
        return stop.exit_status
    except IIAEError as error:
        print(f"iiae: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iiae: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("iiae: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    except OSError as error:  # disk full, read-only, permission: the machine's, not a bug. Runs stay resumable
        where = f": {error.filename}" if error.filename else ""  # a 10 MB path argument: bounded below
        print(f"iiae: error: {one_line(bounded(f'{error.strerror or error}{where}'))}", file=sys.stderr)
        return 2
    except UnicodeError as error:  # a user's file or name that is not UTF-8 (readers name the file where they can)
        print(f"iiae: error: {one_line(bounded(unicode_message(error)))}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - not a user mistake: a bug. One line; the traceback is kept
        saved = getattr(error, "iiae_error_log", None) or save_traceback(error)
        first = " ".join((str(error).strip().splitlines() or [""])[0].split())[:300]
        where = f"full traceback: {saved}" if saved else "its traceback could not be saved"
        print(one_line(f"iiae: error: unexpected {type(error).__name__}: {first} (a bug in iiae, please report it; "
                       f"{where})"), file=sys.stderr)  # fmt: skip
        return 1
    finally:
        if stdout is not None:
            try:
                sys.stdout.flush()  # after an error too: a closed pipe never adds a second message
            except (OSError, ValueError):
                pass
            sys.stdout = stdout


def unicode_message(error: UnicodeError) -> str:
    """One line for text that is not UTF-8 (or cannot be written as it): the bytes and where they were."""
    if isinstance(error, (UnicodeDecodeError, UnicodeEncodeError)):
        bad = error.object[error.start : min(error.end, error.start + 8)]
        what = "a file or name holds text that is not valid UTF-8" if isinstance(error, UnicodeDecodeError) else (
            f"text cannot be written as {error.encoding}")  # fmt: skip
        return f"{what}: {bad!r} at position {error.start} ({error.reason}); save the file as UTF-8 text"
    return f"text that is not valid Unicode: {' '.join(str(error).split())[:200]}"


if __name__ == "__main__":
    sys.exit(main())
