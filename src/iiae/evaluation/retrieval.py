"""Cross-domain retrieval by shared and exclusive codes (the paper's Table 2 protocol).

Every test pair is encoded with posterior means (batch norm in inference mode, no sampling). For each query of
one domain, all test items of the other domain are ranked by squared L2 distance; the hit is the query's own
partner (same index). Good disentanglement: shared retrieval near 100 %, exclusive retrieval near chance (1/N).

:class:`FileRetrieval` is the outcome of ranking a folder of image files for one query file (``iiae retrieve``,
``iiae zs-sbir retrieve``).

Ties: a candidate at exactly the partner's distance ranks before the partner when its index is smaller, which
is the order ``argmin`` over candidates in index order gives. :func:`partner_ranks` (fast, chunked) returns
exactly what the per-query loop :func:`reference_partner_ranks` returns, last-bit near-ties included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from iiae.core.model import IIAE

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


def squared_distances(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances of matching rows, in the reference arithmetic of the retrieval loop.

    Computed in float64: differences ``candidate - query``, their squares, then the sum over dimensions by pairwise
    halving (zero-padded to a power of two). Only elementwise operations are used, so the value for a row does
    not depend on which other rows share the batch nor on the thread count: the per-query loop and the exact
    re-check inside :func:`partner_ranks` produce bit-identical numbers. ``queries`` broadcasts against
    ``candidates`` ([D] against [N, D] is one query against N candidates).
    """
    differences = candidates.double() - queries.double()
    terms = differences * differences
    width = terms.shape[-1]
    padded = 1 << max(width - 1, 0).bit_length()
    if padded != width:
        terms = torch.nn.functional.pad(terms, (0, padded - width))  # + 0.0 leaves a sum of squares unchanged
    while terms.shape[-1] > 1:
        half = terms.shape[-1] // 2
        terms = terms[..., :half] + terms[..., half:]
    return terms[..., 0]


