"""A round of bad inputs and faults through the command line, as a new user would make them (issue 13).

Every case runs ``iiae -q <command>`` in a forked child of one process that has imported the package once (a
fresh interpreter per case would spend most of the round importing torch), in its own folder, and is checked
against the error contract:

- exit status 2 for a user mistake (0 where the input is odd but usable, and the case says so);
- at most one line on stderr, never a traceback;
- nothing half-written: no temporary file, no ``error.log``, and no output folder a failed command was asked to
  create (``new_out``), unless the case says the run is left to resume.

Issue 25 adds the classes a second round found, each detected here for every case:

- inputs never change: a case lists the files and folders it reads (``keep``); their bytes, and the kind of a
  special file (a device or FIFO stays one), are compared before and after;
- no hang: a case runs at most ``timeout`` seconds (then it is killed and reported as a hang);
- no blow-up: at most 2,000 characters on stderr, and the child's peak memory bounded (its address space is
  limited too, so a real blow-up fails fast instead of taking the machine);
- no raw Python warning on stderr (``...Warning: ...`` lines of the warnings module);
- no temporary (``.*.tmp``) left anywhere in the case folder;
- silent results: a case may check what the command printed or wrote against a reference (``check``).

    python benchmarks/bad_inputs.py --markdown bad_inputs.md   # 10-20 min on one core; exit 1 if a case fails
    python benchmarks/bad_inputs.py --group "data loss,hangs"  # only these groups
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import resource
import shutil
import signal
import stat
import struct
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
HANG_TIMEOUT_S = 60  # the cases that once blocked forever (a FIFO read, an alias bomb) get this much
MAX_STDERR_CHARS = 2000  # one line of a few hundred characters is the contract; 36 MB was the blow-up
MAX_PEAK_MB = 2048  # a case's peak resident memory (a forked child starts near 150 MB)
ADDRESS_SPACE_HEADROOM = 6 << 30  # the child's address space: the parent's plus this (a 20 GiB tensor fails fast)
WARNING_LINE = re.compile(r"^(?!iiae)(.*:\d+: )?\w*Warning: ", re.MULTILINE)  # the warnings module's format


@dataclass
class Workspace:
    """What the cases start from: tiny data, a finished tiny run, its exported model."""

    root: Path
    idx: Path
    ab: Path
    run: Path
    model: Path
    built: dict = field(default_factory=dict)  # what only some cases need, made once on first use (below)

    def train(self, *extra: str) -> list[str]:
        return ["train", "--data-source", "idx", "--data-root", str(self.idx), *TINY, "--steps", "2", *extra]

    def copy_run(self, folder: Path, name: str = "run") -> Path:
        copy = folder / name
        shutil.copytree(self.run, copy)
        return copy

    def _once(self, name: str, make: Callable[[], object]) -> object:
        if name not in self.built:
            self.built[name] = make()
        return self.built[name]

    def gallery(self) -> tuple[Path, Path]:
        """(a grey query q.png, a gallery folder of 5 grey images 1.png ... 5.png): the issue's fixture."""
        return self._once("gallery", lambda: _gallery(self.root / "own"))

    def ranking(self) -> str:
        """What ``retrieve model --query q.png --gallery g`` prints with a fresh cache: the reference ranking."""
        def make() -> str:
            query, gallery = self.gallery()
            folder = self.root / "ranking"
            folder.mkdir()
            outcome = run_in_child(["retrieve", str(self.model), "--query", str(query), "--gallery", str(gallery),
                                    "--cache-dir", str(folder / "cache"), "--out", str(folder / "panel.png")],
                                   folder, capture=True)  # fmt: skip
            _must(outcome, "the reference retrieval")
            return ranking_lines(outcome.stdout)

        return self._once("ranking", make)

    def measures(self) -> tuple[Path, dict]:
        """(the cache folder holding the digit classifier trained on the tiny data, the run's metrics with the
        translation measures, from ``evaluate run --json``)."""
        def make() -> tuple[Path, dict]:
            folder = self.root / "measures"
            folder.mkdir()
            cache = folder / "cache"
            outcome = run_in_child(["evaluate", str(self.run), "--json", str(folder / "m.json")], folder,
                                   env={"IIAE_CACHE_DIR": str(cache)})  # fmt: skip
            _must(outcome, "the reference measures")
            return cache, json.loads((folder / "m.json").read_text())

        return self._once("measures", make)

    def sketchy(self) -> Path:
        """A tiny Sketchy-layout image folder (photo/<class>/, sketch/<class>/) and its unseen-class file."""
        return self._once("sketchy", lambda: _sketchy(self.root / "sketchy"))

    def zs_config(self) -> Path:
        return self._once("zs_config", lambda: _zs_config(self.sketchy(), self.root / "zs_cache"))

    def zs_run(self) -> Path:
        """A tiny zero-shot run trained from the images of :meth:`sketchy` (small CNN features), once."""
        def make() -> Path:
            outcome = run_in_child(["zs-sbir", "train", "--config", str(self.zs_config()), "--out",
                                    str(self.root / "zs_run"), "--threads", "1"], self.root)  # fmt: skip
            _must(outcome, "the zero-shot run")
            return self.root / "zs_run"

        return self._once("zs_run", make)

    def copy_zs_run(self, folder: Path) -> Path:
        copy = folder / "zs_run"
        shutil.copytree(self.zs_run(), copy)
        return copy


class Skip(Exception):
    """Raised by a case's setup when this machine cannot make its input (e.g. a device node without root)."""


@dataclass
class Outcome:
    status: int
    stderr: str
    stdout: str
    seconds: float
    peak_mb: float
    hung: bool


Check = Callable[[Workspace, Path, Outcome], list[str]]  # (workspace, case folder, outcome) -> problems


