"""``fimo attribute``: a score for every training instance and chosen test instances, from the
final model alone (no gold standard is computed).

The final model is trained or reused exactly as ``fimo run`` does (:func:`final_model`, in the
same run directory), then one method of :mod:`fimo.methods` scores every training instance
for the chosen test instances. A horizon-matched method (one that takes ``further``:
``unrolled_quadratic``, ``unrolled``) estimates the effect of leaving an instance out of
``steps`` steps of the configuration's further training (default: all of them). The scores go
to ``attribution/<method>.npz`` (with checksums), keyed by a fingerprint of everything that
determines them, so the same command again reuses them; the K most helpful and most harmful
instances of each test instance go to ``attribution.html``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from fimo.errors import InputError, check_choice
from fimo.evaluate.attribution import attribution_page, top_instances
from fimo.evaluate.examples import describe_examples
from fimo.experiments.config import Config, default_run_dir, load_config, with_overrides
from fimo.experiments.outputs import model_summary
from fimo.experiments.pipeline import DTYPES, final_model, progress_bar
from fimo.experiments.rundir import RunDir
from fimo.further.engine import FurtherSettings
from fimo.further.plan import steps_per_epoch
from fimo.io import checksum_matches, fingerprint, write_text
from fimo.methods import available_methods, get_method
from fimo.methods.cost import announcements
from fimo.methods.unrolled import unrolled_estimate
from fimo.methods.unrolled_quadratic import resolve_optimizer
from fimo.scores import Scores
from fimo.task import Task
from fimo.threads import ThreadChoice, applied, choose_threads

__all__ = ["DEFAULT_METHOD", "Attribution", "Request", "attribute", "horizon", "parse_indices"]

#: the default: horizon-matched (it answers "what if i were left out of further training?"),
#: deterministic (no seeds), from the final model's gradients and curvature alone
DEFAULT_METHOD = "unrolled_quadratic"

#: methods whose seeds are kept apart: their seed mean comes with its standard error
WITH_SEM = {"unrolled": unrolled_estimate}


@dataclass
class Request:
    """What ``fimo attribute`` was asked for, checked at the door (:meth:`check`).

    >>> Request([0, 5], "grad_dot").check().test
    [0, 5]
    >>> Request([0, -1], "grad_dot").check()
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: --test: got -1; test instances are dataset indices ≥ 0, e.g. 0,5,9
    """

    test: list
    method: str = DEFAULT_METHOD
    steps: int | None = None
    seeds: int | None = None
    top: int = 5

    def check(self) -> Request:
        """Every setting against what is allowed (the test indices' upper end needs the data:
        :meth:`check_range`); returns self.

        >>> Request([0], "grad_dot", steps=10).check()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: --steps: 'grad_dot' has no further-training horizon; ... unrolled_quadratic
        """
        check_choice("--method", self.method, available_methods())
        self.test = _test_list(self.test)
        params = inspect.signature(get_method(self.method)).parameters
        for option, value, key, kind in (
            ("--steps", self.steps, "further", "further-training horizon"),
            ("--seeds", self.seeds, "seeds", "seeds"),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise InputError(f"{option}: got {value!r}; must be a whole number ≥ 1")
            if key not in params:
                have = [m for m in available_methods() if key in _parameters(m)]
                raise InputError(
                    f"{option}: {self.method!r} has no {kind}; leave {option} out, or use a "
                    f"method that has {'one' if key == 'further' else 'them'}: {', '.join(have)}"
                )
        if isinstance(self.top, bool) or not isinstance(self.top, int | np.integer) or self.top < 1:
            raise InputError(f"--top: got {self.top!r}; must be a whole number ≥ 1")
        return self

    def check_range(self, n_test: int) -> None:
        """InputError unless every test index is below ``n_test``.

        >>> Request([0, 103]).check_range(103)
        Traceback (most recent call last):
        ...
        fimo.errors.InputError: --test: got 103, but there are only 103 test instances (0 to 102)
        """
        for t in self.test:
            if t >= n_test:
                raise InputError(
                    f"--test: got {t}, but there are only {n_test} test instances "
                    f"(0 to {n_test - 1})"
                )


def _parameters(name: str):
    return inspect.signature(get_method(name)).parameters


def _test_list(test) -> list[int]:
    values = [test] if isinstance(test, int | np.integer) else list(test)
    if not values:
        raise InputError("--test: got no test instance; give dataset indices, e.g. 0,5,9")
    for t in values:
        if isinstance(t, bool) or not isinstance(t, int | np.integer):
            raise InputError(f"--test: got {t!r}; expected dataset indices such as 0,5,9")
        if t < 0:
            raise InputError(f"--test: got {t}; test instances are dataset indices ≥ 0, e.g. 0,5,9")
    if len(set(values)) != len(values):
        raise InputError(f"--test: got {values}; an index appears more than once")
    return [int(t) for t in values]


def parse_indices(text: str, option: str = "--test") -> list[int]:
    """Comma-separated dataset indices as ints (what ``--test 0,5,9`` gives).

    >>> parse_indices("0, 5,9")
    [0, 5, 9]
    >>> parse_indices("0,a")
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: --test: got '0,a'; expected dataset indices such as 0,5,9
    """
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(
            f"{option}: got {text!r}; expected dataset indices such as 0,5,9"
        ) from None


@dataclass
class Attribution:
    """What :func:`attribute` returns.

    ``scores``: (n_test, n_train) Scores, positive = helpful (for a horizon-matched method at
    ``step``, for one with seeds their mean); ``sem``: its seed-to-seed standard error, or
    None; ``top``: the rows of :func:`fimo.evaluate.attribution.top_instances`;
    ``descriptions``: the instances decoded; ``page``: ``attribution.html`` (None when
    nothing was written); ``reused``: whether saved scores were used; ``seconds``: how long
    the method took (when the scores were computed).

    >>> s = Scores(np.array([[0.5, -0.1]]), [0], [0, 1], "grad_dot")
    >>> Attribution(s, None, None, [], {}).helpful(0)
    []
    """

    scores: Scores
    sem: Scores | None
    step: int | None
    top: list[dict]
    descriptions: dict
    page: Path | None = None
    reused: bool = False
    seconds: float = 0.0
    about: list[str] = field(default_factory=list)

    def helpful(self, test: int) -> list[int]:
        """The most helpful training instances of test instance ``test``, strongest first.

        >>> s = Scores(np.array([[0.5, -0.1, 0.2]]), [4], [0, 1, 2], "grad_dot")
        >>> Attribution(s, None, None, top_instances(s.values, [4], [0, 1, 2], 2), {}).helpful(4)
        [0, 2]
        """
        return [r["train"] for r in self.top if r["test"] == test and r["direction"] == "helpful"]


def horizon(
    further: FurtherSettings, n_train: int, steps: int | None
) -> tuple[FurtherSettings, int]:
    """The further-training settings cut at ``steps`` steps (default: all the configured
    ones), recording only at epoch ends and at the last step, and that step count.

    >>> s, T = horizon(FurtherSettings(batch_size=4, epochs=2), n_train=10, steps=None)
    >>> T, s.max_steps, s.epochs
    (6, 6, 2)
    >>> horizon(FurtherSettings(batch_size=4, epochs=2), n_train=10, steps=7)[0].epochs
    3
    """
    per_epoch = steps_per_epoch(n_train, further.batch_size)
    total = per_epoch * further.epochs
    configured = total if further.max_steps is None else min(total, further.max_steps)
    T = configured if steps is None else steps
    cut = dataclasses.replace(
        further,
        epochs=max(further.epochs, math.ceil(T / per_epoch)),
        max_steps=int(T),
        record_every=0,
        record_steps=[],
    )
    return cut, int(T)


def _settings(name: str, table: dict, further: FurtherSettings, n_train: int, request: Request):
    """The method's keyword arguments (its table of the configuration, the horizon, the
    seeds) and the horizon's step count (None for a method without one)."""
    params = _parameters(name)
    settings, step = dict(table), None
    if "further" in params:
        cut, step = horizon(further, n_train, request.steps)
        settings = {"further": cut.as_dict(), **settings, "steps": [step]}
    if request.seeds is not None:
        settings["seeds"] = request.seeds
    return settings, step