def reference_partner_ranks(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The plain per-query loop that :func:`partner_ranks` equals exactly (slow: N x N x D work, N x D memory).

    For query i: distances to every candidate, then the number of candidates strictly closer than candidate i
    plus those at exactly its distance with a smaller index (argmin's order over candidates in index order).
    """
    queries, candidates = queries.flatten(1), candidates.flatten(1)
    ranks = torch.empty(len(queries), dtype=torch.long)
    for index, query in enumerate(queries):
        distances = squared_distances(query, candidates)
        partner = distances[index]
        ranks[index] = int((distances < partner).sum()) + int((distances[:index] == partner).sum())
    return ranks


def rank_by_distance(query: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidate indices, nearest first; their squared L2 distances) for one query code against ``candidates``
    ([D] or [1, D] against [N, D]; codes are flattened), in the arithmetic and order of the evaluation: the
    position of candidate i for query i is exactly its :func:`reference_partner_ranks` rank (ties: lower index
    first)."""
    distances = squared_distances(query.flatten(), candidates.flatten(1))
    order = torch.sort(distances, stable=True).indices
    return order, distances[order]


def _expansion_error_bound(dimensions: int) -> float:
    """Factor k with |expanded - reference| <= k (|q'| + |c'|)^2 for centred codes q', c' (see partner_ranks).

    Standard floating-point analysis with unit roundoff u = 2^-53: a D-term dot product in any summation order
    errs by at most gamma_D |q'||c'|; the norms by gamma_D |q'|^2 and gamma_D |c'|^2; the additions of the norms
    and of the partner's distance, and the centring, add a few u (|q'| + |c'|)^2; the reference's pairwise sum
    errs by at most gamma_(log2 D + 3) times the distance, itself <= (|q'| + |c'|)^2 (1 + 4u). With
    gamma_n = n u / (1 - n u) the total stays below (D + log2 D + 12) u (|q'| + |c'|)^2, and the factor
    2 (D + log2 D + 8) u also covers the rounding of the norms and of the bound itself.
    """
    depth = max(dimensions - 1, 0).bit_length()
    return 2.0 * (dimensions + depth + 8) * 2.0**-53


def partner_ranks(queries: torch.Tensor, candidates: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Rank (0 = first) of candidate i among all candidates for query i, by squared L2 distance.

    The result equals :func:`reference_partner_ranks` (the per-query loop) exactly, ties included: a candidate
    at exactly the partner's distance ranks before it when its index is smaller. ``chunk_size`` queries at a
    time, both code sets centred on the candidates' mean, are compared to all candidates with the fast expansion
    |q|^2 - 2 q.c + |c|^2 (one float64 matrix product); a candidate whose expanded distance lies within the
    rigorous error bound of :func:`_expansion_error_bound` (taken with the largest candidate norm, one bound per
    query) of the partner's reference distance is re-checked with :func:`squared_distances`, the loop's own
    arithmetic. Outside the bound the expansion decides correctly, so the ranks are identical. Extra memory: a
    float64 copy of the codes plus O(chunk_size x (N + D)).
    """
    if queries.ndim < 2 or queries.shape != candidates.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and candidates {tuple(candidates.shape)} must be paired")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    queries, candidates = queries.double().flatten(1), candidates.double().flatten(1)
    count, dimensions = candidates.shape
    if count == 0:
        return torch.empty(0, dtype=torch.long)
    centre = candidates.mean(dim=0)
    centred_queries, centred_candidates = queries - centre, candidates - centre
    query_norms_sq = centred_queries.square().sum(dim=1)
    candidate_norms_sq = centred_candidates.square().sum(dim=1)
    if not (torch.isfinite(query_norms_sq).all() and torch.isfinite(candidate_norms_sq).all()):  # NaN and inf propagate
        raise ValueError("codes contain NaN or infinite (or overflowing) values; retrieval needs finite codes")
    largest_candidate_norm = candidate_norms_sq.max().sqrt()
    # per query: bound * (|q'| + max |c'|)^2 >= the error bound of every candidate's expanded distance
    tolerances = _expansion_error_bound(dimensions) * (query_norms_sq.sqrt() + largest_candidate_norm).square()
    recheck_pairs = max(chunk_size, chunk_size * count // max(dimensions, 1))  # re-check memory ~ the chunk's
    ranks = torch.empty(count, dtype=torch.long)
    # two buffers reused by every chunk (fresh chunk-sized allocations would page-fault on every chunk)
    gap_buffer = torch.empty(min(chunk_size, count), count, dtype=torch.float64)
    flag_buffer = torch.empty(min(chunk_size, count), count, dtype=torch.bool)
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        partner = torch.arange(start, stop)
        partner_distance = squared_distances(queries[start:stop], candidates[start:stop])  # reference arithmetic
        # gap = |q'|^2 - d_partner + |c'|^2 - 2 q'.c': expanded distance minus the partner's reference distance
        gap, flags = gap_buffer[: stop - start], flag_buffer[: stop - start]
        torch.add(candidate_norms_sq[None, :], (query_norms_sq[start:stop] - partner_distance)[:, None], out=gap)
        gap.addmm_(centred_queries[start:stop], centred_candidates.T, alpha=-2.0)
        tolerance = tolerances[start:stop, None]
        torch.lt(gap, -tolerance, out=flags)  # certainly closer than the partner
        ranks[start:stop] = flags.view(torch.uint8).sum(dim=1, dtype=torch.int32)
        torch.le(gap.abs_(), tolerance, out=flags)  # too close to call: re-checked exactly
        flags[partner - start, partner] = False
        rows, columns = flags.nonzero(as_tuple=True)
        for first in range(0, len(rows), recheck_pairs):
            row, column = rows[first : first + recheck_pairs], columns[first : first + recheck_pairs]
            exact = squared_distances(queries[row + start], candidates[column])
            reference = partner_distance[row]
            before = (exact < reference) | ((exact == reference) & (column < row + start))
            ranks.index_add_(0, row + start, before.long())
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


@dataclass(frozen=True)
class Match:
    """One retrieved file: its rank (1 = nearest), its score (see :attr:`FileRetrieval.measure`) and its path."""

    rank: int
    score: float
    path: Path


@dataclass(frozen=True)
class FileRetrieval:
    """A query file's ranking of a folder of image files: the best matches, what was ranked and written."""

    query: Path
    domain: str  # of the query; the gallery holds the other domain
    measure: str  # what Match.score is: "cosine similarity" (higher is nearer) or "squared L2 distance" (lower)
    matches: list[Match]
    gallery_size: int
    cache: Path  # the cache file of the gallery's features or codes
    cached: bool  # they were read from ``cache`` (not computed)
    panel: Path | None  # the PNG panel written, if any

    def lines(self) -> list[str]:
        """One line per match: rank, score, path."""
        return [f"{match.rank:4d}  {match.score:.4f}  {one_line_path(match.path)}" for match in self.matches]

    def panel_results(self, abbreviation: str) -> list[tuple[Path, str]]:
        """(path, ``#rank <abbreviation> <score>``) of each match, the titles of the panel's images."""
        return [(match.path, f"#{match.rank} {abbreviation} {match.score:.4g}") for match in self.matches]


def one_line_path(path: Path | str) -> str:
    """``path`` on one line: a line break or other control character in a file name shown escaped (``\\n``), so
    one printed line is one match."""
    text = str(path)  # the surrogates of a name that is not UTF-8 stay: the command line prints them as \xff
    return "".join(char if char.isprintable() or "\udc80" <= char <= "\udcff" else repr(char)[1:-1] for char in text)


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
