"""The digits demo against the baseline a user tries first: TwinTURBO heads vs LogisticRegression on the CLS vectors.

For each feature store (`--features`, repeatable: e.g. the float16 and the int8 extraction of the same images), each
seed and each requested setup (train/sweep/setups.py), trains one head exactly as `tt-train` does (`twinturbo.train.run.loop.train`
on the store's splits loaded once) and fits scikit-learn's `LogisticRegression(max_iter=5000)` on the CLS vectors of
the *same* labelled subset (the first draw of the run's data stream; checked against each run's
`labelled_indices`). Prints one table per store (per setup: mean/min/max test accuracy over the seeds, the baseline's,
the mean paired difference and the number of seeds won) and writes every run to `--json`.

    .venv/bin/python bench/digits_eval.py --features features/digits --setups 1-7 --seeds 42,1337,3435 \\
        --epochs 4 --batch-size 64 --lr 1e-4 --warmup 10 --jobs 2

Runs are independent processes of `--threads` intra-op threads each, `--jobs` at a time (a bench script, so it may
set thread counts; the library never does).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from twinturbo.train.sweep.setups import PAPER_SETUPS

TRAINING = ("epochs", "batch_size", "lr", "warmup", "proj_dim", "pred_dim", "disc_dim", "prior", "weight_decay")


def parse_list(text: str, kind=int) -> list:
    """'1-7' or '1,3,5' -> [1, ..., 7] / [1, 3, 5]."""
    out = []
    for part in text.split(","):
        if "-" in part and kind is int:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(kind(part))
    return out


def store_bytes(path: str) -> int:
    """`du -sb PATH`: the apparent size of the store (directory entries included), as the report quotes it."""
    return int(subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True).stdout.split()[0])


_CACHE: dict = {}


def _splits(features: str):
    """The store's splits in memory, once per worker process (what tt-train loads)."""
    if features not in _CACHE:
        import torch
        from twinturbo.common.store import open_store
        from twinturbo.train.run.data import load_split, num_classes_of
        with open_store(features) as store:
            store.require_complete()
            train = load_split(store, "train", torch.device("cpu"), progress=False)
            test = load_split(store, "test", torch.device("cpu"), progress=False)
            _CACHE[features] = (train, test, num_classes_of(store, train.labels))
    return _CACHE[features]


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_one(features: str, setup: int, seed: int, labels: int, critic: float, latent: float, training: dict) -> dict:
    """One tt-train run (in-process API, CPU); returns its row."""
    import torch
    from twinturbo.train.config import TrainConfig
    from twinturbo.train.run.loop import train

    spec = PAPER_SETUPS[setup]
    options = {k: v for k, v in training.items() if v is not None}
    warmup = options.pop("warmup", None)
    if warmup is not None:
        options["warmup_steps"] = warmup
    config = TrainConfig(loss=spec.loss, rescale=spec.rescale, critic_weight=critic if "critic" in spec.terms else 0.0,
                         latent_weight=latent if "latent" in spec.terms else 0.0, labels=labels, seed=seed, **options)
    train_split, test_split, num_classes = _splits(features)
    cpu_start = time.process_time()
    result = train(config, train_split, test_split, num_classes, torch.device("cpu"), progress=False)
    m = result.metrics
    return {"features": features, "setup": setup, "seed": seed, "labels": labels, "config": config.to_dict(),
            "test_accuracy": m["test_accuracy"], "per_epoch": [e["test_accuracy"] for e in m["epochs"]],
            "final_losses": m["epochs"][-1]["mean_losses"], "steps": m["steps"], "wall_time_s": m["wall_time_s"],
            "cpu_time_s": time.process_time() - cpu_start, "labelled_indices": m["labelled_indices"], "threads": torch.get_num_threads()}


def baseline(features: str, seed: int, labels: int) -> dict:
    """LogisticRegression(max_iter=5000) on the CLS vectors of the run's labelled subset; test accuracy."""
    from twinturbo.train.report.baseline import logistic_baseline, run_labelled_subset

    train_split, _, num_classes = _splits(features)
    subset = run_labelled_subset(train_split.labels.numpy(), labels, num_classes, seed)
    return {"features": features, "seed": seed, "labels": labels, "subset": subset.tolist(),
            "test_accuracy": logistic_baseline(features, labels, [seed])[seed]}