def attribute(
    source,
    test,
    *,
    method: str = DEFAULT_METHOD,
    steps: int | None = None,
    seeds: int | None = None,
    top: int = 5,
    out=None,
    further=None,
    device: str | None = None,
    scale: str = "quick",
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    threads: int = 0,
) -> Attribution:
    """Score every training instance for the test instances ``test`` (dataset indices).

    ``source``: a preset name, a TOML path or a Config (its final model is trained or reused
    in ``out``, default ``runs/<name>``, as ``fimo run`` does), or a :class:`fimo.Task`
    whose model is the final model (then ``further``, a FurtherSettings or dict, gives the
    further training the horizon refers to; with ``out`` the scores and page are saved
    there). ``steps``: the horizon of a horizon-matched method; ``seeds``: the seeds of a
    method that has them (``unrolled``); ``top``: how many helpful and harmful instances per
    test instance are listed. ``threads``: torch's threads for final training and the
    method (0: the configuration's ``run.threads``, else ``FIMO_THREADS`` or
    ``OMP_NUM_THREADS``, else chosen from the cores and the load, :mod:`fimo.threads`).
    Progress bars and notes go to stderr unless ``quiet``.

    >>> import torch
    >>> from fimo.data import ArrayDataset
    >>> x = torch.linspace(-1, 1, 16).reshape(8, 2)
    >>> task = Task(torch.nn.Linear(2, 1), ArrayDataset(x, x.sum(1)), ArrayDataset(x, x.sum(1)),
    ...             loss="mse")
    >>> result = attribute(task, [0, 7], further={"lr": 0.1, "batch_size": 4}, top=2)
    >>> result.scores.shape, result.step, len(result.top)
    ((2, 8), 4, 8)
    """
    request = Request(test, method, steps, seeds, top).check()
    console = console or Console(stderr=True, quiet=quiet)
    if isinstance(source, Task):
        if device is not None:
            raise InputError(
                f"device: got {device!r}; a Task runs where it is: move it first, task.to(...)"
            )
        return _from_task(source, request, further, out, console, quiet, threads)
    if further is not None:
        raise InputError(
            "further: give the further-training settings in the configuration ([further]); "
            "further= is for a Task"
        )
    config = source if isinstance(source, Config) else load_config(source, scale=scale)
    config = with_overrides(config, device=device, threads=threads or None)
    if request.method == "unrolled_quadratic":  # its optimizer check, before any training
        table = config.methods.settings.get(request.method, {})
        resolve_optimizer(config.further, table.get("lr"), table.get("momentum"))
    out = default_run_dir(config) if out is None else out
    return _from_config(config, request, RunDir(out), overwrite, console, quiet)


