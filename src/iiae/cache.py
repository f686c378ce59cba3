"""Where iiae caches what it can recompute (the digit classifier, zero-shot SBIR features, gallery codes), and the
pieces every cache is built from.

- A key from what the content depends on: :func:`file_listing` hashes the bytes of every input file (sha256,
  read in blocks), so a file replaced by other bytes of the same size and mtime (``cp -p``, ``rsync -t``, tar)
  changes the key; :func:`cache_key` names a payload.
- Arrays stored whole under that key (:func:`write_cached_array`) and read back by :func:`read_cached_array`,
  which trusts nothing in the file: :func:`read_npz` checks each member's ``.npy`` header (dtype, shape) against
  the expected shape and the member's size BEFORE reading its data (a header claiming 10^11 columns is refused,
  not allocated), then checks the values finite.
- A cache that fails any check is absent: the caller rebuilds it, and :func:`damaged` logs the one notice. A key
  mismatch (the file holds other content) is an ordinary miss, without a notice.

:func:`read_npz` / :func:`read_npy` also read user data files (with ``error=DataError``): an absurd header is
refused naming the file, before anything is allocated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from iiae.atomic import atomic_write
from iiae.errors import DataError, IIAEError
from iiae.outputs import check_output
from iiae.readers import open_regular, quote

LOG = logging.getLogger("iiae.cache")
HASH_BLOCK = 1 << 20  # bytes read at once when hashing a file
HASHED_FILE_LIMIT = 256 << 20  # bytes: larger files are keyed by identity, not content (file_listing)
MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032:1: a member claiming more is a lie (zip bomb)
#: (shape, allowed dtype kinds or the one dtype) of an expected array; None in a shape: any length (bounded by the
#: member's size)
ArraySpec = tuple[tuple[int | None, ...], "str | np.dtype"]


class CacheDamaged(DataError):
    """A cache file that cannot be trusted (damaged, truncated, other shapes, NaN): rebuilt, never an error."""


def cache_root() -> Path:
    """``$IIAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/iiae``, else ``~/.cache/iiae``; an OutputError (checked by
    :func:`iiae.outputs.check_output`, like every output) when that is a file, a device or lies inside a run,
    model or sweep folder."""
    if os.environ.get("IIAE_CACHE_DIR"):
        root, what = Path(os.environ["IIAE_CACHE_DIR"]), "the cache folder $IIAE_CACHE_DIR"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root, what = Path(base) / "iiae", "the cache folder ($XDG_CACHE_HOME or ~/.cache)/iiae"
    return check_output(root, folder=True, what=what)


# ---------------------------------------------------------------------------------------------------------- keys
def file_sha256(path: str | Path, what: str = "file", error: type[IIAEError] = DataError) -> str:
    """The sha256 (hex) of a regular file's bytes, read in 1 MiB blocks; ``error`` for anything else (a FIFO or
    device is refused at once, never read: :func:`iiae.readers.open_regular`)."""
    digest = hashlib.sha256()
    with open_regular(path, what, error) as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_listing(root: Path, files: Sequence[Path], what: str = "file") -> list[list]:
    """[path relative to ``root``, size in bytes, sha256 of the bytes] of each file: changes whenever a file's
    content does, whatever its timestamps say. DataError (naming the file) for one that is not a regular file.
    About 40 ms per 1,000 small PNGs (12 MB), a sixth of decoding them alone. A file larger than
    :data:`HASHED_FILE_LIMIT` (no image of a gallery is; a PNG followed by 40 GB of zeros in a sparse file would
    take minutes to hash) is keyed by its identity instead: device, inode, size, mtime_ns and ctime_ns (a
    replacement or a write changes its ctime, which no tool can set back)."""
    listing = []
    for path in files:
        with open_regular(path, what, DataError) as handle:
            status = os.fstat(handle.fileno())
            if status.st_size > HASHED_FILE_LIMIT:
                identity = [status.st_dev, status.st_ino, status.st_mtime_ns, status.st_ctime_ns]
                listing.append([Path(path).relative_to(root).as_posix(), status.st_size, identity])
                continue
            digest, size = hashlib.sha256(), 0
            for block in iter(lambda: handle.read(HASH_BLOCK), b""):
                digest.update(block)
                size += len(block)
        listing.append([Path(path).relative_to(root).as_posix(), size, digest.hexdigest()])
    return listing


def cache_key(payload: dict, digits: int = 24) -> str:
    """The first ``digits`` hex digits of the sha256 of ``payload`` as sorted JSON: one name per content."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:digits]


