"""--log (train/trackers.py): what TensorBoard, MLflow and W&B hold after tt-train and tt-sweep, read back with each
backend's own reader and compared with metrics.json / results.jsonl; logging changes no weight; without --log no
backend is even imported; a bad --log is one line. Everything stays offline: HOME, the W&B and MLflow settings and
the working directory are the test's own."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from twinturbo.train.cli import sweep_main, train_main
from twinturbo.train.results import read_rows

TINY = ["--labels", "8", "--epochs", "2", "--batch-size", "48", "--lr", "3e-3", "--warmup", "1", "--proj-dim", "8",
        "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu"]
ALL = "tensorboard,mlflow,wandb"
FINAL = ("test_accuracy", "val_accuracy", "steps", "wall_time_s")


@pytest.fixture(scope="module")
def store(tmp_path_factory, write_tiny_store):
    return write_tiny_store(tmp_path_factory.mktemp("trackers") / "store")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No user settings reach the trackers: a fresh HOME (no ~/.netrc, no W&B key), no W&B or MLflow variables, and
    a working directory of its own (returned) that nothing may be written to."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DIR", "WANDB_PROJECT",
                 "WANDB_BASE_URL", "NETRC", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def invoke(command, args: list[str], expect: int = 0):
    result = CliRunner().invoke(command, args)
    assert result.exit_code == expect, result.output
    return result


# ---- what each run should hold: the JSON record, rebuilt here independently of train/trackers.py ------------------

def epochs_of_metrics(metrics: dict) -> list[dict[str, float]]:
    """Per epoch, the scalars a tracker must hold for a metrics.json."""
    return [{"accuracy/test": e["test_accuracy"], "accuracy/val": e["val_accuracy"],
             **{f"loss/{k}": v for k, v in e["mean_losses"].items()},
             **{f"diagnostics/{k}": v for k, v in e["diagnostics"].items()}} for e in metrics["epochs"]]


def epochs_of_row(row: dict) -> list[dict[str, float]]:
    """The same from a results.jsonl row."""
    return [{"accuracy/test": row["epoch_accuracies"][i], "accuracy/val": row["epoch_val_accuracies"][i],
             **{f"loss/{k}": v for k, v in row["epoch_losses"][i].items()},
             **{f"diagnostics/{k}": v for k, v in row["epoch_diagnostics"][i].items()}}
            for i in range(len(row["epoch_accuracies"]))]


# ---- each backend, read back with its own reader -----------------------------------------------------------------

def tensorboard_run(directory: Path) -> dict:
    """One run's event files through TensorBoard's EventAccumulator: its scalars by step, and its HParams session."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    steps: dict[int, dict[str, float]] = {}
    for tag in events.Tags()["scalars"]:
        for scalar in events.Scalars(tag):
            steps.setdefault(scalar.step, {})[tag] = scalar.value
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return {"steps": steps, "hparams": hparams, "group": start.group_name, "status": end.status}


def float32(value: float) -> float:
    return float(np.float32(value))


def check_tensorboard(directory: Path, epochs: list[dict], final: dict, config: dict, group: str) -> None:
    """TensorBoard keeps float32: every scalar must be the float32 rounding of its JSON value, exactly."""
    from tensorboard.plugins.hparams import api_pb2

    run = tensorboard_run(directory)
    last = len(epochs)
    assert sorted(run["steps"]) == list(range(1, last + 1))
    for step, expected in enumerate(epochs, start=1):
        logged = {k: v for k, v in run["steps"][step].items() if k not in FINAL}
        assert logged == {k: float32(v) for k, v in expected.items()}, step
    assert {k: v for k, v in run["steps"][last].items() if k in FINAL} == {k: float32(final[k]) for k in FINAL}
    assert run["hparams"] == {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                              for k, v in config.items()}
    assert run["group"] == group and run["status"] == api_pb2.STATUS_SUCCESS


