"""`unrolled_quadratic` on a preset's model and settings: time it, profile it, compare two versions.

Builds the preset's task as `fimo run` does (data, MLP, final training with the preset's recipe,
cached in ``--cache``; the model in the gold standard's dtype), the checkpoints' step counts of
its further training (epoch ends) and the method's settings from the preset, then

- ``--profile``: runs the method once under cProfile and prints the top entries;
- ``--compare``: runs the current code and a ``--baseline`` checkout of the module
  (``git show <rev>:src/fimo/methods/unrolled_quadratic.py``) interleaved, ``--repeats`` times
  each, and prints the minimum wall and CPU seconds of each, their ratio, the load average,
  the largest relative score difference and the smallest per-checkpoint cosine.

    PYTHONPATH=src .venv/bin/python benchmarks/unrolled_quadratic_speed.py --preset credit adult \
        --compare --baseline b9131da --repeats 2
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fimo.experiments.build import build_task, load_data
from fimo.experiments.config import load_config
from fimo.further.plan import steps_per_epoch
from fimo.methods import unrolled_quadratic as current
from fimo.training import train_final

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def preset_task(name: str, cache: Path):
    """(config, task on the gold standard's dtype, the method's settings with the steps)."""
    config = load_config(name)
    train, test = load_data(config)
    task = build_task(config, train, test)
    path = cache / f"{name}-final.pt"
    if path.exists():
        task.model.load_state_dict(torch.load(path))
    else:
        started = time.perf_counter()
        train_final(task, config.training)
        torch.save(task.model.state_dict(), path)
        print(f"final training: {time.perf_counter() - started:.0f} s (cached in {path})")
    task.to(dtype=DTYPES[config.gold.dtype])
    per = steps_per_epoch(len(task.train), config.further.batch_size)
    steps = [per * (e + 1) for e in range(config.further.epochs)]
    settings = {
        "further": config.further.as_dict(),
        "steps": steps,
        **config.methods.settings.get("unrolled_quadratic", {}),
    }
    return config, task, settings


def baseline_module(rev: str):
    """The module as it was at git revision ``rev``, imported under another name."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:src/fimo/methods/unrolled_quadratic.py"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    path = Path(f"/tmp/unrolled_quadratic_{rev}.py")
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"uq_baseline_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def timed(fn):
    """(wall seconds, CPU seconds, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    """The cosine of the two score matrices at each checkpoint."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).tolist()


def profiled(run, module) -> None:
    """Run once under cProfile; print the time, the record and the top entries."""
    profile = cProfile.Profile()
    wall, cpu, scores = timed(lambda: profile.runcall(run, module))
    record = {
        k: v for k, v in scores.settings.items() if k not in ("iterations", "error_estimates")
    }
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s; record: {record}")
    if "iterations" in scores.settings:
        its = np.asarray(scores.settings["iterations"])
        print(f"Lanczos iterations: min {its.min()}, median {np.median(its)}, max {its.max()}")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


def compared(name: str, run, old, repeats: int) -> None:
    """Run ``old`` and the current module interleaved; print the minima and the differences."""
    best = {"before": [np.inf, np.inf], "after": [np.inf, np.inf]}
    results = {}
    for r in range(repeats):
        for label, module in (("before", old), ("after", current)):
            wall, cpu, scores = timed(lambda module=module: run(module))
            best[label] = [min(best[label][0], wall), min(best[label][1], cpu)]
            results[label] = scores.values
            print(f"  {name} repeat {r} {label}: wall {wall:.1f} s, CPU {cpu:.1f} s, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        a, b = results["before"], results["after"]
        print(f"  {name} repeat {r}: max |difference| / max |score| "
              f"{np.abs(a - b).max() / np.abs(a).max():.1e}", flush=True)  # fmt: skip
    a, b = results["before"], results["after"]
    per = [float(np.linalg.norm(x - y) / np.linalg.norm(x)) for x, y in zip(a, b, strict=True)]
    print(f"{name} ({time.strftime('%Y-%m-%d %H:%M')}, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}): "
          f"before wall {best['before'][0]:.1f} s CPU {best['before'][1]:.1f} s; "
          f"after wall {best['after'][0]:.1f} s CPU {best['after'][1]:.1f} s; "
          f"ratio wall {best['before'][0] / best['after'][0]:.1f}x "
          f"CPU {best['before'][1] / best['after'][1]:.1f}x; max |difference| / max |score| "
          f"{np.abs(a - b).max() / np.abs(a).max():.1e}; relative difference per checkpoint "
          f"{[f'{x:.1e}' for x in per]}; cosine per checkpoint "
          f"{[round(c, 10) for c in cosines(a, b)]}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", nargs="+", default=["credit"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fimo-uq-bench"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--baseline", default="b9131da")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--solver", default=None, help="override the preset's solver")
    parser.add_argument("--n-test", type=int, default=None, help="fewer test instances")
    parser.add_argument("--n-train", type=int, default=None, help="score fewer instances")
    parser.add_argument("--profile-baseline", action="store_true", help="profile --baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    old = baseline_module(args.baseline)
    for name in args.preset:
        config, task, settings = preset_task(name, args.cache)
        if args.solver:
            settings = {**settings, "solver": args.solver}
        test = range(args.n_test or config.data.n_test)
        train = range(args.n_train or len(task.train))
        shown = {k: v for k, v in settings.items() if k != "further"}
        print(f"{name}: P = {task.num_params}, n = {len(task.train)}, {len(test)} test, "
              f"{len(train)} scored, settings {shown}, {args.threads} thread(s)", flush=True)  # fmt: skip

        def run(module, task=task, test=test, train=train, settings=settings):
            return module.unrolled_quadratic(task.with_cached_trunk(), test, train, **settings)

        if args.profile:
            profiled(run, old if args.profile_baseline else current)
        if args.compare:
            compared(name, run, old, args.repeats)


if __name__ == "__main__":
    sys.exit(main())
