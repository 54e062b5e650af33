"""Where a sweep's fused groups run: in this process (`local`) or as a submitit job array (`submitit`: SLURM, or
submitit's local executor).

Either way the unit of work is `run_groups`: open the store once, train each group of fused runs, and append one row
per finished run to results.jsonl. A job therefore never reports back through the launcher: a job that dies loses
only its unfinished group, and the next `tt-sweep` with the same command retrains exactly that.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.slurm import SlurmOptions, job_failure, raise_unfinished
from twinturbo.common.device import resolve_device, resolve_precision
from twinturbo.common.store import open_store
from twinturbo.train.claims import Claims, live_claims
from twinturbo.train.data import check_views, num_classes_of
from twinturbo.train.loop import train_runs
from twinturbo.train.memory import default_memory_limit, load_splits
from twinturbo.train.results import RESULTS_FILE, append_row, cut_lines_note, finished_run_ids, result_row
from twinturbo.train.rundir import run_dims, save_run
from twinturbo.train.sampling import check_budgets
from twinturbo.train.terms import views_needed
from twinturbo.train.trackers import Trackers, Tracking, open_trackers
from twinturbo.train.sweep import (SWEEP_FILE, RunSpec, SweepGrid, fusion_groups, pending_runs, prepare_sweep_dir,
                                   run_table)

# Runs per fused pass when --fuse is not given. On the CPU fusing measured slower than one run after another
# (bench/sweep.py: 0.73x on digits; bench/limit.py: 0.98-1.04x one after another, 0.75-0.78x as one vmap, at the
# study's shape), so runs go one by one there.
DEFAULT_FUSE = {"cuda": 8, "cpu": 1}


@dataclass(frozen=True)
class SweepWork:
    """What every process that trains a sweep's groups needs: the store, SWEEP_DIR, the device, the memory the
    splits may take (None: what the machine has; memory.load_splits), whether each run's head is kept, and the
    trackers each process opens for its runs (--log; train/trackers.py)."""

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

    Each run is claimed first (train/claims.py): runs already in results.jsonl or claimed by a live process are
    skipped, so two commands, a resubmitted array or a rerun while jobs still run train every run once.
    """
    claims = Claims(work.sweep_dir)
    rows_written: list[dict] = []
    left: dict[str, str] = {}
    loaded = trackers = None
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
    finally:
        claims.release_all()
        if trackers is not None:
            trackers.close()
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


def launch_local(work: SweepWork, groups: list[list[RunSpec]], workers: int = 1) -> dict[str, str]:
    """Train `groups` on this machine: in this process, or with `workers` > 1 in that many processes at once, each
    with an equal share of the CPU threads (a run's result depends on its thread count, so it is recorded) and of
    `work.memory_limit` (default: what the machine has), since each process holds its own splits. The worker
    processes end with this one, whatever ends it (`_start_worker`); Ctrl-C stops them at once and keeps every
    finished row. Returns the runs left to other processes ({run id: who holds it})."""
    total = sum(len(g) for g in groups)
    left: dict[str, str] = {}
    with tqdm(total=total, desc="sweep", unit="run") as bar:
        def advance(rows: list[dict]) -> None:
            bar.update(len(rows))
            bar.set_postfix(last=f"{100 * max(r['test_accuracy'] for r in rows):.1f}%")

        if workers == 1 or len(groups) < 2:
            return run_groups(work, groups, on_group_done=advance)[1]
        threads = max(1, (os.cpu_count() or 1) // workers)
        limit = default_memory_limit() if work.memory_limit is None else work.memory_limit
        share = replace(work, memory_limit=None if limit is None else limit // workers)
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(threads, os.getpid()))
        try:
            pending = {pool.submit(run_groups, share, [group], None, False) for group in groups}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:  # a worker's error: start nothing new, then raise it
                        raise future.exception()
                    rows, others = future.result()
                    left.update(others)
                    if rows:
                        advance(rows)
        except BaseException:
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)  # every run done: let the workers exit on their own (no semaphore left behind)
    return left


def _start_worker(threads: int, parent: int) -> None:
    """A local worker: its share of the threads, and a watchdog that ends it within a second of its parent's end
    (SIGKILL included: the parent can run no cleanup then).

    Ctrl-C reaches the whole process group: the parent alone handles it (and ends the workers), so a worker ignores
    SIGINT. tqdm's lock is a thread lock here: its default, a multiprocessing lock, is a named semaphore that a
    worker ended by the parent leaves to the resource tracker, which then warned of 'leaked semaphore objects'."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tt-sweep-parent-watch", daemon=True).start()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (their unfinished runs leave no row; their claims go
    stale with them and are taken over by the next command)."""
    processes = list((pool._processes or {}).values())  # the executor has no public handle on its processes
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


JOBS_FILE = "jobs.jsonl"  # SWEEP_DIR/submitit/jobs.jsonl: one line per submitted job, its runs and log files
FINISHED_STATES = ("COMPLETED",)


