"""--log (train/trackers/): what TensorBoard, MLflow and W&B hold after tt-train and tt-sweep, read back with each
backend's own reader and compared with metrics.json / results.jsonl; logging changes no weight; without --log no
backend is even imported; a bad --log is one line; an unreachable MLflow server is one line within seconds, a tracker
that breaks mid-sweep one warning line; a run ended by Ctrl-C or an error is KILLED or FAILED in each backend. A test
reads a tracker's files once they are complete (the command has returned, or its runs have logged what the test waits
for), never after a fixed sleep. Everything stays offline: HOME, the W&B and MLflow settings and the working directory
are the test's own; the only server is a closed loopback port."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import default_sigint
from twinturbo.train.cli import sweep_main, train_main
from twinturbo.train.sweep.results import read_rows

BIN = Path(sys.executable).parent

TINY = ["--labels", "8", "--epochs", "2", "--batch-size", "48", "--lr", "3e-3", "--warmup", "1", "--proj-dim", "8",
        "--pred-dim", "8", "--disc-dim", "4", "--device", "cpu"]
ALL = "tensorboard,mlflow,wandb"
UNENDING = [*TINY[:3], "100000", *TINY[4:]]  # TINY, but training until it is interrupted
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


# ---- what each run should hold: the JSON record, rebuilt here independently of train/trackers/ ----------------

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
    assert "_hparams_/session_end_info" in content, f"{directory}: the run's session never ended (file incomplete)"
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


def mlflow_runs(uri: str, experiment: str) -> dict[str, object]:
    """{run name: MLflow run} of an experiment, through MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return {run.info.run_name: run for run in client.search_runs([found.experiment_id])}


def check_mlflow(uri: str, experiment: str, run_name: str, epochs: list[dict], final: dict, config: dict) -> None:
    """MLflow keeps doubles: every value exactly as in the JSON. The client reads what the store committed; FINISHED
    says the writer ended the run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = mlflow_runs(uri, experiment)[run_name]
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
    """An offline W&B run as its file holds it: name, group, project, config, history by step, summary, exit code.

    The file must be complete when it is read: W&B's service writes it when it closes the run, which the command has
    waited for before returning (WandbSink.close); a run record then opens it and an exit record ends it. Read
    earlier, it held only its 7-byte header (the flaky `'NoneType' object has no attribute 'display_name'`)."""
    run, history, summary, exit_code = None, {}, {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[items["_step"]] = {k: v for k, v in items.items() if not k.startswith("_")}
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert run is not None and exit_code is not None, \
        f"{run_file} is incomplete ({run_file.stat().st_size} bytes, run record: {run is not None}, exit record: " \
        f"{exit_code is not None}): W&B had not written it when the command returned"
    return {"name": run.display_name, "group": run.run_group, "project": run.project,
            "config": {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"},
            "history": history, "summary": summary, "exit_code": exit_code}


def check_wandb(runs: dict[str, dict], run_name: str, epochs: list[dict], final: dict, config: dict,
                group: str) -> None:
    run = runs[run_name]
    assert (run["project"], run["group"], run["config"], run["exit_code"]) == ("twinturbo", group, config, 0)
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
                        f"on, metrics.json and results.jsonl keep every result; details in {run_dir / 'tracking.log'}"]
    log = (run_dir / "tracking.log").read_text()
    assert "Traceback" in log and "RuntimeError: the tracking server went away" in log
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
    from twinturbo.train.sweep import local

    monkeypatch.setattr(local.os, "cpu_count", lambda: 2)
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


# ---- failing fast, quietly; how an unfinished run ends -----------------------------------------------------------

def terminal_lines(output: str) -> list[str]:
    """What a terminal would show of a command's output, line by line, without its progress bars."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", output)
    lines = [line.strip() for line in re.split(r"[\r\n]", text)]
    return [line for line in lines if line and not re.match(r"^[\w ]+:\s*\d+%\|", line)]


