"""The unit of a sweep's work, whichever launcher runs it (train/sweep/local.py, train/sweep/jobs.py): `run_groups`
opens the store once, trains each group of fused runs, and appends one row per finished run to results.jsonl. A job
therefore never reports back through the launcher: a job that dies loses only its unfinished group, and the next
`tt-sweep` with the same command retrains exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from twinturbo.common.device import resolve_device
from twinturbo.common.store import open_store
from twinturbo.train.run.data import num_classes_of
from twinturbo.train.run.loop import train_runs
from twinturbo.train.run.memory import load_splits
from twinturbo.train.run.rundir import run_dims, save_run
from twinturbo.train.sweep.claims import Claims
from twinturbo.train.sweep.grid import RunSpec
from twinturbo.train.sweep.results import RESULTS_FILE, append_row, finished_run_ids, result_row
from twinturbo.train.terms import views_needed
from twinturbo.train.trackers import Trackers, Tracking, open_trackers


@dataclass(frozen=True)
class SweepWork:
    """What every process that trains a sweep's groups needs: the store, SWEEP_DIR, the device, the memory the
    splits may take (None: what the machine has; memory.load_splits), whether each run's head is kept, and the
    trackers each process opens for its runs (--log; train/trackers/)."""

    features: str
    sweep_dir: str
    device: str
    memory_limit: int | None = None
    save_heads: bool = False
    tracking: Tracking | None = None

    def run_dir(self, run: RunSpec) -> Path:
        """SWEEP_DIR/runs/<run id>: where --save-heads keeps a run (tt-predict's RUN_DIR)."""
        return Path(self.sweep_dir) / "runs" / run.run_id



def run_groups(work: SweepWork, groups: list[list[RunSpec]], on_group_done: Callable[[list[dict]], None] | None = None,
               progress: bool = True) -> tuple[list[dict], dict[str, str]]:
    """Train `groups` (each one fused pass) on one store opened once; append each run's row (and with
    `work.save_heads` write its RUN_DIR first). Returns (the rows written, {run id: who holds it} for the runs left to
    another process).

    Each run is claimed first (train/sweep/claims.py): runs already in results.jsonl or claimed by a live process are
    skipped, so two commands, a resubmitted array or a rerun while jobs still run train every run once.
    """
    claims = Claims(work.sweep_dir)
    rows_written: list[dict] = []
    left: dict[str, str] = {}
    loaded = trackers = error = None
    try:
        for group in groups:
            finished = finished_run_ids(work.sweep_dir)
            mine, others = claims.claim([run.run_id for run in group if run.run_id not in finished])
            left.update({run_id: str(claim.claimant) for run_id, claim in others.items()})
            finished = finished_run_ids(work.sweep_dir)  # a claim released since the first look: its row is in
            claims.release([run_id for run_id in mine if run_id in finished])
            group = [run for run in group if run.run_id in mine and run.run_id not in finished]
            if not group:
                continue
            if loaded is None:
                views = any(views_needed(run.train_config()) for g in groups for run in g)
                loaded = _load_store(work, progress, views)
                trackers = open_trackers(work.tracking)
            rows = _train_group(work, group, loaded, trackers, progress)
            rows_written += rows
            claims.release([run.run_id for run in group])
            if on_group_done is not None:
                on_group_done(rows)
    except BaseException as err:
        error = err
        raise
    finally:
        claims.release_all()
        if trackers is not None:
            trackers.close(error)  # runs left open end KILLED after Ctrl-C, else FAILED
        if loaded is not None:
            loaded.store.close()
    return rows_written, left


@dataclass
class _Loaded:
    """A store opened once per process, with its splits held as memory.load_splits decides."""

    store: object
    identity: dict
    train: object
    test: object
    num_classes: int
    device: torch.device


def _load_store(work: SweepWork, progress: bool, views: bool = False) -> _Loaded:
    device = resolve_device(work.device)
    store = open_store(work.features)
    store.require_complete()
    train_split, test_split = load_splits(store, device, work.memory_limit, progress=progress, views=views)
    return _Loaded(store, store.identity(), train_split, test_split, num_classes_of(store, train_split.labels), device)


def _train_group(work: SweepWork, group: list[RunSpec], loaded: _Loaded, trackers: Trackers,
                 progress: bool) -> list[dict]:
    """One fused pass over `group`, followed by `trackers` epoch by epoch; its rows appended to results.jsonl
    (RUN_DIRs first with --save-heads), then each run's tracking ended."""
    configs = [run.train_config() for run in group]
    for run, config in zip(group, configs):
        trackers.start_run(run.run_id, config.to_dict())
    trained = train_runs(configs, loaded.train, loaded.test, loaded.num_classes, loaded.device,
                         progress=progress and len(group) > 1,
                         on_epoch=trackers.epoch_logger([run.run_id for run in group]))
    if work.save_heads:
        for run, config, result in zip(group, configs, trained):
            save_run(result, config, work.run_dir(run), loaded.identity,
                     run_dims(loaded.train, loaded.num_classes, config))
    rows = [result_row(run, result.metrics, loaded.identity, str(loaded.device), len(group))
            for run, result in zip(group, trained)]
    for row in rows:
        append_row(Path(work.sweep_dir) / RESULTS_FILE, row)
    for run, result in zip(group, trained):
        trackers.end_run(run.run_id, result.metrics)
    return rows
