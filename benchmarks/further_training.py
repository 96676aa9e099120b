"""Further training: fimo's vectorised engine against the reference code's loop.

The paper's reference code trains one run at a time: a model, a fresh torch.optim optimizer,
a DataLoader-style loop. fimo advances the full run and all left-out runs of a seed together.
Both do the same work here (Adult, MLP 106-128-128-2, batch 128, `drop` scheme, SGD), and the
script checks that they give the same test losses before it prints the times and their ratio.

    .venv/bin/python benchmarks/further_training.py [--left-out 40] [--steps 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fimo.data import load_adult
from fimo.further.engine import FurtherSettings, further_train_seed
from fimo.models import mlp
from fimo.task import Task


class DropSampler(torch.utils.data.Sampler):
    """The reference code's sampler: RandomSampler's permutation with one index removed."""

    def __init__(self, n, leave_out, generator):
        self.n, self.leave_out, self.generator = n, leave_out, generator

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        if self.leave_out is not None:
            order.remove(self.leave_out)
        yield from order

    def __len__(self):
        return self.n - (self.leave_out is not None)


def loop_run(task, settings, seed, leave_out, steps, test, dataloader):
    """One run, one Python loop: through a DataLoader as the reference code does, or tight."""
    model = mlp(task.train.inputs.shape[1], 2)
    model.load_state_dict(task.model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    X, Y = task.train.inputs, task.train.targets
    B = settings.batch_size
    if dataloader:
        data = torch.utils.data.TensorDataset(X, Y)
        sampler = DropSampler(len(X), leave_out, gen)
        batches = iter(torch.utils.data.DataLoader(data, batch_size=B, sampler=sampler))
    else:
        order = torch.randperm(len(X), generator=gen).tolist()
        if leave_out is not None:
            order.remove(leave_out)
        batches = (
            (X[order[s * B : (s + 1) * B]], Y[order[s * B : (s + 1) * B]]) for s in range(steps)
        )
    for _ in range(steps):
        xb, yb = next(batches)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(task.test.inputs[test]).double()
        return torch.nn.functional.cross_entropy(out, task.test.targets[test], reduction="none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--left-out", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, test_data = load_adult()
    task = Task(mlp(train.inputs.shape[1], 2), train, test_data)
    left_out = np.sort(np.random.default_rng(0).choice(len(train), args.left_out, replace=False))
    test = np.arange(100)
    settings = FurtherSettings(lr=1e-4, epochs=1, max_steps=args.steps)
    runs = 1 + len(left_out)

    further_train_seed(task, settings, 0, left_out[:2], test)  # warm-up
    t0 = time.perf_counter()
    res = further_train_seed(task, settings, 0, left_out, test)
    t_fimo = time.perf_counter() - t0

    step_us = lambda t: t / (runs * args.steps) * 1e6  # noqa: E731
    print(f"Adult, MLP 106-128-128-2, batch 128, {runs} runs × {args.steps} steps, 2 threads")
    print(
        f"  fimo vectorised             : {t_fimo:7.2f} s  ({step_us(t_fimo):5.0f} µs per run-step)"
    )
    for label, dataloader in (
        ("loop with DataLoader (ref.)", True),
        ("tight loop, tensor indexing", False),
    ):
        t0 = time.perf_counter()
        full = loop_run(task, settings, 0, None, args.steps, test, dataloader)
        loo = [loop_run(task, settings, 0, int(i), args.steps, test, dataloader) for i in left_out]
        t_loop = time.perf_counter() - t0
        err = max(
            float(np.abs(res.loss_full[-1] - full.numpy()).max()),
            max(
                float(np.abs(res.loss_without[-1, :, j] - x.numpy()).max())
                for j, x in enumerate(loo)
            ),
        )
        print(
            f"  {label:<28}: {t_loop:7.2f} s  ({step_us(t_loop):5.0f} µs per run-step)"
            f"  fimo is {t_loop / t_fimo:4.1f}× faster; max |Δ test loss| {err:.1e}"
        )


if __name__ == "__main__":
    main()
