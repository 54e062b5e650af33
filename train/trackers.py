"""Trackers: TensorBoard, MLflow and W&B as sinks of the per-epoch record that metrics.json holds (`--log` of tt-train
and tt-sweep). metrics.json and results.jsonl stay the record: a sink is handed a copy of each epoch's record after
the epoch is evaluated, never the model, so logging cannot change a weight or a result.

What a run sends, under the same names to every backend:

    per epoch (step = epoch, from 1)   accuracy/test, accuracy/val (with --val-labels), loss/<name> for each of the
                                       epoch's mean_losses, diagnostics/<name> for each of its diagnostics
    at its start                       its TrainConfig as hyperparameters (TensorBoard's HParams dashboard, MLflow
                                       params, W&B config)
    at its end                         test_accuracy, val_accuracy, steps, wall_time_s (and nonfinite_step when its
                                       loss stopped being finite), as in metrics.json

Where (ours; `Tracking.for_run` / `Tracking.for_sweep` hold the rule, and `--help` and the README say it):

    tensorboard   tt-train: RUN_DIR/tensorboard/; tt-sweep: SWEEP_DIR/tensorboard/<run id>/, one directory (and one
                  event file) per run, so concurrent workers never share a file
    mlflow        the tracking URI in $MLFLOW_TRACKING_URI, else sqlite RUN_DIR/mlflow.db (tt-sweep: SWEEP_DIR/
                  mlflow.db, its tables and experiment created before any worker starts; the workers of one machine
                  then write it side by side, SQLite serialising them, but jobs on several SLURM nodes should share a
                  tracking server rather than a SQLite file on a network filesystem); experiment `twinturbo`
                  (tt-sweep: the sweep directory's name); MLflow run name = the run's name or id
    wandb         project $WANDB_PROJECT or `twinturbo`, group = the sweep directory's name (tt-sweep), run name = the
                  run's name or id; files in $WANDB_DIR or RUN_DIR / SWEEP_DIR; mode $WANDB_MODE, else online only
                  where an API key is found (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, a netrc entry), offline
                  otherwise: it never prompts

A backend's package is imported only when --log names it (`pip install twinturbo[<name>]`; `parse_log` checks it is
installed before anything is trained or written; one that cannot be opened is a one-line error before training). A
backend that fails once open is dropped with one `warning:` line and the runs go on: it only mirrors the JSON.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import netrc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from twinturbo.common.errors import TwinTurboError, one_line

DEFAULT_PROJECT = "twinturbo"  # MLflow experiment and W&B project of tt-train runs (W&B: of sweeps too)


# ---- what a run sends ---------------------------------------------------------------------------------------------

def epoch_values(record: dict) -> dict[str, float]:
    """The scalars of one epoch record of metrics.json (train/loop.py): accuracies, mean losses, diagnostics."""
    values = {"accuracy/test": float(record["test_accuracy"])}
    if "val_accuracy" in record:
        values["accuracy/val"] = float(record["val_accuracy"])
    values.update({f"loss/{name}": float(v) for name, v in record["mean_losses"].items()})
    values.update({f"diagnostics/{name}": float(v) for name, v in record.get("diagnostics", {}).items()})
    return values


FINAL_NAMES = ("test_accuracy", "val_accuracy", "steps", "wall_time_s", "nonfinite_step")


def final_values(metrics: dict) -> dict[str, float]:
    """A finished run's final figures, named as in its metrics.json (those it has)."""
    return {name: float(metrics[name]) for name in FINAL_NAMES if metrics.get(name) is not None}


# ---- the backends -------------------------------------------------------------------------------------------------

