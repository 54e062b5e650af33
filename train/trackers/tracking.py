"""Where a command's runs are tracked (--log): the trackers' names, the directory of their local files and the
group, as plain data, so that tt-sweep's worker processes and submitit jobs each open their own sinks from it
(train/trackers/__init__.py: open_trackers)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROJECT = "twinturbo"  # MLflow experiment and W&B project of tt-train runs (W&B: of sweeps too)
LOG_FILE = "tracking.log"  # the backends' own logging, in RUN_DIR or SWEEP_DIR (TrackerLogs)


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

    def wandb_project(self) -> str:
        return os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT

    def log_file(self) -> Path:
        """Where the backends' own logging goes (TrackerLogs)."""
        return Path(self.directory) / LOG_FILE
