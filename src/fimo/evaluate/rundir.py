"""Evaluation of a run directory: its tables, plots and report, from the files alone.

Written into the run directory (DESIGN.md ◆ Runs are data)::

    metrics/<table>.csv      by_checkpoint, seed_count, noise_floor, calibration,
                             sorted_curves, examples (and .parquet with pyarrow)
    plots/<figure>.png|svg   cosine, agreement_centred, agreement_adjusted, seed_count,
                             calibration, sorted_scores
    report.html              one self-contained page
    manifest.json            gains an "evaluation" section: the settings used, the tables,
                             and the fingerprints of scores brought in with `fimo compare`

Scores in ``scores/`` are used when they belong to the run's methods (and carry the
fingerprint the manifest records for them) or were brought in with ``fimo compare``
(``settings["origin"] == "external"``); any other file there is left out, with a note.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from fimo.errors import InputError, check_choice
from fimo.evaluate.core import TABLES, Evaluation, compute
from fimo.evaluate.plots import evaluation_figures, save_figure
from fimo.evaluate.report import write_report
from fimo.evaluate.tables import write_table
from fimo.io import fingerprint, write_json

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RunFiles:
    """What :func:`load_run` found in a run directory."""

    path: Path
    gold: object
    scores: dict
    config: object | None
    settings: dict
    manifest: dict
    train: object | None = None
    test: object | None = None
    notes: list[str] = field(default_factory=list)


def _load_config(path: Path, notes: list[str]):
    """(Config or None, settings dict) from ``config.toml``."""
    import tomllib

    from fimo.experiments.config import load_config

    file = path / "config.toml"
    if not file.is_file():
        notes.append("config.toml is missing: settings and examples' data are not shown.")
        return None, {}
    try:
        config = load_config(file)
        return config, config.to_dict()
    except InputError as exc:
        notes.append(f"config.toml could not be read as a fimo configuration ({exc}).")
        try:
            return None, tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError:
            return None, {}


def run_scores(path, config=None, manifest: dict | None = None, notes: list | None = None):
    """The scores in ``<path>/scores`` that belong to the run (see the module's docstring).

    Returns ``{name: Scores}``: the configuration's methods first, in its order, then the
    external ones by name.

    >>> # run_scores("runs/adult", load_config("runs/adult/config.toml"))
    """
    from fimo.scores import Scores

    notes = [] if notes is None else notes
    folder = Path(path) / "scores"
    names = list(config.methods.names) if config is not None else []
    recorded = ((manifest or {}).get("fingerprints") or {}).get("scores") or {}
    found = {}
    for file in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            sc = Scores.load(file)
        except Exception as exc:  # a damaged file must not stop the report
            notes.append(f"scores/{file.name} could not be read ({exc}); left out.")
            continue
        name = file.stem
        external = sc.settings.get("origin") == "external"
        if config is not None and name not in names and not external:
            notes.append(f"scores/{file.name} is not one of this run's methods; left out.")
            continue
        fp = sc.settings.get("fingerprint")
        if not external and name in recorded and fp is not None and fp != recorded[name]:
            notes.append(
                f"scores/{file.name} was made under another fingerprint ({fp}) than the "
                f"manifest records ({recorded[name]}); left out."
            )
            continue
        found[name] = sc
    order = [n for n in names if n in found] + sorted(n for n in found if n not in names)
    return {n: found[n] for n in order}


def model_summary(model: dict) -> str:
    """One line on the final model and its baseline, e.g. "Final model: test accuracy 0.8590,
    test loss 0.3110 (logistic regression: accuracy 0.8480, loss 0.3250)"."""

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
    """The report's notes on the final model and the gold standard's settings.

    >>> # run_notes(config, manifest, gold)
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
    skipped = (manifest or {}).get("skipped_methods") or {}
    notes.extend(f"Skipped {name}: {reason}" for name, reason in skipped.items())
    return notes


def load_run(path) -> RunFiles:
    """The gold standard, scores, configuration, manifest and data of a run directory.

    >>> # run = load_run("runs/adult"); run.gold, list(run.scores)
    """
    from fimo.further.gold import GoldStandard

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"run directory {str(path)!r} does not exist")
    notes: list[str] = []
    gold = GoldStandard.load(path)
    config, settings = _load_config(path, notes)
    manifest = {}
    if (path / "manifest.json").is_file():
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            notes.append(f"manifest.json could not be read ({exc}).")
    scores = run_scores(path, config, manifest, notes)
    train = test = None
    if config is not None:
        from fimo.experiments.build import load_data

        try:
            train, test = load_data(config)
        except Exception as exc:  # the report is still useful without the data
            notes.append(f"The data {config.data.dataset!r} could not be loaded ({exc}).")
    return RunFiles(path, gold, scores, config, settings, manifest, train, test, notes)


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
    ``report``).

    >>> # write_evaluation("runs/adult", ev, title="fimo: adult", settings=..., manifest=...)
    """
    out = Path(out)
    written: dict[str, list[Path]] = {"metrics": [], "plots": [], "report": []}
    for name in TABLES:
        written["metrics"] += write_table(out / "metrics", name, ev.rows[name])
    png = _figures(out / "plots", ev)
    written["plots"] += [out / "plots" / f"{n}.{fmt}" for n in png for fmt in ("png", "svg")]
    if manifest is not None:
        manifest["evaluation"] = {
            "settings": ev.options,
            "tables": [p.relative_to(out).as_posix() for p in written["metrics"]],
            "external_scores": _external(ev.scores),
        }
        write_json(out / "manifest.json", manifest)
    written["report"].append(
        write_report(
            out / "report.html",
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


def _figures(folder: Path, ev: Evaluation) -> dict[str, bytes]:
    """Draw and save every figure, or reuse the files drawn from the same inputs.

    The figures are a function of the gold standard, the scores on its instances, the
    evaluation settings and the plotting code; their fingerprint is kept in
    ``plots/fingerprint.json``. Returns the PNG bytes by figure name.
    """
    import numpy as np

    from fimo.evaluate import plots
    from fimo.evaluate.metrics import method_values

    g = ev.gold
    stamp = fingerprint(
        *(np.asarray(getattr(g, k)) for k in ("loss_full", "loss_without", "steps", "epochs")),
        g.left_out,
        g.test,
        {name: method_values(g, sc) for name, sc in ev.scores.items()},
        list(ev.scores),
        ev.options,
        Path(plots.__file__).read_text(encoding="utf-8"),
    )
    record = folder / "fingerprint.json"
    try:
        old = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        old = {}
    names = old.get("figures", [])
    files = [folder / f"{n}.{fmt}" for n in names for fmt in ("png", "svg")]
    if old.get("fingerprint") == stamp and names and all(f.is_file() for f in files):
        return {n: (folder / f"{n}.png").read_bytes() for n in names}
    png = {}
    for name, fig in evaluation_figures(ev).items():
        png[name] = save_figure(fig, folder / name)["png"]
    for name in set(names) - set(png):  # figures the new evaluation no longer draws
        for fmt in ("png", "svg"):
            (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    write_json(record, {"fingerprint": stamp, "figures": list(png)})
    return png


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
    """Evaluate a run's scores (plus any brought in with ``fimo compare``) and write the
    tables, figures and report into ``out``. The pipeline's last stage.

    >>> # ev = evaluate_run(out, gold, scores, config, manifest, train=train, test=test)
    """
    out = Path(out)
    merged = dict(scores)
    extra_notes: list[str] = []
    for name, sc in run_scores(out, None, None, extra_notes).items():
        if name not in merged and sc.settings.get("origin") == "external":
            merged[name] = sc
    ev = compute(gold, merged, train=train, test=test, **options)
    title = f"fimo: {config.name}" if config is not None else f"fimo: {out.name}"
    write_evaluation(
        out,
        ev,
        title=title,
        settings=config.to_dict() if config is not None else {},
        manifest=manifest,
        notes=[*notes, *extra_notes],
    )
    return ev


def rebuild_report(path, **options) -> Evaluation:
    """``fimo report``: recompute every table, figure and the report from a run's files.

    >>> # ev = rebuild_report("runs/adult")
    """
    from fimo.experiments.pipeline import run_lock

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"run directory {str(path)!r} does not exist")
    with run_lock(path):
        run = load_run(path)
        return _rewrite(run, **options)


def _rewrite(run: RunFiles, **options) -> Evaluation:
    ev = compute(run.gold, run.scores, train=run.train, test=run.test, **options)
    name = run.config.name if run.config is not None else run.path.name
    write_evaluation(
        run.path,
        ev,
        title=f"fimo: {name}",
        settings=run.settings,
        manifest=run.manifest,
        notes=[*run_notes(run.config, run.manifest, run.gold), *run.notes],
    )
    return ev


def compare_run(
    path,
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

    >>> # s, ev = compare_run("runs/adult", "if.npy", "dattri_if", "train,test")
    """
    from fimo.experiments.pipeline import run_lock
    from fimo.methods import ALL_METHOD_NAMES
    from fimo.scores import ORIENTATIONS, SIGNS, Scores, load_indices, load_matrix

    path = Path(path)
    if not NAME.match(name or ""):
        raise InputError(
            f"--name: got {name!r}; use letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (it becomes scores/<name>.npz)"
        )
    if name in ALL_METHOD_NAMES:
        raise InputError(
            f"--name: {name!r} is a built-in method's name; choose another, e.g. "
            f"'{name}_external', so that fimo never mistakes it for its own scores"
        )
    check_choice("--orientation", orientation, list(ORIENTATIONS))
    check_choice("--sign", sign, list(SIGNS))
    if not path.is_dir():
        raise InputError(f"run directory {str(path)!r} does not exist")
    matrix = load_matrix(scores_file, key)
    if getattr(matrix, "ndim", 0) != 2:
        raise InputError(
            f"{scores_file}: expected a 2-D score matrix; got shape {tuple(matrix.shape)} (for "
            "one matrix per checkpoint, save fimo.Scores(values, test, train, name, "
            "{'origin': 'external'}, steps=...) as scores/<name>.npz and run fimo report)"
        )
    with run_lock(path):
        run = load_run(path)
        layout = ORIENTATIONS[orientation]
        rows_, cols = matrix.shape if layout == "test,train" else matrix.shape[::-1]
        gold = run.gold
        test = gold.test if test_indices is None else _indices(test_indices, load_indices)
        if train_indices is not None:
            train = _indices(train_indices, load_indices)
        else:
            train = _default_train(run, cols)
        if (rows_, cols) != (len(test), 0 if train is None else len(train)):
            raise InputError(_shape_message(matrix.shape, orientation, layout, run, test, train))
        scores = Scores.from_external(
            matrix, orientation, sign, test, train, name, source=Path(scores_file).name
        )
        missing = [int(t) for t in gold.test if int(t) not in set(test.tolist())]
        if missing:
            raise InputError(
                f"scores {name!r} cover {len(test)} test instances but not the gold standard's "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; pass --test-indices"
            )
        have = set(scores.train.tolist())
        no_train = [int(i) for i in gold.left_out if int(i) not in have]
        if no_train:
            raise InputError(
                f"scores {name!r} do not cover the left-out training instances "
                f"{no_train[:5]}{' ...' if len(no_train) > 5 else ''}; pass --train-indices"
            )
        target = path / "scores" / f"{name}.npz"
        if target.exists():
            old = Scores.load(target)
            if old.settings.get("origin") != "external":
                raise InputError(
                    f"scores/{name}.npz holds a method computed by fimo; choose another --name"
                )
        scores.save(target)
        run.scores = run_scores(path, run.config, run.manifest, [])
        return scores, _rewrite(run, **options)


def _indices(value, loader):
    import numpy as np

    if isinstance(value, str | Path):
        return loader(value)
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _train_size(run: RunFiles) -> int | None:
    if run.train is not None:
        return len(run.train)
    sizes = [len(sc.train) for sc in run.scores.values() if sc.settings.get("origin") != "external"]
    full = [n for n in sizes if n > len(run.gold.left_out)]
    return max(full) if full else None


def _default_train(run: RunFiles, cols: int):
    import numpy as np

    if cols == len(run.gold.left_out):
        return run.gold.left_out
    n = _train_size(run)
    if n is not None and cols == n:
        return np.arange(n)
    return None


def _shape_message(shape, orientation, layout, run, test, train) -> str:
    L = len(run.gold.left_out)
    n = _train_size(run)
    want_cols = (
        f"{len(train)} training instances (from --train-indices)"
        if train is not None
        else f"{L} (the left-out instances)" + (f" or {n} (the whole training set)" if n else "")
    )
    read_as = orientation if orientation == layout else f"{orientation} ({layout})"
    text = (
        f"the matrix has shape {tuple(shape)}; read as {read_as} it is "
        f"{shape[0] if layout == 'test,train' else shape[1]} test × "
        f"{shape[1] if layout == 'test,train' else shape[0]} train, but the run needs "
        f"{len(test)} test rows and {want_cols} columns"
    )
    other = shape if layout == "train,test" else shape[::-1]
    if other[0] == len(test) and (
        (train is not None and other[1] == len(train)) or other[1] in (L, n)
    ):
        text += "; the other orientation would fit: check --orientation"
    else:
        text += "; pass --test-indices / --train-indices if it covers other instances"
    return text
