"""Where a command may write (iiae.outputs), staged outputs and stale temporaries (iiae.atomic), and a stdout that
closes: no command ever overwrites an input, a file of another run or model folder, or a device; a refused output
leaves nothing written; multi-file outputs appear whole or not at all; a killed run's temporaries are removed.

No training: tiny untrained models saved as model and run folders, a crafted checkpoint. Fast tier.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_own_images import noise_images, tiny_model
from tiny_runs import ONE_THREAD, expect_error, tiny_idx_folder

from iiae.atomic import atomic_write_bytes, remove_stale_temporaries
from iiae.cli.main import main
from iiae.core.config import config_from_dict, save_config
from iiae.data import download
from iiae.errors import OutputError
from iiae.outputs import check_output, check_outputs, staged_files, staged_folder
from iiae.runs import own_images
from iiae.runs.run_folder import RunLock

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"image_size": 16, "encoder_widths": [8], "exclusive_widths": [8, 8], "decoder_widths": [8],
        "shared_channels": 4}  # fmt: skip


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (links not followed): a file's bytes, a link's target, or its kind."""
    entries: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        key = path.relative_to(root).as_posix()
        if stat.S_ISLNK(mode):
            entries[key] = ("link", os.readlink(path))
        elif stat.S_ISREG(mode):
            entries[key] = path.read_bytes()
        else:
            entries[key] = stat.S_IFMT(mode)
    return entries


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_run_folder(folder: Path, data: Path, seed: int = 0) -> Path:
    """A run folder as iiae train leaves it: config.yaml, model/, checkpoints/last.ckpt (crafted: the weights and
    config Lightning would save), metrics.json. No training."""
    folder.mkdir(parents=True)
    config = config_from_dict({"model": TINY, "data": {"source": "idx", "root": str(data)}})
    save_config(config, folder / "config.yaml")
    model = tiny_model(seed).save_pretrained(folder / "model")
    (folder / "checkpoints").mkdir()
    state = {f"model.{name}": tensor for name, tensor in tiny_model(seed).state_dict().items()}
    torch.save({"state_dict": state, "global_step": 3, "hyper_parameters": {"config": config.to_dict()},
                "optimizer_states": [{"state": {}, "param_groups": []}], "loops": {}},
               folder / "checkpoints" / "last.ckpt")  # fmt: skip
    (folder / "metrics.json").write_text('{"steps": 3}')
    assert model == folder / "model"
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The issue's fixture: tiny IDX data, a run ``run`` and another ``other_run``, a model folder ``model``, a
    query ``q.png``, a gallery ``g/`` of 5 images and ``in/`` holding b.png and b_to_y.png."""
    root = tmp_path_factory.mktemp("world")
    data = tiny_idx_folder(root / "idx", train=32, test=16)
    make_run_folder(root / "run", data)
    make_run_folder(root / "other_run", data, seed=1)
    tiny_model().save_pretrained(root / "model")
    noise_images(root / "g", 5)
    noise_images(root / "in", 2)
    (root / "in" / "0.png").rename(root / "in" / "b.png")
    (root / "in" / "1.png").rename(root / "in" / "b_to_y.png")
    noise_images(root / "query", 1, seed=3)[0].rename(root / "q.png")
    return root


# ------------------------------------------------------------------------------------------- check_output
def test_an_input_is_never_an_output_by_any_name(tmp_path):
    data = tmp_path / "a.png"
    data.write_bytes(b"input")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    os.symlink(data, tmp_path / "link.png")
    os.link(data, tmp_path / "hard.png")
    os.symlink(folder, tmp_path / "folder_link")
    refused = {
        data: [data], tmp_path / "link.png": [data], data.parent / "." / "a.png": [tmp_path / "link.png"],
        tmp_path / "hard.png": [data], folder / "new.png": [folder], folder / "sub" / "deep" / "x.png": [folder],
        tmp_path / "folder_link" / "x.png": [folder], folder / "y.png": [tmp_path / "folder_link"],
    }  # fmt: skip
    for target, inputs in refused.items():
        with pytest.raises(OutputError, match="one of the command's inputs|inside the input folder"):
            check_output(target, inputs)
    assert check_output(tmp_path / "new.png", [data, folder]) == tmp_path / "new.png"
    assert check_output(folder, [folder / "sub" / "f.png"], folder=True) == folder  # inputs may lie inside it
    with pytest.raises(OutputError, match="one of the command's inputs"):
        check_output(folder, [folder], folder=True)
    with pytest.raises(OutputError, match="are the same file"):
        check_outputs([tmp_path / "x.png", tmp_path / "." / "x.png"])
    assert data.read_bytes() == b"input"


def test_devices_fifos_sockets_and_folders_are_never_replaced_by_a_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "file").write_text("x")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "socket.json"))
        for name, kind in (("pipe.json", "a FIFO"), ("folder.json", "a folder"), ("socket.json", "a socket")):
            with pytest.raises(OutputError, match=kind):
                check_output(tmp_path / name, what="--json")
    with pytest.raises(OutputError, match="a character device"):
        check_output("/dev/null")
    with pytest.raises(OutputError, match="is a file; expected a folder"):
        check_output(tmp_path / "file", folder=True)
    with pytest.raises(OutputError, match="cannot be checked"):
        check_output(tmp_path / "file" / "under.json")
    for bad in ("", "a\0b"):
        with pytest.raises(OutputError, match="not a usable path"):
            check_output(bad)
    assert stat.S_ISFIFO((tmp_path / "pipe.json").stat().st_mode)


def test_run_and_model_folders_are_written_only_by_their_own_commands(tmp_path):
    """Nothing inside a run or model folder is written by another command; in its own folder a command
    writes only what it regenerates by design (``replaces``: evaluate's metrics.json), never a figure, the report,
    a checkpoint or another file of the run; a resumed run's own folder is its output."""
    run = make_run_folder(tmp_path / "run", tmp_path / "idx")
    model = tiny_model().save_pretrained(tmp_path / "model")
    for target in (run / "metrics.json", run / "report.md", run / "checkpoints" / "best.metrics.json",
                   model / "metrics.json"):  # fmt: skip
        with pytest.raises(OutputError, match="which this command did not create"):
            check_output(target)  # no owner: another run's or model's files
    assert check_output(run / "metrics.json", owner=run, replaces=[run / "metrics.json"]) == run / "metrics.json"
    beside = run / "checkpoints" / "best.metrics.json"  # evaluate of a checkpoint: its metrics beside it
    assert check_output(beside, owner=run, replaces=[beside])
    assert check_output(model / "metrics.json", owner=model, replaces=[model / "metrics.json"])
    assert check_output(run, owner=run, folder=True) == run  # a resumed run's own folder
    for target in ("config.yaml", "checkpoints/last.ckpt", "checkpoints/step=00000003.ckpt", "logs/metrics.csv",
                   ".iiae.lock", "error.log", "loss_curves.png", "translation.png", "report.md", "panel.png",
                   "metrics.json"):  # fmt: skip
        with pytest.raises(OutputError, match="which this command reads: it writes only (metrics|other).json there"):
            check_output(run / target, owner=run, replaces=[run / "metrics.json"] if target != "metrics.json" else
                         [run / "other.json"])  # fmt: skip
    with pytest.raises(OutputError, match="inside the model folder"):
        check_output(run / "model" / "config.json", owner=run, replaces=[run / "metrics.json"])
    with pytest.raises(OutputError, match="it writes only nothing there|writes only metrics.json"):
        check_output(model / "config.json", owner=model, replaces=[model / "metrics.json"])
    with pytest.raises(OutputError, match="is the run folder"):
        check_output(run, folder=True)
    with pytest.raises(OutputError, match="is inside the run folder"):
        check_output(run / "exported", folder=True)
    with pytest.raises(OutputError, match="inside the run folder"):
        check_output(run / "metrics.json", owner=tmp_path / "other", replaces=[run / "metrics.json"])


# --------------------------------------------------------------------------------------------- staging
def test_staged_files_appear_together_or_not_at_all(tmp_path):
    old = tmp_path / "old.png"
    old.write_bytes(b"old")
    targets = [old, tmp_path / "new" / "deeper" / "a.png", tmp_path / "b.png"]
    with pytest.raises(OSError, match="No space"):
        with staged_files(targets) as temporaries:
            temporaries[0].write_bytes(b"first")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert snapshot(tmp_path) == {"old.png": b"old"}  # no target, no temporary, no folder made for them
    with staged_files(targets) as temporaries:
        for index, temporary in enumerate(temporaries):
            temporary.write_bytes(bytes([index]))
    assert [path.read_bytes() for path in targets] == [b"\0", b"\1", b"\2"]
    assert not [path for path in tmp_path.rglob(".*")]

    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "figures", ["a.png", "b.png"]) as staging:
            (staging / "a.png").write_bytes(b"a")
            raise RuntimeError("the second figure failed")
    assert not (tmp_path / "figures").exists()
    with staged_folder(tmp_path / "figures", ["a.png", "b.png"]) as staging:
        (staging / "a.png").write_bytes(b"a")
        (staging / "b.png").write_bytes(b"b")
    assert snapshot(tmp_path / "figures") == {"a.png": b"a", "b.png": b"b"}


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getpid()
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".metrics.json.{dead}-0123abcd.tmp", tmp_path / "sub" / f".x.png.{dead}-0123abcd.tmp"]
    for path in stale:
        path.write_text("half")
    (tmp_path / f".model.{dead}-89abcdef.tmp").mkdir()
    (tmp_path / f".model.{dead}-89abcdef.tmp" / "model.safetensors").write_text("half")
    live = tmp_path / f".last.ckpt.{alive}-0123abcd.tmp"
    live.write_text("being written")
    users = [tmp_path / ".notes.tmp", tmp_path / f"m.{dead}-0123abcd.tmp", tmp_path / f".m.{dead}-xyz.tmp"]
    for path in users:
        path.write_text("the user's")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in removed) == sorted([stale[0].name, f".model.{dead}-89abcdef.tmp"])
    assert remove_stale_temporaries(tmp_path, recursive=True) == [stale[1]]
    assert live.exists() and remove_stale_temporaries(tmp_path, every=True) == [live]
    assert all(path.read_text() == "the user's" for path in users)