def check_mlflow(uri: str, experiment: str, run_name: str, epochs: list[dict], final: dict, config: dict) -> None:
    """MLflow keeps doubles: every value exactly as in the JSON."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    (run,) = [r for r in client.search_runs([found.experiment_id]) if r.info.run_name == run_name]
    assert run.info.status == "FINISHED" and run.data.tags["twinturbo.run_id"] == run_name
    assert run.data.params == {k: str(v) for k, v in config.items()}
    for name in epochs[0]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert history == [(step, e[name]) for step, e in enumerate(epochs, start=1)], name
    assert {k: v for k, v in run.data.metrics.items() if k in FINAL} == {k: float(final[k]) for k in FINAL}


def wandb_records(path: Path):
    """The records of an offline W&B run file (`run-<id>.wandb`): wandb's own protobuf Records in the LevelDB log
    framing its writer uses (a 7-byte ':W&B' header, 32 KiB blocks, records of a 7-byte header [crc32, length, type:
    1 full, 2 first, 3 middle, 4 last] and their bytes). wandb ships no reader of its own in Python."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending = 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # the block's tail is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            position += room
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def wandb_run(run_file: Path) -> dict:
    """An offline W&B run as its file holds it: name, group, project, config, history by step, summary."""
    run, history, summary = None, {}, {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = {k: v for k, v in items.items() if not k.startswith("_")}
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    return {"name": run.display_name, "group": run.run_group, "project": run.project,
            "config": {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"},
            "history": history, "summary": summary}


def check_wandb(runs: dict[str, dict], run_name: str, epochs: list[dict], final: dict, config: dict,
                group: str) -> None:
    run = runs[run_name]
    assert (run["project"], run["group"], run["config"]) == ("twinturbo", group, config)
    assert run["history"] == dict(enumerate(epochs, start=1))
    assert {k: run["summary"][k] for k in FINAL} == {k: final[k] for k in FINAL}


def wandb_runs(wandb_dir: Path) -> dict[str, dict]:
    runs = [wandb_run(path) for path in wandb_dir.glob("offline-run-*/run-*.wandb")]
    return {run["name"]: run for run in runs}


# ---- tt-train -----------------------------------------------------------------------------------------------------

def test_train_logging_changes_nothing_and_lands_where_help_says(store, tmp_path, offline):
    """The same run with and without --log of all three: equal metrics (but the wall time) and head weights; the
    trackers' files in RUN_DIR (MLflow sqlite RUN_DIR/mlflow.db, experiment twinturbo; W&B offline for want of a
    key), each holding metrics.json's values; nothing in the working directory."""
    args = ["--features", str(store), "--critic", "0.1", "--quiet", *TINY]
    invoke(train_main, [*args, "--out", str(tmp_path / "plain")])
    logged_dir = tmp_path / "logged"
    output = invoke(train_main, [*args, "--out", str(logged_dir), "--log", ALL]).output
    plain, logged = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("plain", "logged"))
    plain.pop("wall_time_s"), logged.pop("wall_time_s")
    assert plain == logged
    heads = [torch.load(tmp_path / name / "head.pt", weights_only=True)["state_dict"] for name in ("plain", "logged")]
    assert heads[0].keys() == heads[1].keys() and all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])

    metrics = json.loads((logged_dir / "metrics.json").read_text())
    config = json.loads((logged_dir / "config.json").read_text())
    epochs = epochs_of_metrics(metrics)
    assert "loss/critic" in epochs[0] and "diagnostics/d_real_acc" in epochs[0]
    assert any(e["accuracy/val"] != e["accuracy/test"] for e in epochs)  # one sent for the other would show
    check_tensorboard(logged_dir / "tensorboard", epochs, metrics, config, group="")
    check_mlflow(f"sqlite:///{logged_dir / 'mlflow.db'}", "twinturbo", "logged", epochs, metrics, config)
    check_wandb(wandb_runs(logged_dir / "wandb"), "logged", epochs, metrics, config, group="")
    assert (f"tracked: TensorBoard {logged_dir / 'tensorboard'}; MLflow sqlite:///{logged_dir / 'mlflow.db'} "
            f"(experiment twinturbo); W&B offline in {logged_dir / 'wandb'}") in output
    assert list(offline.iterdir()) == []


def test_a_rerun_replaces_its_tensorboard_events(store, tmp_path, offline):
    run_dir = tmp_path / "run"
    for seed in ("1", "2"):
        invoke(train_main, ["--features", str(store), "--quiet", "--seed", seed, "--out", str(run_dir),
                            "--log", "tensorboard", *TINY])
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = tensorboard_run(run_dir / "tensorboard")["steps"]
    assert steps[2]["accuracy/test"] == float32(metrics["epochs"][1]["test_accuracy"])  # the second run's


def test_a_failing_tracker_warns_once_and_the_run_goes_on(store, tmp_path, offline, monkeypatch):
    from mlflow.tracking import MlflowClient

    from twinturbo.train import trackers

    def broken(self, run_id, epoch, values):
        raise RuntimeError("the tracking server went away")

    monkeypatch.setattr(trackers.MlflowSink, "log_epoch", broken)
    run_dir = tmp_path / "run"
    result = invoke(train_main, ["--features", str(store), "--quiet", "--out", str(run_dir), "--log",
                                 "mlflow,tensorboard", *TINY])
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --log mlflow stopped (RuntimeError: the tracking server went away); training goes "
                        "on, metrics.json and results.jsonl keep every result"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and len(tensorboard_run(run_dir / "tensorboard")["steps"]) == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("twinturbo").experiment_id])
    assert run.info.status == "FAILED"


