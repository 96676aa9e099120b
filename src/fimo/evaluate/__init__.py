"""Compare attribution methods with the further-training gold standard: metrics and reports.

The package is also callable: ``fimo.evaluate(run_dir_or_gold, scores=None, ...)`` is
:func:`fimo.evaluate.core.evaluate`, returning an :class:`Evaluation` whose tables are
pandas DataFrames when pandas is importable.

>>> import fimo
>>> # ev = fimo.evaluate("runs/adult")           # every table of a run
>>> # ev["by_checkpoint"], ev["seed_count"], ev["noise_floor"], ev["calibration"]
>>> # fimo.evaluate(gold, {"grad_dot": scores})   # or a gold standard and scores in memory
"""

import sys
import types

from fimo.evaluate.calibration import calibration, fit_scale
from fimo.evaluate.core import TABLES, Evaluation, as_scores, compute, evaluate
from fimo.evaluate.curves import sorted_curve, sorted_score_curves
from fimo.evaluate.examples import describe, most_influential, thumbnail
from fimo.evaluate.metrics import (
    ALL_METRICS,
    METRICS,
    agreement_by_checkpoint,
    constant_rows,
    cosine_rows,
    mean_sem,
    pearson_rows,
    sign_agreement_rows,
    spearman_rows,
    top_k_overlap_rows,
)
from fimo.evaluate.plots import (
    evaluation_figures,
    plot_agreement,
    plot_agreement_grid,
    plot_calibration,
    plot_seed_count,
    plot_sorted_curves,
    save_figure,
)
from fimo.evaluate.report import (
    headline,
    rich_summary_table,
    summary,
    summary_sentences,
    write_report,
)
from fimo.evaluate.rundir import (
    compare_run,
    evaluate_run,
    load_run,
    rebuild_report,
    write_evaluation,
)
from fimo.evaluate.seeds import noise_floor, seed_count_study, seed_counts, spearman_brown
from fimo.evaluate.tables import read_table, write_table

__all__ = [
    "ALL_METRICS",
    "METRICS",
    "TABLES",
    "Evaluation",
    "agreement_by_checkpoint",
    "as_scores",
    "calibration",
    "compare_run",
    "compute",
    "constant_rows",
    "cosine_rows",
    "describe",
    "evaluate",
    "evaluate_run",
    "evaluation_figures",
    "fit_scale",
    "headline",
    "load_run",
    "mean_sem",
    "most_influential",
    "noise_floor",
    "pearson_rows",
    "plot_agreement",
    "plot_agreement_grid",
    "plot_calibration",
    "plot_seed_count",
    "plot_sorted_curves",
    "read_table",
    "rebuild_report",
    "rich_summary_table",
    "save_figure",
    "seed_count_study",
    "seed_counts",
    "sign_agreement_rows",
    "sorted_curve",
    "sorted_score_curves",
    "spearman_brown",
    "spearman_rows",
    "summary",
    "summary_sentences",
    "thumbnail",
    "top_k_overlap_rows",
    "write_evaluation",
    "write_report",
    "write_table",
]


class _CallableModule(types.ModuleType):
    """Lets ``fimo.evaluate(...)`` call :func:`evaluate` while ``fimo.evaluate.metrics`` and
    the other submodules stay reachable as attributes."""

    def __call__(self, source, scores=None, **options):
        return evaluate(source, scores, **options)


sys.modules[__name__].__class__ = _CallableModule
