"""A run folder's life: where a new run goes, the checks before it is created, its lock, and what may be resumed.

- :func:`default_run_dir`, :func:`check_output_dir`: a new run's folder, refused before any work if it holds files
  or cannot be written;
- :class:`RunLock`: while a process writes a run folder it holds a file lock on ``.iiae.lock`` (the ``filelock``
  package), so two runs never mix;
- :func:`find_run_to_resume`, :func:`check_resume_config`, :func:`resumable_checkpoint`: the policy of
  ``iiae train --resume`` (which folder, which config changes are allowed, which checkpoint); the mechanism
  that makes a resumed run exact is :mod:`iiae.engine.resume` and :mod:`iiae.engine.checkpointing`.

File names: :mod:`iiae.run_files`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from iiae.atomic import atomic_write_json, remove_stale_temporaries, save_traceback
from iiae.cache import file_listing
from iiae.core.config import ExperimentConfig, load_config
from iiae.core.model import training_memory
from iiae.engine.checkpoint_files import checkpoint_files, early_stopped_step, newest_checkpoint
from iiae.errors import CheckpointError, ConfigError, IIAEError, OutputError
from iiae.readers import quote, read_json_object
from iiae.run_files import CHECKPOINTS, CONFIG, DATA_FILES, LOCK, METRICS

LOG = logging.getLogger("iiae.runs")


# ------------------------------------------------------------------------------------------------ new runs
def default_run_dir(config: ExperimentConfig, root: str | Path = "runs") -> Path:
    """``runs/<config name>-<date>-<time>``; a suffix keeps it fresh if that already exists. The name becomes one
    plain folder name (every character but letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``, no leading
    dot, at most 100 characters): a config ``name: ../../x`` or ``/tmp/x`` never puts the run outside ``root``."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(config.name))[:100].lstrip(".") or "run"
    base = Path(root) / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    candidate, index = base, 1
    while candidate.exists():
        candidate, index = Path(f"{base}-{index}"), index + 1
    return candidate


