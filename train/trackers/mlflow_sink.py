"""MLflow's sink of --log (see twinturbo.train.trackers for what a run sends and where)."""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from twinturbo.common.errors import TwinTurboError

if TYPE_CHECKING:
    from twinturbo.train.trackers.tracking import Tracking

# MLflow's own settings, for our client only where the user has not set them (ours: with MLflow's defaults, 7 retries
# backing off exponentially and 120 s for each answer, a server that is down cost the user four minutes of silence)
CLIENT_SETTINGS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # --log stays local unless the tracking URI says otherwise
    "MLFLOW_CONFIGURE_LOGGING": "false",  # MLflow's logger without its terminal handler: its records go to tracking.log
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # a server that refuses: dropped after 3 tries, within about 4 s
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # a server that accepts and hangs: about 35 s per call at most
}
PROBE_TIMEOUT_S = 5.0
# Ours: how long a write is tried again while the store answers 'database is locked'. tt-sweep's workers share one
# SQLite file and end their runs at the same moment after Ctrl-C; SQLite answers so at once, without the wait MLflow
# sets (busy_timeout), where two writers' lock upgrades would deadlock, and that run stayed RUNNING (1 of 10
# test_trackers runs). Shorter than the 15 s a stopped worker is given (train/sweep/local.py: STOP_GRACE_S).
LOCKED_RETRY_S = 8.0


class MlflowSink:
    """MLflow through its client (no global active run, so K fused runs are logged side by side): per run the config
    as params, each epoch's scalars as one batch at step = epoch, the final figures at step = the last epoch, status
    FINISHED, or KILLED (Ctrl-C) or FAILED (an error) when the process ends it unfinished (`close(status)`). Run
    name = the run's name or id, also in the tag `twinturbo.run_id`.

    Ours, so that a tracker fails fast and quietly: before the client opens an http(s) tracking URI, a TCP connection
    to its host and port must open within PROBE_TIMEOUT_S (skipped where a proxy serves that URI), else the sink is
    not opened and the command stops with one line, before anything trains; and CLIENT_SETTINGS (telemetry off,
    MLflow's logging without its terminal handler, fewer retries and a shorter timeout than MLflow's) are set in this
    process's environment when the sink opens, each only where the user has not set it."""

    name = package = "mlflow"

    def __init__(self, tracking: Tracking):
        for name, value in CLIENT_SETTINGS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        self.tracking = tracking
        check_reachable(tracking.mlflow_uri())
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

        run = self._write(self.client.create_run, self.experiment_id, run_name=run_id,
                          tags={"twinturbo.run_id": run_id})
        self.runs[run_id], self.last_step[run_id] = run.info.run_id, 0
        params = [Param(key, json.dumps(v) if v is None else str(v)) for key, v in config.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._write(self.client.log_batch, run.info.run_id, params=params[start:start + 100])

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float]) -> None:
        self.last_step[run_id] = epoch
        self._metrics(run_id, epoch, values)

    def end_run(self, run_id: str, final: dict[str, float]) -> None:
        self._metrics(run_id, self.last_step.pop(run_id), final)
        self._write(self.client.set_terminated, self.runs.pop(run_id), status="FINISHED")

    def close(self, status: str = "FAILED") -> None:
        for run_id in list(self.runs):
            self._write(self.client.set_terminated, self.runs.pop(run_id), status=status)

    def _metrics(self, run_id: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._write(self.client.log_batch, self.runs[run_id], metrics=[Metric(k, v, now, step)
                                                                        for k, v in values.items()])

    @staticmethod
    def _write(call, *args, **kwargs):
        """`call`, again after a pause while the store reports 'database is locked', for up to LOCKED_RETRY_S."""
        from mlflow.exceptions import MlflowException

        deadline, pause = time.monotonic() + LOCKED_RETRY_S, 0.1
        while True:
            try:
                return call(*args, **kwargs)
            except MlflowException as err:
                if "database is locked" not in str(err) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 1.0)


def check_reachable(uri: str) -> None:
    """An http(s) tracking URI whose host and port take a TCP connection within PROBE_TIMEOUT_S, or a one-line
    TwinTurboError; other URIs (sqlite, file, databricks) and URIs a proxy serves are not probed."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    if urllib.request.getproxies().get(parsed.scheme) and not urllib.request.proxy_bypass(parsed.hostname):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        if isinstance(err, socket.gaierror):
            reason = f"unknown host {parsed.hostname}"
        elif isinstance(err, TimeoutError):
            reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
        else:
            reason = (err.strerror or type(err).__name__).lower()
        raise TwinTurboError(f"--log mlflow: cannot reach the tracking server at {uri} ({reason}; expected an MLflow "
                             f"tracking server listening there, or MLFLOW_TRACKING_URI unset for a local SQLite "
                             f"store)") from None