def wait_for_epochs(uri: str, experiment: str, runs: int, wandb_dir: Path, process: subprocess.Popen) -> None:
    """Until `runs` runs of `experiment` have an epoch in MLflow: their W&B files are made after their MLflow runs
    (--log mlflow,wandb), so MLflow's store is complete before this reads it."""
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if len(list(wandb_dir.glob("offline-run-*"))) >= runs:
            client = MlflowClient(tracking_uri=uri)
            started = mlflow_runs(uri, experiment).values()
            if sum(bool(client.get_metric_history(run.info.run_id, "accuracy/test")) for run in started) >= runs:
                return
        time.sleep(0.2)
    raise AssertionError(f"{runs} runs never logged an epoch to {uri}")


def test_a_wandb_run_file_is_complete_when_the_command_returns(store, tmp_path, offline, monkeypatch):
    """W&B's service writes an offline run's file when it closes the run, which `run.finish()` asks for without
    waiting: on a busy machine tt-sweep returned with a file that held only its header. Here the service closes no run
    until it is told to end, the slowest it can be, and the file must be complete when tt-train returns."""
    from wandb.sdk.lib.service import service_connection

    monkeypatch.setattr(service_connection.ServiceConnection, "inform_finish", lambda self, run_id: None)
    run_dir = tmp_path / "run"
    invoke(train_main, ["--features", str(store), "--quiet", "--out", str(run_dir), "--log", "wandb", *TINY])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    check_wandb(wandb_runs(run_dir / "wandb"), "run", epochs_of_metrics(metrics), metrics, config, group="")


def test_an_unreachable_tracking_server_is_one_line_within_seconds(store, tmp_path, offline):
    """--log mlflow with MLFLOW_TRACKING_URI at a loopback port that nothing listens on (opened here, then closed):
    tt-train and tt-sweep each stop before training with one line naming the option, the URI and what was expected,
    within 10 s (with MLflow's own retries: 253 s)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    script = f"""
import time
from twinturbo.train.cli import sweep_main, train_main
for name, command, extra in (("tt-train", train_main, []), ("tt-sweep", sweep_main, ["--setups", "1", "--seeds", "1"])):
    start = time.monotonic()
    try:
        command.main(["--features", {str(store)!r}, "--out", {str(tmp_path)!r} + "/" + name, "--log", "mlflow",
                      *extra, *{TINY!r}])
    except SystemExit as exit_:
        print(f"{{name}} exit {{exit_.code}} after {{time.monotonic() - start:.1f}} s", flush=True)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=150,
                            env=dict(os.environ, MLFLOW_TRACKING_URI=uri))
    said = f"error: --log mlflow: cannot reach the tracking server at {uri} (connection refused; expected an MLflow " \
           "tracking server listening there, or MLFLOW_TRACKING_URI unset for a local SQLite store)"
    assert terminal_lines(result.stderr) == [said, said], result.stderr[-3000:]
    ends = [line.split() for line in result.stdout.splitlines() if " exit " in line]
    assert [(name, code) for name, _, code, *_ in ends] == [("tt-train", "2"), ("tt-sweep", "2")], result.stdout
    assert all(float(seconds) < 10 for *_, seconds, _ in ends), result.stdout
    assert not list(tmp_path.glob("tt-*/*.jsonl")) and not list(tmp_path.glob("tt-*/metrics.json"))


