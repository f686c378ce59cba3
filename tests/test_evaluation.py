"""Retrieval: chunked ranking equals a plain per-query loop (ties included); metric definitions."""

from __future__ import annotations

import pytest
import torch

from iiae import IIAE, ModelConfig
from iiae.evaluation.retrieval import (
    encode_pairs,
    format_retrieval_table,
    partner_ranks,
    reference_partner_ranks,
    retrieval_metrics,
    retrieval_table,
    squared_distances,
)


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


@pytest.mark.parametrize("chunk_size", [1, 5, 32, 100])
def test_random_float_codes_equal_the_reference_loop(chunk_size):
    generator = torch.Generator().manual_seed(2)
    queries, candidates = torch.randn(61, 24, generator=generator), torch.randn(61, 24, generator=generator)
    candidates[10] = candidates[3]  # exact duplicates: ties broken by index
    queries[20:25] = queries[19]
    assert torch.equal(partner_ranks(queries, candidates, chunk_size), reference_partner_ranks(queries, candidates))


def _near_ties(count: int = 120, dimensions: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    """One query point, repeated; candidates = query + a signed permutation of one difference vector.

    All true distances are equal; the float64 sums differ in the last bits depending on the order of the terms,
    and the terms span four orders of magnitude around a large common offset, so |q|^2 - 2q.c + |c|^2 orders
    many of them differently from the direct differences.
    """
    generator = torch.Generator().manual_seed(3)
    query = 50.0 + 3.0 * torch.randn(dimensions, generator=generator, dtype=torch.float64)
    scales = 10.0 ** (4.0 * torch.rand(dimensions, generator=generator, dtype=torch.float64) - 2.0)
    difference = torch.randn(dimensions, generator=generator, dtype=torch.float64) * scales
    candidates = torch.empty(count, dimensions, dtype=torch.float64)
    for index in range(count):
        signs = torch.randint(0, 2, (dimensions,), generator=generator).double() * 2 - 1
        candidates[index] = query + difference[torch.randperm(dimensions, generator=generator)] * signs
    return query.expand(count, dimensions).clone(), candidates


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_adversarial_near_ties_equal_the_reference_loop(chunk_size):
    queries, candidates = _near_ties()
    distances = squared_distances(queries[0], candidates)
    assert 1 < len(torch.unique(distances)) < len(distances)  # exact ties and last-bit differences
    expanded = queries[0].square().sum() - 2.0 * candidates @ queries[0] + candidates.square().sum(dim=1)
    assert ((expanded[:, None] < expanded[None, :]) != (distances[:, None] < distances[None, :])).any()
    assert torch.equal(partner_ranks(queries, candidates, chunk_size), reference_partner_ranks(queries, candidates))


def test_squared_distances_of_a_row_do_not_depend_on_the_batch():
    generator = torch.Generator().manual_seed(4)
    queries, candidates = torch.randn(50, 300, generator=generator), torch.randn(50, 300, generator=generator)
    whole = squared_distances(queries, candidates)
    assert torch.equal(whole[7:8], squared_distances(queries[7:8], candidates[7:8]))
    assert torch.equal(whole[[3, 1]], squared_distances(queries[[3, 1]], candidates[[3, 1]]))
    assert torch.equal(squared_distances(queries[5], candidates)[5], whole[5])
    assert torch.allclose(whole, (queries.double() - candidates.double()).square().sum(dim=1), rtol=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="must be paired"):
        partner_ranks(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        partner_ranks(torch.tensor([[0.0], [float("nan")]]), torch.zeros(2, 1))


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
