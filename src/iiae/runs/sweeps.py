"""Several runs from one command line: seeds (``--seeds 0,1,2``) and a one-key ablation (``--sweep KEY=V1,V2``).

    iiae train --seeds 0,1,2                                   # run/seed-0, run/seed-1, run/seed-2
    iiae train --sweep loss.lambda_=0,0.5,1,2 --seeds 0,1      # run/loss.lambda_=0/seed-0, ...

Every run is the main job (:func:`iiae.runs.runner.train_and_evaluate`) in its own sub-folder; the seed of a run is
``train.seed`` (initialisation and batch order; the data and its colours stay the same). The run folder then
holds ``summary.json`` and ``summary.md``: for each sweep value, the mean and the sample standard deviation
(n − 1; 0 for one run) over the seeds of every retrieval, translation-fidelity, leakage and colour-intervention number. The summary
is rewritten after each run, so an interrupted sweep keeps what it finished.

``loss.lambda_ = 0`` removes the interaction-information terms: the plain joint VAE the paper improves on.
Every config is built and checked before the first run starts, so a bad value stops the command at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from iiae.atomic import atomic_write_json, atomic_write_text
from iiae.core.config import ExperimentConfig, config_from_dict, parse_yaml, set_by_path
from iiae.errors import ConfigError
from iiae.evaluation.measures import CODE_NAMES
from iiae.outputs import check_output
from iiae.run_files import SWEEP_SUMMARY, SWEEP_SUMMARY_MARKDOWN
from iiae.runs.run_folder import check_output_dir, default_run_dir
from iiae.runs.runner import train_and_evaluate

#: metrics.json sections summarised
SUMMARY_SECTIONS = ("retrieval", "translation_fidelity", "leakage", "colour_intervention")
SKIPPED_LEAVES = {"count", "fit_pairs", "score_pairs", "digits", "colourings", "seed"}  # sizes, not results
#: (column title, flattened metric key) of the one-table view in summary.md
HEADLINE = (
    ("shared X→Y top-1 %", "retrieval.shared_x_to_y.top1"),
    ("shared Y→X top-1 %", "retrieval.shared_y_to_x.top1"),
    ("excl. X→Y top-1 %", "retrieval.exclusive_x_to_y.top1"),
    ("excl. Y→X top-1 %", "retrieval.exclusive_y_to_x.top1"),
    ("class ← z^s (r^x) %", "leakage.digit_class.shared_x"),
    ("class ← z^x %", "leakage.digit_class.exclusive_x"),
    ("class ← z^y %", "leakage.digit_class.exclusive_y"),
    ("bg colour ← z^x R²", "leakage.background_colour_x.exclusive_x"),
    ("bg colour ← z^s (r^x) R²", "leakage.background_colour_x.shared_x"),
    ("digit colour ← z^y R²", "leakage.digit_colour_y.exclusive_y"),
    ("digit colour ← z^s (r^y) R²", "leakage.digit_colour_y.shared_y"),
    ("colour / digit spread z^s (r^x)", "colour_intervention.shared_x.ratio"),
    ("colour / digit spread z^x", "colour_intervention.exclusive_x.ratio"),
    ("digit kept X→Y %", "translation_fidelity.class_accuracy.x_to_y"),
    ("digit kept Y→X %", "translation_fidelity.class_accuracy.y_to_x"),
)
_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


# -------------------------------------------------------------------------------------------------- parsing
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ConfigError for anything but distinct non-negative integers."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not re.fullmatch(r"\d+", part) for part in parts):
        raise ConfigError(
            f"--seeds expects distinct non-negative integers separated by commas (e.g. 0,1,2), got {text!r}"
        )
    seeds = [int(part) for part in parts]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {text!r}")
    return seeds


def parse_sweep(text: str) -> tuple[str, list[object]]:
    """``"loss.lambda_=0,0.5"`` -> ("loss.lambda_", [0, 0.5]); each value is read as YAML."""
    key, separator, raw_values = text.partition("=")
    if not separator or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", key.strip()) or not raw_values.strip():
        raise ConfigError(f"--sweep expects SECTION.KEY=VALUE1,VALUE2,... (e.g. loss.lambda_=0,0.5,1,2), got {text!r}")
    raw = [value.strip() for value in raw_values.split(",")]
    if any(not value for value in raw):
        raise ConfigError(f"--sweep has an empty value in {text!r}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"--sweep lists a value twice: {text!r}")
    try:
        return key.strip(), [parse_yaml(value) for value in raw]
    except yaml.YAMLError:
        raise ConfigError(f"--sweep value in {text!r} is not a valid value") from None


def with_value(config: ExperimentConfig, dotted_key: str, value: object) -> ExperimentConfig:
    """A validated copy of ``config`` with ``dotted_key`` set to ``value`` (ConfigError naming the key)."""
    values = config.to_dict()
    set_by_path(values, dotted_key.split("."), value)
    return config_from_dict(values)


# ----------------------------------------------------------------------------------------------- planning
@dataclass
class PlannedRun:
    """One run of a sweep: its config, its sub-folder and the group (sweep value) it belongs to."""

    config: ExperimentConfig
    out_dir: Path
    seed: int
    group: str  # "loss.lambda_=0.5", or "all" without --sweep
    sweep_value: object = None


def _folder_name(key: str, value: object) -> str:
    return _FOLDER_UNSAFE.sub("_", f"{key}={value}")


def plan_runs(
    base: ExperimentConfig, out_dir: Path, seeds: list[int] | None, sweep: tuple[str, list[object]] | None
) -> list[PlannedRun]:
    """Every run's validated config and folder; seeds default to the config's own ``train.seed``."""
    seed_list = seeds if seeds is not None else [base.train.seed]
    groups: list[tuple[str, Path, ExperimentConfig, object]] = []
    if sweep is None:
        groups.append(("all", out_dir, base, None))
    else:
        key, values = sweep
        if key == "train.seed" and seeds is not None:
            raise ConfigError("--sweep train.seed=... and --seeds both set the seed: give one of them")
        names = [_folder_name(key, value) for value in values]
        if len(set(names)) != len(names):
            raise ConfigError(f"--sweep values {values} give the same folder name twice: {names}")
        for value in values:
            name = _folder_name(key, value)
            try:
                groups.append((name, out_dir / name, with_value(base, key, value), value))
            except ConfigError as error:
                raise ConfigError(f"--sweep {key}={value}: {error}") from None
    runs = []
    for group, folder, config, value in groups:
        for seed in seed_list:
            run_dir = folder / f"seed-{seed}" if seeds is not None else folder
            runs.append(PlannedRun(with_value(config, "train.seed", seed), run_dir, seed, group, value))
    return runs


# ---------------------------------------------------------------------------------------------- summaries
def flatten_numbers(metrics: dict, sections: tuple[str, ...] = SUMMARY_SECTIONS) -> dict[str, float]:
    """Numeric leaves of the given sections as ``{"retrieval.shared_x_to_y.top1": 98.1, ...}`` (no bools, sizes)."""
    flat: dict[str, float] = {}

    def visit(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in SKIPPED_LEAVES:
                    visit(item, f"{prefix}.{key}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for section in sections:
        if section in metrics:
            visit(metrics[section], section)
    return flat


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1 in the denominator; 0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def summarise(
    runs: list[PlannedRun], results: list[dict], sweep_key: str | None, seeds: list[int], run_dir: Path | None = None
) -> dict:
    """The summary of finished runs (``results[i]`` is the metrics of ``runs[i]``), grouped by sweep value."""
    groups: dict[str, dict] = {}
    for run, metrics in zip(runs, results, strict=False):
        group = groups.setdefault(run.group, {"group": run.group, "sweep_value": run.sweep_value, "seeds": [],
                                              "run_dirs": [], "values": {}})  # fmt: skip
        group["seeds"].append(run.seed)
        group["run_dirs"].append(str(run.out_dir))
        for key, value in flatten_numbers(metrics).items():
            group["values"].setdefault(key, []).append(value)
    for group in groups.values():
        values = group.pop("values")
        group["runs"] = len(group["seeds"])
        group["metrics"] = {}
        for key, numbers in values.items():
            mean, std = mean_and_std(numbers)
            group["metrics"][key] = {"mean": mean, "std": std, "values": numbers}
    return {"run_dir": None if run_dir is None else str(run_dir), "sweep_key": sweep_key, "seeds": seeds,
            "planned_runs": len(runs), "finished_runs": len(results), "groups": list(groups.values())}  # fmt: skip


def _digits(key: str) -> int:
    """Decimals shown for a metric: 3 for R², colour errors and intervention spreads, 1 for percentages and ranks."""
    is_r_squared = key.startswith("leakage.") and ".digit_class." not in key
    is_colour_error = key.startswith(("translation_fidelity.colour_error", "translation_fidelity.shuffled"))
    is_spread = key.startswith("colour_intervention.")
    return 3 if is_r_squared or is_colour_error or is_spread else 1


def _mean_std_cell(entry: dict | None, key: str) -> str:
    if entry is None:
        return "–"
    digits = _digits(key)
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def summary_markdown(summary: dict) -> str:
    """summary.md: the headline table (one row per sweep value), then every number, mean ± std over seeds."""
    groups = summary["groups"]
    title = summary["sweep_key"] or "runs"
    baseline = " λ = 0: the plain joint VAE, without the interaction-information terms." if "lambda_" in title else ""
    lines = [
        "# IIAE sweep summary",
        "",
        f"{summary['finished_runs']} of {summary['planned_runs']} runs finished; seeds {summary['seeds']}; mean ± "
        "sample standard deviation over the seeds. Retrieval top-1 of exclusive codes should be near chance; "
        "leakage: class ← z^s high, ← z^x, z^y near 10 %; colour ← own exclusive code high, ← z^s near 0."
        + baseline,
        "",
        f"| {title} | runs | " + " | ".join(name for name, _ in HEADLINE) + " |",
        "|---|---:|" + "---:|" * len(HEADLINE),
    ]
    for group in groups:
        label = str(group["sweep_value"]) if summary["sweep_key"] else "all"
        cells = [_mean_std_cell(group["metrics"].get(key), key) for _, key in HEADLINE]
        lines.append(f"| {label} | {group['runs']} | " + " | ".join(cells) + " |")
    keys = sorted({key for group in groups for key in group["metrics"]})
    lines += ["", "## Every number", "", "| metric | " + " | ".join(group["group"] for group in groups) + " |",
              "|---|" + "---:|" * len(groups)]  # fmt: skip
    for key in keys:
        cells = [_mean_std_cell(group["metrics"].get(key), key) for group in groups]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Codes: " + ", ".join(f"{code} = {name}" for code, name in CODE_NAMES.items()) + "."]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out_dir: Path) -> None:
    """Write ``summary.json`` and ``summary.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / SWEEP_SUMMARY, summary)
    atomic_write_text(out_dir / SWEEP_SUMMARY_MARKDOWN, summary_markdown(summary))


# ---------------------------------------------------------------------------------------------------- runs
def run_sweep(
    base: ExperimentConfig,
    out_dir: str | Path | None,
    seeds: list[int] | None,
    sweep: tuple[str, list[object]] | None,
    progress: bool = True,
    train: Callable[..., dict] | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Plan, check, then train and evaluate every run; returns the summary (also written to ``out_dir``)."""
    train = train or train_and_evaluate
    out_dir = Path(out_dir) if out_dir is not None else default_run_dir(base)
    check_output(out_dir, [base.data.root] if base.data.root else [], folder=True)  # not inside the data (iiae.outputs)
    check_output_dir(out_dir)
    runs = plan_runs(base, out_dir, seeds, sweep)
    seed_list = seeds if seeds is not None else [base.train.seed]
    sweep_key = sweep[0] if sweep is not None else None
    results: list[dict] = []
    summary: dict = {}
    for index, run in enumerate(runs, start=1):
        echo(f"run {index}/{len(runs)}: {run.group} seed {run.seed} -> {run.out_dir}")
        results.append(train(run.config, run.out_dir, progress=progress))
        summary = summarise(runs, results, sweep_key, seed_list, out_dir)
        write_summary(summary, out_dir)
    return summary