@dataclass
class Case:
    group: str
    name: str
    argv: Callable[[Workspace, Path], list[str]]  # (workspace, this case's folder) -> the command line
    expect: int = 2
    new_out: str | None = None  # a path (in the case folder) a failed command must not leave behind
    keep: tuple[str, ...] = ()  # inputs (in the case folder) whose bytes and kinds must not change
    timeout: float = CASE_TIMEOUT_S  # seconds; past it the case is killed and reported as a hang
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the child
    stdout: str = "null"  # "null", "capture" (for check) or "closed" (a pipe whose reader is gone: `| true`)
    check: Check | None = None  # further checks of what the command printed or wrote (silent wrong results)
    file_size_limit: int | None = None  # bytes: a larger write fails (EFBIG), as on a full disk


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

    def case(group: str, name: str, expect: int = 2, new_out: str | None = None, **more: object):
        def register(argv: Callable[[Workspace, Path], list[str]]) -> None:
            found.append(Case(group, name, argv, expect, new_out, **more))  # type: ignore[arg-type]

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
        layout = ["--set", "data.layout=folders"] if (root / "train" / "X").is_dir() else []  # X/ and Y/ folders
        return ["train", "--config", "facades_64", "--data-root", str(root), *TINY, "--steps", "1", *layout, *extra,
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
    case("output", "translate --count 1000000 (beyond the grid's 64 columns)")(
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
    issue_25_cases(case)
    return found


def issue_25_cases(case: Callable[..., Callable]) -> None:
    """One case (or a few) per example of issue 25, by class."""
    def retrieve(w: Workspace, d: Path, *extra: str, query: str = "q.png", gallery: str = "g") -> list[str]:
        _own_images(w, d)
        return ["retrieve", str(w.model), "--query", str(d / query), "--gallery", str(d / gallery),
                "--cache-dir", str(d / "cache"), *extra]  # fmt: skip

    def zs_retrieve(w: Workspace, d: Path, *extra: str) -> list[str]:
        sketchy = w.sketchy()
        shutil.copy(sketchy / "sketch" / "apple" / "n0_0-1.png", d / "q.png")
        shutil.copytree(sketchy / "photo", d / "g")
        return ["zs-sbir", "retrieve", str(w.zs_run()), "--query", str(d / "q.png"), "--gallery", str(d / "g"),
                "--cache-dir", str(d / "cache"), *extra]  # fmt: skip

    def evaluate(w: Workspace, d: Path, *extra: str) -> list[str]:
        return ["evaluate", str(w.copy_run(d)), "--no-measures", *extra]

    # --- data loss: a user's file, another run, a device node overwritten (status 2, every input unchanged)
    loss = "data loss"
    case(loss, "retrieve --out onto the query", keep=("q.png", "g"))(
        lambda w, d: retrieve(w, d, "--out", str(d / "q.png")))
    case(loss, "retrieve --out onto a gallery file", keep=("q.png", "g"))(
        lambda w, d: retrieve(w, d, "--out", str(d / "g" / "1.png")))
    case(loss, "retrieve --out a new file inside the gallery", keep=("q.png", "g"))(
        lambda w, d: retrieve(w, d, "--out", str(d / "g" / "panel.png")))
    case(loss, "retrieve --out onto a FIFO", keep=("q.png", "g", "panel.png"), timeout=HANG_TIMEOUT_S)(
        lambda w, d: retrieve(w, d, "--out", str(_mkfifo(d / "panel.png"))))
    case(loss, "retrieve --out onto a character device", keep=("q.png", "g", "panel.png"))(
        lambda w, d: retrieve(w, d, "--out", str(_null_device(d / "panel.png"))))
    case(loss, "retrieve --out into another model folder", keep=("q.png", "g", "other"))(
        lambda w, d: retrieve(w, d, "--out", str(Path(shutil.copytree(w.model, d / "other")) / "p.png")))
    case(loss, "translate --images: an output is another input", keep=("in",))(
        lambda w, d: ["translate", str(w.model), "--direction", "x-to-y", "--out", str(d / "in"), "--images",
                      str(_png(d / "in" / "b.png")), str(_png(d / "in" / "b_to_y.png"))])
    case(loss, "evaluate --json into run/model/config.json", keep=("run",))(
        lambda w, d: evaluate(w, d, "--json", str(d / "run" / "model" / "config.json")))
    case(loss, "evaluate --json onto the run's config.yaml", keep=("run",))(
        lambda w, d: evaluate(w, d, "--json", str(d / "run" / "config.yaml")))
    case(loss, "evaluate --out another run", keep=("run", "other"))(
        lambda w, d: (w.copy_run(d, "other"), evaluate(w, d, "--out", str(d / "other")))[1])
    case(loss, "evaluate --json onto a FIFO", keep=("run", "m.json"), timeout=HANG_TIMEOUT_S)(
        lambda w, d: evaluate(w, d, "--json", str(_mkfifo(d / "m.json"))))
    case(loss, "evaluate --json onto a character device", keep=("run", "nul.json"))(
        lambda w, d: evaluate(w, d, "--json", str(_null_device(d / "nul.json"))))
    case(loss, "zs-sbir evaluate --json onto a FIFO", keep=("m.json",), timeout=HANG_TIMEOUT_S)(
        lambda w, d: ["zs-sbir", "evaluate", str(w.copy_zs_run(d)), "--threads", "1", "--json",
                      str(_mkfifo(d / "m.json"))])
    case(loss, "zs-sbir retrieve --out onto the query", keep=("q.png", "g"))(
        lambda w, d: zs_retrieve(w, d, "--out", str(d / "q.png")))
    case(loss, "zs-sbir retrieve --out onto a FIFO", keep=("q.png", "g", "p.png"), timeout=HANG_TIMEOUT_S)(
        lambda w, d: zs_retrieve(w, d, "--out", str(_mkfifo(d / "p.png"))))
    case(loss, "data download --root onto a user's files, wrong archive", keep=("mydata",))(
        lambda w, d: ["data", "download", "facades", "--root", str(_user_files(d / "mydata")), "--archive",
                      str(_small_facades_archive(d / "facades.tar.gz"))])

    # --- hangs: a FIFO where a file is read, an alias bomb (status 2 at once)
    hangs = "hangs"
    case(hangs, "export --last, last.ckpt a FIFO (the newest step file)", expect=0,
         keep=("run/checkpoints/last.ckpt",), timeout=HANG_TIMEOUT_S)(
        lambda w, d: ["export", str(_fifo_checkpoint(w.copy_run(d))), "--last", "--out", str(d / "m")])
    case(hangs, "train --resume, last.ckpt a FIFO", expect=0, timeout=HANG_TIMEOUT_S)(
        lambda w, d: ["train", "--resume", str(_run_with(w, d, _fifo_checkpoint))])
    case(hangs, "train --config a FIFO", new_out="out", keep=("config.yaml",), timeout=HANG_TIMEOUT_S)(
        lambda w, d: [*w.train(), "--config", str(_mkfifo(d / "config.yaml")), "--out", str(d / "out")])
    case(hangs, "retrieve --query a FIFO", keep=("g", "fifo.png"), timeout=HANG_TIMEOUT_S)(
        lambda w, d: retrieve(w, d, query="fifo.png") if _mkfifo(d / "fifo.png") else [])
    case(hangs, "YAML alias bomb in --set (9 levels of 9)", new_out="out", timeout=HANG_TIMEOUT_S)(
        lambda w, d: [*w.train(), "--set", f"data.train_split={_alias_bomb(9)}", "--out", str(d / "out")])
    case(hangs, "YAML alias bomb in a config file", new_out="out", timeout=HANG_TIMEOUT_S)(
        lambda w, d: [*w.train(), "--config", str(_write(d / "bomb.yaml", f"data:\n  train_split: {_alias_bomb(9)}\n")),
                      "--out", str(d / "out")])

    # --- blow-ups: memory and message bounded
    blow = "blow-ups"
    for levels in (5, 6, 7):
        case(blow, f"YAML alias bomb in --set ({levels} levels of 9)", new_out="out", timeout=HANG_TIMEOUT_S)(
            lambda w, d, levels=levels: [*w.train(), "--set", f"data.train_split={_alias_bomb(levels)}", "--out",
                                         str(d / "out")])  # fmt: skip
    case(blow, "a 10 MB --set value", new_out="out")(
        lambda w, d: [*w.train(), "--set", "model.image_size=" + "x" * 10_000_000, "--out", str(d / "out")])
    case(blow, "a 10 MB --config file name", new_out="out")(
        lambda w, d: [*w.train(), "--config", "c" * 10_000_000, "--out", str(d / "out")])
    case(blow, "a 10 MB --out path")(lambda w, d: [*w.train(), "--out", str(d / ("o" * 10_000_000))])
    case(blow, "a 10 MB --query path", keep=("g",))(lambda w, d: retrieve(w, d, query="q" * 10_000_000))
    case(blow, "model.safetensors claims an extra 20 GiB tensor (sparse)", timeout=HANG_TIMEOUT_S)(
        lambda w, d: ["evaluate", str(_sparse_model(w, d)), "--data-source", "idx", "--data-root", str(w.idx),
                      "--no-measures"])  # fmt: skip
    case(blow, "model config.json nested 100,000 deep")(
        lambda w, d: ["evaluate", str(_model_with(w, d, "config.json", "[" * 100_000 + "]" * 100_000)),
                      "--data-source", "idx", "--data-root", str(w.idx), "--no-measures"])  # fmt: skip
    case(blow, "gallery cache .npz header claims 10^11 columns", expect=0, keep=("q.png", "g"), stdout="capture",
         check=_same_ranking(lambda w, d: w.ranking()))(
        lambda w, d: retrieve(w, d) if _tampered_cache(w, d, 10**11) else [])

    # --- silent wrong results: odd but usable inputs give the right result
    silent = "silent results"
    case(silent, "retrieve: 16-bit PNG query", expect=0, stdout="capture", keep=("q16.png", "g"),
         check=_same_ranking(lambda w, d: w.ranking()))(
        lambda w, d: retrieve(w, d, query="q16.png") if _to_16_bit(w.gallery()[0], d / "q16.png") else [])
    case(silent, "retrieve: float TIFF query in [0, 1]", expect=0, stdout="capture", keep=("qf.tif", "g"),
         check=_same_ranking(lambda w, d: w.ranking()))(
        lambda w, d: retrieve(w, d, query="qf.tif") if _to_float_tiff(w.gallery()[0], d / "qf.tif") else [])
    case(silent, "retrieve: gallery of 16-bit PNGs", expect=0, stdout="capture", keep=("q.png", "g16"),
         check=_same_ranking(lambda w, d: w.ranking()))(
        lambda w, d: retrieve(w, d, gallery="g16") if _folder_16_bit(w.gallery()[1], d / "g16") else [])
    case(silent, "translate --images: a 16-bit PNG", expect=0, keep=("q16.png",), check=_same_translation)(
        lambda w, d: ["translate", str(w.model), "--direction", "x-to-y", "--out", str(d / "t"), "--images",
                      str(_to_16_bit(w.gallery()[0], d / "q16.png"))])
    case(silent, "retrieve cache: gallery files swapped, same size and mtime", expect=0, stdout="capture",
         keep=("q.png",), check=_same_ranking(_fresh_ranking(lambda w, d: w.model, "q.png", "g")))(
        lambda w, d: _stale_cache_command(w, d, retrieve))
    case(silent, "zs-sbir retrieve cache: photos swapped, same size and mtime", expect=0, stdout="capture",
         keep=("q.png",), check=_same_ranking(_fresh_ranking(lambda w, d: w.zs_run(), "q.png", "g")))(
        lambda w, d: _zs_stale_cache_command(w, d))
    case(silent, "NaN weights in the cached digit classifier", expect=0, env={"IIAE_CACHE_DIR": "cache"},
         check=_same_measures)(
        lambda w, d: ["evaluate", str(w.copy_run(d)), "--json", str(d / "m.json")] if _nan_classifier(w, d) else [])
    case(silent, "NaN weights in a zero-shot run's feature extractor", keep=("q.png", "g"))(
        lambda w, d: ["zs-sbir", "retrieve", str(_nan_extractor(w, d)), "--query", str(_zs_query(w, d)),
                      "--gallery", str(_zs_gallery(w, d)), "--cache-dir", str(d / "cache")])

    # --- status: a user's input is status 2 (or 0 where usable), never the bug path
    status = "status"
    case(status, "a file stem '²' in a training image folder", expect=0)(
        lambda w, d: _images_train(w, d, _ab_folder(d / "ab"), "train/\u00b2.png"))
    case(status, "a file stem '²' in X/ and Y/ training folders", expect=0)(
        lambda w, d: _images_train(w, d, _xy_folder(d / "xy"), "train/X/\u00b2.png", "train/Y/\u00b2.png"))
    case(status, "resume: a step '²' in logs/metrics.csv", expect=0)(
        lambda w, d: ["train", "--resume", str(_run_with(w, d, _superscript_step))])
    case(status, "a file stem '²' in the retrieve gallery", expect=0, keep=("q.png", "g"))(
        lambda w, d: (retrieve(w, d), _png(d / "g" / "\u00b2.png", (16, 16)))[0])
    case(status, "a non-UTF-8 --unseen file", new_out="zs")(
        lambda w, d: ["zs-sbir", "train", "--config", str(w.zs_config()), "--unseen",
                      str(_write(d / "unseen.txt", b"door\nf\xe4n\n")), "--out", str(d / "zs"), "--threads", "1"])
    case(status, "deep YAML in --set", new_out="out")(
        lambda w, d: [*w.train(), "--set", "data.train_split=" + "[" * 5000 + "]" * 5000, "--out", str(d / "out")])
    case(status, "deep YAML config file", new_out="out")(
        lambda w, d: [*w.train(), "--config", str(_write(d / "deep.yaml", "a: " + "[" * 5000 + "]" * 5000)),
                      "--out", str(d / "out")])  # fmt: skip
    case(status, "unhashable-key YAML in --set", new_out="out")(
        lambda w, d: [*w.train(), "--set", "data.train_split={[1]: 2}", "--out", str(d / "out")])
    case(status, "unhashable-key YAML config file", new_out="out")(
        lambda w, d: [*w.train(), "--config", str(_write(d / "key.yaml", "data:\n  ? [1, 2]\n  : 3\n")),
                      "--out", str(d / "out")])  # fmt: skip
    case(status, "non-UTF-8 file names in the retrieve gallery", expect=0, keep=("q.png", "g"))(
        lambda w, d: (retrieve(w, d), _bytes_named_png(d / "g", b"caf\xe9.png"),
                      _bytes_named_png(d / "g", b"\xff\xfe.png"))[0])
    case(status, "a non-UTF-8 query file name", expect=0, keep=("g",))(
        lambda w, d: retrieve(w, d, query=os.fsdecode(b"q\xe9.png"))
        if _bytes_named_png(d, b"q\xe9.png") else [])
    case(status, "a non-UTF-8 file name in a training image folder", expect=0)(
        lambda w, d: _images_train(w, d, _bytes_named_png(_ab_folder(d / "ab") / "train", b"\xff.png", (32, 16))
                                   .parent.parent))

    # --- partial output: all or nothing, and no stale temporaries
    partial = "partial output"
    case(partial, "translate --images, a later file bad: nothing written", new_out="t", keep=("a.png", "bad.png"))(
        lambda w, d: ["translate", str(w.model), "--direction", "x-to-y", "--out", str(d / "t"), "--images",
                      str(_png(d / "a.png")), str(_write(d / "bad.png", "not an image"))])
    case(partial, "translate --images into a folder, a later file bad", keep=("o", "a.png", "bad.png"))(
        lambda w, d: ["translate", str(w.model), "--direction", "x-to-y", "--out", str(d / "o"), "--images",
                      str(_png(d / "a.png")), str(_write(d / "bad.png", "not an image"))]
        if (d / "o").mkdir() is None else [])
    case(partial, "translate --images, a later output a folder: nothing written", keep=("o", "a.png", "b.png"))(
        lambda w, d: ["translate", str(w.model), "--direction", "x-to-y", "--out", str(d / "o"), "--images",
                      str(_png(d / "a.png")), str(_png(d / "b.png"))] if (d / "o" / "b_to_y.png").mkdir(parents=True)
        is None else [])
    case(partial, "data export on a full disk: nothing written", new_out="e", file_size_limit=20_000)(
        lambda w, d: ["data", "export", "mnist-cdcb", "--out", str(d / "e"), "--data-source", "idx", "--data-root",
                      str(w.idx), "--size", "256", "--limit", "8"])  # fmt: skip
    case(partial, "data download on a full disk: said so, nothing written", new_out="root/train",
         file_size_limit=20_000, check=_not_called_damaged)(
        lambda w, d: ["data", "download", "facades", "--root", str(d / "root"), "--archive",
                      str(_small_facades_archive(d / "facades.tar.gz", size=(512, 256)))])
    case(partial, "resume removes a killed run's temporaries", expect=0)(
        lambda w, d: ["train", "--resume", str(_run_with(w, d, _killed_run_leftovers))])
    case(partial, "export removes its stale staging folder beside --out", expect=0)(
        lambda w, d: ["export", str(w.run), "--out", str(d / "m")] if _stale(d / "m", folder=True) else [])

    # --- messages: a closed stdout after complete work is no error; library warnings are not shown raw
    messages = "messages"
    case(messages, "train ... | true (stdout closed)", expect=0, stdout="closed", check=_quiet)(
        lambda w, d: w.train("--out", str(d / "out")))
    case(messages, "retrieve ... | true (stdout closed)", expect=0, stdout="closed", check=_quiet)(
        lambda w, d: retrieve(w, d, "--out", str(d / "p.png")))
    case(messages, "evaluate ... | true (stdout closed)", expect=0, stdout="closed", check=_quiet)(
        lambda w, d: evaluate(w, d, "--json", str(d / "m.json")))
    case(messages, "retrieve: palette PNG query with transparency", expect=0, keep=("qp.png", "g"))(
        lambda w, d: retrieve(w, d, query="qp.png") if _palette_png(d / "qp.png") else [])
    case(messages, "retrieve: a float TIFF query of one value (range 0)", expect=0, keep=("qf.tif", "g"))(
        lambda w, d: retrieve(w, d, query="qf.tif") if _float_tiff(d / "qf.tif", np.full((16, 16), 7.5)) else [])
    case(messages, "retrieve: a float TIFF query holding inf", keep=("qf.tif", "g"))(
        lambda w, d: retrieve(w, d, query="qf.tif") if _float_tiff(d / "qf.tif", np.where(
            np.eye(16) > 0, np.inf, 0.5)) else [])
    case(messages, "retrieve: a query of 95 million pixels (PIL's bomb warning)", expect=0, keep=("big.png", "g"))(
        lambda w, d: retrieve(w, d, query="big.png") if Image.new("L", (9500, 10000)).save(d / "big.png") is None
        else [])


def _tampered_cache(w: Workspace, d: Path, columns: int) -> Path:
    """The reference retrieval's gallery cache copied to ``d/cache``, its header claiming ``columns`` columns."""
    w.ranking()
    shutil.copytree(w.root / "ranking" / "cache", d / "cache")
    return _cache_npz_with_columns(d / "cache", columns)


def _user_files(root: Path) -> Path:
    for split in ("train", "val"):
        for index in range(1, 4):
            _png(root / split / f"{index}.png", (32, 16))
    return root


def _small_facades_archive(path: Path, size: tuple[int, int] = (32, 16)) -> Path:
    """A tar.gz laid out like Facades (facades/train/1.png ...) with far fewer images: not the dataset."""
    source = path.parent / "archive_source"
    for split in ("train", "val", "test"):
        for index in range(1, 4):
            _png(source / "facades" / split / f"{index}.png", size, "L")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source / "facades", arcname="facades")
    shutil.rmtree(source)
    return path


def _fifo_checkpoint(run: Path) -> Path:
    _mkfifo(run / "checkpoints" / "last.ckpt")
    return run


def _sparse_model(w: Workspace, d: Path) -> Path:
    model = _model_with(w, d, "model.safetensors", (w.model / "model.safetensors").read_bytes())
    _with_claimed_tensor(model / "model.safetensors")
    return model


def _to_16_bit(source: Path, target: Path) -> Path:
    pixels = np.asarray(Image.open(source).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(pixels).save(target)  # mode I;16
    assert Image.open(target).mode in ("I;16", "I"), Image.open(target).mode
    return target


def _to_float_tiff(source: Path, target: Path) -> Path:
    pixels = np.asarray(Image.open(source).convert("L"), dtype=np.float32) / 255
    Image.fromarray(pixels, mode="F").save(target)
    return target


def _float_tiff(target: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32), mode="F").save(target)
    return target


def _folder_16_bit(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in sorted(source.iterdir()):
        _to_16_bit(path, target / path.name)
    return target


def _same_translation(w: Workspace, folder: Path, outcome: Outcome) -> list[str]:
    """The translation of the 16-bit q16.png is the one of the 8-bit q.png it was made from."""
    outputs = sorted((folder / "t").glob("*.png")) if (folder / "t").is_dir() else []
    if outcome.status != 0 or len(outputs) != 1:
        return [] if outcome.status != 0 else [f"expected one translated image, found {len(outputs)}"]
    fresh = folder.parent / f"{folder.name}-reference"
    fresh.mkdir(exist_ok=True)
    reference = run_in_child(["translate", str(w.model), "--direction", "x-to-y", "--out", str(fresh / "t"),
                              "--images", str(w.gallery()[0])], fresh)  # fmt: skip
    _must(reference, "the reference translation")
    expected = np.asarray(Image.open(next((fresh / "t").glob("*.png"))))
    got = np.asarray(Image.open(outputs[0]))
    if expected.shape != got.shape or np.abs(expected.astype(int) - got.astype(int)).max() > 1:
        return ["SILENT WRONG RESULT: the 16-bit image translates otherwise than its 8-bit version"]
    return []


def _stale_cache_command(w: Workspace, d: Path, retrieve: Callable[..., list[str]]) -> list[str]:
    """A BMP gallery (every file the same size), its codes cached, then two files' bytes swapped (times kept)."""
    argv = retrieve(w, d)
    shutil.rmtree(d / "g")
    _own_images(w, d / "tmp_bmp", ".bmp") if (d / "tmp_bmp").mkdir() is None else None
    shutil.move(d / "tmp_bmp" / "g", d / "g")
    shutil.rmtree(d / "tmp_bmp")
    first = run_in_child([*argv, "--out", str(d / "first.png")], d, capture=True)
    _must(first, "the first retrieval (filling the cache)")
    (d / "first.png").unlink()
    _swap_same_size(d / "g" / "1.bmp", d / "g" / "3.bmp")
    return argv + ["--out", str(d / "p.png")]


def _zs_stale_cache_command(w: Workspace, d: Path) -> list[str]:
    """zs-sbir retrieve on uncompressed PNG photos (same size), cached, then two photos' bytes swapped."""
    query = _zs_query(w, d)
    gallery = d / "g"
    for index, path in enumerate(sorted((w.sketchy() / "photo").rglob("*.jpg"))[:6]):
        _write(gallery / f"{index}.png", b"")
        Image.open(path).convert("RGB").save(gallery / f"{index}.png", compress_level=0)
    argv = ["zs-sbir", "retrieve", str(w.zs_run()), "--query", str(query), "--gallery", str(gallery),
            "--cache-dir", str(d / "cache")]  # fmt: skip
    first = run_in_child([*argv, "--out", str(d / "first.png")], d, capture=True)
    _must(first, "the first retrieval (filling the cache)")
    (d / "first.png").unlink()
    _swap_same_size(gallery / "0.png", gallery / "4.png")
    return argv + ["--out", str(d / "p.png")]


def _zs_query(w: Workspace, d: Path) -> Path:
    if not (d / "q.png").exists():
        shutil.copy(w.sketchy() / "sketch" / "apple" / "n0_0-1.png", d / "q.png")
    return d / "q.png"


def _zs_gallery(w: Workspace, d: Path) -> Path:
    if not (d / "g").exists():
        shutil.copytree(w.sketchy() / "photo", d / "g")
    return d / "g"


def _nan_classifier(w: Workspace, d: Path) -> Path:
    """The round's digit classifier cache copied to ``d/cache`` with every weight NaN."""
    cache, _ = w.measures()
    shutil.copytree(cache, d / "cache")
    files = sorted((d / "cache").rglob("digit-classifier-*.safetensors"))
    if not files:
        raise RuntimeError(f"no digit classifier cached under {cache}")
    for path in files:
        _nan_weights(path)
    return d / "cache"


def _same_measures(w: Workspace, folder: Path, outcome: Outcome) -> list[str]:
    """The translation measures equal those of the reference evaluation (a classifier trained afresh)."""
    if outcome.status != 0:
        return []
    def measures(metrics: dict) -> dict:
        fidelity = {k: v for k, v in metrics.get("translation_fidelity", {}).items() if k != "classifier_from_cache"}
        return {"translation_fidelity": fidelity, "leakage": metrics.get("leakage")}

    expected = measures(w.measures()[1])
    if not expected["translation_fidelity"]:
        return ["no translation measures in the reference metrics"]
    got = measures(json.loads((folder / "m.json").read_text()))
    if "nan" in json.dumps(got).lower():
        return ["SILENT WRONG RESULT: NaN in the measures"]
    return [f"SILENT WRONG RESULT: {key} {json.dumps(got[key])[:150]} differs from {json.dumps(expected[key])[:150]}"
            for key in expected if json.dumps(got[key], sort_keys=True) != json.dumps(expected[key], sort_keys=True)]


def _nan_extractor(w: Workspace, d: Path) -> Path:
    run = w.copy_zs_run(d)
    files = sorted((run / "feature_extractor").glob("*.safetensors"))
    if not files:
        raise RuntimeError("no safetensors file in the zero-shot run's feature_extractor/")
    for path in files:
        _nan_weights(path)
    return run


def _images_train(w: Workspace, d: Path, root: Path, *extra_files: str) -> list[str]:
    for name in extra_files:
        _png(root / name, (16, 16) if "/X/" in name or "/Y/" in name else (32, 16))
    layout = ["--set", "data.layout=folders"] if (root / "train" / "X").is_dir() else []  # X/ and Y/ folders
    return ["train", "--config", "facades_64", "--data-root", str(root), *TINY, "--steps", "1", *layout,
            "--out", str(d / "out")]


def _bytes_named_png(folder: Path, name: bytes, size: tuple[int, int] = (16, 16)) -> Path:
    """A PNG whose file name is the bytes ``name`` (not UTF-8: Python holds it with surrogates)."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    _png(path, size)
    return path


def _superscript_step(run: Path) -> None:
    """A row of logs/metrics.csv whose step is '²' (str.isdigit() is true, int() refuses it)."""
    path = run / "logs" / "metrics.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    row = [""] * len(header)
    row[header.index("step")] = "\u00b2"
    path.write_text("\n".join([*lines, ",".join(row)]) + "\n", encoding="utf-8")


def _killed_run_leftovers(run: Path) -> None:
    _stale(run / "model", folder=True)
    _stale(run / "metrics.json")
    _stale(run / "loss_curves.png")
    _stale(run / "report.md")
    _stale(run / "checkpoints" / "last.ckpt")


def _palette_png(path: Path) -> Path:
    """A palette PNG whose transparency is a bytes table (PIL warns when it is converted without RGBA)."""
    image = Image.fromarray(_digit_like(0)).convert("P")
    image.info["transparency"] = bytes([0] * 8 + [255] * 248)
    image.save(path, transparency=bytes([0] * 8 + [255] * 248))
    return path


def _not_called_damaged(w: Workspace, folder: Path, outcome: Outcome) -> list[str]:
    """A write that failed (a full disk) is the machine's fault, not the archive's."""
    return ["MISLEADING: a failed write reported as a damaged archive"] if "damaged" in outcome.stderr else []


def _quiet(w: Workspace, folder: Path, outcome: Outcome) -> list[str]:
    return [f"stderr not empty ({outcome.stderr.strip()[:200]!r})"] if outcome.stderr.strip() else []


_WORKSPACE: Workspace | None = None


def w_global() -> Workspace:
    assert _WORKSPACE is not None
    return _WORKSPACE


def _xy_folder(root: Path, drop_y: bool = False, rename_y: bool = False) -> Path:
    for split in ("train", "val", "test"):
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


def _digit_like(seed: int, side: int = 20) -> np.ndarray:
    """A grey [side, side] uint8 image with some structure (a bright blob on a dark ground), seeded."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:side, 0:side]
    cy, cx = rng.uniform(side * 0.3, side * 0.7, 2)
    blob = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * rng.uniform(2, 5) ** 2))
    return np.clip(blob * 230 + rng.integers(0, 25, (side, side)), 0, 255).astype(np.uint8)


