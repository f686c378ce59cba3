"""Model selection during training, as the official code did it, on validation pairs disjoint from training.

Every ``train.select_every`` steps (and at the last step) :class:`RetrievalSelection` encodes the validation pairs
(posterior means, batch norm in inference mode) and measures the four retrieval directions of
:mod:`iiae.evaluation.retrieval`. An evaluation *qualifies* when each exclusive direction retrieves at most
``train.max_exclusive_hits`` correct partners (exclusive codes must not identify the pair beyond chance, which
finds about one per direction; None: no limit). Among
qualifying evaluations the one with the highest shared score (``train.select_metric`` of shared X->Y plus shared
Y->X; the latest on a tie: on easy data the validation score saturates, and the
later step has trained longer) is saved as ``checkpoints/best.ckpt`` with Lightning's own checkpointing; the
run's ``last.ckpt`` is kept as well. After training, :func:`selected_model` loads the best weights, or keeps the
last ones when no evaluation qualified, and says which and why.

The validation metrics go to the run's log as ``val/<direction>_<metric>`` rows.

Early stopping (``train.early_stop_patience`` = P > 0) reads the same evaluations (nothing is measured twice):
:class:`PatienceStop` counts the evaluations since the selected score last improved by more than
``train.early_stop_min_delta``; at P the callback sets ``trainer.should_stop`` (under DDP decided together by all
processes), Lightning ends the run after that step, and :class:`iiae.engine.checkpointing.RunCheckpoint` checkpoints
it. The counter is part of the callback's checkpointed state: a resumed run stops at the step an uninterrupted one
stops at, and a run resumed after its stopping step stops at once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from iiae.core.config import TrainConfig
from iiae.core.model import IIAE
from iiae.engine.checkpoint_files import SELECTION_STATE_KEY, load_checkpoint, model_state
from iiae.evaluation.retrieval import encode_pairs, retrieval_table
from iiae.run_files import BEST_CHECKPOINT

SHARED = ("shared_x_to_y", "shared_y_to_x")
EXCLUSIVE = ("exclusive_x_to_y", "exclusive_y_to_x")
LOGGED = ("top1", "hits", "recall_at_5", "median_rank")

Measure = Callable[[IIAE], dict[str, dict[str, float]]]
LOG = logging.getLogger("iiae.engine")


def selection_record(
    step: int,
    table: dict[str, dict[str, float]],
    metric: str = "top1",
    max_exclusive_hits: int | None = TrainConfig.max_exclusive_hits,
) -> dict[str, Any]:
    """One evaluation: its step, shared score, exclusive hits, whether it qualifies, and the table's top-1s."""
    exclusive_hits = {direction: int(table[direction]["hits"]) for direction in EXCLUSIVE}
    qualifies = max_exclusive_hits is None or all(hits <= max_exclusive_hits for hits in exclusive_hits.values())
    return {
        "step": int(step),
        "score": float(sum(table[direction][metric] for direction in SHARED)),
        "qualifies": bool(qualifies),
        "exclusive_hits": exclusive_hits,
        "top1": {direction: float(row["top1"]) for direction, row in table.items()},
    }


