"""W&B's sink of --log (see twinturbo.train.trackers for what a run sends and where)."""
from __future__ import annotations

import netrc
import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    from twinturbo.train.trackers.tracking import Tracking


# W&B's exit code of a run the process ends unfinished: 255 is W&B's own for Ctrl-C (wandb/sdk/lib/exit_hooks.py)
EXIT_CODES = {"KILLED": 255, "FAILED": 1}


class WandbSink:
    """W&B runs created side by side in one process (`reinit="create_new"`, so K fused runs each get their own):
    config = the run's config, one `log` per epoch at step = epoch, the final figures in the run's summary, exit code
    0; a run the process ends unfinished gets EXIT_CODES[status] (W&B shows it failed). W&B's console capture is off
    (it would wrap the progress bars of every worker) and its banner lines are silenced: the command says once where
    the runs went (`Tracking.describe`).

    Ours: `close` ends W&B's service in this process (wandb.teardown, which waits until the service has written and
    closed every run's file), unless a run of the caller's own is open (wandb.run): `run.finish()` returns before the
    service writes an offline run's .wandb file, which it buffers until it closes the run's stream, so without it a
    command could return, or a sweep's worker report its runs done, with that file holding only its header. A later
    run starts a new service (about 0.5 s)."""

    name = package = "wandb"

    def __init__(self, tracking: Tracking):
        import wandb

        self.wandb = wandb
        self.tracking = tracking
        self.runs: dict[str, object] = {}
        self.started = False  # a run was started here, so W&B's service runs in this process

    def start_run(self, run_id: str, config: dict) -> None:
        self.started = True
        self.runs[run_id] = self.wandb.init(
            project=self.tracking.wandb_project(), group=self.tracking.group, name=run_id, config=config,
            dir=self.tracking.wandb_root(), mode=wandb_mode(), reinit="create_new",
            settings=self.wandb.Settings(console="off", silent=True))

    def log_epoch(self, run_id: str, epoch: int, values: dict[str, float]) -> None:
        self.runs[run_id].log(values, step=epoch)

    def end_run(self, run_id: str, final: dict[str, float]) -> None:
        run = self.runs.pop(run_id)
        run.summary.update(final)
        run.finish(exit_code=0)

    def close(self, status: str = "FAILED") -> None:
        try:
            for run_id in list(self.runs):
                self.runs.pop(run_id).finish(exit_code=EXIT_CODES[status])
        finally:
            if self.started and self.wandb.run is None:
                self.started = False
                try:
                    self.wandb.teardown()
                except SystemExit as exit_:  # wandb.teardown exits when its service ended badly
                    raise RuntimeError(f"W&B's service ended with exit code {exit_.code}") from None


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