class TensorBoardSink:
    """Event files written with tensorboard's own writer (no TensorFlow, no torch.utils.tensorboard): scalars as
    float32 (TensorBoard's precision), the config as the HParams plugin's session start (group: the sweep's name)
    with an experiment listing test_accuracy and val_accuracy as its metrics, and its session end at the run's end.

    A run's directory holds only its latest attempt: event files left there by an attempt that died (a run retrained
    after a kill, or tt-train rerun into the same RUN_DIR) are removed when the run starts again."""

    name = package = "tensorboard"

    def __init__(self, tracking: Tracking):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.tracking = tracking
        self.writer_class = EventFileWriter
        self.writers: dict[str, object] = {}
        self.last_step: dict[str, int] = {}

    def start_run(self, run_id: str, config: dict) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        directory = self.tracking.tensorboard_dir(run_id)
        for stale in directory.glob("events.out.tfevents.*"):
            stale.unlink()
        writer = self.writers[run_id] = self.writer_class(str(directory))
        self.last_step[run_id] = 0
        experiment = api_pb2.Experiment(
            hparam_infos=[api_pb2.HParamInfo(name=k, type=_hparam_type(v)) for k, v in config.items()],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in ("test_accuracy", "val_accuracy")])
        start = plugin_data_pb2.SessionStartInfo(group_name=self.tracking.group or "", start_time_secs=time.time())
        for key, value in config.items():
            _set_hparam(start.hparams[key], value)
        self._hparams(writer, "experiment", experiment=experiment)
        self._hparams(writer, "session_start_info", session_start_info=start)
        writer.flush()

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float]) -> None:
        self.last_step[run_id] = epoch
        self._scalars(self.writers[run_id], epoch, values)
        self.writers[run_id].flush()  # TensorBoard shows the epoch as it ends

    def end_run(self, run_id: str, final: dict[str, float]) -> None:
        self._end(run_id, final, success=True)

    def close(self) -> None:
        for run_id in list(self.writers):
            self._end(run_id, {}, success=False)

    def _end(self, run_id: str, final: dict[str, float], success: bool) -> None:
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        writer, step = self.writers.pop(run_id), self.last_step.pop(run_id)
        if final:
            self._scalars(writer, step, final)
        status = api_pb2.STATUS_SUCCESS if success else api_pb2.STATUS_FAILURE
        self._hparams(writer, "session_end_info",
                      session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time()))
        writer.close()

    @staticmethod
    def _scalars(writer, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    @staticmethod
    def _hparams(writer, kind: str, **content) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import metadata, plugin_data_pb2

        data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content)
        tag = {"experiment": metadata.EXPERIMENT_TAG, "session_start_info": metadata.SESSION_START_INFO_TAG,
               "session_end_info": metadata.SESSION_END_INFO_TAG}[kind]
        value = summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))
        writer.add_event(event_pb2.Event(wall_time=time.time(), summary=summary_pb2.Summary(value=[value])))


def _hparam_type(value) -> int:
    from tensorboard.plugins.hparams import api_pb2

    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, (int, float)) else api_pb2.DATA_TYPE_STRING


def _set_hparam(slot, value) -> None:
    """One HParams value (a protobuf Value): bools and numbers as such, anything else (None included) as text."""
    if isinstance(value, bool):
        slot.bool_value = value
    elif isinstance(value, (int, float)):
        slot.number_value = value
    else:
        slot.string_value = json.dumps(value) if value is None else str(value)


