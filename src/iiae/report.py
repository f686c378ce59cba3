"""report.md of a run: what was trained, how well the codes retrieve, the paper's numbers beside ours."""

from __future__ import annotations

from pathlib import Path

import yaml

from iiae.config import ExperimentConfig
from iiae.evaluation import format_retrieval_table

# Paper keys in configs (``paper:`` section) and the retrieval direction they compare with.
PAPER_KEYS = {"shared_x_to_y": "iiae_x_to_y", "shared_y_to_x": "iiae_y_to_x"}


def retrieval_markdown(metrics: dict) -> str:
    """Markdown table of the four retrieval directions, with the paper's IIAE number where the config has one."""
    paper = metrics.get("paper", {})
    lines = [
        "| direction | top-1 % | hits | recall@5 % | recall@10 % | median rank | paper (IIAE) top-1 % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for direction, row in metrics["retrieval"].items():
        reference = paper.get(PAPER_KEYS.get(direction, ""), None)
        lines.append(
            f"| {direction} | {row['top1']:.2f} | {row['hits']}/{row['count']} | {row['recall_at_5']:.2f} | "
            f"{row['recall_at_10']:.2f} | {row['median_rank']:.1f} | "
            f"{'' if reference is None else f'{reference:.1f}'} |"
        )
    return "\n".join(lines)


def write_report(config: ExperimentConfig, metrics: dict, out_dir: str | Path) -> Path:
    """Write ``report.md`` next to the figures it shows."""
    out_dir = Path(out_dir)
    count = metrics["test_pairs"]
    text = f"""# IIAE run: {config.name}

Data: {metrics['data_source']}; {metrics['train_pairs']} training pairs, {metrics['test_pairs']} test pairs.
Training: {metrics['steps']} steps in {metrics['training_seconds']:.0f} s ({metrics['threads']} threads,
torch {metrics['torch']}); {metrics['parameters']:,} parameters.

## Cross-domain retrieval (test pairs, L2 nearest neighbour among all {count} candidates)

Shared codes (r^x, r^y means) should find the partner; exclusive codes (q(z^x|x), q(z^y|y) means) should not
(chance: {100 / max(count, 1):.2f} %). The paper's numbers are for its own setting (see the config's `paper`).

{retrieval_markdown(metrics)}

```
{format_retrieval_table(metrics['retrieval'])}
```

## Translation

Rows: input x; X→Y with r^x(x)'s mean and three z^y drawn from the prior; X→Y with z^y of the paired y;
then the same from y to X.

![translation](translation.png)

## Loss terms

![loss curves](loss_curves.png)

## Config

```yaml
{yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip()}
```
"""
    path = out_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path
