"""Run claims: how several processes and jobs share one sweep and train every run once.

Before training a run, a process claims it: SWEEP_DIR/claims/<run id>.claim, created with O_EXCL, holding the
claimant's host, PID, process start time and SLURM job id; a thread touches the file every HEARTBEAT_S seconds. A
live claim is left alone; a stale one (its PID gone on this host, or no heartbeat for STALE_AFTER_S seconds) is taken
over. Decisions are made under a POSIX lock on SWEEP_DIR/claims/.lock (which also holds on NFS, as results.jsonl's
appends do). A claim is released after the run's row is in results.jsonl, so a process that finds no claim and no row
for a run knows nobody has it; results.jsonl stays the one record of finished runs.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

CLAIMS_DIR = "claims"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 180.0


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): with the PID, it names a process even after
    the PID is reused. None where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def job_id() -> str | None:
    """The SLURM job (array task) this process runs in, if any."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


@dataclass(frozen=True)
class Claimant:
    """Who holds a claim."""

    host: str
    pid: int
    started: str | None
    job: str | None = None

    @classmethod
    def this_process(cls) -> "Claimant":
        return cls(socket.gethostname(), os.getpid(), process_start_time(os.getpid()), job_id())

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}" + (f" (job {self.job})" if self.job else "")


@dataclass(frozen=True)
class Claim:
    run_id: str
    claimant: Claimant
    heartbeat: float  # seconds since the epoch, the claim file's mtime

    def alive(self, now: float | None = None) -> bool:
        """A claim is live while its process is (same host: the PID with its start time) and it keeps touching the
        file (any host)."""
        if self.claimant.host == socket.gethostname():
            started = process_start_time(self.claimant.pid)
            if started is None or (self.claimant.started and started != self.claimant.started):
                return False
        return (now or time.time()) - self.heartbeat < STALE_AFTER_S


def read_claim(path: Path, run_id: str) -> Claim | None:
    """The claim in `path`, None when there is none."""
    try:
        record = json.loads(path.read_text())
        return Claim(run_id, Claimant(**record), path.stat().st_mtime)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # a claim cut short by a kill while it was written: stale
        return Claim(run_id, Claimant("?", -1, None), 0.0)


class Claims:
    """This process's claims in one sweep directory, with the heartbeat thread that keeps them live."""

    def __init__(self, sweep_dir: str | os.PathLike):
        self.directory = Path(sweep_dir) / CLAIMS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.me = Claimant.this_process()
        self.held: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, run_id: str) -> Path:
        return self.directory / f"{run_id}.claim"

    @contextmanager
    def _locked(self):
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def read(self, run_id: str) -> Claim | None:
        return read_claim(self.path(run_id), run_id)

    def claim(self, run_ids: list[str]) -> tuple[list[str], dict[str, Claim]]:
        """Claim every run of `run_ids` that nobody live holds: (claimed by this process, {run id: live claim})."""
        mine, others = [], {}
        with self._locked():
            now = time.time()
            for run_id in run_ids:
                existing = self.read(run_id)
                if existing is not None and existing.claimant != self.me and existing.alive(now):
                    others[run_id] = existing
                    continue
                self.path(run_id).unlink(missing_ok=True)  # stale, or ours from before
                fd = os.open(self.path(run_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "w") as handle:
                    json.dump(asdict(self.me), handle)
                mine.append(run_id)
        self.held.update(mine)
        self._start_heartbeat()
        return mine, others

    def release(self, run_ids) -> None:
        """Drop this process's claims on `run_ids` (after their rows are written, or when it gives them up)."""
        with self._locked():
            for run_id in run_ids:
                claim = self.read(run_id)
                if claim is not None and claim.claimant == self.me:
                    self.path(run_id).unlink(missing_ok=True)
                self.held.discard(run_id)

    def release_all(self) -> None:
        self.release(list(self.held))
        self._stop.set()

    def _start_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="tt-sweep-claims", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for run_id in list(self.held):
                try:
                    os.utime(self.path(run_id))
                except OSError:
                    pass  # released meanwhile


def live_claims(sweep_dir: str | os.PathLike) -> dict[str, Claim]:
    """Every live claim of a sweep directory (tt-sweep --status), by run id."""
    directory, now = Path(sweep_dir) / CLAIMS_DIR, time.time()
    found = (read_claim(p, p.name[:-len(".claim")]) for p in directory.glob("*.claim")) if directory.is_dir() else ()
    return {c.run_id: c for c in found if c is not None and c.alive(now)}
