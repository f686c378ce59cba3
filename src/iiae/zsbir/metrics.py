"""Retrieval measures of zero-shot sketch-based image retrieval: mAP@all, P@K and mAP@K by cosine similarity.

For each query (a sketch code) the whole gallery (photo codes) is ranked by cosine similarity, highest first; a
photo is relevant when it has the query's class. Definitions (rel_i = 1 when the photo at rank i is relevant,
P@i = (rel_1 + ... + rel_i) / i, R = number of relevant photos in the gallery):

* AP@all = (1 / R) * sum_i rel_i * P@i; mAP@all is its mean over queries.
* P@K = (rel_1 + ... + rel_K') / K' with K' = min(K, gallery size).
* AP@K = sum_{i <= K'} rel_i * P@i / (rel_1 + ... + rel_K') (the convention of Yelamarthi et al. and later
  ZS-SBIR code: normalised by the relevant photos found in the top K, not by R); mAP@K is its mean.
* A query with nothing relevant (in the gallery, or in the top K for AP@K) scores 0 and still counts.
* Ties: similarities are rounded to 10 decimals (so that ties of exact arithmetic survive rounding errors),
  and photos with equal rounded similarity are ranked in gallery order (a stable sort): results are deterministic.

Queries are processed in chunks so that tens of thousands of queries against tens of thousands of photos fit in
memory and run in seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

TIE_DECIMALS = 10  # similarities equal to this many decimals are ties
DEFAULT_CHUNK_ELEMENTS = 1 << 23  # similarities held at once (query chunk x gallery), ~32 MB of float32


def _as_tensor(values) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def _label_ids(query_labels, gallery_labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer ids for (possibly string) labels, shared between queries and gallery."""
    query, gallery = np.asarray(query_labels), np.asarray(gallery_labels)
    _, inverse = np.unique(np.concatenate([query, gallery]), return_inverse=True)
    return torch.as_tensor(inverse[: len(query)]), torch.as_tensor(inverse[len(query):])


def ranked_relevance(similarity: torch.Tensor, query_ids: torch.Tensor, gallery_ids: torch.Tensor) -> torch.Tensor:
    """rel[q, i] = 1 when the photo ranked i-th for query q is relevant (stable descending sort: ties by index)."""
    order = torch.sort(similarity.round(decimals=TIE_DECIMALS), dim=1, descending=True, stable=True).indices
    return (gallery_ids[order] == query_ids[:, None]).to(torch.float64)


def retrieval_metrics(
    query_codes,
    query_labels,
    gallery_codes,
    gallery_labels,
    ks: tuple[int, ...] | list[int] = (100, 200),
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> dict[str, float]:
    """``map_all``, ``precision_at_<K>`` and ``map_at_<K>`` for each K, plus ``queries`` and ``gallery``."""
    queries = torch.nn.functional.normalize(_as_tensor(query_codes).double(), dim=1)
    gallery = torch.nn.functional.normalize(_as_tensor(gallery_codes).double(), dim=1)
    query_ids, gallery_ids = _label_ids(query_labels, gallery_labels)
    if len(queries) != len(query_ids) or len(gallery) != len(gallery_ids):
        raise ValueError("codes and labels must have the same number of rows")
    size = len(gallery)
    relevant_total = torch.bincount(gallery_ids, minlength=int(max(query_ids.max(), gallery_ids.max())) + 1)
    ranks = torch.arange(1, size + 1, dtype=torch.float64)
    sums = {"map_all": 0.0, **{f"precision_at_{k}": 0.0 for k in ks}, **{f"map_at_{k}": 0.0 for k in ks}}
    step = max(1, chunk_elements // max(size, 1))
    for start in range(0, len(queries), step):
        ids = query_ids[start : start + step]
        rel = ranked_relevance(queries[start : start + step] @ gallery.T, ids, gallery_ids)
        hits = rel.cumsum(dim=1)
        precision_terms = rel * hits / ranks  # rel_i * P@i
        relevant = relevant_total[ids].to(torch.float64)
        sums["map_all"] += (precision_terms.sum(dim=1) / relevant.clamp(min=1)).sum().item()
        for k in ks:
            top = min(k, size)
            sums[f"precision_at_{k}"] += (hits[:, top - 1] / top).sum().item()
            found = hits[:, top - 1]
            sums[f"map_at_{k}"] += (precision_terms[:, :top].sum(dim=1) / found.clamp(min=1)).sum().item()
    count = max(len(queries), 1)
    result = {name: value / count for name, value in sums.items()}
    result.update(queries=len(queries), gallery=size)
    return result


def top_k_indices(query_codes, gallery_codes, k: int = 5) -> np.ndarray:
    """Gallery indices of the ``k`` most cosine-similar photos of each query (ties in gallery order)."""
    queries = torch.nn.functional.normalize(_as_tensor(query_codes).double(), dim=1)
    gallery = torch.nn.functional.normalize(_as_tensor(gallery_codes).double(), dim=1)
    similarity = (queries @ gallery.T).round(decimals=TIE_DECIMALS)
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    return order[:, :k].numpy()
