"""Where a sweep's fused groups run: in this process (`local`) or as a submitit job array (`submitit`: SLURM, or
submitit's local executor).

Either way the unit of work is `run_groups`: open the store once, train each group of fused runs, and append one row
per finished run to results.jsonl. A job therefore never reports back through the launcher: a job that dies loses
only its unfinished group, and the next `tt-sweep` with the same command retrains exactly that.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.device import resolve_device, resolve_precision
from twinturbo.common.store import open_store
from twinturbo.train.data import num_classes_of
from twinturbo.train.loop import train_runs
from twinturbo.train.memory import default_memory_limit, load_splits
from twinturbo.train.results import RESULTS_FILE, append_row, finished_run_ids, result_row
from twinturbo.train.rundir import run_dims, save_run
from twinturbo.train.sweep import (RunSpec, SweepGrid, fusion_groups, pending_runs, prepare_sweep_dir, run_table)

# Runs per fused pass when --fuse is not given. On the CPU fusing measured slower than one run after another
# (bench/sweep.py: 0.73x on digits; bench/limit.py: 0.98-1.04x one after another, 0.75-0.78x as one vmap, at the
# study's shape), so runs go one by one there.
DEFAULT_FUSE = {"cuda": 8, "cpu": 1}
SUBMITIT_CLUSTERS = ("auto", "slurm", "local", "debug")


def _slurm(default, flag: str, help: str, choices: tuple = ()):
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices})


@dataclass
class SlurmOptions:
    """The options of `--launcher submitit` (tt-sweep builds its `--slurm-*` options from these fields); submitit's
    own names in brackets."""

    partition: str | None = _slurm(None, "--slurm-partition", "SLURM partition [the cluster's default].")
    time_min: int = _slurm(60, "--slurm-time", "Time limit per job, minutes.")  # timeout_min
    gpus_per_node: int = _slurm(1, "--slurm-gpus-per-node", "GPUs per job.")
    cpus_per_task: int = _slurm(8, "--slurm-cpus-per-task", "CPUs per job.")
    mem_gb: int = _slurm(32, "--slurm-mem", "Memory per job, GB.")
    array_parallelism: int = _slurm(16, "--slurm-array-parallelism", "At most this many jobs of the array run at "
                                    "once.")  # slurm_array_parallelism
    cluster: str = _slurm("auto", "--submitit-cluster", "submitit executor: auto = SLURM when sbatch is there, else "
                          "local processes.", SUBMITIT_CLUSTERS)  # AutoExecutor(cluster=...)


@dataclass(frozen=True)
class SweepWork:
    """What every process that trains a sweep's groups needs: the store, SWEEP_DIR, the device, the memory the
    splits may take (None: what the machine has; memory.load_splits) and whether each run's head is kept."""

    features: str
    sweep_dir: str
    device: str
    memory_limit: int | None = None
    save_heads: bool = False

    def run_dir(self, run: RunSpec) -> Path:
        """SWEEP_DIR/runs/<run id>: where --save-heads keeps a run (tt-predict's RUN_DIR)."""
        return Path(self.sweep_dir) / "runs" / run.run_id


def run_groups(work: SweepWork, groups: list[list[RunSpec]], on_group_done: Callable[[list[dict]], None] | None = None,
               progress: bool = True) -> int:
    """Train `groups` (each one fused pass) on one store opened once; append each run's row (and with
    `work.save_heads` write its RUN_DIR first). Returns runs done.

    Runs already in results.jsonl (another job got there first) are skipped, so a resubmitted array is harmless.
    """
    torch_device = resolve_device(work.device)
    results = Path(work.sweep_dir) / RESULTS_FILE
    store = open_store(work.features)
    store.require_complete()
    identity = store.identity()
    train_split, test_split = load_splits(store, torch_device, work.memory_limit, progress=progress)
    num_classes = num_classes_of(store, train_split.labels)
    done = 0
    for group in groups:
        finished = finished_run_ids(work.sweep_dir)
        group = [run for run in group if run.run_id not in finished]
        if not group:
            continue
        configs = [run.train_config() for run in group]
        trained = train_runs(configs, train_split, test_split, num_classes, torch_device,
                             progress=progress and len(group) > 1)
        if work.save_heads:
            for run, config, result in zip(group, configs, trained):
                save_run(result, config, work.run_dir(run), identity, run_dims(train_split, num_classes, config))
        metrics = [result.metrics for result in trained]
        rows = [result_row(run, m, identity, str(torch_device), len(group)) for run, m in zip(group, metrics)]
        for row in rows:
            append_row(results, row)
        done += len(rows)
        if on_group_done is not None:
            on_group_done(rows)
    store.close()
    return done


