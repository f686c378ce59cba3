"""Model selection: the checkpoint the callback keeps under its criteria; a validation split disjoint from training."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from iiae.core.config import DataConfig, TrainConfig
from iiae.data.splits import build_cdcb_splits, held_out_indices
from iiae.engine.checkpoint_files import load_checkpoint, model_state
from iiae.engine.selection import (
    RetrievalSelection,
    selected_model,
    selection_record,
)
from iiae.engine.training import IIAELightning
from iiae.runs.report import selection_markdown

TINY = {"model": {"image_size": 16, "encoder_widths": [8], "exclusive_widths": [8], "decoder_widths": [8]},
        "train": {"learning_rate": 0.01}}  # fmt: skip


def _table(shared: tuple[float, float], exclusive_hits: tuple[int, int]) -> dict[str, dict[str, float]]:
    """A synthetic retrieval table of 100 validation pairs."""
    def row(top1: float, hits: int) -> dict[str, float]:
        return {"top1": top1, "hits": hits, "recall_at_5": top1, "recall_at_10": top1, "median_rank": 1.0, "count": 100}

    return {
        "shared_x_to_y": row(shared[0], int(shared[0])),
        "shared_y_to_x": row(shared[1], int(shared[1])),
        "exclusive_x_to_y": row(float(exclusive_hits[0]), exclusive_hits[0]),
        "exclusive_y_to_x": row(float(exclusive_hits[1]), exclusive_hits[1]),
    }


# evaluated at steps 2, 4, 6, 8: step 4 has the best shared score but its exclusive X->Y codes find 2 pairs
TABLES = [_table((40, 40), (0, 1)), _table((90, 95), (2, 0)), _table((70, 75), (1, 1)), _table((60, 60), (0, 0))]


def _train(tmp_path, tables, max_exclusive_hits, steps=8):
    torch.manual_seed(0)
    module = IIAELightning(TINY)
    pairs = TensorDataset(torch.rand(32, 3, 16, 16) * 2 - 1, torch.rand(32, 3, 16, 16) * 2 - 1)
    served = iter(tables)
    selection = RetrievalSelection(tmp_path / "checkpoints", every=2, max_exclusive_hits=max_exclusive_hits,
                                   measure=lambda model: next(served))  # fmt: skip
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=CSVLogger(tmp_path, name="", version="logs"),
        callbacks=[selection, ModelCheckpoint(tmp_path / "checkpoints", save_last=True, save_top_k=0)],
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, DataLoader(pairs, batch_size=8))
    return module, selection, trainer


@pytest.mark.parametrize(("max_exclusive_hits", "best_step"), [(1, 6), (None, 4), (0, 8)])
def test_best_checkpoint_under_the_criteria_and_the_last_one_kept(tmp_path, max_exclusive_hits, best_step):
    module, selection, trainer = _train(tmp_path, TABLES, max_exclusive_hits)
    assert [record["step"] for record in selection.history] == [2, 4, 6, 8]
    best = load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")
    assert best["global_step"] == best_step
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 8
    last_weights = {name: tensor.clone() for name, tensor in module.model.state_dict().items()}
    chosen = selected_model(module, selection, trainer.global_step)
    assert chosen["selected"] == "best" and chosen["step"] == best_step
    for name, tensor in module.model.state_dict().items():
        assert torch.equal(tensor, model_state(best)[name])
    changed = any(not torch.equal(last_weights[name], tensor) for name, tensor in module.model.state_dict().items())
    assert changed == (best_step != 8)  # the best weights replaced the last ones unless the last step is the best
    assert "| 4 | 90.00 | 95.00 | 2 / 0 |" in selection_markdown(chosen)
    with open(tmp_path / "logs" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/shared_x_to_y_top1")]
    assert [int(row["step"]) for row in rows] == [2, 4, 6, 8]
    assert [float(row["val/selection_score"]) for row in rows] == [80.0, 185.0, 145.0, 120.0]


def test_a_tie_keeps_the_later_step(tmp_path):
    tied = [_table((100, 100), (0, 0)), _table((100, 100), (1, 1)), _table((90, 100), (0, 0))]
    _, selection, _ = _train(tmp_path, tied, 1, steps=6)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.ckpt")["global_step"] == 4
    assert selection.best["step"] == 4


def test_no_qualifying_step_falls_back_to_last(tmp_path):
    module, selection, trainer = _train(tmp_path, [_table((50, 50), (3, 3))] * 2, 1, steps=4)
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()
    last_weights = {name: tensor.clone() for name, tensor in module.model.state_dict().items()}
    chosen = selected_model(module, selection, trainer.global_step)
    assert chosen["selected"] == "last" and chosen["step"] == 4 and "none of the 2" in chosen["reason"]
    assert all(torch.equal(last_weights[name], tensor) for name, tensor in module.model.state_dict().items())


def test_selection_record_and_state_round_trip(tmp_path):
    record = selection_record(10, _table((30, 20), (1, 2)), "top1", max_exclusive_hits=2)
    assert record["score"] == 50.0 and record["qualifies"] and record["exclusive_hits"]["exclusive_y_to_x"] == 2
    assert not selection_record(10, _table((30, 20), (1, 2)), "top1", max_exclusive_hits=1)["qualifies"]
    selection = RetrievalSelection(tmp_path, every=5, measure=lambda model: {})
    selection.history, selection.best = [record], record
    restored = RetrievalSelection(tmp_path, every=5, measure=lambda model: {})
    restored.load_state_dict(selection.state_dict())
    assert restored.history == [record] and restored.best == record


def test_selection_is_off_without_steps_or_validation_pairs(tmp_path):
    off = RetrievalSelection.for_run(TrainConfig(select_every=0), object(), tmp_path)
    assert off.disabled and "select_every = 0" in off.disabled
    assert "no validation pairs" in RetrievalSelection.for_run(TrainConfig(select_every=5), None, tmp_path).disabled
    module = IIAELightning(TINY)
    assert selected_model(module, off, 7) == {"selected": "last", "step": 7, "reason": off.disabled}


def test_held_out_indices_are_disjoint_deterministic_and_seeded():
    kept, held = held_out_indices(4000, 0.125, seed=0)
    assert len(held) == 500 and len(kept) == 3500 and not set(kept) & set(held)
    assert sorted(kept + held) == list(range(4000))
    assert held_out_indices(4000, 0.125, seed=0) == (kept, held)
    assert held_out_indices(4000, 0.125, seed=1)[1] != held
    assert held_out_indices(10, 0.0, seed=0) == (list(range(10)), [])


def test_validation_pairs_are_held_out_of_training_and_the_test_pairs_are_untouched():
    split = build_cdcb_splits(DataConfig(validation_fraction=0.125), image_size=16)
    whole = build_cdcb_splits(DataConfig(validation_fraction=0.0), image_size=16)
    assert whole.validation is None and len(whole.train) == 4000
    assert len(split.train) == 3500 and len(split.validation) == 500
    kept, held = held_out_indices(4000, 0.125, seed=0)
    assert torch.equal(split.train.x, whole.train.x[kept]) and torch.equal(split.validation.y, whole.train.y[held])
    assert torch.equal(split.validation.labels, whole.train.labels[held])
    assert torch.equal(split.test.x, whole.test.x) and torch.equal(split.test.y, whole.test.y)
    trained_on = {bytes(image.numpy()) for image in split.train.x}
    assert not any(bytes(image.numpy()) in trained_on for image in split.validation.x)


@pytest.mark.parametrize("count", [20, 500])
def test_the_default_exclusive_hit_limit_rarely_turns_away_a_step_at_chance(count):
    """Exclusive codes that know nothing of the pair (independent random codes) find about 1 partner per direction
    whatever the pair count; the default limit turns such a step away under 5 % of the time (a limit of 1 did
    about 26 %), and a step whose codes identify a tenth of 500 pairs is still turned away."""
    from iiae.evaluation.retrieval import partner_ranks

    generator = torch.Generator().manual_seed(count)
    hits = torch.tensor([
        int((partner_ranks(torch.randn(count, 8, generator=generator),
                           torch.randn(count, 8, generator=generator)) == 0).sum())
        for _ in range(300)
    ]).double()  # fmt: skip
    limit = TrainConfig.max_exclusive_hits
    assert 0.8 < hits.mean() < 1.2
    assert (hits > limit).double().mean() < 0.05 and (hits > 1).double().mean() > 0.18
    assert not selection_record(10, _table((90, 90), (50, 0)), "top1", limit)["qualifies"]  # 10 % of 500 pairs
