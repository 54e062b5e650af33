"""tt-sweep's local launcher: the groups trained in this process, or in `--workers` processes at once, each with its
share of the threads, of the memory and (several GPUs) a GPU of its own; Ctrl-C ends them all and keeps every
finished row.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace

import torch
from tqdm import tqdm

from twinturbo.common.device import resolve_device
from twinturbo.common.interrupts import interrupts_kept
from twinturbo.train.run.memory import default_memory_limit
from twinturbo.train.sweep.grid import RunSpec
from twinturbo.train.sweep.runner import SweepWork, run_groups


def worker_devices(device: str, workers: int) -> list[str]:
    """The device of each local worker: where `device` (auto or cuda, no index) means CUDA and the machine has
    several GPUs, worker i gets cuda:(i mod count); otherwise (the CPU, one GPU, an explicit cuda:N) every worker
    gets `device`. Rows record each run's device (results.jsonl `device`)."""
    if device not in ("auto", "cuda") or resolve_device(device).type != "cuda" or torch.cuda.device_count() < 2:
        return [device] * workers
    return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]


_worker_device: str | None = None  # a local worker's own device (its slot of worker_devices), set as it starts


def take_worker_device(slots, devices: list[str]) -> str:
    """The next free slot of `devices` (`slots`: a shared counter of the workers started so far)."""
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    return devices[slot % len(devices)]


def launch_local(work: SweepWork, groups: list[list[RunSpec]], workers: int = 1) -> dict[str, str]:
    """Train `groups` on this machine: in this process, or with `workers` > 1 in that many processes at once, each
    with an equal share of the CPU threads (a run's result depends on its thread count, so it is recorded) and of
    `work.memory_limit` (default: what the machine has), since each process holds its own splits, and on a machine
    with several GPUs a GPU of its own (worker_devices). The worker processes end with this one, whatever ends it
    (`_start_worker`); Ctrl-C stops them at once, keeps every finished row and ends their unfinished runs KILLED in
    the trackers (`_worker_run_groups`). Returns the runs left to other processes ({run id: who holds it})."""
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
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(threads, os.getpid(), context.Value("i", 0),
                                             worker_devices(work.device, workers)))
        try:
            pending = {pool.submit(_worker_run_groups, share, [group]) for group in groups}
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


def _start_worker(threads: int, parent: int, slots, devices: list[str]) -> None:
    """A local worker: its share of the threads, its device (take_worker_device), and a watchdog that ends it within
    a second of its parent's end (SIGKILL included: the parent can run no cleanup then).

    Ctrl-C reaches the whole process group: the parent alone handles it (and ends the workers), so a worker ignores
    SIGINT. tqdm's lock is a thread lock here: its default, a multiprocessing lock, is a named semaphore that a
    worker ended by the parent leaves to the resource tracker, which then warned of 'leaked semaphore objects'."""
    global _worker_device
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    torch.set_num_threads(threads)
    _worker_device = take_worker_device(slots, devices)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tt-sweep-parent-watch", daemon=True).start()


def _worker_run_groups(work: SweepWork, groups: list[list[RunSpec]]) -> tuple[list[dict], dict[str, str]]:
    """run_groups in a local worker, where SIGTERM (its parent stopping it after Ctrl-C: `_stop_workers`) is the
    user's Ctrl-C: its unfinished runs end KILLED in the trackers (Trackers.close), then the worker exits (130, as
    after Ctrl-C). Between groups SIGTERM keeps its default action: the worker holds nothing to end then."""
    def interrupted(signum, frame):
        # once: as soon as one worker exits, the pool terminates the others again (concurrent.futures'
        # terminate_broken), which cut their cleanup short: runs left RUNNING in 3 of 15 tries before
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        with interrupts_kept():  # a stop that lands in a weakref callback is raised again (common/interrupts.py)
            return run_groups(replace(work, device=_worker_device or work.device), groups, None, False)
    except KeyboardInterrupt:
        os._exit(130)  # run_groups has ended its runs; leaving now spares the parent a wait for an idle worker
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# How long a stopped worker may take to end its runs in the trackers before it is killed (measured: 0.04-1.2 s on a
# loaded 2-core CPU, MLflow on SQLite and offline W&B; a tracking server far away takes longer)
STOP_GRACE_S = 15


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (their unfinished runs leave no row; their claims go
    stale with them and are taken over by the next command); each has STOP_GRACE_S to end its runs in the trackers
    (`_worker_run_groups`) before it is killed."""
    processes = list((pool._processes or {}).values())  # the executor has no public handle on its processes
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=STOP_GRACE_S)
        if process.is_alive():
            process.kill()
