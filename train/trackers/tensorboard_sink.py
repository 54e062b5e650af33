"""TensorBoard's sink of --log (see twinturbo.train.trackers for what a run sends and where)."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twinturbo.train.trackers.tracking import Tracking


class TensorBoardSink:
    """Event files written with tensorboard's own writer (no TensorFlow, no torch.utils.tensorboard): scalars as
    float32 (TensorBoard's precision), the config as the HParams plugin's session start (group: the sweep's name)
    with an experiment listing test_accuracy and val_accuracy as its metrics, and its session end at the run's end
    (STATUS_FAILURE for a run the process ends unfinished).

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

    def close(self, status: str = "FAILED") -> None:
        """End the runs left open, killed or failed alike: HParams has no status for a run that was stopped."""
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