def damaged(path: Path, reason: str | Exception) -> None:
    """The one notice of a cache file that failed its checks and is rebuilt (``reason``: what failed, e.g. the
    CacheDamaged raised by a reader with ``what="cache file"``, whose naming of the file is dropped here)."""
    text = str(reason).removeprefix(f"cache file {path}").lstrip(": ")
    LOG.warning("iiae: cache %s was damaged (%s); rebuilding", path, text)


# ------------------------------------------------------------------------------------------------ bounded arrays
def read_npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the ``.npy`` stream at ``handle``, reading only its header; ValueError
    when it is not one (numpy bounds the header to 10,000 bytes and parses it without evaluating code)."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")


def header_problem(shape: tuple[int, ...], dtype: np.dtype, data_bytes: int, spec: ArraySpec | None) -> str | None:
    """Why an array of ``shape`` and ``dtype`` with ``data_bytes`` bytes of data behind its header cannot be the
    expected one (``spec``: shape with None for any length, allowed dtype kinds; None: any numeric or text
    array), or None when it can. Sizes are Python integers: a claim of (10^11, 10^11) cannot overflow."""
    if dtype.hasobject:
        return "holds Python objects (they would need pickle, which iiae never loads)"
    expected_shape, kinds = spec if spec is not None else (None, "biufcUS")
    if isinstance(kinds, np.dtype) and dtype != kinds:
        return f"has dtype {dtype}, expected {kinds}"
    if not isinstance(kinds, np.dtype) and dtype.kind not in kinds:
        return f"has dtype {dtype}, expected one of kind {kinds!r}"
    if expected_shape is not None and (len(shape) != len(expected_shape) or any(
            want is not None and have != want for have, want in zip(shape, expected_shape))):  # fmt: skip
        return f"has shape {_shape(shape)}, expected {_shape(expected_shape)}"
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != data_bytes:
        return f"declares shape {_shape(shape)} of {dtype} ({claimed:,} bytes) but holds {data_bytes:,} bytes"
    return None


def _shape(shape: tuple) -> str:
    """A shape for a message (None: any length), at most a few dozen characters."""
    text = "(" + ", ".join("any" if n is None else str(n) for n in shape[:8]) + (", ..." if len(shape) > 8 else "")
    return text + ("," if len(shape) == 1 else "") + ")"


def _finite_problem(name: str, array: np.ndarray) -> str | None:
    if array.dtype.kind in "fc" and not bool(np.isfinite(array).all()):
        return f"{name} holds NaN or infinite values"
    return None


def read_npy(path: str | Path, spec: ArraySpec | None = None, what: str = "array file",
             error: type[IIAEError] = DataError, finite: bool = False) -> np.ndarray:
    """The array of the ``.npy`` file ``path``, its header checked (:func:`header_problem`) against the file's size
    before any data is read; ``error`` naming the file otherwise (also for NaN/inf with ``finite``)."""
    with open_regular(path, what, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            shape, fortran, dtype = read_npy_header(handle)
        except (ValueError, OSError, EOFError) as failure:
            raise error(f"{what} {path} is not a readable .npy file ({quote(str(failure))[1:-1]})") from None
        problem = header_problem(shape, dtype, size - handle.tell(), spec)
        if problem:
            raise error(f"{what} {path} {problem}")
        handle.seek(0)
        try:
            array = np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError, EOFError) as failure:
            raise error(f"{what} {path} is not a readable .npy file ({quote(str(failure))[1:-1]})") from None
    problem = finite and _finite_problem("it", array)
    if problem:
        raise error(f"{what} {path}: {problem}")
    return array