# ---- tt-sweep -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse, workers", [("2", "1"), ("1", "2")], ids=["fused-pass", "two-workers"])
def test_sweep_runs_read_back_from_each_tracker(store, tmp_path, offline, monkeypatch, fuse, workers):
    """A 2-run sweep (setup 2 at two λ_C, one seed) trained as one fused pass of K = 2 runs, or as two groups in two
    worker processes writing one MLflow SQLite store (MLFLOW_TRACKING_URI) and one TensorBoard directory at once:
    per run and per epoch, TensorBoard, MLflow and W&B (WANDB_MODE=offline, WANDB_DIR) hold the values of its
    results.jsonl row, grouped by the sweep."""
    from twinturbo.train import launch

    monkeypatch.setattr(launch.os, "cpu_count", lambda: 2)
    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    (tmp_path / "tracking").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    sweep_dir = tmp_path / "ablation"
    invoke(sweep_main, ["--features", str(store), "--out", str(sweep_dir), "--setups", "2", "--critic-grid", "0.1,1",
                        "--seeds", "2", "--fuse", fuse, "--workers", workers, "--log", ALL, *TINY])
    rows = read_rows(sweep_dir / "results.jsonl")
    assert len(rows) == 2 and {r["fused_runs"] for r in rows} == {int(fuse)}
    # so that runs swapped between trackers, or one value sent for another, would show:
    assert rows[0]["epoch_losses"] != rows[1]["epoch_losses"]
    assert all(r["epoch_accuracies"] != r["epoch_val_accuracies"] for r in rows)
    assert sorted(p.name for p in (sweep_dir / "tensorboard").iterdir()) == sorted(r["run_id"] for r in rows)
    w_and_b = wandb_runs(tmp_path / "wandb-dir" / "wandb")
    for row in rows:
        epochs = epochs_of_row(row)
        check_tensorboard(sweep_dir / "tensorboard" / row["run_id"], epochs, row, row["config"], group="ablation")
        check_mlflow(uri, "ablation", row["run_id"], epochs, row, row["config"])
        check_wandb(w_and_b, row["run_id"], epochs, row, row["config"], group="ablation")
    assert not (sweep_dir / "mlflow.db").exists() and not (sweep_dir / "wandb").exists()  # the variables were obeyed


# ---- the option ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [train_main, sweep_main], ids=["tt-train", "tt-sweep"])
def test_unknown_tracker_is_one_line_listing_the_valid_ones(store, tmp_path, command):
    result = invoke(command, ["--features", str(store), "--out", str(tmp_path / "out"), "--log", "tensorboard,neptune",
                              *TINY], expect=2)
    assert result.output.strip() == ("error: --log tensorboard,neptune: unknown tracker 'neptune'; expected a "
                                     "comma-separated subset of tensorboard, mlflow, wandb")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [train_main, sweep_main], ids=["tt-train", "tt-sweep"])
def test_a_missing_backend_is_one_line_before_anything_is_written(store, tmp_path, monkeypatch, command):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = invoke(command, ["--features", str(store), "--out", str(tmp_path / "out"), "--log", "tensorboard,mlflow",
                              *TINY], expect=2)
    assert result.output.strip() == "error: --log mlflow needs the mlflow package: pip install twinturbo[mlflow]"
    assert not (tmp_path / "out").exists()


def test_without_log_no_tracker_is_imported(store, tmp_path):
    """Importing the commands and training with each (no --log) imports nothing of TensorBoard, MLflow or W&B."""
    script = f"""
import sys
from twinturbo.train.cli import sweep_main, train_main
flags = {TINY!r}
train_main.main(["--features", {str(store)!r}, "--quiet", "--out", {str(tmp_path / 'run')!r}, *flags])
sweep_main.main(["--features", {str(store)!r}, "--out", {str(tmp_path / 'sweep')!r}, "--setups", "1", "--seeds", "1",
                 *flags])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorboard", "mlflow", "wandb")
                or m.startswith("torch.utils.tensorboard"))
assert not loaded, loaded
print("no tracker imported")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "no tracker imported" in result.stdout, result.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").exists() and len(read_rows(tmp_path / "sweep" / "results.jsonl")) == 1
