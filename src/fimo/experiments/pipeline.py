"""Run one experiment end to end into a run directory.

Layout (DESIGN.md ◆ Runs are data)::

    config.toml          the resolved settings
    manifest.json        fingerprints of data, model, gold standard and scores; timings
    model/final.pt       the final weights (state dict; loaded with weights_only=True)
    model/meta.json      the final-training record and its fingerprint
    further/             fingerprint.json, shards/seed-NNNNN.npz, gold.npz
    scores/<method>.npz  one Scores matrix per method
    metrics/             by_checkpoint.csv, seed_count.csv, noise_floor.csv, calibration.csv, ...
    plots/               PNG and SVG figures
    report.html

Every stage is cached by fingerprint: a second run with the same settings reuses the final
model, the finished gold-standard shards and the scores.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import json
import os
import pickle
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import fimo
from fimo.baselines import baseline
from fimo.data.base import check_pair
from fimo.errors import InputError, NumericalError
from fimo.evaluate import evaluate_run, rich_summary_table
from fimo.evaluate.rundir import model_summary, run_notes
from fimo.experiments.build import build_task, final_training_task, load_data
from fimo.experiments.config import Config
from fimo.further.gold import GoldStandard
from fimo.further.plan import steps_per_epoch
from fimo.further.runner import gold_standard, make_executor, runs_per_shard
from fimo.further.store import ShardStore, plan_shards
from fimo.io import (
    atomic_write,
    checksum_matches,
    fingerprint,
    non_default,
    remove_temporaries,
    write_json,
    write_text,
)
from fimo.methods import get_method
from fimo.scores import Scores
from fimo.task import Task
from fimo.training import evaluate_model, train_final

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RunResult:
    """What ``run`` returns: the run directory and everything computed in it."""

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
        return self.out / "report.html"


def choose_left_out(n_train: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct training indices drawn with ``numpy.random.default_rng(seed)``, sorted."""
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


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold an exclusive lock on the run directory; a second process stops at once.

    ``flock`` locks die with their process, so a killed run never leaves the directory stuck.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise InputError(
            f"{out} is in use by another fimo run ({owner}); wait for it to finish, "
            "or use another --out"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {platform.node()}")
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def run(
    config: Config,
    out: str | Path,
    overwrite: bool = False,
    console: Console | None = None,
    quiet: bool = False,
) -> RunResult:
    """Run ``config`` into ``out``: final model, gold standard, methods, metrics, report."""
    out = Path(out)
    with run_lock(out):
        remove_temporaries(out)  # left by a process killed while writing; never read
        return _run(config, out, overwrite, console, quiet)


def _run(config: Config, out: Path, overwrite: bool, console, quiet: bool) -> RunResult:
    console = console or Console(stderr=True, quiet=quiet)
    timings: dict[str, float] = {}
    device = _device(config.run.device)
    n_test_wanted = config.data.n_test

    # -- data and indices: every check before any work starts -------------------------------
    train, test = load_data(config)
    check_pair(train, test, "data.factory" if config.data.factory else "data")
    if n_test_wanted > len(test):
        raise InputError(
            f"data.n_test: got {n_test_wanted}, but there are only {len(test)} test instances"
        )
    test_idx = np.arange(n_test_wanted)
    left_out = choose_left_out(len(train), config.gold.left_out, config.gold.left_out_seed)
    methods = {name: get_method(name) for name in config.methods.names}
    out.mkdir(parents=True, exist_ok=True)
    if overwrite or not (out / "config.toml").exists():
        write_text(out / "config.toml", config.to_toml())  # a first run records it at once
    data_fp = fingerprint(train.inputs, train.targets, test.inputs, test.targets)

    # -- the final model --------------------------------------------------------------------
    task = build_task(config, train, test)
    model = task.model
    model_fp = fingerprint(
        data_fp, {"model": non_default(config.model), "training": non_default(config.training)}
    )
    t0 = time.perf_counter()
    model_dir = out / "model"
    meta_path = model_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    state = None
    if meta.get("fingerprint") == model_fp and (model_dir / "final.pt").exists():
        state = _load_final(model_dir / "final.pt", model)
    if state is not None:
        console.print(f"[dim]final model: reusing {model_dir / 'final.pt'}[/dim]")
    else:
        if meta and meta.get("fingerprint") != model_fp and not overwrite:
            raise InputError(
                f"{model_dir} holds a final model trained under other settings or data "
                f"(fingerprint {meta.get('fingerprint')}, now {model_fp}); pass --overwrite to "
                "train afresh, or --out to write elsewhere"
            )
        task.to(device)
        final_task = final_training_task(config, task, lambda t: _trunk_cached(t, console, quiet))
        final_task = _trunk_cached(final_task, console, quiet)
        with _progress(console, quiet) as bar:
            job = bar.add_task("final training", total=config.training.epochs)
            history = train_final(
                final_task, config.training, on_epoch=lambda e, loss: bar.advance(job)
            )
        del final_task
        task.to("cpu")
        atomic_write(model_dir / "final.pt", lambda p: torch.save(model.state_dict(), p))
        meta = {
            "fingerprint": model_fp,
            "training": config.training.as_dict(),
            "train_loss_by_epoch": history,
        }
    head_task = _trunk_cached(task, console, quiet)  # computed once, kept through task.to
    meta.update(evaluate_model(head_task))
    if "baseline" not in meta:
        meta.update(baseline(head_task))
    write_json(meta_path, meta)
    timings["final_training"] = time.perf_counter() - t0
    weights_fp = fingerprint(dict(model.state_dict()))
    model_metrics = {k: meta[k] for k in MODEL_METRICS if k in meta}
    console.print(model_summary(model_metrics), highlight=False)

    # -- the gold standard ------------------------------------------------------------------
    dtype = DTYPES[config.gold.dtype]
    task.to(device, dtype)
    further = config.further.as_dict()
    gold_fp = fingerprint(
        weights_fp,
        data_fp,
        non_default(config.further),
        left_out,
        test_idx,
        config.gold.dtype,
        device.type,
    )
    store = ShardStore(
        out / "further",
        gold_fp,
        {"settings": further, "dtype": config.gold.dtype, "device": device.type},
        overwrite=overwrite,
    )
    # the results on disk fit these settings (or are gone): only now may they replace the
    # recorded ones, so that a refused run leaves the directory's config.toml as it was
    write_text(out / "config.toml", config.to_toml())
    seeds = list(range(config.gold.first_seed, config.gold.first_seed + config.gold.seeds))
    per_shard = config.gold.left_out_per_shard or runs_per_shard(
        task, config.further, len(left_out), len(test_idx), config.gold.memory_budget_mb * 2**20
    )
    shards = plan_shards(seeds, len(left_out), per_shard)
    with warnings.catch_warnings():  # a damaged shard is reported once, by gold_standard
        warnings.simplefilter("ignore", RuntimeWarning)
        todo = [sh for sh in shards if store.load(sh) is None]
    per_seed = config.further.epochs * steps_per_epoch(len(train), config.further.batch_size)
    if config.further.max_steps is not None:
        per_seed = min(per_seed, config.further.max_steps)
    executor = make_executor(
        config.run.executor,
        config.run.workers,
        None if config.run.address == "local" else config.run.address,
    )
    in_process = config.run.executor == "local" and config.run.workers == 1
    t0 = time.perf_counter()
    with _progress(console, quiet) as bar:
        job = bar.add_task(
            f"further training: {len(shards) - len(todo)}/{len(shards)} shards done, "
            f"{len(seeds)} seeds × {1 + len(left_out)} runs",
            total=len(todo) * per_seed,
        )
        done = [len(shards) - len(todo)]

        def on_shard(shard, reused):
            if reused:
                return
            done[0] += 1
            if not in_process:
                bar.advance(job, per_seed)
            bar.update(
                job,
                description=f"further training: {done[0]}/{len(shards)} shards done, "
                f"{len(seeds)} seeds × {1 + len(left_out)} runs",
            )

        gold = gold_standard(
            task,
            config.further,
            seeds,
            left_out,
            test_idx,
            store=store,
            executor=executor,
            left_out_per_shard=per_shard,
            on_step=(lambda k: bar.advance(job, k)) if in_process else None,
            on_shard=on_shard,
        )
    timings["further_training"] = time.perf_counter() - t0
    if todo:
        timings["further_training_per_seed"] = timings["further_training"] / len(todo)

    # -- the methods ------------------------------------------------------------------------
    train_idx = np.arange(len(train)) if config.methods.train == "all" else left_out
    scores: dict[str, Scores] = {}
    skipped: dict[str, str] = {}
    method_fps = {}
    t0 = time.perf_counter()
    for name in config.methods.names:
        path = out / "scores" / f"{name}.npz"
        settings = config.methods.settings.get(name, {})
        if "further" in inspect.signature(methods[name]).parameters:  # horizon-matched
            settings = {
                "further": config.further.as_dict(),
                "steps": gold.steps.tolist(),
                **settings,
            }
        fp = fingerprint(
            weights_fp, data_fp, name, settings, test_idx, train_idx, config.gold.dtype
        )
        method_fps[name] = fp
        cached = _cached_scores(path, fp)
        if cached is not None:
            scores[name] = cached
            continue
        t_method = time.perf_counter()
        try:
            with _progress(console, quiet) as bar:
                job = bar.add_task(name, total=len(train_idx))
                result = methods[name](
                    task.with_cached_trunk(),
                    test_idx,
                    train_idx,
                    progress=lambda k, job=job: bar.advance(job, k),
                    **settings,
                )
        except (InputError, NumericalError) as exc:
            # a method that cannot run on this model (too large, indefinite curvature, a
            # diverging series) is skipped with its reason, not allowed to sink the run
            skipped[name] = str(exc)
            console.print(f"[yellow]skipped {name}:[/yellow] {exc}", highlight=False)
            continue
        result.settings["fingerprint"] = fp
        result.settings["seconds"] = round(time.perf_counter() - t_method, 3)
        timings[f"method_{name}"] = result.settings["seconds"]
        result.save(path)
        scores[name] = result
    timings["methods"] = time.perf_counter() - t0
    task.to("cpu", torch.float32)

    # -- evaluation and report --------------------------------------------------------------
    manifest = {
        "fimo_version": fimo.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "fingerprints": {
            "data": data_fp,
            "model_recipe": model_fp,
            "weights": weights_fp,
            "gold_standard": gold_fp,
            "scores": method_fps,
        },
        "model": model_metrics,
        "gold_standard": {
            "seeds": seeds,
            "left_out": left_out.tolist(),
            "test": [int(test_idx[0]), int(test_idx[-1]) + 1],
            "steps": gold.steps.tolist(),
            "left_out_per_shard": per_shard,
            "shards": len(shards),
            "executor": config.run.executor,
        },
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "skipped_methods": skipped,
    }
    write_json(out / "manifest.json", manifest)
    notes = run_notes(config, manifest, gold)
    evaluation = evaluate_run(
        out, gold, scores, config, manifest, train=train, test=test, notes=notes
    )
    rows = evaluation.rows["by_checkpoint"]
    table_console = Console(quiet=quiet)
    if not table_console.is_terminal:  # files and pipes get the whole table, unwrapped
        table_console = Console(quiet=quiet, width=120)
    table_console.print(rich_summary_table(rows, metric="cosine", centred=True))
    return RunResult(out, config, task, gold, scores, rows, model_metrics, timings)


def _load_final(path: Path, model: torch.nn.Module) -> dict | None:
    """Load the saved final weights into ``model`` (weights only: no pickled code is run).

    Returns the state dict, or None when the file is damaged (its checksum does not match: a
    warning says so and the model is trained again, to the same weights).
    """
    if checksum_matches(path) is False:
        warnings.warn(
            f"{path} is damaged (its checksum does not match); training the final model again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    fix = "delete it (or pass --overwrite) to train the final model again"
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise InputError(
            f"{path} holds pickled Python objects beyond plain tensors, which fimo never loads "
            f"(they could run code); {fix}"
        ) from None
    except Exception as exc:  # cut short, or not a PyTorch file
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(
            f"{path} is damaged or not a PyTorch state dict ({type(exc).__name__}: {first}); {fix}"
        ) from None
    try:
        model.load_state_dict(state)
    except Exception as exc:  # another architecture (e.g. a model factory that changed)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise InputError(f"{path} does not fit the configured model ({first}); {fix}") from None
    return state


def _cached_scores(path: Path, fp: str) -> Scores | None:
    """The scores saved at ``path`` under fingerprint ``fp``, or None: absent, made under other
    settings, or damaged (a warning says so; they are recomputed, never used)."""
    if not path.exists():
        return None
    if not checksum_matches(path):
        warnings.warn(
            f"{path} is damaged or incomplete (no checksum, or its bytes do not match it); "
            "recomputing it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        cached = Scores.load(path)
    except (InputError, KeyError, ValueError) as exc:
        warnings.warn(f"{path} cannot be read ({exc}); recomputing it", RuntimeWarning, 3)
        return None
    return cached if cached.settings.get("fingerprint") == fp else None