def _gallery(folder: Path, suffix: str = ".png") -> tuple[Path, Path]:
    """(q.png, g/ of 1..5 + suffix): grey 8-bit images."""
    gallery = folder / "g"
    gallery.mkdir(parents=True)
    Image.fromarray(_digit_like(0)).save(folder / "q.png")
    for index in range(1, 6):
        Image.fromarray(_digit_like(index)).save(gallery / f"{index}{suffix}")
    return folder / "q.png", gallery


def _own_images(workspace: Workspace, folder: Path, suffix: str = ".png") -> tuple[Path, Path]:
    """A copy of the workspace's query and gallery in ``folder`` (q.png, g/); ``suffix``: the gallery's format."""
    query, gallery = workspace.gallery()
    shutil.copy(query, folder / "q.png")
    (folder / "g").mkdir()
    for path in sorted(gallery.iterdir()):
        Image.open(path).save(folder / "g" / (path.stem + suffix))
    return folder / "q.png", folder / "g"


RANKING_LINE = re.compile(r"^\s*(\d+)\s+(-?\d+\.\d+|nan|-?inf)\s+(\S.*)$")


def ranking_lines(stdout: str, strip: str = "") -> str:
    """The ranking ``retrieve`` printed (rank, value, file), files shown relative to their gallery folder."""
    rows = [match.groups() for match in map(RANKING_LINE.match, stdout.splitlines()) if match]
    return "\n".join(f"{rank} {value} {Path(name).name}" for rank, value, name in rows)


