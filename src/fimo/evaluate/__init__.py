"""Compare attribution methods with the further-training gold standard: metrics and reports."""

from fimo.evaluate.metrics import (
    METRICS,
    agreement_by_checkpoint,
    cosine_rows,
    mean_sem,
    read_metrics_csv,
    spearman_rows,
    write_metrics_csv,
)
from fimo.evaluate.report import (
    plot_agreement,
    rich_summary_table,
    summary,
    summary_sentences,
    write_report,
)

__all__ = [
    "METRICS",
    "agreement_by_checkpoint",
    "cosine_rows",
    "mean_sem",
    "plot_agreement",
    "read_metrics_csv",
    "rich_summary_table",
    "spearman_rows",
    "summary",
    "summary_sentences",
    "write_metrics_csv",
    "write_report",
]
