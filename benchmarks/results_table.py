"""Summary tables and figures of finished runs for docs/results.md.

For each run directory: the final model beside its baseline, the gold standard's size and
the run's work time (summed over every invocation that made its results), then each method's centred cosine and Spearman with the gold standard at the
first and last checkpoint and at its peak (with the step of the peak), the noise ceiling at
the first and last checkpoint, and the seed-count table (the paper's Figs. 3 and 7: for k
seeds per gold standard, the best checkpoint's centred cosine averaged over the S // k
non-overlapping windows of k seeds).

    python benchmarks/results_table.py runs/adult runs/credit ...
    python benchmarks/results_table.py --plots docs/img runs/diabetes-paper

``--plots DIR`` also writes DIR/<run>-agreement.png and DIR/<run>-seeds.png from the run's
metric tables (the report's figures), so that anyone with the run can check them.
"""

from __future__ import annotations

import argparse
import csv
import json
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
    lines.append(
        f"{model_summary(model)}. Gold standard: {len(gold.get('seeds', []))} seeds × "
        f"{len(gold.get('left_out', []))} left out × {gold['test'][1] - gold['test'][0]} test, "
        f"{len(gold.get('steps', []))} checkpoints (steps {gold['steps'][0]}–{gold['steps'][-1]}). "
        f"{time_sentence(manifest)}"
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
    lines += ["", *noise_lines(run), "", *seed_lines(run)]
    return "\n".join(lines) + "\n"


def time_sentence(manifest: dict) -> str:
    """The work the run's results recorded, summed over every invocation (the manifest's
    ``work_seconds``), with what is unknown; a run made before that was recorded gives the
    time of its last invocation, said to be so.

    >>> time_sentence({"work_seconds": {"total": {"wall": 5400.0, "cpu": 5000.0},
    ...     "final_training": {"wall": 60.0, "cpu": 55.0},
    ...     "further_training": {"wall": 4800.0, "shards": 10, "shards_without_time": 0},
    ...     "methods": {"methods": 2, "methods_without_time": 0}}})
    'Work: 90.0 min (further training 80.0 min over 10 shards).'
    >>> time_sentence({"work_seconds": {"total": {"wall": 60.0}, "final_training": None,
    ...     "further_training": {"wall": 0.0, "shards": 100, "shards_without_time": 100},
    ...     "methods": {"methods": 12, "methods_without_time": 0}}})
    'Work: 1.0 min (further training 0.0 min over 100 shards; no time recorded for final training, 100 of 100 shards).'
    >>> time_sentence({"timings_seconds": {"further_training": 60.0, "methods": 6.0}})
    'Time of the last invocation only: 1.1 min.'
    """
    work = manifest.get("work_seconds")
    if not work:
        seconds = sum(
            v
            for k, v in manifest.get("timings_seconds", {}).items()
            if k in ("final_training", "further_training", "methods")
        )
        return f"Time of the last invocation only: {seconds / 60:.1f} min."
    further = work.get("further_training") or {}
    methods = work.get("methods") or {}
    unknown = []
    if not work.get("final_training"):
        unknown.append("final training")
    if further.get("shards_without_time"):
        unknown.append(f"{further['shards_without_time']} of {further['shards']} shards")
    if methods.get("methods_without_time"):
        unknown.append(f"{methods['methods_without_time']} of {methods['methods']} methods")
    detail = f"further training {further.get('wall', 0.0) / 60:.1f} min over "
    detail += f"{further.get('shards', 0)} shards"
    if unknown:
        detail += f"; no time recorded for {', '.join(unknown)}"
    return f"Work: {work['total']['wall'] / 60:.1f} min ({detail})."


def _metric_rows(run: Path, name: str) -> list[dict]:
    from fimo.evaluate.tables import read_table

    path = run / "metrics" / f"{name}.csv"
    return read_table(path) if path.exists() else []


def noise_lines(run: Path) -> list[str]:
    """The noise ceiling (a perfect method's centred cosine) at the first and last checkpoint."""
    rows = [
        r
        for r in _metric_rows(run, "noise_floor")
        if r["estimate"] == "ceiling" and r["metric"] == "cosine" and r["centred"]
    ]
    if not rows:
        return []
    rows.sort(key=lambda r: r["step"])
    first, last = rows[0], rows[-1]
    return [
        f"Noise ceiling (centred cosine, {first['seeds']} seeds): "
        f"{first['mean']:.3f} at step {first['step']}, {last['mean']:.3f} at step {last['step']}."
    ]


def seed_lines(run: Path) -> list[str]:
    """Peak centred cosine over checkpoints for each window size k, per method."""
    rows = [
        r
        for r in _metric_rows(run, "seed_count")
        if r["best"] and r["metric"] == "cosine" and r["centred"]
    ]
    if not rows:
        return []
    ks = sorted({r["k"] for r in rows})
    peak = {(r["method"], r["k"]): r for r in rows}
    methods = sorted({r["method"] for r in rows}, key=lambda m: -peak[(m, ks[-1])]["mean"])
    lines = [
        "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for m in methods:
        cells = [f"{peak[(m, k)]['mean']:.3f}" if (m, k) in peak else "" for k in ks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return ["Peak centred cosine by seeds per gold standard (k):", "", *lines]


def plots(run: Path, out: Path) -> list[Path]:
    """The agreement grid and the seed-count figure of the run, as PNG files in ``out``."""
    from fimo.evaluate.plots import plot_agreement_grid, plot_seed_count

    out.mkdir(parents=True, exist_ok=True)
    rows = _metric_rows(run, "by_checkpoint")
    noise = _metric_rows(run, "noise_floor")
    keep = [r for r in rows if r["metric"] in ("cosine", "spearman")]
    written = []
    for suffix, fig in (
        ("agreement", plot_agreement_grid(keep, centred=True, noise=noise)),
        ("seeds", plot_seed_count(_metric_rows(run, "seed_count"))),
    ):
        path = out / f"{run.name}-{suffix}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="finished run directories")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="also write the figures here")
    args = parser.parse_args()
    for run in args.runs:
        if not (run / "manifest.json").is_file():
            parser.error(f"{run} is not a finished run (no manifest.json); give a run directory")
    for run in args.runs:
        print(table(run))
        if args.plots is not None:
            for path in plots(run, args.plots):
                print(f"wrote {path}")


if __name__ == "__main__":
    main()
