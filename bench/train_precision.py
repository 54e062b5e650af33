"""bf16 against fp32 through the command: tt-train in each precision, in turns, one thread, and the ratio of their
time per step (what a sweep worker gets from bf16, where bench/limit.py times the step alone).

    .venv/bin/python bench/train_precision.py --features features/views/fashion-mnist --turns 3

Each turn trains the same run (setup 2 by default: --critic 1; the study's widths, 100 labels) once in fp32 and once
in bf16 with OMP_NUM_THREADS=1; a run's time per step is its metrics.json `wall_time_s` / `steps` (evaluations
included, as a user waits for them). Prints one line per run, then the medians and their ratio, and writes
bench/train_precision.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from twinturbo.common.device import cpu_bf16_units

PRECISIONS = ("fp32", "bf16")


def train_once(tt_train: Path, features: str, precision: str, run_args: list[str], out: Path) -> dict:
    """One tt-train run; its metrics.json (one `error:` line and exit 2 if it fails)."""
    done = subprocess.run([str(tt_train), "--features", features, "--precision", precision, "--device", "cpu",
                           "--quiet", "--out", str(out), *run_args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if done.returncode != 0:
        print(f"error: tt-train --precision {precision} failed ({done.returncode}): "
              f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr)
        sys.exit(2)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, help="a store from tt-extract")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--run-args", default="--critic 1 --labels 100 --epochs 1 --proj-dim 1024 --pred-dim 256 "
                        "--disc-dim 128", help="tt-train's options besides features, precision, device and out")
    args = parser.parse_args()
    if not Path(args.features).exists():
        print(f"error: --features {args.features} does not exist (expected a store from tt-extract)", file=sys.stderr)
        sys.exit(2)
    tt_train = Path(sys.executable).parent / "tt-train"
    per_step: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as scratch:
        for turn in range(args.turns):
            for precision in PRECISIONS:
                metrics = train_once(tt_train, args.features, precision, args.run_args.split(),
                                     Path(scratch) / f"{precision}-{turn}")
                per_step[precision].append(1e3 * metrics["wall_time_s"] / metrics["steps"])
                print(f"turn {turn + 1} {precision}: {per_step[precision][-1]:.1f} ms/step "
                      f"({metrics['steps']} steps, test {100 * metrics['test_accuracy']:.2f}%)", flush=True)
    medians = {p: statistics.median(v) for p, v in per_step.items()}
    ratio = medians["fp32"] / medians["bf16"]
    print(f"tt-train, 1 thread: fp32 {medians['fp32']:.1f} ms/step, bf16 {medians['bf16']:.1f} ms/step: "
          f"bf16 is {ratio:.2f}x fp32")
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "cpu": platform.processor() or platform.machine(),
                                     "bf16_units": cpu_bf16_units(), "run_args": args.run_args,
                                     "ms_per_step": per_step, "median_ms_per_step": medians,
                                     "bf16_speedup": ratio}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