def launch_local(work: SweepWork, groups: list[list[RunSpec]], workers: int = 1) -> None:
    """Train `groups` on this machine: in this process, or with `workers` > 1 in that many processes at once, each
    with an equal share of the CPU threads (a run's result depends on its thread count, so it is recorded) and of
    `work.memory_limit` (default: what the machine has), since each process holds its own splits."""
    if workers < 1:
        raise TwinTurboError(f"--workers {workers}: expected a number of processes >= 1")
    total = sum(len(g) for g in groups)
    with tqdm(total=total, desc="sweep", unit="run") as bar:
        def advance(rows: list[dict]) -> None:
            bar.update(len(rows))
            bar.set_postfix(last=f"{100 * max(r['test_accuracy'] for r in rows):.1f}%")

        if workers == 1 or len(groups) < 2:
            run_groups(work, groups, on_group_done=advance)
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        threads = max(1, (os.cpu_count() or 1) // workers)
        limit = default_memory_limit() if work.memory_limit is None else work.memory_limit
        share = replace(work, memory_limit=None if limit is None else limit // workers)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(threads,)) as pool:
            pending = {pool.submit(_worker_run_group, share, group) for group in groups}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:  # a worker's error: start nothing new, then raise it
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise future.exception()
                    if future.result():
                        advance(future.result())


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _worker_run_group(work: SweepWork, group: list[RunSpec]) -> list[dict]:
    """One group in a worker process of `launch_local`; returns its rows (already appended to results.jsonl)."""
    rows: list[dict] = []
    run_groups(work, [group], on_group_done=rows.extend, progress=False)
    return rows


def launch_submitit(work: SweepWork, groups: list[list[RunSpec]], slurm: SlurmOptions, poll_s: float = 2.0) -> None:
    """One array task per group (`map_array`); waits, with a bar counting rows as the tasks append them. Each task
    holds its splits within `work.memory_limit` (default: what its node has)."""
    sweep_dir = work.sweep_dir
    import submitit

    if slurm.cluster not in SUBMITIT_CLUSTERS:
        raise TwinTurboError(f"--submitit-cluster {slurm.cluster}: expected one of {', '.join(SUBMITIT_CLUSTERS)}")
    folder = Path(sweep_dir) / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=None if slurm.cluster == "auto" else slurm.cluster)
    params = dict(timeout_min=slurm.time_min, cpus_per_task=slurm.cpus_per_task, mem_gb=slurm.mem_gb,
                  slurm_array_parallelism=slurm.array_parallelism, name="tt-sweep")
    if executor.cluster == "slurm":
        params["gpus_per_node"] = slurm.gpus_per_node
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
    executor.update_parameters(**params)
    n = len(groups)
    jobs = executor.map_array(run_groups, [work] * n, [[g] for g in groups], [None] * n, [False] * n)
    print(f"tt-sweep: submitted {n} jobs to {executor.cluster} (logs under {folder.parent})", flush=True)
    wanted = {run.run_id for g in groups for run in g}
    failures = []
    with tqdm(total=len(wanted), desc="sweep", unit="run") as bar:
        while True:
            finished = len(wanted & finished_run_ids(sweep_dir))
            bar.update(finished - bar.n)
            if all(job.done() for job in jobs):
                break
            time.sleep(poll_s)
        bar.update(len(wanted & finished_run_ids(sweep_dir)) - bar.n)
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # a job's own traceback is in its log file; say which and where
            failures.append(f"job {job.job_id}: {str(err).strip().splitlines()[-1] if str(err).strip() else err}")
    if failures:
        raise TwinTurboError(f"{len(failures)} of {n} jobs failed (first: {failures[0]}); see the logs under "
                             f"{folder.parent}; rerun the same command to retrain only the missing runs")


# ---------------------------------------------------------------------------------------------------------------------
# The engine behind tt-sweep
# ---------------------------------------------------------------------------------------------------------------------

def sweep_precision(precision: str, device: str, launcher: str, slurm) -> str:
    """The sweep's precision, resolved once where the command runs and recorded in sweep.json and every run's config:
    `auto` is bf16 where the runs' device computes it natively. Jobs sent to GPUs (`--launcher submitit` with
    `--slurm-gpus-per-node` >= 1 and --device auto or cuda) count as CUDA, whatever the submitting machine has."""
    if launcher == "submitit" and device in ("auto", "cuda") and slurm is not None and slurm.gpus_per_node > 0:
        target = torch.device("cuda")  # the jobs' device, which this machine may lack
        return "bf16" if precision == "auto" else resolve_precision(precision, target)
    return resolve_precision(precision, resolve_device(device))


def run_sweep(features: str, sweep_dir: str, grid: SweepGrid, device: str, fuse: int | None, workers: int,
              dry_run: bool, extend: bool, launcher: str, slurm: SlurmOptions | None, echo=print, memory_limit: int | None = None,
              save_heads: bool = False) -> None:
    """What tt-sweep does: check the store and SWEEP_DIR, skip finished runs, train the rest in fused groups on the
    chosen launcher (rows are appended to results.jsonl as runs finish); `memory_limit` as in memory.load_splits."""
    if fuse is None:
        fuse = DEFAULT_FUSE.get(resolve_device(device).type, 1)
    if fuse < 1:
        raise TwinTurboError(f"--fuse {fuse}: expected a number of runs >= 1")
    with open_store(features) as store:
        store.require_complete()
        identity = store.identity()
    grid.training["precision"] = sweep_precision(grid.training.get("precision", "auto"), device, launcher, slurm)
    runs = grid.expand(identity["fingerprint"])
    if dry_run:
        finished = finished_run_ids(sweep_dir) if (Path(sweep_dir) / RESULTS_FILE).exists() else set()
        echo(run_table(runs, finished))
        return
    prepare_sweep_dir(sweep_dir, grid, identity, extend)
    todo = pending_runs(runs, finished_run_ids(sweep_dir))
    echo(f"tt-sweep: {len(runs)} runs in the grid, {len(runs) - len(todo)} already done, {len(todo)} to train "
         f"(fused by up to {fuse})")
    groups = list(fusion_groups(todo, fuse))
    work = SweepWork(features, sweep_dir, device, memory_limit, save_heads)
    if launcher == "local":
        launch_local(work, groups, workers)
    else:
        launch_submitit(work, groups, slurm)
    echo(f"tt-sweep: results in {Path(sweep_dir) / RESULTS_FILE}; figures: tt-report {sweep_dir}")
