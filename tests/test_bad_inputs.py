"""Every entry point answers a broken input with one error line naming the file or key and what was expected.

Each case below runs the command line (``iiae.cli.main.main``) on a broken input and checks that it exits with status
2, prints exactly one line ``iiae...: error: ...`` holding the named fragments, leaves no partial output, and
finishes within the module's time limit (``signal.alarm``: nothing hangs). 74 cases:

- command-line flags and config values (20): unknown key, malformed --set, steps 0, batch 0, lambda < 0,
  negative image size, wrong types, non-integer steps, checkpoint_every 0, keep_checkpoints 0,
  skip_nonfinite_steps < 0, empty widths, unknown data source, unknown accelerator, non-integer flag,
  unknown flag, image size that does not divide, decoder widths that do not match, dropout >= 1, beta+lambda = 0;
- config files (7): empty, invalid YAML, a list, unknown section, wrong type, binary bytes, a folder;
- dataset loaders, IDX files (12): missing folder, missing file, empty, truncated, wrong magic, corrupted gzip,
  image bomb (absurd header), wrong image size, float images with NaN, mismatched pair counts, labels out of
  range, trailing bytes;
- resume (8): --resume with --out, a missing folder, a folder that is not a run, ``auto`` without runs, a
  changed config, a finished run, a run without checkpoints, --resume with --seeds;
- checkpoints (8): empty, truncated, wrong magic, a malicious pickle (not executed), a plain pickle, another
  model's weights, NaN weights, not a dict;
- model files (14): missing config.json, missing weights, invalid JSON, JSON list, format version 99, unknown
  model key, empty weights, truncated weights, absurd safetensors header, NaN tensor, wrong shape, extra tensor,
  absurd model config (huge image size: refused without allocating), a model for another channel count than
  the data;
- outputs (5): unwritable output folder, a folder holding another run, an output path that is a file, export
  into a non-empty folder, export of a folder that is not a run.

More cases of the same kind: tests/test_cli.py (IDX damage through ``iiae train``, bad config values, occupied
output folders), tests/test_config.py (every config key), tests/test_data_idx.py and tests/test_data_mnist.py
(the IDX reader and loaders), tests/test_model.py (model files), tests/test_resume.py (a second run on a folder
in use, concurrently started runs).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_runs import expect_error, tiny_args, tiny_idx_folder

from iiae import IIAE, ModelConfig
from iiae.cli.main import make_parser
from iiae.cli.options import build_config
from iiae.core.config import save_config
from iiae.data import write_idx
from iiae.engine.checkpoint_files import check_checkpoint_matches
from iiae.engine.training import IIAELightning
from iiae.errors import CheckpointError

TINY = ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8, 8], decoder_widths=[8], shared_channels=4)


@pytest.fixture(autouse=True)
def never_hangs():
    def too_slow(signum, frame):
        raise TimeoutError("a bad input made iiae hang")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_idx_folder(tmp_path_factory.mktemp("data"))


# ------------------------------------------------------------------------------------------- flags, values
@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--set", "model.no_such_key=1"], ["unknown config key model.no_such_key"]),
        (["--set", "lambda"], ["--set expects SECTION.KEY=VALUE"]),
        (["--steps", "0"], ["train.steps must be > 0"]),
        (["--batch-size", "0"], ["train.batch_size must be > 0"]),
        (["--set", "loss.lambda_=-0.5"], ["loss.lambda_ must be >= 0"]),
        (["--set", "model.image_size=-16"], ["model.image_size must be > 0"]),
        (["--set", "train.learning_rate=fast"], ["train.learning_rate must be a number", "'fast'"]),
        (["--set", "train.steps=1.5"], ["train.steps must be an integer"]),
        (["--set", "train.checkpoint_every=0"], ["train.checkpoint_every must be > 0"]),
        (["--set", "train.keep_checkpoints=0"], ["train.keep_checkpoints must be > 0"]),
        (["--set", "train.skip_nonfinite_steps=-1"], ["train.skip_nonfinite_steps must be >= 0"]),
        (["--set", "model.encoder_widths=[]"], ["model.encoder_widths must be a non-empty list"]),
        (["--set", "data.source=ftp"], ["data.source must be one of", "'ftp'"]),
        (["--accelerator", "tpu"], ["train.accelerator must be one of", "'tpu'"]),
        (["--steps", "many"], ["argument --steps: invalid int value: 'many'"]),
        (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
        (["--set", "model.image_size=20"], ["model.image_size = 20 must be divisible"]),
        (["--set", "model.decoder_widths=[8,8,8]"], ["model.decoder_widths needs"]),
        (["--set", "model.decoder_dropout=1.0"], ["model.decoder_dropout must be in [0, 1)"]),
        (["--set", "loss.beta=0", "--set", "loss.lambda_=0"], ["loss.beta + loss.lambda_ must be > 0"]),
        (["--set", "model.x_channels=1"], ["domain X have shape (3,", "the config's model expects 1 channels"]),
    ],
)
def test_bad_flags_and_values(tmp_path, capsys, flags, fragments):
    out = tmp_path / "run"
    expect_error(capsys, ["train", "--out", str(out), *flags], *fragments)
    assert not out.exists()


# ------------------------------------------------------------------------------------------- config files
@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"", ["is empty; expected sections"]),
        (b"train: {steps: [1, 2\n", ["is not valid YAML"]),
        (b"- 1\n- 2\n", ["a config must be a mapping"]),
        (b"trian:\n  steps: 3\n", ["unknown config key trian"]),
        (b"train:\n  steps: many\n", ["train.steps must be an integer"]),
        (bytes(range(256)) * 4, ["is not UTF-8 text (byte 128"]),
        (None, ["is a folder; expected a regular file"]),  # the config path is a folder
    ],
    ids=["empty", "invalid-yaml", "list", "unknown-section", "wrong-type", "binary", "folder"],
)
def test_bad_config_files(tmp_path, capsys, content, fragments):
    path, out = tmp_path / "broken.yaml", tmp_path / "run"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    error = expect_error(capsys, ["train", "--config", str(path), "--out", str(out)], *fragments)
    assert "broken.yaml" in error and not out.exists()


# ---------------------------------------------------------------------------------------------- IDX files
def _images(folder: Path) -> Path:
    return folder / "train-images-idx3-ubyte.gz"


def _rewrite(path: Path, transform) -> None:
    path.write_bytes(gzip.compress(transform(gzip.decompress(path.read_bytes()))))


IDX_DAMAGE = {
    "missing-file": (lambda f: _images(f).unlink(), "lacks train-images-idx3-ubyte[.gz]"),
    "empty": (lambda f: _images(f).write_bytes(b""), "is empty: expected an IDX header"),
    "truncated": (lambda f: _rewrite(_images(f), lambda raw: raw[: len(raw) // 2]), "is truncated"),
    "wrong-magic": (lambda f: _rewrite(_images(f), lambda raw: b"\x12\x34" + raw[2:]), "bad magic number 1234"),
    "corrupted-gzip": (
        lambda f: _images(f).write_bytes(_images(f).read_bytes()[:20] + b"\xff" * 40 + _images(f).read_bytes()[60:]),
        "corrupted gzip stream",
    ),
    "image-bomb": (
        lambda f: _images(f).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 2**31, 28, 28))),
        "declares shape (2147483648, 28, 28)",
    ),
    "wrong-size": (
        lambda f: write_idx(_images(f), np.zeros((64, 32, 32), np.uint8)),
        "expected uint8 images of shape (N, 28, 28)",
    ),
    "float-nan-images": (
        lambda f: write_idx(_images(f), np.full((64, 28, 28), np.nan, np.float32)),
        "holds float32 of shape (64, 28, 28)",
    ),
    "mismatched-pairs": (
        lambda f: write_idx(f / "train-labels-idx1-ubyte.gz", np.zeros(63, np.uint8)),
        "holds 64 images but label file",
    ),
    "labels-out-of-range": (
        lambda f: write_idx(f / "train-labels-idx1-ubyte.gz", np.full(64, 12, np.uint8)),
        "expected 0..9",
    ),
    "trailing-bytes": (lambda f: _rewrite(_images(f), lambda raw: raw + b"extra"), "trailing bytes"),
}


@pytest.mark.parametrize("damage", sorted(IDX_DAMAGE))
def test_bad_idx_files(tmp_path, capsys, damage):
    folder = tiny_idx_folder(tmp_path / "idx")
    harm, fragment = IDX_DAMAGE[damage]
    harm(folder)
    out = tmp_path / "run"
    error = expect_error(capsys, ["train", *tiny_args(folder), "--out", str(out)], fragment)
    assert "idx" in error and not out.exists()


def test_missing_idx_folder(tmp_path, capsys):
    expect_error(capsys, ["train", *tiny_args(tmp_path / "nowhere")], str(tmp_path / "nowhere"), "does not exist")


# ------------------------------------------------------------------------------------------------- resume
def _config(data: Path, *extra: str):
    return build_config(make_parser().parse_args(["train", *tiny_args(data), *extra]))


def make_run(folder: Path, data: Path, step: int = 3, checkpoint: object = "valid", finished: bool = False) -> Path:
    """A run folder as iiae train leaves it (a crafted checkpoint: no training needed)."""
    config = _config(data)
    (folder / "checkpoints").mkdir(parents=True)
    save_config(config, folder / "config.yaml")
    path = folder / "checkpoints" / "last.ckpt"
    if checkpoint == "valid":
        state = IIAELightning(config.to_dict()).state_dict()
        torch.save({"state_dict": state, "global_step": step, "hyper_parameters": {"config": config.to_dict()},
                    "optimizer_states": [{"state": {}, "param_groups": []}], "loops": {}}, path)  # what resume reads
    elif isinstance(checkpoint, bytes):
        path.write_bytes(checkpoint)
    elif checkpoint is not None:
        torch.save(checkpoint, path)
    if finished:
        (folder / "metrics.json").write_text("{}")
    return folder


def test_resume_errors(tmp_path, capsys, data, monkeypatch):
    run = make_run(tmp_path / "run", data)
    expect_error(capsys, ["train", "--resume", str(run), "--out", str(tmp_path / "x")], "not both")
    expect_error(capsys, ["train", "--resume", str(tmp_path / "nowhere")], "nowhere", "does not exist")
    (tmp_path / "photos").mkdir()
    expect_error(capsys, ["train", "--resume", str(tmp_path / "photos")], "holds no config.yaml")
    monkeypatch.chdir(tmp_path)
    expect_error(capsys, ["train", "--resume", "auto"], "no run of config 'mnist_cdcb' with a checkpoint under runs/")
    expect_error(
        capsys, ["train", "--resume", str(run), "--set", "model.shared_channels=8"],
        "cannot resume", "model.shared_channels = 8", "started with 4",
    )  # fmt: skip
    finished = make_run(tmp_path / "finished", data, step=30, finished=True)
    expect_error(capsys, ["train", "--resume", str(finished)], "already finished its 30 steps", "--steps")
    empty = make_run(tmp_path / "no-checkpoint", data, checkpoint=None)  # resuming it restarts at step 0 (tested
    expect_error(capsys, ["export", str(empty), "--out", str(tmp_path / "e")], "holds no checkpoint")  # elsewhere)
    expect_error(capsys, ["train", "--resume", str(run), "--seeds", "1,2"], "cannot be combined with --seeds")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]  # nothing written


def test_the_expected_checkpoint_state_is_the_lightning_modules(data):
    """Checkpoints are checked against the IIAE's own state under "model." (iiae.engine.checkpoint_files needs no
    Lightning): that must be exactly the LightningModule's state, name, shape and dtype."""
    config = _config(data, "--set", "model.shared_channels=8")
    module_state = IIAELightning(config.to_dict()).state_dict()
    model_state = {f"model.{name}": tensor for name, tensor in IIAE(config.model).state_dict().items()}
    assert list(module_state) == list(model_state)
    assert all(module_state[k].shape == model_state[k].shape and module_state[k].dtype == model_state[k].dtype
               for k in module_state)  # fmt: skip
    check_checkpoint_matches({"state_dict": module_state}, config, Path("last.ckpt"))  # accepted
    with pytest.raises(CheckpointError, match="last.ckpt"):
        check_checkpoint_matches({"state_dict": IIAELightning(_config(data).to_dict()).state_dict()}, config,
                                 Path("last.ckpt"))  # fmt: skip


