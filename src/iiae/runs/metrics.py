"""The schema of a run folder's ``metrics.json``, in one place: what the run pipeline, the report, the sweeps,
``iiae evaluate`` and the zero-shot runs write and read. Typed dictionaries (the file is plain JSON); the tests
check that real runs write no key outside them.
"""

from __future__ import annotations

from typing import Any, TypedDict


class _EarlyStoppingRequired(TypedDict):
    early_stopped: bool  # the run stopped before train.steps because validation stopped improving
    stopped_at_step: int | None  # the step it stopped at (None: it did not stop early)
    patience: int  # train.early_stop_patience (0: off)
    min_delta: float  # train.early_stop_min_delta
    rule: str  # the rule in words
    evaluations_without_improvement: int  # at the end of training
    last_improvement_step: int | None  # the last evaluation that improved the score (None: none qualified)


class EarlyStoppingFacts(_EarlyStoppingRequired, total=False):
    """``metrics.json``'s ``early_stopping`` (:func:`iiae.engine.selection.early_stopping_facts`)."""

    reason: str  # why it stopped, when it did


class TrainingFacts(TypedDict):
    """What the engine reports about a training (:func:`iiae.runs.runner.execute`)."""

    training_seconds: float
    steps: int  # optimiser steps done (the global step; below train.steps when the run stopped early)
    selection: dict[str, Any]  # which model was evaluated and why (iiae.engine.selection.selected_model)
    early_stopping: EarlyStoppingFacts
    parameters: int
    torch: str
    threads: int
    cpu_count: int | None
    processes: int  # devices x nodes


class Evaluated(TypedDict):
    """What ``iiae evaluate`` records about its evaluation (:func:`iiae.runs.trained.write_metrics`)."""

    model: str
    step: int | None
    test_pairs: int
    data_source: str
    date: str


class CodeSpreads(TypedDict):
    """One code under the colour intervention (:func:`iiae.evaluation.intervention.intervention_spreads`)."""

    colour_spread: float  # mean over digits of the summed variance across colourings
    digit_spread: float  # mean over colourings of the summed variance across digits
    ratio: float | None  # colour_spread / digit_spread; None when digit_spread is 0
    colour: str  # the factor varied: background_colour_x or digit_colour_y


class ColourIntervention(TypedDict):
    """``colour_intervention`` of metrics.json (:func:`iiae.evaluation.intervention.colour_intervention`)."""

    digits: int  # M test digits
    colourings: int  # K colourings of every digit
    seed: int
    shared_x: CodeSpreads
    shared_y: CodeSpreads
    exclusive_x: CodeSpreads
    exclusive_y: CodeSpreads


class ImageRunMetrics(TrainingFacts, total=False):
    """metrics.json of the main job and the other paired-image runs."""

    experiment: str
    run_dir: str
    retrieval: dict[str, dict[str, float]]  # direction -> top1, hits, recall_at_5, recall_at_10, median_rank, count
    shift_suite: dict[str, dict[str, float]]  # iiae evaluate --shift-suite: test set -> shared top-1 both ways, count
    validation_shift_suite: dict[str, dict[str, float]]  # the same on validation digits (--shift-split validation)
    paper: dict[str, float]
    train_pairs: int
    validation_pairs: int
    test_pairs: int
    data_source: str
    # MNIST-CDCB-like pairs only (iiae.evaluation.measures.MEASURE_KEYS)
    translation_fidelity: dict[str, Any]
    leakage: dict[str, Any]
    colour_intervention: ColourIntervention
    measure_seconds: dict[str, float]
    evaluated: Evaluated  # written by iiae evaluate into an existing metrics.json


class SupervisedFacts(TypedDict):
    """What the supervised zero-shot baseline reports about its training (no engine)."""

    training_seconds: float
    steps: int


class ZeroShotRunMetrics(TrainingFacts, total=False):
    """metrics.json of ``iiae zs-sbir train`` (IIAE; the supervised baseline writes the training facts of
    :class:`SupervisedFacts` only)."""

    experiment: str
    method: str  # iiae or supervised
    # "lambda": the run's loss.lambda_ (a Python keyword, so not declarable here; see ZERO_SHOT_EXTRA_KEYS)
    seed: int
    retrieval: dict[str, float]  # map_all, precision_at_K, map_at_K, queries, gallery
    paper: dict[str, dict[str, float]]
    seen_classes: int
    unseen_classes: list[str]
    source: str
    train_sketches: int
    train_photos: int
    test_sketches: int
    test_photos: int
    feature_dim: int
    feature_stage: dict[str, Any]
    feature_extractor: str | None
    run_dir: str
    figure: str | None


ZERO_SHOT_EXTRA_KEYS = frozenset({"lambda"})


def keys_of(schema: type) -> frozenset[str]:
    """Every key a metrics.json of ``schema`` may hold."""
    keys = {key for klass in schema.__mro__ for key in getattr(klass, "__annotations__", {})}
    return frozenset(keys | (ZERO_SHOT_EXTRA_KEYS if schema is ZeroShotRunMetrics else set()))