@dataclass
class _Job:
    """One attribution: the task (where and in the precision the method runs), the data as
    loaded (for the descriptions), what to compute and under which fingerprint."""

    task: Task
    train: object
    test: object
    request: Request
    settings: dict
    step: int | None
    fingerprint: str
    about: list[str]
    final_model: str = ""  # the final weights' and the data's fingerprint
    threads: ThreadChoice | None = None  # torch's threads for the method


def _from_config(config: Config, request: Request, rundir: RunDir, overwrite, console, quiet):
    with rundir.lock():
        rundir.remove_temporaries()
        check = lambda train, test: request.check_range(len(test))  # noqa: E731
        r, task, metrics = final_model(config, rundir, overwrite, console, quiet, check)
        task.to(r.device, DTYPES[config.gold.dtype])
        table = config.methods.settings.get(request.method, {})
        settings, step = _settings(request.method, table, config.further, len(r.train), request)
        fp = _fingerprint(r.fingerprints, request, settings, len(r.train), config.gold.dtype)
        about = [
            f"configuration {config.name}, run directory {rundir.path}",
            model_summary(metrics),
        ]
        final = fingerprint(r.fingerprints["weights"], r.fingerprints["data"])
        job = _Job(task, r.train, r.test, request, settings, step, fp, about, final, r.threads)
        with applied(r.threads):  # final_model said it when it differs
            return _attribute(job, rundir, console, quiet)


