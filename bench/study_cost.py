"""What a committed study costs, read off its own rows: the median `wall_time_s` of one run per cell (a head, a label
budget, a setup), per CPU kind, and what one seed of the grid costs on one core.

    .venv/bin/python bench/study_cost.py docs/results/fashion-mnist-heads/sweep --by head,setup
    .venv/bin/python bench/study_cost.py docs/results/fashion-mnist-budgets/sweep --by labels,setup

A row's `wall_time_s` is the run as its sweep worker lived it (evaluations included) and its `host` says the CPU kind
(name and bf16 units: "AMD EPYC (avx512_bf16)", "AMD EPYC (no bf16 units)"); rows of different kinds are never
pooled. Whether the machine was otherwise idle is not in a row: the studies' READMEs say what ran beside them. The
grid cells are read from each row's config (`head`, `labels`) and its setup name, so the script needs no grid file;
"runs per seed" counts the cell's distinct configurations but for the seed (the λ grid of the setup, as far as its
rows have reached).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

KEYS = {"head": lambda row: row["config"].get("head", "twinturbo"),
        "labels": lambda row: row["config"]["labels"],
        "setup": lambda row: row["setup_name"]}


def cpu_kind(row: dict) -> str:
    """The row's CPU name and bf16 units, as its host recorded them."""
    host = row.get("host") or {}
    return f"{host.get('cpu', '?')} ({host.get('bf16_units') or 'no bf16 units'})"


def read_sweep(sweep_dir: Path) -> list[dict]:
    """The rows of `sweep_dir/results.jsonl` (one `error:` line and exit 2 if it is missing or a line is not JSON)."""
    path = sweep_dir / "results.jsonl"
    if not path.is_file():
        print(f"error: {path} does not exist (expected a tt-sweep output folder)", file=sys.stderr)
        sys.exit(2)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"error: {path} line {number} is not JSON (a cut line: run tt-sweep on it to drop it)",
                  file=sys.stderr)
            sys.exit(2)
    return rows


def _order(value) -> tuple:
    """Numbers before names, numbers by value (40 before 250)."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def cost_table(rows: list[dict], by: list[str]) -> list[dict]:
    """One entry per (CPU kind, cell): runs, runs per seed, median seconds per run and per step, seconds per seed."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        cells[(cpu_kind(row), *(KEYS[key](row) for key in by))].append(row)
    table = []
    for (kind, *cell), members in sorted(cells.items(), key=lambda item: tuple(map(_order, item[0]))):
        seeds = {row["config"]["seed"] for row in members}
        per_run = statistics.median(row["wall_time_s"] for row in members)
        per_seed = len({json.dumps({**row["config"], "seed": None}, sort_keys=True) for row in members})
        table.append({"cpu": kind, **dict(zip(by, cell)), "rows": len(members), "seeds": len(seeds),
                      "runs_per_seed": per_seed, "median_s_per_run": per_run,
                      "median_ms_per_step": statistics.median(1e3 * row["wall_time_s"] / row["steps"]
                                                              for row in members),
                      "s_per_seed": per_run * per_seed})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a tt-sweep output folder (its results.jsonl)")
    parser.add_argument("--by", default="head,setup", help=f"the cell, comma-separated, of {', '.join(KEYS)}")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    by = [key for key in args.by.split(",") if key]
    unknown = [key for key in by if key not in KEYS]
    if unknown or not by:
        print(f"error: --by {args.by!r}: expected a comma-separated list of {', '.join(KEYS)}", file=sys.stderr)
        sys.exit(2)
    rows = read_sweep(args.sweep)
    if not rows:
        print(f"error: {args.sweep / 'results.jsonl'} holds no rows yet", file=sys.stderr)
        sys.exit(2)
    table = cost_table(rows, by)
    print(f"| CPU | {' | '.join(by)} | rows (seeds) | runs per seed | one run, median | ms per step | one seed, one core |")
    print(f"|---|{'---|' * len(by)}---:|---:|---:|---:|---:|")
    for entry in table:
        print(f"| {entry['cpu']} | {' | '.join(str(entry[key]) for key in by)} | {entry['rows']} ({entry['seeds']}) | "
              f"{entry['runs_per_seed']} | {entry['median_s_per_run']:.0f} s | {entry['median_ms_per_step']:.0f} | "
              f"{entry['s_per_seed']:.0f} s |")
    for kind in sorted({entry["cpu"] for entry in table}):
        total = sum(entry["s_per_seed"] for entry in table if entry["cpu"] == kind)
        print(f"{kind}: one seed of every cell above {total:.0f} s = {total / 60:.1f} min on one core")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "by": by, "table": table}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
