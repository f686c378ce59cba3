"""``iiae export``: a run's model (selected or newest checkpoint, even of an interrupted run) as a model folder."""

from __future__ import annotations

from pathlib import Path

from iiae.atomic import atomic_folder, remove_stale_temporaries
from iiae.core.config import load_saved_config
from iiae.engine.checkpoint_files import newest_checkpoint
from iiae.errors import CheckpointError
from iiae.outputs import check_output
from iiae.run_files import BEST_CHECKPOINT, CHECKPOINTS, CONFIG
from iiae.runs.run_folder import check_output_dir
from iiae.runs.trained import load_trained


def export_model(source: Path, out: Path, last: bool = False) -> tuple[Path, int]:
    """Write a run's model as ``out/model.safetensors`` + ``out/config.json``; returns the checkpoint and its step.

    ``source`` is a run folder (its selected model ``checkpoints/best.ckpt`` when model selection kept one, else
    its newest checkpoint; ``last``: always the newest), or a checkpoint file. Works for an interrupted run too.
    ``out`` must not hold files nor lie inside ``source`` or another run or model folder; it appears only once
    complete (staged beside it: what a killed export left there is removed first).
    """
    source, out = Path(source), Path(out)
    check_output(out, [source], folder=True)
    check_output_dir(out)
    remove_stale_temporaries(out.parent)  # staging folders of exports that were killed (dead processes only)
    if source.is_dir():
        config_path = source / CONFIG
        if not config_path.is_file():
            raise CheckpointError(f"cannot export {source}: no {CONFIG}; expected a run folder or a .ckpt file")
        best = source / CHECKPOINTS / BEST_CHECKPOINT
        source = best if best.is_file() and not last else newest_checkpoint(source, load_saved_config(config_path))[0]
    trained = load_trained(source)  # weights_only, checked against the config saved in the checkpoint
    with atomic_folder(out) as staging:  # out appears only once complete
        trained.model.save_pretrained(staging)
    return source, int(trained.step or 0)
