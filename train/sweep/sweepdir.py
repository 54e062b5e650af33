"""SWEEP_DIR/sweep.json (the grid and the features store's identity, to refuse a changed grid on resume), the runs
still to train, the fused groups and the --dry-run table (results.jsonl, what is finished, is results.py's)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from twinturbo.common.atomic import write_json_atomic
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.hashing import canonical_json
from twinturbo.train.heads import DEFAULT_HEAD
from twinturbo.train.sweep.grid import RunSpec, SweepGrid, format_weight
from twinturbo.train.terms import axis_symbol, rows_needed


SWEEP_FILE = "sweep.json"
SWEEP_FORMAT = 1


def _grid_difference(old: dict, new: dict) -> str:
    return "; ".join(f"{key}: {canonical_json(old.get(key))} -> {canonical_json(new.get(key))}"
                     for key in sorted(set(old) | set(new)) if canonical_json(old.get(key)) != canonical_json(new.get(key)))


def recorded_changes(sweep_dir: str | os.PathLike, grid: SweepGrid, store_identity: dict) -> tuple[dict | None, list[str]]:
    """(SWEEP_DIR/sweep.json's record or None, how this grid and store differ from it): what prepare_sweep_dir
    refuses without --extend, also said by a dry run. An unreadable record, or another precision (not even with
    --extend: one sweep, one precision), is one TwinTurboError."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    if not path.exists():
        return None, []
    current = grid.to_dict()
    try:
        existing = json.loads(path.read_text())
        old_grid, old_store = existing["grid"], existing["store"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise TwinTurboError(f"{path} is not a tt-sweep file (unreadable); choose another --out") from None
    old_precision = old_grid.get("training", {}).get("precision", "fp32")  # sweeps before --precision: fp32
    new_precision = current["training"].get("precision", "fp32")
    if old_precision != new_precision:
        raise TwinTurboError(f"{sweep_dir} was trained in {old_precision} and this command asks for {new_precision}: "
                             f"pass --precision {old_precision} to resume it, or choose another --out")
    changes = []
    if canonical_json(old_grid) != canonical_json(current):
        changes.append(f"the grid changed ({_grid_difference(old_grid, current)})")
    if old_store.get("fingerprint") != store_identity.get("fingerprint"):
        changes.append(f"the features store changed ({old_store.get('path')} [{old_store.get('fingerprint')}] "
                       f"-> {store_identity.get('path')} [{store_identity.get('fingerprint')}])")
    return existing, changes


def refusal(sweep_dir: str | os.PathLike, changes: list[str]) -> str:
    """What a sweep without --extend says of a SWEEP_DIR that holds another sweep."""
    return (f"{sweep_dir} holds another sweep: {'; '.join(changes)}; pass --extend to add this grid's runs to it, or "
            "choose another --out")


def prepare_sweep_dir(sweep_dir: str | os.PathLike, grid: SweepGrid, store_identity: dict, extend: bool) -> dict:
    """Create SWEEP_DIR or check that it holds this same sweep.

    A different grid or features store is refused unless `extend`, which records the new grid (the old ones stay in
    `history`) and keeps every finished row: only runs not yet in results.jsonl will train.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SWEEP_FILE
    current = {"grid": grid.to_dict(), "store": store_identity}
    existing, changes = recorded_changes(sweep_dir, grid, store_identity)
    if existing is not None:
        if not changes:
            return existing
        if not extend:
            raise TwinTurboError(refusal(sweep_dir, changes))
        current["history"] = existing.get("history", []) + [{"grid": existing["grid"], "store": existing["store"]}]
    current["format"] = SWEEP_FORMAT
    write_json_atomic(path, current)
    return current


def pending_runs(runs: Iterable[RunSpec], finished: set[str]) -> list[RunSpec]:
    return [run for run in runs if run.run_id not in finished]


def fusion_groups(runs: Iterable[RunSpec], fuse: int) -> Iterator[list[RunSpec]]:
    """Groups of at most `fuse` runs with one fusion key each (same data batches, same masks).

    Within a key, runs that read the same row groups go together: a fused pass forwards the x* rows when any of its
    runs has a term that reads them (the latent term) and the unlabelled rows likewise (the critic), so a setup-1 run
    fused with a setup-7 run would pay for rows it never uses.
    """
    if fuse < 1:
        raise TwinTurboError(f"--fuse {fuse}: expected a number of runs >= 1")
    by_key: dict[tuple, list[RunSpec]] = {}
    for run in runs:
        by_key.setdefault(run.fusion_key + (rows_needed(run.train_config()),), []).append(run)
    for members in by_key.values():
        for start in range(0, len(members), fuse):
            yield members[start:start + fuse]


def run_table(runs: list[RunSpec], finished: set[str] = frozenset()) -> str:
    """The --dry-run table: one line per run, then the count."""
    heads = any(run.head != DEFAULT_HEAD for run in runs)  # a head column where a run trains another than the paper's
    header = (f"{'#':>4}  {'setup':<40} {'weights':<22} " + (f"{'head':<10} " if heads else "")
              + f"{'labels':>6} {'seed':>6}  {'status':<8} run id")
    lines = [header, "-" * len(header)]
    for index, run in enumerate(runs, 1):
        status = "done" if run.run_id in finished else "pending"
        weights = " ".join(f"{axis_symbol(t)}={format_weight(w)}" for t, w in run.weights) or "-"
        lines.append(f"{index:>4}  {str(run.setup.key) + ': ' + run.setup.name:<40} {weights:<22} "
                     + (f"{run.head:<10} " if heads else "") + f"{run.labels:>6} {run.seed:>6}  {status:<8} {run.run_id}")
    done = sum(run.run_id in finished for run in runs)
    lines.append(f"{len(runs)} runs ({done} done, {len(runs) - done} to train)")
    return "\n".join(lines)