def check_output_dir(out_dir: Path) -> None:
    """Refuse a folder that holds files already, or whose parent cannot be written, before any work."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OutputError(f"output path {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            raise OutputError(f"output folder {out_dir} is not empty; choose a new --out (runs are never mixed)")
    parent = out_dir if out_dir.exists() else next(p for p in [out_dir, *out_dir.parents] if p.exists())
    if not parent.is_dir():
        raise OutputError(f"cannot create output folder {out_dir}: {parent} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".iiae-write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"output folder {out_dir} cannot be written ({parent}: {error.strerror})") from None


# ------------------------------------------------------------------------------------------------ run lock
class RunLock:
    """An exclusive :class:`filelock.FileLock` on ``<run>/.iiae.lock``: a second run (or resume) on the same
    folder refuses at once, on every OS.

    The lock is the operating system's (``flock`` on Unix, ``LockFileEx`` on Windows), so it dies with its process
    (even on SIGKILL) and a crashed run never blocks its own resumption. The holder removes the lock file while
    it still holds the lock, so a finished run leaves none; a process that took the lock of a file removed that way
    sees the name gone and locks the new file instead.
    ``new_run``: create the folder and refuse it if it holds anything but the lock file. Once the lock is held,
    the temporary files and staging folders that a killed run left (``.model.*.tmp/``, ``.metrics.json.*.tmp``,
    checkpoint and figure temporaries: :func:`iiae.atomic.temporary_name`) are removed, whatever process wrote
    them: nothing else writes the folder while its lock is held.
    """

    def __init__(self, folder: Path, new_run: bool) -> None:
        self.folder, self.new_run = Path(folder), new_run
        self._lock: FileLock | None = None

    def __enter__(self) -> RunLock:
        path = self.folder / LOCK
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for _ in range(100):
                lock = FileLock(str(path))
                try:
                    lock.acquire(timeout=0)  # one attempt: a run in use is refused, never waited for
                except Timeout:
                    raise OutputError(
                        f"run folder {self.folder} is in use by another iiae run; wait for it or choose another folder"
                    ) from None
                if path.exists():
                    break
                lock.release()  # the previous holder removed the file as we took it: lock the new one
            else:
                raise OutputError(f"cannot lock run folder {self.folder}: its lock file keeps disappearing")
        except OutputError:
            raise
        except OSError as error:
            raise OutputError(f"cannot lock run folder {self.folder}: {error.strerror or error}") from None
        self._lock = lock
        if self.new_run and any(entry.name != LOCK for entry in self.folder.iterdir()):
            self.__exit__()
            raise OutputError(f"output folder {self.folder} is not empty; choose a new --out (runs are never mixed)")
        # every temporary of a process that is gone (a killed run, a killed evaluate) or of this one (which has
        # written nothing yet); another live process's (an evaluate writing metrics.json) is left alone
        for stale in remove_stale_temporaries(self.folder, recursive=True, own_are_stale=True):
            LOG.debug("iiae: removed %s, left by a run that did not finish", stale)
        return self

    def __exit__(self, exc_type: Any = None, error: BaseException | None = None, *_: Any) -> None:
        bug = isinstance(error, Exception) and not isinstance(error, IIAEError) and not machine_error(error)
        if bug:  # keep its traceback in the run folder
            error.iiae_error_log = save_traceback(error, self.folder)  # type: ignore[attr-defined]
        if self._lock is not None:
            lock, self._lock = self._lock, None
            # Removed while held, so never another process's new lock file. Windows refuses to remove an open
            # file; filelock removes it there on release.
            with contextlib.suppress(OSError):
                (self.folder / LOCK).unlink(missing_ok=True)
            lock.release()


MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def machine_error(error: BaseException) -> bool:
    """A full disk, a read-only or forbidden folder: the machine's state, said in one line; no traceback kept."""
    return isinstance(error, OSError) and error.errno in MACHINE_ERRNOS


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(config: ExperimentConfig, accelerator_is_cpu: bool) -> None:
    """ConfigError, before any file is written, when one training step of ``config`` needs more memory than
    this machine has (checked for CPU training; a GPU's memory is Lightning's and CUDA's to report)."""
    parameters, needed = training_memory(config.model, config.train.batch_size // config.train.devices)
    available = physical_memory()
    if accelerator_is_cpu and available is not None and needed * config.train.devices > available:
        raise ConfigError(
            f"one training step needs about {needed * config.train.devices / 2**30:.1f} GiB ({parameters:,} "
            f"parameters, batch {config.train.batch_size}, {config.model.image_size}x{config.model.image_size} "
            f"images) and this machine has {available / 2**30:.1f} GiB; reduce model.image_size, the widths or "
            "train.batch_size"
        )


# ------------------------------------------------------------------------------------------------- resuming
#: Keys that may differ between a run and its resumption: how long to train, where it runs, how data is read,
#: what logs it (TensorBoard added on resume is rebuilt from metrics.csv: iiae.engine.loggers).
RESUMABLE_CHANGES = {
    "train.steps",
    "train.loggers",
    "train.accelerator",
    "train.eval_batch_size",
    "train.skip_nonfinite_steps",
    "data.num_workers",
    "data.root",
}


def find_run_to_resume(target: str, config_name: str, root: str | Path = "runs") -> Path:
    """``target`` itself, or for ``auto`` the newest run folder of ``config_name`` under ``root`` with a checkpoint."""
    if target != "auto":
        run_dir = Path(target)
        if not (run_dir / CONFIG).is_file():
            what = "does not exist" if not run_dir.exists() else f"holds no {CONFIG}"
            raise CheckpointError(f"cannot resume {run_dir}: it {what}; expected a run folder written by iiae train")
        return run_dir
    candidates = []
    for config_path in Path(root).glob(f"*/{CONFIG}"):
        run_dir = config_path.parent
        checkpoints = list((run_dir / CHECKPOINTS).glob("*.ckpt"))
        if not checkpoints:
            continue
        try:
            if load_config(config_path).name != config_name:
                continue
        except ConfigError:
            continue
        candidates.append((max(path.stat().st_mtime for path in checkpoints), str(run_dir)))
    if not candidates:
        raise CheckpointError(
            f"--resume auto: no run of config {config_name!r} with a checkpoint under {root}/; "
            "start one with iiae train, or name the run folder"
        )
    return Path(max(candidates)[1])


def check_resume_config(saved: Any, requested: Any, run_dir: Path, allowed: set[str] = RESUMABLE_CHANGES) -> None:
    """ConfigError naming the first key that differs from the run's config (any config dataclass with
    ``to_dict``) and is not in ``allowed``."""

    def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, dict) and key != "paper":
                flat.update(flatten(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    before, after = flatten(saved.to_dict()), flatten(requested.to_dict())
    for key in sorted(set(before) | set(after)):
        if key not in allowed and before.get(key) != after.get(key):
            raise ConfigError(
                f"cannot resume {run_dir} with {key} = {after.get(key)!r}: the run was started with "
                f"{before.get(key)!r} ({run_dir / CONFIG}); only {', '.join(sorted(allowed))} "
                "may change on resume"
            )


def resumable_checkpoint(run_dir: Path, config: ExperimentConfig) -> Path | None:
    """The checkpoint ``--resume`` continues from; None for a run stopped before its first checkpoint (it trains
    again from step 0 in its folder); OutputError if the run already finished its steps or stopped early."""
    folder = run_dir / CHECKPOINTS
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot resume {run_dir}: {folder} is not a folder (a run keeps its checkpoints there)")
    if not checkpoint_files(run_dir) and not (run_dir / METRICS).is_file():
        LOG.warning("iiae: note: %s holds no checkpoint yet (stopped before the first one): training starts again "
                    "from step 0", run_dir)  # fmt: skip
        return None
    path, checkpoint = newest_checkpoint(run_dir, config)
    step = int(checkpoint["global_step"])
    stopped_at = early_stopped_step(checkpoint)
    if stopped_at is not None and (run_dir / METRICS).is_file():  # killed before metrics.json: it finishes
        raise OutputError(
            f"run {run_dir} already finished: it stopped early at step {stopped_at} of {config.train.steps} "
            "(validation stopped improving, train.early_stop_patience; its metrics.json is written)"
        )
    if step >= config.train.steps and (run_dir / METRICS).is_file():
        raise OutputError(
            f"run {run_dir} already finished its {step} steps (its metrics.json is written); "
            f"pass --steps N with N > {step} to train it further"
        )
    if step > config.train.steps:
        raise ConfigError(f"--steps {config.train.steps} is below the step of the checkpoint it resumes from "
                          f"({step}, {path}); pass --steps N with N >= {step}")  # fmt: skip
    return path


# ----------------------------------------------------------------------------------------------- the data, by content
DATA_SUFFIXES = (".gz", ".mat", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def data_listing(root: Path) -> list[list]:
    """[relative path, size, sha256] of every data file under ``root`` (IDX, Cars .mat, images; hidden files and
    folders left out): what a run trains on, by content (:func:`iiae.cache.file_listing`)."""
    files = [path for path in root.rglob("*") if (path.suffix.lower() in DATA_SUFFIXES or path.name.endswith("ubyte"))
             and not any(part.startswith(".") for part in path.relative_to(root).parts) and path.is_file()]  # fmt: skip
    return file_listing(root, sorted(files, key=lambda path: path.relative_to(root).as_posix()), "data file")


def check_same_data(run_dir: Path, config: ExperimentConfig, resume: bool) -> None:
    """A new run records its data files by content (``data_files.json``); a resumed one must find the same under
    ``data.root`` (which may have moved), else ConfigError naming the first file that differs: a run continued on
    other data (another folder of digits) went on silently. Runs without a data root (the bundled digits) and runs
    from before this record are not checked."""
    if not config.data.root or not Path(config.data.root).is_dir():
        return
    root, path = Path(config.data.root), run_dir / DATA_FILES
    if not resume:
        atomic_write_json(path, {"files": data_listing(root)})
        return
    if not path.is_file():
        return
    recorded = {entry[0]: entry for entry in read_json_object(path, what="run file", error=CheckpointError).get(
        "files", []) if isinstance(entry, list) and entry}  # fmt: skip
    current = {entry[0]: entry for entry in data_listing(root)}
    for name in sorted(set(recorded) | set(current)):
        if recorded.get(name) != current.get(name):
            what = "is new" if name not in recorded else "is missing" if name not in current else "has other content"
            raise ConfigError(f"cannot resume {run_dir} on --data-root {root}: {quote(name)[1:-1]} {what} (the run "
                              f"trained on other data, {path.name}); resume it on the data it was trained on")  # fmt: skip
