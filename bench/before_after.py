"""The head step before and after a change: bench/limit.py of two checkouts (each with its own `.venv`), run in turns
on the same machine, and the ratio of their step times per setup and precision.

    git worktree add ../before <commit> && make -C ../before setup
    .venv/bin/python bench/before_after.py ../before . --turns 3 -- --setups 1,2 --no-choices --rounds 2

Each turn runs the `before` checkout's bench/limit.py, then the `after` one's, with the arguments after `--` (the
setups both know); a setup's figure is the median over the turns of each side's median step time. Prints one line per
setup and precision (ms per step before and after, the speedup, each side's fraction of the peak its own run
measured), and writes bench/before_after.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def fail(message: str) -> None:
    """One `error:` line on stderr, exit 2 (the project's convention for bad input)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run_limit(checkout: Path, limit_args: list[str], out: Path) -> dict:
    """bench/limit.py of `checkout` with its own interpreter; its JSON."""
    python = checkout / ".venv" / "bin" / "python"
    for needed in (python, checkout / "bench" / "limit.py"):
        if not needed.exists():
            fail(f"{needed} not found (expected a checkout with bench/limit.py and its .venv: make setup)")
    done = subprocess.run([str(python), str(checkout / "bench" / "limit.py"), *limit_args, "--json", str(out)],
                          cwd=checkout, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"bench/limit.py of {checkout} failed ({done.returncode}): "
             f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the checkout before the change")
    parser.add_argument("after", type=Path, help="the checkout after it")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # after --: bench/limit.py's arguments
    args = parser.parse_args(argv[:split])
    args.limit_args = argv[split + 1:]
    times: dict[str, dict[tuple, list[float]]] = {"before": {}, "after": {}}
    fractions: dict[str, dict[tuple, list[float]]] = {"before": {}, "after": {}}
    hosts = {}
    with tempfile.TemporaryDirectory() as scratch:
        for turn in range(args.turns):
            for side in ("before", "after"):
                result = run_limit(getattr(args, side).resolve(), args.limit_args, Path(scratch) / f"{side}.json")
                hosts[side] = result["host"]
                for row in result["steps"]:
                    key = (str(row["setup"]), row["precision"], row.get("head", "twinturbo"))
                    times[side].setdefault(key, []).append(row["ms_per_step"])
                    fractions[side].setdefault(key, []).append(row["fraction_of_peak"])
                print(f"turn {turn + 1} {side} done", file=sys.stderr, flush=True)
    rows = []
    for key in times["before"]:
        if key not in times["after"]:
            continue
        before, after = (statistics.median(times[side][key]) for side in ("before", "after"))
        rows.append({"setup": key[0], "precision": key[1], "head": key[2], "ms_before": before, "ms_after": after,
                     "speedup": before / after,
                     "fraction_before": statistics.median(fractions["before"][key]),
                     "fraction_after": statistics.median(fractions["after"][key])})
        print(f"setup {key[0]} {key[1]} ({key[2]}): {before:.1f} -> {after:.1f} ms/step = {before / after:.2f}x; "
              f"{100 * rows[-1]['fraction_before']:.0f}% -> {100 * rows[-1]['fraction_after']:.0f}% of the peak")
    args.json.write_text(json.dumps({"command": " ".join(sys.argv), "hosts": hosts, "turns": args.turns,
                                     "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
