"""Loss-curve figure from the CSV log, including a run too short to have logged anything."""

from __future__ import annotations

from PIL import Image

from iiae.evaluation.figures import read_logged_terms, save_loss_curves


def test_loss_curves_from_csv_and_without_any_log(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,step,train/loss,train/kl_joint\n0,24,5.0,1.0\n0,49,4.0,\n")
    series = read_logged_terms(csv_path)
    assert series["loss"][0].tolist() == [24.0, 49.0] and series["kl_joint"][1].tolist() == [1.0]
    save_loss_curves(csv_path, tmp_path / "curves.png")
    assert read_logged_terms(tmp_path / "missing.csv") == {}
    save_loss_curves(tmp_path / "missing.csv", tmp_path / "empty.png")
    for name in ("curves.png", "empty.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width == 1280  # 4 panels x 3.2 in x 100 dpi


def test_importing_the_figures_leaves_matplotlibs_backend_alone():
    """The figures use matplotlib's object API (Figure + the Agg canvas): a user's backend is never switched."""
    import subprocess
    import sys

    script = ("import matplotlib; matplotlib.use('svg'); import iiae.evaluation.figures, iiae.runs.runner; "
              "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