def _member_size_problem(info: zipfile.ZipInfo, archive_size: int, stored: bool) -> str | None:
    """Why the size a zip member's entry claims cannot be true, or why it is stored in a way we do not read (only
    uncompressed with ``stored``, as np.savez writes; else also deflated, as np.savez_compressed does), or None."""
    methods = (zipfile.ZIP_STORED,) if stored else (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
    if info.compress_type not in methods:
        return f"member {info.filename} uses zip compression method {info.compress_type}, expected {methods}"
    if info.header_offset + info.compress_size > archive_size:
        return f"member {info.filename} claims {info.compress_size:,} bytes past the end of the file"
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        return f"member {info.filename} claims {info.file_size:,} bytes but stores {info.compress_size:,}"
    if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024:
        return f"member {info.filename} claims {info.file_size:,} bytes from {info.compress_size:,} compressed"
    return None


def read_npz(path: str | Path, expected: dict[str, ArraySpec | None], what: str = "array file",
             error: type[IIAEError] = DataError, finite: bool = False, exact: bool = False,
             stored: bool = False) -> dict[str, np.ndarray]:  # fmt: skip
    """The arrays named in ``expected`` of the ``.npz`` file ``path``: each member's entry and ``.npy`` header are
    checked (:func:`header_problem`) against the file before its data is read, so a member that claims more than
    it holds is refused without allocating it (a compressed member may claim at most ~1,000 times its compressed
    size, deflate's limit; ``stored``: members must be uncompressed, so nothing exceeds the file's size). The data
    is read to the member's end, so its CRC-32 is checked. ``error`` naming the file and the array for a missing
    array, a damaged file, a header that does not fit, NaN/inf (with ``finite``), or other arrays (with
    ``exact``)."""
    arrays = {}
    with open_regular(path, what, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as failure:
            raise error(f"{what} {path} is not a readable .npz file ({quote(str(failure))[1:-1]})") from None
        with archive:
            names = {info.filename: info for info in archive.infolist()}
            extra = sorted(set(names) - {f"{name}.npy" for name in expected})
            if exact and extra:
                raise error(f"{what} {path} holds unexpected arrays {quote(extra)}")
            for name, spec in expected.items():
                info = names.get(f"{name}.npy")
                if info is None:
                    held = sorted(member.removesuffix(".npy") for member in names)
                    raise error(f"{what} {path} lacks the array {name!r} (holds {quote(held)})")
                arrays[name] = _read_member(archive, info, size, stored, spec, f"{what} {path}: array {name!r}",
                                            error)  # fmt: skip
    for name, array in arrays.items():
        problem = finite and _finite_problem(f"array {name!r}", array)
        if problem:
            raise error(f"{what} {path}: {problem}")
    return arrays


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int, stored: bool,
                 spec: ArraySpec | None, where: str, error: type[IIAEError]) -> np.ndarray:  # fmt: skip
    problem = _member_size_problem(info, archive_size, stored)
    if problem:
        raise error(f"{where}: {problem}")
    try:
        with archive.open(info) as member:
            shape, _, dtype = read_npy_header(member)
            problem = header_problem(shape, dtype, info.file_size - member.tell(), spec)
        if problem:
            raise error(f"{where} {problem}")
        with archive.open(info) as member:  # the header fits what the member holds: reading it is bounded
            return np.lib.format.read_array(member, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, zlib.error) as failure:
        if isinstance(failure, IIAEError):
            raise
        raise error(f"{where} cannot be read ({quote(str(failure))[1:-1]})") from None


# ------------------------------------------------------------------------------------------------- cached arrays
def read_cached_array(path: Path, key: str, rows: int, columns: int | None = None,
                      dtype: np.dtype | type = np.float32) -> np.ndarray | None:  # fmt: skip
    """The 2-d ``dtype`` array of ``rows`` x ``columns`` (None: any) stored by :func:`write_cached_array` under
    ``key``, or None: when the file is absent or holds another key (a miss), or when it fails a check (damaged,
    truncated, another shape or dtype, a header claiming more than the file holds, a bad CRC, NaN or inf: one
    notice, see :func:`damaged`). Nothing is allocated before the header is checked."""
    if not os.path.lexists(path):
        return None
    try:
        if str(read_npz(path, {"key": ((), "U")}, "cache file", CacheDamaged, stored=True)["key"]) != key:
            return None
        return read_npz(path, {"key": ((), "U"), "values": ((rows, columns), np.dtype(dtype))}, "cache file",
                        CacheDamaged, finite=True, exact=True, stored=True)["values"]  # fmt: skip
    except CacheDamaged as failure:
        damaged(path, failure)
        return None


def write_cached_array(path: Path, key: str, values: np.ndarray) -> bool:
    """Store ``values`` with its ``key`` in ``path`` (.npz, written atomically); False (and a warning) when the
    cache cannot be written: a cache is never worth failing for. Values holding NaN or inf are not cached."""
    if values.dtype.kind in "fc" and not bool(np.isfinite(values).all()):
        LOG.warning("iiae: not cached (%s: the values hold NaN or infinite numbers)", path)
        return False
    try:
        atomic_write(path, lambda file: np.savez(file, values=values, key=np.asarray(key)))
    except OSError as error:
        LOG.warning("iiae: not cached (%s: %s)", path, error.strerror or error)
        return False
    return True
