"""`iiae evaluate` and `iiae translate` end to end on a tiny trained run; one clear error line for bad checkpoints."""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from PIL import Image
from tiny_runs import expect_error, tiny_idx_folder

from iiae.cli.main import main
from iiae.core.config import config_from_dict
from iiae.runs.metrics import Evaluated, ImageRunMetrics, keys_of
from iiae.runs.runner import train_and_evaluate

pytestmark = pytest.mark.slow  # trains the run its tests evaluate

TINY = {
    "model": {"image_size": 16, "encoder_widths": [8], "exclusive_widths": [8], "decoder_widths": [8]},
    "train": {"steps": 2, "batch_size": 16, "log_every": 1, "select_every": 1, "max_exclusive_hits": None},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of 2 steps on 58 + 6 validation + 32 test random digits, best.ckpt selected at step 1 or 2."""
    folder = tmp_path_factory.mktemp("runs")
    data = {"source": "idx", "root": str(tiny_idx_folder(folder / "idx"))}
    metrics = train_and_evaluate(config_from_dict({**TINY, "data": data}), folder / "tiny", progress=False)
    out = folder / "tiny"
    return out, metrics


_expect_error = functools.partial(expect_error, prefix="iiae: error:")  # tiny_runs.expect_error, iiae's own errors


def test_evaluate_a_run_folder_refreshes_its_metrics_and_keeps_the_rest(run, capsys):
    out, metrics = run
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shared_x_to_y" in printed and str(out / "metrics.json") in printed
    written = json.loads((out / "metrics.json").read_text())
    assert written["retrieval"] == metrics["retrieval"]  # the main job and iiae evaluate: one code path
    assert written["selection"] == metrics["selection"] and written["steps"] == 2
    assert written["evaluated"]["model"] == str(out / "model") and written["evaluated"]["test_pairs"] == 32
    assert set(written) <= keys_of(ImageRunMetrics) and set(written["evaluated"]) == keys_of(Evaluated)
    # the measures are recomputed for the evaluated model and pairs: the same model and pairs, the same numbers
    assert "translation fidelity: digit classifier reads" in printed and "leakage: digit class from z^s" in printed
    # (to rounding: the main job measured the model in training's channels_last layout, evaluate the export)
    fidelity = written["translation_fidelity"]
    assert fidelity["class_accuracy"] == metrics["translation_fidelity"]["class_accuracy"]
    _assert_close(fidelity["colour_error"], metrics["translation_fidelity"]["colour_error"])
    _assert_close(written["leakage"], metrics["leakage"])
    _assert_close(written["colour_intervention"], metrics["colour_intervention"])
    assert written["colour_intervention"]["digits"] == 32  # every test digit (fewer than 100)
    assert "colour intervention: colour / digit spread of r^x / r^y / z^x / z^y" in printed


def _assert_close(value, expected, path="") -> None:  # noqa: ANN001
    """Equal JSON trees, numbers within 1e-5 (relative)."""
    if isinstance(expected, dict):
        assert value.keys() == expected.keys(), path
        for key in expected:
            _assert_close(value[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, float):
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-7), path
    else:
        assert value == expected, path


def test_evaluate_without_measures_and_measures_of_other_data(run, tmp_path, capsys):
    """--no-measures writes retrieval only and keeps a file's measures; measures {} (data without known factors)
    remove them, as they would describe other pairs."""
    out, metrics = run
    target = tmp_path / "metrics.json"
    target.write_text(json.dumps({"leakage": "kept", "translation_fidelity": "kept", "note": "kept"}))
    assert main(["evaluate", str(out), "--json", str(target), "--no-measures"]) == 0
    assert "translation fidelity" not in capsys.readouterr().out
    written = json.loads(target.read_text())
    assert written["leakage"] == written["translation_fidelity"] == "kept" and written["retrieval"]

    from iiae.runs.trained import load_trained, write_metrics

    write_metrics(target, written["retrieval"], load_trained(out), 32, "other pairs", measures={})
    assert set(json.loads(target.read_text())) == {"note", "retrieval", "evaluated"}


def test_evaluate_the_selected_checkpoint_and_a_model_folder(run, tmp_path, capsys):
    out, metrics = run
    assert main(["evaluate", str(out / "checkpoints" / "best.ckpt"), "--json", str(tmp_path / "best.json")]) == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["evaluated"]["step"] == metrics["selection"]["step"]
    assert best["retrieval"] == metrics["retrieval"]  # model/ is the exported best checkpoint
    assert main(["evaluate", str(out / "model"), "--out", str(tmp_path / "folder")]) == 0
    assert json.loads((tmp_path / "folder" / "metrics.json").read_text())["retrieval"] == metrics["retrieval"]
    assert main(["evaluate", str(out / "checkpoints" / "last.ckpt")]) == 0  # beside it, not over the run's metrics
    assert json.loads((out / "checkpoints" / "last.metrics.json").read_text())["evaluated"]["step"] == 2
    capsys.readouterr()


def test_translate_writes_the_three_figures(run, tmp_path, capsys):
    out, _ = run
    target = tmp_path / "figures"
    assert main(["translate", str(out / "checkpoints" / "last.ckpt"), "--out", str(target), "--count", "3"]) == 0
    sizes = {path.name: Image.open(path).size for path in target.iterdir()}
    # 3 pairs: translation 3 columns x 10 rows; analogy 2 panels of 4 x 4 cells; traversal 2 panels of 8 x 10
    assert sizes == {"translation.png": (460, 1040), "analogy.png": (600, 330), "traversal.png": (1320, 570)}
    assert str(target / "analogy.png") in capsys.readouterr().out
    for name in ("translation.png", "analogy.png", "traversal.png"):
        assert (out / name).is_file()  # the main job saved them too


def test_missing_and_truncated_checkpoints(run, tmp_path, capsys):
    out, _ = run
    _expect_error(capsys, ["evaluate", str(tmp_path / "nothing")], "does not exist")
    _expect_error(capsys, ["translate", str(tmp_path / "nothing.ckpt")], "does not exist")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((out / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    _expect_error(capsys, ["evaluate", str(truncated)], str(truncated), "truncated")
    model = tmp_path / "model"
    shutil.copytree(out / "model", model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _expect_error(capsys, ["evaluate", str(model)], "model.safetensors", "is not a safetensors file")
    (tmp_path / "empty").mkdir()
    _expect_error(capsys, ["evaluate", str(tmp_path / "empty")], "neither a run folder nor a model folder")


def test_checkpoints_of_another_model(run, tmp_path, capsys):
    out, _ = run
    model = tmp_path / "model"
    shutil.copytree(out / "model", model)
    meta = json.loads((model / "config.json").read_text())
    meta["model"]["exclusive_dim"] = 16  # config.json no longer matches the tensors
    (model / "config.json").write_text(json.dumps(meta))
    _expect_error(capsys, ["evaluate", str(model)], "model.safetensors", "the config expects")
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["model"]["shared_channels"] = 4
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    _expect_error(capsys, ["translate", str(other), "--out", str(tmp_path / "figures")], str(other), "expects")
    assert not (tmp_path / "figures").exists()
    checkpoint["hyper_parameters"] = {}
    torch.save(checkpoint, other)
    _expect_error(capsys, ["evaluate", str(other)], "holds no iiae config")


def test_translate_into_a_file_is_refused(run, tmp_path, capsys):
    out, _ = run
    a_file = tmp_path / "grid.png"
    a_file.write_bytes(b"")
    _expect_error(capsys, ["translate", str(out), "--out", str(a_file)], "expected a folder")


def test_own_files_with_a_run_folder_and_its_checkpoints(run, tmp_path, capsys):
    """``translate --images`` and ``retrieve`` take what evaluate takes; the run's model/ and its best.ckpt hold the
    same weights, so the second retrieval reads the first one's cached gallery codes."""
    out, _ = run
    pairs = tmp_path / "pairs"
    assert main(["data", "export", "mnist-cdcb", "--format", "folders", "--out", str(pairs), "--size", "16",
                 "--limit", "6"]) == 0  # fmt: skip
    queries = sorted((pairs / "test" / "X").iterdir())[:2]
    target = tmp_path / "translated"
    assert main(["translate", str(out / "checkpoints" / "last.ckpt"), "--images", *map(str, queries),
                 "--direction", "x-to-y", "--out", str(target)]) == 0  # fmt: skip
    assert sorted(path.name for path in target.iterdir()) == [f"{path.stem}_to_y.png" for path in queries]
    argv = ["--query", str(queries[0]), "--gallery", str(pairs / "test" / "Y"), "--top", "3", "--out",
            str(tmp_path / "panel.png"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(["retrieve", str(out), *argv]) == 0
    first = capsys.readouterr().out
    assert main(["retrieve", str(out / "checkpoints" / "best.ckpt"), *argv]) == 0
    second = capsys.readouterr().out
    assert "gallery codes: encoding 6 images" in first and "gallery codes: cached" in second
    ranking = [line for line in first.splitlines() if line.startswith("   ")]
    assert len(ranking) == 3 and ranking == [line for line in second.splitlines() if line.startswith("   ")]


def test_the_shift_suite_scores_the_clean_test_set_as_evaluate_does_and_every_shift(run, tmp_path, capsys):
    out, metrics = run
    target = tmp_path / "suite.json"
    assert main(["evaluate", str(out), "--json", str(target), "--no-measures", "--shift-suite"]) == 0
    assert "strokes_swapped" in capsys.readouterr().out
    suite = json.loads(target.read_text())["shift_suite"]
    assert set(suite) == {"clean", "colours_outside", "strokes_thinner", "strokes_thicker", "strokes_swapped",
                          "jpeg_q75", "jpeg_q30", "ab_png_256"}  # fmt: skip
    from iiae.data.shifts import SHIFT_DESCRIPTIONS

    assert set(SHIFT_DESCRIPTIONS) == set(suite)  # every set the suite scores is described in report.md
    for direction in ("shared_x_to_y", "shared_y_to_x"):  # clean is the run's own test set, re-drawn
        assert suite["clean"][direction] == metrics["retrieval"][direction]["top1"]
    assert all(row["count"] == 32 and 0 <= row["shared_x_to_y"] <= 100 for row in suite.values())
    _expect_error(capsys, ["evaluate", str(out), "--shift-pairs", "5"], "give it with --shift-suite")


def test_the_shift_suite_of_a_run_folder_reaches_its_report(run, tmp_path, capsys):
    """``iiae evaluate RUN --shift-suite`` into the run's own metrics.json rewrites its report.md: a row per test set
    with the numbers of metrics.json, and a line saying where the numbers come from; --json elsewhere leaves it."""
    source, _ = run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    before = (out / "report.md").read_text()
    assert "## Robustness: the shift suite" not in before
    assert main(["evaluate", str(out), "--no-measures", "--shift-suite", "--shift-pairs", "8"]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    suite = json.loads((out / "metrics.json").read_text())["shift_suite"]
    section = report.split("## Robustness: the shift suite", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| test set")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(suite)
    for row, (name, numbers) in zip(rows, suite.items()):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2:] == [f"{numbers['shared_x_to_y']:.2f}", f"{numbers['shared_y_to_x']:.2f}", "8"], name
    assert f"from `iiae evaluate` of {out / 'model'}" in report and "among all 32 candidates" in report
    assert report.split("## Config", 1)[1] == before.split("## Config", 1)[1]  # the run's own config, unchanged

    elsewhere = tmp_path / "elsewhere.json"
    unchanged = (out / "report.md").read_text()
    assert main(["evaluate", str(out), "--no-measures", "--json", str(elsewhere)]) == 0
    assert (out / "report.md").read_text() == unchanged


def test_the_shift_suite_on_validation_digits_goes_beside_the_test_suite(run, tmp_path, capsys):
    """``--shift-split validation`` scores the 6 validation digits, writes ``validation_shift_suite`` and its own
    report section, and keeps the test digits' suite as it was."""
    source, _ = run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    assert main(["evaluate", str(out), "--no-measures", "--shift-suite", "--shift-pairs", "8"]) == 0
    test_suite = json.loads((out / "metrics.json").read_text())["shift_suite"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--no-measures", "--shift-suite", "--shift-split", "validation"]) == 0
    assert "shift suite on validation digits:" in capsys.readouterr().out
    written = json.loads((out / "metrics.json").read_text())
    assert written["shift_suite"] == test_suite and set(written["validation_shift_suite"]) == set(test_suite)
    assert all(row["count"] == 6 for row in written["validation_shift_suite"].values())
    assert set(written) <= keys_of(ImageRunMetrics)
    report = (out / "report.md").read_text()
    assert "## Robustness: the shift suite\n" in report
    section = report.split("## Robustness on validation digits", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| test set")]
    assert len(rows) == len(test_suite) and all(row.endswith("| 6 |") for row in rows)
    _expect_error(capsys, ["evaluate", str(out), "--shift-split", "validation"], "give it with --shift-suite")


READ_ONLY_COMMANDS = """
import sys
from iiae.cli.main import main
run, out = sys.argv[1], sys.argv[2]
assert main(["evaluate", run, "--no-measures", "--json", out + "/metrics.json"]) == 0
assert main(["evaluate", run + "/checkpoints/last.ckpt", "--no-measures", "--json", out + "/last.json"]) == 0
assert main(["translate", run, "--out", out + "/figures", "--count", "2"]) == 0
assert main(["export", run, "--out", out + "/model"]) == 0
heavy = sorted(name for name in ("lightning", "sklearn") if name in sys.modules)
print("imported:", heavy)
"""


def test_commands_that_read_a_run_never_import_lightning_or_scikit_learn(run, tmp_path):
    """evaluate (--no-measures), translate and export read checkpoints and models without the training stack:
    importing Lightning and scikit-learn costs about 5 s of every such command."""
    import subprocess
    import sys

    out, metrics = run
    result = subprocess.run([sys.executable, "-c", READ_ONLY_COMMANDS, str(out), str(tmp_path)], capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported: []" in result.stdout, result.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["retrieval"] == metrics["retrieval"]
    assert json.loads((tmp_path / "last.json").read_text())["evaluated"]["step"] == 2


def test_a_metrics_file_edited_by_hand_is_read_bounded_and_never_breaks_the_report(run, tmp_path, capsys):
    """The run's metrics.json replaced by ``{}`` (no training facts): evaluate writes its numbers, leaves report.md
    as it was with one notice; replaced by a 100,000-deep array: one line, status 2, nothing written."""
    out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    report = (copy / "report.md").read_text()
    (copy / "metrics.json").write_text("{}")
    assert main(["evaluate", str(copy), "--no-measures"]) == 0
    err = capsys.readouterr().err
    assert "report.md not refreshed" in err and "lacks the training facts" in err
    assert (copy / "report.md").read_text() == report
    assert "retrieval" in json.loads((copy / "metrics.json").read_text())
    deep = "[" * 100_000 + "]" * 100_000
    (copy / "metrics.json").write_text(deep)
    _expect_error(capsys, ["evaluate", str(copy), "--no-measures"], "metrics.json", "nested deeper than")
    assert (copy / "metrics.json").read_text() == deep and not list(copy.glob(".*.tmp"))


def test_set_of_a_model_key_cannot_change_the_trained_model(run, capsys):
    """The model's architecture comes from the model: --set model.KEY asking for another value is refused, not
    ignored (the same value is accepted)."""
    out, _ = run
    _expect_error(capsys, ["evaluate", str(out), "--no-measures", "--set", "model.exclusive_dim=3"],
                  "--set model.exclusive_dim", "comes from the model")  # fmt: skip
    _expect_error(capsys, ["translate", str(out), "--set", "model.image_size=32"], "comes from the model")
