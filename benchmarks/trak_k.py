"""TRAK's accuracy and time against the projected dimension k, dense and Kronecker-factored
projections (issue 17; docs/benchmarks.md "TRAK from layer factors").

On the set-up of benchmarks/methods.py (UCI Adult, the MLP 106-128-128-2 with 30,466
parameters trained by SGD), computes unprojected TRAK (``proj_dim=None``: with n ≤ P its
kernel has rank n and fimo takes the thin SVD of the n × P features, so the truth is
computable here) and then, for every projection seed, dense TRAK at each ``--dense-k`` and
Kronecker TRAK at each ``--kron-k`` (seeds outermost, so the configurations are interleaved
in time). Prints per configuration the k actually used, the wall and CPU seconds (minimum
and mean over the seeds) and the cosine of the whole score matrix with unprojected TRAK (mean
and spread over the seeds); ``--traker`` adds the peer at ``--traker-k`` with its own
projection (run with the peers on PYTHONPATH, benchmarks/README.md). One process, one torch
thread by default (``--threads``).

    PYTHONPATH=$PWD/src .venv/bin/python benchmarks/trak_k.py --n-train 5000 --n-test 100 \\
        --seeds 0 1 2 [--traker] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fimo.methods import get_method
from methods import make_setup, traker_scores


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the two flattened matrices."""
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def timed(call):
    """(result, wall seconds, CPU seconds of this process) of ``call()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def fimo_trak(setup, **settings):
    """fimo's TRAK scores (test × train) and its settings record."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scores = get_method("trak")(setup.task, range(setup.k), range(setup.n), **settings)
    return scores.values, scores.settings


def summary(name: str, records: list[dict]) -> dict:
    """One table row from the per-seed records of one configuration."""
    cos = np.array([r["cosine"] for r in records])
    wall = np.array([r["wall"] for r in records])
    cpu = np.array([r["cpu"] for r in records])
    return {
        "config": name,
        "k_used": records[0]["k_used"],
        "split": records[0].get("split"),
        "wall_min": float(wall.min()),
        "wall_mean": float(wall.mean()),
        "cpu_min": float(cpu.min()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "cosine_max": float(cos.max()),
        "seeds": len(records),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dense-k", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--kron-k", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    parser.add_argument("--traker", action="store_true", help="also time traker (its own P)")
    parser.add_argument("--traker-k", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--no-reference", action="store_true", help="time only: no unprojected TRAK, no cosines"
    )
    parser.add_argument("--save-scores", type=Path, help="an .npz of every configuration's scores")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as workdir:
        setup = make_setup(args.hidden, args.n_train, args.n_test, args.epochs, 0, workdir)
        print(
            f"# {setup.task.num_params} parameters, n = {setup.n}, {setup.k} test, "
            f"training loss {setup.train_loss:.3f}",
            flush=True,
        )
        exact = None
        if not args.no_reference:
            (exact, info), wall, cpu = timed(lambda: fimo_trak(setup, proj_dim=None))
            print(
                f"# unprojected TRAK: {wall:.1f} s wall, {cpu:.1f} s CPU, kernel rank "
                f"{info['kernel_rank']}",
                flush=True,
            )
        saved = {}
        configs = [(f"dense k={k}", {"proj_dim": k}) for k in args.dense_k]
        configs += [
            (f"kronecker k={k}", {"proj_dim": k, "proj_structure": "kronecker"})
            for k in args.kron_k
        ]
        records: dict[str, list[dict]] = {name: [] for name, _ in configs}
        for seed in args.seeds:
            for name, settings in configs:
                (values, info), wall, cpu = timed(
                    lambda s=settings, r=seed: fimo_trak(setup, seed=r, **s)
                )
                record = {
                    "seed": seed,
                    "wall": wall,
                    "cpu": cpu,
                    "cosine": math.nan if exact is None else cosine(values, exact),
                    "k_used": info["projected_dim"],
                    "split": info["kronecker_split"],
                }
                records[name].append(record)
                saved[f"{name} seed {seed}"] = values
                print(f"# {name} seed {seed}: {json.dumps(record)}", flush=True)
        if args.traker:
            name = f"traker k={args.traker_k}"
            values, wall, cpu = timed(traker_scores(setup, args.traker_k, False))
            agree = math.nan if exact is None else cosine(values, exact)
            records[name] = [{"wall": wall, "cpu": cpu, "cosine": agree, "k_used": args.traker_k}]
            print(f"# {name}: {json.dumps(records[name][0])}", flush=True)

    rows = [summary(name, recs) for name, recs in records.items()]
    print("| projection | k used | wall s (min / mean) | CPU s (min) | cosine with unprojected |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['k_used']} | {r['wall_min']:.2f} / {r['wall_mean']:.2f} | "
            f"{r['cpu_min']:.2f} | {r['cosine_mean']:.3f} ({r['cosine_min']:.3f}-"
            f"{r['cosine_max']:.3f}) |"
        )
    if args.save_scores:
        np.savez(args.save_scores, **saved)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "rows": rows, "records": records},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
