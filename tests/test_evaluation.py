"""Retrieval: chunked ranking equals a plain per-query loop (ties included); metric definitions."""

from __future__ import annotations

import pytest
import torch

from iiae import IIAE, ModelConfig
from iiae.evaluation import encode_pairs, format_retrieval_table, partner_ranks, retrieval_metrics, retrieval_table


def naive_ranks(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The official script's loop: for each query, distances to all candidates; rank of its partner."""
    ranks = []
    for index, query in enumerate(queries.double()):
        distances = ((candidates.double() - query) ** 2).sum(dim=1)
        order = sorted(range(len(candidates)), key=lambda j: (distances[j].item(), j))  # ties: lower index first
        ranks.append(order.index(index))
    return torch.tensor(ranks)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_ranks_equal_the_loop(chunk_size):
    generator = torch.Generator().manual_seed(0)
    # small integer codes make many exact ties; N = 53 is not a multiple of the chunk sizes
    queries = torch.randint(0, 3, (53, 4), generator=generator).float()
    candidates = torch.randint(0, 3, (53, 4), generator=generator).float()
    assert torch.equal(partner_ranks(queries, candidates, chunk_size), naive_ranks(queries, candidates))


def test_ranks_on_real_valued_codes():
    generator = torch.Generator().manual_seed(1)
    queries, candidates = torch.randn(40, 16, generator=generator), torch.randn(40, 16, generator=generator)
    assert torch.equal(partner_ranks(queries, candidates, 16), naive_ranks(queries, candidates))
    assert partner_ranks(candidates, candidates).eq(0).all()  # identical codes: everyone finds their partner


def test_tie_order_is_lower_index_first():
    codes = torch.zeros(3, 2)  # all candidates at distance 0: query i ranks its partner at position i
    assert partner_ranks(codes, codes).tolist() == [0, 1, 2]


def test_metrics_by_hand():
    metrics = retrieval_metrics(torch.tensor([0, 0, 3, 9, 20]))
    assert metrics["top1"] == pytest.approx(40.0)
    assert metrics["hits"] == 2
    assert metrics["recall_at_5"] == pytest.approx(60.0)
    assert metrics["recall_at_10"] == pytest.approx(80.0)
    assert metrics["median_rank"] == 4.0  # ranks 1, 1, 4, 10, 21
    assert metrics["count"] == 5


def test_encode_pairs_in_batches_matches_one_batch_and_restores_training_mode():
    torch.manual_seed(0)
    model = IIAE(ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8], decoder_widths=[8]))
    x, y = torch.rand(10, 3, 16, 16), torch.rand(10, 3, 16, 16)
    whole, batched = encode_pairs(model, x, y, batch_size=10), encode_pairs(model, x, y, batch_size=3)
    assert model.training
    assert torch.allclose(whole.shared_x, batched.shared_x, atol=1e-6)
    assert whole.shared_x.shape == (10, model.config.shared_dim)
    assert whole.exclusive_y.shape == (10, model.config.exclusive_dim)
    table = retrieval_table(whole)
    assert set(table) == {"shared_x_to_y", "shared_y_to_x", "exclusive_x_to_y", "exclusive_y_to_x"}
    assert "shared_x_to_y" in format_retrieval_table(table)
