"""Packaging facts that drift silently otherwise: the version in one place, the lowest versions CI installs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import iiae
from iiae.version import __version__

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_defined_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "iiae.version.__version__"}
    assert iiae.__version__ == __version__ and re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert (ROOT / "src" / "iiae" / "py.typed").is_file() and (ROOT / "LICENSE").is_file()


def test_ci_installs_the_lower_bound_of_every_dependency():
    bounds = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, lowest = re.match(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement).groups()
        bounds[name.lower()] = lowest
    pins = {}
    for line in (ROOT / ".ci" / "lowest-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    assert set(pins) == set(bounds), set(pins) ^ set(bounds)
    for name, lowest in bounds.items():
        if name != "torch":  # the machines' CPU wheel, inside the allowed range (see the file's comment)
            assert _version(pins[name]) == _version(lowest), (name, pins[name], lowest)


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(part) for part in text.split(".")] + [0, 0, 0]
    return parts[0], parts[1], parts[2]
