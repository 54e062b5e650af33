"""tt-sweep --launcher submitit and tt-extract --tasks against a real single-node SLURM cluster on loopback
(tests/cluster/slurm.sh: started once per test session, skipped with its reason where it cannot run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from twinturbo.train.results import read_rows

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "tests" / "cluster" / "slurm.sh"
SLURM = ["--launcher", "submitit", "--submitit-cluster", "slurm", "--slurm-partition", "debug", "--slurm-time", "7",
         "--slurm-cpus-per-task", "1", "--slurm-mem", "1", "--slurm-gpus-per-node", "0"]
GRID = ["--setups", "1,2", "--labels", "8", "--seeds", "1", "--critic-grid", "0.1,1", "--batch-size", "16",
        "--proj-dim", "16", "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu"]


@pytest.fixture(scope="session")
def slurm_cluster():
    started = time.time()
    result = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=1200)
    if result.returncode == 3:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nSLURM cluster up in {time.time() - started:.0f} s: {result.stdout.strip().splitlines()[-1]}")
    yield
    subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=120)


def tt(*args: str, wait: bool = True, timeout: float = 600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [str(BIN / args[0]), *args[1:]]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def jobs_of(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / "submitit" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def squeue_state(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def wait_until(condition, timeout: float = 180, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def assert_every_run_once(sweep_dir: Path, expected: int) -> None:
    lines = [json.loads(line)["run_id"] for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert len(read_rows(sweep_dir / "results.jsonl")) == expected
    assert Counter(lines).most_common(1)[0][1] == 1, Counter(lines)


def test_a_job_array_trains_every_run_once_with_its_sbatch_options(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    result = tt("tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "2", *SLURM)
    assert result.returncode == 0, result.stderr
    assert_every_run_once(out, 3)
    jobs = jobs_of(out)
    assert len(jobs) == 3

    def accounting() -> str:
        return subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,Partition,TimelimitRaw,ReqCPUS", "-j",
                               ",".join(j["job"] for j in jobs)], capture_output=True, text=True).stdout

    # tt-sweep returns once every task has handed back its result; a task's batch script may still be exiting then
    # (SLURM says RUNNING for a moment on a loaded machine), so wait for the final states.
    def settled() -> str | None:
        text = accounting()
        return text if text.strip() and "RUNNING" not in text else None

    final = wait_until(settled, 60)
    fields = {line.split("|")[0]: line.split("|")[1:] for line in final.splitlines()}
    for job in jobs:
        assert fields[job["job"]] == ["COMPLETED", "debug", "7", "1"], final
    status = tt("tt-sweep", "--out", str(out), "--status")
    assert status.stdout.startswith(f"{out}: 3 runs: 3 done, 0 running, 0 pending, 0 failed"), status.stdout


def test_a_cancelled_task_is_reported_and_the_rerun_trains_only_its_runs(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    args = ["tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "60", *SLURM]
    process = tt(*args, wait=False)
    target = wait_until(lambda: next((j["job"] for j in jobs_of(out) if squeue_state(j["job"]) == "RUNNING"), None))
    runs = next(j["runs"] for j in jobs_of(out) if j["job"] == target)
    subprocess.run(["scancel", target], check=True)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr
    assert f"job {target} was cancelled (runs {runs[0]}" in stdout and "_log.err" in stdout
    assert stderr.strip().splitlines()[-1].startswith("error: 1 of 3 jobs did not finish (first: job ")
    status = tt("tt-sweep", "--out", str(out), "--status").stdout
    assert ", 1 failed" in status and f"job {target} CANCELLED" in status
    rerun = tt(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 runs in the grid, 2 already done, 1 to train" in rerun.stdout
    assert_every_run_once(out, 3)


def test_a_requeued_task_leaves_no_partial_or_duplicate_row_and_finishes(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    process = tt("tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "60", *SLURM, wait=False)
    target = wait_until(lambda: next((j["job"] for j in jobs_of(out) if squeue_state(j["job"]) == "RUNNING"), None))
    time.sleep(2)
    subprocess.run(["scontrol", "requeue", target], check=True)  # preemption: SIGTERM, then back in the queue
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stdout + stderr
    assert_every_run_once(out, 3)
    restarts = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", target],
                              capture_output=True, text=True).stdout
    assert "REQUEUED" in restarts or "PREEMPTED" in restarts or "CANCELLED" in restarts, restarts


def test_a_failure_inside_a_job_is_one_line_naming_the_run_the_job_and_the_log(slurm_cluster, write_tiny_store,
                                                                                tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    # 90 of 96 labels leaves too few images per class for a validation split of 90: the job itself fails
    grid = [a if a != "8" else "90" for a in GRID]
    result = tt("tt-sweep", "--features", str(store), "--out", str(out), *grid, "--epochs", "1", *SLURM)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 3 of 3 jobs did not finish (first: job ")
    assert "--val-labels 90" in error and "runs s" in error and "_log.err" in error


def test_no_wait_returns_and_a_rerun_while_jobs_run_trains_every_run_once(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    args = ["--features", str(store), "--out", str(out), *GRID, "--epochs", "40"]
    started = time.time()
    submitted = tt("tt-sweep", *args, *SLURM, "--no-wait")
    assert submitted.returncode == 0 and time.time() - started < 60, submitted.stderr
    assert "submitted 3 jobs to slurm" in submitted.stdout and not (out / "results.jsonl").exists()
    wait_until(lambda: any(squeue_state(j["job"]) == "RUNNING" for j in jobs_of(out)))
    status = tt("tt-sweep", "--out", str(out), "--status").stdout
    assert ", 0 failed" in status and "running" in status
    local = tt("tt-sweep", *args)  # the same sweep from this machine while the jobs run: it shares the grid
    assert local.returncode == 0, local.stderr
    wait_until(lambda: all(squeue_state(j["job"]) == "" for j in jobs_of(out)), timeout=600)
    assert_every_run_once(out, 3)


def test_extraction_over_two_tasks_equals_one_process_byte_for_byte(slurm_cluster, tmp_path, same_stores):
    base = ["--dataset", "digits", "--backbone", "effnet-lite0:320", "--resolution", "64", "--limit", "96",
            "--batch-size", "32", "--chunk-size", "16", "--device", "cpu", "--no-progress"]
    one = tt("tt-extract", *base, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = tt("tt-extract", *base, "--out", str(tmp_path / "two"), "--launcher", "submitit", "--tasks", "2",
             "--submitit-cluster", "slurm", "--slurm-cpus-per-task", "1", "--slurm-mem", "2", "--slurm-time", "10",
             "--slurm-gpus-per-node", "0")
    assert two.returncode == 0, two.stdout + two.stderr
    same_stores(tmp_path / "one" / "digits", tmp_path / "two" / "digits")
    hdf5 = tt("tt-extract", *base, "--out", str(tmp_path / "h5"), "--format", "hdf5", "--launcher", "submitit",
              "--tasks", "2")
    assert hdf5.returncode == 2 and hdf5.stderr.count("\n") == 1 and "cannot be written by several processes or tasks" in hdf5.stderr


def test_the_daemons_listen_on_loopback_only(slurm_cluster):
    """Every TCP socket the cluster's daemons listen on is bound to 127.0.0.1 (/proc/net/tcp, by socket inode)."""
    daemons = {"slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd"}
    inodes = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() not in daemons:
                    continue
                for fd in (entry / "fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                continue
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                listening.append(fields[1])
    assert listening, "no daemon socket found"
    assert all(address.startswith("0100007F:") for address in listening), listening
