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

Where (ours; `Tracking.for_run` / `Tracking.for_sweep` in tracking.py hold the rule, and `--help` and the README say it):

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
installed before anything is trained or written; one that cannot be opened, an unreachable MLflow tracking server
included, is a one-line error before training: mlflow_sink.check_reachable). A backend that fails once open is dropped
with one short `warning:` line and the runs go on: it only mirrors the JSON. The backends' own logging goes to
tracking.log in RUN_DIR / SWEEP_DIR, never to the terminal (TrackerLogs). A run the process ends unfinished is marked
KILLED after Ctrl-C and FAILED after an error, in every backend that has such a state (`Trackers.close`).
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from twinturbo.common.errors import TwinTurboError, first_line
from twinturbo.common.interrupts import interrupts_deferred
from twinturbo.train.trackers.mlflow_sink import MlflowSink
from twinturbo.train.trackers.tensorboard_sink import TensorBoardSink
from twinturbo.train.trackers.tracking import Tracking
from twinturbo.train.trackers.wandb_sink import WandbSink, wandb_mode

KILLED, FAILED = "KILLED", "FAILED"  # how a run left open ends (MLflow's names): Ctrl-C, or an error
BACKEND_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "urllib3", "wandb", "twinturbo.trackers")
_log = logging.getLogger("twinturbo.trackers")  # a backend's failure in full, for tracking.log


# ---- what a run sends ---------------------------------------------------------------------------------------------

def epoch_values(record: dict) -> dict[str, float]:
    """The scalars of one epoch record of metrics.json (train/run/loop.py): accuracies, mean losses, diagnostics."""
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


# ---- the backends (one module each) -------------------------------------------------------------------------------

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


# ---- the sinks of one process -------------------------------------------------------------------------------------

class Trackers:
    """The sinks of one process, fanned out, with the backends' own logging in tracking.log while they are open.

    A sink that raises is dropped with one short `warning:` line on stderr (its error's first line, on a line of its
    own above any progress bar; the traceback goes to tracking.log) and the runs go on (ours: the JSON is the record,
    and a tracker must never cost a run). `close(error)` ends every run still open: KILLED when `error` is a
    KeyboardInterrupt (Ctrl-C, or a tt-sweep worker stopped by its parent: train/sweep/local.py), FAILED otherwise."""

    def __init__(self, sinks: list, logs: TrackerLogs | None = None):
        self.sinks = list(sinks)
        self.logs = logs

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

    def close(self, error: BaseException | None = None) -> None:
        """End the runs still open (KILLED after a KeyboardInterrupt, else FAILED) and give the loggers back."""
        try:
            with interrupts_deferred():  # a second Ctrl-C waits until every sink has ended its runs
                self._each("close", KILLED if isinstance(error, KeyboardInterrupt) else FAILED)
        finally:
            if self.logs is not None:
                self.logs.restore()

    def _each(self, method: str, *args) -> None:
        for sink in list(self.sinks):
            try:
                with interrupts_deferred():  # a stop is raised after the backend's write, never inside it
                    getattr(sink, method)(*args)
            except Exception as err:  # noqa: BLE001  (any backend's error: it is reported, and only ends its logging)
                self.sinks.remove(sink)
                _log.warning("--log %s stopped (in %s)", sink.name, method, exc_info=err)
                if method != "close":
                    try:
                        sink.close(FAILED)  # its open runs end as failed, where the backend still answers
                    except Exception:  # noqa: BLE001
                        _log.warning("--log %s: its open runs could not be ended", sink.name, exc_info=True)
                details = f"; details in {self.logs.path}" if self.logs is not None else ""
                tqdm.write(f"warning: --log {sink.name} stopped ({type(err).__name__}: {first_line(err)}); training "
                           f"goes on, metrics.json and results.jsonl keep every result{details}", file=sys.stderr)


class TrackerLogs:
    """The backends' own loggers (BACKEND_LOGGERS), and ours for a failure's traceback, written to tracking.log in the
    run or sweep directory (WARNING and above) instead of the terminal, from `route` until `restore`. Ours: MLflow
    logs an SQLAlchemy traceback for every failed call on a damaged store, which buried the progress bars and our one
    warning line; urllib3 logs each retry of an unreachable server. The file is made only when something is logged;
    the workers of a sweep append to the same one."""

    def __init__(self, path: Path):
        self.path = path
        self.handler = logging.FileHandler(path, delay=True)
        self.handler.setLevel(logging.WARNING)
        self.handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(name)s %(levelname)s: %(message)s"))
        self.saved: dict[str, tuple[list, bool]] = {}

    def route(self) -> None:
        """Each of BACKEND_LOGGERS, and any logger below one that has handlers of its own (MLflow gives
        sqlalchemy.engine a terminal handler), writes to the file only."""
        existing = [name for name, logger in list(logging.root.manager.loggerDict.items())
                    if isinstance(logger, logging.Logger) and logger.handlers]
        for name in {*BACKEND_LOGGERS, *(n for n in existing if n.startswith(tuple(f"{b}." for b in BACKEND_LOGGERS)))}:
            logger = logging.getLogger(name)
            self.saved.setdefault(name, (list(logger.handlers), logger.propagate))
            logger.handlers = [self.handler]
            logger.propagate = False

    def restore(self) -> None:
        for name, (handlers, propagate) in self.saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        self.saved.clear()
        self.handler.close()


def open_trackers(tracking: Tracking | None) -> Trackers:
    """The sinks `tracking` names, opened in this process; none (and no import) without --log."""
    return _open_sinks(tracking) if tracking is not None and tracking.names else Trackers([])


def _open_sinks(tracking: Tracking) -> Trackers:
    """This process's sinks (each imports its package here), as one Trackers, with the backends' logging sent to
    tracking.log; a backend that cannot be opened (an unreachable tracking server, a damaged store) is a one-line
    TwinTurboError naming it, its detail in tracking.log."""
    Path(tracking.directory).mkdir(parents=True, exist_ok=True)
    logs = TrackerLogs(tracking.log_file())
    logs.route()
    sinks = []
    for name in tracking.names:
        try:
            sinks.append(TRACKERS[name](tracking))
        except Exception as err:
            _log.warning("--log %s: cannot open it", name, exc_info=err)
            Trackers(sinks, logs).close()
            if isinstance(err, TwinTurboError):
                raise
            raise TwinTurboError(f"--log {name}: cannot open it ({type(err).__name__}: {first_line(err)}; "
                                 f"details in {logs.path})") from err
        logs.route()  # again: importing a backend may have given its logger a handler of its own
    return Trackers(sinks, logs)


def prepare_trackers(tracking: Tracking) -> None:
    """Before anything trains: open every sink once (the MLflow store's tables and the experiment are created
    here, so that concurrent workers only add runs to them), or fail as one line."""
    _open_sinks(tracking).close()


def describe_tracking(tracking: Tracking) -> str:
    """Where the runs went, in one line."""
    where = {"tensorboard": f"TensorBoard {tracking.tensorboard_dir('<run id>')}",
             "mlflow": f"MLflow {tracking.mlflow_uri()} (experiment {tracking.experiment()})",
             "wandb": f"W&B {wandb_mode()} in {Path(tracking.wandb_root()) / 'wandb'}"
                      + (f" (group {tracking.group})" if tracking.group else "")}
    return "tracked: " + "; ".join(where[name] for name in tracking.names)
