"""The engine behind tt-sweep: check the options, the store and SWEEP_DIR, skip finished runs, and hand the rest in
fused groups to a launcher: this machine (train/sweep/local.py) or a submitit job array (train/sweep/jobs.py); each
trains them with `run_groups` (train/sweep/runner.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from twinturbo.common.device import resolve_device, resolve_precision
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.liveness import recorded_warnings
from twinturbo.common.slurm import SlurmOptions
from twinturbo.common.store import open_store
from twinturbo.train.run.data import check_views, num_classes_of
from twinturbo.train.run.sampling import check_budgets
from twinturbo.train.sweep.grid import SweepGrid
from twinturbo.train.sweep.gridfile import ignored_grids_warning, unread_options_warning
from twinturbo.train.sweep.jobs import launch_submitit
from twinturbo.train.sweep.local import launch_local
from twinturbo.train.sweep.results import RESULTS_FILE, drop_cut_lines, finished_run_ids
from twinturbo.train.sweep.runner import SweepWork
from twinturbo.train.sweep.sweepdir import (fusion_groups, pending_runs, prepare_sweep_dir, recorded_changes, refusal,
                                            run_table)
from twinturbo.train.trackers import Tracking, describe_tracking, prepare_trackers

# Runs per fused pass when --fuse is not given. On the CPU fusing measured slower than one run after another
# (bench/sweep.py: 0.73x on digits; bench/limit.py: 0.98-1.04x one after another, 0.75-0.78x as one vmap, at the
# study's shape), so runs go one by one there.
DEFAULT_FUSE = {"cuda": 8, "cpu": 1}



def sweep_precision(precision: str, device: str, launcher: str, slurm) -> str:
    """The sweep's precision, resolved once where the command runs and recorded in sweep.json and every run's config:
    `auto` is bf16 where the runs' device computes it natively. Jobs sent to GPUs (`--launcher submitit` with
    `--slurm-gpus-per-node` >= 1 and --device auto or cuda) count as CUDA, whatever the submitting machine has."""
    if launcher == "submitit" and device in ("auto", "cuda") and slurm is not None and slurm.gpus_per_node > 0:
        target = torch.device("cuda")  # the jobs' device, which this machine may lack
        return "bf16" if precision == "auto" else resolve_precision(precision, target)
    return resolve_precision(precision, resolve_device(device))


def run_sweep(features: str, sweep_dir: str, grid: SweepGrid, device: str, fuse: int | None, workers: int,
              dry_run: bool, extend: bool, launcher: str, slurm: SlurmOptions | None, echo=print,
              memory_limit: int | None = None, save_heads: bool = False, wait_for_jobs: bool = True,
              log: tuple[str, ...] = ()) -> None:
    """What tt-sweep does: check the store and SWEEP_DIR, skip finished runs, train the rest in fused groups on the
    chosen launcher (rows are appended to results.jsonl as runs finish); `memory_limit` as in memory.load_splits;
    `log` names the trackers every run is followed by (train/trackers/: the sweep is their group)."""
    # Every option is checked before SWEEP_DIR is touched.
    if fuse is None:
        fuse = DEFAULT_FUSE.get(resolve_device(device).type, 1)
    if fuse < 1:
        raise TwinTurboError(f"--fuse {fuse}: expected a number of runs >= 1")
    if workers < 1:
        raise TwinTurboError(f"--workers {workers}: expected a number of processes >= 1")
    if launcher == "submitit" and slurm is not None:
        slurm.validate()
    grid.training["precision"] = sweep_precision(grid.training.get("precision", "auto"), device, launcher, slurm)
    for warning in (ignored_grids_warning(grid), unread_options_warning(grid)):
        if warning:
            print(warning, file=sys.stderr)
    with open_store(features) as store:
        store.require_complete()
        for line in recorded_warnings(store.attrs):
            print(line, file=sys.stderr)
        identity = store.identity()
        train_labels = torch.from_numpy(store.split("train").labels())
        num_classes = num_classes_of(store, train_labels)
        runs = grid.expand(identity["fingerprint"])
        check_views(store, [run.train_config() for run in runs])
    try:
        for budget, val_labels in sorted({(c.labels, c.val_labels) for c in (run.train_config() for run in runs)}):
            check_budgets(train_labels, num_classes, budget, val_labels)
    except TwinTurboError as err:
        if not dry_run:
            raise
        echo(f"note: this grid cannot train on {features}: {err}")
    if dry_run:
        finished = finished_run_ids(sweep_dir) if (Path(sweep_dir) / RESULTS_FILE).exists() else set()
        echo(run_table(runs, finished))
        try:  # what the run itself would refuse, said here too
            _, changes = recorded_changes(sweep_dir, grid, identity)
            if changes and not extend:
                raise TwinTurboError(refusal(sweep_dir, changes))
        except TwinTurboError as err:
            echo(f"note: without --dry-run this command is refused: {err}")
        return
    prepare_sweep_dir(sweep_dir, grid, identity, extend)
    note = drop_cut_lines(Path(sweep_dir) / RESULTS_FILE)
    if note:
        echo(note)
    todo = pending_runs(runs, finished_run_ids(sweep_dir))
    echo(f"tt-sweep: {len(runs)} runs in the grid, {len(runs) - len(todo)} already done, {len(todo)} to train "
         f"(fused by up to {fuse})")
    groups = list(fusion_groups(todo, fuse))
    tracking = Tracking.for_sweep(log, sweep_dir) if log else None
    if tracking is not None and groups:
        prepare_trackers(tracking)
        echo(f"tt-sweep: {describe_tracking(tracking)}")
    work = SweepWork(features, sweep_dir, device, memory_limit, save_heads, tracking)
    if launcher == "local":
        left = launch_local(work, groups, workers)
        if left:
            holders = sorted(set(left.values()))
            echo(f"tt-sweep: {len(left)} runs were already claimed by another live process and left to it "
                 f"({', '.join(holders[:3])}{', ...' if len(holders) > 3 else ''}); it appends them to the same "
                 f"results.jsonl (tt-sweep --status --out {sweep_dir})")
    else:
        launch_submitit(work, groups, slurm, wait_for_jobs, echo=echo)
        if not wait_for_jobs:
            return
    echo(f"tt-sweep: results in {Path(sweep_dir) / RESULTS_FILE}; figures: tt-report {sweep_dir}")
