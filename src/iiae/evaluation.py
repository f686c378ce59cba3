"""Cross-domain retrieval by shared and exclusive codes (the paper's Table 2 protocol).

Every test pair is encoded with posterior means (batch norm in inference mode, no sampling). For each query of
one domain, all test items of the other domain are ranked by squared L2 distance; the hit is the query's own
partner (same index). Good disentanglement: shared retrieval near 100 %, exclusive retrieval near chance (1/N).

Ties: a candidate at exactly the partner's distance ranks before the partner when its index is smaller, which
is the order ``argmin`` over candidates in index order gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iiae.model import IIAE

DIRECTIONS = ("shared_x_to_y", "shared_y_to_x", "exclusive_x_to_y", "exclusive_y_to_x")


@dataclass
class PairCodes:
    """Flattened posterior-mean codes of N test pairs, row i of each belonging to pair i."""

    shared_x: torch.Tensor  # r^x(z^s | x) means, [N, D_s]
    shared_y: torch.Tensor  # r^y(z^s | y) means, [N, D_s]
    exclusive_x: torch.Tensor  # q(z^x | x) means, [N, D_x]
    exclusive_y: torch.Tensor  # q(z^y | y) means, [N, D_y]


@torch.no_grad()
def encode_pairs(model: IIAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> PairCodes:
    """Encode paired images in batches with the model in eval mode (its mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in PairCodes.__dataclass_fields__}
    try:
        for start in range(0, len(x), batch_size):
            x_batch = x[start : start + batch_size].to(device)
            y_batch = y[start : start + batch_size].to(device)
            parts["shared_x"].append(model.encode_shared_x(x_batch).flatten(1).cpu())
            parts["shared_y"].append(model.encode_shared_y(y_batch).flatten(1).cpu())
            parts["exclusive_x"].append(model.encode_exclusive_x(x_batch).cpu())
            parts["exclusive_y"].append(model.encode_exclusive_y(y_batch).cpu())
    finally:
        model.train(was_training)
    return PairCodes(**{name: torch.cat(chunks) for name, chunks in parts.items()})


def partner_ranks(queries: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Rank (0 = first) of candidate i among all candidates for query i, by squared L2 distance.

    Distances are computed in float64 as |q|^2 - 2 q.c + |c|^2, ``chunk_size`` queries at a time, so memory
    stays at chunk_size x N whatever the code dimension.
    """
    if queries.shape != candidates.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must be paired")
    queries, candidates = queries.double().flatten(1), candidates.double().flatten(1)
    candidate_norms = candidates.square().sum(dim=1)
    indices = torch.arange(len(candidates))
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in range(0, len(queries), chunk_size):
        chunk = queries[start : start + chunk_size]
        distances = chunk.square().sum(dim=1, keepdim=True) - 2.0 * chunk @ candidates.T + candidate_norms
        partner = torch.arange(start, start + len(chunk))
        partner_distance = distances[torch.arange(len(chunk)), partner][:, None]
        closer = distances < partner_distance
        tied_before = (distances == partner_distance) & (indices[None, :] < partner[:, None])
        ranks[start : start + len(chunk)] = (closer | tied_before).sum(dim=1)
    return ranks


def retrieval_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy (%), hit count, recall@5 and @10 (%), median rank (1 = first) from partner ranks."""
    return {
        "top1": 100.0 * (ranks == 0).double().mean().item(),
        "hits": int((ranks == 0).sum().item()),
        "recall_at_5": 100.0 * (ranks < 5).double().mean().item(),
        "recall_at_10": 100.0 * (ranks < 10).double().mean().item(),
        "median_rank": float((ranks + 1).double().median().item()),
        "count": len(ranks),
    }


def retrieval_table(codes: PairCodes) -> dict[str, dict[str, float]]:
    """Metrics for shared X->Y, shared Y->X, exclusive X->Y and exclusive Y->X retrieval."""
    return {
        "shared_x_to_y": retrieval_metrics(partner_ranks(codes.shared_x, codes.shared_y)),
        "shared_y_to_x": retrieval_metrics(partner_ranks(codes.shared_y, codes.shared_x)),
        "exclusive_x_to_y": retrieval_metrics(partner_ranks(codes.exclusive_x, codes.exclusive_y)),
        "exclusive_y_to_x": retrieval_metrics(partner_ranks(codes.exclusive_y, codes.exclusive_x)),
    }


def evaluate_retrieval(model: IIAE, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> dict:
    """Encode the test pairs and return the retrieval table (see :func:`retrieval_table`)."""
    return retrieval_table(encode_pairs(model, x, y, batch_size))


def format_retrieval_table(table: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table of the retrieval metrics, one row per direction."""
    lines = [f"{'direction':<18}{'top-1 %':>9}{'hits':>13}{'R@5 %':>8}{'R@10 %':>8}{'median':>8}"]
    for direction in DIRECTIONS:
        row = table[direction]
        hits = f"{row['hits']}/{row['count']}"
        lines.append(
            f"{direction:<18}{row['top1']:>9.2f}{hits:>13}"
            f"{row['recall_at_5']:>8.2f}{row['recall_at_10']:>8.2f}{row['median_rank']:>8.1f}"
        )
    return "\n".join(lines)
