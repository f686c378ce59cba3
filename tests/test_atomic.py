"""iiae.atomic: a file or folder appears whole or not at all, and a failed write leaves no temporary behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from iiae.atomic import (
    atomic_folder,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
)


def _entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_writes_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "metrics.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    atomic_write_text(tmp_path / "report.md", "naïve\r\nline")
    assert (tmp_path / "report.md").read_bytes() == "naïve\r\nline".encode()  # UTF-8, newlines untouched
    assert _entries(tmp_path) == ["deep", "report.md"] and _entries(path.parent) == ["metrics.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the usual permissions, not mkstemp's


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"old")

    def half_then_fail(file) -> None:  # noqa: ANN001
        file.write(b"new but incomplete")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and _entries(tmp_path) == ["last.ckpt"]

    with pytest.raises(KeyboardInterrupt):  # also an interruption (SIGINT) mid-write
        atomic_write(tmp_path / "other", lambda file: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert _entries(tmp_path) == ["last.ckpt"]


def test_a_folder_appears_only_once_complete(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_folder(out) as staging:
            (staging / "config.json").write_text("{}")
            assert not out.exists()  # nothing visible under the final name while it is written
            raise RuntimeError("interrupted")
    assert _entries(tmp_path) == []  # the staging folder is gone too

    out.mkdir()  # an empty folder (e.g. made by the user) is replaced
    with atomic_folder(out) as staging:
        (staging / "model.safetensors").write_bytes(b"weights")
    assert _entries(out) == ["model.safetensors"] and _entries(tmp_path) == ["model"]

    with pytest.raises(OSError), atomic_folder(out) as staging:  # a folder with files is never replaced
        (staging / "other").write_text("x")
    assert _entries(out) == ["model.safetensors"] and _entries(tmp_path) == ["model"]
