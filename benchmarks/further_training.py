"""Further training: fimo's engine against the reference code's way of doing it.

(a) the naive loop, written the way the paper's reference code works (PAPER.md §2): one run
at a time, a ``DataLoader`` over a ``TensorDataset`` with a sampler that drops the left-out
index from ``RandomSampler``'s permutation, a fresh ``torch.optim`` optimizer per run;
(b) the paper's own semantics in full (PAPER.md §2, ``train_one_run``/``train_all_runs``,
written here from that description): a map-style ``Dataset`` of single rows collated by the
``DataLoader``, the sampler's permutation turned into a Python list and the index removed
with ``list.remove``, ``loss.item()`` at every step, the final model read from disk
(``torch.load``) for every run, and the test losses through a test ``DataLoader`` after every
epoch;
(c) fimo's engine, fused batched-matmul path (the default for MLPs) on one thread (fimo's
default, docs/benchmarks.md *Threads and a shared machine*) and on ``--threads``;
(d) fimo's engine, generic path (``vmap(grad)`` over the run axis);
(e) fimo's engine with ``--workers`` worker processes of one thread each (default: the
available cores; their start-up is included in the time).

All compute the same gold standard (Adult, MLP 106-128-128-2, batch 128, SGD lr 1e-4,
``drop`` scheme). The script first checks in float64 that they agree (relative difference of
the adjusted losses), then times them in float32 and prints times, seconds per run-epoch,
ratios against (a) and (b), floating-point rates next to the rate of a large matrix product on
this machine, the load average beside each figure, and the per-seed cosine of the adjusted
differences of fimo against (b) (issue 17 asks for ≥ 0.998).

    .venv/bin/python benchmarks/further_training.py [--seeds 3] [--left-out 10] [--epochs 1]

``--skip adult mnist reviews`` instead times the engine with and without letting each left-out
run start at its first step that differs from the full run (``SKIP_SHARED_STEPS``), on the
shapes of those presets, checks that both give the same arrays bit for bit, and prints the
ratio, with the number of run-steps each computes (from the schedule alone; ``--count-only``
prints just those). ``reviews`` uses the preset's trainable part (MiniLM's top layer and the head, 1.77 M
parameters) on random hidden states in place of the frozen layers' outputs (the time does not
depend on their values; computing them takes minutes) and the `drop` scheme: the preset's
`downweight` gains nothing (every run differs from the first step; shown on `adult`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from fimo.data import ArrayDataset, load_adult
from fimo.further import engine as further_engine
from fimo.further.engine import FurtherSettings
from fimo.further.plan import differs_from_full, schedule
from fimo.further.runner import LocalExecutor, gold_standard
from fimo.further.threads import available_cores
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


def naive_run(task, settings, seed, leave_out, test):
    """One run the reference code's way; test losses at the end of every epoch, (C, T)."""
    model = mlp(task.train.inputs.shape[1], 2).to(task.train.inputs.dtype)
    model.load_state_dict(task.model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(task.train.inputs, task.train.targets)
    loader = torch.utils.data.DataLoader(
        data, batch_size=settings.batch_size, sampler=DropSampler(len(data), leave_out, gen)
    )
    out = []
    for _ in range(settings.epochs):
        for step, (xb, yb) in enumerate(loader):
            if settings.max_steps is not None and step >= settings.max_steps:
                break
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = model(task.test.inputs[test]).double()
            out.append(
                torch.nn.functional.cross_entropy(logits, task.test.targets[test], reduction="none")
            )
    return torch.stack(out).numpy()


def naive_gold(task, settings, seeds, left_out, test):
    full = np.stack([naive_run(task, settings, s, None, test) for s in seeds])
    without = np.stack(
        [
            np.stack([naive_run(task, settings, s, int(i), test) for i in left_out], -1)
            for s in seeds
        ]
    )
    return without - full[..., None]


# -- the paper's own semantics (PAPER.md §2), written from its description ----------------------


class Rows(torch.utils.data.Dataset):
    """A map-style dataset handing out one (features, label) row per index, as the paper's
    tabular datasets do; the ``DataLoader`` collates each batch from the single rows."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]


class LeaveOneOutSampler(torch.utils.data.Sampler):
    """A fresh permutation of all n indices per epoch from the run's generator (the draw the
    full run's ``RandomSampler`` makes), turned into a Python list with the left-out index
    removed: the order is the full run's without that one index."""

    def __init__(self, n: int, leave_out: int, generator: torch.Generator):
        self.n, self.leave_out, self.generator = n, leave_out, generator

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        order.remove(self.leave_out)
        return iter(order)

    def __len__(self) -> int:
        return self.n - 1


def paper_run(model_path, train: Rows, test_loader, settings, seed: int, leave_out):
    """One further-training run as the paper's ``train_one_run`` works: the final model read
    from disk, a fresh optimizer, a seeded sampler, the batch loss read with ``.item()`` at
    every step, and each test instance's loss (eval mode) after every epoch, (C, T)."""
    model = torch.load(model_path, weights_only=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    if leave_out is None:
        sampler = torch.utils.data.RandomSampler(train, generator=generator)
    else:
        sampler = LeaveOneOutSampler(len(train), leave_out, generator)
    loader = torch.utils.data.DataLoader(train, batch_size=settings.batch_size, sampler=sampler)
    per_epoch = []
    for _ in range(settings.epochs):
        model.train()
        running = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += loss.item()
        model.eval()
        with torch.no_grad():
            losses = [
                torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
                for xb, yb in test_loader
            ]
        per_epoch.append(torch.cat(losses).double())
    return torch.stack(per_epoch).numpy()


def paper_gold(task, settings, seeds, left_out, test, folder):
    """The paper's ``train_all_runs``: per seed the full run, then one run per left-out index;
    the final model saved once with ``torch.save`` and loaded by every run. Returns the
    adjusted differences (S, C, T, L)."""
    path = f"{folder}/model_final.pth"
    torch.save(task.model, path)
    train = Rows(task.train.inputs, task.train.targets)
    test_rows = Rows(task.test.inputs[test], task.test.targets[test])
    test_loader = torch.utils.data.DataLoader(test_rows, batch_size=settings.batch_size)
    adjusted = []
    for seed in seeds:
        full = paper_run(path, train, test_loader, settings, seed, None)
        without = [paper_run(path, train, test_loader, settings, seed, int(i)) for i in left_out]
        adjusted.append(np.stack(without, -1) - full[..., None])
    return np.stack(adjusted)


def matmul_rate(size=2048, repeats=10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9


def flops_per_run_step(d, hidden, classes, batch) -> float:
    """Forward 2·B·Σ(in·out); backward: weight gradients the same again, input gradients for
    every layer but the first."""
    widths = [d, *hidden, classes]
    layer = [widths[k] * widths[k + 1] for k in range(len(widths) - 1)]
    return 2 * batch * (2 * sum(layer) + sum(layer[1:]))


def adult_workload(scheme: str, epochs: int):
    """The adult preset's further training (16 seeds there; 2 here)."""
    train, test = load_adult()
    task = Task(mlp(train.inputs.shape[1], 2), train, test)
    settings = FurtherSettings(lr=1e-4, epochs=epochs, scheme=scheme)
    return task, settings, [0, 1], 40, 100


def mnist_workload():
    """The mnist preset's further training (4 seeds there; 2 here): the generic vmap path."""
    from fimo.data import load_mnist
    from fimo.models import resnet_small

    train, test = load_mnist()
    task = Task(resnet_small(), train, test)
    settings = FurtherSettings(lr=1e-3, epochs=1, record_every=8)
    return task, settings, [0, 1], 20, 50


def reviews_workload():
    """The reviews preset's trainable part and step count, `drop` scheme (see above), 1 seed."""
    from fimo.text import minilm_classifier

    model = minilm_classifier(2)
    head = model[6:]  # the top encoder layer and the head, under their names in the model
    trainable = [
        n
        for n, _ in head.named_parameters()
        if n.startswith("7.") or (n.startswith("6.") and "LayerNorm" not in n)
    ]
    g = torch.Generator().manual_seed(0)

    def data(n):
        hidden = torch.randn(n, 48, 384, generator=g)
        packed = torch.cat([hidden, torch.ones(n, 48, 1)], -1)
        return ArrayDataset(packed, torch.randint(2, (n,), generator=g))

    task = Task(head, data(10886), data(100), trainable=trainable)
    settings = FurtherSettings(
        optimizer="adamw", lr=1e-5, clip_norm=1.0, epochs=1, max_steps=24, batch_size=32,
        record_every=2,
    )  # fmt: skip
    return task, settings, [0], 16, 100


def time_gold(task, settings, seeds, left_out, test, skip: bool):
    further_engine.SKIP_SHARED_STEPS = skip
    try:
        start = time.perf_counter()
        executor = LocalExecutor(threads=torch.get_num_threads())  # --threads
        gold = gold_standard(task, settings, seeds, left_out, test, executor=executor)
        return time.perf_counter() - start, gold
    finally:
        further_engine.SKIP_SHARED_STEPS = True


def run_steps(task, settings, seeds, left_out) -> tuple[int, int]:
    """(rows computed from step 0, rows computed joining): the stack's size summed over the
    steps and seeds, from the schedule alone (two rows at least: the engine's spare row)."""
    old = new = 0
    for seed in seeds:
        plan = schedule(
            len(task.train), left_out, settings.batch_size, settings.epochs, seed,
            settings.scheme, settings.max_steps,
        )  # fmt: skip
        joined = torch.zeros(1 + len(left_out), dtype=torch.bool)
        joined[0] = True
        for item in plan:
            joined |= differs_from_full(item)
            old += 1 + len(left_out)
            new += max(2, int(joined.sum()))
    return old, new


def skip_comparison(names: list[str], repeats: int, count_only: bool) -> None:
    """Time every run from step 0 against runs joining at their first differing step."""
    workloads = {
        "adult, drop, 1 epoch": lambda: adult_workload("drop", 1),
        "adult, drop, 2 epochs": lambda: adult_workload("drop", 2),
        "adult, downweight, 1 epoch": lambda: adult_workload("downweight", 1),
        "mnist, drop, 1 epoch": mnist_workload,
        "reviews, drop, 24 steps": reviews_workload,
    }
    print(
        f"{'workload':28s} {'run-steps':>16s} {'ratio':>6s} {'from step 0':>12s} "
        f"{'joining':>9s} {'ratio':>6s}  identical"
    )
    for label, make in workloads.items():
        if label.split(",")[0] not in names:
            continue
        task, settings, seeds, n_left, n_test = make()
        left_out = np.sort(np.random.default_rng(0).choice(len(task.train), n_left, replace=False))
        test = np.arange(n_test)
        old_rows, new_rows = run_steps(task, settings, seeds, left_out)
        counted = f"{label:28s} {old_rows:7d} → {new_rows:6d} {old_rows / new_rows:5.2f}x"
        if count_only:
            print(counted, flush=True)
            continue
        before, after = [], []
        for _ in range(repeats):  # alternated, the minimum of each: the machine is shared
            t, old = time_gold(task, settings, seeds, left_out, test, skip=False)
            before.append(t)
            t, new = time_gold(task, settings, seeds, left_out, test, skip=True)
            after.append(t)
        same = np.array_equal(old.loss_full, new.loss_full) and np.array_equal(
            old.loss_without, new.loss_without
        )
        print(
            f"{counted} {min(before):10.1f} s {min(after):7.1f} s "
            f"{min(before) / min(after):5.2f}x  {same}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--left-out", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--skip", nargs="+", choices=["adult", "mnist", "reviews"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument("--count-only", action="store_true", help="with --skip: no timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.skip:
        skip_comparison(args.skip, args.repeats, args.count_only)
        return
    comparison(args)


def load_average() -> str:
    """The machine's 1-minute load average (``uptime``), to print beside every figure."""
    return f"load {os.getloadavg()[0]:.1f}"


def per_seed_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between two (S, ...) arrays, one value per seed (over all other axes)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def comparison(args) -> None:
    """Agreement in float64, then times in float32: fimo, the naive loop, the paper's code."""
    train, test_data = load_adult()
    task = Task(mlp(train.inputs.shape[1], 2), train, test_data)
    left_out = np.sort(np.random.default_rng(0).choice(len(train), args.left_out, replace=False))
    test = np.arange(100)
    seeds = list(range(args.seeds))
    folder = tempfile.mkdtemp(prefix="fimo-bench-")
    print(f"{load_average()} at the start; torch threads {torch.get_num_threads()}")

    # -- agreement, float64, one seed × 5 left-out instances × 1 epoch -----------------------
    task.to(dtype=torch.float64)
    check = FurtherSettings(lr=1e-4, epochs=1)
    ref = naive_gold(task, check, seeds[:1], left_out[:5], test)
    for engine in ("generic", "auto"):
        s = FurtherSettings(lr=1e-4, epochs=1, engine=engine)
        got = gold_standard(task, s, seeds[:1], left_out[:5], test).adjusted()
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        print(f"float64 check ({engine} vs naive loop): max relative difference {rel:.1e}")
    got = paper_gold(task, check, seeds[:1], left_out[:5], test, folder)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"float64 check (paper's code vs naive loop): max relative difference {rel:.1e}")
    task.to(dtype=torch.float32)

    # -- timings, float32 --------------------------------------------------------------------
    settings = FurtherSettings(lr=1e-4, epochs=args.epochs)
    steps = args.epochs * -(-len(train) // settings.batch_size)
    runs = len(seeds) * (1 + len(left_out))
    flop = flops_per_run_step(train.inputs.shape[1], (128, 128), 2, 128) * runs * steps
    peak = matmul_rate()
    threads = f"{args.threads} thread{'s' * (args.threads > 1)}"
    print(
        f"\nAdult MLP {train.inputs.shape[1]}-128-128-2, batch 128, SGD lr 1e-4: {len(seeds)} "
        f"seeds × {1 + len(left_out)} runs × {steps} steps, float32; {threads} unless said "
        "otherwise"
    )
    print(f"large float32 matrix product: {peak:.0f} GFLOP/s ({load_average()})")
    fimo_ways = {
        "fimo, fused, 1 thread (default)": ("auto", LocalExecutor()),
        f"fimo, fused, {threads}": ("auto", LocalExecutor(threads=args.threads)),
        f"fimo, generic vmap, {threads}": ("generic", LocalExecutor(threads=args.threads)),
    }
    if args.workers > 1:  # one shard per seed here; the workers' start-up is included
        fimo_ways[f"fimo, fused, {args.workers} workers × 1"] = (
            "auto",
            LocalExecutor(args.workers),
        )
    times, losses = {}, {}
    for label, (engine, executor) in fimo_ways.items():
        s = FurtherSettings(lr=1e-4, epochs=args.epochs, engine=engine)
        warm = FurtherSettings(lr=1e-4, max_steps=3, engine=engine)
        gold_standard(task, warm, [0], left_out, test, executor=executor)
        t0 = time.perf_counter()
        gold = gold_standard(task, s, seeds, left_out, test, executor=executor)
        times[label] = (time.perf_counter() - t0, load_average())
        losses[label] = gold.adjusted()
    t0 = time.perf_counter()
    naive_gold(task, settings, seeds, left_out, test)
    times["naive loop (TensorDataset)"] = (time.perf_counter() - t0, load_average())
    t0 = time.perf_counter()
    paper = paper_gold(task, settings, seeds, left_out, test, folder)
    times["paper's code (PAPER.md §2)"] = (time.perf_counter() - t0, load_average())
    naive, by_paper = times["naive loop (TensorDataset)"][0], times["paper's code (PAPER.md §2)"][0]
    print(
        f"  {'':<36} {'time':>7}  {'s/run-epoch':>11}  {'GFLOP/s':>7}  {'of matmul':>9}  "
        f"{'vs naive':>8}  {'vs paper':>8}  load"
    )
    for label, (t, load) in times.items():
        rate = flop / t / 1e9
        print(
            f"  {label:<36} {t:6.1f}s  {t / (runs * args.epochs):11.3f}  {rate:7.0f}  "
            f"{rate / peak:9.0%}  {naive / t:7.1f}×  {by_paper / t:7.1f}×  {load}"
        )
    for label, adjusted in losses.items():
        cos = per_seed_cosine(adjusted, paper)
        verdict = "ok" if cos.min() >= 0.998 else "BELOW 0.998"
        print(
            f"per-seed cosine of the adjusted differences, {label} vs the paper's code: "
            f"{' '.join(f'{c:.5f}' for c in cos)} ({verdict})"
        )


if __name__ == "__main__":
    main()