def test_a_tracker_that_breaks_mid_sweep_costs_no_run_and_one_line(store, tmp_path, offline):
    """The sweep's MLflow store (SQLite) emptied after its first run ended: every later MLflow call fails, and MLflow
    logs an SQLAlchemy traceback for each (74 lines on the terminal for 3 runs before). Every run trains; the terminal
    gets one short warning line about it, without SQL or traceback, and the detail is in SWEEP_DIR/tracking.log."""
    sweep_dir = tmp_path / "sweep"
    script = f"""
from pathlib import Path
from twinturbo.train import trackers
from twinturbo.train.cli import sweep_main

end_run = trackers.MlflowSink.end_run

def end_run_then_damage(self, run_id, final):
    end_run(self, run_id, final)
    Path({str(sweep_dir / "mlflow.db")!r}).write_bytes(b"")

trackers.MlflowSink.end_run = end_run_then_damage
sweep_main.main(["--features", {str(store)!r}, "--out", {str(sweep_dir)!r}, "--setups", "2", "--critic-grid",
                 "0.1,1,10", "--seeds", "2", "--fuse", "1", "--workers", "1", "--log", "mlflow", *{TINY!r}])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_rows(sweep_dir / "results.jsonl")) == 3
    about_it = [line for line in terminal_lines(result.stdout + result.stderr) if not line.startswith("tt-sweep: ")]
    log = sweep_dir / "tracking.log"
    assert len(about_it) == 1, about_it[:20]
    assert about_it[0].startswith("warning: --log mlflow stopped (MlflowException: (sqlite3.OperationalError) ")
    assert about_it[0].endswith(f"training goes on, metrics.json and results.jsonl keep every result; details in {log}")
    assert len(about_it[0]) < 250 + len(str(log)) and "SQL:" not in about_it[0]
    detail = log.read_text()
    assert "Traceback" in detail and "no such table" in detail and "[SQL: " in detail


def test_ctrl_c_marks_the_run_killed_in_every_tracker(store, tmp_path, offline):
    """tt-train interrupted by Ctrl-C once its first epoch is in MLflow: the MLflow run is KILLED, the W&B run file is
    complete with exit code 255 (W&B's own for Ctrl-C), the TensorBoard session ended as a failure."""
    from tensorboard.plugins.hparams import api_pb2

    run_dir = tmp_path / "run"
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    process = subprocess.Popen([str(BIN / "tt-train"), "--features", str(store), "--quiet", "--out", str(run_dir),
                                "--log", ALL, *UNENDING], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    try:
        wait_for_epochs(uri, "twinturbo", 1, run_dir / "wandb", process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err[-3000:]
    assert mlflow_runs(uri, "twinturbo")["run"].info.status == "KILLED"
    assert wandb_runs(run_dir / "wandb")["run"]["exit_code"] == 255
    assert tensorboard_run(run_dir / "tensorboard")["status"] == api_pb2.STATUS_FAILURE


def test_ctrl_c_of_a_two_worker_sweep_marks_every_workers_runs_killed(store, tmp_path, offline):
    """Ctrl-C at a terminal signals the whole process group; the workers ignore it and are stopped by their parent
    (SIGTERM), and each ends its run KILLED in MLflow and with exit code 255 in W&B before it exits."""
    sweep_dir = tmp_path / "sweep"
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    process = subprocess.Popen([str(BIN / "tt-sweep"), "--features", str(store), "--out", str(sweep_dir), "--setups",
                                "2", "--critic-grid", "0.1,1", "--seeds", "2", "--fuse", "1", "--workers", "2",
                                "--log", "mlflow,wandb", *UNENDING], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True,
                               preexec_fn=default_sigint)
    try:
        wait_for_epochs(uri, "sweep", 2, sweep_dir / "wandb", process)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == ("error: interrupted; rerun the same command: finished runs are kept, the "
                                            "others are trained") and "Traceback" not in err, err[-3000:]
    runs = mlflow_runs(uri, "sweep")
    assert len(runs) == 2 and {run.info.status for run in runs.values()} == {"KILLED"}
    w_and_b = wandb_runs(sweep_dir / "wandb")
    assert sorted(w_and_b) == sorted(runs) and {run["exit_code"] for run in w_and_b.values()} == {255}


def stopped_worker(store, sweep_dir: Path, patch: str) -> subprocess.Popen:
    """A tt-sweep worker (train/sweep/local.py, `_worker_run_groups`) training one endless setup-1 run, logged to
    MLflow and W&B, with `patch` run before it starts."""
    training = {"epochs": 100000, "batch_size": 48, "lr": 3e-3, "warmup_steps": 1, "proj_dim": 8, "pred_dim": 8,
                "disc_dim": 4, "precision": "fp32"}
    script = f"""
import os, signal
from twinturbo.train import trackers
from twinturbo.train.sweep import local, runner
from twinturbo.train.sweep.grid import SweepGrid

tracking = trackers.Tracking.for_sweep(("mlflow", "wandb"), {str(sweep_dir)!r})
trackers.prepare_trackers(tracking)
{patch}
runs = SweepGrid(setups=(1,), labels=(8,), seeds=(2,), training={training!r}).expand()
local._worker_run_groups(runner.SweepWork({str(store)!r}, {str(sweep_dir)!r}, "cpu", tracking=tracking), [runs])
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def check_stopped_worker(process: subprocess.Popen, sweep_dir: Path, terminate: bool) -> object:
    """`process` (stopped_worker) exits 130 (terminated by the test once it has logged an epoch, with `terminate`),
    its run KILLED in MLflow and ended with exit code 255 in W&B. Returns the MLflow run."""
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    try:
        if terminate:
            wait_for_epochs(uri, "sweep", 1, sweep_dir / "wandb", process)
            process.terminate()
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-3000:]
    (run,) = mlflow_runs(uri, "sweep").values()
    log = sweep_dir / "tracking.log"
    assert run.info.status == "KILLED", log.read_text()[-3000:] if log.exists() else "no tracking.log"
    assert wandb_runs(sweep_dir / "wandb")[run.info.run_name]["exit_code"] == 255
    return run


def test_a_stopped_worker_ends_its_runs_even_when_terminated_again(store, tmp_path, offline):
    """A stopped worker ends its run KILLED in MLflow and with exit code 255 in W&B, then exits 130, even when a
    second SIGTERM comes while it does so: the process pool terminates every worker again as soon as one has exited.
    The second one is sent here from inside MLflow's close, the moment it cut the cleanup short (that run was left
    RUNNING)."""
    patch = """close = trackers.MlflowSink.close

def close_and_be_terminated_again(self, status):
    os.kill(os.getpid(), signal.SIGTERM)
    close(self, status)

trackers.MlflowSink.close = close_and_be_terminated_again"""
    check_stopped_worker(stopped_worker(store, tmp_path / "sweep", patch), tmp_path / "sweep", terminate=True)


def test_a_stop_inside_an_mlflow_write_waits_for_the_write(store, tmp_path, offline):
    """The stop arrives inside MLflow's SQLite transaction (here: from inside its metric write, as it did under load
    in a two-worker Ctrl-C, where both workers' runs stayed RUNNING and tracking.log said 'database is locked'): the
    write completes first (common/interrupts.py, `interrupts_deferred`): the first epoch's metrics are in MLflow, and
    the worker then ends its run KILLED."""
    patch = """from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
update = SqlAlchemyStore._update_latest_metrics_if_necessary
sent = []

def update_and_be_terminated(self, logged_metrics, *args, **kwargs):
    written = update(self, logged_metrics, *args, **kwargs)  # inside the transaction, its rows written
    if logged_metrics and not sent:  # the first epoch's metrics (start_run calls it with none)
        sent.append(os.kill(os.getpid(), signal.SIGTERM))
    return written

SqlAlchemyStore._update_latest_metrics_if_necessary = update_and_be_terminated"""
    run = check_stopped_worker(stopped_worker(store, tmp_path / "sweep", patch), tmp_path / "sweep", terminate=False)
    assert run.data.metrics, "the first epoch's metrics were not written"


def test_a_run_is_ended_although_the_mlflow_store_is_locked_for_a_moment(tmp_path, offline, monkeypatch):
    """tt-sweep's workers share one SQLite file and end their runs at the same moment after Ctrl-C; SQLite answers
    'database is locked' at once (no wait) when two connections' lock upgrades would deadlock, and that run stayed
    RUNNING (1 of 10 test_trackers runs under load, tracking.log: 'UPDATE runs SET status=?' ... 'database is
    locked'). Here the store answers so twice: the sink tries again and the run ends KILLED; another MLflow error is
    not retried."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from twinturbo.train.trackers import MlflowSink, Tracking

    sink = MlflowSink(Tracking.for_run(("mlflow",), tmp_path / "run"))
    sink.start_run("run", {"seed": 1})
    mlflow_id, calls = sink.runs["run"], []
    set_terminated = sink.client.set_terminated

    def locked_twice(*args, **kwargs):
        calls.append(args)
        if len(calls) <= 2:
            raise MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: UPDATE runs SET status=?]")
        return set_terminated(*args, **kwargs)

    monkeypatch.setattr(sink.client, "set_terminated", locked_twice)
    sink.close("KILLED")
    assert len(calls) == 3
    assert MlflowClient(tracking_uri=sink.tracking.mlflow_uri()).get_run(mlflow_id).info.status == "KILLED"
    sink.start_run("other", {"seed": 2})

    def broken(*args, **kwargs):
        calls.append(args)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: no such run")

    monkeypatch.setattr(sink.client, "set_terminated", broken)
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        sink.close("KILLED")
    assert len(calls) == 4


def test_a_stop_that_lands_in_a_weakref_callback_still_stops_the_worker(store, tmp_path):
    """The worker's SIGTERM handler raises KeyboardInterrupt wherever the interpreter is; inside a weakref callback
    Python drops it ('Exception ignored ... KeyboardInterrupt' on stderr) and the worker trained on (1 of 10
    test_trackers runs). Here the SIGTERM is sent from inside such a callback: the worker still exits 130 at once,
    with nothing on stderr."""
    script = f"""
import os, signal, time, weakref
from twinturbo.train.sweep import local, runner
from twinturbo.train.sweep.grid import SweepGrid

class Thing:
    pass

def train_runs(*args, **kwargs):
    thing = Thing()
    keep = weakref.ref(thing, lambda ref: os.kill(os.getpid(), signal.SIGTERM))
    del thing  # the callback runs here, and the handler inside it
    time.sleep(30)
    raise SystemExit("the stop was lost")

runner.train_runs = train_runs
runs = SweepGrid(setups=(1,), labels=(8,), seeds=(2,), training={{"epochs": 1, "proj_dim": 8, "pred_dim": 8,
                                                                  "disc_dim": 4}}).expand()
local._worker_run_groups(runner.SweepWork({str(store)!r}, {str(tmp_path / "sweep")!r}, "cpu"), [runs])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr[-3000:]  # a lost stop sleeps 30 s, then exits 1 saying so
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_an_error_marks_the_run_failed_in_every_tracker(store, tmp_path, offline, monkeypatch):
    """A run ended by an error (here its RUN_DIR cannot be written) is FAILED in MLflow, exit code 1 in W&B (its file
    complete when the command returns) and a failed session in TensorBoard."""
    from tensorboard.plugins.hparams import api_pb2

    from twinturbo.train.run import rundir

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "save_run", disk_full)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(train_main, ["--features", str(store), "--quiet", "--out", str(run_dir), "--log", ALL,
                                             *TINY])
    assert isinstance(result.exception, OSError), result.output
    assert mlflow_runs(f"sqlite:///{run_dir / 'mlflow.db'}", "twinturbo")["run"].info.status == "FAILED"
    assert wandb_runs(run_dir / "wandb")["run"]["exit_code"] == 1
    assert tensorboard_run(run_dir / "tensorboard")["status"] == api_pb2.STATUS_FAILURE


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