def table(features: str, rows: list[dict], base: dict[int, float]) -> str:
    """Markdown table: per setup mean/min/max over seeds, baseline, paired mean difference, seeds won."""
    lines = ["| setup | head mean | min | max | logreg mean | min | max | mean diff | won | s/run | CPU s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for setup in sorted({r["setup"] for r in rows}):
        mine = sorted((r for r in rows if r["setup"] == setup), key=lambda r: r["seed"])
        acc = [r["test_accuracy"] for r in mine]
        ref = [base[r["seed"]] for r in mine]
        diff = [a - b for a, b in zip(acc, ref)]
        name = f"{setup} {PAPER_SETUPS[setup].name}"
        lines.append(f"| {name} | {statistics.mean(acc):.3f} | {min(acc):.3f} | {max(acc):.3f} | "
                     f"{statistics.mean(ref):.3f} | {min(ref):.3f} | {max(ref):.3f} | {statistics.mean(diff):+.3f} | "
                     f"{sum(d > 0 for d in diff)}/{len(diff)} | {statistics.mean(r['wall_time_s'] for r in mine):.1f} | "
                     f"{statistics.mean(r['cpu_time_s'] for r in mine):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", action="append", required=True,
                        help="feature store (repeat to compare stores, e.g. float16 and int8)")
    parser.add_argument("--setups", default="1-7", help="setups 1-7 of Figures 2-4 (README), e.g. 1-7 or 1,7")
    parser.add_argument("--seeds", default="42,1337,3435")
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--critic", type=float, default=0.1, help="lambda_C of setups 2-7")
    parser.add_argument("--latent", type=float, default=0.1, help="lambda_L of setups 5-7")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--pred-dim", type=int, default=256)
    parser.add_argument("--disc-dim", type=int, default=128)
    parser.add_argument("--prior", default="uniform")
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay [TrainConfig: 0.01]")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run [cores // jobs]")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")), help="where the rows go")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)

    setups, seeds = parse_list(args.setups), parse_list(args.seeds)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    training = {k: getattr(args, k) for k in TRAINING}
    jobs = [(f, s, seed) for f in args.features for seed in seeds for s in setups]
    print(f"{len(jobs)} runs, {args.jobs} at a time x {threads} threads; training {training}", flush=True)

    start = time.perf_counter()
    context = get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        base_futures = [] if args.no_baseline else [pool.submit(baseline, f, seed, args.labels)
                                                    for f in args.features for seed in seeds]
        futures = [pool.submit(run_one, f, s, seed, args.labels, args.critic, args.latent, training)
                   for f, s, seed in jobs]
        rows = []
        for future in futures:
            row = future.result()
            rows.append(row)
            print(f"  {Path(row['features']).parent.name}/{Path(row['features']).name} setup {row['setup']} "
                  f"seed {row['seed']}: {row['test_accuracy']:.4f} per epoch "
                  f"{[round(a, 3) for a in row['per_epoch']]} ({row['wall_time_s']:.1f} s wall, {row['cpu_time_s']:.1f} s CPU)", flush=True)
        baselines = [f.result() for f in base_futures]
    total = time.perf_counter() - start

    report = {"argv": sys.argv, "training": training, "critic": args.critic, "latent": args.latent,
              "labels": args.labels, "jobs": args.jobs, "threads": threads, "total_wall_s": total,
              "stores": {}, "runs": rows, "baselines": baselines}
    for features in args.features:
        base = {b["seed"]: b["test_accuracy"] for b in baselines if b["features"] == features}
        for row in rows:  # the baseline must have seen the same labelled samples as the head
            match = [b for b in baselines if b["features"] == features and b["seed"] == row["seed"]]
            if row["features"] == features and match:
                assert sorted(match[0]["subset"]) == sorted(row["labelled_indices"]), "labelled subsets differ"
        mine = [r for r in rows if r["features"] == features]
        size = store_bytes(features)
        report["stores"][features] = {"bytes": size, "baseline": base}
        print(f"\n{features} ({size} bytes), --labels {args.labels}, seeds {seeds}")
        if base:
            print("logreg on CLS: " + ", ".join(f"seed {s} {a:.4f}" for s, a in sorted(base.items())))
            print(table(features, mine, base))
    for row in rows:
        row.pop("labelled_indices")
    for b in baselines:
        b.pop("subset")
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{len(rows)} runs in {total:.0f} s wall ({args.jobs} jobs); rows in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