class WritesAMarker:
    """A pickle that runs code when unpickled: it would create the marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints(tmp_path, capsys, data):
    WritesAMarker.marker = str(tmp_path / "code-was-run")
    valid = IIAELightning(_config(data).to_dict()).state_dict()
    other = IIAELightning(_config(data, "--set", "model.shared_channels=8").to_dict()).state_dict()
    truncated = tmp_path / "t.ckpt"
    torch.save({"state_dict": valid, "global_step": 3}, truncated)
    cases = {
        "empty": (b"", "is empty"),
        "truncated": (truncated.read_bytes()[:3000], "is truncated or not a PyTorch checkpoint"),
        "wrong-magic": (b"GIF89a" + bytes(200), "not a PyTorch checkpoint"),
        "malicious": ({"state_dict": {}, "global_step": 9, "x": WritesAMarker()}, "needs arbitrary unpickling"),
        "plain-pickle": (pickle.dumps({"x": WritesAMarker()}), "not a PyTorch checkpoint readable with weights_only"),
        "another-model": ({"state_dict": other, "global_step": 3}, "has shape"),
        "nan-weights": (
            {"state_dict": {**valid, "model.decoder_x.out.weight": torch.full((1,), float("nan"))}, "global_step": 3},
            "holds NaN or Inf",
        ),
        "not-a-dict": ([1, 2, 3], "expected a dict with a state_dict"),
    }
    for name, (content, fragment) in cases.items():
        run = make_run(tmp_path / name, data, checkpoint=content)
        error = expect_error(capsys, ["train", "--resume", str(run)], fragment)
        assert "last.ckpt" in error, error
        expect_error(capsys, ["export", str(run), "--out", str(tmp_path / f"{name}-model")], "last.ckpt")
        assert not (tmp_path / f"{name}-model").exists()
    assert not (tmp_path / "code-was-run").exists()  # the malicious pickles never ran


# ------------------------------------------------------------------------------------------- model files
def _header_bomb(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**60) + b"{}")


def _replace_tensor(folder: Path, name_part: str, make, extra: dict | None = None) -> None:
    state = load_file(str(folder / "model.safetensors"))
    name = next(name for name in state if name_part in name)
    state[name] = make(state[name])
    save_file({**state, **(extra or {})}, str(folder / "model.safetensors"))


def _edit_json(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(meta)))


MODEL_DAMAGE = {
    "missing-config": (lambda f: (f / "config.json").unlink(), "or config.json + model.safetensors"),
    "missing-weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    "invalid-json": (lambda f: (f / "config.json").write_text("{'model':"), "is not valid JSON"),
    "json-list": (lambda f: (f / "config.json").write_text("[1, 2]"), "is not an iiae model config"),
    "format-99": (lambda f: _edit_json(f, lambda m: {**m, "format_version": 99}), "format_version 99, expected 1"),
    "unknown-key": (
        lambda f: _edit_json(f, lambda m: {**m, "model": {**m["model"], "depth": 3}}),
        "unknown config key model.depth",
    ),
    "empty-weights": (lambda f: (f / "model.safetensors").write_bytes(b""), "is not a safetensors file (0 bytes"),
    "truncated-weights": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:500]),
        "bytes of a 500-byte file",
    ),
    "header-bomb": (_header_bomb, "is not a safetensors file (its header claims"),
    "nan-tensor": (
        lambda f: _replace_tensor(f, "weight", lambda t: torch.full_like(t, float("nan"))), "holds NaN or Inf"
    ),
    "wrong-shape": (lambda f: _replace_tensor(f, "weight", lambda t: torch.zeros(3, 3)), "has shape (3, 3)"),
    "extra-tensor": (
        lambda f: _replace_tensor(f, "weight", lambda t: t, extra={"spy": torch.zeros(1)}),
        "unexpected tensor spy",
    ),
    "absurd-config": (
        lambda f: _edit_json(f, lambda m: {**m, "model": {**m["model"], "image_size": 2**20, "shared_channels": 99}}),
        "has shape",  # a model of 2**20 x 2**20 images: refused from the file's shapes, nothing that size allocated
    ),
}


@pytest.mark.parametrize("damage", sorted(MODEL_DAMAGE))
def test_bad_model_files(tmp_path, capsys, damage):
    folder = IIAE(TINY).save_pretrained(tmp_path / "model")
    harm, fragment = MODEL_DAMAGE[damage]
    harm(folder)
    json_out = tmp_path / "metrics.json"
    error = expect_error(capsys, ["evaluate", str(folder), "--json", str(json_out)], fragment)
    assert str(folder) in error and not json_out.exists()


def test_a_model_for_other_channels_than_the_data(tmp_path, capsys, data):
    one_channel = ModelConfig(**{**TINY.__dict__, "x_channels": 1})
    folder = IIAE(one_channel).save_pretrained(tmp_path / "model")
    expect_error(capsys, ["evaluate", str(folder), "--data-source", "idx", "--data-root", str(data)],
                 "domain X have shape (3, 16, 16)", "expects 1 channels")  # fmt: skip


# ------------------------------------------------------------------------------------------------ outputs
def test_bad_output_folders(tmp_path, capsys, data):
    expect_error(capsys, ["train", *tiny_args(data), "--out", "/proc/iiae-run"], "/proc", "cannot be written")
    assert not Path("/proc/iiae-run").exists()
    other_run = make_run(tmp_path / "other", data)
    expect_error(capsys, ["train", *tiny_args(data), "--out", str(other_run)], "is the run folder")
    assert sorted(p.name for p in other_run.iterdir()) == ["checkpoints", "config.yaml"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    expect_error(capsys, ["train", *tiny_args(data), "--out", str(a_file)], "is a file; expected a folder")
    expect_error(capsys, ["export", str(other_run), "--out", str(other_run)], "is one of the command's inputs")
    expect_error(capsys, ["export", str(tmp_path), "--out", str(tmp_path / "m")], "inside the input folder")
    assert not (tmp_path / "m").exists()