def test_a_run_removes_every_kind_of_temporary_a_killed_run_left_once_it_holds_the_lock(tmp_path):
    run = make_run_folder(tmp_path / "run", tmp_path / "idx")
    pid = os.getpid()  # the same id as the killed run (a container restarted): removed too, the lock is ours
    leftovers = [run / f".model.{pid}-0123abcd.tmp", run / f".metrics.json.{dead_pid()}-0123abcd.tmp",
                 run / f".loss_curves.png.{pid}-0123abcd.tmp", run / "checkpoints" / f".last.ckpt.{pid}-0123abcd.tmp",
                 run / "logs" / f".metrics.csv.{pid}-0123abcd.tmp"]  # fmt: skip
    leftovers[0].mkdir()
    (leftovers[0] / "config.json").write_text("{}")
    for path in leftovers[1:]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    before = {key: value for key, value in snapshot(run).items() if ".tmp" not in key}
    with RunLock(run, new_run=False):
        assert not any(path.exists() for path in leftovers)
    assert snapshot(run) == before


def test_export_removes_the_staging_folders_of_killed_exports_beside_out(tmp_path, capsys):
    run = make_run_folder(tmp_path / "run", tmp_path / "idx")
    (run / "metrics.json").unlink()
    stale, live = tmp_path / f".m.{dead_pid()}-0123abcd.tmp", tmp_path / f".m.{os.getpid()}-0123abcd.tmp"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 0, capsys.readouterr().err
    assert not stale.exists() and live.exists()  # a running export's staging folder is kept
    assert sorted(path.name for path in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    expect_error(capsys, ["export", str(run), "--out", str(run / "exported")], "inside the input folder")
    expect_error(capsys, ["export", str(run), "--out", str(tmp_path / "m")], "is the model folder")


# ------------------------------------------------------------------------------------ the examples
def test_retrieve_never_writes_its_query_or_gallery(world, capsys):
    before = snapshot(world)
    for out, fragment in (("q.png", "is one of the command's inputs"), ("g/1.png", "inside the input folder"),
                          ("g/new.png", "inside the input folder"), ("other_run/p.png", "inside the run folder"),
                          ("model/p.png", "inside the model folder")):  # fmt: skip
        expect_error(capsys, ["retrieve", str(world / "run"), "--query", str(world / "q.png"), "--gallery",
                              str(world / "g"), "--out", str(world / out)], fragment)  # fmt: skip
    expect_error(capsys, ["retrieve", str(world / "run"), "--query", str(world / "q.png"), "--gallery",
                          str(world / "g"), "--out", str(world / "p.png"), "--cache-dir", str(world / "g" / "c")],
                 "--cache-dir", "inside the input folder")  # fmt: skip
    assert snapshot(world) == before


def test_evaluate_never_writes_the_model_another_run_or_a_device(world, capsys):
    os.mkfifo(world / "nul.json")
    try:
        before = snapshot(world)
        run = str(world / "run")
        for flags, fragment in (
            (["--json", str(world / "run" / "model" / "config.json")], "one of the command's inputs"),
            (["--json", str(world / "run" / "config.yaml")], "one of the command's inputs"),
            (["--out", str(world / "other_run")], "inside the run folder"),
            (["--json", str(world / "nul.json")], "is a FIFO"),
            (["--json", "/dev/null"], "is a character device"),
            (["--json", str(world / "idx" / "m.json")], "inside the input folder"),
            (["--json", str(world / "model" / "m.json")], "inside the model folder"),
        ):
            expect_error(capsys, ["evaluate", run, "--no-measures", *flags], fragment)
        assert snapshot(world) == before
    finally:
        (world / "nul.json").unlink()


def test_evaluate_writes_its_own_run_and_model_folder(world, capsys):
    for model, written in (("run", "run/metrics.json"), ("model", "model/metrics.json")):
        assert main(["evaluate", str(world / model), "--no-measures", "--data-source", "idx", "--data-root",
                     str(world / "idx")]) == 0, capsys.readouterr().err  # fmt: skip
        assert f"wrote {world / written}" in capsys.readouterr().out
    (world / "model" / "metrics.json").unlink()


def test_translate_never_writes_an_input_and_writes_all_outputs_or_none(world, tmp_path, capsys, monkeypatch):
    before = snapshot(world)
    model, images = str(world / "model"), [str(world / "in" / "b.png"), str(world / "in" / "b_to_y.png")]
    expect_error(capsys, ["translate", model, "--direction", "x-to-y", "--out", str(world / "in"), "--images", *images],
                 "b_to_y.png is one of the command's inputs")  # fmt: skip
    expect_error(capsys, ["translate", model, "--direction", "x-to-y", "--out", str(tmp_path), "--images", *images,
                          "--style", str(tmp_path / "b_to_y.png")], "one of the command's inputs")  # fmt: skip
    expect_error(capsys, ["translate", str(world / "run"), "--out", str(world / "other_run")],
                 "is the run folder", "which this command did not create")  # fmt: skip
    assert snapshot(world) == before

    write = own_images.write_image
    calls = []

    def full_disk_on_the_second(image, path):  # noqa: ANN001
        calls.append(path)
        if len(calls) == 2:
            raise OutputError(f"cannot write {path}: No space left on device")
        return write(image, path)

    monkeypatch.setattr(own_images, "write_image", full_disk_on_the_second)
    out = tmp_path / "out"
    error = expect_error(capsys, ["translate", model, "--direction", "x-to-y", "--out", str(out), "--images", *images])
    assert f"cannot write {out / 'b_to_y_to_y.png'}: No space" in error and not out.exists()  # not even the first
    monkeypatch.setattr(own_images, "write_image", write)
    assert main(["translate", model, "--direction", "x-to-y", "--out", str(out), "--images", *images]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["b_to_y.png", "b_to_y_to_y.png"]


def test_zero_shot_commands_never_write_their_inputs(world, tmp_path, capsys):
    from iiae.zsbir.config import ZSConfig

    run = tmp_path / "zs"
    (run / "model").mkdir(parents=True)
    save_config(ZSConfig(), run / "config.yaml")
    os.mkfifo(tmp_path / "nul.json")
    before = snapshot(tmp_path)
    for target, fragment in (("nul.json", "is a FIFO"), ("zs/config.yaml", "one of the command's inputs")):
        expect_error(capsys, ["zs-sbir", "evaluate", str(run), "--json", str(tmp_path / target)], fragment)
    for out, fragment in ((world / "q.png", "one of the command's inputs"), (world / "g" / "x.png", "input folder")):
        expect_error(capsys, ["zs-sbir", "retrieve", str(run), "--query", str(world / "q.png"), "--gallery",
                              str(world / "g"), "--out", str(out)], fragment)  # fmt: skip
    expect_error(capsys, ["zs-sbir", "train", "--data-root", str(world / "g"), "--out", str(world / "g" / "run")],
                 "inside the input folder")  # fmt: skip
    assert snapshot(tmp_path) == before


def test_train_never_writes_into_its_data_or_another_run(world, capsys):
    before = snapshot(world)
    data = ["--data-source", "idx", "--data-root", str(world / "idx")]
    expect_error(capsys, ["train", *data, "--out", str(world / "idx" / "run")], "inside the input folder")
    expect_error(capsys, ["train", *data, "--out", str(world / "other_run" / "sub")], "inside the run folder")
    assert snapshot(world) == before


def test_data_export_is_staged_and_never_writes_its_inputs(tmp_path, capsys, monkeypatch):
    from iiae.data import export

    flags = ["data", "export", "mnist-cdcb", "--limit", "2", "--size", "4"]
    data = tiny_idx_folder(tmp_path / "idx", train=8, test=8)
    expect_error(capsys, [*flags, "--data-source", "idx", "--data-root", str(data), "--out", str(data / "x")],
                 "inside the input folder")  # fmt: skip
    pairs = export.export_pairs

    def fail_on_test(x, y, folder, *args, **kwargs):  # noqa: ANN001
        if folder.name == "test":
            raise OutputError(f"cannot write exported images into {folder}: No space left on device")
        return pairs(x, y, folder, *args, **kwargs)

    monkeypatch.setattr(export, "export_pairs", fail_on_test)
    error = expect_error(capsys, [*flags, "--out", str(tmp_path / "pairs")], "No space left on device")
    assert str(tmp_path / "pairs" / "test") in error and ".tmp" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["idx"]  # no half export, no staging folder
    monkeypatch.setattr(export, "export_pairs", pairs)
    (tmp_path / f".pairs.{dead_pid()}-0123abcd.tmp").mkdir()  # what a killed export left
    assert main([*flags, "--out", str(tmp_path / "pairs")]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["idx", "pairs"]
    assert len(list((tmp_path / "pairs" / "test").iterdir())) == 2


def _archive(path: Path, counts: dict[str, int]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for split, count in counts.items():
            for index in range(1, count + 1):
                buffer = io.BytesIO()
                Image.fromarray(np.full((4, 8, 3), index, dtype=np.uint8)).save(buffer, "JPEG")
                info = tarfile.TarInfo(f"facades/{split}/{index}.jpg")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
    return path


def test_data_download_never_overwrites_what_it_did_not_create(tmp_path, capsys, monkeypatch):
    counts = {"train": 2, "val": 1, "test": 1}
    monkeypatch.setitem(download.EXPECTED_COUNTS, "facades", counts)
    facades, other = _archive(tmp_path / "facades.tar.gz", counts), _archive(tmp_path / "other.tar.gz", {"train": 3})
    mydata = tmp_path / "mydata"
    (mydata / "train").mkdir(parents=True)
    (mydata / "train" / "1.png").write_bytes(b"the user's image")
    before = snapshot(tmp_path)
    flags = ["data", "download", "facades", "--root", str(mydata), "--archive"]
    expect_error(capsys, [*flags, str(other)], "mydata/train already exists", "never overwrites")
    expect_error(capsys, [*flags, str(facades)], "mydata/train already exists")
    assert snapshot(tmp_path) == before
    fresh = ["data", "download", "facades", "--root", str(tmp_path / "fresh"), "--archive"]
    expect_error(capsys, [*fresh, str(other)], "is not the facades dataset", "train/ 3 (expected 2)")
    assert not (tmp_path / "fresh").exists()  # nothing unpacked, no staging folder, not the folder it made

    real_open = Path.open

    def full_disk(self, mode="r", *args, **kwargs):  # noqa: ANN001
        if mode == "xb" and self.name == "2.jpg":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full_disk)
    error = expect_error(capsys, [*fresh, str(facades)], "No space left on device")
    assert error.endswith(str(tmp_path / "fresh" / "train" / "2.jpg")) and "damaged" not in error
    assert not (tmp_path / "fresh").exists()
    monkeypatch.setattr(Path, "open", real_open)
    assert main([*fresh, str(facades)]) == 0
    assert sorted(path.name for path in (tmp_path / "fresh").iterdir()) == ["test", "train", "val"]


# ---------------------------------------------------------------------------------------- property tests
NAMES = st.sampled_from(["a.png", "b.json", "c", "metrics.json", "config.json", "config.yaml", "model.safetensors"])


@st.composite
def worlds(draw):
    """(files, folders, links, (target path parts, ...), owner choice, inputs choice) for a random world."""
    files = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    folders = draw(st.lists(st.sampled_from(["d", "e", "g"]), max_size=2, unique=True))
    targets = draw(st.lists(st.tuples(
        st.sampled_from(["root", "root", "fresh", "fresh", "fresh", "folder", "run", "run", "run", "run/model", "run/checkpoints",
                         "model", "model", "link", "hard", "folder_link", "fifo"]),
        NAMES, st.integers(0, 5)), min_size=1, max_size=2))  # fmt: skip
    owner = draw(st.sampled_from([None, "run", "run", "model"]))
    return files, folders, targets, owner, draw(st.integers(0, 2**16))


def _build(root: Path, files, folders, seed: int) -> tuple[list[Path], dict[str, Path]]:
    """The world: input files and folders (with files), a run and a model folder, links, a FIFO; (inputs, places)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for name in files:
        (root / name).write_bytes(rng.bytes(8))
        inputs.append(root / name)
    for name in folders:
        (root / name / "sub").mkdir(parents=True)
        (root / name / "sub" / "x.png").write_bytes(rng.bytes(8))
        (root / name / "a.png").write_bytes(rng.bytes(8))
        inputs.append(root / name)
    make_run_folder(root / "run", root / "idx")
    tiny_model().save_pretrained(root / "model")
    os.symlink(inputs[0], root / "link")
    os.link(inputs[0], root / "hard")
    os.symlink(inputs[-1], root / "folder_link")
    os.mkfifo(root / "fifo")
    places = {"root": root, "folder": inputs[-1], "run": root / "run", "run/model": root / "run" / "model",
              "run/checkpoints": root / "run" / "checkpoints", "model": root / "model", "fresh": root / "new" / "deep",
              "link": root / "link", "hard": root / "hard", "folder_link": root / "folder_link",
              "fifo": root / "fifo"}  # fmt: skip
    return inputs, places


def _target(places: dict[str, Path], inputs: list[Path], where: str, name: str, pick: int) -> Path:
    """A path among or around the world's files: an input itself, a link's own path, or a name in a place."""
    if where in ("link", "hard", "fifo") or (where == "root" and pick % 2):
        return places[where] if where != "root" else inputs[pick % len(inputs)]
    return places[where] / name


def _protected(root: Path, inputs: list[Path], owner: Path | None) -> dict[str, object]:
    """What no guarded writer may change: every input file and file under an input folder, every file of the run
    and model folders but the owner's own outputs (metrics.json beside the model, ...)."""
    snap = snapshot(root)
    keep = {}
    for key, value in snap.items():
        path = root / key
        in_input = any(path == source or source in path.parents for source in inputs)
        in_run = key.startswith(("run/config.yaml", "run/checkpoints/last.ckpt", "run/model/", "model/config.json",
                                 "model/model.safetensors"))  # fmt: skip
        in_other = owner is None and key.startswith(("run/", "model/")) or (
            owner is not None and key.startswith(("model/" if owner.name == "run" else "run/")))  # fmt: skip
        if in_input or in_run or in_other:
            keep[key] = value
    return keep


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_no_guarded_writer_ever_changes_an_input(world_spec):
    """Random output paths (inputs themselves, links to them, paths inside input, run and model folders, a FIFO,
    fresh names) through check_outputs + staged_files: no input or other folder's file ever changes, and a
    refused set of outputs leaves every byte as it was."""
    files, folders, targets, owner_name, seed = world_spec
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        inputs, places = _build(root, files, folders, seed)
        owner = places[owner_name] if owner_name else None
        paths = [_target(places, inputs, *target) for target in targets]
        before, protected = snapshot(root), _protected(root, inputs, owner)
        try:
            checked = check_outputs(paths, inputs, owner=owner)
        except OutputError:
            assert snapshot(root) == before  # refused: nothing written
            return
        with staged_files(checked) as temporaries:
            for temporary_path in temporaries:
                temporary_path.write_bytes(b"written")
        after = snapshot(root)
        assert {key: after.get(key) for key in protected} == protected
        for path in checked:  # the outputs are regular files, replacing any link there, never an input
            assert path.read_bytes() == b"written" and not path.is_symlink()
            assert not any(path == source or source in path.parents for source in inputs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["q.png", "qlink.png", "qhard.png", "g/0.png", "g/new.png", "glink/1.png",
                               "run/model/p.png", "run/panel.png", "run/config.png", "other_run/p.png",
                               "model/p.png", "fifo.png", "dir.png", "fresh.png", "out/deep/p.png", "in/b.png"]),
       model=st.sampled_from(["run", "model"]))  # fmt: skip
def test_retrieve_never_changes_an_input_whatever_its_out(world, capsys, monkeypatch, target, model):
    """``iiae retrieve`` with --out drawn among and around its inputs: status 0 or 2; the query, the gallery and
    the models never change; a refused --out leaves everything as it was; an input is always refused."""
    for link, source in (("qlink.png", "q.png"), ("glink", "g")):
        if not (world / link).is_symlink():
            os.symlink(world / source, world / link)
    if not (world / "qhard.png").exists():
        os.link(world / "q.png", world / "qhard.png")
        os.mkfifo(world / "fifo.png")
        (world / "dir.png").mkdir()
    monkeypatch.setattr(own_images, "save_retrieval_panel", lambda query, results, path: atomic_write_bytes(path, b"p"))
    inputs = ["q.png", "g", "run/model", "run/config.yaml", "model", "other_run"]
    before = {key: value for key, value in snapshot(world).items() if key.startswith(tuple(inputs))}
    everything = snapshot(world)
    status = main(["retrieve", str(world / model), "--query", str(world / "q.png"), "--gallery", str(world / "g"),
                   "--out", str(world / target), "--top", "2"])  # fmt: skip
    capsys.readouterr()
    assert status in (0, 2)
    after = snapshot(world)
    assert {key: after.get(key) for key in before} == before
    if status == 2:
        assert after == everything
    resolved = (world / target).resolve()
    if resolved == (world / "q.png").resolve() or (world / "g").resolve() in resolved.parents:
        assert status == 2
    if status == 0:  # then the world as it was, for the next example and the other tests
        assert (world / target).read_bytes() == b"p"
        old = everything.get(target)
        (world / target).write_bytes(old) if isinstance(old, bytes) else (world / target).unlink()


# ------------------------------------------------------------------------------------------- status lines
class _ClosedPipe(io.TextIOBase):
    """A stdout whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_a_closed_stdout_neither_stops_the_work_nor_changes_the_status(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())  # the table is printed before metrics.json is written
    status = main(["evaluate", str(world / "run"), "--no-measures", "--json", str(tmp_path / "m.json")])
    monkeypatch.undo()
    assert status == 0 and capsys.readouterr().err == "" and (tmp_path / "m.json").is_file()


def test_a_pipe_closed_by_its_reader_exits_quietly_with_status_0(tmp_path):
    out = tmp_path / "pairs"
    process = subprocess.Popen([sys.executable, "-m", "iiae.cli.main", "data", "export", "mnist-cdcb", "--limit", "1",
                                "--size", "4", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=ONE_THREAD)  # fmt: skip
    process.stdout.close()  # `iiae ... | true`: the reader is gone before the command prints
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0 and stderr == b"", stderr
    assert sorted(path.name for path in out.iterdir()) == ["test", "train"]


def test_file_names_that_are_not_utf8_are_printed_escaped(world, tmp_path, capsys):
    name = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name: Python holds the byte as a surrogate
    (tmp_path / name).write_bytes((world / "q.png").read_bytes())
    assert main(["translate", str(world / "model"), "--direction", "x-to-y", "--out", str(tmp_path / "out"),
                 "--images", str(tmp_path / name)]) == 0  # fmt: skip
    printed = capsys.readouterr().out  # pytest's stdout is strict UTF-8, like a UTF-8 terminal's
    assert "caf\\xe9_to_y.png" in printed and (tmp_path / "out" / os.fsdecode(b"caf\xe9_to_y.png")).is_file()
    error = expect_error(capsys, ["retrieve", str(world / "model"), "--query", str(tmp_path / name), "--gallery",
                                  str(world / "g"), "--out", str(tmp_path / name)], "one of the command's inputs")
    assert "caf\\xe9.png" in error


def test_text_that_is_not_utf8_is_the_users_error_not_a_bug(monkeypatch, capsys):
    from iiae.cli import data

    def read_latin1(args):  # noqa: ANN001
        return b"caf\xe9".decode("utf-8")

    monkeypatch.setattr(data, "_command_export", read_latin1)
    expect_error(capsys, ["data", "export", "mnist-cdcb", "--out", "x"], "not valid UTF-8", "b'\\xe9'")


def test_sigterm_outside_training_unwinds_and_leaves_no_staged_output(tmp_path, monkeypatch, capsys):
    """SIGTERM while a command writes a staged folder (data export, export, figures): status 143, one line, the
    staging folder removed and the target never created; the process's own SIGTERM handler is restored."""
    import signal
    import time

    import iiae.cli.main as cli
    from iiae.atomic import atomic_folder

    def command(args):
        with atomic_folder(tmp_path / "out") as staging:
            (staging / "half.png").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        return 0

    monkeypatch.setattr(cli, "_command_export", command)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["export", "run", "--out", "m"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "iiae: stopped by SIGTERM\n"
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) == before


def test_the_cache_folder_is_never_inside_what_the_command_reads(tmp_path, monkeypatch):
    """$IIAE_CACHE_DIR inside the data folder of the running command (evaluate's digit classifier, zs-sbir's
    features) is refused by the cache's own check, which sees the command's inputs (iiae.outputs)."""
    from iiae.cache import cache_root
    from iiae.outputs import add_command_inputs, clear_command_inputs

    data = tmp_path / "idx"
    data.mkdir()
    monkeypatch.setenv("IIAE_CACHE_DIR", str(data / "cache"))
    clear_command_inputs()
    add_command_inputs([data, None])
    try:
        with pytest.raises(OutputError, match=r"\$IIAE_CACHE_DIR .* is inside the input folder"):
            cache_root()
    finally:
        clear_command_inputs()
    assert cache_root() == data / "cache"
