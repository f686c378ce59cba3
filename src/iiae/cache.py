"""Where iiae caches what it can recompute (the digit classifier, zero-shot SBIR features, gallery codes), and the
pieces every cache is built from: a key from what the content depends on, and arrays stored whole under that key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iiae.atomic import atomic_write

LOG = logging.getLogger("iiae.cache")


def cache_root() -> Path:
    """``$IIAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iiae``, else ``~/.cache/iiae``."""
    if os.environ.get("IIAE_CACHE_DIR"):
        return Path(os.environ["IIAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "iiae"


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_listing(root: Path, files: Sequence[Path]) -> list[list]:
    """[path relative to ``root``, size in bytes, mtime in ns] of each file: changes whenever a file does."""
    listing = []
    for path in files:
        stat = path.stat()
        listing.append([path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns])
    return listing


def cache_key(payload: dict, digits: int = 24) -> str:
    """The first ``digits`` hex digits of the sha256 of ``payload`` as sorted JSON: one name per content."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:digits]


def read_cached_array(path: Path, key: str, rows: int) -> np.ndarray | None:
    """The 2-d array stored by :func:`write_cached_array` under ``key``, or None when the file is absent,
    unreadable, or holds another key or another number of rows."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            values, stored_key = data["values"], str(data["key"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if stored_key != key or values.ndim != 2 or len(values) != rows:
        return None
    return values


def write_cached_array(path: Path, key: str, values: np.ndarray) -> bool:
    """Store ``values`` with its ``key`` in ``path`` (.npz, written atomically); False (and a warning) when the
    cache cannot be written: a cache is never worth failing for."""
    try:
        atomic_write(path, lambda file: np.savez(file, values=values, key=np.asarray(key)))
    except OSError as error:
        LOG.warning("iiae: not cached (%s: %s)", path, error.strerror or error)
        return False
    return True
