"""Files and folders that appear whole or not at all: write beside the target, fsync, rename over it.

A kill, a full disk or an exception during the write leaves the previous file (or none) and no temporary file.
Every writer of the package that replaces a file a reader may be holding (checkpoints, metrics, logs, caches,
model folders) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from iiae.errors import OutputError
from iiae.run_files import ERROR_LOG

TEMPORARY_STEM_BYTES = 160  # of the target's name kept in a temporary name: file names hold at most 255 bytes


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process and call (``.<name>.<pid>-<random>.tmp``). A long
    name is cut (to :data:`TEMPORARY_STEM_BYTES` bytes, whole characters) so that the temporary name stays within
    the file system's 255 bytes whenever the target's name does: a 250-character output name must be writable."""
    name = path.name
    if len(os.fsencode(name)) > TEMPORARY_STEM_BYTES:
        name = os.fsencode(name)[:TEMPORARY_STEM_BYTES].decode("utf-8", "ignore") or "output"
        name = os.fsdecode(os.fsencode(name))
    return path.with_name(f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")  # what temporary_name() makes


def _process_alive(pid: int, own_is_stale: bool = False) -> bool:
    if pid == os.getpid():
        return not own_is_stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists (another user's) or cannot be told: leave its files
    return True


def remove_stale_temporaries(folder: str | Path, recursive: bool = False, every: bool = False,
                             own_are_stale: bool = False) -> list[Path]:  # fmt: skip
    """Remove the temporary files and staging folders (:func:`temporary_name`) that a killed process left in
    ``folder`` (and its sub-folders with ``recursive``); those of a process still running are kept, unless
    ``every``. ``own_are_stale``: those named with this process's id are stale too (a run that has just taken
    its folder's lock has written nothing yet; a killed run in a restarted container may have had the same id),
    while those of other live processes (an ``iiae evaluate`` writing the run's metrics) are kept. Returns what
    was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"))
    except OSError:
        return removed
    for path in entries:
        match = TEMPORARY_NAME.match(path.name)
        if match is None or (not every and _process_alive(int(match.group(1)), own_are_stale)):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a new binary file beside ``path``, fsync it, rename it over ``path``.

    The parent folder is created if needed; the temporary file gets the usual permissions (not mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with open(temporary, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        cause = _os_error_in(error)
        if cause is not None and cause.filename is None:  # e.g. torch.save's RuntimeError over a full disk
            raise OSError(cause.errno, cause.strerror, str(path)) from error
        raise
    fsync_folder(path.parent)
    return path


def _os_error_in(error: BaseException) -> OSError | None:
    """``error`` itself or the first OSError it was raised from or while handling (None: none)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8, newlines as given (no translation); the undecodable bytes of a file name that is not
    UTF-8 (Python holds them as surrogates) are written back as they were."""
    return atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


def atomic_write_json(path: str | Path, values: Any) -> Path:
    """``values`` as indented JSON (UTF-8)."""
    return atomic_write_text(path, json.dumps(values, indent=2))


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a staging folder beside ``path`` to fill; on success it is renamed to ``path``, else removed.

    ``path`` must be absent or an empty folder (which is replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(path)
    staging.mkdir()
    try:
        yield staging
        if path.is_dir():
            path.rmdir()  # empty: the rename needs the name free (a non-empty folder raises OSError here)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_folder(path.parent)



def save_model_folder(path: str | Path, save: Callable[[Path], Any]) -> Path:
    """``save(folder)`` into a staging folder renamed to ``path`` once complete; what an earlier attempt that did
    not finish left at ``path`` (a run resumed after a full disk) is replaced."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    with atomic_folder(path) as staging:
        try:
            save(staging)
        except OutputError as error:  # name the file the user will look for, not the staging folder (removed)
            raise OutputError(str(error).replace(str(staging), str(path))) from None
        except OSError as error:
            if not isinstance(error.filename, str) or not error.filename.startswith(str(staging)):
                raise
            raise OSError(error.errno, error.strerror, error.filename.replace(str(staging), str(path), 1)) from None
    return path


def save_traceback(error: BaseException, folder: str | Path | None = None, name: str = ERROR_LOG) -> Path | None:
    """Write ``error``'s traceback to ``folder/name`` (a new temporary file when ``folder`` is None); the path, or
    None when it cannot be written. For the one-line report of an unexpected failure (a bug)."""
    text = "".join(traceback.format_exception(error))
    try:
        if folder is None:
            with tempfile.NamedTemporaryFile("w", prefix="iiae-error-", suffix=".log", delete=False,
                                             encoding="utf-8") as file:  # fmt: skip
                file.write(text)
                return Path(file.name)
        return atomic_write_text(Path(folder) / name, text)
    except OSError:
        return None
