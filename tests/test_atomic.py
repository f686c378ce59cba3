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
    save_model_folder,
)
from iiae.errors import OutputError


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


def test_a_write_that_fails_on_a_full_disk_names_the_target_file(tmp_path: Path) -> None:
    """torch.save reports a full disk as a RuntimeError raised while handling the OSError: the OSError, with the
    file the user asked for, is what reaches the command line."""

    def torch_like_write(file) -> None:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    def write_that_fails(file) -> None:
        try:
            raise OSError(28, "No space left on device")
        except OSError as error:
            raise RuntimeError("unexpected pos") from error

    for write in (torch_like_write, write_that_fails):
        with pytest.raises(OSError) as raised:
            atomic_write(tmp_path / "last.ckpt", write)
        assert raised.value.errno == 28 and raised.value.filename == str(tmp_path / "last.ckpt")
    assert _entries(tmp_path) == []
    with pytest.raises(RuntimeError, match="a bug"):  # no OSError behind it: left as it is
        atomic_write(tmp_path / "x", lambda file: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_a_model_folder_replaces_an_unfinished_one_and_errors_name_the_final_path(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{half")  # left by an attempt that a full disk stopped
    save_model_folder(model, lambda folder: (folder / "weights").write_text("w"))
    assert _entries(model) == ["weights"]

    def fails(folder: Path) -> None:
        raise OSError(28, "No space left on device", str(folder / "weights"))

    with pytest.raises(OSError) as raised:
        save_model_folder(tmp_path / "other", fails)
    assert raised.value.filename == str(tmp_path / "other" / "weights")

    def refuses(folder: Path) -> None:
        raise OutputError(f"cannot write {folder / 'model.safetensors'}: disk full")

    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'third' / 'model.safetensors'}: disk full"):
        save_model_folder(tmp_path / "third", refuses)
    assert _entries(tmp_path) == ["model"]