def _same_ranking(reference: Callable[[Workspace, Path], str]) -> Check:
    """A check: the command printed a ranking, the one ``reference(workspace, folder)`` gives."""
    def check(workspace: Workspace, folder: Path, outcome: Outcome) -> list[str]:
        printed = ranking_lines(outcome.stdout)
        if not printed:
            return ["no ranking printed"] if outcome.status == 0 else []
        expected = reference(workspace, folder)
        if "nan" in printed:
            return [f"SILENT WRONG RESULT: a ranking of nan ({printed.splitlines()[0]})"]
        if printed != expected:
            return [f"SILENT WRONG RESULT: ranking {printed.splitlines()} differs from {expected.splitlines()}"]
        return []

    return check


def _fresh_ranking(model: Callable[[Workspace, Path], Path], query: str, gallery: str, *extra: str
                   ) -> Callable[[Workspace, Path], str]:  # fmt: skip
    """The ranking of ``retrieve`` on files of the case folder with an empty cache (a child of its own)."""
    def reference(workspace: Workspace, folder: Path) -> str:
        fresh = folder.parent / f"{folder.name}-reference"
        fresh.mkdir(exist_ok=True)
        outcome = run_in_child([*_retrieve_command(model(workspace, folder)), "--query", str(folder / query),
                                "--gallery", str(folder / gallery), "--cache-dir", str(fresh / "cache"),
                                "--out", str(fresh / "panel.png"), *extra], fresh, capture=True)  # fmt: skip
        _must(outcome, "the reference retrieval")
        return ranking_lines(outcome.stdout)

    return reference


