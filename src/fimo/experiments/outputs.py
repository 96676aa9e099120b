"""A run's evaluation on disk: its tables, figures and report, and rebuilding them.

The pipeline's last stages (:func:`evaluate_run`), ``fimo report`` (:func:`rebuild_report`)
and ``fimo compare`` (:func:`compare_run`) all end here: :func:`fimo.evaluate.compute`
makes the tables from the gold standard and the scores, and :func:`write_evaluation` writes
``metrics/``, ``plots/`` and ``report.html`` where the :class:`RunDir` names them; the
manifest gains an ``evaluation`` section (the settings used, the tables, and the
fingerprints of scores brought in with ``fimo compare``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from fimo.evaluate.core import GROUP_TABLES, TABLES, Evaluation, compute
from fimo.evaluate.plots import evaluation_figures, figures_wanted, save_figure
from fimo.evaluate.report import FiguresNotDrawn, write_report
from fimo.evaluate.tables import write_table
from fimo.experiments.rundir import RunDir, RunFiles
from fimo.io import fingerprint, read_small_text, write_json


def model_summary(model: dict) -> str:
    """One line on the final model and its baseline.

    >>> model_summary({"test_loss": 0.311, "baseline": "linear regression",
    ...                "baseline_test_loss": 0.325})
    'Final model: test loss 0.3110 (linear regression: loss 0.3250)'
    """

    def describe(prefix: str) -> str:
        parts = []
        if f"{prefix}test_accuracy" in model:
            parts.append(f"accuracy {model[f'{prefix}test_accuracy']:.4f}")
        parts.append(f"loss {model.get(f'{prefix}test_loss', math.nan):.4f}")
        return ", ".join(parts)

    line = f"Final model: test {describe('')}"
    if model.get("baseline"):
        line += f" ({model['baseline']}: {describe('baseline_')})"
    return line


def run_notes(config, manifest: dict, gold) -> list[str]:
    """The report's notes on the final model, the gold standard's settings and the methods
    that were skipped.

    >>> run_notes(None, {"model": {"test_loss": 0.5}, "skipped_methods": {"trak": "too big"}},
    ...           gold=None)
    ['Final model: test loss 0.5000.', 'Skipped trak: too big']
    """
    notes = []
    model = (manifest or {}).get("model") or {}
    if model:
        notes.append(model_summary(model) + ".")
    if config is not None:
        f = config.further
        notes.append(
            f"Gold standard: {len(gold.seeds)} seeds × {len(gold.left_out)} left-out instances "
            f"× {len(gold.test)} test instances, scheme {f.scheme!r}, {f.optimizer} lr "
            f"{f.lr:g}, {f.epochs} epochs, {config.gold.dtype}."
        )
        if getattr(gold, "groups", None) is not None:
            low, high = int(gold.groups.sizes().min()), int(gold.groups.sizes().max())
            size = f"{low}" if low == high else f"{low} to {high}"
            notes.append(
                f"Group runs: {len(gold.groups)} groups ({config.groups.describe()}) of "
                f"{size} training instances, in every seed."
            )
    skipped = (manifest or {}).get("skipped_methods") or {}
    notes.extend(f"Skipped {name}: {reason}" for name, reason in skipped.items())
    return notes


def _external(scores: dict) -> dict:
    return {
        name: {k: sc.settings[k] for k in ("fingerprint", "source") if k in sc.settings}
        for name, sc in scores.items()
        if sc.settings.get("origin") == "external"
    }


def write_evaluation(
    out,
    ev: Evaluation,
    *,
    title: str,
    settings: dict | None = None,
    manifest: dict | None = None,
    notes=(),
) -> dict[str, list[Path]]:
    """Write an evaluation's tables, figures and report into the run directory ``out``.

    ``manifest`` (when given) gains an ``evaluation`` section and is written back to
    ``manifest.json``. Returns the paths written, by kind (``metrics``, ``plots``,
    ``report``). With every figure it takes a few seconds (the tests of ``fimo report``
    exercise that); the example writes an evaluation whose tables are empty, so no figure
    is drawn:

    >>> import tempfile
    >>> import numpy as np
    >>> from fimo import GoldStandard
    >>> gold = GoldStandard(np.zeros((2, 1, 1)), np.zeros((2, 1, 1, 3)), [5], [1.0],
    ...                     [0, 1, 2], [0], [0, 1])
    >>> ev = Evaluation(gold, {}, rows={name: [] for name in TABLES})
    >>> folder = tempfile.TemporaryDirectory()
    >>> manifest = {}
    >>> written = write_evaluation(folder.name, ev, title="tiny", manifest=manifest)
    >>> sorted({p.stem for p in written["metrics"]})  # CSV, and Parquet where pyarrow is
    ['by_checkpoint', 'calibration', 'examples', 'noise_floor', 'seed_count', 'sorted_curves']
    >>> len(written["plots"]), written["report"][0].name
    (0, 'report.html')
    >>> manifest["evaluation"]["tables"][0]
    'metrics/by_checkpoint.csv'
    >>> folder.cleanup()
    """
    draw = figures_wanted()  # a bad FIMO_FIGURES stops here, before anything is written
    run = out if isinstance(out, RunDir) else RunDir(out)
    written: dict[str, list[Path]] = {"metrics": [], "plots": [], "report": []}
    for name in TABLES:
        written["metrics"] += write_table(run.metrics_dir, name, ev.rows[name])
    for name in GROUP_TABLES:  # only for a gold standard with group runs; never a stale one
        if name in ev.rows:
            written["metrics"] += write_table(run.metrics_dir, name, ev.rows[name])
        else:
            for suffix in (".csv", ".csv.sha256", ".parquet"):
                (run.metrics_dir / f"{name}{suffix}").unlink(missing_ok=True)
    png = _figures(run, ev, draw)
    written["plots"] += [run.plots_dir / f"{n}.{fmt}" for n in png for fmt in ("png", "svg")]
    if manifest is not None:
        manifest["evaluation"] = {
            "settings": ev.options,
            "tables": [p.relative_to(run.path).as_posix() for p in written["metrics"]],
            "external_scores": _external(ev.scores),
        }
        run.write_manifest(manifest)
    written["report"].append(
        write_report(
            run.report,
            ev.rows["by_checkpoint"],
            title=title,
            settings=settings or {},
            manifest=manifest or {},
            notes=list(notes),
            evaluation=ev,
            figures=png,
        )
    )
    return written


def _figures_stamp(ev: Evaluation) -> str:
    """The fingerprint of what the figures are drawn from: the gold standard, the scores on
    its instances, the evaluation settings and the plotting code."""
    import numpy as np

    from fimo.evaluate import plots
    from fimo.evaluate.metrics import method_values

    g = ev.gold
    return fingerprint(
        *(np.asarray(getattr(g, k)) for k in ("loss_full", "loss_without", "steps", "epochs")),
        g.left_out,
        g.test,
        {name: method_values(g, sc) for name, sc in ev.scores.items()},
        list(ev.scores),
        ev.options,
        Path(plots.__file__).read_text(encoding="utf-8"),
    )


def _figures(run: RunDir, ev: Evaluation, draw: bool) -> dict[str, bytes]:
    """Draw and save every figure, or reuse the files drawn from the same inputs (their
    fingerprint is kept in ``plots/fingerprint.json``). Returns the PNG bytes by name. Without
    ``draw`` (``FIMO_FIGURES=0``) it draws none and removes figures of other inputs."""
    folder, record = run.plots_dir, run.plots_fingerprint
    stamp = _figures_stamp(ev)
    try:
        old = json.loads(read_small_text(record))
    except (OSError, ValueError):  # absent or damaged: the figures are drawn again
        old = {}
    old = old if isinstance(old, dict) else {}
    names = old.get("figures", [])
    files = [folder / f"{n}.{fmt}" for n in names for fmt in ("png", "svg")]
    if old.get("fingerprint") == stamp and names and all(f.is_file() for f in files):
        return {n: (folder / f"{n}.png").read_bytes() for n in names}
    if not draw:  # FIMO_FIGURES=0: none drawn, and none left from other numbers
        for path in files:
            path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        return FiguresNotDrawn()
    png = {}
    for name, fig in evaluation_figures(ev).items():
        png[name] = save_figure(fig, folder / name)["png"]
    for name in set(names) - set(png):  # figures the new evaluation no longer draws
        for fmt in ("png", "svg"):
            (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    write_json(record, {"fingerprint": stamp, "figures": list(png)})
    return png


def group_names(manifest) -> list[str] | None:
    """The names of the gold standard's groups as the manifest records them (None for random
    groups, or without groups).

    >>> group_names({"gold_standard": {"groups": {"names": ["<=50K", ">50K"]}}}), group_names({})
    (['<=50K', '>50K'], None)
    """
    record = ((manifest or {}).get("gold_standard") or {}).get("groups") or {}
    return record.get("names")


def evaluate_run(
    out,
    gold,
    scores: dict,
    config=None,
    manifest: dict | None = None,
    *,
    train=None,
    test=None,
    notes=(),
    **options,
) -> Evaluation:
    """The pipeline's evaluation and report stages: evaluate a run's scores (plus any brought
    in with ``fimo compare``) and write the tables, figures and report into ``out``.

    Reads ``scores/`` (the external scores only); writes ``metrics/``, ``plots/``,
    ``report.html`` and ``manifest.json``. Scores that do not cover the gold standard are
    refused before anything is written (a full evaluation draws figures for seconds, see
    :func:`write_evaluation`):

    >>> import tempfile
    >>> import numpy as np
    >>> from fimo import GoldStandard, Scores
    >>> gold = GoldStandard(np.zeros((2, 1, 2)), np.zeros((2, 1, 2, 3)), [5], [1.0],
    ...                     [0, 1, 2], [0, 1], [0, 1])
    >>> s = Scores(np.ones((1, 3)), test=[0], train=[0, 1, 2], method="m")
    >>> folder = tempfile.TemporaryDirectory()
    >>> evaluate_run(folder.name, gold, {"m": s})
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: scores 'm' (1 test × 3 train) do not cover the gold standard: ...
    >>> list(Path(folder.name).iterdir())
    []
    >>> folder.cleanup()
    """
    run = out if isinstance(out, RunDir) else RunDir(out)
    merged = dict(scores)
    extra_notes: list[str] = []
    for name, sc in run.run_scores(None, None, extra_notes).items():
        if name not in merged and sc.settings.get("origin") == "external":
            merged[name] = sc
    options.setdefault("group_names", group_names(manifest))
    ev = compute(gold, merged, train=train, test=test, **options)
    title = f"fimo: {config.name}" if config is not None else f"fimo: {run.path.name}"
    write_evaluation(
        run,
        ev,
        title=title,
        settings=config.to_dict() if config is not None else {},
        manifest=manifest,
        notes=[*notes, *extra_notes],
    )
    return ev


def rebuild_report(path, **options) -> Evaluation:
    """``fimo report``: recompute every table, figure and the report from a run's files.

    >>> import tempfile
    >>> rebuild_report(tempfile.mkdtemp() + "/none")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: run directory '.../none' does not exist
    """
    run = RunDir(path)
    run.check_exists()
    figures_wanted()  # FIMO_FIGURES checked before the work
    with run.lock():
        return _rewrite(run.load(), **options)


def _rewrite(files: RunFiles, **options) -> Evaluation:
    """Compute the evaluation of a loaded run and write it back into its directory."""
    options.setdefault("group_names", group_names(files.manifest))
    ev = compute(files.gold, files.scores, train=files.train, test=files.test, **options)
    name = files.config.name if files.config is not None else files.path.name
    write_evaluation(
        files.path,
        ev,
        title=f"fimo: {name}",
        settings=files.settings,
        manifest=files.manifest,
        notes=[*run_notes(files.config, files.manifest, files.gold), *files.notes],
    )
    return ev


def compare_run(
    path: str | os.PathLike,
    scores_file,
    name: str,
    orientation: str,
    sign: str = "helpful",
    test_indices=None,
    train_indices=None,
    key: str | None = None,
    **options,
):
    """``fimo compare``: bring in a score matrix made elsewhere, save it as
    ``scores/<name>.npz`` and rebuild the tables and the report with it.

    ``test_indices`` / ``train_indices`` (arrays or files, see
    :func:`fimo.scores.load_indices`) name the dataset indices of the matrix's rows and
    columns after orientation; by default the rows are the run's test instances and the
    columns either its left-out instances or the whole training set, whichever fits.
    Returns ``(scores, evaluation)``.

    >>> compare_run("runs/adult", "if.npy", "grad_dot", "train,test")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: --name: 'grad_dot' is a built-in method's name; ...
    """
    run = RunDir(path)
    matrix = run.read_external(scores_file, name, orientation, sign, key)
    with run.lock():
        files = run.load()
        scores = run.add_external(
            files,
            matrix,
            name,
            orientation,
            sign,
            Path(scores_file).name,
            test_indices,
            train_indices,
        )
        return scores, _rewrite(files, **options)
