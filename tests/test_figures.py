"""Figures: the analogy and traversal tensors decode what they claim, and every PNG has its documented pixel size."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from iiae import IIAE, ModelConfig
from iiae.evaluation.figures import (
    TRAVERSAL_VALUES,
    analogy_grid,
    panel_figure_size,
    save_figures,
    traversal_grid,
)


@pytest.fixture(scope="module")
def model() -> IIAE:
    torch.manual_seed(0)
    config = ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8], decoder_widths=[8], exclusive_dim=3)
    model = IIAE(config)
    for module in model.modules():  # non-trivial batch-norm statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _pairs(count: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.rand(2, count, 3, 16, 16, generator=generator) * 2 - 1
    return x, y


@pytest.mark.parametrize("domain", ["x", "y"])
def test_analogy_cell_is_decode_of_exclusive_j_and_shared_i(model, domain):
    content, exclusive_from = _pairs(3)[0], _pairs(4, seed=2)[1]
    grid = analogy_grid(model, content, exclusive_from, domain)
    assert grid.shape == (3, 4, 3, 16, 16) and model.training  # training mode restored
    model.eval()
    try:
        with torch.no_grad():
            for i in range(3):
                for j in range(4):
                    if domain == "x":
                        expected = model.decode_x(model.encode_exclusive_x(exclusive_from[j : j + 1]),
                                                  model.encode_shared_x(content[i : i + 1]))  # fmt: skip
                    else:
                        expected = model.decode_y(model.encode_exclusive_y(exclusive_from[j : j + 1]),
                                                  model.encode_shared_y(content[i : i + 1]))  # fmt: skip
                    torch.testing.assert_close(grid[i, j], expected[0], atol=1e-5, rtol=1e-5)
    finally:
        model.train()


def test_traversal_changes_one_exclusive_dimension_with_the_shared_code_fixed(model):
    x, _ = _pairs(1)
    grid = traversal_grid(model, x[0], "x")
    assert grid.shape == (3, len(TRAVERSAL_VALUES), 3, 16, 16)
    model.eval()
    try:
        with torch.no_grad():
            shared, exclusive = model.encode_shared_x(x), model.encode_exclusive_x(x)
            for k in range(3):
                for v, value in enumerate(TRAVERSAL_VALUES):
                    code = exclusive.clone()
                    code[0, k] = value
                    torch.testing.assert_close(grid[k, v], model.decode_x(code, shared)[0], atol=1e-5, rtol=1e-5)
    finally:
        model.train()


def test_every_figure_has_its_documented_pixel_size(model, tmp_path):
    x, y = _pairs(7)
    paths = save_figures(model, x, y, tmp_path / "figures")
    assert [path.name for path in paths] == ["translation.png", "analogy.png", "traversal.png"]
    sizes = {path.name: Image.open(path).size for path in paths}
    # translation: 7 columns; rows x, 3 prior samples, paired code, then the same for y: 10 rows
    assert sizes["translation.png"] == (100 * 7 + 160, 100 * 10 + 40)
    # analogy: two panels of (6 + 1) x (6 + 1) cells of 60 px, margins of 40 px, title band of 50 px
    assert sizes["analogy.png"] == (2 * 7 * 60 + 3 * 40, 7 * 60 + 50 + 40) == panel_figure_size([(7, 7), (7, 7)])
    # traversal: two panels of exclusive_dim (3) rows x (input + 9 values) columns
    assert sizes["traversal.png"] == (2 * 10 * 60 + 3 * 40, 3 * 60 + 50 + 40)


def test_unknown_domain_is_refused(model):
    with pytest.raises(ValueError, match="domain must be"):
        analogy_grid(model, torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), "z")
