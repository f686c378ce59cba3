"""A round of bad inputs and faults through the command line, as a new user would make them (issue 13).

Every case runs ``iiae -q <command>`` in a forked child of one process that has imported the package once (a
fresh interpreter per case would spend most of the round importing torch), in its own folder, and is checked
against the error contract:

- exit status 2 for a user mistake (0 where the input is odd but usable, and the case says so);
- at most one line on stderr, never a traceback;
- nothing half-written: no temporary file, no ``error.log``, and no output folder a failed command was asked to
  create (``new_out``), unless the case says the run is left to resume.

    python benchmarks/bad_inputs.py --markdown bad_inputs.md   # 10-20 min on one core; exit 1 if a case fails
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import pickle
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import iiae.cli.main as cli  # noqa: E402
from iiae.data import write_idx  # noqa: E402

TINY = [
    "--set", "model.image_size=16", "--set", "model.encoder_widths=[8]", "--set", "model.exclusive_widths=[8,8]",
    "--set", "model.decoder_widths=[8]", "--set", "model.shared_channels=4", "--batch-size", "8",
    "--accelerator", "cpu", "--set", "train.eval_batch_size=32", "--set", "train.checkpoint_every=1",
    "--set", "train.select_every=0",
]  # fmt: skip
CASE_TIMEOUT_S = 180


@dataclass
class Workspace:
    """What the cases start from: tiny data, a finished tiny run, its exported model."""

    root: Path
    idx: Path
    ab: Path
    run: Path
    model: Path

    def train(self, *extra: str) -> list[str]:
        return ["train", "--data-source", "idx", "--data-root", str(self.idx), *TINY, "--steps", "2", *extra]

    def copy_run(self, folder: Path) -> Path:
        copy = folder / "run"
        shutil.copytree(self.run, copy)
        return copy


@dataclass
class Case:
    group: str
    name: str
    argv: Callable[[Workspace, Path], list[str]]  # (workspace, this case's folder) -> the command line
    expect: int = 2
    new_out: str | None = None  # a path (in the case folder) a failed command must not leave behind


# ------------------------------------------------------------------------------------------------- file makers
def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
    return path


def _png(path: Path, size: tuple[int, int] = (32, 16), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}.get(mode, 3)
    pixels = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode if mode in ("RGB", "RGBA", "L") else None
                    ).convert(mode).save(path)  # fmt: skip
    return path


def _ab_folder(root: Path, count: int = 6, size: int = 16, splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    for split in splits:
        for index in range(count):
            _png(root / split / f"{index}.png", (2 * size, size))
    return root


def _idx_copy(workspace: Workspace, folder: Path) -> Path:
    copy = folder / "idx"
    shutil.copytree(workspace.idx, copy)
    return copy


def _idx_with(workspace: Workspace, folder: Path, name: str, data: bytes | None) -> Path:
    """The tiny IDX folder with file ``name`` replaced by ``data`` (None: removed)."""
    copy = _idx_copy(workspace, folder)
    if data is None:
        (copy / name).unlink()
    else:
        _write(copy / name, data)
    return copy


def _idx_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    buffer.write(struct.pack(">HBB", 0, 0x08, array.ndim))
    buffer.write(struct.pack(f">{array.ndim}I", *array.shape))
    buffer.write(array.astype(np.uint8).tobytes())
    return gzip.compress(buffer.getvalue())


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"


def _run_with(workspace: Workspace, folder: Path, change: Callable[[Path], None]) -> Path:
    """A copy of the finished run with ``change(run)`` applied and metrics.json removed (so it resumes)."""
    run = workspace.copy_run(folder)
    (run / "metrics.json").unlink()
    change(run)
    return run


def _checkpoint(workspace: Workspace, **changes: object) -> dict:
    checkpoint = torch.load(workspace.run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint.update(changes)
    return checkpoint


class _Payload:
    def __reduce__(self):  # runs a shell command if anything unpickles it without weights_only
        return (os.system, ("touch PWNED",))


def _model_with(workspace: Workspace, folder: Path, name: str, data: bytes | str | None) -> Path:
    model = folder / "model"
    shutil.copytree(workspace.model, model)
    if data is None:
        (model / name).unlink()
    else:
        _write(model / name, data)
    return model


def _model_config(workspace: Workspace, folder: Path, **changes: object) -> Path:
    config = json.loads((workspace.model / "config.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    return _model_with(workspace, folder, "config.json", json.dumps(config))


# ------------------------------------------------------------------------------------------------------ cases
def cases() -> list[Case]:
    found: list[Case] = []

    def case(group: str, name: str, expect: int = 2, new_out: str | None = None):
        def register(argv: Callable[[Workspace, Path], list[str]]) -> None:
            found.append(Case(group, name, argv, expect, new_out))

        return register

    # --- command-line values
    for flag, value in [("--steps", "0"), ("--steps", "-5"), ("--steps", "abc"), ("--steps", "1.5"),
                        ("--steps", "99999999999999999999"), ("--batch-size", "0"), ("--batch-size", "-1"),
                        ("--batch-size", "x"), ("--seed", "-1"), ("--seed", "4294967296"), ("--seed", "1e3"),
                        ("--accelerator", "tpu"), ("--accelerator", "gpu"), ("--devices", "0"), ("--devices", "-2"),
                        ("--devices", "64"), ("--strategy", "ddp_spawn"), ("--strategy", "fsdp"),
                        ("--data-source", "web"), ("--config", "no_such_experiment"),
                        ("--config", "/nonexistent/config.yaml")]:  # fmt: skip
        case("arguments", f"train {flag} {value}", new_out="out")(
            lambda w, d, flag=flag, value=value: [*w.train(), flag, value, "--out", str(d / "out")])
    case("arguments", "unknown command")(lambda w, d: ["trian"])
    case("arguments", "no command")(lambda w, d: [])
    case("arguments", "evaluate without a model")(lambda w, d: ["evaluate"])
    case("arguments", "export without --out")(lambda w, d: ["export", str(w.run)])
    case("arguments", "unknown option")(lambda w, d: [*w.train(), "--stepz", "3"])
    case("arguments", "--resume with --out", new_out="out")(
        lambda w, d: ["train", "--resume", str(w.run), "--out", str(d / "out")])

    # --- --set overrides
    for override in ["model.image_size=abc", "model.image_size=3.5", "model.image_size=-16", "model.image_size=0",
                     "model.image_size=1073741824", "model.image_size=true",
                     "model.encoder_widths=[]", "model.encoder_widths=[0]", "model.encoder_widths=[-8]",
                     "model.encoder_widths=[8,", "model.encoder_widths=abc", "model.encoder_widths=[1e9,1e9]",
                     "model.shared_dim=0", "model.no_such_key=1", "nosection.key=1", "model=3", "noequals",
                     "=3", "train.learning_rate=-1", "train.learning_rate=0", "train.learning_rate=inf",
                     "train.learning_rate=nan", "train.learning_rate=1e999", "loss.lambda_=-1",
                     "loss.lambda_=inf", "train.checkpoint_every=0", "train.keep_checkpoints=0",
                     "train.log_every=0", "train.select_every=-1", "data.split_seed=-1",
                     "data.colour_seed=4294967296", "train.eval_batch_size=0", "data.skip_bad=maybe",
                     "data.validation_fraction=1.5", "data.validation_fraction=-0.1", "model.logvar_max=inf",
                     "train.max_grad_norm=-1", "model.image_size=16\n32"]:  # fmt: skip
        case("--set", override, new_out="out")(
            lambda w, d, override=override: [*w.train(), "--set", override, "--out", str(d / "out")])

    # --- config files
    for name, text in [("empty", ""), ("a list", "- 1\n- 2\n"), ("not YAML", "model: [unclosed\n"),
                       ("unknown section", "nonsense:\n  a: 1\n"), ("wrong type", "model:\n  image_size: big\n"),
                       ("python tag", "model: !!python/object/apply:os.system ['touch PWNED']\n"),
                       ("binary", b"\x00\xff\xfe\x89PNG\r\n".decode("latin-1")),
                       ("tabs", "model:\n\timage_size: 16\n"), ("a scalar", "42\n"),
                       ("duplicate keys", "model:\n  image_size: 16\n  image_size: 32\n"),
                       ("huge number", "train:\n  steps: 1e400\n"),
                       ("section is a list", "model: [1, 2]\n"),
                       ("non-UTF-8", b"model:\n  name: caf\xe9\n".decode("latin-1"))]:  # fmt: skip
        def config_case(w: Workspace, d: Path, text: str = text) -> list[str]:
            path = _write(d / "config.yaml", text.encode("latin-1"))
            return [*w.train(), "--config", str(path), "--out", str(d / "out")]

        case("config file", name, new_out="out")(config_case)
    case("config file", "a folder", new_out="out")(
        lambda w, d: [*w.train(), "--config", str(d), "--out", str(d / "out")])

    # --- IDX data
    images = np.zeros((8, 28, 28), np.uint8)
    for name, file, data in [
        ("missing image file", IMAGES, None), ("missing label file", LABELS, None),
        ("empty image file", IMAGES, b""), ("truncated gzip", IMAGES, None),
        ("not gzip but .gz", IMAGES, b"plain bytes, not compressed"), ("wrong magic", IMAGES, _gz(b"\x12\x34\x08\x03" + b"\0" * 40)),
        ("header only", IMAGES, _gz(struct.pack(">HBBIII", 0, 8, 3, 64, 28, 28))),
        ("labels count differs", LABELS, _idx_bytes(np.zeros(5, np.uint8))),
        ("labels out of range", LABELS, _idx_bytes(np.full(64, 200, np.uint8))),
        ("images 1-D", IMAGES, _idx_bytes(np.zeros(64, np.uint8))),
        ("images 4-D", IMAGES, _idx_bytes(np.zeros((64, 1, 28, 28), np.uint8))),
        ("zero images", IMAGES, _idx_bytes(np.zeros((0, 28, 28), np.uint8))),
        ("images 7x7", IMAGES, _idx_bytes(np.zeros((64, 7, 7), np.uint8))),
        ("float dtype", IMAGES, _gz(struct.pack(">HBBIII", 0, 0x0D, 3, 8, 28, 28) + images.astype(">f4").tobytes())),
        ("huge dims", IMAGES, _gz(struct.pack(">HBBIII", 0, 8, 3, 4000000000, 28, 28))),
        ("random bytes", IMAGES, np.random.default_rng(1).integers(0, 255, 4000, dtype=np.uint8).tobytes()),
    ]:  # fmt: skip
        def idx_case(w: Workspace, d: Path, file: str = file, data: bytes | None = data, name: str = name) -> list[str]:
            if name == "truncated gzip":
                data = (w.idx / file).read_bytes()[:300]
            root = _idx_with(w, d, file, data)
            return [*w.train(), "--data-root", str(root), "--out", str(d / "out")]

        case("IDX data", name, new_out="out")(idx_case)
    case("IDX data", "missing folder", new_out="out")(lambda w, d: [*w.train(), "--data-root", str(d / "nope"),
                                                                    "--out", str(d / "out")])
    case("IDX data", "a file as folder", new_out="out")(
        lambda w, d: [*w.train(), "--data-root", str(_write(d / "f", "x")), "--out", str(d / "out")])
    case("IDX data", "empty folder", new_out="out")(
        lambda w, d: [*w.train(), "--data-root", str((d / "e").resolve()), "--out", str(d / "out")]
        if (d / "e").mkdir() is None else [])

    # --- image folders
    def images_train(w: Workspace, d: Path, root: Path, *extra: str) -> list[str]:
        return ["train", "--config", "facades_64", "--data-root", str(root), *TINY, "--steps", "1", *extra,
                "--out", str(d / "out")]

    image_cases: list[tuple[str, Callable[[Path], Path], int]] = [
        ("no train split", lambda d: _ab_folder(d / "ab", splits=("test",)), 2),
        ("empty train split", lambda d: (_ab_folder(d / "ab", splits=("test",)), (d / "ab" / "train").mkdir())[0], 2),
        ("text file named .png", lambda d: (_ab_folder(d / "ab"), _write(d / "ab" / "train" / "0.png", "hello"))[0], 2),
        ("truncated PNG", lambda d: (_ab_folder(d / "ab"), _write(d / "ab" / "test" / "1.png",
                                     (d / "ab" / "test" / "1.png").read_bytes()[:60]))[0], 2),
        ("odd width", lambda d: (_ab_folder(d / "ab"), _png(d / "ab" / "train" / "2.png", (33, 16)))[0], 2),
        ("1x1 image", lambda d: (_ab_folder(d / "ab"), _png(d / "ab" / "train" / "2.png", (2, 1)))[0], 0),
        ("grey and RGBA images", lambda d: (_ab_folder(d / "ab"), _png(d / "ab" / "train" / "1.png", (32, 16), "L"),
                                            _png(d / "ab" / "train" / "2.png", (32, 16), "RGBA"))[0], 0),
        ("mixed sizes", lambda d: (_ab_folder(d / "ab"), _png(d / "ab" / "train" / "3.png", (64, 32)))[0], 0),
        ("X/Y counts differ", lambda d: _xy_folder(d / "xy", drop_y=True), 2),
        ("X/Y names differ", lambda d: _xy_folder(d / "xy", rename_y=True), 2),
        ("symlink loop", lambda d: (_ab_folder(d / "ab"), os.symlink("loop", d / "ab" / "train" / "loop"))[0], 0),
        ("a folder named x.png", lambda d: (_ab_folder(d / "ab"), (d / "ab" / "train" / "9.png").mkdir())[0], 0),
    ]  # fmt: skip
    for name, make, expect in image_cases:
        case("image folders", name, expect=expect, new_out="out" if expect else None)(
            lambda w, d, make=make: images_train(w, d, make(d)))
    case("image folders", "decompression bomb", new_out="out")(
        lambda w, d: images_train(w, d, _bomb_folder(d)))
    case("image folders", "decompression bomb, skip_bad", expect=0)(
        lambda w, d: images_train(w, d, _bomb_folder(d), "--set", "data.skip_bad=true"))

    # --- output folders
    case("output", "--out is a file")(lambda w, d: [*w.train(), "--out", str(_write(d / "file", "x"))])
    case("output", "--out not empty")(lambda w, d: [*w.train(), "--out", str(_write(d / "o" / "a", "x").parent)])
    case("output", "--out under a file", new_out="file/run")(
        lambda w, d: [*w.train(), "--out", str(_write(d / "file", "x") / "run")])
    case("output", "--out name too long", new_out="x" * 300)(lambda w, d: [*w.train(), "--out", str(d / ("x" * 300))])
    case("output", "--out with a line break", expect=0)(lambda w, d: [*w.train(), "--out", str(d / "a\nb")])
    case("output", "--out in /proc")(lambda w, d: [*w.train(), "--out", "/proc/iiae-run"])
    case("output", "evaluate --json into a folder")(
        lambda w, d: ["evaluate", str(w.run), "--json", str((d / "j").resolve()), *TINY[:10], "--no-measures"]
        if (d / "j").mkdir() is None else [])
    case("output", "export --out exists")(lambda w, d: ["export", str(w.run), "--out", str(_write(d / "m" / "a", "x").parent)])
    case("output", "export --out is a file")(lambda w, d: ["export", str(w.run), "--out", str(_write(d / "m", "x"))])
    case("output", "translate --count 0")(lambda w, d: ["translate", str(w.run), "--count", "0", "--out", str(d / "t")])
    case("output", "translate --count -3")(lambda w, d: ["translate", str(w.run), "--count", "-3", "--out", str(d / "t")])
    case("output", "translate --count 1000000 (all test pairs)", expect=0)(
        lambda w, d: ["translate", str(w.run), "--count", "1000000", "--out", str(d / "t")])

    # --- resume
    case("resume", "no such folder")(lambda w, d: ["train", "--resume", str(d / "none")])
    case("resume", "an empty folder")(lambda w, d: ["train", "--resume", str(d)])
    case("resume", "a finished run")(lambda w, d: ["train", "--resume", str(w.copy_run(d))])
    case("resume", "a file")(lambda w, d: ["train", "--resume", str(_write(d / "f", "x"))])
    for name, change in [
        ("config.yaml removed", lambda run: (run / "config.yaml").unlink()),
        ("config.yaml garbage", lambda run: _write(run / "config.yaml", "\x00\x01 not: [yaml")),
        ("config.yaml other experiment", lambda run: _write(run / "config.yaml", "model:\n  image_size: 64\n")),
        ("last.ckpt random bytes", lambda run: _write(run / "checkpoints" / "last.ckpt", os.urandom(5000))),
        ("every checkpoint random bytes", lambda run: [_write(p, os.urandom(3000)) for p in (run / "checkpoints").glob("*.ckpt")]),
        ("last.ckpt empty", lambda run: _write(run / "checkpoints" / "last.ckpt", b"")),
        ("last.ckpt a pickle payload", lambda run: torch.save(_Payload(), run / "checkpoints" / "last.ckpt")),
        ("last.ckpt a plain dict", lambda run: torch.save({"a": 1}, run / "checkpoints" / "last.ckpt")),
        ("last.ckpt no state_dict", lambda run: torch.save({k: v for k, v in _checkpoint(w_global()).items() if k != "state_dict"}, run / "checkpoints" / "last.ckpt")),
        ("last.ckpt global_step -5", lambda run: torch.save(_checkpoint(w_global(), global_step=-5), run / "checkpoints" / "last.ckpt")),
        ("last.ckpt weights of another shape", lambda run: torch.save(_checkpoint(w_global(), state_dict={k: torch.zeros(3) for k in _checkpoint(w_global())["state_dict"]}), run / "checkpoints" / "last.ckpt")),
        ("checkpoints folder is a file", lambda run: (shutil.rmtree(run / "checkpoints"), _write(run / "checkpoints", "x"))),
        ("metrics.csv random bytes", lambda run: _write(run / "logs" / "metrics.csv", os.urandom(300))),
        ("metrics.csv removed", lambda run: (run / "logs" / "metrics.csv").unlink()),
        ("a stale lock file", lambda run: _write(run / ".lock", "999999")),
        ("a leftover temporary checkpoint", lambda run: _write(run / "checkpoints" / ".last.ckpt.123.tmp", b"partial")),
    ]:  # fmt: skip
        expect = 0 if name in ("metrics.csv removed", "a stale lock file", "a leftover temporary checkpoint",
                               "last.ckpt random bytes", "last.ckpt empty", "last.ckpt a plain dict",
                               "last.ckpt no state_dict", "last.ckpt global_step -5",
                               "last.ckpt weights of another shape", "last.ckpt a pickle payload") else 2
        case("resume", name, expect=expect)(lambda w, d, change=change: ["train", "--resume", str(_run_with(w, d, change))])
    case("resume", "--steps below the checkpoint")(
        lambda w, d: ["train", "--resume", str(_run_with(w, d, lambda run: None)), "--steps", "1"])
    case("resume", "--set model.image_size=32")(
        lambda w, d: ["train", "--resume", str(_run_with(w, d, lambda run: None)), "--set", "model.image_size=32"])

    # --- trained models: evaluate, export, translate
    model_files: list[tuple[str, Callable[[Workspace, Path], Path]]] = [
        ("no such path", lambda w, d: d / "none"),
        ("an empty folder", lambda w, d: d),
        ("a text file", lambda w, d: _write(d / "model.txt", "hello")),
        ("a .ckpt of random bytes", lambda w, d: _write(d / "m.ckpt", os.urandom(4000))),
        ("a .ckpt pickle payload", lambda w, d: (torch.save(_Payload(), d / "m.ckpt"), d / "m.ckpt")[1]),
        ("a raw pickle .ckpt", lambda w, d: _write(d / "m.ckpt", pickle.dumps(_Payload()))),
        ("a .ckpt, hyper_parameters a list", lambda w, d: (torch.save(_checkpoint(w, hyper_parameters=[1]), d / "m.ckpt"), d / "m.ckpt")[1]),
        ("a .ckpt without weights", lambda w, d: (torch.save({"hyper_parameters": _checkpoint(w)["hyper_parameters"]}, d / "m.ckpt"), d / "m.ckpt")[1]),
        ("config.json removed", lambda w, d: _model_with(w, d, "config.json", None)),
        ("config.json garbage", lambda w, d: _model_with(w, d, "config.json", "{not json")),
        ("config.json a list", lambda w, d: _model_with(w, d, "config.json", "[1,2]")),
        ("config.json non-UTF-8", lambda w, d: _model_with(w, d, "config.json", b"{\"model\": \"caf\xe9\"}")),
        ("config.json image_size -1", lambda w, d: _model_config(w, d, model__image_size=-1)),
        ("config.json image_size 2^30", lambda w, d: _model_config(w, d, model__image_size=2**30)),
        ("config.json widths 1e9", lambda w, d: _model_config(w, d, model__encoder_widths=[10**9, 10**9])),
        ("config.json unknown key", lambda w, d: _model_config(w, d, model__colour="red")),
        ("config.json model a string", lambda w, d: _model_config(w, d, model="big")),
        ("safetensors removed", lambda w, d: _model_with(w, d, "model.safetensors", None)),
        ("safetensors truncated", lambda w, d: _model_with(w, d, "model.safetensors", (w.model / "model.safetensors").read_bytes()[:500])),
        ("safetensors random", lambda w, d: _model_with(w, d, "model.safetensors", os.urandom(2000))),
        ("safetensors header lies", lambda w, d: _model_with(w, d, "model.safetensors", struct.pack("<Q", 10**12) + b"{}")),
        ("safetensors of another model", lambda w, d: _model_config(w, d, model__shared_dim=99)),
    ]  # fmt: skip
    for name, make in model_files:
        case("evaluate", name)(lambda w, d, make=make: ["evaluate", str(make(w, d)), "--data-source", "idx",
                                                         "--data-root", str(w.idx), "--no-measures"])
    for name, make in model_files[:8]:
        case("export", name, new_out="exported")(lambda w, d, make=make: ["export", str(make(w, d)), "--out",
                                                                           str(d / "exported")])
    for name, make in model_files[8:16]:
        case("translate", name, new_out="t")(lambda w, d, make=make: ["translate", str(make(w, d)), "--out", str(d / "t")])
    case("evaluate", "grey test images for an RGB model (converted)", expect=0)(
        lambda w, d: ["evaluate", str(w.run), "--config", "facades_64", "--data-root",
                      str(_grey_ab(d)), "--no-measures"])
    case("evaluate", "--data-source idx without --data-root")(
        lambda w, d: ["evaluate", str(w.run), "--data-source", "idx", "--data-root", str(d / "none")])

    # --- data commands
    case("data", "export --size 0", new_out="e")(
        lambda w, d: ["data", "export", "mnist-cdcb", "--out", str(d / "e"), "--size", "0", "--limit", "4"])
    case("data", "export --size 100000", new_out="e")(
        lambda w, d: ["data", "export", "mnist-cdcb", "--out", str(d / "e"), "--size", "100000", "--limit", "4"])
    case("data", "export --limit -1", new_out="e")(
        lambda w, d: ["data", "export", "mnist-cdcb", "--out", str(d / "e"), "--limit", "-1"])
    case("data", "export --out exists")(
        lambda w, d: ["data", "export", "mnist-cdcb", "--out", str(_write(d / "e" / "a", "x").parent), "--limit", "4"])
    case("data", "export from missing IDX", new_out="e")(
        lambda w, d: ["data", "export", "mnist-cdcb", "--out", str(d / "e"), "--data-source", "idx",
                      "--data-root", str(d / "none")])
    case("data", "download: no network", new_out="root/facades")(
        lambda w, d: ["data", "download", "facades", "--root", str(d / "root")])
    case("data", "download: archive missing", new_out="root/facades")(
        lambda w, d: ["data", "download", "facades", "--root", str(d / "root"), "--archive", str(d / "none.tar.gz")])
    case("data", "download: archive garbage", new_out="root/facades")(
        lambda w, d: ["data", "download", "facades", "--root", str(d / "root"), "--archive",
                      str(_write(d / "f.tar.gz", os.urandom(3000)))])
    case("data", "download: archive an empty tar", new_out="root/facades")(
        lambda w, d: ["data", "download", "facades", "--root", str(d / "root"), "--archive", str(_empty_tar(d))])

    # --- zero-shot SBIR
    case("zs-sbir", "missing data root", new_out="zs")(
        lambda w, d: ["zs-sbir", "train", "--data-root", str(d / "none"), "--out", str(d / "zs")])
    case("zs-sbir", "empty data root", new_out="zs")(
        lambda w, d: ["zs-sbir", "train", "--data-root", str(d), "--out", str(d / "zs")])
    case("zs-sbir", "unknown split", new_out="zs")(
        lambda w, d: ["zs-sbir", "train", "--data-root", str(d), "--unseen", "no_split", "--out", str(d / "zs")])
    case("zs-sbir", "--threads 0", new_out="zs")(
        lambda w, d: ["zs-sbir", "train", "--data-root", str(d), "--threads", "0", "--out", str(d / "zs")])
    case("zs-sbir", "evaluate an image run")(lambda w, d: ["zs-sbir", "evaluate", str(w.run)])
    case("zs-sbir", "retrieve: query missing")(
        lambda w, d: ["zs-sbir", "retrieve", str(w.run), "--query", str(d / "q.png"), "--gallery", str(d)])
    case("zs-sbir", "resume an image run")(lambda w, d: ["zs-sbir", "train", "--resume", str(w.copy_run(d))])
    return found


_WORKSPACE: Workspace | None = None


def w_global() -> Workspace:
    assert _WORKSPACE is not None
    return _WORKSPACE


def _xy_folder(root: Path, drop_y: bool = False, rename_y: bool = False) -> Path:
    for split in ("train", "test"):
        for index in range(6):
            _png(root / split / "X" / f"{index}.png", (16, 16))
            if not (drop_y and index == 5):
                _png(root / split / "Y" / (f"y{index}.png" if rename_y else f"{index}.png"), (16, 16))
    return root


def _bomb_folder(folder: Path) -> Path:
    root = _ab_folder(folder / "ab")
    Image.new("L", (20000, 10000)).save(root / "train" / "bomb.png", optimize=True)
    return root


def _grey_ab(folder: Path) -> Path:
    root = folder / "grey"
    for split in ("train", "test"):
        for index in range(4):
            _png(root / split / f"{index}.png", (32, 16), "L")
    return root


def _empty_tar(folder: Path) -> Path:
    import tarfile

    path = folder / "empty.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    return path


# ---------------------------------------------------------------------------------------------------- running
def run_in_child(argv: list[str], folder: Path) -> tuple[int, str, float]:
    """``iiae -q ARGV`` in a forked child whose working folder is ``folder``: (exit status, stderr, seconds)."""
    err_path = folder.parent / f"{folder.name}.stderr"
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 99
        try:
            os.chdir(folder)
            with open(os.devnull, "wb") as null, open(err_path, "wb") as err:
                os.dup2(null.fileno(), 1)
                os.dup2(err.fileno(), 2)
            signal.alarm(CASE_TIMEOUT_S)
            status = cli.main(["-q", *argv])
        except SystemExit as stop:  # argparse
            status = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported as the failure it is
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(wait_status)
    return status, err_path.read_text(errors="replace"), time.perf_counter() - started


def violations(case: Case, status: int, stderr: str, folder: Path) -> list[str]:
    problems = []
    if status != case.expect:
        problems.append(f"exit {status}, expected {case.expect}")
    lines = stderr.splitlines()
    if "Traceback" in stderr:
        problems.append("traceback")
    if len(lines) > 1:
        problems.append(f"{len(lines)} stderr lines")
    leftovers = [str(path.relative_to(folder)) for path in folder.rglob("*")
                 if path.name.endswith(".tmp") or path.name == "error.log"]  # fmt: skip
    if leftovers:
        problems.append(f"left {leftovers[:3]}")
    if status != 0 and case.new_out and os.path.lexists(folder / case.new_out):
        problems.append(f"left {case.new_out}")
    if (folder / "PWNED").exists():
        problems.append("RAN UNTRUSTED CODE")
    return problems


def prepare(root: Path) -> Workspace:
    global _WORKSPACE
    idx = root / "idx"
    idx.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 64), ("t10k", 32)):
        write_idx(idx / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28), dtype=np.uint8))
        write_idx(idx / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count, dtype=np.uint8))
    workspace = Workspace(root, idx, _ab_folder(root / "ab"), root / "run", root / "model")
    for argv in (workspace.train("--out", str(workspace.run)), ["export", str(workspace.run), "--out", str(workspace.model)]):
        status, stderr, _ = run_in_child(argv, root)
        if status != 0:
            raise SystemExit(f"preparing the workspace failed ({argv[0]}): {stderr[-2000:]}")
    _WORKSPACE = workspace
    return workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="write the table of cases here")
    parser.add_argument("--only", action="append", help="run the cases whose name holds this text (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="iiae-bad-inputs-") as temporary:
        root = Path(temporary)
        workspace = prepare(root / "workspace")
        rows, failed = [], 0
        selected = [case for case in cases() if not args.only or any(text in case.name for text in args.only)]
        for number, case in enumerate(selected):
            folder = root / f"case{number:03d}"
            folder.mkdir()
            try:
                argv = case.argv(workspace, folder)
            except Exception as error:  # noqa: BLE001 - a broken case is a failure of this script
                rows.append((case, -1, f"case setup failed: {error!r}", ["setup"]))
                failed += 1
                continue
            status, stderr, seconds = run_in_child(argv, folder)
            problems = violations(case, status, stderr, folder)
            failed += bool(problems)
            message = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            rows.append((case, status, message, problems))
            mark = "FAIL " + "; ".join(problems) if problems else "ok"
            print(f"{number:3d} {case.group:14s} {case.name[:40]:40s} exit {status} {seconds:5.1f}s {mark}")
            if problems:
                print("      " + stderr.strip()[-1500:].replace("\n", "\n      "))
        print(f"{len(selected) - failed} of {len(selected)} cases kept the contract")
        if args.markdown:
            lines = ["| # | group | case | exit | stderr (one line) | contract |", "|---:|---|---|---:|---|---|"]
            for number, (case, status, message, problems) in enumerate(rows):
                shown = message.replace("|", "\\|").replace(str(root), "…")[:160]
                lines.append(f"| {number} | {case.group} | {case.name.replace('|', '/')!s} | {status} | {shown} | "
                             f"{'; '.join(problems) or 'kept'} |")
            Path(args.markdown).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