class MlflowSink:
    """MLflow through its client (no global active run, so K fused runs are logged side by side): per run the config
    as params, each epoch's scalars as one batch at step = epoch, the final figures at step = the last epoch, status
    FINISHED (FAILED when the process ends it unfinished). Run name = the run's name or id, also in the tag
    `twinturbo.run_id`.

    Ours: usage telemetry is off (MLFLOW_DISABLE_TELEMETRY defaults to true here: --log stays local unless the
    tracking URI says otherwise), and MLflow's INFO lines (creating the tables of a new store) are silenced, as they
    would cut through the progress bars."""

    name = package = "mlflow"

    def __init__(self, tracking: Tracking):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        for logger in ("mlflow", "alembic"):  # after the import, which sets mlflow's own level
            logging.getLogger(logger).setLevel(logging.WARNING)

        self.tracking = tracking
        self.client = MlflowClient(tracking_uri=tracking.mlflow_uri())
        self.experiment_id = self._experiment()
        self.runs: dict[str, str] = {}  # our run id -> MLflow's
        self.last_step: dict[str, int] = {}

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.tracking.experiment()
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # created meanwhile by another process of the sweep
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start_run(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_id, tags={"twinturbo.run_id": run_id})
        self.runs[run_id], self.last_step[run_id] = run.info.run_id, 0
        params = [Param(key, json.dumps(v) if v is None else str(v)) for key, v in config.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[start:start + 100])

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float]) -> None:
        self.last_step[run_id] = epoch
        self._metrics(run_id, epoch, values)

    def end_run(self, run_id: str, final: dict[str, float]) -> None:
        self._metrics(run_id, self.last_step.pop(run_id), final)
        self.client.set_terminated(self.runs.pop(run_id), status="FINISHED")

    def close(self) -> None:
        for run_id in list(self.runs):
            self.client.set_terminated(self.runs.pop(run_id), status="FAILED")

    def _metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[run_id], metrics=[Metric(k, v, now, step) for k, v in values.items()])


class WandbSink:
    """W&B runs created side by side in one process (`reinit="create_new"`, so K fused runs each get their own):
    config = the run's config, one `log` per epoch at step = epoch, the final figures in the run's summary, exit code
    1 when the process ends it unfinished. W&B's console capture is off (it would wrap the progress bars of every
    worker) and its banner lines are silenced: the command says once where the runs went (`Tracking.describe`)."""

    name = package = "wandb"

    def __init__(self, tracking: Tracking):
        import wandb

        self.wandb = wandb
        self.tracking = tracking
        self.runs: dict[str, object] = {}

    def start_run(self, run_id: str, config: dict) -> None:
        self.runs[run_id] = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, group=self.tracking.group, name=run_id,
            config=config, dir=self.tracking.wandb_root(), mode=wandb_mode(), reinit="create_new",
            settings=self.wandb.Settings(console="off", silent=True))

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float]) -> None:
        self.runs[run_id].log(values, step=epoch)

    def end_run(self, run_id: str, final: dict[str, float]) -> None:
        run = self.runs.pop(run_id)
        run.summary.update(final)
        run.finish(exit_code=0)

    def close(self) -> None:
        for run_id in list(self.runs):
            self.runs.pop(run_id).finish(exit_code=1)


