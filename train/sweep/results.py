"""SWEEP_DIR/results.jsonl: one JSON row per finished run, the one record of what a sweep has done.

The row is built here (`result_row`) and written here (`append_row`: one atomic, durable append per row), and read
here (`read_rows`, `finished_run_ids`) by the launchers, the report and the benches.
"""
from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import torch

from twinturbo.common.atomic import atomic_open
from twinturbo.common.device import host_description
from twinturbo.train.sweep.grid import RunSpec
from twinturbo.train.heads import run_plugins

RESULTS_FILE = "results.jsonl"


def result_row(run: RunSpec, metrics: dict, store_identity: dict, device: str, fused_runs: int) -> dict:
    """The results.jsonl row of one finished run: full config, ids, accuracy, per-epoch curve, time, store, host."""
    return {
        "run_id": run.run_id,
        "setup": run.setup.key,
        "setup_name": run.setup.name,
        "config": run.config(),
        "test_accuracy": float(metrics["test_accuracy"]),
        "epoch_accuracies": [float(e["test_accuracy"]) for e in metrics["epochs"]],
        "val_accuracy": metrics.get("val_accuracy"),
        "val_samples": metrics.get("val_samples", 0),
        "epoch_val_accuracies": [e["val_accuracy"] for e in metrics["epochs"] if "val_accuracy" in e],
        "epoch_val_correct": [e["val_correct"] for e in metrics["epochs"] if "val_correct" in e],
        "precision": metrics.get("precision"),
        "num_classes": metrics["num_classes"],
        "train_samples": metrics["train_samples"],
        "test_samples": metrics["test_samples"],
        "epoch_losses": [e["mean_losses"] for e in metrics["epochs"]],
        "epoch_diagnostics": [e.get("diagnostics", {}) for e in metrics["epochs"]],
        "steps": metrics["steps"],
        "nonfinite_step": metrics.get("nonfinite_step"),
        "unlabelled_pass": metrics.get("unlabelled_pass"),
        "wall_time_s": float(metrics["wall_time_s"]),
        "fused_runs": fused_runs,
        "device": device,
        "threads": metrics["threads"],
        "host": host_description(torch.device(device)),
        "store": store_identity,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"plugins": plugins} if (plugins := run_plugins(run.train_config())) else {}),
    }


def append_row(results_path: str | os.PathLike, row: dict) -> None:
    """Append one finished run as one line, atomically and durably.

    One `os.write` of the whole line on an O_APPEND descriptor (under a POSIX lock, which also holds on NFS for the
    submitit launcher's concurrent jobs), then fsync. A previous writer killed mid-line leaves a line without its
    newline; we start ours on a fresh line so that only the broken one is lost, and readers skip it.
    """
    line = (json.dumps(row, sort_keys=True, allow_nan=True) + "\n").encode()
    fd = _locked(results_path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {results_path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)  # closing drops the lock


def _locked(results_path: str | os.PathLike, flags: int) -> int:
    """A descriptor of results.jsonl holding its POSIX lock. `drop_cut_lines` may have replaced the file while we
    waited for the lock: then the lock is on a file no reader sees any more, and we open the new one instead."""
    while True:
        fd = os.open(results_path, flags, 0o644)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(results_path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _lines(results_path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number from 1, its row, or None where the line is not a whole JSON row: a writer killed mid-line)."""
    with open(results_path, "rb") as handle:
        yield from _parse(handle)


def _parse(lines: Iterable[bytes]) -> Iterator[tuple[int, dict | None]]:
    for number, raw in enumerate(lines, start=1):
        try:
            row = json.loads(raw) if raw.endswith(b"\n") else None
        except json.JSONDecodeError:
            row = None
        yield number, row if isinstance(row, dict) else None


def read_rows(results_path: str | os.PathLike) -> list[dict]:
    """All complete rows, first occurrence per run id; a line cut by a kill mid-write is skipped (`cut_lines` names
    them)."""
    path = Path(results_path)
    if not path.exists():
        return []
    rows, seen = [], set()
    for _, row in _lines(path):
        if row is not None and row.get("run_id") not in seen:
            seen.add(row.get("run_id"))
            rows.append(row)
    return rows


def cut_lines(results_path: str | os.PathLike) -> list[int]:
    """The numbers of the lines of results.jsonl that are not whole rows (a writer killed mid-line)."""
    path = Path(results_path)
    return [number for number, row in _lines(path) if row is None] if path.exists() else []


def cut_lines_note(results_path: str | os.PathLike, removed: bool = False, cut: list[int] | None = None) -> str | None:
    """The note on a results.jsonl with cut lines (or None when it has none): tt-report ignores them, a resuming
    tt-sweep removes them (`removed`, drop_cut_lines, which passes the `cut` line numbers it found)."""
    cut = cut_lines(results_path) if cut is None else cut
    if not cut:
        return None
    where = f"line{'s' if len(cut) > 1 else ''} {', '.join(map(str, cut[:5]))}{', ...' if len(cut) > 5 else ''}"
    done = "removed (every whole row kept)" if removed else "ignored"
    return (f"note: {results_path} {where} {'are' if len(cut) > 1 else 'is'} not a whole row (a writer killed "
            f"mid-line): {done}, and a run whose row was cut counts as not done and is trained again")


def drop_cut_lines(results_path: str | os.PathLike) -> str | None:
    """Rewrite results.jsonl without its cut lines, every whole row kept byte for byte and in order (a resuming
    tt-sweep does, so that the note is said once, not by every later command); atomically, under the appenders'
    lock (append_row reopens a file replaced meanwhile). Returns the note, or None when there was nothing to cut.

    The file is read through the locked descriptor only: closing any other descriptor of the file (a dup included)
    would release this process's POSIX lock on it."""
    path = Path(results_path)
    if not path.exists():
        return None
    fd = _locked(path, os.O_RDWR)
    try:
        size, data = os.fstat(fd).st_size, b""
        while len(data) < size:
            data += os.pread(fd, size - len(data), len(data))
        lines = data.splitlines(keepends=True)
        cut = [number for number, row in _parse(lines) if row is None]
        if cut:
            with atomic_open(path, "wb") as out:
                out.writelines(raw for number, raw in enumerate(lines, start=1) if number not in set(cut))
        return cut_lines_note(path, removed=True, cut=cut)
    finally:
        os.close(fd)


def finished_run_ids(sweep_dir: str | os.PathLike) -> set[str]:
    return {row["run_id"] for row in read_rows(Path(sweep_dir) / RESULTS_FILE)}
