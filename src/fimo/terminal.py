"""What the command line prints: the agreement of each method as a rich table.

The numbers come from :func:`fimo.evaluate.narrative.summary`, the same as the report's.
"""

from __future__ import annotations

import math

from fimo.evaluate.formatting import epoch_text, mean_sem_text
from fimo.evaluate.narrative import summary

__all__ = ["describe_text", "rich_attribution_table", "rich_summary_table"]


def rich_summary_table(
    rows, metric: str = "cosine", centred: bool = True, also: str | None = "spearman"
):
    """A ``rich.table.Table``: per method, ``metric`` at the first and last checkpoints
    (± SEM), its peak (and where), and ``also`` (default Spearman) at the first and last.

    Checkpoints are named by epoch when they fall on whole epochs, else by step (a run that
    records within its first epoch).

    >>> from rich.console import Console
    >>> rows = [{"method": "a", "checkpoint": c, "step": 5 * c, "epoch": c + 1.0,
    ...          "metric": "cosine", "centred": True, "mean": v, "sem": 0.01, "n": 4}
    ...         for c, v in ((0, 0.5), (1, 0.7))]
    >>> console = Console(width=100, record=True, file=open("/dev/null", "w"))
    >>> console.print(rich_summary_table(rows))
    >>> print(console.export_text().splitlines()[4].strip())
    │ a      │          0.500 ± 0.010 │         0.700 ± 0.010 │           0.700 (2) │
    """
    from rich.table import Table

    rows = list(rows)
    entries = summary(rows, metric, centred)
    other = {}
    if also and also != metric:
        other = {e["method"]: e for e in summary(rows, also, centred)}
    by = _position_unit(rows)
    e_first = entries[0]["first"][by] if entries else math.nan
    e_last = entries[0]["last"][by] if entries else math.nan

    title = f"Agreement with the {'centred' if centred else 'uncentred'} gold standard"
    table = Table(title=title, caption="mean ± SEM over test instances")
    table.add_column("method", style="bold")
    table.add_column(f"{metric} first ({by} {epoch_text(e_first)})", justify="right")
    table.add_column(f"{metric} last ({by} {epoch_text(e_last)})", justify="right")
    table.add_column(f"{metric} peak ({by})", justify="right")
    if other:
        table.add_column(f"{also} first", justify="right")
        table.add_column(f"{also} last", justify="right")
    for e in entries:
        peak = e["peak"]
        cells = [
            e["method"],
            mean_sem_text(e["first"]["mean"], e["first"]["sem"], 3),
            mean_sem_text(e["last"]["mean"], e["last"]["sem"], 3),
            f"{mean_sem_text(peak['mean'], None, 3)} ({epoch_text(peak[by])})" if peak else "n/a",
        ]
        if other:
            o = other.get(e["method"])
            cells += (
                [
                    mean_sem_text(o["first"]["mean"], o["first"]["sem"], 3),
                    mean_sem_text(o["last"]["mean"], o["last"]["sem"], 3),
                ]
                if o
                else ["n/a", "n/a"]
            )
        table.add_row(*cells)
    return table


def _position_unit(rows) -> str:
    """``"epoch"`` when every checkpoint falls on a whole epoch, else ``"step"``.

    >>> _position_unit([{"epoch": 1.0, "step": 10}, {"epoch": 2.0, "step": 20}])
    'epoch'
    >>> _position_unit([{"epoch": 0.0117, "step": 3}])
    'step'
    """
    epochs = [float(r["epoch"]) for r in rows if "epoch" in r]
    return "epoch" if all(math.isfinite(e) and e == int(e) for e in epochs) else "step"


def describe_text(desc, width: int = 60) -> str:
    """A :func:`fimo.evaluate.describe` dict as one short line: the label, then the values.

    >>> describe_text({"label": ">50K", "age": "38", "education": "Masters"})
    '>50K · age 38, education Masters'
    >>> describe_text({"label": "7", "image": "data:image/png;base64,..."})
    '7 · [image]'
    """
    desc = dict(desc or {})
    parts = [str(desc.pop("label"))] if "label" in desc else []
    if desc.pop("image", None) is not None:
        parts.append("[image]")
    if "text" in desc:
        parts.append(f"“{desc.pop('text')}”")
    if desc:
        parts.append(", ".join(f"{k} {v}" for k, v in desc.items()))
    text = " · ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def rich_attribution_table(result, test: int):
    """A ``rich.table.Table`` of one test instance's most helpful and most harmful training
    instances (an :class:`~fimo.experiments.attribute.Attribution`), each decoded.

    >>> import numpy as np
    >>> from rich.console import Console
    >>> from fimo.experiments.attribute import Attribution
    >>> from fimo.evaluate.attribution import top_instances
    >>> from fimo.scores import Scores
    >>> s = Scores(np.array([[0.5, -0.2, 0.1]]), [7], [4, 5, 6], "grad_dot")
    >>> result = Attribution(s, None, None, top_instances(s.values, [7], [4, 5, 6], 1), {})
    >>> console = Console(width=100, record=True, file=open("/dev/null", "w"))
    >>> console.print(rich_attribution_table(result, 7))
    >>> print(console.export_text().splitlines()[4].strip())
    │ helpful │    1 │    #4 │ +0.5  │             │
    """
    from rich.table import Table

    from fimo.evaluate.attribution import score_text

    desc = result.descriptions
    shown = describe_text(desc.get("test", {}).get(test), 80)
    table = Table(
        title=f"Test instance #{test}" + (f": {shown}" if shown else ""),
        caption="positive = helpful: leaving the training instance out would raise the test "
        "loss" + ("; ± SEM over seeds" if result.sem is not None else ""),
    )
    for column, justify in (("", "left"), ("rank", "right"), ("train", "right")):
        table.add_column(column, justify=justify)
    table.add_column("score", justify="left")
    table.add_column("instance", justify="left", overflow="fold")
    for row in result.top:
        if row["test"] != test:
            continue
        table.add_row(
            row["direction"] if row["rank"] == 1 else "",
            str(row["rank"]),
            f"#{row['train']}",
            score_text(row["score"], row["sem"]),
            describe_text(desc.get("train", {}).get(row["train"])),
        )
    return table
