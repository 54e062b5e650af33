"""One sweep, one truth (train/sweep/claims.py): run claims shared by concurrent commands, stale claims taken over, and
local workers that end with their parent."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from conftest import default_sigint
from twinturbo.train.sweep.claims import Claimant, Claims, live_claims, process_start_time
from twinturbo.train.sweep.results import read_rows

BIN = Path(sys.executable).parent
# 6 runs that take a few seconds each on the tiny store, so that two commands overlap
SWEEP = ["--setups", "1,2", "--labels", "8", "--seeds", "1,2", "--critic-grid", "0.1,1", "--epochs", "30",
         "--batch-size", "16", "--proj-dim", "32", "--pred-dim", "16", "--disc-dim", "8", "--device", "cpu"]


def sweep(store: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([str(BIN / "tt-sweep"), "--features", str(store), "--out", str(out), *SWEEP, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=default_sigint)


def test_two_commands_on_one_out_train_every_run_once(write_tiny_store, tmp_path):
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    first = sweep(store, out, "--workers", "2")
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("claims/*.claim")):  # the first is training: it holds runs
        time.sleep(0.1)
    second = sweep(store, out)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert "leaked" not in outputs[0][1]  # the 2-worker pool is shut down cleanly when its runs are done
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    ids = [row["run_id"] for row in read_rows(out / "results.jsonl")]
    raw = [json.loads(line)["run_id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(ids) == 6 and Counter(raw).most_common(1)[0][1] == 1  # every run once, no duplicate line
    said = outputs[0][0] + outputs[1][0]
    assert "claimed by another live process and left to it" in said  # each says what it left to the other
    assert live_claims(out) == {}  # every claim released


_start_together = None


def _keep_barrier(barrier) -> None:
    global _start_together
    _start_together = barrier


def _sweep_in_step(store: str, out: str) -> tuple[int, str]:
    """tt-sweep on `out`, started at the same instant as the other worker's (a barrier); its exit code and output,
    with the traceback of any exception the command let through."""
    import traceback

    from click.testing import CliRunner

    from twinturbo.train.cli import sweep_main

    _start_together.wait()
    result = CliRunner().invoke(sweep_main, ["--features", store, "--out", out, "--setups", "1,2", "--labels", "8",
                                             "--seeds", "1", "--critic-grid", "1", "--epochs", "1", "--batch-size",
                                             "16", "--proj-dim", "8", "--pred-dim", "8", "--disc-dim", "4",
                                             "--device", "cpu"])
    trace = "".join(traceback.format_exception(result.exception)) if result.exc_info and result.exit_code == 1 else ""
    return result.exit_code, result.output + trace


def test_two_sweeps_started_together_on_a_new_out_never_crash_and_train_every_run_once(write_tiny_store, tmp_path):
    """Twenty times, two tt-sweep commands start at the same instant on a new --out (each makes SWEEP_DIR, writes
    sweep.json, claims runs): both end with exit 0 and no traceback, and each run has one row. Two worker processes
    that stay up run the commands, so the twenty rounds cost the training, not twenty interpreter starts."""
    store = write_tiny_store(tmp_path / "store")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    with ProcessPoolExecutor(2, mp_context=context, initializer=_keep_barrier, initargs=(barrier,)) as pool:
        for round_ in range(20):
            out = tmp_path / f"sweep{round_}"
            ends = list(pool.map(_sweep_in_step, [str(store)] * 2, [str(out)] * 2))
            assert [code for code, _ in ends] == [0, 0], ends
            assert not any("Traceback" in said for _, said in ends), ends
            raw = [json.loads(line)["run_id"] for line in (out / "results.jsonl").read_text().splitlines()]
            assert len(raw) == len(set(raw)) == 2, (round_, raw)


def test_a_stale_claim_is_taken_over_and_a_live_one_left(tmp_path):
    claims = Claims(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"host": claims.me.host, "pid": int(dead.stdout), "started": "1", "job": None}
    claims.path("stale-run").write_text(json.dumps(stale))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Claims(tmp_path)  # a claim made as the live process `holder`
        other.me = Claimant(claims.me.host, holder.pid, process_start_time(holder.pid))
        assert other.claim(["live-run"]) == (["live-run"], {})
        mine, others = claims.claim(["stale-run", "live-run", "free-run"])
        assert mine == ["stale-run", "free-run"] and list(others) == ["live-run"]
        assert others["live-run"].claimant.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert claims.claim(["live-run"])[0] == ["live-run"]  # its holder is gone: taken over
    claims.release_all()
    assert not list(tmp_path.glob("claims/*.claim"))


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_a_two_worker_sweep_leaves_no_worker_behind(write_tiny_store, tmp_path):
    store = write_tiny_store(tmp_path / "store")
    process = sweep(store, tmp_path / "sweep", "--workers", "2")
    deadline, workers = time.time() + 120, []
    while time.time() < deadline:
        # spawned workers: the resource tracker and two pool processes, grandchildren included
        workers = [c for c in children_of(process.pid) if "spawn_main" in
                   (Path("/proc") / str(c) / "cmdline").read_text(errors="replace")]
        if len(workers) >= 2 and list((tmp_path / "sweep" / "claims").glob("*.claim")):
            break
        time.sleep(0.2)
    assert len(workers) >= 2, "the workers never started"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 5
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)
    rerun = sweep(store, tmp_path / "sweep")  # their claims died with them: the rerun trains what is missing
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert len(read_rows(tmp_path / "sweep" / "results.jsonl")) == 6


def test_ctrl_c_of_a_two_worker_sweep_prints_its_one_line_and_keeps_every_finished_row(write_tiny_store, tmp_path):
    """Ctrl-C at a terminal signals the whole process group: the parent, its workers and multiprocessing's resource
    tracker. The user sees the resume line only (no worker traceback, no 'leaked semaphore' warning)."""
    store, out = write_tiny_store(tmp_path / "store"), tmp_path / "sweep"
    process = sweep(store, out, "--workers", "2")
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("claims/*.claim")):
        time.sleep(0.2)
    time.sleep(2.0)  # the workers are training
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: interrupted; rerun the same command: finished runs are kept, the "
                                            "others are trained")
    assert "leaked" not in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    rerun = sweep(store, out)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    raw = [json.loads(line)["run_id"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(raw) == len(set(raw)) == 6
