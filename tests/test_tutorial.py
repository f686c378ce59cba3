"""README.md's five-minute tutorial runs as written: every command of its block, in order, in a fresh folder, only
with a smaller data set and fewer steps (the values of its own --limit and --steps flags), so it cannot drift."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from iiae.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tutorial: tests/test_tutorial.py runs this block"
SMALLER = {"--limit": "40", "--steps": "2"}  # pairs per split, training steps: the only values changed


def tutorial_commands() -> list[list[str]]:
    """The argv of each ``iiae`` command of the fenced bash block after MARKER (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "README.md has lost the tutorial's marker"
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARKER) :], flags=re.DOTALL)
    assert block is not None
    commands = [shlex.split(line, comments=True) for line in block[1].replace("\\\n", " ").splitlines()]
    commands = [command for command in commands if command]
    assert all(command[0] == "iiae" for command in commands), commands
    return [command[1:] for command in commands]


def smaller(argv: list[str]) -> list[str]:
    """``argv`` with the values of --limit and --steps replaced by SMALLER's."""
    return [SMALLER.get(argv[index - 1], value) if index else value for index, value in enumerate(argv)]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_tutorial_block_is_the_whole_workflow():
    assert [" ".join(argv[:2]) if argv[0] == "data" else argv[0] for argv in tutorial_commands()] == [
        "data export", "train", "evaluate", "retrieve", "translate", "translate"]  # fmt: skip
    assert smaller(["train", "--steps", "1500", "--out", "r"]) == ["train", "--steps", "2", "--out", "r"]


@pytest.mark.slow  # trains a run (a few seconds of steps, but a whole main job)
def test_the_tutorial_runs_and_writes_its_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IIAE_CACHE_DIR", str(tmp_path / "cache"))
    for argv in map(smaller, tutorial_commands()):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
        out = Path(option(argv, "--out")) if "--out" in argv else None
        if argv[0] == "data":
            assert len(list((out / "train" / "X").iterdir())) == 40 and (out / "test" / "Y" / "7.png").is_file()
        elif argv[0] == "train":
            assert (out / "model" / "model.safetensors").is_file() and (out / "report.md").is_file()
            assert json.loads((out / "metrics.json").read_text())["steps"] == 2
        elif argv[0] == "evaluate":
            metrics = json.loads((Path(argv[1]) / "metrics.json").read_text())
            assert metrics["evaluated"]["test_pairs"] == 40 and "shared_x_to_y" in metrics["retrieval"]
        elif argv[0] == "retrieve":
            assert out.is_file() and len(list((tmp_path / "cache" / "gallery_codes").iterdir())) == 1
            printed = capsys.readouterr().out.splitlines()
            assert sum(bool(re.match(r"\s+\d+\s+\d+\.\d{4}\s+pairs/test/Y/", line)) for line in printed) == 5
        else:
            images = argv[argv.index("--images") + 1 : argv.index("--direction")]
            assert sorted(path.name for path in out.iterdir()) == sorted(f"{Path(i).stem}_to_y.png" for i in images)