def _retrieve_command(model: Path) -> list[str]:
    return ["zs-sbir", "retrieve", str(model)] if (model / "feature_extractor").is_dir() else ["retrieve", str(model)]


def _swap_same_size(first: Path, second: Path) -> None:
    """Swap the bytes of two files of the same size and give each its old access and modification times back
    (what ``cp -p``, ``rsync -t`` or tar do to a folder): only the content says they changed."""
    times = [(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns) for path in (first, second)]
    data = first.read_bytes(), second.read_bytes()
    assert len(data[0]) == len(data[1]), "the swapped files must have the same size"
    first.write_bytes(data[1])
    second.write_bytes(data[0])
    for path, ns in zip((first, second), times, strict=True):
        os.utime(path, ns=ns)


def _cache_npz_with_columns(cache: Path, columns: int) -> Path:
    """Rewrite the .npy header of the 2-D array in every .npz of ``cache`` to claim ``columns`` columns (the data
    left as it is)."""
    files = sorted(cache.rglob("*.npz"))
    if not files:
        raise RuntimeError(f"no .npz cache file under {cache}")
    for path in files:
        members = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                members[info.filename] = archive.read(info)
        for name, data in members.items():
            if not name.endswith(".npy"):
                continue
            version = data[6:8]
            size = struct.unpack("<H", data[8:10])[0] if version[0] == 1 else struct.unpack("<I", data[8:12])[0]
            start = 10 if version[0] == 1 else 12
            header = eval(data[start:start + size].decode("latin-1"))  # noqa: S307 - a dict literal we wrote
            if len(header["shape"]) != 2:
                continue
            header["shape"] = (header["shape"][0], columns)
            text = repr(header).encode("latin-1")
            text += b" " * (63 - (start + len(text)) % 64) + b"\n"
            length = struct.pack("<H", len(text)) if version[0] == 1 else struct.pack("<I", len(text))
            prefix = data[:6] + version + length
            members[name] = prefix + text + data[start + size:]
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    return cache