def wandb_mode() -> str:
    """The mode W&B runs in: $WANDB_MODE where set, else `online` when wandb would find an API key (WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, or a netrc entry for the W&B host), else `offline`. Ours: without a key wandb.init
    would prompt for one on a terminal, or fail. Passed to wandb.init every time, as is the directory: wandb reads
    its variables once per process."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        found = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        found = None
    return "online" if found else "offline"


TRACKERS: dict[str, type] = {sink.name: sink for sink in (TensorBoardSink, MlflowSink, WandbSink)}


def parse_log(value: str | None) -> tuple[str, ...]:
    """--log: comma-separated names of TRACKERS, in the order given, each once; an unknown name or a backend whose
    package is not installed is a one-line TwinTurboError (checked with find_spec: nothing is imported here)."""
    if value is None:
        return ()
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",")))
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise TwinTurboError(f"--log {value}: unknown tracker {', '.join(repr(n) for n in unknown)}; expected a "
                             f"comma-separated subset of {', '.join(TRACKERS)}")
    for name in names:
        if importlib.util.find_spec(TRACKERS[name].package) is None:
            raise TwinTurboError(f"--log {name} needs the {TRACKERS[name].package} package: "
                                 f"pip install twinturbo[{name}]")
    return names


# ---- where a command's runs go, and the sinks of one process ------------------------------------------------------

@dataclass(frozen=True)
class Tracking:
    """What --log asked for and where it goes: the trackers' names, the directory their local files go under (RUN_DIR
    or SWEEP_DIR) and the group (the sweep's name; None for tt-train). Plain data, so that tt-sweep's worker processes
    and submitit jobs each open their own sinks from it."""

    names: tuple[str, ...]
    directory: str
    group: str | None = None

    @classmethod
    def for_run(cls, names: tuple[str, ...], run_dir: str | os.PathLike) -> Tracking:
        return cls(tuple(names), str(Path(run_dir).absolute()))

    @classmethod
    def for_sweep(cls, names: tuple[str, ...], sweep_dir: str | os.PathLike) -> Tracking:
        directory = Path(sweep_dir).absolute()
        return cls(tuple(names), str(directory), directory.resolve().name)

    def tensorboard_dir(self, run_id: str) -> Path:
        root = Path(self.directory) / "tensorboard"
        return root if self.group is None else root / run_id

    def wandb_root(self) -> str:
        """Where wandb makes its `wandb/` folder of runs."""
        return os.environ.get("WANDB_DIR") or self.directory

    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(self.directory) / 'mlflow.db'}"

    def experiment(self) -> str:
        return self.group or DEFAULT_PROJECT

    def open(self) -> Trackers:
        """This process's sinks (each imports its package here), as one Trackers; a backend that cannot be opened
        (an unreachable tracking URI, a damaged store) is a one-line TwinTurboError naming it."""
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        sinks = []
        for name in self.names:
            try:
                sinks.append(TRACKERS[name](self))
            except Exception as err:
                Trackers(sinks).close()
                raise TwinTurboError(f"--log {name}: cannot open it ({type(err).__name__}: {one_line(err)})") from err
        return Trackers(sinks)

    def prepare(self) -> None:
        """Before anything trains: open every sink once (the MLflow store's tables and the experiment are created
        here, so that concurrent workers only add runs to them), or fail as one line."""
        self.open().close()

    def describe(self) -> str:
        """Where the runs went, in one line."""
        where = {"tensorboard": f"TensorBoard {self.tensorboard_dir('<run id>')}",
                 "mlflow": f"MLflow {self.mlflow_uri()} (experiment {self.experiment()})",
                 "wandb": f"W&B {wandb_mode()} in {Path(self.wandb_root()) / 'wandb'}"
                          + (f" (group {self.group})" if self.group else "")}
        return "tracked: " + "; ".join(where[name] for name in self.names)


class Trackers:
    """The sinks of one process, fanned out. A sink that raises is dropped with one `warning:` line on stderr and
    the runs go on (ours: the JSON is the record, and a tracker must never cost a run); `close` ends every run still
    open as failed."""

    def __init__(self, sinks: list):
        self.sinks = list(sinks)

    def start_run(self, run_id: str, config: dict) -> None:
        self._each("start_run", run_id, config)

    def log_epoch(self, run_id: str, record: dict) -> None:
        self._each("log_epoch", run_id, int(record["epoch"]), epoch_values(record))

    def end_run(self, run_id: str, metrics: dict) -> None:
        self._each("end_run", run_id, final_values(metrics))

    def epoch_logger(self, run_ids: list[str]) -> Callable[[int, dict], None] | None:
        """The `on_epoch` of train_runs for runs `run_ids` (in the order of its configs); None without sinks."""
        if not self.sinks:
            return None
        return lambda run, record: self.log_epoch(run_ids[run], record)

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as err:  # noqa: BLE001  (any backend's error: it is reported, and only ends its logging)
                self.sinks.remove(sink)
                try:
                    sink.close()  # its open runs end as failed, where the backend still answers
                except Exception:  # noqa: BLE001
                    pass
                print(f"warning: --log {sink.name} stopped ({type(err).__name__}: {one_line(err)}); training goes "
                      "on, metrics.json and results.jsonl keep every result", file=sys.stderr)


def open_trackers(tracking: Tracking | None) -> Trackers:
    """The sinks `tracking` names, opened in this process; none (and no import) without --log."""
    return tracking.open() if tracking is not None and tracking.names else Trackers([])