def _from_task(
    task: Task, request: Request, further, out, console, quiet, threads: int
) -> Attribution:
    choice = choose_threads(threads)
    request.check_range(len(task.test))
    further = _further_settings(further)
    settings, step = _settings(request.method, {}, further, len(task.train), request)
    dtype = str(next(task.model.parameters()).dtype).removeprefix("torch.")
    data = task.train.inputs, task.train.targets, task.test.inputs, task.test.targets
    fps = {"weights": fingerprint(dict(task.model.state_dict())), "data": fingerprint(*data)}
    fp = _fingerprint(fps, request, settings, len(task.train), dtype)
    final = fingerprint(fps["weights"], fps["data"])
    job = _Job(task, task.train, task.test, request, settings, step, fp,
               ["a Task given in Python"], final, choice)  # fmt: skip
    with applied(choice, lambda line: console.print(line, highlight=False)):
        if out is None:
            return _attribute(job, None, console, quiet)
        rundir = RunDir(out)
        with rundir.lock():
            rundir.remove_temporaries()
            return _attribute(job, rundir, console, quiet)


def _further_settings(further) -> FurtherSettings:
    """``further=`` of a Task as FurtherSettings (None: the defaults)."""
    if further is None or isinstance(further, FurtherSettings):
        return further or FurtherSettings()
    try:
        return FurtherSettings(**further)
    except TypeError:
        raise InputError(
            f"further: got {further!r}; give a FurtherSettings or a dict of its settings "
            f"({', '.join(f.name for f in dataclasses.fields(FurtherSettings))})"
        ) from None


def _fingerprint(fps: dict, request: Request, settings: dict, n_train: int, dtype: str) -> str:
    """What determines the scores: the weights, the data, the method and its settings, the
    test and training indices and the precision."""
    return fingerprint(
        fps["weights"],
        fps["data"],
        request.method,
        settings,
        np.asarray(request.test),
        np.arange(n_train),
        dtype,
    )


def _attribute(job: _Job, rundir: RunDir | None, console: Console, quiet: bool) -> Attribution:
    """The scores (saved ones when they match, else computed and saved), the top instances
    and, with a run directory, the page."""
    name = job.request.method
    found = _cached(rundir, name, job.fingerprint)
    if found is not None:
        scores, sem = found
        console.print(f"[dim]{name}: reusing {rundir.attribution_file(name)}[/dim]", soft_wrap=True)
    else:
        scores, sem = _compute(job, rundir, console, quiet)
        if rundir is not None:
            _save(rundir, name, scores, sem)
    if job.step is not None:
        scores, sem = scores.at(job.step), None if sem is None else sem.at(job.step)
    rows = top_instances(
        scores.values, scores.test, scores.train, min(job.request.top, len(scores.train)),
        None if sem is None else sem.values,
    )  # fmt: skip
    descriptions = describe_examples(rows, train=job.train, test=job.test)
    lines = _about(name, scores, job.step, job.settings.get("further"))
    result = Attribution(
        scores, sem, job.step, rows, descriptions, None, found is not None,
        scores.settings.get("seconds", 0.0), job.about + lines,
    )  # fmt: skip
    if rundir is not None:
        result.page = _write_page(rundir, job, {"method": name, "rows": rows, "meta": lines})
    return result


def _about(name: str, scores: Scores, step: int | None, further: dict | None) -> list[str]:
    """The lines on what a method computed: how many instances in how long, its horizon, its
    seeds."""
    lines = [
        f"method {name}: {len(scores.train)} training instances scored in "
        f"{scores.settings.get('seconds', 0.0):.1f} s"
    ]
    if step is not None:
        f = further
        lines.append(
            f"horizon: {step} steps of further training ({f['optimizer']}, lr {f['lr']:g}, "
            f"batch {f['batch_size']}, scheme {f['scheme']})"
        )
    if name in WITH_SEM:
        lines.append(f"seeds: {scores.settings.get('seeds')}")
    return lines


def _write_page(rundir: RunDir, job: _Job, current: dict) -> Path:
    """``attribution.html``: this command's method first, then every other method whose
    scores in ``attribution/`` were made for the same final model and data, newest first
    (the others are named in a note at the top)."""
    sections, notes = [current], []
    for name in _stored_methods(rundir, current["method"]):
        section = _stored_section(rundir, name, job, notes)
        if section is not None:
            sections.append(section)
    rows = [r for section in sections for r in section["rows"]]
    descriptions = describe_examples(rows, train=job.train, test=job.test)
    title = "fimo attribute: " + ", ".join(section["method"] for section in sections)
    html = attribution_page(sections, descriptions, {"title": title, "meta": job.about + notes})
    return write_text(rundir.attribution_page, html)


