"""bf16 against fp32 on the same runs: each pair's test accuracies, the mean difference, and the seed-to-seed noise
each difference is judged against (the rule for switching --precision auto to bf16: |mean difference| <= 0.3 points
and no pair apart by more than the standard deviation over seeds of its setup).

The runs are two tt-sweep directories with one grid, one in each precision (the commands are in bench/README.md);
the noise comes from a third sweep with more seeds at the same settings (the committed Fashion-MNIST study).

    .venv/bin/python bench/precision.py bench/precision/fp32 bench/precision/bf16 \
        --noise docs/results/fashion-mnist/v1-fp32-test-selected/sweep-n100

Prints one line per pair, then the verdict, and writes bench/precision.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from twinturbo.train.sweep.results import RESULTS_FILE, read_rows

MAX_MEAN_DIFFERENCE = 0.3  # points


def key_of(row: dict) -> tuple:
    config = row["config"]
    return (row["setup"], config["labels"], config["critic_weight"], config["latent_weight"], config["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path, help="sweep directory of the fp32 runs")
    parser.add_argument("bf16", type=Path, help="sweep directory of the same grid in bf16")
    parser.add_argument("--noise", type=Path, required=True, help="sweep directory with >= 3 seeds of these setups")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    fp32 = {key_of(r): r for r in read_rows(args.fp32 / RESULTS_FILE)}
    bf16 = {key_of(r): r for r in read_rows(args.bf16 / RESULTS_FILE)}
    seeds_of: dict[tuple, list[float]] = {}
    for row in read_rows(args.noise / RESULTS_FILE):
        seeds_of.setdefault(key_of(row)[:4], []).append(100 * row["test_accuracy"])
    pairs = []
    for key in sorted(set(fp32) & set(bf16)):
        a, b = 100 * fp32[key]["test_accuracy"], 100 * bf16[key]["test_accuracy"]
        seeds = seeds_of.get(key[:4], [])
        noise = statistics.stdev(seeds) if len(seeds) >= 2 else float("nan")
        pairs.append({"setup": key[0], "labels": key[1], "critic": key[2], "latent": key[3], "seed": key[4],
                      "fp32": a, "bf16": b, "difference": b - a, "seed_std": noise, "noise_seeds": len(seeds),
                      "fp32_s": fp32[key]["wall_time_s"], "bf16_s": bf16[key]["wall_time_s"]})
        print(f"setup {key[0]} λC={key[2]:g} λL={key[3]:g} seed {key[4]}: fp32 {a:.2f}  bf16 {b:.2f}  "
              f"Δ {b - a:+.2f}  (seed std of the setup {noise:.2f}, {len(seeds)} seeds)  "
              f"time {fp32[key]['wall_time_s']:.0f} s -> {bf16[key]['wall_time_s']:.0f} s")
    if not pairs:
        raise SystemExit("error: the two sweeps share no run")
    mean = statistics.mean(p["difference"] for p in pairs)
    within = all(abs(p["difference"]) <= p["seed_std"] for p in pairs)
    speed = sum(p["fp32_s"] for p in pairs) / sum(p["bf16_s"] for p in pairs)
    verdict = abs(mean) <= MAX_MEAN_DIFFERENCE and within
    result = {"pairs": pairs, "mean_difference": mean, "every_pair_within_seed_std": within,
              "wall_time_ratio_fp32_over_bf16": speed, "bf16_may_be_default": verdict}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"mean difference bf16 - fp32 over {len(pairs)} pairs: {mean:+.3f} points (rule: |mean| <= "
          f"{MAX_MEAN_DIFFERENCE}); every pair within its setup's seed std: {within}")
    print(f"run time fp32 / bf16: {speed:.2f}x; bf16 may be the default: {verdict}  (wrote {args.json})")


if __name__ == "__main__":
    main()
