"""tt-sweep's submitit launcher (a job array on SLURM, or submitit's local executor) and `tt-sweep --status`: the
jobs a sweep submitted (SWEEP_DIR/submitit/jobs.jsonl), their SLURM states, and the runs done, running, pending and
failed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tqdm import tqdm

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.slurm import SlurmOptions, job_failure, raise_unfinished
from twinturbo.train.sweep.claims import live_claims
from twinturbo.train.sweep.grid import RunSpec, SweepGrid
from twinturbo.common.plugins import how_to_load
from twinturbo.train.heads import HEADS
from twinturbo.train.sweep.results import RESULTS_FILE, finished_run_ids, read_rows
from twinturbo.train.sweep.runner import SweepWork, run_groups
from twinturbo.train.sweep.sweepdir import SWEEP_FILE


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


def _check_recorded_heads(grid: dict, sweep_dir: str | os.PathLike, where: str) -> None:
    """A recorded sweep whose heads are not all registered here (a plugin's, and --status was not given its
    --plugins): one line naming the head and, where a finished row recorded it, the plugin to load."""
    heads = list(grid.get("heads", [])) + [setup["head"] for setup in grid.get("setup_table", grid.get("setup", []))
                                           if setup.get("head")]
    if all(head in HEADS for head in heads):
        return
    plugins: dict = {}
    for row in read_rows(Path(sweep_dir) / RESULTS_FILE):
        plugins.update(row.get("plugins", {}))
    head = next(head for head in heads if head not in HEADS)
    hint = (f"from {plugins[head]}: {how_to_load(plugins[head], 'head')}" if head in plugins else
            "not registered here (a plugin's? pass the sweep's --plugins FILE.py)")
    raise TwinTurboError(f"{where}: the sweep trains head {head!r}, {hint}")


def sweep_status(sweep_dir: str | os.PathLike) -> str:
    """tt-sweep --status: how many runs of SWEEP_DIR's grid are done, running (claimed by a live process), pending
    and failed (their job ended without them), and the state of its SLURM jobs."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        raise TwinTurboError(f"{path} does not exist: is {sweep_dir} a tt-sweep --out directory?")
    record = json.loads(path.read_text())
    _check_recorded_heads(record["grid"], sweep_dir, str(path))
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
