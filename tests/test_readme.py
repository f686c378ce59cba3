"""The Python example of README.md runs as written (on a tiny saved model), so the documentation cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from iiae import IIAE, ModelConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    example = blocks[0]
    assert '"runs/mine/model"' in example
    IIAE(ModelConfig()).save_pretrained(tmp_path / "model")
    namespace = {"x": torch.rand(2, 3, 32, 32) * 2 - 1, "y": torch.rand(2, 3, 32, 32) * 2 - 1}
    exec(example.replace('"runs/mine/model"', repr(str(tmp_path / "model"))), namespace)  # noqa: S102
    assert namespace["shared"].shape == (2, 16, 4, 4)
    assert namespace["y_fake"].shape == (2, 3, 32, 32) and namespace["y_like"].shape == (2, 3, 32, 32)
