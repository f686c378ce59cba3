"""Reading and writing the IDX format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number -- two zero bytes, a byte naming the element type and a byte with the
number of dimensions -- followed by each dimension as a big-endian uint32 and then the elements themselves,
big-endian, in C order. Files whose name ends in ``.gz`` (or whose first bytes are the gzip signature) are
read through gzip transparently.

Every malformed file raises :class:`~iiae.errors.DataError` naming the file; nothing is allocated from the
header before the file is known to hold that many bytes.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from iiae.errors import DataError, OutputError

#: IDX element-type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_SIGNATURE = b"\x1f\x8b"
_READ_CHUNK_BYTES = 16 * 1024 * 1024
_MAX_DIM = 2**32 - 1
_MAX_NDIM = 255
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error, OSError)


def _supported_dtypes_text() -> str:
    """Human-readable list of the element types IDX can hold, for error messages."""
    return ", ".join(str(dtype.newbyteorder("=")) for dtype in IDX_DTYPES.values())


def _is_gzip(path: Path) -> bool:
    """True if ``path`` names a gzip file, by suffix or by its first two bytes."""
    if path.suffix == ".gz":
        return True
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_SIGNATURE


@contextmanager
def _open_idx_stream(path: Path, compressed: bool) -> Iterator[BinaryIO]:
    """Open ``path`` for binary reading, decompressing on the fly when ``compressed``."""
    if compressed:
        with gzip.open(path, "rb") as stream:
            yield stream  # type: ignore[misc]
    else:
        with path.open("rb") as stream:
            yield stream


def _read_up_to(stream: BinaryIO, count: int) -> bytes:
    """Read at most ``count`` bytes in bounded chunks, so a huge ``count`` never allocates up front."""
    chunks: list[bytes] = []
    remaining = count
    while remaining > 0:
        chunk = stream.read(min(remaining, _READ_CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _parse_header(stream: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Read the magic number and the dimensions; return the big-endian dtype and the shape."""
    magic = _read_up_to(stream, 4)
    if not magic:
        raise DataError(f"IDX file {path} holds no data: expected a 4-byte IDX header")
    if len(magic) < 4:
        raise DataError(f"IDX file {path} is truncated: expected a 4-byte IDX header, found {len(magic)} byte(s)")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"IDX file {path} has a bad magic number {magic.hex()}: expected two zero bytes, a type code "
            "and a dimension count (is it really an MNIST-style IDX file?)"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(f"IDX file {path} has unknown element type code 0x{type_code:02X}: expected one of {known}")
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions: expected at least one")
    dims_bytes = _read_up_to(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(
            f"IDX file {path} is truncated: its header declares {ndim} dimension(s) "
            f"({4 * ndim} bytes) but only {len(dims_bytes)} byte(s) follow the magic number"
        )
    shape = tuple(int(dim) for dim in np.frombuffer(dims_bytes, dtype=">u4"))
    return IDX_DTYPES[type_code], shape


def _payload_size(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Number of data bytes an array of ``shape`` and ``dtype`` takes (a Python int: never overflows)."""
    count = 1
    for dim in shape:
        count *= dim
    return count * dtype.itemsize


def _read_payload(stream: BinaryIO, path: Path, expected: int, shape: tuple[int, ...]) -> bytes:
    """Read exactly ``expected`` data bytes and check that nothing follows them."""
    payload = _read_up_to(stream, expected)
    if len(payload) < expected:
        raise DataError(
            f"IDX file {path} is truncated: its header declares shape {shape} ({expected} data bytes) "
            f"but only {len(payload)} byte(s) of data follow"
        )
    if stream.read(1):
        raise DataError(
            f"IDX file {path} has trailing bytes after the {expected} data bytes its header (shape {shape}) declares"
        )
    return payload


def _check_plain_size(path: Path, header_bytes: int, expected: int, shape: tuple[int, ...]) -> None:
    """For an uncompressed file, compare its size on disk with the header before reading anything more."""
    available = path.stat().st_size - header_bytes
    if available < expected:
        raise DataError(
            f"IDX file {path} is truncated: its header declares shape {shape} ({expected} data bytes) "
            f"but the file holds only {available} byte(s) of data"
        )
    if available > expected:
        raise DataError(
            f"IDX file {path} has {available - expected} trailing byte(s) after the {expected} data bytes "
            f"its header (shape {shape}) declares"
        )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-byte-order numpy array of the stored type and shape.

    Raises :class:`DataError` naming the file if it is missing, empty, not IDX, truncated, followed by extra
    bytes, or a corrupted gzip stream.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"IDX file {path} does not exist")
    if not path.is_file():
        raise DataError(f"IDX file {path} is not a regular file")
    compressed = False
    try:
        if path.stat().st_size == 0:
            raise DataError(f"IDX file {path} is empty: expected an IDX header followed by data")
        compressed = _is_gzip(path)
        with _open_idx_stream(path, compressed) as stream:
            dtype, shape = _parse_header(stream, path)
            expected = _payload_size(dtype, shape)
            if not compressed:
                _check_plain_size(path, 4 + 4 * len(shape), expected, shape)
            payload = _read_payload(stream, path, expected, shape)
    except DataError:
        raise
    except _GZIP_ERRORS as error:
        kind = "corrupted gzip stream" if compressed else "unreadable file"
        raise DataError(f"IDX file {path} cannot be read ({kind}): {error}") from error
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_type_code(dtype: np.dtype, path: Path) -> int:
    """The IDX element-type code for ``dtype``, or DataError if IDX cannot store it."""
    for code, idx_dtype in IDX_DTYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    raise DataError(
        f"cannot write an array of dtype {dtype} to IDX file {path}: expected one of {_supported_dtypes_text()}"
    )


def _idx_header(array: np.ndarray, path: Path) -> bytes:
    """The magic number and dimensions of ``array`` as IDX header bytes."""
    code = _idx_type_code(array.dtype, path)
    if not 1 <= array.ndim <= _MAX_NDIM:
        raise DataError(f"cannot write a {array.ndim}-D array to IDX file {path}: expected 1 to {_MAX_NDIM} dims")
    if any(dim > _MAX_DIM for dim in array.shape):
        raise DataError(f"cannot write shape {array.shape} to IDX file {path}: each dimension must be < 2**32")
    dims = np.asarray(array.shape, dtype=">u4").tobytes()
    return bytes([0, 0, code, array.ndim]) + dims


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32 and float64 (any byte order); the data is stored
    big-endian as the format requires. A gzip file is written with a zero timestamp so equal arrays give
    byte-identical files.
    """
    path = Path(path)
    array = np.asarray(array)
    header = _idx_header(array, path)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    payload = np.ascontiguousarray(array, dtype=big_endian).tobytes()
    try:
        if path.suffix == ".gz":
            with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
                stream.write(header)
                stream.write(payload)
        else:
            with path.open("wb") as stream:
                stream.write(header)
                stream.write(payload)
    except OSError as error:
        raise OutputError(f"cannot write IDX file {path}: {error.strerror or error}") from error
