"""report.md of a run: what was trained, how well the codes retrieve, the paper's numbers beside ours."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from iiae.atomic import atomic_write_text
from iiae.core.config import ExperimentConfig
from iiae.evaluation.measures import measures_markdown
from iiae.evaluation.retrieval import format_retrieval_table
from iiae.evaluation.shift_suite import shift_suite_markdown
from iiae.readers import quote
from iiae.run_files import REPORT

# Paper keys in configs (``paper:`` section) and the retrieval direction they compare with.
PAPER_KEYS = {"shared_x_to_y": "iiae_x_to_y", "shared_y_to_x": "iiae_y_to_x"}
# Methods of the paper's tables, in column order; a config's ``<method>_x_to_y`` keys add a column each.
PAPER_METHODS = {"iiae": "IIAE", "cddn": "CdDN", "drit": "DRIT"}


def early_stopping_markdown(facts: dict | None) -> str:
    """The report's line on early stopping ("" when the run has no such record or the rule is off)."""
    if not facts or not facts.get("patience"):
        return ""
    if facts.get("early_stopped"):
        return (f"Early stopping: **stopped at step {facts['stopped_at_step']}**: {facts['reason']}. "
                f"Rule: {facts['rule']}.\n")  # fmt: skip
    return f"Early stopping: did not stop early ({facts['rule']}).\n"


