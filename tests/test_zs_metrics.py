"""ZS-SBIR measures: hand-computed rankings (with ties), a reference loop, chunking, empty relevance."""

import numpy as np
import pytest

from iiae.zsbir.metrics import retrieval_metrics, top_k_indices

QUERY = np.array([[1.0, 0.0]])


def test_hand_computed_ranking_with_a_tie_broken_by_gallery_order():
    # cosine to the query: g0 = 0 (relevant), g1 = 1 (wrong), g2 = 0.707 (relevant), g3 = 1 (relevant, tied with g1)
    gallery = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    labels = ["a", "b", "a", "a"]
    # ranking g1 (tie: index 1 before 3), g3, g2, g0 -> relevance 0 1 1 1; R = 3
    result = retrieval_metrics(QUERY, ["a"], gallery, labels, ks=(2, 10))
    assert result["map_all"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert result["precision_at_2"] == pytest.approx(1 / 2)
    assert result["map_at_2"] == pytest.approx(1 / 2)  # one relevant in the top 2, found at rank 2
    assert result["precision_at_10"] == pytest.approx(3 / 4)  # K larger than the gallery: divide by its size
    assert result["map_at_10"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3)
    assert top_k_indices(QUERY, gallery, k=3).tolist() == [[1, 3, 2]]

    # swap the tied photos: the relevant one now comes first
    swapped = gallery[[0, 3, 2, 1]]
    result = retrieval_metrics(QUERY, ["a"], swapped, ["a", "a", "a", "b"], ks=(1,))  # relevance 1 0 1 1
    assert result["map_all"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert result["precision_at_1"] == pytest.approx(1.0)


def test_query_without_relevant_photo_scores_zero_and_counts():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    result = retrieval_metrics(np.array([[1.0, 0.0], [1.0, 0.0]]), ["a", "z"], gallery, ["a", "b"], ks=(1,))
    assert result["map_all"] == pytest.approx(0.5)  # query "a": AP 1; query "z": AP 0
    assert result["precision_at_1"] == pytest.approx(0.5)
    assert result["map_at_1"] == pytest.approx(0.5)
    assert result["queries"] == 2 and result["gallery"] == 2


def reference(queries, query_labels, gallery, gallery_labels, k):
    """Plain loop over the definitions in iiae.zsbir.metrics."""
    aps, precisions, aps_k = [], [], []
    norm_g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    for q, label in zip(queries, query_labels):
        sims = np.round(norm_g @ (q / np.linalg.norm(q)), 10)
        order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))
        rel = [gallery_labels[i] == label for i in order]
        hits, total, terms = 0, sum(rel), []
        for rank, r in enumerate(rel, start=1):
            hits += r
            terms.append(hits / rank if r else 0.0)
        aps.append(sum(terms) / total if total else 0.0)
        top = min(k, len(rel))
        found = sum(rel[:top])
        precisions.append(found / top)
        aps_k.append(sum(terms[:top]) / found if found else 0.0)
    return np.mean(aps), np.mean(precisions), np.mean(aps_k)


@pytest.mark.parametrize("chunk_elements", [7, 1 << 20])
def test_against_a_reference_loop_with_many_ties(chunk_elements):
    rng = np.random.default_rng(0)
    queries = rng.integers(-2, 3, size=(40, 3)).astype(float)  # small integers: many exact ties
    queries[np.abs(queries).sum(1) == 0] = 1.0
    gallery = rng.integers(-2, 3, size=(60, 3)).astype(float)
    gallery[np.abs(gallery).sum(1) == 0] = 1.0
    query_labels = rng.integers(0, 4, 40)
    gallery_labels = rng.integers(0, 5, 60)
    result = retrieval_metrics(queries, query_labels, gallery, gallery_labels, ks=(7,), chunk_elements=chunk_elements)
    expected = reference(queries, query_labels, gallery, gallery_labels, 7)
    assert result["map_all"] == pytest.approx(expected[0], abs=1e-12)
    assert result["precision_at_7"] == pytest.approx(expected[1], abs=1e-12)
    assert result["map_at_7"] == pytest.approx(expected[2], abs=1e-12)