def launch_submitit(work: SweepWork, groups: list[list[RunSpec]], slurm: SlurmOptions, wait_for_jobs: bool = True,
                    poll_s: float = 2.0, echo=print) -> None:
    """One array task per group (`map_array`), each recorded in SWEEP_DIR/submitit/jobs.jsonl; with
    `wait_for_jobs`, a bar counts rows as the tasks append them, and every task that ends without finishing its runs
    (cancelled, failed, out of time) is reported with its job id, its runs and its log, in a TwinTurboError."""
    folder = Path(work.sweep_dir) / "submitit"
    executor = slurm.executor(folder, "tt-sweep")
    n = len(groups)
    jobs = executor.map_array(run_groups, [work] * n, [[g] for g in groups], [None] * n, [False] * n)
    with open(folder / JOBS_FILE, "a") as record:
        for job, group in zip(jobs, groups):
            record.write(json.dumps({"job": job.job_id, "cluster": executor.cluster, "runs": [r.run_id for r in group],
                                     "log": str(job.paths.stderr)}) + "\n")
    echo(f"tt-sweep: submitted {n} jobs to {executor.cluster} (logs under {folder}); "
         f"progress: tt-sweep --status --out {work.sweep_dir}")
    if not wait_for_jobs:
        return
    wanted = {run.run_id for g in groups for run in g}
    with tqdm(total=len(wanted), desc="sweep", unit="run") as bar:
        while not all(job.done() for job in jobs):
            bar.update(len(wanted & finished_run_ids(work.sweep_dir)) - bar.n)
            time.sleep(poll_s)
        finished = finished_run_ids(work.sweep_dir)
        bar.update(len(wanted & finished) - bar.n)
    problems = []
    for job, group in zip(jobs, groups):
        missing = [run.run_id for run in group if run.run_id not in finished]
        if missing:
            problems.append(f"job {job.job_id} {job_failure(job)} (runs {', '.join(missing)}; log {job.paths.stderr})")
    raise_unfinished(problems, n, "jobs", "rerun the same command to train only their runs",
                     lambda line: echo(f"tt-sweep: {line}"))


def submitted_jobs(sweep_dir: str | os.PathLike) -> list[dict]:
    """The jobs a sweep has submitted (SWEEP_DIR/submitit/jobs.jsonl), oldest first."""
    path = Path(sweep_dir) / "submitit" / JOBS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} from sacct (empty where there is no sacct or it does not answer)."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    result = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                            capture_output=True, text=True, timeout=60)
    states = {}
    for line in result.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.split()[0] if state.strip() else "?"
    return states


def sweep_status(sweep_dir: str | os.PathLike) -> str:
    """tt-sweep --status: how many runs of SWEEP_DIR's grid are done, running (claimed by a live process), pending
    and failed (their job ended without them), and the state of its SLURM jobs."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        raise TwinTurboError(f"{path} does not exist: is {sweep_dir} a tt-sweep --out directory?")
    record = json.loads(path.read_text())
    runs = SweepGrid.from_dict(record["grid"], source=str(path)).expand(record["store"]["fingerprint"])
    ids = [run.run_id for run in runs]
    done, running = finished_run_ids(sweep_dir), live_claims(sweep_dir)
    jobs = submitted_jobs(sweep_dir)
    states = slurm_states([job["job"] for job in jobs if job.get("cluster") == "slurm"])
    failed = {run_id: job for job in jobs for run_id in job["runs"] if run_id not in done and run_id not in running
              and states.get(job["job"], "").split("+")[0] not in ("", "PENDING", "RUNNING", "REQUEUED", *FINISHED_STATES)}
    pending = [i for i in ids if i not in done and i not in running and i not in failed]
    lines = [f"{sweep_dir}: {len(ids)} runs: {sum(i in done for i in ids)} done, {len(running)} running, "
             f"{len(pending)} pending, {len(failed)} failed"]
    for run_id, claim in sorted(running.items()):
        lines.append(f"  running  {run_id}  on {claim.claimant}")
    for run_id, job in sorted(failed.items()):
        lines.append(f"  failed   {run_id}  job {job['job']} {states.get(job['job'])}; log {job['log']}")
    if jobs:
        counts: dict[str, int] = {}
        for job in jobs:
            state = states.get(job["job"], "unknown")
            counts[state] = counts.get(state, 0) + 1
        lines.append("  jobs: " + ", ".join(f"{count} {state}" for state, count in sorted(counts.items())))
    return "\n".join(lines)


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
              dry_run: bool, extend: bool, launcher: str, slurm: SlurmOptions | None, echo=print,
              memory_limit: int | None = None, save_heads: bool = False, wait_for_jobs: bool = True,
              log: tuple[str, ...] = ()) -> None:
    """What tt-sweep does: check the store and SWEEP_DIR, skip finished runs, train the rest in fused groups on the
    chosen launcher (rows are appended to results.jsonl as runs finish); `memory_limit` as in memory.load_splits;
    `log` names the trackers every run is followed by (train/trackers.py: the sweep is their group)."""
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
    with open_store(features) as store:
        store.require_complete()
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
        return
    prepare_sweep_dir(sweep_dir, grid, identity, extend)
    note = cut_lines_note(Path(sweep_dir) / RESULTS_FILE)
    if note:
        echo(note)
    todo = pending_runs(runs, finished_run_ids(sweep_dir))
    echo(f"tt-sweep: {len(runs)} runs in the grid, {len(runs) - len(todo)} already done, {len(todo)} to train "
         f"(fused by up to {fuse})")
    groups = list(fusion_groups(todo, fuse))
    tracking = Tracking.for_sweep(log, sweep_dir) if log else None
    if tracking is not None and groups:
        tracking.prepare()
        echo(f"tt-sweep: {tracking.describe()}")
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