@dataclass
class PatienceStop:
    """The early-stopping rule over the selection's evaluations (records of :func:`selection_record`).

    An evaluation *improves* when it qualifies and its score exceeds the reference score by more than ``min_delta``
    (the first qualifying evaluation always improves); the reference is the score of the last improvement, so
    small gains add up. Every other evaluation after the first qualifying one, a tie or a non-qualifying one
    included, counts towards ``patience``; before any evaluation qualified nothing counts (there would be no
    selected model to stop at). ``patience`` = 0: never stops.
    """

    patience: int = 0
    min_delta: float = 0.0
    since_improvement: int = 0  # evaluations since the last improvement
    reference: float | None = None  # the score of the last improvement
    reference_step: int | None = None
    stopped_at: int | None = None  # the step the run stopped at, once it has

    def update(self, record: dict[str, Any]) -> bool:
        """Count one evaluation; True when the run should stop after it (patience evaluations without
        improvement)."""
        if record["qualifies"] and (self.reference is None or record["score"] > self.reference + self.min_delta):
            self.since_improvement, self.reference, self.reference_step = 0, float(record["score"]), record["step"]
        elif self.reference is not None:
            self.since_improvement += 1
        return self.patience > 0 and self.since_improvement >= self.patience

    def rule(self, every: int) -> str:
        """The rule in words (``every``: steps between two evaluations)."""
        if not self.patience:
            return "off (train.early_stop_patience = 0)"
        gain = f"by more than {self.min_delta:g}" if self.min_delta else "(a tie is no improvement)"
        evaluations = "evaluation" if self.patience == 1 else f"{self.patience} evaluations in a row"
        return (
            f"stop after a validation {evaluations} ({self.patience * every} steps) without a qualifying "
            f"selection score above the last improvement {gain}"
        )

    def reason(self) -> str:
        """Why the run stopped (after it has)."""
        if self.reference is None or self.since_improvement < self.patience:  # DDP: another process's count
            return "another process reached train.early_stop_patience"
        evaluations = "evaluation" if self.since_improvement == 1 else f"{self.since_improvement} evaluations"
        return (
            f"no improvement of the validation selection score in the last {evaluations} "
            f"(train.early_stop_patience = {self.patience}; last improvement {self.reference:.2f} at step "
            f"{self.reference_step})"
        )

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counter of a checkpoint; patience and min_delta stay the run's (they cannot change on
        resume)."""
        self.since_improvement = int(state.get("since_improvement", 0))
        self.reference = None if state.get("reference") is None else float(state["reference"])
        self.reference_step = None if state.get("reference_step") is None else int(state["reference_step"])
        self.stopped_at = None if state.get("stopped_at") is None else int(state["stopped_at"])


class RetrievalSelection(Callback):
    """Keeps ``best.ckpt``: the best shared retrieval on validation pairs among steps whose exclusive codes qualify.

    ``measure`` maps the model to a retrieval table (default: :func:`iiae.evaluation.retrieval.retrieval_table` of the
    validation pairs ``x``, ``y``); tests pass synthetic tables. The callback's history is saved in every
    checkpoint of the run, so a resumed run keeps its best.
    """

    @property
    def state_key(self) -> str:
        """Where Lightning keeps this callback's state in a checkpoint (read by ``early_stopped_step``)."""
        return SELECTION_STATE_KEY

    def __init__(
        self,
        dirpath: str | Path,
        every: int,
        x: Any = None,
        y: Any = None,
        metric: str = "top1",  # summed over shared X->Y and Y->X; higher is better
        max_exclusive_hits: int | None = TrainConfig.max_exclusive_hits,  # per exclusive direction; None: any
        batch_size: int = 500,
        measure: Measure | None = None,
        early_stop: PatienceStop | None = None,  # the early-stopping rule; None: never stops early
    ) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if measure is None:
            if x is None or y is None:
                raise ValueError("RetrievalSelection needs validation pairs x, y or a measure function")
            measure = self._validation_measure(x, y, batch_size)
        self.best_path = Path(dirpath) / BEST_CHECKPOINT
        self.every, self.metric, self.max_exclusive_hits, self.measure = every, metric, max_exclusive_hits, measure
        self.validation_pairs = None if x is None else len(x)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.disabled: str | None = None  # why this run selects nothing (then the callback does nothing)
        self.early_stop = early_stop if early_stop is not None else PatienceStop()

    @classmethod
    def for_run(cls, train: TrainConfig, validation: Any, dirpath: str | Path) -> RetrievalSelection:
        """The callback of a run's ``train`` config and validation pairs (disabled, saying why, when off)."""
        if train.select_every == 0 or validation is None:
            selection = cls(dirpath, 1, measure=lambda model: {})
            selection.disabled = (
                "model selection is off (train.select_every = 0)" if train.select_every == 0
                else "no validation pairs (data.validation_fraction = 0 and no data.validation_split)"
            )  # fmt: skip
            return selection
        early_stop = PatienceStop(train.early_stop_patience, train.early_stop_min_delta)
        return cls(dirpath, train.select_every, validation.x, validation.y, train.select_metric,
                   train.max_exclusive_hits, train.eval_batch_size, early_stop=early_stop)  # fmt: skip

    @staticmethod
    def _validation_measure(x: Any, y: Any, batch_size: int) -> Measure:
        def measure(model: IIAE) -> dict[str, dict[str, float]]:
            return retrieval_table(encode_pairs(model, x, y, batch_size))

        return measure

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        final = trainer.max_steps > 0 and step >= trainer.max_steps
        already = bool(self.history) and self.history[-1]["step"] == step  # a skipped step does not advance it
        if self.disabled or step == 0 or already or not (step % self.every == 0 or final):
            return
        table = self.measure(pl_module.model)
        record = selection_record(step, table, self.metric, self.max_exclusive_hits)
        self.history.append(record)
        for logger in trainer.loggers:
            values = {f"val/{d}_{name}": float(table[d][name]) for d in table for name in LOGGED}
            logger.log_metrics({**values, "val/selection_score": record["score"]}, step=step)
        if record["qualifies"] and (self.best is None or record["score"] >= self.best["score"]):
            self.best = record
            trainer.save_checkpoint(self.best_path, weights_only=True)
        stop = self.early_stop.update(record) and not final  # at the last step the run ends anyway
        if self.early_stop.patience and trainer.world_size > 1:  # DDP: all stop together (one alone would hang)
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop:
            self.early_stop.stopped_at = step
            trainer.should_stop = True  # Lightning ends the run after this step; RunCheckpoint checkpoints it
            LOG.info("iiae: early stop at step %d: %s", step, self.early_stop.reason())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A run resumed from the checkpoint of its stopping step (killed before it finished) stops at once."""
        if self.early_stop.stopped_at is not None:
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"history": copy.deepcopy(self.history), "best": copy.deepcopy(self.best),
                "early_stop": self.early_stop.state_dict()}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = copy.deepcopy(state_dict.get("history", []))
        self.best = copy.deepcopy(state_dict.get("best"))
        self.early_stop.load_state_dict(state_dict.get("early_stop", {}))  # checkpoints before early stopping: none

    def criteria(self) -> str:
        """The selection rule in words."""
        limit = "any number of" if self.max_exclusive_hits is None else f"at most {self.max_exclusive_hits}"
        limit += " correct pair" if self.max_exclusive_hits == 1 else " correct pairs"
        pairs = "" if self.validation_pairs is None else f" on {self.validation_pairs} validation pairs"
        return (
            f"highest shared {self.metric} (X->Y + Y->X){pairs}, every {self.every} steps and at the last step, "
            f"among evaluations whose exclusive codes retrieve {limit} per direction"
        )


def early_stopping_facts(selection: RetrievalSelection) -> dict[str, Any]:
    """What ``metrics.json`` records under ``early_stopping``: whether and where the run stopped early, and the rule."""
    rule = selection.early_stop
    facts: dict[str, Any] = {
        "early_stopped": rule.stopped_at is not None,
        "stopped_at_step": rule.stopped_at,
        "patience": rule.patience,
        "min_delta": rule.min_delta,
        "rule": selection.disabled if selection.disabled and rule.patience else rule.rule(selection.every),
        "evaluations_without_improvement": rule.since_improvement,
        "last_improvement_step": rule.reference_step,
    }
    if rule.stopped_at is not None:
        facts["reason"] = rule.reason()
    return facts


def selected_model(module: L.LightningModule, selection: RetrievalSelection, last_step: int) -> dict:
    """Load the selected weights into ``module.model`` (best, or last as fallback); returns what was chosen and why.

    The returned dict goes into ``metrics.json`` under ``selection``.
    """
    if selection.disabled:
        return {"selected": "last", "step": int(last_step), "reason": selection.disabled}
    info: dict[str, Any] = {"criteria": selection.criteria(), "history": copy.deepcopy(selection.history)}
    if selection.best is None or not selection.best_path.is_file():
        evaluated = len(selection.history)
        reason = (
            f"none of the {evaluated} validation evaluations qualified (exclusive hits above the limit); "
            "fell back to the last step"
        )
        return {"selected": "last", "step": int(last_step), "reason": reason, **info}
    module.model.load_state_dict(model_state(load_checkpoint(selection.best_path)))
    best = selection.best
    hits = ", ".join(f"{direction} {count}" for direction, count in best["exclusive_hits"].items())
    reason = (
        f"the highest shared {selection.metric} X->Y + Y->X on validation ({best['score']:.2f}) of "
        f"{sum(r['qualifies'] for r in selection.history)} qualifying evaluations (exclusive hits: {hits})"
    )
    return {
        "selected": "best",
        "step": int(best["step"]),
        "checkpoint": str(selection.best_path),
        "reason": reason,
        **info,
    }
