"""Retrain rows of a sweep's results.jsonl with this checkout and compare every per-epoch figure: the check that a
change left training unchanged (on a CPU of the kind the rows record, with their thread count).

    .venv/bin/python bench/retrain.py docs/results/fashion-mnist/n100 --features features/fashion-mnist \
        --setups 1,2,7 --seed 42

Takes, per setup asked for, the first row of that setup and seed; prints one line per row (equal or not, with both
curves) and exits 1 when any differs.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

import torch

from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.run.data import num_classes_of
from twinturbo.train.run.loop import train
from twinturbo.train.run.memory import load_splits
from twinturbo.train.sweep.results import RESULTS_FILE, read_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--features", required=True)
    parser.add_argument("--setups", default="1,2,7")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    rows = read_rows(args.sweep_dir / RESULTS_FILE)
    chosen = [next(r for r in rows if str(r["setup"]) == setup and r["config"]["seed"] == args.seed)
              for setup in args.setups.split(",")]
    known = {f.name for f in fields(TrainConfig)}
    with open_store(args.features) as store:
        train_split, test_split = load_splits(store, torch.device("cpu"), progress=False)
        num_classes = num_classes_of(store, train_split.labels)
    differ = 0
    for row in chosen:
        torch.set_num_threads(int(row["threads"]))
        config = TrainConfig(**{k: v for k, v in row["config"].items() if k in known})
        metrics = train(config, train_split, test_split, num_classes, torch.device("cpu"), progress=False).metrics
        now = [e["test_accuracy"] for e in metrics["epochs"]], [e.get("val_accuracy") for e in metrics["epochs"]], \
            [e["mean_losses"] for e in metrics["epochs"]]
        then = row["epoch_accuracies"], row.get("epoch_val_accuracies") or [None] * len(now[0]), row["epoch_losses"]
        same = now == tuple(then)
        differ += not same
        print(f"{row['run_id']}: {'identical' if same else 'DIFFERENT'} per-epoch test {now[0]} vs {then[0]}, "
              f"validation {now[1]} vs {then[1]}, losses {'equal' if now[2] == then[2] else 'differ'}", flush=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
