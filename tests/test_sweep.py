"""tt-sweep: grid expansion, the results file, resume after a kill, refusal of a changed sweep, the launchers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.cli import sweep_main
from twinturbo.train.sweep.results import append_row, cut_lines, drop_cut_lines, read_rows
from twinturbo.train.sweep.setups import PAPER_SETUPS as SETUPS
from twinturbo.train.sweep.grid import SweepGrid, parse_list
from twinturbo.train.sweep.gridfile import load_grid_file
from twinturbo.train.sweep.sweepdir import fusion_groups
from twinturbo.train.terms import rows_needed


TINY_FLAGS = ["--labels", "8", "--epochs", "1", "--batch-size", "48", "--lr", "3e-3", "--warmup", "1",
              "--proj-dim", "8", "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, write_tiny_store):
    return write_tiny_store(tmp_path_factory.mktemp("sweep") / "store")


# ---- the grid ---------------------------------------------------------------------------------------------------------

def test_default_grid_is_the_papers_222_runs():
    runs = SweepGrid().expand()
    assert len(runs) == (1 + 3 * 3 + 3 * 9) * 2 * 3 == 222
    assert len({r.run_id for r in runs}) == 222
    # Setup 1 has no lambda; 2-4 only lambda_C; 5-7 both (the Eq. 22 terms each setup switches on, train/sweep/setups.py).
    assert {r.weights for r in runs if r.setup.key == 1} == {()}
    assert all(r.weight("latent") == 0 and r.weight("critic") > 0 for r in runs if r.setup.key in (2, 3, 4))
    assert all(r.weight("latent") > 0 and r.weight("critic") > 0 for r in runs if r.setup.key >= 5)
    assert [(SETUPS[s].loss, SETUPS[s].rescale) for s in range(1, 8)] == [
        ("cat_cross", "softmax"), ("cat_cross", "softmax"), ("cat_twin", "softmax"), ("cat_twin", "sigmoid"),
        ("cat_twin", "sigmoid"), ("bin_cross", "softmax"), ("bin_cross", "sigmoid")]


@pytest.mark.parametrize("kwargs, count", [
    (dict(setups=(1,)), 1 * 2 * 3),
    (dict(setups=parse_list("2-4", int, "--setups"), labels=(100,), seeds=(42,)), 9),
    (dict(setups=(1, 5), grids={"critic": (0.1,), "latent": (0.01, 1.0)}, seeds=(1, 2)), (1 + 2) * 2 * 2),
    (dict(labels=(100,), setup_grids={7: {"latent_grid": (0.5,)}}), (1 + 9 + 18 + 3) * 3),
])
def test_grid_variants_count(kwargs, count):
    assert len(SweepGrid(**kwargs).expand()) == count


def test_grid_files_toml_and_yaml(tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text('setups = [1, 2, 5]\nlabels = [100]\nseeds = [42]\ncritic_grid = [0.1]\n'
                    'latent_grid = [0.01, 0.1]\n[training]\nepochs = 2\nwarmup = 10\n'
                    '[setup_grids.2]\ncritic_grid = [0.5, 1.0]\n')
    yaml = tmp_path / "grid.yaml"
    yaml.write_text("setups: [1, 2, 5]\nlabels: [100]\nseeds: [42]\ncritic_grid: [0.1]\nlatent_grid: [0.01, 0.1]\n"
                    "training: {epochs: 2, warmup: 10}\nsetup_grids: {2: {critic_grid: [0.5, 1.0]}}\n")
    grids = [SweepGrid.from_dict(load_grid_file(path)) for path in (toml, yaml)]
    assert grids[0].to_dict() == grids[1].to_dict()
    runs = grids[0].expand()
    assert [(r.setup.key, r.weight("critic"), r.weight("latent")) for r in runs] == [
        (1, 0, 0), (2, 0.5, 0), (2, 1.0, 0), (5, 0.1, 0.01), (5, 0.1, 0.1)]
    assert all(r.train_config().epochs == 2 and r.train_config().warmup_steps == 10 for r in runs)


@pytest.mark.parametrize("text, message", [
    ("setups = [8]", "unknown setup 8"),
    ("colour = 1", "unknown key 'colour'"),
    ("[training]\nbatchsize = 3", "'batchsize' is not a tt-train flag"),
    ("[training]\nepochs = 0", "--epochs 0"),
    ("seeds = [1, 1]", "lists a value twice"),
    ("setups = [1", "cannot parse"),
])
def test_bad_grid_file_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(TwinTurboError, match=message):
        SweepGrid.from_dict(load_grid_file(path))


def test_fusion_groups_share_seed_and_labels_and_respect_the_cap():
    runs = SweepGrid(labels=(100,), seeds=(1, 2)).expand()
    groups = list(fusion_groups(runs, 8))
    assert sum(len(g) for g in groups) == len(runs) == 74
    assert max(len(g) for g in groups) == 8
    assert all(len({r.fusion_key for r in g}) == 1 for g in groups)
    # Per seed: setup 1 alone, the 9 critic-only runs (2-4), the 27 critic+latent runs (5-7), 8 at most per group.
    assert sorted(len(g) for g in groups if g[0].seed == 1) == [1, 1, 3, 8, 8, 8, 8]
    assert all(len({rows_needed(r.train_config()) for r in g}) == 1 for g in groups)


# ---- results.jsonl ------------------------------------------------------------------------------------------------

def test_partial_trailing_line_is_ignored_and_never_glued_to_the_next_row(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"run_id": "a", "test_accuracy": 0.5})
    with open(path, "ab") as handle:
        handle.write(b'{"run_id": "b", "test_acc')  # a writer killed mid-line
    assert [r["run_id"] for r in read_rows(path)] == ["a"]
    append_row(path, {"run_id": "c", "test_accuracy": 0.7})
    assert [r["run_id"] for r in read_rows(path)] == ["a", "c"]
    append_row(path, {"run_id": "a", "test_accuracy": 0.9})  # a duplicate: the first row wins
    assert [r["test_accuracy"] for r in read_rows(path)] == [0.5, 0.7]


def _append_many(path: str, count: int) -> None:
    for i in range(count):
        append_row(path, {"run_id": f"r{i}"})


def test_removing_cut_lines_while_another_process_appends_loses_no_row(tmp_path):
    """drop_cut_lines replaces the file; an appender that opened the old one meanwhile must write to the new one."""
    import fcntl
    import multiprocessing
    import os

    path = tmp_path / "results.jsonl"
    append_row(path, {"run_id": "first"})
    appender = multiprocessing.get_context("spawn").Process(target=_append_many, args=(str(path), 300))
    appender.start()
    while appender.is_alive():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # a writer killed mid-line, under the appenders' lock
        fcntl.lockf(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.write(fd, b'{"run_id": "cut')
        os.close(fd)
        drop_cut_lines(path)
    appender.join()
    drop_cut_lines(path)
    ids = [json.loads(line)["run_id"] for line in path.read_bytes().splitlines()]
    assert ids == ["first"] + [f"r{i}" for i in range(300)] and cut_lines(path) == []


# ---- the command --------------------------------------------------------------------------------------------------

def _sweep(args, expect=0):
    result = CliRunner().invoke(sweep_main, args)
    assert result.exit_code == expect, result.output
    return result.output


def test_dry_run_prints_the_table_and_count(store, tmp_path):
    out = _sweep(["--features", str(store), "--out", str(tmp_path / "sw"), "--dry-run"])
    assert out.strip().splitlines()[-1] == "222 runs (0 done, 222 to train)"
    assert "cat_twin/sigmoid + critic + latent" in out
    assert not (tmp_path / "sw").exists()


def test_a_grid_no_chosen_setup_reads_is_named_in_one_warning_line(store, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('setups = [1, 2]\ncritic_grid = [1]\n[setup_grids.7]\nlatent_grid = [0.5]\n'
                    '[setup_grids.2]\nlatent_grid = [0.5]\n')
    base = ["--features", str(store), "--out", str(tmp_path / "sw"), "--dry-run", "--labels", "8", "--seeds", "1"]
    cases = [
        (["--setups", "1", "--critic-grid", "5"], "--critic-grid 5", "(1)"),
        (["--setups", "1,2", "--critic-grid", "5", "--fixmatch-grid", "1", "--latent-grid", "0.1"],
         "--latent-grid 0.1; --fixmatch-grid 1", "(1, 2)"),
        (["--grid", str(grid)], f"setup_grids.7 of --grid {grid}; setup_grids.2.latent_grid of --grid {grid}",
         "(1, 2)"),
    ]
    for args, named, setups in cases:
        result = CliRunner().invoke(sweep_main, base + args)
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert warnings == [f"warning: {named}: read by no chosen setup {setups}, so no run changes (a setup reads a "
                            "term's grid only when it switches the term on and sets none of its own)"], result.stderr
    result = CliRunner().invoke(sweep_main, base + ["--setups", "1,2", "--critic-grid", "5"])
    assert result.exit_code == 0 and "warning" not in result.stderr  # setup 2 reads it
    # a head's option where no run trains that head, a term's where no setup has the term: a warning of its own
    # (tt-train refuses them)
    result = CliRunner().invoke(sweep_main, base + ["--setups", "1", "--heads", "linear", "--attentive-queries", "4",
                                                    "--prior", "labelled"])
    assert result.exit_code == 0 and [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: --attentive-queries 4 (--head attentive); --prior labelled (the critic term): read by no run of this "
        "sweep (setups 1; heads linear), so no run changes"], result.stderr
    result = CliRunner().invoke(sweep_main, base + ["--setups", "1,2", "--heads", "linear,attentive",
                                                    "--attentive-queries", "4", "--prior", "labelled"])
    assert result.exit_code == 0 and "warning" not in result.stderr


def test_changed_grid_or_store_is_refused_unless_extend(store, tmp_path, write_tiny_store):
    sweep_dir = tmp_path / "sw"
    base = ["--features", str(store), "--out", str(sweep_dir), "--setups", "1", "--seeds", "1"] + TINY_FLAGS
    _sweep(base)
    assert len(read_rows(sweep_dir / "results.jsonl")) == 1
    # Same command again: nothing to train, nothing appended.
    assert "1 already done, 0 to train" in _sweep(base)
    assert len(read_rows(sweep_dir / "results.jsonl")) == 1

    changed = base[:7] + ["2"] + base[8:]  # --seeds 2
    out = _sweep(changed, expect=2)
    assert "the grid changed (seeds: [1] -> [2])" in out and "--extend" in out
    dry = _sweep(changed + ["--dry-run"])  # the dry run says the same refusal, and nothing else changes
    assert dry.strip().splitlines()[-1] == f"note: without --dry-run this command is refused: {out.strip()[7:]}"
    assert "note:" not in _sweep(changed + ["--dry-run", "--extend"])
    assert json.loads((sweep_dir / "sweep.json").read_text())["grid"]["seeds"] == [1]
    other_store = write_tiny_store(tmp_path / "other", seed=5, dataset="other")
    out = _sweep(["--features", str(other_store)] + base[2:], expect=2)
    assert "the features store changed" in out

    _sweep(changed + ["--extend"])
    rows = read_rows(sweep_dir / "results.jsonl")
    assert sorted(r["config"]["seed"] for r in rows) == [1, 2]
    history = json.loads((sweep_dir / "sweep.json").read_text())
    assert history["grid"]["seeds"] == [2] and history["history"][0]["grid"]["seeds"] == [1]
    row = rows[0]
    assert row["setup"] == 1 and row["store"]["fingerprint"] and len(row["epoch_accuracies"]) == 1
    assert 0 <= row["test_accuracy"] <= 1 and row["wall_time_s"] > 0 and row["config"]["proj_dim"] == 8


def test_killed_sweep_resumes_without_lost_or_duplicated_rows(store, tmp_path):
    sweep_dir = tmp_path / "sw"
    command = [sys.executable, "-c", "from twinturbo.train.cli import sweep_main; sweep_main()",
               "--features", str(store), "--out", str(sweep_dir), "--setups", "1-3", "--critic-grid", "0.1,1",
               "--seeds", "1,2", "--fuse", "1"] + TINY_FLAGS
    results = sweep_dir / "results.jsonl"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_rows(results)) < 2 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(read_rows(results))
    assert 2 <= done_before < 10, "the sweep should have been killed part-way"
    whole = results.read_bytes()
    with open(results, "ab") as handle:
        handle.write(b'{"run_id": "s2-half')  # as if the kill had hit a write
    cut_line = len(results.read_bytes().splitlines())
    resumed = subprocess.run(command, check=True, capture_output=True, text=True)
    assert (f"note: {results} line {cut_line} is not a whole row (a writer killed mid-line): removed (every whole "
            "row kept), and a run whose row was cut counts as not done and is trained again") \
        in resumed.stdout.splitlines()
    assert results.read_bytes().startswith(whole) and cut_lines(results) == []  # the rows before, byte for byte
    again = subprocess.run(command, check=True, capture_output=True, text=True)
    assert "note:" not in again.stdout and "0 to train" in again.stdout  # said once
    rows = read_rows(results)
    ids = [json.loads(line)["run_id"] for line in results.read_bytes().splitlines() if line.endswith(b"}")
           and line.startswith(b'{"')]
    assert len(rows) == 10 and len(ids) == len(set(ids)) == 10
    assert {r["run_id"] for r in rows} == set(ids)
    assert sorted((r["setup"], r["config"]["critic_weight"], r["config"]["seed"]) for r in rows) == sorted(
        (s, c, seed) for seed in (1, 2) for s, c in [(1, 0.0), (2, 0.1), (2, 1.0), (3, 0.1), (3, 1.0)])


def test_submitit_local_launcher_end_to_end(store, tmp_path):
    pytest.importorskip("submitit")
    sweep_dir = tmp_path / "sw"
    _sweep(["--features", str(store), "--out", str(sweep_dir), "--setups", "2,3", "--critic-grid", "0.5",
            "--seeds", "1,2", "--fuse", "2", "--launcher", "submitit", "--submitit-cluster", "local"] + TINY_FLAGS)
    rows = read_rows(sweep_dir / "results.jsonl")
    assert sorted((r["setup"], r["config"]["seed"]) for r in rows) == [(2, 1), (2, 2), (3, 1), (3, 2)]
    assert all(r["fused_runs"] == 2 for r in rows)
    assert len(list((sweep_dir / "submitit").glob("*/*_result.pkl"))) == 2  # one job per fused group


def test_local_workers_train_every_run_once_and_match_a_single_thread_run(store, tmp_path, monkeypatch):
    import torch

    from twinturbo.train.sweep import local

    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)  # 2 workers of 1 thread each, on any machine
    args = ["--setups", "1,2", "--critic-grid", "0.5", "--seeds", "1,2", "--fuse", "1"] + TINY_FLAGS
    _sweep(["--features", str(store), "--out", str(tmp_path / "parallel"), "--workers", "2"] + args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _sweep(["--features", str(store), "--out", str(tmp_path / "serial")] + args)
    finally:
        torch.set_num_threads(threads)
    parallel, serial = (read_rows(tmp_path / name / "results.jsonl") for name in ("parallel", "serial"))
    assert len(parallel) == len({r["run_id"] for r in parallel}) == 4
    assert {r["threads"] for r in parallel} == {1}
    assert all(r["host"]["torch"] == torch.__version__ and r["host"]["cpu"] for r in parallel)
    # same seed, same device, same thread count: the same accuracies, whichever process trained the run
    assert ({r["run_id"]: r["test_accuracy"] for r in parallel} == {r["run_id"]: r["test_accuracy"] for r in serial})


def test_local_workers_each_get_a_gpu_of_their_own(monkeypatch):
    """With the CUDA device count patched (CI has no GPU): worker i of a sweep on auto or cuda gets cuda:(i mod
    count), in the order the workers start; an explicit cuda:N, one GPU or the CPU keep one device for all."""
    import multiprocessing

    import torch

    from twinturbo.train.sweep.local import take_worker_device, worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_devices("auto", 4) == worker_devices("cuda", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert worker_devices("cuda", 6) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert worker_devices("cuda:2", 3) == ["cuda:2"] * 3 and worker_devices("cpu", 2) == ["cpu", "cpu"]
    slots = multiprocessing.get_context("spawn").Value("i", 0)
    devices = worker_devices("auto", 2)
    assert [take_worker_device(slots, devices) for _ in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_devices("auto", 2) == ["auto", "auto"]


def test_a_row_names_the_cpus_bf16_units(store, tmp_path, monkeypatch):
    # Two CPUs sold as "Intel(R) Xeon(R) Processor", one with AMX and one with AVX512-BF16 only, round bf16 differently:
    # the row says which units torch found, so that figures from the two can be told apart.
    import torch

    for amx, avx512, units in ((True, True, "amx_bf16"), (False, True, "avx512_bf16"), (False, False, "")):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx512=avx512: avx512, raising=False)
        sweep_dir = tmp_path / f"sw-{units or 'none'}"
        _sweep(["--features", str(store), "--out", str(sweep_dir), "--setups", "1", "--seeds", "1",
                "--precision", "fp32"] + TINY_FLAGS)
        (row,) = read_rows(sweep_dir / "results.jsonl")
        assert row["host"]["bf16_units"] == units


def test_a_workers_user_error_is_one_line(store, tmp_path, monkeypatch):
    from twinturbo.train.sweep import local

    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
    too_many_labels = ["--labels", "1000"] + TINY_FLAGS[2:]  # the tiny store has 96 train samples
    out = _sweep(["--features", str(store), "--out", str(tmp_path / "sw"), "--setups", "1,2", "--critic-grid", "0.5",
                  "--seeds", "1,2", "--fuse", "1", "--workers", "2"] + too_many_labels, expect=2)
    assert "error: --labels 1000: the train split has only 96 labelled samples" in out


def test_precision_is_resolved_recorded_and_a_resume_in_another_refused(store, tmp_path, monkeypatch):
    from twinturbo.common import device

    monkeypatch.setattr(device, "native_bf16", lambda d: True)  # a CPU with AVX512-BF16, whatever this one is
    sweep_dir = tmp_path / "sw"
    base = ["--features", str(store), "--out", str(sweep_dir), "--setups", "1", "--seeds", "1"] + TINY_FLAGS
    _sweep(base)  # --precision auto: bf16 on such a CPU, recorded in sweep.json and in the row's config
    assert json.loads((sweep_dir / "sweep.json").read_text())["grid"]["training"]["precision"] == "bf16"
    (row,) = read_rows(sweep_dir / "results.jsonl")
    assert row["config"]["precision"] == row["precision"] == "bf16"
    out = _sweep(base + ["--precision", "fp32"], expect=2)
    assert out.strip() == (f"error: {sweep_dir} was trained in bf16 and this command asks for fp32: pass --precision "
                           "bf16 to resume it, or choose another --out")
    assert "error:" in _sweep(base + ["--precision", "fp32", "--extend"], expect=2)  # not even with --extend
    monkeypatch.setattr(device, "native_bf16", lambda d: False)  # auto on a CPU without it is fp32: refused too
    assert "was trained in bf16 and this command asks for fp32" in _sweep(base, expect=2)
    assert len(read_rows(sweep_dir / "results.jsonl")) == 1
