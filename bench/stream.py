"""Training on a split larger than memory (train/run/stream.py) against the same run with the split in memory.

Two figures, each from one run of this script:

1. speed: steps/s of a critic run (setup 2: the unlabelled batch is read every step) with the train split streamed
   (--memory-limit half the split) against the same run in memory, on the same store, interleaved rounds, best of
   each (goal >= 0.9);
2. memory: the peak RSS (VmHWM, reset after a warm-up) a streamed run whose split is twice the limit adds to its
   process (a fresh process; measured after the same run on a small store, so that libraries, the model and allocator
   pools are already there), against the limit, and the same for the run in memory (which must grow by more than the
   split). Not ru_maxrss: a child process inherits its parent's at fork, and this script's parent holds a store.

    python bench/stream.py --features features/fashion-mnist   # speed on a real store, memory on a random one
    python bench/stream.py --smoke                             # small sizes (run by the test suite)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

BENCH = Path(__file__).parent
CLASSES = 10

RSS_CHILD = textwrap.dedent("""
    import json, pathlib, sys
    import torch
    from twinturbo.train.config import TrainConfig
    from twinturbo.train.run.rundir import train_from_store
    torch.set_num_threads(1)
    big, small, out, limit = sys.argv[1:]
    # fp32: the figure is about the split's bytes; bf16 adds ~50 MB of fixed oneDNN state (measured, bench/README.md)
    config = TrainConfig(labels=100, epochs=1, batch_size=512, critic_weight=0.1, proj_dim=32, pred_dim=16,
                         disc_dim=8, eval_batch_size=512, precision="fp32")
    def status(field):  # kB figures of this process's own memory; not ru_maxrss, which a child inherits at fork
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    train_from_store(small, config, torch.device("cpu"), out_dir=pathlib.Path(out) / "small", progress=False)
    try:
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from the current RSS
    except OSError:
        pass
    before = status("VmRSS")
    result, _ = train_from_store(big, config, torch.device("cpu"), out_dir=pathlib.Path(out) / "big", progress=False,
                                 memory_limit=None if limit == "none" else int(limit))
    peak = status("VmHWM")
    print(json.dumps({"grown": peak - before, "streamed": result.metrics["unlabelled_pass"]["streamed"]}))