def _safetensors_with(path: Path, change: Callable[[dict, dict], None]) -> None:
    """Rewrite the safetensors file ``path``: ``change(tensors, metadata)`` edits the dict of numpy arrays."""
    from safetensors.numpy import load_file, save_file

    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        metadata = json.loads(handle.read(length)).get("__metadata__")
    tensors = load_file(path)
    change(tensors, metadata or {})
    save_file(tensors, path, metadata=metadata)


def _nan_weights(path: Path) -> None:
    def fill(tensors: dict, metadata: dict) -> None:
        for name, value in tensors.items():
            if value.dtype.kind == "f":
                tensors[name] = np.full_like(value, np.nan)

    _safetensors_with(path, fill)


def _with_claimed_tensor(path: Path, claimed: int = 20 << 30) -> None:
    """Add to the safetensors file ``path`` a float32 tensor ``extra`` of ``claimed`` bytes that the file holds as
    a hole (a sparse file: nothing is written, the size says it is there)."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    header["extra"] = {"dtype": "F32", "shape": [claimed // 4], "data_offsets": [end, end + claimed]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + data[8 + length:8 + length + end])
    os.truncate(path, 8 + len(text) + end + claimed)


def _alias_bomb(levels: int, width: int = 9) -> str:
    """A YAML flow list of ``levels`` levels of ``width`` aliases each: width**levels scalars from ~15*levels bytes."""
    parts = ["&a0 [" + ",".join(["x"] * width) + "]"]
    for level in range(1, levels):
        parts.append(f"&a{level} [" + ",".join([f"*a{level - 1}"] * width) + "]")
    return "[" + ", ".join(parts) + "]"


CLASSES = ["apple", "bat", "car", "door", "eel", "fan"]
UNSEEN = ["door", "fan"]


def _sketchy(root: Path, size: int = 16) -> Path:
    """photo/<class>/<id>.jpg and sketch/<class>/<id>-1.png, 3 of each class; ``root/unseen.txt``."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "photo" / name).mkdir(parents=True)
        (root / "sketch" / name).mkdir(parents=True)
        for i in range(3):
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            box = [c * 2, c * 2, c * 2 + 6, c * 2 + 6]
            photo = Image.new("RGB", (size, size), colour)
            ImageDraw.Draw(photo).ellipse(box, fill=(255 - 40 * c, 40 * c, 120))
            photo.save(root / "photo" / name / f"n{c}_{i}.jpg")
            sketch = Image.new("L", (size, size), 255)
            ImageDraw.Draw(sketch).rectangle(box, outline=0)
            sketch.save(root / "sketch" / name / f"n{c}_{i}-1.png")
    (root / "unseen.txt").write_text("\n".join(UNSEEN) + "\n")
    return root


