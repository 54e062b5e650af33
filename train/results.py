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
from typing import Iterator

import torch

from twinturbo.common.device import host_description
from twinturbo.train.sweep import RunSpec
from twinturbo.train.terms import plugin_sources

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
        **({"plugins": plugins} if (plugins := plugin_sources(run.train_config())) else {}),
    }


def append_row(results_path: str | os.PathLike, row: dict) -> None:
    """Append one finished run as one line, atomically and durably.

    One `os.write` of the whole line on an O_APPEND descriptor (under a POSIX lock, which also holds on NFS for the
    submitit launcher's concurrent jobs), then fsync. A previous writer killed mid-line leaves a line without its
    newline; we start ours on a fresh line so that only the broken one is lost, and readers skip it.
    """
    line = (json.dumps(row, sort_keys=True, allow_nan=True) + "\n").encode()
    fd = os.open(results_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {results_path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)  # closing drops the lock


def _lines(results_path: Path) -> Iterator[tuple[int, dict | None]]:
    """(line number from 1, its row, or None where the line is not a whole JSON row: a writer killed mid-line)."""
    with open(results_path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
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


def cut_lines_note(results_path: str | os.PathLike) -> str | None:
    """The note a command gives on resuming a results.jsonl with cut lines, or None when it has none."""
    cut = cut_lines(results_path)
    if not cut:
        return None
    where = f"line{'s' if len(cut) > 1 else ''} {', '.join(map(str, cut[:5]))}{', ...' if len(cut) > 5 else ''}"
    return (f"note: {results_path} {where} {'are' if len(cut) > 1 else 'is'} not a whole row (a writer killed "
            "mid-line): ignored, and a run whose row was cut counts as not done and is trained again")


def finished_run_ids(sweep_dir: str | os.PathLike) -> set[str]:
    return {row["run_id"] for row in read_rows(Path(sweep_dir) / RESULTS_FILE)}