def _stored_methods(rundir: RunDir, current: str) -> list[str]:
    """The methods with scores in ``attribution/`` other than ``current``, newest first."""
    folder = rundir.attribution_dir
    files = [f for f in folder.glob("*.npz") if "." not in f.stem] if folder.is_dir() else []
    files.sort(key=lambda f: (-f.stat().st_mtime_ns, f.stem))
    return [f.stem for f in files if f.stem != current]


def _stored_section(rundir: RunDir, name: str, job: _Job, notes: list[str]) -> dict | None:
    """A stored method's page section (its top instances, at its horizon), or None with a
    note when its file is damaged or was made for another final model."""
    path = rundir.attribution_file(name)
    scores = _readable(path)
    if scores is None:
        notes.append(f"left out: {path.name} is damaged or unreadable (run its command again)")
        return None
    record = scores.settings.get("attribute") or {}
    if record.get("final_model") != job.final_model:
        notes.append(f"left out: {path.name} was made for another final model or data")
        return None
    sem = _readable(rundir.attribution_file(name, "sem")) if name in WITH_SEM else None
    if sem is not None and sem.settings.get("fingerprint") != scores.settings.get("fingerprint"):
        sem = None
    step = record.get("step")
    if step is not None:
        scores, sem = scores.at(step), None if sem is None else sem.at(step)
    rows = top_instances(
        scores.values, scores.test, scores.train, min(job.request.top, len(scores.train)),
        None if sem is None else sem.values,
    )  # fmt: skip
    return {"method": name, "rows": rows, "meta": _about(name, scores, step, record.get("further"))}


def _readable(path: Path) -> Scores | None:
    """The Scores in ``path`` when present, with a matching checksum and readable; else None."""
    if not path.exists() or not checksum_matches(path):
        return None
    try:
        return Scores.load(path)
    except (InputError, KeyError, ValueError):
        return None


def _cached(rundir: RunDir | None, name: str, fp: str):
    """``(scores, sem)`` saved under ``fp`` (both, for a method with seeds), or None."""
    if rundir is None:
        return None
    scores = rundir.cached_attribution(name, fp)
    if scores is None:
        return None
    if name not in WITH_SEM:
        return scores, None
    sem = rundir.cached_attribution(name, fp, "sem")
    return None if sem is None else (scores, sem)


def _compute(
    job: _Job, rundir: RunDir | None, console: Console, quiet: bool
) -> tuple[Scores, Scores | None]:
    """Run the method on every training instance, with a progress bar and, above it, the
    method's estimates of its long loops (:mod:`fimo.methods.cost`)."""
    name, task = job.request.method, job.task.with_cached_trunk()
    train, started = np.arange(len(task.train)), time.perf_counter()
    with (
        progress_bar(console, quiet) as bar,
        announcements(lambda text: bar.console.print(f"{name}: {text}", highlight=False)),
    ):
        progress_job = bar.add_task(name, total=len(train))
        arguments = dict(job.settings, progress=lambda k: bar.advance(progress_job, k))
        if name in WITH_SEM:
            if rundir is not None:  # resumable: the seeds done so far are kept there
                arguments["partial_dir"] = rundir.attribution_dir / f"{name}.partial"
            estimate = WITH_SEM[name](task, job.request.test, train, **arguments)
            scores = estimate.scores()
            sem = None  # one seed has no spread: no standard errors (rather than NaN)
            if len(estimate.seeds) > 1:
                sem = Scores(estimate.sem, scores.test, scores.train, name, {}, scores.units,
                             steps=scores.steps)  # fmt: skip
        else:
            scores, sem = get_method(name)(task, job.request.test, train, **arguments), None
    seconds = round(time.perf_counter() - started, 3)
    record = {"final_model": job.final_model, "step": job.step,
              "further": job.settings.get("further"),
              "torch_threads": None if job.threads is None else job.threads.as_dict()}  # fmt: skip
    for s in (scores, sem):
        if s is not None:
            s.settings.update(fingerprint=job.fingerprint, seconds=seconds, attribute=record)
    return scores, sem


def _save(rundir: RunDir, name: str, scores: Scores, sem: Scores | None) -> None:
    """The standard error first, then the scores: a run stopped between the two leaves a
    standard error without its scores, which :func:`_cached` does not take."""
    if sem is not None:
        sem.save(rundir.attribution_file(name, "sem"))
    scores.save(rundir.attribution_file(name))
