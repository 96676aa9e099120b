"""LoRA further training on the text model: time and peak memory of one gold-standard seed.

On the ``reviews`` preset's data and model (all-MiniLM-L6-v2 + a linear head on [CLS],
snippets of 48 tokens) with its further-training recipe (AdamW 1e-5, clipping 1, batch 32,
``downweight``), one seed of the gold standard (the full run and ``--left-out`` left-out
runs, ``--steps`` steps, test losses every 2 steps) under each way of choosing θ:

- ``top``: the preset's default: the top encoder layer's Linear layers and the head, fully
  (1.77 M parameters; modules 0–5 are a frozen trunk, computed once);
- ``lora_qv``: LoRA rank ``--rank`` on the query and value projections of all six encoder
  layers (only the embedding is a frozen trunk; every step runs through six layers);
- ``lora_all``: LoRA on every Linear layer (six per encoder layer, and the head);
- ``full6`` (``--full6``): all six encoder layers' Linear layers and the head, fully
  (10.6 M parameters): what LoRA stands in for.

Each runs in its own child process, which reports its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) before and after further training, so that the
numbers are that setting's alone. The weights are the pretrained encoder with a freshly
initialised head (no final training: the time and memory do not depend on the values).

    PYTHONPATH=src .venv/bin/python benchmarks/lora.py [--n-train 256] [--left-out 4] \
        [--steps 4] [--rank 8] [--threads 1] [--full6]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

TOP = [
    "6.attention.self.*",
    "6.attention.output.dense.*",
    "6.intermediate.dense.*",
    "6.output.dense.*",
    "7.*",
]
LINEAR_PARTS = ("attention.self.*", "attention.output.dense.*", "intermediate.dense.*")
FULL6 = [f"{k}.{part}" for k in range(1, 7) for part in (*LINEAR_PARTS, "output.dense.*")]
FULL6.append("7.*")
SETTINGS = ("top", "lora_qv", "lora_all", "full6")


def peak_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(setting: str, n_train: int, n_test: int, rank: int):
    """The task of ``setting`` on the first ``n_train`` / ``n_test`` reviews."""
    from fimo import Task
    from fimo.data import load_reviews
    from fimo.lora import with_lora
    from fimo.text import minilm_classifier

    train, test = load_reviews(max_length=48)
    train, test = train[np.arange(n_train)], test[np.arange(n_test)]
    model = minilm_classifier(classes=2, seed=0)
    if setting == "top":
        return Task(model, train, test, trainable=TOP)
    if setting == "full6":
        return Task(model, train, test, trainable=FULL6)
    targets = ["query", "value"] if setting == "lora_qv" else ["*"]
    return with_lora(Task(model, train, test), rank=rank, targets=targets, seed=0)


def child(args) -> dict:
    """One setting, timed and measured in this process; the record as a dict."""
    from fimo.further.engine import FurtherSettings, further_train_seed

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    task = build(args.child, args.n_train, args.n_test, args.rank)
    head = task.with_cached_trunk()
    trunk_seconds = time.perf_counter() - started
    before = peak_mib()
    settings = FurtherSettings(
        optimizer="adamw", lr=1e-5, weight_decay=0.0, clip_norm=1.0, epochs=1,
        max_steps=args.steps, batch_size=32, scheme="downweight", record_every=2,
    )  # fmt: skip
    left_out = np.arange(args.left_out) * 7  # spread over the subset
    started = time.perf_counter()
    result = further_train_seed(head, settings, 0, left_out, np.arange(args.n_test))
    seconds = time.perf_counter() - started
    return {
        "setting": args.child,
        "theta": task.num_params,
        "trunk_modules": task.trunk_length(),
        "setup_seconds": round(trunk_seconds, 1),
        "further_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / args.steps, 2),
        "peak_mib_before": round(before),
        "peak_mib_after": round(peak_mib()),
        "finite": bool(np.isfinite(result.loss_without).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--left-out", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--full6", action="store_true", help="also all six layers, fully")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    chosen = [s for s in SETTINGS if s != "full6" or args.full6]
    print(
        f"one seed: 1 + {args.left_out} runs, {args.steps} steps of batch 32, {args.n_test} test, "
        f"first {args.n_train} training reviews, {args.threads} thread(s)"
    )
    header = f"{'setting':<9} {'θ':>11} {'trunk':>5} {'s/step':>7} {'further s':>9}"
    print(header + f" {'peak MiB before':>15} {'after':>6} {'Δ':>6}")
    for setting in chosen:
        argv = [sys.executable, __file__, "--child", setting, *sys.argv[1:]]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        delta = r["peak_mib_after"] - r["peak_mib_before"]
        print(
            f"{setting:<9} {r['theta']:>11,} {r['trunk_modules']:>5} {r['seconds_per_step']:>7} "
            f"{r['further_seconds']:>9} {r['peak_mib_before']:>15} {r['peak_mib_after']:>6} "
            f"{delta:>6}",
            flush=True,
        )


if __name__ == "__main__":
    main()