def _zs_config(sketchy: Path, cache: Path, **data: object) -> Path:
    """The config of a tiny zero-shot run (small CNN features, a few steps) on ``sketchy``."""
    import yaml

    values = {
        "name": "zs_tiny", "method": "iiae",
        "data": {"source": "images", "root": str(sketchy), "unseen": str(sketchy / "unseen.txt"), **data},
        "feature_net": {"backbone": "small_cnn", "image_size": 16, "widths": [4, 8], "feature_dim": 16, "epochs": 1,
                        "batch_size": 8, "cache_dir": str(cache)},
        "model": {"input_dim": 16, "hidden_dims": [16, 8], "code_dim": 4, "joint_hidden_dim": 8,
                  "decoder_hidden_dim": 8},
        "train": {"steps": 4, "log_every": 1},
        "baseline": {"hidden_dim": 8, "embedding_dim": 4, "steps": 5, "batch_size": 8},
        "evaluation": {"ks": [2, 5], "figure_classes": 2, "figure_queries": 1},
    }  # fmt: skip
    path = sketchy.parent / f"{sketchy.name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _mkfifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


def _null_device(path: Path) -> Path:
    """A character device node like /dev/null at ``path`` (Skip without the right to make one)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as error:
        raise Skip(f"cannot make a device node here ({error.strerror})") from None
    return path


def _stale(path: Path, folder: bool = False) -> Path:
    """A temporary that a killed process left: the name iiae.atomic.temporary_name gives, of a dead process."""
    stale = path.with_name(f".{path.name}.{_dead_pid()}-0badf00d.tmp")
    if folder:
        _write(stale / "model.safetensors", b"partial")
    else:
        _write(stale, b"partial")
    return stale


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def _empty_tar(folder: Path) -> Path:
    import tarfile

    path = folder / "empty.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    return path


# ---------------------------------------------------------------------------------------------------- running
def run_in_child(argv: list[str], folder: Path, timeout: float = CASE_TIMEOUT_S, env: dict[str, str] | None = None,
                 capture: bool = False, stdout: str = "null",
                 file_size_limit: int | None = None) -> Outcome:  # fmt: skip
    """``iiae -q ARGV`` in a forked child whose working folder is ``folder``, killed after ``timeout`` seconds.

    ``stdout``: "null" (os.devnull), "capture" (a file, returned; also ``capture=True``) or "closed" (a pipe
    whose read end is closed, as ``iiae ... | true`` once ``true`` has exited). ``file_size_limit``: a write
    past this many bytes fails with EFBIG (RLIMIT_FSIZE), the way a full disk fails a write."""
    stdout = "capture" if capture else stdout
    err_path = folder.parent / f"{folder.name}.stderr"
    out_path = folder.parent / f"{folder.name}.stdout"
    limit = _address_space_limit()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 99
        try:
            os.setpgid(0, 0)  # its own process group: a hang is killed with whatever it started
            os.chdir(folder)
            os.environ.update(env or {})
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            if file_size_limit is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
            with open(err_path, "wb") as err:
                os.dup2(err.fileno(), 2)
            if stdout == "closed":
                read_end, write_end = os.pipe()
                os.close(read_end)
                os.dup2(write_end, 1)
                os.close(write_end)
            else:
                with open(out_path if stdout == "capture" else os.devnull, "wb") as out:
                    os.dup2(out.fileno(), 1)
            status = cli.main(["-q", *argv])
        except SystemExit as stop:  # argparse
            status = stop.code if isinstance(stop.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported as the failure it is
            import traceback

            traceback.print_exc()
        finally:
            try:  # what the interpreter does at exit: a failed flush of stdout is reported, status 120
                sys.stdout.flush()
            except BaseException as error:  # noqa: BLE001
                print(f"Exception ignored while flushing sys.stdout:\n{type(error).__name__}: {error}", file=sys.stderr)
                status = 120
            sys.stderr.flush()
            os._exit(status)
    hung = False
    deadline = started + timeout
    while True:
        done, wait_status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            hung = True
            with _suppress_lookup():
                os.killpg(pid, signal.SIGKILL)
            _, wait_status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.02)
    status = os.waitstatus_to_exitcode(wait_status)
    with _suppress_lookup():
        os.killpg(pid, signal.SIGKILL)  # anything the command left running in its group
    captured = out_path.read_text(errors="surrogateescape") if stdout == "capture" and out_path.exists() else ""
    return Outcome(status, err_path.read_text(errors="replace"), captured, time.perf_counter() - started,
                   usage.ru_maxrss / 1024, hung)  # fmt: skip


class _suppress_lookup:  # noqa: N801 - a tiny contextlib.suppress(ProcessLookupError, PermissionError)
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, trace) -> bool:  # noqa: ANN001
        return kind is not None and issubclass(kind, (ProcessLookupError, PermissionError))


def _address_space_limit() -> int | None:
    """The parent's address space plus ADDRESS_SPACE_HEADROOM (None where it cannot be read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024 + ADDRESS_SPACE_HEADROOM
    except OSError:
        return None
    return None


def _must(outcome: Outcome, what: str) -> None:
    if outcome.status != 0 or outcome.hung:
        raise RuntimeError(f"{what} failed (exit {outcome.status}): {outcome.stderr[-1500:]}")


def snapshot(folder: Path, paths: tuple[str, ...]) -> dict[str, str]:
    """What "unchanged" means for the inputs ``paths`` (relative to ``folder``): every entry under them, links not
    followed, as its kind and content: a file's sha256, a link's target, a device's number, a folder's names."""
    entries: dict[str, str] = {}

    def visit(path: Path, name: str) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            entries[name] = "absent"
            return
        mode = info.st_mode
        if stat.S_ISREG(mode):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            entries[name] = f"file {digest.hexdigest()[:16]}"
        elif stat.S_ISDIR(mode):
            entries[name] = "folder"
            for child in sorted(os.listdir(path)):
                visit(path / child, f"{name}/{child}")
        elif stat.S_ISLNK(mode):
            entries[name] = f"link to {os.readlink(path)}"
        elif stat.S_ISFIFO(mode):
            entries[name] = "FIFO"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            entries[name] = f"device {os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
        else:
            entries[name] = f"mode {stat.filemode(mode)}"

    for relative in paths:
        visit(folder / relative, relative)
    return entries


def changed_inputs(before: dict[str, str], after: dict[str, str]) -> list[str]:
    names = sorted(set(before) | set(after))
    return [f"{ascii(name)[1:-1]} {before.get(name, 'absent')} -> {after.get(name, 'absent')}"
            for name in names if before.get(name, "absent") != after.get(name, "absent")]  # fmt: skip


