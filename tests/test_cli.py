"""The command line end to end on a tiny run, and one clear error line for each bad input."""

from __future__ import annotations

import functools
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image
from tiny_runs import expect_error

from iiae import IIAE
from iiae.cli.main import main
from iiae.data import write_idx
from iiae.runs.metrics import CodeSpreads, ColourIntervention, ImageRunMetrics, keys_of

TINY = ["--steps", "3", "--batch-size", "16", "--no-progress", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "iiae.cli.main", "train", "--out", str(out), *TINY],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.slow
def test_train_writes_every_output(tiny_run):
    out, stdout = tiny_run
    for name in ["config.yaml", "metrics.json", "report.md", "loss_curves.png", "translation.png", "analogy.png",
                 "traversal.png", "checkpoints/last.ckpt", "model/model.safetensors", "model/config.json",
                 "logs/metrics.csv"]:  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) <= keys_of(ImageRunMetrics), set(metrics) - keys_of(ImageRunMetrics)  # the declared schema
    assert metrics["steps"] == 3 and metrics["test_pairs"] == 1000
    assert metrics["train_pairs"] == 3500 and metrics["validation_pairs"] == 500  # held out of the 4,000
    assert metrics["selection"]["selected"] in ("best", "last") and metrics["selection"]["step"] <= 3
    for direction in ("shared_x_to_y", "shared_y_to_x", "exclusive_x_to_y", "exclusive_y_to_x"):
        row = metrics["retrieval"][direction]
        assert row["count"] == 1000 and row["top1"] == pytest.approx(100 * row["hits"] / 1000)
        assert 1 <= row["median_rank"] <= 1000 and row["recall_at_5"] >= row["top1"]
    assert metrics["translation_fidelity"]["class_accuracy"]["real_x"] > 80  # the cached digit classifier (MNIST)
    # 3 steps train little, but a linear probe reads the digit from shared codes far above chance (10 %)
    assert metrics["leakage"]["fit_pairs"] == 3500 and metrics["leakage"]["digit_class"]["shared_x"] > 30
    intervention = metrics["colour_intervention"]  # 100 test digits x 10 colourings, in the declared schema
    assert set(intervention) == keys_of(ColourIntervention) and intervention["digits"] == 100
    for code in ("shared_x", "shared_y", "exclusive_x", "exclusive_y"):
        assert set(intervention[code]) == keys_of(CodeSpreads) and intervention[code]["digit_spread"] > 0
    assert "shared_x_to_y" in stdout and str(out) in stdout
    report = (out / "report.md").read_text()
    assert "translation.png" in report and "99.7" in report  # the paper's number beside ours
    assert "## Leakage by intervention" in report and "| z^x | background colour (X) |" in report
    config_block = report.split("## Config\n\n```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(config_block) == yaml.safe_load((out / "config.yaml").read_text())  # the run's config
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    for term in ("l1_x", "l1_y", "kl_exclusive_x", "kl_exclusive_y", "kl_joint", "kl_joint_to_r_x", "kl_joint_to_r_y"):
        assert f"train/{term}" in header
    with Image.open(out / "translation.png") as image:
        assert image.width > 400 and image.height > 400
    IIAE.from_pretrained(out / "model")


@pytest.mark.slow
def test_evaluate_and_translate_a_run(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    # --no-measures: the measures of evaluate are checked on tiny data in test_evaluate_translate.py
    assert main(["evaluate", str(out), "--json", str(tmp_path / "m.json"), "--no-measures"]) == 0
    printed = capsys.readouterr().out
    expected = json.loads((out / "metrics.json").read_text())["retrieval"]
    assert json.loads((tmp_path / "m.json").read_text())["retrieval"] == expected  # same test pairs, same model
    assert "exclusive_y_to_x" in printed
    assert main(["translate", str(out / "model"), "--out", str(tmp_path / "figures"), "--count", "4"]) == 0
    assert sorted(path.name for path in (tmp_path / "figures").iterdir()) == [
        "analogy.png", "translation.png", "traversal.png"]  # fmt: skip


def _idx_folder(tmp_path, damage: str | None = None):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 20), ("t10k", 10)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count, dtype=np.uint8))
    target = folder / "train-images-idx3-ubyte.gz"
    if damage == "truncated":
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    elif damage == "magic":
        raw = bytearray(gzip.decompress(target.read_bytes()))
        raw[0:2] = b"\x12\x34"
        target.write_bytes(gzip.compress(bytes(raw)))
    elif damage == "missing":
        target.unlink()
    return folder


_expect_error = functools.partial(expect_error, prefix="iiae: error:")  # tiny_runs.expect_error, iiae's own errors


@pytest.mark.parametrize("damage", ["truncated", "magic", "missing"])
def test_bad_idx_files_are_named_and_nothing_is_written(tmp_path, capsys, damage):
    folder = _idx_folder(tmp_path, damage)
    out = tmp_path / "run"
    _expect_error(
        capsys, ["train", "--data-source", "idx", "--data-root", str(folder), "--out", str(out), *TINY],
        "train-images-idx3-ubyte",
    )  # fmt: skip
    assert not out.exists()