""")


def write_random_store(path: Path, n_train: int, n_test: int, chunk: int = 64, cls_dim: int = 256,
                       num_patches: int = 4, patch_dim: int = 96) -> Path:
    """A real-format store of random float16 tokens, written fast (one random chunk, rolled per chunk)."""
    from twinturbo.common.store import SplitLayout, create_store

    rng = np.random.default_rng(0)
    block = rng.normal(size=(chunk, num_patches, patch_dim)).astype(np.float16)
    cls_block = rng.normal(size=(chunk, cls_dim)).astype(np.float16)
    layouts = {"train": SplitLayout(n_train, cls_dim, num_patches, patch_dim),
               "test": SplitLayout(n_test, cls_dim, num_patches, patch_dim)}
    with create_store(path, {"dataset": path.name, "backbone": "random", "weights_id": "none", "resolution": 0,
                             "class_names": [f"c{c}" for c in range(CLASSES)]}, layouts, chunk) as store:
        for split, size in (("train", n_train), ("test", n_test)):
            for k in range(-(-size // chunk)):
                rows = min(chunk, size - k * chunk)
                store.write_chunk(split, k, np.roll(cls_block, k, axis=0)[:rows], np.roll(block, k, axis=0)[:rows],
                                  (np.arange(rows) + k) % CLASSES)
    return path


def peak_rss_growth(big: Path, small: Path, out: Path, limit: int | None) -> dict:
    """{grown: bytes, streamed: bool} of a tt-train run on `big` in a fresh process (see the module docstring)."""
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(big), str(small), str(out),
                           "none" if limit is None else str(limit)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the measured run failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def memory_figures(folder: Path, samples: int) -> dict:
    """Peak RSS growth of a run whose split is twice the limit, streamed and in memory."""
    row = 2 * (256 + 4 * 96)
    big = write_random_store(folder / "big", samples, 1024)
    small = write_random_store(folder / "small", 2048, 1024)
    limit = samples * row // 2
    streamed = peak_rss_growth(big, small, folder / "streamed", limit)
    in_memory = peak_rss_growth(big, small, folder / "memory", None)
    return {"split_bytes": samples * row, "limit_bytes": limit, "streamed_growth_bytes": streamed["grown"],
            "in_memory_growth_bytes": in_memory["grown"], "streamed": streamed["streamed"],
            "in_memory_streamed": in_memory["streamed"]}


def speed_figures(features: Path, rounds: int, widths: tuple[int, int, int], threads: int) -> dict:
    """Best steps/s of one epoch of a setup-2 run, streamed (limit: half the train split) and in memory."""
    import torch

    from twinturbo.common.store import open_store
    from twinturbo.train.config import TrainConfig
    from twinturbo.train.run.data import num_classes_of
    from twinturbo.train.run.memory import load_splits
    from twinturbo.train.run.loop import train

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    config = TrainConfig(loss="cat_cross", critic_weight=0.1, epochs=1, proj_dim=widths[0], pred_dim=widths[1],
                         disc_dim=widths[2])
    rates: dict[str, list[float]] = {"memory": [], "streamed": []}
    with open_store(features) as store:
        reader = store.split("train")
        half = reader.loaded_nbytes(quantised=reader.patch_dtype == "int8") // 2
        held = {"memory": load_splits(store, device, None, progress=False),
                "streamed": load_splits(store, device, half, progress=False)}
        classes = num_classes_of(store, held["memory"][0].labels)
        for _ in range(rounds):
            for mode, (train_split, test_split) in held.items():
                metrics = train(config, train_split, test_split, classes, device, progress=False).metrics
                assert metrics["unlabelled_pass"]["streamed"] == (mode == "streamed")
                rates[mode].append(metrics["steps"] / metrics["wall_time_s"])
    return {"features": str(features), "rounds": rounds, "threads": threads, "widths": list(widths),
            "steps_per_s_memory": max(rates["memory"]), "steps_per_s_streamed": max(rates["streamed"]),
            "all_rates": rates, "ratio": max(rates["streamed"]) / max(rates["memory"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, help="store for the speed figure [a random 20k-sample store]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", default="1024,256,128", help="proj,pred,disc widths of the speed run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-samples", type=int, default=240_000,
                        help="train samples (1280 bytes each) of the memory figure's store")
    parser.add_argument("--smoke", action="store_true", help="small sizes: 1 round on 8k samples, 120k for memory")
    parser.add_argument("--json", type=Path, default=BENCH / "stream.json")
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    rounds, memory_samples = (1, 120_000) if args.smoke else (args.rounds, args.memory_samples)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        features = args.features or write_random_store(folder / "speed", 8192 if args.smoke else 20_000, 1024)
        speed = speed_figures(features, rounds, (32, 16, 8) if args.smoke else widths, args.threads)
        memory = memory_figures(folder, memory_samples)
    figures = {"smoke": args.smoke, "speed": speed, "memory": memory}
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    mib = 2**20
    print(f"steps/s streamed {speed['steps_per_s_streamed']:.2f} vs in memory {speed['steps_per_s_memory']:.2f}: "
          f"{speed['ratio']:.2f}x (goal >= 0.9)")
    print(f"peak RSS growth, split {memory['split_bytes'] / mib:.0f} MiB, limit {memory['limit_bytes'] / mib:.0f} MiB: "
          f"streamed {memory['streamed_growth_bytes'] / mib:.0f} MiB, in memory "
          f"{memory['in_memory_growth_bytes'] / mib:.0f} MiB")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
