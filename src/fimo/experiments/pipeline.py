"""Run one experiment end to end into a run directory, as a pipeline of stages.

    final model -> gold standard -> methods -> evaluation and report

Each stage is a function that says what it reads and writes in the run directory
(:class:`~fimo.experiments.rundir.RunDir` names every file) and is cached by fingerprint: a
second run with the same settings reuses the final model, the finished gold-standard shards
and the scores. The task moves at most once per stage: to ``run.device`` for the final model,
to the gold standard's precision for further training and the methods, and back to the CPU in
float32 when the run hands it back.
"""

from __future__ import annotations

import inspect
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from fimo.baselines import baseline
from fimo.data.base import ArrayDataset, check_pair
from fimo.errors import InputError, NumericalError
from fimo.evaluate.plots import figures_wanted
from fimo.experiments.build import build_task, final_training_task, further_task, load_data
from fimo.experiments.config import Config
from fimo.experiments.outputs import evaluate_run, model_summary, run_notes
from fimo.experiments.rundir import RunDir, run_lock
from fimo.further.gold import GoldStandard
from fimo.further.groups import make_groups
from fimo.further.plan import Groups
from fimo.further.ray_address import check_reachable
from fimo.further.runner import ShardPlan, gold_standard, make_executor, plan_gold
from fimo.further.threads import (
    THREADS_PER_WORKER,
    auto_workers,
    further_flop,
    instance_flop,
    torch_threads,
)
from fimo.io import fingerprint, non_default, write_json
from fimo.methods import get_method
from fimo.methods.cost import announcements
from fimo.methods.gradients import available_memory
from fimo.scores import Scores
from fimo.task import Task
from fimo.threads import ThreadChoice, applied, choose_threads, final_training_threads, threads_for
from fimo.training import evaluate_model, train_final
from fimo.version import __version__

