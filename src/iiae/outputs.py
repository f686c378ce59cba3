"""Where a command may write: the one check every command runs on a user-named output path before any work.

:func:`check_output` refuses (an :class:`~iiae.errors.OutputError`, exit status 2) a target that

- is one of the command's inputs (the same file, also through a symbolic or hard link), or lies inside an input
  folder;
- exists and is not a regular file (a folder where a file is expected, a FIFO, a device, a socket) — so a
  command never replaces ``/dev/null`` or a named pipe with a regular file;
- lies inside a run or model folder: its files (config, checkpoints, model, logs, figures, report,
  metrics) are written by the run alone, except the outputs a command regenerates in its own run or model
  folder by design (``replaces``: ``iiae evaluate RUN`` rewrites the run's metrics.json).

:func:`staged_files` then writes several output files beside their targets and moves them into place only
once every one is complete. :func:`remove_stale_temporaries` (in :mod:`iiae.atomic`) clears what a killed
process left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from iiae.atomic import fsync_folder, temporary_name
from iiae.errors import OutputError
from iiae.readers import file_kind, quote
from iiae.run_files import CHECKPOINTS, CONFIG, LOCK, LOGS_DIR, METRICS, MODEL_DIR

MODEL_WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"


def is_run_folder(folder: Path) -> bool:
    """A folder a run wrote: its config.yaml beside checkpoints/, a lock or metrics.json."""
    return (folder / CONFIG).is_file() and any(
        (folder / name).exists() for name in (CHECKPOINTS, LOCK, METRICS, MODEL_DIR, LOGS_DIR))


def is_model_folder(folder: Path) -> bool:
    """A model folder (``iiae export``, a run's model/): model.safetensors beside config.json."""
    return (folder / MODEL_WEIGHTS).is_file() and (folder / MODEL_CONFIG).is_file()


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: compare the absolute path
        return Path(os.path.abspath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except (OSError, ValueError):
        return False


def _folder_kind(folder: Path) -> str | None:
    """"run" or "model" for a folder iiae wrote (see :func:`is_run_folder`, :func:`is_model_folder`), else None.
    A sweep's folder is neither: its runs are created inside it as the sweep goes (each one a run folder)."""
    if is_run_folder(folder):
        return "run"
    if is_model_folder(folder):
        return "model"
    return None


_COMMAND_INPUTS: list[Path] = []  # what the running command reads (add_command_inputs); main() starts it empty


def add_command_inputs(paths: Iterable[str | Path | None]) -> None:
    """Record files and folders the running command reads: every later :func:`check_output` of the command
    refuses targets among or inside them too, also where the caller does not know them (the cache folder that
    ``$IIAE_CACHE_DIR`` names, checked by :func:`iiae.cache.cache_root`)."""
    _COMMAND_INPUTS.extend(Path(path) for path in paths if path)


def clear_command_inputs() -> None:
    """A new command reads nothing yet (the command line calls it first; a notebook may run several commands)."""
    _COMMAND_INPUTS.clear()


def check_output(target: str | Path, inputs: Iterable[str | Path] = (), owner: str | Path | None = None,
                 folder: bool = False, what: str = "--out", replaces: Iterable[str | Path] = ()) -> Path:  # fmt: skip
    """``target`` as a Path when a command may write it (a file, or with ``folder`` a folder it creates or fills);
    else an OutputError naming ``what`` and the reason (see the module docstring). ``inputs``: every file and
    folder the command reads. Nothing inside a run or model folder is ever written, except: ``owner``
    itself as a folder target (a resumed run), and inside ``owner`` the files of ``replaces``, the outputs the
    command regenerates there by design (``iiae evaluate RUN``: the run's metrics.json)."""
    if not str(target) or "\0" in str(target):
        raise OutputError(f"{what} {quote(str(target))} is not a usable path")
    target = Path(target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise OutputError(f"{what} {quote(str(target))} cannot be checked: {error.strerror or error}") from None
    if mode is not None:
        if folder and not stat.S_ISDIR(mode):
            raise OutputError(f"{what} {target} is {file_kind(mode) if not stat.S_ISREG(mode) else 'a file'}; "
                              "expected a folder")  # fmt: skip
        if not folder and not stat.S_ISREG(mode):
            raise OutputError(f"{what} {target} is {file_kind(mode)}; expected a regular file to write (or a new name)")
    resolved = _resolved(target)
    for source in [*inputs, *_COMMAND_INPUTS]:
        source = Path(source)
        source_resolved = _resolved(source)
        if (mode is not None and _same_file(target, source)) or resolved == source_resolved:
            raise OutputError(f"{what} {target} is one of the command's inputs ({source}); it is never overwritten: "
                              "choose another output path")  # fmt: skip
        if source.is_dir() and _inside(resolved, source_resolved):
            raise OutputError(f"{what} {target} is inside the input folder {source}; inputs are never written: "
                              "choose an output path outside it")  # fmt: skip
    owner_resolved = _resolved(Path(owner)) if owner is not None else None
    regenerated = {_resolved(Path(path)) for path in replaces}
    for ancestor in ([resolved] if folder else []) + list(resolved.parents):
        kind = _folder_kind(ancestor)
        if kind is None:
            continue
        if ancestor == owner_resolved and ((folder and ancestor == resolved) or resolved in regenerated):
            continue  # the command's own run (a resume) or an output it regenerates there (evaluate's metrics)
        where = "is" if ancestor == resolved else "is inside"
        if ancestor == owner_resolved:
            allowed = ", ".join(sorted(path.name for path in regenerated)) or "nothing"
            raise OutputError(f"{what} {target} {where} the {kind} folder {ancestor}, which this command reads: "
                              f"it writes only {allowed} there; choose a path outside it")  # fmt: skip
        raise OutputError(f"{what} {target} {where} the {kind} folder {ancestor}, which this command did not "
                          f"create; a {kind}'s files are never overwritten: choose another path")  # fmt: skip
    return target


def check_outputs(targets: Sequence[str | Path], inputs: Iterable[str | Path] = (), owner: str | Path | None = None,
                  what: str = "output", replaces: Iterable[str | Path] = ()) -> list[Path]:  # fmt: skip
    """:func:`check_output` of every file in ``targets``, and no two of them the same file."""
    inputs, replaces = list(inputs), list(replaces)
    checked = [check_output(target, inputs, owner, what=what, replaces=replaces) for target in targets]
    seen: dict[Path, Path] = {}
    for path in checked:
        resolved = _resolved(path)
        if resolved in seen:
            raise OutputError(f"{what}s {seen[resolved]} and {path} are the same file; every output needs its own name")
        seen[resolved] = path
    return checked


@contextlib.contextmanager
def staged_files(targets: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Yield one temporary path beside each target to write; once the block succeeds every temporary file is
    renamed over its target, otherwise every temporary file is removed and no target is touched (nor a folder
    created for them left behind)."""
    targets = [Path(target) for target in targets]
    temporaries = [temporary_name(target) for target in targets]
    created: list[Path] = []
    try:
        for parent in dict.fromkeys(target.parent for target in targets):
            created += [folder for folder in [parent, *parent.parents] if not folder.exists()][::-1]
            parent.mkdir(parents=True, exist_ok=True)
        yield temporaries
        for temporary, target in zip(temporaries, targets, strict=True):
            os.replace(temporary, target)
        created = []
        for parent in dict.fromkeys(target.parent for target in targets):
            fsync_folder(parent)
    finally:
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                temporary.unlink()
        for folder in reversed(created):  # only the folders this call made, and only when still empty
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def staged_folder(folder: str | Path, names: Sequence[str]) -> Iterator[Path]:
    """Yield a hidden staging folder inside ``folder`` for a writer that fills a folder with the files ``names``
    (e.g. :func:`iiae.evaluation.figures.save_figures`); they reach ``folder`` through :func:`staged_files`: all
    of them once the block succeeds, none otherwise."""
    folder = Path(folder)
    with staged_files([folder / name for name in names]) as temporaries:
        staging = temporary_name(folder / "staging")
        staging.mkdir()
        try:
            yield staging
            for name, temporary in zip(names, temporaries, strict=True):
                os.replace(staging / name, temporary)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
