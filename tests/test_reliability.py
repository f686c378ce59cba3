"""The error contract of the command line (issue 13): a user's mistake or a damaged file is one line naming the
value or file, nothing half-written; an unexpected failure is one line and a saved traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from tiny_runs import expect_error, run_cli, start_cli, tiny_args, tiny_idx_folder

from iiae.cli.main import main
from iiae.core.config import DataConfig, TrainConfig
from iiae.errors import ConfigError
from iiae.run_files import ERROR_LOG

_error = lambda capsys, argv, *fragments: expect_error(capsys, argv, *fragments, prefix="iiae: error:")  # noqa: E731


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_outside_what_the_generators_take_are_refused_before_any_file(tmp_path, capsys, seed):
    out = tmp_path / "run"
    _error(capsys, ["train", "--seed", str(seed), "--steps", "1", "--out", str(out)], "train.seed", str(seed))
    _error(capsys, ["train", "--set", f"data.split_seed={seed}", "--out", str(out)], "data.split_seed")
    _error(capsys, ["train", "--set", f"data.colour_seed={seed}", "--out", str(out)], "data.colour_seed")
    assert not out.exists()
    TrainConfig(seed=2**32 - 1).validate()  # the bounds themselves are fine
    DataConfig(split_seed=0, colour_seed=2**32 - 1).validate()
    with pytest.raises(ConfigError, match=r"\[0, 4294967295\]"):
        TrainConfig(seed=seed).validate()


def _ab_folder(root: Path, size: int = 16, count: int = 4) -> Path:
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for index in range(1, count + 1):
            Image.new("RGB", (2 * size, size), (40 * index, 20, 200)).save(root / split / f"{index}.png")
    return root


IMAGE_TRAIN = ["--config", "facades_64", "--set", "data.dataset=paired_images", "--set", "model.image_size=16",
               "--set", "model.encoder_widths=[4]", "--set", "model.exclusive_widths=[4,4]",
               "--set", "model.decoder_widths=[4]", "--set", "model.shared_channels=2", "--steps", "1",
               "--batch-size", "2", "--no-progress", "--accelerator", "cpu", "--set", "train.select_every=0",
               "--set", "data.validation_split=null", "--set", "data.num_workers=0"]


def test_decompression_bombs_are_named_or_skipped(tmp_path, capsys):
    root = _ab_folder(tmp_path / "pairs")
    bomb = root / "train" / "5.png"
    Image.new("1", (30000, 15000)).save(bomb)  # 4.5e8 pixels, > 2x PIL's limit; a few KB on disk
    out = tmp_path / "run"
    _error(capsys, ["train", *IMAGE_TRAIN, "--data-root", str(root), "--out", str(out)], str(bomb), "pixels")
    assert not out.exists()
    status = main(["train", *IMAGE_TRAIN, "--data-root", str(root), "--out", str(out), "--set", "data.skip_bad=true"])
    assert status == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["train_pairs"] == 4  # 4 of 5, validation 0 of 4 held out


def test_an_image_whose_body_is_damaged_is_found_before_training(tmp_path, capsys):
    root = _ab_folder(tmp_path / "pairs")
    damaged = root / "test" / "2.png"
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # the header is intact, the pixels are cut
    out = tmp_path / "run"
    _error(capsys, ["train", *IMAGE_TRAIN, "--data-root", str(root), "--out", str(out)], str(damaged))
    assert not out.exists()  # refused before the run folder was made: the data can be fixed and the command rerun
    status = main(["train", *IMAGE_TRAIN, "--data-root", str(root), "--out", str(out), "--set", "data.skip_bad=true"])
    assert status == 0, capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["test_pairs"] == 3


def test_an_empty_test_split_is_refused_before_training(tmp_path, capsys):
    data, out = tiny_idx_folder(tmp_path / "data", test=0), tmp_path / "run"  # IDX files holding 0 test digits
    _error(capsys, ["train", "--out", str(out), *tiny_args(data), "--steps", "2"], "test split", "no pairs")
    assert not out.exists()  # refused before training, not after it


def _train_with_a_fault(tmp_path: Path, attribute: str, raise_statement: str) -> tuple[Path, int, list[str], str]:
    """A tiny run in a fresh process where ``iiae.runs.runner.<attribute>`` executes ``raise_statement``: (run
    folder, exit status, the stderr lines of iiae, the whole stderr)."""
    script = (f"import errno, sys\nimport iiae.runs.runner as runner\ndef fault(*args, **kwargs):\n"
              f"    {raise_statement}\nrunner.{attribute} = fault\nfrom iiae.cli.main import main\n"
              "sys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    data, out = tiny_idx_folder(tmp_path / "data"), tmp_path / "run"
    process = start_cli(script, ["train", "--out", str(out), *tiny_args(data), "--steps", "2"])
    _, stderr = process.communicate(timeout=300)
    return out, process.returncode, [line for line in stderr.splitlines() if line.startswith("iiae")], stderr


@pytest.mark.slow
def test_an_unexpected_failure_is_one_line_and_a_saved_traceback(tmp_path):
    out, status, lines, stderr = _train_with_a_fault(
        tmp_path, "save_figures", 'raise RuntimeError("something the developers did not foresee")')
    assert status == 1 and len(lines) == 1, stderr
    assert "RuntimeError: something the developers did not foresee" in lines[0] and str(out / ERROR_LOG) in lines[0]
    assert "Traceback" not in stderr  # the traceback is in the file, not on the screen
    saved = (out / ERROR_LOG).read_text()
    assert "Traceback" in saved and "in fault" in saved and "save_figures" in saved  # where it failed
    assert (out / "checkpoints" / "last.ckpt").is_file()  # the trained state is kept: --resume finishes the run
    result = run_cli(["train", "--resume", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


@pytest.mark.slow
def test_a_metrics_log_of_random_bytes_on_resume_is_one_line(tmp_path, capsys):
    data, out = tiny_idx_folder(tmp_path / "data"), tmp_path / "run"
    assert main(["train", "--out", str(out), *tiny_args(data), "--steps", "2"]) == 0
    capsys.readouterr()
    log = out / "logs" / "metrics.csv"
    log.write_bytes(bytes(range(256)) * 4)
    _error(capsys, ["train", "--resume", str(out), "--steps", "3"], str(log))


@pytest.mark.slow
def test_evaluate_into_a_folder_named_as_the_json_file_leaves_nothing(tmp_path, capsys):
    data, run = tiny_idx_folder(tmp_path / "data"), tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_args(data), "--steps", "2"]) == 0
    capsys.readouterr()
    target = tmp_path / "taken"
    target.mkdir()
    _error(capsys, ["evaluate", str(run), "--json", str(target), "--no-measures"], str(target))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "run", "taken"]  # no .taken...tmp


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, capsys):
    data = tiny_idx_folder(tmp_path / "data")
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    for out in (reference, stopped):
        assert main(["train", "--out", str(out), *tiny_args(data), "--steps", "2"]) == 0
    for name in ("checkpoints", "model"):  # what a kill before the first checkpoint leaves: config.yaml, logs/
        shutil.rmtree(stopped / name)
    for name in ("metrics.json", "report.md"):
        (stopped / name).unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped)]) == 0
    assert "no checkpoint yet" in capsys.readouterr().err
    ours, theirs = (json.loads((run / "metrics.json").read_text()) for run in (stopped, reference))
    assert ours["retrieval"] == theirs["retrieval"] and ours["steps"] == 2
    assert (stopped / "logs" / "metrics.csv").read_text() == (reference / "logs" / "metrics.csv").read_text()


@pytest.mark.slow
def test_damaged_checkpoint_fields_are_skipped_or_named(tmp_path, capsys):
    import torch

    data, run = tiny_idx_folder(tmp_path / "data"), tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_args(data), "--steps", "3", "--set", "train.keep_checkpoints=3"]) == 0
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    damaged = {
        "optimizer_states": [],
        "loops": "abc",
        "iiae_metrics_log_rows": "abc",
        "iiae_rng_states": {"python": [1, 2, 3], "numpy": "x", "torch": torch.zeros(3)},
    }
    for key, value in damaged.items():
        copy = tmp_path / f"copy-{key}"
        shutil.copytree(run, copy)
        (copy / "metrics.json").unlink()
        torch.save({**checkpoint, key: value}, copy / "checkpoints" / "last.ckpt")  # one field damaged
        capsys.readouterr()
        assert main(["train", "--resume", str(copy), "--steps", "4"]) == 0, key  # from step=3.ckpt, said so
        err = capsys.readouterr().err
        assert f"skipped checkpoint {copy / 'checkpoints' / 'last.ckpt'}: {key}" in err, err
    torch.save({**checkpoint, "hyper_parameters": ["not", "a", "mapping"]}, tmp_path / "foreign.ckpt")
    _error(capsys, ["evaluate", str(tmp_path / "foreign.ckpt")], "foreign.ckpt", "holds no iiae config")
    _error(capsys, ["export", str(tmp_path / "foreign.ckpt"), "--out", str(tmp_path / "exported")], "foreign.ckpt")
    assert not (tmp_path / "exported").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_naming_the_file_and_the_run_continues(tmp_path):
    out, status, lines, stderr = _train_with_a_fault(
        tmp_path, "atomic_write_json", 'raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))')
    assert status == 2 and lines == [f"iiae: error: No space left on device: {out / 'metrics.json'}"], stderr
    assert "Traceback" not in stderr and not (out / "metrics.json").exists()
    result = run_cli(["train", "--resume", str(out)])  # space freed: the run finishes
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.mark.slow
def test_a_real_full_disk_at_every_stage_is_one_line_and_the_run_continues(tmp_path, capsys):
    """A tmpfs smaller than the run needs: it fills while checkpointing, saving the model or writing a figure. Each
    time: one line naming the file, no temporary file or traceback left, and the run finishes once there is room.
    (In this process: the same main() as the command line, without 7 interpreter starts.)"""
    import subprocess

    data, reference = tiny_idx_folder(tmp_path / "data"), tmp_path / "reference"
    args = [*tiny_args(data), "--steps", "6"]
    assert main(["train", "--out", str(reference), *args]) == 0
    capsys.readouterr()
    needed = _folder_bytes(reference)
    for fraction in (0.45, 0.75, 0.9):  # about: the checkpoints, the model folder, the figures
        disk = tmp_path / f"disk-{fraction}"
        disk.mkdir()
        size = f"size={int(needed * fraction) // 1024}k"
        if subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(disk)], capture_output=True).returncode:
            pytest.skip("cannot mount a small tmpfs here (needs root); the injected-ENOSPC test covers the messages")
        try:
            out = disk / "run"
            status, stderr = main(["train", "--out", str(out), *args]), capsys.readouterr().err
            lines = stderr.splitlines()
            assert status == 2 and len(lines) == 1, stderr[-3000:]
            assert lines[0].startswith(f"iiae: error: No space left on device: {out}/"), lines
            assert Path(lines[0].split(": ", 3)[3]).parent.is_dir(), lines  # a file of the run, not a staging name
            leftovers = [path.name for path in out.rglob("*") if path.name.endswith(".tmp") or path.name == ERROR_LOG]
            assert not leftovers and not (out / "metrics.json").exists(), leftovers
            subprocess.run(["mount", "-o", f"remount,size={2 * needed // 1024}k", str(disk)], check=True)
            status, stderr = main(["train", "--resume", str(out)]), capsys.readouterr().err
            assert status == 0, stderr[-2000:]
            ours, theirs = (json.loads((run / "metrics.json").read_text()) for run in (out, reference))
            assert ours["retrieval"] == theirs["retrieval"] and ours["steps"] == 6, fraction
        finally:
            unmounted = subprocess.run(["umount", str(disk)], capture_output=True, text=True)
        assert unmounted.returncode == 0, unmounted.stderr  # nothing of the run keeps a file open


@pytest.mark.slow
def test_a_data_root_whose_name_is_not_utf8_reaches_the_report(tmp_path, capsys):
    import os

    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-data"))  # a Latin-1 folder name on a UTF-8 system
    try:
        data = tiny_idx_folder(root)
    except (UnicodeEncodeError, OSError):
        pytest.skip("this file system does not take non-UTF-8 names")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *tiny_args(data), "--steps", "1"]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_bytes()
    assert b"caf\xe9-data" in report  # the folder's own bytes, as written (no UnicodeEncodeError, no 0-byte file)
    from iiae.core.config import load_config

    assert load_config(out / "config.yaml").data.root == str(data)  # the config round-trips the name exactly


@pytest.mark.parametrize("flags", [["--set", "model.image_size=1073741824"],
                                   ["--set", "model.encoder_widths=[1000000000,1000000000]"],
                                   ["--set", "model.image_size=4096", "--batch-size", "512"]])  # fmt: skip
def test_absurd_sizes_are_refused_with_an_estimate_before_any_file(tmp_path, capsys, flags):
    out = tmp_path / "run"
    error = _error(capsys, ["train", "--out", str(out), "--accelerator", "cpu", *flags], "model")
    assert ("GiB" in error and "parameters" in error) or "overflow" in error, error
    assert not out.exists()


def test_the_memory_estimate_counts_parameters_and_activations():
    from iiae import IIAE, ModelConfig
    from iiae.core.model import training_memory

    config = ModelConfig()
    parameters, needed = training_memory(config, 64)
    assert parameters == sum(p.numel() for p in IIAE(config).parameters())
    _, doubled = training_memory(config, 128)
    assert needed > 16 * parameters and doubled - 16 * parameters == pytest.approx(2 * (needed - 16 * parameters))


def test_model_files_with_impossible_sizes_are_one_line(tmp_path, capsys):
    from iiae import IIAE, ModelConfig

    folder = tmp_path / "model"
    IIAE(ModelConfig(image_size=16, encoder_widths=[4], exclusive_widths=[4, 4], decoder_widths=[4],
                     exclusive_dim=2, shared_channels=2)).save_pretrained(folder)  # fmt: skip
    meta = json.loads((folder / "config.json").read_text())
    meta["model"]["encoder_widths"] = [10**9, 10**9]
    meta["model"]["decoder_widths"] = [4, 4]
    meta["model"]["image_size"] = 64
    (folder / "config.json").write_text(json.dumps(meta))
    _error(capsys, ["evaluate", str(folder), "--no-measures"], str(folder / "config.json"), "impossible")


def test_a_file_name_with_a_line_break_stays_on_one_line(tmp_path, capsys):
    folder = tmp_path / "odd\nname"
    _error(capsys, ["evaluate", str(folder), "--no-measures"], "odd\\nname", "does not exist")


@pytest.mark.slow
def test_a_copied_run_keeps_its_older_step_checkpoints_until_they_rotate_out(tmp_path, capsys):
    """Lightning does not restore the kept-file list when the folder moved; the run must rebuild it from disk."""
    data, original, copy = tiny_idx_folder(tmp_path / "data"), tmp_path / "original", tmp_path / "copy"
    # keep_checkpoints=2: step=3 and step=4 after four steps
    assert main(["train", "--out", str(original), *tiny_args(data), "--steps", "4", "--set", "train.select_every=0"]) == 0
    shutil.copytree(original, copy)
    for run in (original, copy):
        (run / "metrics.json").unlink()
        assert main(["train", "--resume", str(run), "--steps", "5"]) == 0, capsys.readouterr().err
    for run in (original, copy):
        assert sorted(path.name for path in (run / "checkpoints").glob("step=*.ckpt")) == [
            "step=00000004.ckpt", "step=00000005.ckpt"], run  # fmt: skip


@pytest.mark.slow
def test_a_run_resumes_only_on_the_data_it_started_with(tmp_path, capsys):
    """data_files.json records the training data by content: a moved data folder resumes; a folder of other
    digits under the same names is refused naming the file (it went on silently)."""
    import gzip

    data = tiny_idx_folder(tmp_path / "idx")
    run = tmp_path / "run"
    assert main(["train", *tiny_args(data), "--steps", "2", "--out", str(run), "--no-progress"]) == 0
    (run / "metrics.json").unlink()  # as if it had been stopped: resumable
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    images = other / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:16] + bytes(255 - byte for byte in raw[16:])))  # inverted digits
    capsys.readouterr()
    expect_error(capsys, ["train", "--resume", str(run), "--steps", "3", "--data-root", str(other)],
                 "train-images-idx3-ubyte.gz has other content", "resume it on the data it was trained on")  # fmt: skip
    assert main(["train", "--resume", str(run), "--steps", "3", "--data-root", str(moved), "--no-progress"]) == 0
