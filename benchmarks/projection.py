"""Projected gradients in Grad-Dot, Grad-Cos and DataInf against the unprojected scores
(issue 15 part 4; docs/methods.md "Projected gradients").

For a finished run directory (final model and gold standard, e.g. ``fimo run adult``), each
(method, proj_dim) is computed in a fresh child process (so its peak memory is its own) on
the test instances of the run and on the left-out instances plus a seeded random sample of
the other training instances; prints, for each, the seconds, the child's peak resident
memory, the cosine with the unprojected scores (the whole matrix, and the mean over test
rows) and the agreement with the gold standard (mean cosine with the centred gold standard
at the last checkpoint, as the report's table).

    .venv/bin/python benchmarks/projection.py runs/adult --proj-dims 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRATCH = Path("/tmp/fimo_projection_bench")


def _task(run_dir: Path):
    from fimo.experiments.build import build_task, load_data
    from fimo.experiments.config import load_config
    from fimo.experiments.rundir import RunDir

    config = load_config(run_dir / "config.toml")
    train, test = load_data(config)
    task = build_task(config, train, test)
    RunDir(run_dir).load_final(task.model)
    return config, task


def _columns(run_dir: Path, n_train: int, extra: int) -> np.ndarray:
    gold = _gold(run_dir)
    rest = np.setdiff1d(np.arange(n_train), gold.left_out)
    sample = np.random.default_rng(0).choice(rest, size=min(extra, len(rest)), replace=False)
    return np.sort(np.concatenate([gold.left_out, sample]))


def _gold(run_dir: Path):
    from fimo.experiments.rundir import RunDir

    return RunDir(run_dir).load_gold()


def one(run_dir: Path, method: str, proj_dim: int | None, extra: int) -> None:
    """Child process: compute one (method, proj_dim), save its scores, print a JSON record."""
    import torch

    from fimo.methods import get_method

    torch.set_num_threads(1)
    config, task = _task(run_dir)
    test = np.arange(config.data.n_test)
    train = _columns(run_dir, len(task.train), extra)
    settings = dict(config.methods.settings.get(method, {}))
    started = time.perf_counter()
    scores = get_method(method)(task, test, train, proj_dim=proj_dim, **settings)
    seconds = time.perf_counter() - started
    path = SCRATCH / f"{method}-{proj_dim}.npz"
    scores.save(path)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "path": str(path)}))


def _agreement(gold, path: str) -> float:
    from fimo.evaluate import agreement_by_checkpoint
    from fimo.scores import Scores

    scores = Scores.load(path)
    cols = np.searchsorted(scores.train, gold.left_out)
    sub = Scores(scores.values[:, cols], scores.test, gold.left_out, scores.method)
    rows = agreement_by_checkpoint(gold, {"m": sub}, ["cosine"])
    return rows[-1]["mean"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--proj-dims", default="256,1024,4096")
    parser.add_argument("--methods", default="grad_dot,grad_cos,datainf")
    parser.add_argument("--extra-train", type=int, default=2000)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "PROJ_DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    SCRATCH.mkdir(exist_ok=True)
    if args.one:
        method, dim = args.one
        one(args.run_dir, method, None if dim == "none" else int(dim), args.extra_train)
        return
    from fimo.scores import Scores

    gold = _gold(args.run_dir)
    dims = ["none", *args.proj_dims.split(",")]
    print(
        "| method | proj_dim | seconds | peak MB | cosine, whole matrix | mean row cosine "
        "| agreement with gold (cosine, centred, last checkpoint) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        exact = None
        for dim in dims:
            cmd = [
                sys.executable,
                __file__,
                str(args.run_dir),
                "--one",
                method,
                dim,
                "--extra-train",
                str(args.extra_train),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            values = Scores.load(record["path"]).values
            if exact is None:
                exact = values
            whole = float((values * exact).sum() / np.linalg.norm(values) / np.linalg.norm(exact))
            rows = (values * exact).sum(1) / (
                np.linalg.norm(values, axis=1) * np.linalg.norm(exact, axis=1)
            )
            print(
                f"| {method} | {dim} | {record['seconds']:.1f} | {record['peak_mb']:.0f} | "
                f"{whole:.4f} | {rows.mean():.4f} | {_agreement(gold, record['path']):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
