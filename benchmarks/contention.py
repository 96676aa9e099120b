"""How torch's thread count behaves when other processes share the cores.

Times 1,000 SGD steps of the Concrete preset's MLP (8-128-128-1, batch 128) with torch using
1 and then 2 threads, first on an idle machine and then with ``--hogs`` busy processes
running beside it, and prints the slowdowns. On an oversubscribed machine torch's threads
wait on one another at every operation, so one thread can be much faster than two.

    .venv/bin/python benchmarks/contention.py [--hogs 2] [--steps 1000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from fimo.models import mlp


def hog() -> None:
    while True:
        pass


def steps_time(threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    model = mlp(8, 1, hidden=(128, 128), seed=0)
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(927, 8, generator=g), torch.randn(927, 1, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(927, (128,), generator=g)
        loss = torch.nn.functional.mse_loss(model(X[batch]), Y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    idle = {t: steps_time(t, args.steps) for t in (1, 2)}
    hogs = [mp.Process(target=hog, daemon=True) for _ in range(args.hogs)]
    for p in hogs:
        p.start()
    try:
        time.sleep(0.5)
        shared = {t: steps_time(t, args.steps) for t in (1, 2)}
    finally:
        for p in hogs:
            p.terminate()
    print(f"{args.steps} SGD steps, MLP 8-128-128-1, batch 128; {args.hogs} busy processes beside")
    print(f"{'threads':>8s} {'idle (s)':>10s} {'shared (s)':>11s} {'slowdown':>9s}")
    for t in (1, 2):
        print(f"{t:8d} {idle[t]:10.2f} {shared[t]:11.2f} {shared[t] / idle[t]:8.1f}x")


if __name__ == "__main__":
    main()
