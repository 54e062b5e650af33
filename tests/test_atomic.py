"""common/atomic.py: files written whole or not at all, by any number of writers at once."""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from twinturbo.common.atomic import atomic_path, save_figure, write_json_atomic, write_text_atomic

_barrier = None


def _keep_barrier(barrier) -> None:
    global _barrier
    _barrier = barrier


def _write_many(path: str, writer: int, times: int) -> str | None:
    """Write `path` `times` times, starting together with the other writer; the first error's text, or None."""
    _barrier.wait()
    try:
        for i in range(times):
            write_json_atomic(Path(path), {"writer": writer, "i": i, "padding": "x" * 4096})
    except Exception as err:  # noqa: BLE001 (what the test reports)
        return f"{type(err).__name__}: {err}"
    return None


def test_two_processes_writing_one_file_at_once_each_write_it_whole(tmp_path):
    path = tmp_path / "sweep.json"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    with ProcessPoolExecutor(2, mp_context=context, initializer=_keep_barrier, initargs=(barrier,)) as pool:
        errors = list(pool.map(_write_many, [str(path)] * 2, [0, 1], [300, 300]))
    assert errors == [None, None]
    final = json.loads(path.read_text())  # whole: one writer's last write
    assert final["i"] == 299 and final["writer"] in (0, 1)
    assert os.listdir(tmp_path) == ["sweep.json"]  # no temporary file left by either writer


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "summary.md"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("the writer dies")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["summary.md"]


def test_permissions_follow_the_umask_as_open_gives_them(tmp_path):
    previous = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "a")
        with open(tmp_path / "b.txt", "w") as handle:
            handle.write("b")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_a_figure_is_saved_in_the_format_its_suffix_names(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "f.png", dpi=50)
    save_figure(fig, tmp_path / "f.pdf", dpi=50)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(os.listdir(tmp_path)) == ["f.pdf", "f.png"]
