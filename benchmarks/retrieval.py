"""Benchmark: vectorised cross-domain retrieval against the official script's per-query loop.

    python benchmarks/retrieval.py                      # N = 10,000, D = 8,192 and 64
    python benchmarks/retrieval.py --n 2000 --dims 256 --loop-seconds 5

Both methods see the same random codes (float32, standard normal; candidates = queries + noise, so that the
shared-code case of a partner close to its query is what is measured). The loop is the official evaluation's:
for each query, repeat it N times, subtract the candidates, square, sum over dimensions, argmin (numpy, in the
codes' float32). It runs for at most ``--loop-seconds`` per dimension, on the first queries, and its time is
extrapolated linearly to all N queries (every query costs the same N x D work). The benchmark also checks that
the two agree on every timed query's top-1 hit. For scale, it also times the float64 matrix product alone (the
floor of the vectorised method: N x N x D multiply-adds).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import numpy as np
import torch

from iiae.evaluation.retrieval import partner_ranks


def official_loop(queries: np.ndarray, candidates: np.ndarray, seconds: float) -> tuple[np.ndarray, float]:
    """Nearest candidate of the first queries, one at a time, until ``seconds`` pass; returns (argmins, s/query)."""
    count = len(candidates)
    nearest: list[int] = []
    started = time.perf_counter()
    for query in queries:
        repeated = np.tile(query, (count, 1))
        distances = np.sum(np.square(repeated - candidates), axis=1)
        nearest.append(int(np.argmin(distances)))
        if time.perf_counter() - started > seconds:
            break
    elapsed = time.perf_counter() - started
    return np.asarray(nearest), elapsed / len(nearest)


def run(count: int, dimensions: int, loop_seconds: float, chunk_size: int, seed: int) -> dict[str, float]:
    """Time both methods on one set of codes and check that their top-1 hits agree."""
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(count, dimensions, generator=generator)
    candidates = queries + torch.randn(count, dimensions, generator=generator)
    started = time.perf_counter()
    ranks = partner_ranks(queries, candidates, chunk_size)
    vectorised = time.perf_counter() - started
    started = time.perf_counter()  # the floor: the float64 matrix product alone, chunk by chunk
    queries64, candidates64 = queries.double(), candidates.double()
    for start in range(0, count, chunk_size):
        queries64[start : start + chunk_size] @ candidates64.T
    product = time.perf_counter() - started
    nearest, per_query = official_loop(queries.numpy(), candidates.numpy(), loop_seconds)
    timed = len(nearest)
    agree = np.array_equal(nearest == np.arange(timed), ranks[:timed].numpy() == 0)
    return {
        "n": count,
        "d": dimensions,
        "vectorised_s": vectorised,
        "product_s": product,
        "loop_queries": timed,
        "loop_s": per_query * count,
        "ratio": per_query * count / vectorised,
        "top1": float((ranks == 0).double().mean()) * 100,
        "agree": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="queries = candidates")
    parser.add_argument("--dims", type=int, nargs="+", default=[8192, 64], help="code dimensions")
    parser.add_argument("--loop-seconds", type=float, default=20.0, help="time budget of the loop per dimension")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries per chunk of the vectorised method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {np.__version__}, {date.today()}, load average "
          f"{os.getloadavg()[0]:.1f} at start")  # fmt: skip
    print("| N | D | vectorised (s) | float64 product alone (s) | official loop (s) | loop queries timed | speed-up "
          "| top-1 agree |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for dimensions in args.dims:
        row = run(args.n, dimensions, args.loop_seconds, args.chunk_size, args.seed)
        extrapolated = "" if row["loop_queries"] == row["n"] else " (extrapolated)"
        print(f"| {row['n']:,} | {row['d']:,} | {row['vectorised_s']:.1f} | {row['product_s']:.1f} | "
              f"{row['loop_s']:,.0f}{extrapolated} | "
              f"{row['loop_queries']:,} | {row['ratio']:,.0f}x | {'yes' if row['agree'] else 'NO'} |")  # fmt: skip


if __name__ == "__main__":
    main()
