"""The same runs on two CPUs: test accuracy differences of the runs two sweep directories share (matched by run id,
which hashes the config and the store's recipe), in points.

    python docs/results/fashion-mnist-ssl/compare_cpus.py docs/results/fashion-mnist-ssl/n100 \
        docs/results/fashion-mnist-ssl/amx-check
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def test_accuracies(sweep_dir: str) -> dict[str, float]:
    path = Path(sweep_dir) / "results.jsonl"
    try:
        with open(path) as rows:
            return {row["run_id"]: 100.0 * row["test_accuracy"] for row in map(json.loads, rows)}
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"{path}: expected a tt-sweep results file ({error})")


def main(first: str, second: str) -> None:
    a, b = test_accuracies(first), test_accuracies(second)
    shared = sorted(set(a) & set(b))
    if not shared:
        fail(f"{first} and {second} share no run id")
    differences = {run: b[run] - a[run] for run in shared}
    largest = max(shared, key=lambda run: abs(differences[run]))
    print(f"{len(shared)} shared runs, second minus first: mean {statistics.mean(differences.values()):+.2f}, "
          f"mean |difference| {statistics.mean(map(abs, differences.values())):.2f}, "
          f"largest {differences[largest]:+.2f} points ({largest}: {a[largest]:.2f} -> {b[largest]:.2f})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        fail("expected two sweep directories: compare_cpus.py FIRST_SWEEP_DIR SECOND_SWEEP_DIR")
    main(*sys.argv[1:])
