"""Tests of the IDX reader and writer: round trips and a DataError naming the file for every malformed input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from iiae.data.idx import read_idx, write_idx
from iiae.errors import DataError, OutputError

TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
DTYPES = list(TYPE_CODES)


def _sample_array(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """An array whose values use the sign and range of ``dtype`` (so a byte-order bug changes them)."""
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if np.issubdtype(dtype, np.floating):
        return (values * -1.5 + 0.25).astype(dtype)
    info = np.iinfo(dtype)
    return (values * 997 % (int(info.max) - int(info.min) + 1) + int(info.min)).astype(dtype)


def _write_raw(path: Path, content: bytes) -> Path:
    """Write ``content`` to ``path``, gzip-compressed when the name ends in ``.gz``."""
    path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
    return path


def _header(type_code: int, dims: tuple[int, ...]) -> bytes:
    """An IDX header for ``dims``."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(dim.to_bytes(4, "big") for dim in dims)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_keeps_values_dtype_and_shape(tmp_path: Path, dtype: type, suffix: str) -> None:
    array = _sample_array(dtype, (3, 4, 5))
    path = tmp_path / f"sample-idx3{suffix}"
    write_idx(path, array)
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.dtype.isnative or loaded.dtype.itemsize == 1
    assert loaded.shape == (3, 4, 5)
    np.testing.assert_array_equal(loaded, array)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:4] == bytes([0, 0, TYPE_CODES[dtype], 3])
    assert len(raw) == 4 + 3 * 4 + array.nbytes


def test_written_file_is_big_endian_standard_idx(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([258, -1], dtype=np.int16))
    assert path.read_bytes() == _header(0x0B, (2,)) + b"\x01\x02\xff\xff"


def test_reads_hand_written_mnist_style_file(tmp_path: Path) -> None:
    path = _write_raw(tmp_path / "images-idx3-ubyte", _header(0x08, (2, 2, 3)) + bytes(range(12)))
    np.testing.assert_array_equal(read_idx(path), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))


def test_gzip_detected_by_content_without_gz_suffix(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(_header(0x08, (3,)) + b"\x07\x02\x01"))
    np.testing.assert_array_equal(read_idx(path), [7, 2, 1])


def test_read_returns_writable_array(tmp_path: Path) -> None:
    path = tmp_path / "a.idx"
    write_idx(path, np.zeros((2, 2), np.uint8))
    loaded = read_idx(path)
    assert loaded.flags.writeable
    loaded[0, 0] = 1  # would raise if the array were a read-only view of the file bytes
    assert loaded[0, 0] == 1 and read_idx(path)[0, 0] == 0  # a copy: the file is untouched


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "a.idx", np.zeros(3, np.int64))


def test_write_into_missing_folder_raises_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="no-such-folder"):
        write_idx(tmp_path / "no-such-folder" / "a.idx", np.zeros(3, np.uint8))


BAD_CONTENTS = {
    "empty": (b"", "empty"),
    "bad_magic": (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "magic"),
    "unknown_dtype": (b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00", "type code 0x07"),
    "short_header": (b"\x00\x00", "truncated"),
    "truncated_dims": (b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"), "truncated"),
    "truncated_data": (_header(0x08, (10, 28, 28)) + bytes(100), "truncated"),
    "trailing_bytes": (_header(0x08, (4,)) + bytes(5), "trailing"),
    "absurd_header": (_header(0x0E, (1000, 1000, 1000, 1000)) + bytes(16), "truncated"),
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
def test_malformed_file_raises_data_error_naming_file(tmp_path: Path, case: str, suffix: str) -> None:
    content, expected_words = BAD_CONTENTS[case]
    path = _write_raw(tmp_path / f"{case}-idx{suffix}", content)
    with pytest.raises(DataError, match=expected_words) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_missing_file_raises_data_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match="does not exist") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_directory_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a regular file"):
        read_idx(tmp_path)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="cut_in_half"),
        pytest.param(lambda data: data[:10] + bytes(b ^ 0xFF for b in data[10:30]) + data[30:], id="flipped_bytes"),
        pytest.param(lambda data: data[:-8] + bytes(8), id="bad_crc_and_size"),
        pytest.param(lambda data: b"\x1f\x8b" + bytes(40), id="garbage_after_signature"),
    ],
)
def test_corrupted_gzip_raises_data_error_naming_file(tmp_path: Path, corrupt) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, _sample_array(np.uint8, (20, 28, 28)))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_absurd_plain_header_fails_before_allocating(tmp_path: Path) -> None:
    # 10**12 float64 items (8 TB) declared in a 24-byte file: must be a DataError, not MemoryError.
    path = _write_raw(tmp_path / "huge-idx2", _header(0x0E, (10**6, 10**6)))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
