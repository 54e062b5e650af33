"""Fused sweep training against the same runs trained one after another (issue 6, item 4).

K runs that share a label budget and seed (K setups/lambdas of section 4.4) are trained twice in this process on the
same in-memory features: once fused (`loop.train_runs`, one pass with stacked parameters, the runs' forwards one after
another as the CPU default does, and again as one vmap over the run axis as on a GPU) and once as K separate
`loop.train` runs. Prints the wall times and the speed ratio as its last lines; writes bench/sweep.json.

    .venv/bin/python bench/sweep.py --features demo/features/digits          # the README demo's store
    .venv/bin/python bench/sweep.py                                          # a synthetic store of digits' shape

Goal on a GPU: fused >= 3x faster than one after another.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from twinturbo.common.device import resolve_device
from twinturbo.common.store import SplitLayout, create_store, open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.run.data import load_split, num_classes_of
from twinturbo.common.device import Acceleration
from twinturbo.train.run.loop import train, train_runs

# Eight runs of one seed: a mix of the seven setups' losses, rescalings and terms (all with critic and latent on,
# so that both ways do the same work per run).
RUNS = [("cat_cross", "softmax"), ("cat_twin", "softmax"), ("cat_twin", "sigmoid"), ("bin_cross", "softmax"),
        ("bin_cross", "sigmoid"), ("cat_cross", "softmax"), ("cat_twin", "sigmoid"), ("bin_cross", "softmax")]
CRITIC = (0.01, 0.1, 1.0, 0.1, 1.0, 0.1, 0.01, 1.0)
LATENT = (0.01, 0.1, 1.0, 1.0, 0.1, 0.01, 0.1, 0.01)


def synthetic_store(path: Path, dim: int = 1280) -> Path:
    """Digits' shape from effnet-lite0 at 64 px: 1257 train / 540 test, CLS 1280, 4 patch tokens of 1280."""
    rng = np.random.default_rng(0)
    n_train, n_test, tokens, chunk = 1257, 540, 4, 256
    layouts = {"train": SplitLayout(n_train, dim, tokens, dim), "test": SplitLayout(n_test, dim, tokens, dim)}
    store = create_store(path, {"dataset": "synthetic", "backbone": "synthetic", "weights_id": "none",
                                "resolution": 64, "class_names": [str(i) for i in range(10)]}, layouts, chunk)
    centres = rng.normal(size=(10, dim)).astype(np.float32)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        for c in range(-(-n // chunk)):
            a, b = c * chunk, min((c + 1) * chunk, n)
            cls = centres[labels[a:b]] + rng.normal(size=(b - a, dim)).astype(np.float32)
            patches = cls[:, None, :] + rng.normal(size=(b - a, tokens, dim)).astype(np.float32)
            store.write_chunk(split, c, cls, patches, labels[a:b])
    store.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", help="a tt-extract store (default: a synthetic one of digits' shape)")
    parser.add_argument("--runs", type=int, default=8, help="K runs (at most 8)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--proj-dim", type=int, default=256)
    parser.add_argument("--pred-dim", type=int, default=128)
    parser.add_argument("--disc-dim", type=int, default=64)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--synthetic-dim", type=int, default=1280, help="token width of the synthetic store")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        features = (Path(args.features) if args.features
                    else synthetic_store(Path(scratch) / "store", args.synthetic_dim))
        device = resolve_device(args.device)
        store = open_store(features)
        train_split = load_split(store, "train", device, progress=False)
        test_split = load_split(store, "test", device, progress=False)
        num_classes = num_classes_of(store, train_split.labels)
        configs = [TrainConfig(loss=loss, rescale=rescale, critic_weight=c, latent_weight=l, labels=args.labels,
                               seed=42, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, warmup_steps=10,
                               proj_dim=args.proj_dim, pred_dim=args.pred_dim, disc_dim=args.disc_dim)
                   for (loss, rescale), c, l in list(zip(RUNS, CRITIC, LATENT))[:args.runs]]

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        if device.type == "cuda":  # warm-up (context, cuBLAS handles, allocator) so neither side pays first calls
            train_runs(configs[:2], train_split, test_split, num_classes, device, progress=False)
            sync()
        start = time.perf_counter()
        fused = [r.metrics for r in train_runs(configs, train_split, test_split, num_classes, device, progress=False)]
        sync()
        fused_s = time.perf_counter() - start
        batched_s = None
        if device.type == "cpu":  # the GPU's vmap path, timed on the CPU: what decides Acceleration's CPU default
            start = time.perf_counter()
            train_runs(configs, train_split, test_split, num_classes, device, progress=False,
                       acceleration=Acceleration(batched_runs=True))
            batched_s = time.perf_counter() - start
        start = time.perf_counter()
        separate = [train(c, train_split, test_split, num_classes, device, progress=False) for c in configs]
        sync()
        separate_s = time.perf_counter() - start

    accuracy_gap = max(abs(f["test_accuracy"] - s.metrics["test_accuracy"]) for f, s in zip(fused, separate))
    steps = fused[0]["steps"]
    result = {
        "runs": len(configs), "steps_per_run": steps, "device": str(device), "features": str(args.features or
                                                                                           "synthetic digits shape"),
        "batch_size": args.batch_size, "proj_dim": args.proj_dim, "epochs": args.epochs,
        "fused_s": fused_s, "separate_s": separate_s, "speedup": separate_s / fused_s,
        "fused_vmap_on_cpu_s": batched_s,
        "max_accuracy_difference": accuracy_gap, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    out = args.json
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"K={len(configs)} runs x {steps} steps on {device} ({result['features']}), "
          f"max |accuracy fused - separate| = {accuracy_gap:.4f}; wrote {out}")
    print(f"one after another: {separate_s:.1f} s")
    print(f"fused:             {fused_s:.1f} s")
    if batched_s is not None:
        print(f"fused, vmap over runs (the GPU path) on the CPU: {batched_s:.1f} s ({fused_s / batched_s:.2f}x of "
              "fused one after another)")
    print(f"speed ratio (one after another / fused): {separate_s / fused_s:.2f}x")


if __name__ == "__main__":
    main()