def test_idx_folder_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    _expect_error(capsys, ["train", "--data-source", "idx", "--data-root", str(missing), *TINY], str(missing))


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--set", "model.no_such_key=1"], "model.no_such_key"),
        (["--set", "loss.lambda_=-1"], "loss.lambda_ must be >= 0"),
        (["--set", "model.image_size=0"], "model.image_size must be > 0"),
        (["--set", "lambda"], "--set expects SECTION.KEY=VALUE"),
        (["--steps", "0"], "train.steps must be > 0"),
        (["--batch-size", "-2"], "train.batch_size must be > 0"),
        (["--config", "no_such.yaml"], "no_such.yaml does not exist"),
    ],
)
def test_bad_config_values(tmp_path, capsys, flags, fragment):
    out = tmp_path / "run"
    _expect_error(capsys, ["train", "--out", str(out), *TINY, *flags], fragment)
    assert not out.exists()


def test_unwritable_and_occupied_output_folders(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _expect_error(capsys, ["train", "--out", str(a_file / "run"), *TINY], str(a_file))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "old.txt").write_text("a previous run")
    _expect_error(capsys, ["train", "--out", str(occupied), *TINY], "not empty")
    assert sorted(p.name for p in occupied.iterdir()) == ["old.txt"]


def test_evaluate_a_missing_model(tmp_path, capsys):
    _expect_error(capsys, ["evaluate", str(tmp_path / "nothing")], "does not exist")


def test_version(capsys):
    from iiae import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"iiae {__version__}"


@pytest.mark.slow
def test_a_redirected_log_gets_one_plain_line_per_log_every_steps(tmp_path):
    """No terminal: no carriage-return bar segments, one progress line every train.log_every steps; -q: none."""
    from tiny_runs import run_cli, tiny_args, tiny_idx_folder

    data = tiny_idx_folder(tmp_path / "data")
    args = [*tiny_args(data), "--steps", "4", "--set", "train.log_every=2"]
    result = run_cli(["train", "--out", str(tmp_path / "run"), *[a for a in args if a != "--no-progress"]])
    assert result.returncode == 0, result.stderr[-2000:]
    progress = [line for line in result.stderr.splitlines() if line.startswith("iiae: step ")]
    assert [line.split(",")[0].split(" loss")[0] for line in progress] == ["iiae: step 2/4", "iiae: step 4/4"]
    assert "steps/s" in progress[0] and "ETA" in progress[0] and "\r" not in result.stderr + result.stdout
    quiet = run_cli(["-q", "train", "--out", str(tmp_path / "quiet"), *[a for a in args if a != "--no-progress"]])
    assert quiet.returncode == 0 and "iiae: step" not in quiet.stderr
    lightning_notes = ("GPU available", "litlogger", "`Trainer.fit` stopped")  # repeat what the run says itself
    assert not [note for note in lightning_notes if note in result.stderr + quiet.stderr], result.stderr
    verbose = run_cli(["-v", "train", "--out", str(tmp_path / "verbose"), *args])
    assert verbose.returncode == 0 and "GPU available" in verbose.stderr


def test_python_warnings_become_one_iiae_line_and_library_deprecations_stay_quiet(monkeypatch, capsys):
    """A warning raised while a command runs (PIL's, Lightning's, NumPy's) is one ``iiae: warning:`` line, never
    Python's file:line format with a source line; a library's FutureWarning shows with -v only; the process's
    own warning display is restored afterwards."""
    import warnings

    import iiae.cli.main as cli

    def command(args):
        warnings.warn("a library's\nmulti-line warning", UserWarning)
        warnings.warn("`LeafSpec` is deprecated", FutureWarning)
        return 0

    monkeypatch.setattr(cli, "_command_export", command)
    before = warnings.showwarning
    assert cli.main(["export", "run", "--out", "m"]) == 0
    assert warnings.showwarning is before
    err = capsys.readouterr().err
    assert err == "iiae: warning: a library's multi-line warning\n"
    assert cli.main(["-v", "export", "run", "--out", "m"]) == 0
    assert "iiae: note: `LeafSpec` is deprecated (FutureWarning" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["retrieve", "model", "--query", "q" * 1_000_000, "--gallery", "g"],
                                  ["train", "--config", "c" * 1_000_000, "--out", "run"]])  # fmt: skip
def test_a_huge_path_argument_gives_one_bounded_line(tmp_path, monkeypatch, capsys, argv):
    """A path of a million characters (File name too long) is quoted in a line of at most ~1,000 characters."""
    import iiae.cli.main as cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("iiae: error: ") and err.count("\n") == 1 and len(err) < 1100
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("count", ["0", "65", "99999999999999999999"])
def test_translate_count_is_bounded_before_any_work(tmp_path, capsys, count):
    """--count beyond the grid's 64 columns (10^20 took 8.5 GB) is refused before the model is read."""
    import iiae.cli.main as cli

    assert cli.main(["translate", str(tmp_path / "absent"), "--count", count, "--out", str(tmp_path / "f")]) == 2
    assert "--count must be in [1, 64]" in capsys.readouterr().err and not (tmp_path / "f").exists()