def violations(case: Case, outcome: Outcome, folder: Path, before: dict[str, str] | None = None) -> list[str]:
    problems = []
    status, stderr = outcome.status, outcome.stderr
    if outcome.hung:
        problems.append(f"hang (killed after {case.timeout:.0f} s)")
    elif status != case.expect:
        problems.append(f"exit {status}, expected {case.expect}")
    lines = stderr.splitlines()
    if "Traceback" in stderr:
        problems.append("traceback")
    if "MemoryError" in stderr or "can't allocate memory" in stderr or "Cannot allocate memory" in stderr:
        problems.append("blow-up: out of memory")
    if len(lines) > 1:
        problems.append(f"{len(lines)} stderr lines")
    if len(stderr) > MAX_STDERR_CHARS:
        problems.append(f"blow-up: {len(stderr):,} characters on stderr")
    if outcome.peak_mb > MAX_PEAK_MB:
        problems.append(f"blow-up: peak memory {outcome.peak_mb:,.0f} MB")
    if WARNING_LINE.search(stderr):
        problems.append("raw Python warning")
    leftovers = [ascii(str(path.relative_to(folder)))[1:-1] for path in folder.rglob("*")
                 if path.name.endswith(".tmp") or path.name == "error.log"]  # fmt: skip
    if leftovers:
        problems.append(f"left {leftovers[:3]}")
    if status != 0 and case.new_out and os.path.lexists(folder / case.new_out):
        problems.append(f"left {case.new_out}")
    if before is not None:
        changes = changed_inputs(before, snapshot(folder, case.keep))
        if changes:
            problems.append(f"DATA LOSS: input changed ({'; '.join(changes[:3])})")
    if (folder / "PWNED").exists():
        problems.append("RAN UNTRUSTED CODE")
    if case.check is not None and not outcome.hung:
        try:
            problems += case.check(w_global(), folder, outcome)
        except Exception as error:  # noqa: BLE001 - a check that cannot run is a failure of the case
            problems.append(f"check failed: {' '.join(str(error).split())[:300]}")
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
        outcome = run_in_child(argv, root)
        if outcome.status != 0:
            raise SystemExit(f"preparing the workspace failed ({argv[0]}): {outcome.stderr[-2000:]}")
    _WORKSPACE = workspace
    return workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="write the table of cases here")
    parser.add_argument("--only", action="append", help="run the cases whose name holds this text (repeatable)")
    parser.add_argument("--group", action="append",
                        help="run the cases of these groups (comma-separated, repeatable)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the cases (group, name) and stop")
    parser.add_argument("--workdir", help="keep the round's folder here (the workspace is reused when present)")
    args = parser.parse_args()
    groups = {name.strip() for text in args.group or [] for name in text.split(",") if name.strip()}
    selected = [case for case in cases() if (not args.only or any(text in case.name for text in args.only))
                and (not groups or case.group in groups)]  # fmt: skip
    if args.list:
        for case in selected:
            print(f"{case.group:16s} {case.name}")
        print(f"{len(selected)} cases")
        return 0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="iiae-bad-inputs-") as temporary:
        root = Path(args.workdir).resolve() if args.workdir else Path(temporary)
        os.environ["IIAE_CACHE_DIR"] = str(root / "cache")  # the round's caches, never the user's
        workspace = reuse_workspace(root / "workspace") if args.workdir else None
        workspace = workspace or prepare(root / "workspace")
        rows, failed, skipped = [], 0, 0
        for number, case in enumerate(selected):
            folder = root / f"case{number:03d}"
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            try:
                argv = case.argv(workspace, folder)
                before = snapshot(folder, case.keep) if case.keep else None
            except Skip as reason:
                rows.append((case, None, f"skipped: {reason}", []))
                skipped += 1
                print(f"{number:3d} {case.group:14s} {case.name[:40]:40s} skipped: {reason}")
                continue
            except Exception as error:  # noqa: BLE001 - a broken case is a failure of this script
                rows.append((case, -1, f"case setup failed: {error!r}"[:500], ["setup"]))
                failed += 1
                print(f"{number:3d} {case.group:14s} {case.name[:40]:40s} FAIL setup: {error!r}"[:600])
                continue
            outcome = run_in_child(argv, folder, case.timeout, case.env, stdout=case.stdout,
                                   file_size_limit=case.file_size_limit)  # fmt: skip
            problems = violations(case, outcome, folder, before)
            failed += bool(problems)
            stderr = outcome.stderr.strip()
            message = stderr.splitlines()[-1] if stderr else ""
            rows.append((case, "hang" if outcome.hung else outcome.status, message, problems))
            mark = "FAIL " + "; ".join(problems) if problems else "ok"
            print(f"{number:3d} {case.group:14s} {case.name[:40]:40s} exit {outcome.status} {outcome.seconds:5.1f}s "
                  f"{outcome.peak_mb:5.0f} MB {mark}", flush=True)  # fmt: skip
            if problems:
                print("      $ iiae -q " + " ".join(map(_shell_word, argv)).replace(str(root), "…")[:1000])
                shown = stderr if len(stderr) <= 1500 else (
                    f"{stderr[:300]} [... {len(stderr) - 600:,} characters ...] {stderr[-300:]}")  # fmt: skip
                print("      " + shown.replace("\n", "\n      "), flush=True)
        ran = len(selected) - skipped
        print(f"{ran - failed} of {ran} cases kept the contract" + (f" ({skipped} skipped)" if skipped else ""))
        if args.markdown:
            lines = ["| # | group | case | exit | stderr (one line) | contract |", "|---:|---|---|---:|---|---|"]
            for number, (case, status, message, problems) in enumerate(rows):
                shown = message.replace("|", "\\|").replace(str(root), "…")[:160]
                verdict = "; ".join(problems).replace("|", "\\|").replace(str(root), "…")[:300] or (
                    "skipped" if status is None else "kept")  # fmt: skip
                name = case.name.replace("|", "/").replace("\n", "\\n")
                lines.append(f"| {number} | {case.group} | {name} | "
                             f"{'-' if status is None else status} | {shown} | {verdict} |")  # fmt: skip
            Path(args.markdown).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 1 if failed else 0


def _shell_word(word: str) -> str:
    import shlex

    shown = ascii(word)[1:-1] if not word.isascii() or not word.isprintable() else word
    return shlex.quote(shown[:200] + ("…" if len(shown) > 200 else ""))


def reuse_workspace(root: Path) -> Workspace | None:
    """The workspace a previous ``--workdir`` round prepared under ``root`` (None: none complete there)."""
    global _WORKSPACE
    if not (root / "model" / "config.json").exists():
        if root.exists():
            shutil.rmtree(root)
        return None
    _WORKSPACE = Workspace(root, root / "idx", root / "ab", root / "run", root / "model")
    for name in ("own", "ranking", "measures", "sketchy", "zs_run", "zs_cache"):  # made again on first use
        if (root / name).exists():
            shutil.rmtree(root / name)
    return _WORKSPACE


if __name__ == "__main__":
    sys.exit(main())