__all__ = ["RunResult", "choose_left_out", "final_model", "progress_bar", "run", "run_lock"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RunResult:
    """What ``run`` returns: the run directory and everything computed in it.

    (A whole run, even a tiny one, takes many seconds; the tests of ``fimo run`` make them.)

    >>> result = RunResult(Path("runs/tiny"), Config(name="tiny"), task=None, gold=None,
    ...                    scores={}, rows=[], model_metrics={"test_loss": 0.5})
    >>> result.config.name, result.timings
    ('tiny', {})
    """

    out: Path
    config: Config
    task: Task
    gold: GoldStandard
    scores: dict[str, Scores]
    rows: list[dict]
    model_metrics: dict
    timings: dict = field(default_factory=dict)

    @property
    def report(self) -> Path:
        """The run's HTML report.

        >>> RunResult(Path("runs/tiny"), Config(), None, None, {}, [], {}).report.as_posix()
        'runs/tiny/report.html'
        """
        return self.out / "report.html"


def choose_left_out(n_train: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct training indices drawn with ``numpy.random.default_rng(seed)``, sorted.

    >>> choose_left_out(10, 3, seed=0).tolist() == sorted(
    ...     np.random.default_rng(0).choice(10, size=3, replace=False).tolist())
    True
    """
    if count > n_train:
        raise InputError(
            f"further.left_out: got {count}, but there are only {n_train} training instances"
        )
    return np.sort(np.random.default_rng(seed).choice(n_train, size=count, replace=False))


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"run.device: got {name!r}, but no CUDA device is available; use 'cpu'")
    return torch.device(name)


MODEL_METRICS = (
    "test_loss",
    "test_accuracy",
    "baseline",
    "baseline_test_loss",
    "baseline_test_accuracy",
)


def _trunk_cached(task: Task, console: Console, quiet: bool) -> Task:
    """``task.with_cached_trunk()``, with a progress bar when there is a trunk to compute."""
    cached = getattr(task, "_cached_trunk", None)
    if cached is not None and cached[0] == task.trainable:
        return cached[1]
    with _progress(console, quiet) as bar:
        job = None

        def progress(done: int, total: int) -> None:
            nonlocal job
            if job is None:
                job = bar.add_task("frozen trunk", total=total)
            bar.update(job, completed=done)

        return task.with_cached_trunk(progress)


def progress_bar(console: Console, quiet: bool) -> Progress:
    """The stages' progress bar: what, bar, done of total, time left (nothing when ``quiet``).

    >>> with progress_bar(Console(quiet=True), quiet=True) as bar:
    ...     job = bar.add_task("grad_dot", total=4)
    ...     bar.advance(job, 4)
    >>> bar.tasks[0].completed == 4
    True
    """
    return Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


_progress = progress_bar  # the stages' own name for it


@dataclass
class _Run:
    """What every stage reads: the settings, the directory, the data and its indices."""

    config: Config
    dir: RunDir
    overwrite: bool
    console: Console
    quiet: bool
    device: torch.device
    train: ArrayDataset
    test: ArrayDataset
    test_idx: np.ndarray
    left_out: np.ndarray
    methods: dict
    fingerprints: dict
    groups: Groups | None = None  # the groups left out together ([groups]), with their names
    group_names: list[str] | None = None
    timings: dict = field(default_factory=dict)
    #: each stage's work as recorded with its results, over every invocation (wall, CPU)
    work: dict = field(default_factory=dict)
    #: torch's threads for final training and the methods, chosen as the run starts
    threads: ThreadChoice | None = None
    #: local worker processes of further training (``run.workers``, or chosen by fimo)
    workers: int = 1

    def say(self, line: str) -> None:
        """Print a line of the run's notes (not with quiet)."""
        self.console.print(line, highlight=False)


def run(
    config: Config,
    out: str | Path,
    overwrite: bool = False,
    console: Console | None = None,
    quiet: bool = False,
) -> RunResult:
    """Run ``config`` into ``out``: final model, gold standard, methods, metrics, report.

    The directory is locked while the run works in it; files left by a process killed while
    writing are removed first (they are never read).

    Every setting is checked before any work (a whole run, even a tiny one, takes many
    seconds; the tests of ``fimo run`` make them):

    >>> import tempfile
    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"name": "tiny", "data": {"dataset": "concrete", "n_test": 500}})
    >>> folder = tempfile.TemporaryDirectory()
    >>> run(config, Path(folder.name) / "tiny", quiet=True)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: data.n_test: got 500, but there are only 103 test instances
    >>> folder.cleanup()
    """
    rundir = RunDir(out)
    with rundir.lock():
        rundir.remove_temporaries()
        return _run(config, rundir, overwrite, console, quiet)


def _run(config: Config, rundir: RunDir, overwrite: bool, console, quiet: bool) -> RunResult:
    """The stages, in order, on one task."""
    r = _prepare(config, rundir, overwrite, console or Console(stderr=True, quiet=quiet), quiet)
    with applied(r.threads, r.say):  # further training computes on its own one thread
        task = build_task(config, r.train, r.test)
        model_metrics = _final_model_stage(r, task)
        further = _further_task(r, task)
        gold, gold_record = _gold_stage(r, further)
        scores, skipped = _methods_stage(r, further, gold.steps)
        task.to("cpu", torch.float32)  # handed back as the final model is saved: CPU, float32
        manifest = {
            "fimo_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": r.threads.as_dict(),
            "fingerprints": r.fingerprints,
            "model": model_metrics,
            "gold_standard": gold_record,
            "timings_seconds": {k: round(v, 3) for k, v in r.timings.items()},
            "work_seconds": _work_seconds(r.work),
            "skipped_methods": skipped,
        }
        rows = _report_stage(r, gold, scores, manifest)
    return RunResult(r.dir.path, config, task, gold, scores, rows, model_metrics, r.timings)


def _prepare(
    config: Config, rundir: RunDir, overwrite: bool, console, quiet: bool, check=None
) -> _Run:
    """Every check before any work: the thread count (chosen here, before this process adds
    to the load), the device, the data (and ``check(train, test)``, a caller's own), the test
    and left-out indices and the methods. Writes ``config.toml`` when the directory has none
    (or ``overwrite``)."""
    threads = choose_threads(config.run.threads)
    figures_wanted()  # FIMO_FIGURES checked at the door, not after the work
    device = _device(config.run.device)
    train, test = load_data(config)
    check_pair(train, test, "data.factory" if config.data.factory else "data")
    if check is not None:
        check(train, test)
    if config.data.n_test > len(test):
        raise InputError(
            f"data.n_test: got {config.data.n_test}, but there are only {len(test)} test instances"
        )
    left_out = choose_left_out(len(train), config.gold.left_out, config.gold.left_out_seed)
    groups, group_names = _groups(config, train, left_out)
    methods = {name: get_method(name) for name in config.methods.names}
    if config.run.executor == "ray":
        check_reachable(config.run.address)
    rundir.path.mkdir(parents=True, exist_ok=True)
    rundir.check_gold_stamp(overwrite)
    if overwrite or not rundir.config_file.exists():
        rundir.write_config(config)  # a first run records it at once
    data_fp = fingerprint(train.inputs, train.targets, test.inputs, test.targets)
    return _Run(
        config,
        rundir,
        overwrite,
        console,
        quiet,
        device,
        train,
        test,
        np.arange(config.data.n_test),
        left_out,
        methods,
        {"data": data_fp},
        groups,
        group_names,
        threads=threads,
    )


def final_model(
    config: Config, rundir: RunDir, overwrite: bool, console: Console, quiet: bool, check=None
) -> tuple[_Run, Task, dict]:
    """The checks of :func:`run` (with ``check(train, test)`` after the data are loaded),
    then the final model trained or reused exactly as ``run`` does (on the threads chosen
    for the run, ``run.threads``): ``(run state, task on run.device, its test metrics)``.
    The caller holds ``rundir``'s lock (``fimo attribute``).

    >>> import tempfile
    >>> from fimo.experiments.config import from_dict
    >>> config = from_dict({"name": "tiny", "data": {"dataset": "concrete", "n_test": 500}})
    >>> final_model(config, RunDir(tempfile.mkdtemp()), False, Console(quiet=True), True)
    Traceback (most recent call last):
    ...
    fimo.errors.InputError: data.n_test: got 500, but there are only 103 test instances
    """
    r = _prepare(config, rundir, overwrite, console, quiet, check)
    with applied(r.threads, r.say):
        task = build_task(config, r.train, r.test)
        return r, task, _final_model_stage(r, task)


def _groups(
    config: Config, train: ArrayDataset, left_out: np.ndarray
) -> tuple[Groups | None, list[str] | None]:
    """The groups of ``[groups]`` on the training set (None when there are none), with their
    names (None for random groups; nested ones are drawn from ``left_out``)."""
    g = config.groups
    if not g.active:
        return None, None
    raw = train.info.get("raw") if isinstance(train.info, dict) else None
    if raw is not None and len(raw) > len(train) and config.data.n_train:
        # load_data keeps the first n_train instances; the loader's original rows are all there
        train = ArrayDataset(
            train.inputs, train.targets, train.feature_names,
            {**train.info, "raw": np.asarray(raw)[: len(train)]},
        )  # fmt: skip
    return make_groups(
        train, g.kind, g.count, g.fraction, g.seed, g.feature, g.file, g.bins, left_out
    )


def _final_model_stage(r: _Run, task: Task) -> dict:
    """The final model, on ``run.device``: reuse ``model/final.pt`` when ``model/meta.json``
    records this recipe's fingerprint, else train it and save it there; then measure it and
    its baseline into ``model/meta.json``. Returns the model's test metrics."""
    config, started = r.config, time.perf_counter()
    model_fp = fingerprint(
        r.fingerprints["data"],
        {"model": non_default(config.model), "training": non_default(config.training)},
    )
    task.to(r.device)
    meta = r.dir.read_model_meta()
    if (
        meta.get("fingerprint") == model_fp
        and r.dir.final_weights.exists()
        and (r.dir.load_final(task.model) is not None)
    ):
        r.console.print(f"[dim]final model: reusing {r.dir.final_weights}[/dim]")
    else:
        if meta and meta.get("fingerprint") != model_fp and not r.overwrite:
            raise InputError(
                f"{r.dir.model_dir} holds a final model trained under other settings or data "
                f"(fingerprint {meta.get('fingerprint')}, now {model_fp}); pass --overwrite to "
                "train afresh, or --out to write elsewhere"
            )
        meta = _train_final_model(r, task, model_fp)
    head_task = _trunk_cached(task, r.console, r.quiet)  # computed once, kept through task.to
    meta.update(evaluate_model(head_task))
    if "baseline" not in meta:
        meta.update(baseline(head_task))
    r.dir.write_model_meta(meta)
    r.timings["final_training"] = time.perf_counter() - started
    r.work["final_training"] = r.dir.read_final_seconds()  # None: not recorded
    r.fingerprints["model_recipe"] = model_fp
    r.fingerprints["weights"] = fingerprint(dict(task.model.state_dict()))
    model_metrics = {k: meta[k] for k in MODEL_METRICS if k in meta}
    r.console.print(model_summary(model_metrics), highlight=False)
    return model_metrics


def _further_task(r: _Run, task: Task) -> Task:
    """The task of further training and the methods (:func:`further_task`); under LoRA the
    weights' fingerprint, which theirs derive from, takes in the adapters' settings, and the
    new task's own frozen trunk is computed here, once, with a progress bar."""
    if not r.config.gold.lora:
        return task
    r.fingerprints["weights"] = fingerprint(r.fingerprints["weights"], r.config.gold.lora)
    further = further_task(r.config, task)
    _trunk_cached(further, r.console, r.quiet)
    return further


def _train_final_model(r: _Run, task: Task, model_fp: str) -> dict:
    """Train the final model where the task is and save it to ``model/final.pt``; returns
    the training record for ``model/meta.json``."""
    wall, cpu = time.perf_counter(), time.process_time()
    cached = lambda t: _trunk_cached(t, r.console, r.quiet)  # noqa: E731
    final_task = cached(final_training_task(r.config, task, cached))
    with (
        _progress(r.console, r.quiet) as bar,
        torch_threads(final_training_threads(r.threads).threads),
    ):
        job = bar.add_task("final training", total=r.config.training.epochs)
        history = train_final(
            final_task, r.config.training, on_epoch=lambda e, loss: bar.advance(job)
        )
    r.dir.save_final(task.model)
    # beside meta.json, which holds what training made (the same every time), not its time
    write_json(r.dir.final_seconds, _seconds_since(wall, cpu))
    return {
        "fingerprint": model_fp,
        "training": r.config.training.as_dict(),
        "train_loss_by_epoch": history,
    }


def _seconds_since(wall: float, cpu: float) -> dict:
    """The wall and CPU seconds (this process's) since ``perf_counter()`` was ``wall`` and
    ``process_time()`` was ``cpu``.

    >>> sorted(_seconds_since(time.perf_counter(), time.process_time()))
    ['cpu', 'wall']
    """
    return {
        "wall": round(time.perf_counter() - wall, 3),
        "cpu": round(time.process_time() - cpu, 3),
    }


def _gold_stage(r: _Run, task: Task) -> tuple[GoldStandard, dict]:
    """The gold standard, in the configured precision on ``run.device``: the shards in
    ``further/`` made under the same fingerprint are reused, the others computed; writes
    ``further/`` and, once the shards on disk fit these settings, ``config.toml``. Returns
    the gold standard and its record for the manifest."""
    config = r.config
    task.to(r.device, DTYPES[config.gold.dtype])
    gold_fp = fingerprint(
        r.fingerprints["weights"],
        r.fingerprints["data"],
        non_default(config.further),
        r.left_out,
        r.test_idx,
        config.gold.dtype,
        r.device.type,
    )
    # the group runs have their own fingerprint: the gold standard's and the groups' member
    # lists (not how they were named), so that other groups recompute the group shards alone
    # and a run without groups keeps the fingerprint it always had
    group_fp = None
    described = {"settings": config.further.as_dict(), "dtype": config.gold.dtype}
    if r.groups is not None:
        group_fp = fingerprint(gold_fp, r.groups.members, r.groups.offsets)
        described["groups"] = config.groups.describe()
    described["device"] = r.device.type
    store = r.dir.shard_store(gold_fp, described, r.overwrite, group_fp)
    # the results on disk fit these settings (or are gone): only now may they replace the
    # recorded ones, so that a refused run leaves the directory's config.toml as it was
    r.dir.write_config(config)
    seeds = list(range(config.gold.first_seed, config.gold.first_seed + config.gold.seeds))
    plan = plan_gold(
        task,
        config.further,
        seeds,
        len(r.left_out),
        len(r.test_idx),
        config.gold.left_out_per_shard,
        config.gold.memory_budget_mb * 2**20,
        n_groups=0 if r.groups is None else len(r.groups),
    )
    gold = _further_train(r, task, store, seeds, plan)
    r.fingerprints["gold_standard"] = gold_fp
    if group_fp is not None:
        r.fingerprints["group_runs"] = group_fp
    return gold, _gold_record(r, gold, seeds, plan)


def _gold_record(r: _Run, gold: GoldStandard, seeds: list[int], plan: ShardPlan) -> dict:
    """The manifest's record of the gold standard: what was run, and how it was split."""
    record = {
        "seeds": seeds,
        "left_out": r.left_out.tolist(),
        "test": [int(r.test_idx[0]), int(r.test_idx[-1]) + 1],
        "steps": gold.steps.tolist(),
        "left_out_per_shard": plan.per_shard,
        "shards": len(plan.shards),
        "executor": r.config.run.executor,
        "workers": r.workers,
        "workers_chosen_by": _workers_chosen_by(r.config),
        "threads_per_worker": THREADS_PER_WORKER,  # the results depend on it, bit for bit
    }
    if r.groups is not None:  # the members are in gold.npz; here what they are
        record["groups"] = {
            "spec": r.config.groups.describe(),
            "count": len(r.groups),
            "sizes": r.groups.sizes().tolist(),
            "names": r.group_names,
        }
    return record


def _workers_chosen_by(config: Config) -> str:
    """What set the worker count the manifest records.

    >>> from fimo.experiments.config import RunConfig
    >>> [_workers_chosen_by(Config(run=RunConfig(workers=w, executor=e)))
    ...  for w, e in ((2, "local"), (0, "local"), (0, "ray"))]
    ['run.workers', 'free cores and work', 'not used: Ray schedules the shards']
    """
    if config.run.executor != "local":
        return "not used: Ray schedules the shards"
    return "run.workers" if config.run.workers else "free cores and work"


def _workers(r: _Run, task: Task, plan: ShardPlan, todo) -> int:
    """The local worker processes: ``run.workers``, or with 0 one per free core when the
    shards to compute are long enough to repay starting them (:func:`auto_workers`); said
    when it is more than one."""
    if r.config.run.workers > 0 or r.config.run.executor != "local":  # Ray: its own cluster
        return max(1, r.config.run.workers)
    if not todo:  # every shard on disk: nothing to count (the count loads torch's dynamo)
        return 1
    flop = further_flop(
        [sh.stop - sh.start + 1 for sh in todo],
        plan.steps_per_shard,
        r.config.further.batch_size,
        instance_flop(task),
    )
    free = threads_for(r.threads.cores, r.threads.load_of_others)  # chosen by _prepare
    budget = r.config.gold.memory_budget_mb * 2**20
    count = auto_workers(free, len(todo), flop, budget, available_memory())
    if count > 1 and not r.quiet:
        r.say(
            f"further training: {count} worker processes ({free} free cores, {len(todo)} "
            "shards; --workers or run.workers to choose)"
        )
    return count


def _further_train(r: _Run, task: Task, store, seeds: list[int], plan: ShardPlan):
    """Run the shards of ``plan`` not yet in ``store``, with a progress bar."""
    config = r.config
    # a damaged shard is reported once, by gold_standard
    todo = [sh for sh in plan.shards if not store.finished(sh)]
    r.workers = _workers(r, task, plan, todo)
    executor = make_executor(
        config.run.executor,
        r.workers,
        None if config.run.address == "local" else config.run.address,
    )
    in_process = config.run.executor == "local" and r.workers == 1
    started = time.perf_counter()
    runs = 1 + len(r.left_out) + (0 if r.groups is None else len(r.groups))
    with _progress(r.console, r.quiet) as bar:
        shown = _ShardProgress(bar, plan, len(todo), f"{len(seeds)} seeds × {runs}")
        gold = gold_standard(
            task,
            config.further,
            seeds,
            r.left_out,
            r.test_idx,
            store=store,
            executor=executor,
            left_out_per_shard=plan.per_shard,
            on_step=shown.step if in_process else None,
            on_shard=shown.shard if in_process else shown.shard_with_steps,
            groups=r.groups,
        )
    r.timings["further_training"] = time.perf_counter() - started
    if todo:
        r.timings["further_training_per_seed"] = r.timings["further_training"] / len(todo)
    r.work["further_training"] = store.work_seconds(plan.shards)
    return gold


class _ShardProgress:
    """The further-training progress bar: steps as they are taken (in this process) or a
    shard's steps when it arrives (from workers), and the count of shards done."""

    def __init__(self, bar: Progress, plan: ShardPlan, n_todo: int, runs: str):
        self.bar, self.plan, self.runs = bar, plan, runs
        self.done = len(plan.shards) - n_todo
        self.job = bar.add_task(self._describe(), total=n_todo * plan.steps_per_shard)

    def _describe(self) -> str:
        return (
            f"further training: {self.done}/{len(self.plan.shards)} shards done, {self.runs} runs"
        )

    def step(self, k: int) -> None:
        self.bar.advance(self.job, k)

    def shard(self, shard, reused: bool) -> None:
        if not reused:
            self.done += 1
            self.bar.update(self.job, description=self._describe())

    def shard_with_steps(self, shard, reused: bool) -> None:
        if not reused:
            self.bar.advance(self.job, self.plan.steps_per_shard)
        self.shard(shard, reused)


def _methods_stage(r: _Run, task: Task, steps) -> tuple[dict[str, Scores], dict[str, str]]:
    """Every method's scores, where the gold standard was computed: ``scores/<name>.npz``
    made under the same fingerprint are reused, the others computed and written there.
    Returns the scores and the methods skipped (with their reasons)."""
    config = r.config
    train_idx = np.arange(len(r.train)) if config.methods.train == "all" else r.left_out
    if config.methods.train == "left_out" and r.groups is not None:  # FT-LDS sums over members
        train_idx = np.union1d(r.left_out, r.groups.members)
    scores: dict[str, Scores] = {}
    skipped: dict[str, str] = {}
    fps = r.fingerprints["scores"] = {}
    started = time.perf_counter()
    for name in config.methods.names:
        settings = _method_settings(r, name, steps)
        fps[name] = fingerprint(
            r.fingerprints["weights"],
            r.fingerprints["data"],
            name,
            settings,
            r.test_idx,
            train_idx,
            config.gold.dtype,
        )
        cached = r.dir.cached_scores(name, fps[name])
        if cached is None:
            try:
                cached = _run_method(r, task, name, train_idx, fps[name], settings)
            except (InputError, NumericalError) as exc:
                # a method that cannot run on this model (too large, indefinite curvature, a
                # diverging series) is skipped with its reason, not allowed to sink the run
                skipped[name] = str(exc)
                r.console.print(f"[yellow]skipped {name}:[/yellow] {exc}", highlight=False)
                continue
        scores[name] = cached
        r.work.setdefault("methods", {})[name] = _method_seconds(cached)
    r.timings["methods"] = time.perf_counter() - started
    return scores, skipped


def _method_settings(r: _Run, name: str, steps) -> dict:
    """A method's settings from the configuration; a horizon-matched method (one that takes
    ``further``) also gets the further-training settings and the checkpoints' step counts."""
    settings = r.config.methods.settings.get(name, {})
    if "further" in inspect.signature(r.methods[name]).parameters:
        settings = {
            "further": r.config.further.as_dict(),
            "steps": list(map(int, steps)),
            **settings,
        }
    return settings


def _run_method(r: _Run, task: Task, name: str, train_idx, fp: str, settings: dict) -> Scores:
    """Compute one method's scores and write them to ``scores/<name>.npz``; the method's
    estimates of its long loops are printed above its progress bar."""
    started, cpu = time.perf_counter(), time.process_time()
    if "partial_dir" in inspect.signature(r.methods[name]).parameters:  # resumable (unrolled)
        settings = {**settings, "partial_dir": r.dir.scores_dir / f"{name}.partial"}
    with (
        _progress(r.console, r.quiet) as bar,
        announcements(lambda text: bar.console.print(f"{name}: {text}", highlight=False)),
    ):
        job = bar.add_task(name, total=len(train_idx))
        result = r.methods[name](
            task.with_cached_trunk(),
            r.test_idx,
            train_idx,
            progress=lambda k: bar.advance(job, k),
            **settings,
        )
    result.settings["fingerprint"] = fp
    # a resumed method (unrolled) adds what its earlier, interrupted invocations took
    before = result.settings.get("resumed_seconds") or {"wall": 0.0, "cpu": 0.0}
    result.settings["seconds"] = round(time.perf_counter() - started + before["wall"], 3)
    result.settings["cpu_seconds"] = round(time.process_time() - cpu + before["cpu"], 3)
    r.timings[f"method_{name}"] = result.settings["seconds"]
    result.save(r.dir.scores_file(name))
    return result


def _method_seconds(scores: Scores) -> dict:
    """What computing a method's scores took, as they record it: wall and CPU seconds, None
    for what they do not record (CPU time in scores made before it was recorded; both in
    scores brought in from elsewhere).

    >>> _method_seconds(Scores([[1.0]], [0], [0], "m", settings={"seconds": 2.0}))
    {'wall': 2.0, 'cpu': None}
    """
    wall, cpu = scores.settings.get("seconds"), scores.settings.get("cpu_seconds")
    return {
        "wall": None if wall is None else float(wall),
        "cpu": None if cpu is None else float(cpu),
    }


def _work_seconds(work: dict) -> dict:
    """The manifest's ``work_seconds``: per stage, the work its results recorded, summed
    over every invocation that made them (docs/usage.md, "Run times"); ``total`` adds the
    stages' known figures.

    >>> work = {"final_training": {"wall": 2.0, "cpu": 1.0},
    ...         "further_training": {"wall": 30.0, "cpu": 28.0, "shards": 3,
    ...                              "shards_without_time": 1},
    ...         "methods": {"grad_dot": {"wall": 1.0, "cpu": 1.0},
    ...                     "cg": {"wall": 4.0, "cpu": None}}}
    >>> out = _work_seconds(work)
    >>> out["methods"]["wall"], out["methods"]["methods_without_cpu_time"], out["total"]
    (5.0, 1, {'wall': 37.0, 'cpu': 30.0})
    """
    final = work.get("final_training")
    further = work.get("further_training")
    by_method = work.get("methods") or {}
    methods = {"methods": len(by_method), "by_method": by_method}
    for kind, missing in (("wall", "methods_without_time"), ("cpu", "methods_without_cpu_time")):
        known = [t[kind] for t in by_method.values() if t[kind] is not None]
        methods[kind] = sum(known, 0.0)
        methods[missing] = len(by_method) - len(known)
    stages = [t for t in (final, further, methods) if t]
    total = {k: sum((t[k] for t in stages if t.get(k) is not None), 0.0) for k in ("wall", "cpu")}
    out = {
        "final_training": final,
        "further_training": further,
        "methods": methods,
        "total": total,
    }
    return _rounded(out)


def _rounded(value):
    """Floats rounded to milliseconds, through dicts."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def _report_stage(r: _Run, gold: GoldStandard, scores: dict, manifest: dict) -> list[dict]:
    """Write ``manifest.json``, then the evaluation: ``metrics/``, ``plots/`` and
    ``report.html`` (:func:`evaluate_run`). Returns the agreement rows by checkpoint (the
    command line prints them as its summary table)."""
    r.dir.write_manifest(manifest)
    notes = run_notes(r.config, manifest, gold)
    evaluation = evaluate_run(
        r.dir, gold, scores, r.config, manifest, train=r.train, test=r.test, notes=notes
    )
    return evaluation.rows["by_checkpoint"]
