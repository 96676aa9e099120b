"""How long `explicit` (dense H + λI, Cholesky) takes as the model grows.

Times the whole `explicit` call, and the dense Gauss-Newton build and the Cholesky factorisation
on their own, for MLPs of about 5k, 10k and 20k trainable parameters in float32 and float64,
with n training instances and k test instances. Each configuration runs in its own process so
that its peak memory (max RSS) is its own.

    .venv/bin/python benchmarks/explicit_size.py [--sizes 5000 10000 20000] [--n 1000]
        [--k 10] [--threads 2] [--dtypes float32 float64]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

from fimo.data import ArrayDataset
from fimo.methods.curvature import gnvp
from fimo.methods.influence import explicit
from fimo.models import mlp
from fimo.task import Task

D_IN = 20


def hidden_for(params: int) -> int:
    """Width h of an MLP (20 → h → h → 2) with about ``params`` parameters: h² + 24h + 2."""
    return round((-24 + math.sqrt(24**2 - 4 * (2 - params))) / 2)


def one(params: int, dtype: str, n: int, k: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n + k, D_IN, generator=g, dtype=dt)
    y = (X[:, 0] + X[:, 1] > 0).long()
    h = hidden_for(params)
    model = mlp(D_IN, 2, hidden=(h, h), seed=0).to(dt)
    task = Task(model, ArrayDataset(X[:n], y[:n]), ArrayDataset(X[n:], y[n:]))
    P = task.num_params
    t0 = time.perf_counter()
    H = gnvp(task).dense()
    build = time.perf_counter() - t0
    H.diagonal().add_(1e-3)
    t0 = time.perf_counter()
    L = H.mT  # column-major view: factored in place, as `explicit` does
    torch.linalg.cholesky_ex(L, out=(L, torch.empty((), dtype=torch.int32)))
    chol = time.perf_counter() - t0
    del H, L
    t0 = time.perf_counter()
    explicit(task, range(k), range(n), damping=1e-3)
    whole = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return {
        "params": P,
        "dtype": dtype,
        "dense_build_s": build,
        "cholesky_s": chol,
        "explicit_s": whole,
        "peak_GiB": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("PARAMS", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = one(int(args.one[0]), args.one[1], args.n, args.k, args.threads)
        print(json.dumps(result))
        return
    print(f"explicit: n={args.n} training, k={args.k} test instances, {args.threads} threads")
    print(f"{'params':>7} {'dtype':>8} {'dense GN':>9} {'Cholesky':>9} {'explicit':>9} {'peak':>8}")
    for dtype in args.dtypes:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--one", str(size), dtype]
            cmd += ["--n", str(args.n), "--k", str(args.k), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{r['params']:>7} {dtype:>8} {r['dense_build_s']:>8.1f}s {r['cholesky_s']:>8.1f}s "
                f"{r['explicit_s']:>8.1f}s {r['peak_GiB']:>6.2f}GiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
