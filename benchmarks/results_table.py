"""Summary tables of finished runs for docs/results.md.

For each run directory: the final model beside its baseline, the gold standard's size and
the run's time, then each method's centred cosine and Spearman with the gold standard at the
first and last checkpoint and at its peak (with the step of the peak).

    python benchmarks/results_table.py runs/adult runs/credit ...
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def _rows(run: Path) -> dict[tuple[str, str], list[dict]]:
    by = defaultdict(list)
    with open(run / "metrics" / "by_checkpoint.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["centred"] == "true" and row["metric"] in ("cosine", "spearman"):
                by[(row["method"], row["metric"])].append(row)
    return by


def _cell(row: dict) -> str:
    return f"{float(row['mean']):.3f}"


def table(run: Path) -> str:
    manifest = json.loads((run / "manifest.json").read_text())
    from fimo.experiments.outputs import model_summary

    lines = [f"### {run.name}", ""]
    model = manifest.get("model", {})
    gold = manifest.get("gold_standard", {})
    seconds = sum(
        v
        for k, v in manifest.get("timings_seconds", {}).items()
        if k in ("final_training", "further_training", "methods")
    )
    lines.append(
        f"{model_summary(model)}. Gold standard: {len(gold.get('seeds', []))} seeds × "
        f"{len(gold.get('left_out', []))} left out × {gold['test'][1] - gold['test'][0]} test, "
        f"{len(gold.get('steps', []))} checkpoints (steps {gold['steps'][0]}–{gold['steps'][-1]}). "
        f"Time: {seconds / 60:.1f} min."
    )
    skipped = manifest.get("skipped_methods") or {}
    for name, reason in skipped.items():
        lines.append(f"Skipped {name}: {reason}")
    lines += [
        "",
        "| method | cosine first | cosine last | cosine peak (step) | Spearman first | "
        "Spearman last | Spearman peak (step) |",
        "|---|---|---|---|---|---|---|",
    ]
    by = _rows(run)
    methods = sorted(
        {m for m, _ in by},
        key=lambda m: -max(float(r["mean"]) for r in by[(m, "cosine")]),
    )
    for method in methods:
        cells = []
        for metric in ("cosine", "spearman"):
            rows = sorted(by[(method, metric)], key=lambda r: int(r["step"]))
            peak = max(rows, key=lambda r: float(r["mean"]))
            cells += [_cell(rows[0]), _cell(rows[-1]), f"{_cell(peak)} ({peak['step']})"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(Path(arg)))