def selection_markdown(selection: dict | None) -> str:
    """The report's model-selection section: which step was evaluated and why, and the validation history."""
    if not selection:
        return ""
    evaluated = f"Evaluated model: **{selection['selected']}** (step {selection['step']}). {selection['reason']}."
    lines = ["## Model selection", "", evaluated]
    if selection.get("criteria"):
        lines += ["", f"Rule: {selection['criteria']}."]
    history = selection.get("history") or []
    if history:
        lines += [
            "",
            "| step | shared X→Y top-1 % | shared Y→X top-1 % | exclusive hits X→Y / Y→X | score | qualifies |",
            "|---:|---:|---:|---:|---:|:---:|",
        ]
        for record in history:
            top1, hits = record["top1"], record["exclusive_hits"]
            lines.append(
                f"| {record['step']} | {top1['shared_x_to_y']:.2f} | {top1['shared_y_to_x']:.2f} | "
                f"{hits['exclusive_x_to_y']} / {hits['exclusive_y_to_x']} | {record['score']:.2f} | "
                f"{'yes' if record['qualifies'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def paper_methods(paper: dict) -> list[str]:
    """Methods with numbers in a config's ``paper`` section: IIAE first, then the baselines (CdDN, DRIT, ...)."""
    found = {key.rsplit("_x_to_y", 1)[0] for key in paper if key.endswith("_x_to_y")}
    found |= {key.rsplit("_y_to_x", 1)[0] for key in paper if key.endswith("_y_to_x")}
    return [m for m in PAPER_METHODS if m in found] + sorted(found - set(PAPER_METHODS))


def retrieval_markdown(metrics: dict) -> str:
    """Markdown table of the four retrieval directions, with the paper's numbers (IIAE and baselines) beside."""
    paper = metrics.get("paper", {})
    methods = paper_methods(paper) or ["iiae"]
    names = " | ".join(f"paper ({PAPER_METHODS.get(m, m)}) top-1 %" for m in methods)
    lines = [
        f"| direction | top-1 % | hits | recall@5 % | recall@10 % | median rank | {names} |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(methods),
    ]
    for direction, row in metrics["retrieval"].items():
        suffix = PAPER_KEYS.get(direction, "").removeprefix("iiae")
        references = [paper.get(f"{m}{suffix}") if suffix else None for m in methods]
        lines.append(
            f"| {direction} | {row['top1']:.2f} | {row['hits']}/{row['count']} | {row['recall_at_5']:.2f} | "
            f"{row['recall_at_10']:.2f} | {row['median_rank']:.1f} | "
            + " | ".join("" if r is None else f"{r:.1f}" for r in references)
            + " |"
        )
    return "\n".join(lines)


def write_report(config: ExperimentConfig, metrics: dict, out_dir: str | Path) -> Path:
    """Write ``report.md`` next to the figures it shows."""
    out_dir = Path(out_dir)
    evaluated = metrics.get("evaluated")  # set by a later `iiae evaluate` of the run: its numbers are shown below
    count = evaluated["test_pairs"] if evaluated else metrics["test_pairs"]
    text = f"""# IIAE run: {config.name}

Data: {metrics['data_source']}; {metrics['train_pairs']} training pairs, {metrics.get('validation_pairs', 0)} validation
pairs (held out of training, for model selection), {metrics['test_pairs']} test pairs.
Training: {metrics['steps']} steps in {metrics['training_seconds']:.0f} s ({metrics['threads']} threads,
torch {metrics['torch']}); {metrics['parameters']:,} parameters.
{early_stopping_markdown(metrics.get('early_stopping'))}{evaluated_markdown(evaluated)}
## Cross-domain retrieval (test pairs, L2 nearest neighbour among all {count} candidates)

Shared codes (r^x, r^y means) should find the partner; exclusive codes (q(z^x|x), q(z^y|y) means) should not
(chance: {100 / max(count, 1):.2f} %). The paper's numbers are for its own setting (see the config's `paper`).

{retrieval_markdown(metrics)}

```
{format_retrieval_table(metrics['retrieval'])}
```

{selection_markdown(metrics.get('selection'))}
{shift_suite_markdown(metrics)}
## Translation

Rows: input x; X→Y with r^x(x)'s mean and three z^y drawn from the prior; X→Y with z^y of the paired y;
then the same from y to X.

![translation](translation.png)

## Visual analogies and latent traversals

Analogies, one grid per domain: cell (i, j) decodes the shared code of the image left of row i with the exclusive
code of the image above column j (the diagonal reconstructs the inputs). Traversals: row k sets dimension k of
the exclusive code of the first test image from -2 to 2 (prior units), its shared code fixed; the input is on
the left. Exclusive dimensions should change only what belongs to one domain (MNIST-CDCB: a colour), never the
shared content (the digit).

![analogies](analogy.png)

![traversals](traversal.png)

{measures_markdown(metrics)}
## Loss terms

![loss curves](loss_curves.png)

{config_section(config.to_dict())}"""
    return atomic_write_text(out_dir / REPORT, text)


def evaluated_markdown(evaluated: dict | None) -> str:
    """A line saying that the numbers below come from ``iiae evaluate`` (metrics.json's ``evaluated``), or ``""``."""
    if not evaluated:
        return ""
    step = "" if evaluated.get("step") is None else f" (step {evaluated['step']})"
    return (f"\nThe numbers below are from `iiae evaluate` of {evaluated['model']}{step} on {evaluated['test_pairs']} "
            f"test pairs ({evaluated['data_source']}), {evaluated['date']}.\n")  # fmt: skip


def refresh_report(run_dir: str | Path, config: ExperimentConfig, metrics: dict) -> Path | None:
    """Rewrite a run folder's report.md from its (re-evaluated) ``metrics``; None when the run has no report.md
    (a run still training, or a folder that is not a finished run)."""
    run_dir = Path(run_dir)
    if not (run_dir / REPORT).is_file():
        return None
    try:
        return write_report(config, metrics, run_dir)
    except (KeyError, TypeError, ValueError, AttributeError) as error:  # a metrics.json edited or replaced by hand
        logging.getLogger("iiae.runs").warning(
            "iiae: %s not refreshed: %s lacks the training facts it shows (%s: %s)", run_dir / REPORT,
            run_dir / "metrics.json", type(error).__name__, quote(str(error))[1:-1])  # fmt: skip
        return None


def config_section(values: dict) -> str:
    """The last section of a run's report.md: the run's config, as YAML."""
    return f"## Config\n\n```yaml\n{yaml.safe_dump(values, sort_keys=False).rstrip()}\n```\n"
