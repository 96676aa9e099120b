"""Compare attribution methods with the further-training gold standard: metrics and reports.

Everything here computes from a gold standard and scores; reading and writing a run
directory is :mod:`fimo.experiments.rundir`'s job (``fimo report`` and ``fimo compare``:
:mod:`fimo.experiments.outputs`). The package is also callable:
``fimo.evaluate(run_dir_or_gold, scores=None, ...)`` is :func:`fimo.evaluate.core.evaluate`,
returning an :class:`Evaluation` whose tables are pandas DataFrames when pandas is
importable; given a run directory it reads it through the run directory's module.

>>> import numpy as np, fimo
>>> rng = np.random.default_rng(0)
>>> gold = fimo.GoldStandard(rng.normal(size=(4, 1, 2)), rng.normal(size=(4, 1, 2, 3)),
...                          [5], [1], [0, 1, 2], [0, 1], [0, 1, 2, 3])
>>> s = fimo.Scores(rng.normal(size=(2, 3)), [0, 1], [0, 1, 2], "m")
>>> ev = fimo.evaluate(gold, s, frames=False)
>>> sorted(ev.keys())
['by_checkpoint', 'calibration', 'examples', 'noise_floor', 'seed_count', 'sorted_curves']
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
from fimo.evaluate.narrative import headline, summary, summary_sentences
from fimo.evaluate.plots import (
    evaluation_figures,
    plot_agreement,
    plot_agreement_grid,
    plot_calibration,
    plot_seed_count,
    plot_sorted_curves,
    save_figure,
)
from fimo.evaluate.report import write_report
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
    "compute",
    "constant_rows",
    "cosine_rows",
    "describe",
    "evaluate",
    "evaluation_figures",
    "fit_scale",
    "headline",
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
    "write_report",
    "write_table",
]


class _CallableModule(types.ModuleType):
    """Lets ``fimo.evaluate(...)`` call :func:`evaluate` while ``fimo.evaluate.metrics`` and
    the other submodules stay reachable as attributes."""

    def __call__(self, source, scores=None, **options):
        return evaluate(source, scores, **options)


sys.modules[__name__].__class__ = _CallableModule
