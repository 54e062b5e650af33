"""tt-sweep --launcher submitit and tt-extract --tasks against a real single-node SLURM cluster on loopback
(tests/cluster/slurm.sh: a private cluster in a directory of pytest's, started once per test session, skipped with its
reason where it cannot run), and that cluster's privacy: it writes nothing under /etc, it ignores a site's cluster,
and every command here reaches it only through its own SLURM_CONF."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from twinturbo.train.sweep.results import read_rows

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPT = ROOT / "tests" / "cluster" / "slurm.sh"
SLURM = ["--launcher", "submitit", "--submitit-cluster", "slurm", "--slurm-partition", "debug", "--slurm-time", "7",
         "--slurm-cpus-per-task", "1", "--slurm-mem", "1", "--slurm-gpus-per-node", "0"]
GRID = ["--setups", "1,2", "--labels", "8", "--seeds", "1", "--critic-grid", "0.1,1", "--batch-size", "16",
        "--proj-dim", "16", "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu"]
# the programs `slurm.sh install` provides, and each daemon's pid file in a state directory (as slurm.sh writes them)
PROGRAMS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sinfo", "sbatch",
            "sacctmgr")
PID_FILES = {"munged": "munge/munged.pid", "mariadbd": "run/mariadb.pid", "slurmdbd": "run/slurmdbd.pid",
             "slurmctld": "run/slurmctld.pid", "slurmd": "run/slurmd.pid"}
# settings of another cluster that sbatch, squeue, sacct ... would take from the environment
FOREIGN_SETTINGS = re.compile(r"^(SLURM|SBATCH|SALLOC|SRUN|SINFO|SQUEUE|SACCT|SACCTMGR|SCONTROL)_")


def clean_env() -> dict[str, str]:
    """This process's environment without any cluster's settings (a site's SLURM_CONF, SBATCH_ACCOUNT, ...)."""
    return {k: v for k, v in os.environ.items() if not FOREIGN_SETTINGS.match(k)}


@dataclass
class Cluster:
    """A private cluster of slurm.sh: its state directory and the environment that reaches it."""

    state: Path

    @property
    def env(self) -> dict[str, str]:
        return dict(clean_env(), SLURM_CONF=str(self.state / "slurm.conf"), OMP_NUM_THREADS="1")

    def run(self, *command: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, check=check, timeout=120)

    def pids(self) -> dict[str, int]:
        return {name: int((self.state / path).read_text()) for name, path in PID_FILES.items()}


def script(*args, namespace: dict[str, Path] | None = None, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run slurm.sh; with namespace {"/etc/slurm": folder, ...}, in a private mount namespace seeing those instead."""
    command = ["bash", str(SCRIPT), *map(str, args)]
    return subprocess.run(in_namespace(command, namespace) if namespace else command, capture_output=True, text=True,
                          timeout=timeout, env=clean_env())


def in_namespace(command: list[str], binds: dict[str, Path]) -> list[str]:
    """`command` in a mount namespace of its own where each path of `binds` is a bind mount of its value."""
    mounts = [arg for target, source in binds.items() for arg in (str(source), target)]
    return ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c",
            'while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"', "bash", *mounts, "--",
            *command]


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}, no output"


def up(state: Path, **options) -> Cluster:
    """Start a private cluster in `state`; skip where slurm.sh cannot (exit 3), fail in one line where it fails."""
    result = script("up", state, **options)
    if result.returncode == 3:
        pytest.skip(last_line(result))
    if result.returncode != 0:
        pytest.fail(f"slurm.sh up {state}: {last_line(result)}", pytrace=False)
    return Cluster(state)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    started = time.time()
    cluster = up(tmp_path_factory.mktemp("slurm"))
    print(f"\nSLURM cluster up in {time.time() - started:.0f} s: {cluster.state}")
    yield cluster
    script("down", cluster.state, timeout=120)


def tt(cluster: Cluster, *args: str, wait: bool = True, timeout: float = 600):
    command = [str(BIN / args[0]), *args[1:]]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=cluster.env)


def jobs_of(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / "submitit" / "jobs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def squeue_state(cluster: Cluster, job: str) -> str:
    return cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip()


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
    result = tt(slurm_cluster, "tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "2", *SLURM)
    assert result.returncode == 0, result.stderr
    assert_every_run_once(out, 3)
    jobs = jobs_of(out)
    assert len(jobs) == 3

    def accounting() -> str:
        return slurm_cluster.run("sacct", "-n", "-P", "-X", "-o", "JobID,State,Partition,TimelimitRaw,ReqCPUS", "-j",
                                 ",".join(j["job"] for j in jobs)).stdout

    # tt-sweep returns once every task has handed back its result; a task's batch script may still be exiting then
    # (SLURM says RUNNING for a moment on a loaded machine), so wait for the final states.
    def settled() -> str | None:
        text = accounting()
        return text if text.strip() and "RUNNING" not in text else None

    final = wait_until(settled, 60)
    fields = {line.split("|")[0]: line.split("|")[1:] for line in final.splitlines()}
    for job in jobs:
        assert fields[job["job"]] == ["COMPLETED", "debug", "7", "1"], final
    status = tt(slurm_cluster, "tt-sweep", "--out", str(out), "--status")
    assert status.stdout.startswith(f"{out}: 3 runs: 3 done, 0 running, 0 pending, 0 failed"), status.stdout


def test_a_cancelled_task_is_reported_and_the_rerun_trains_only_its_runs(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    args = ["tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "60", *SLURM]
    process = tt(slurm_cluster, *args, wait=False)
    target = wait_until(lambda: next((j["job"] for j in jobs_of(out)
                                      if squeue_state(slurm_cluster, j["job"]) == "RUNNING"), None))
    runs = next(j["runs"] for j in jobs_of(out) if j["job"] == target)
    slurm_cluster.run("scancel", target, check=True)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr
    assert f"job {target} was cancelled (runs {runs[0]}" in stdout and "_log.err" in stdout
    assert stderr.strip().splitlines()[-1].startswith("error: 1 of 3 jobs did not finish (first: job ")
    status = tt(slurm_cluster, "tt-sweep", "--out", str(out), "--status").stdout
    assert ", 1 failed" in status and f"job {target} CANCELLED" in status
    rerun = tt(slurm_cluster, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 runs in the grid, 2 already done, 1 to train" in rerun.stdout
    assert_every_run_once(out, 3)


def test_a_requeued_task_leaves_no_partial_or_duplicate_row_and_finishes(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    process = tt(slurm_cluster, "tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "60",
                 *SLURM, wait=False)
    target = wait_until(lambda: next((j["job"] for j in jobs_of(out)
                                      if squeue_state(slurm_cluster, j["job"]) == "RUNNING"), None))
    time.sleep(2)
    slurm_cluster.run("scontrol", "requeue", target, check=True)  # preemption: SIGTERM, then back in the queue
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stdout + stderr
    assert_every_run_once(out, 3)
    restarts = slurm_cluster.run("sacct", "-n", "-P", "-X", "-D", "-o", "JobID,State", "-j", target).stdout
    assert "REQUEUED" in restarts or "PREEMPTED" in restarts or "CANCELLED" in restarts, restarts


def test_a_failure_inside_a_job_is_one_line_naming_the_run_the_job_and_the_log(slurm_cluster, write_tiny_store,
                                                                                tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    # a memory limit no streamed split fits in: only the job, loading the splits, finds it (label budgets and
    # validation sizes are checked before anything is submitted)
    result = tt(slurm_cluster, "tt-sweep", "--features", str(store), "--out", str(out), *GRID, "--epochs", "1",
                "--memory-limit", "1K", *SLURM)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 3 of 3 jobs did not finish (first: job ")
    assert "--memory-limit 1.0KiB" in error and "runs s" in error and "_log.err" in error


def test_no_wait_returns_and_a_rerun_while_jobs_run_trains_every_run_once(slurm_cluster, write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    args = ["--features", str(store), "--out", str(out), *GRID, "--epochs", "40"]
    started = time.time()
    submitted = tt(slurm_cluster, "tt-sweep", *args, *SLURM, "--no-wait")
    assert submitted.returncode == 0 and time.time() - started < 60, submitted.stderr
    assert "submitted 3 jobs to slurm" in submitted.stdout and not (out / "results.jsonl").exists()
    wait_until(lambda: any(squeue_state(slurm_cluster, j["job"]) == "RUNNING" for j in jobs_of(out)))
    status = tt(slurm_cluster, "tt-sweep", "--out", str(out), "--status").stdout
    assert ", 0 failed" in status and "running" in status
    local = tt(slurm_cluster, "tt-sweep", *args)  # the same sweep from this machine while the jobs run: shares the grid
    assert local.returncode == 0, local.stderr
    wait_until(lambda: all(squeue_state(slurm_cluster, j["job"]) == "" for j in jobs_of(out)), timeout=600)
    assert_every_run_once(out, 3)


def test_extraction_over_two_tasks_equals_one_process_byte_for_byte(slurm_cluster, tmp_path, same_stores):
    # with augmented views: each view's randomness is its image's and view's, not the task's
    base = ["--dataset", "digits", "--backbone", "effnet-lite0:320", "--resolution", "64", "--limit", "96",
            "--batch-size", "32", "--chunk-size", "16", "--device", "cpu", "--no-progress", "--views", "weak:1,strong:1"]
    one = tt(slurm_cluster, "tt-extract", *base, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = tt(slurm_cluster, "tt-extract", *base, "--out", str(tmp_path / "two"), "--launcher", "submitit", "--tasks",
             "2", "--submitit-cluster", "slurm", "--slurm-cpus-per-task", "1", "--slurm-mem", "2", "--slurm-time", "10",
             "--slurm-gpus-per-node", "0")
    assert two.returncode == 0, two.stdout + two.stderr
    same_stores(tmp_path / "one" / "digits", tmp_path / "two" / "digits")
    hdf5 = tt(slurm_cluster, "tt-extract", *base, "--out", str(tmp_path / "h5"), "--format", "hdf5", "--launcher",
              "submitit", "--tasks", "2")
    assert hdf5.returncode == 2 and hdf5.stderr.count("\n") == 1 and "cannot be written by several processes or tasks" in hdf5.stderr


def listening_sockets(pids) -> list[str]:
    """The local address:port (hex, as /proc/net/tcp writes it) of every TCP socket the processes `pids` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                listening.append(fields[1])
    return listening


def test_the_daemons_listen_on_loopback_only(slurm_cluster):
    """Every TCP socket the cluster's own daemons listen on is bound to 127.0.0.1 (/proc/net/tcp, by socket inode),
    on the ports its slurm.conf chose."""
    listening = listening_sockets(slurm_cluster.pids().values())
    conf = (slurm_cluster.state / "slurm.conf").read_text()
    ports = {int(p) for p in re.findall(r"^(?:SlurmctldPort|SlurmdPort|AccountingStoragePort)=(\d+)$", conf, re.M)}
    assert all(address.startswith("0100007F:") for address in listening), listening
    assert {int(address.split(":")[1], 16) for address in listening} == ports, (listening, ports)


# ---- privacy: the test cluster is its own -----------------------------------------------------------------------

WATCHED = (Path("/etc/slurm"), Path("/etc/munge"), Path("/etc/hosts"))


def snapshot(tops) -> dict[str, str]:
    """Every entry under `tops`: its type, mode, owner and mtime, with the sha256 of a file, the target of a link."""
    entries = {}
    for top in tops:
        paths = [top]
        for folder, dirs, files in os.walk(top):
            paths += [Path(folder) / name for name in sorted(dirs + files)]
        for path in paths:
            try:
                info = path.lstat()
            except FileNotFoundError:
                entries[str(path)] = "absent"
                continue
            what = (hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else
                    os.readlink(path) if stat.S_ISLNK(info.st_mode) else "")
            entries[str(path)] = f"{info.st_mode:o} {info.st_uid}:{info.st_gid} {info.st_mtime_ns} {what}"
    return entries


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def processes_of(state: Path) -> list[str]:
    """The live processes started for the cluster of `state` (SLURM_CONF=state/slurm.conf in their environment)."""
    marker = f"\0SLURM_CONF={state / 'slurm.conf'}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in b"\0" + (entry / "environ").read_bytes():
                found.append(f"{entry.name} {(entry / 'comm').read_text().strip()}")
        except OSError:
            continue
    return found


def assert_no_process_left(state: Path) -> None:
    deadline = time.time() + 30  # a daemon's children (slurmctld's slurmscriptd) may end a moment after it
    while (left := processes_of(state)) and time.time() < deadline:
        time.sleep(0.2)
    assert not left, f"slurm.sh down left processes of {state}: {', '.join(left)}"


def require_root_and_packages(state: Path) -> None:
    """Skip where slurm.sh cannot run; install the packages first where it can, so that apt's own writes to /etc
    (munge's key, slurm's plugstack.conf) happen before anything is compared."""
    if os.geteuid() != 0:
        pytest.skip("slurm.sh: skipped: needs root to install and start the daemons")
    if any(shutil.which(program) is None for program in PROGRAMS):
        result = script("install", state)
        if result.returncode == 3:
            pytest.skip(last_line(result))
        assert result.returncode == 0, last_line(result)


def test_up_and_down_leave_etc_slurm_munge_and_hosts_byte_identical(tmp_path_factory):
    """The cluster lives in its state directory: /etc/slurm, /etc/munge and /etc/hosts are as they were, entry for
    entry and byte for byte, after `up` and `down`; `down` leaves none of its processes."""
    state = tmp_path_factory.mktemp("etc-check")
    require_root_and_packages(state)
    before = snapshot(WATCHED)
    started = script("up", state)
    try:  # the private cluster answers through its own SLURM_CONF (checked below, after /etc)
        status = script("status", state)
        answered = Cluster(state).run("sinfo", "-h", "-o", "%P %t")
    finally:
        stopped = script("down", state, timeout=120)
    changed = changes(before, snapshot(WATCHED))
    assert not changed, f"up and down changed {len(changed)} entries under /etc: {', '.join(changed)}"
    assert started.returncode == 0, f"slurm.sh up: {last_line(started)}"
    assert status.returncode == 0, "slurm.sh status: the private cluster does not answer"
    assert answered.returncode == 0 and answered.stdout.split() == ["debug*", "idle"], last_line(answered)
    assert stopped.returncode == 0, f"slurm.sh down: {last_line(stopped)}"
    assert script("status", state).returncode != 0, "slurm.sh status: still up after down"
    assert_no_process_left(state)


def test_on_a_site_workstation_the_private_cluster_runs_the_job_and_leaves_the_site_alone(slurm_cluster, tmp_path,
                                                                                         tmp_path_factory):
    """A workstation of a real cluster, faked in a mount namespace: /etc/slurm holds the site's slurm.conf (a copy of
    the session cluster's, so that plain `sinfo` answers) and /etc/hosts names the machine 127.0.1.1 (Debian's way).
    `up` starts its own cluster there rather than taking the site's, its daemons listen on 127.0.0.1 only, a job
    submitted with its SLURM_CONF runs on it and nowhere else; `down`, even given the site daemons' pids in its pid
    files, stops only its own; the site's files are left byte-identical."""
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount is not permitted here: {probe.stderr.strip()}")
    site = {"/etc/slurm": tmp_path / "etc-slurm", "/etc/hosts": tmp_path / "hosts"}
    site["/etc/slurm"].mkdir()
    (site["/etc/slurm"] / "slurm.conf").write_bytes(b"# a site's cluster (a fake written by the test)\n"
                                                   + (slurm_cluster.state / "slurm.conf").read_bytes())
    names = {socket.gethostname(), socket.gethostname().split(".")[0]}
    others = [line for line in Path("/etc/hosts").read_text().splitlines() if not names & set(line.split()[1:])]
    site["/etc/hosts"].write_text("\n".join(others + [f"127.0.1.1 {' '.join(sorted(names))}"]) + "\n")
    before = snapshot(site.values())
    foreign = subprocess.run(in_namespace(["sinfo", "-h", "-o", "%N"], site), capture_output=True, text=True,
                             env=clean_env(), timeout=60)
    assert foreign.returncode == 0 and foreign.stdout.strip(), f"the fake site cluster does not answer: {foreign}"

    state = tmp_path_factory.mktemp("private")  # short: the daemons' socket paths are under it
    try:
        private = up(state, namespace=site)
        listening = listening_sockets(private.pids().values())
        assert listening and all(a.startswith("0100007F:") for a in listening), f"not 127.0.0.1 only: {listening}"
        name = f"tt-private-{uuid.uuid4().hex[:8]}"
        output = tmp_path / "job.out"
        submitted = private.run("sbatch", "--parsable", "-J", name, "-o", str(output), "--wrap", "echo ran")
        assert submitted.returncode == 0, f"sbatch: {last_line(submitted)}"
        job = submitted.stdout.strip()

        def finished() -> str | None:
            current = private.run("sacct", "-n", "-P", "-X", "-j", job, "-o", "State").stdout.strip()
            return current if current not in ("", "PENDING", "RUNNING") else None

        assert wait_until(finished, 60) == "COMPLETED"
        assert output.read_text() == "ran\n"
        elsewhere = slurm_cluster.run("sacct", "-n", "-P", "-X", "-S", "now-1days", "--name", name, "-o", "JobID")
        assert elsewhere.returncode == 0 and elsewhere.stdout.strip() == "", f"job on the site's cluster: {elsewhere}"
    finally:
        stopped = script("down", state, namespace=site, timeout=120)
    assert stopped.returncode == 0, f"slurm.sh down: {last_line(stopped)}"
    assert_no_process_left(state)

    # pid files naming the other cluster's live daemons are not enough to make them this one's
    for daemon, pid in slurm_cluster.pids().items():
        (state / PID_FILES[daemon]).write_text(f"{pid}\n")
    assert script("status", state, namespace=site).returncode != 0, "took the other cluster as its own"
    assert script("down", state, namespace=site, timeout=120).returncode == 0
    assert script("status", slurm_cluster.state).returncode == 0, "down stopped the other cluster's daemons"
    changed = changes(before, snapshot(site.values()))
    assert not changed, f"the site's files changed: {', '.join(changed)}"
