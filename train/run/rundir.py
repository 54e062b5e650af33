"""A run's directory, RUN_DIR: config.json, metrics.json and head.pt, written by tt-train (and by tt-sweep with
--save-heads) and read by tt-predict.

head.pt holds the state_dict, the config and the widths (`dims`), enough to rebuild the head without the store.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from twinturbo.common.atomic import atomic_path, write_text_atomic
from twinturbo.common.device import resolve_precision
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.liveness import recorded_warnings
from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import TokenShape, build_head, missing_plugins, run_plugins
from twinturbo.train.run.data import check_views, num_classes_of
from twinturbo.train.run.memory import load_splits
from twinturbo.train.run.loop import TrainResult, train
from twinturbo.train.terms import views_needed
from twinturbo.train.trackers import Trackers, Tracking, open_trackers

HEAD_FILE, CONFIG_FILE, METRICS_FILE = "head.pt", "config.json", "metrics.json"
PLUGINS_KEY = "plugins"  # beside a run's config: {term: plugin or entry point} for the terms not of the package


@dataclass
class RunDir:
    """A trained run as tt-predict needs it."""

    path: Path
    head: nn.Module
    config: TrainConfig
    metrics: dict
    dims: dict


def save_run(result: TrainResult, config: TrainConfig, out_dir: Path, store_identity: dict, dims: dict) -> None:
    """RUN_DIR/config.json, metrics.json and head.pt (state_dict + config + widths, enough to rebuild the head)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plugins = run_plugins(config)  # which plugin its terms and head came from (none for the package's own)
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps({**config.to_dict(), **({PLUGINS_KEY: plugins} if plugins
                                                                                 else {})}, indent=2) + "\n")
    metrics = dict(result.metrics, store=store_identity)
    write_text_atomic(out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    state = {k: v.detach().cpu() for k, v in result.head.state_dict().items()}
    with atomic_path(out_dir / HEAD_FILE) as tmp:
        torch.save({"state_dict": state, "config": config.to_dict(), "dims": dims, PLUGINS_KEY: plugins}, tmp)


def config_from_dict(values: dict, plugins: dict | None = None, where: str = "the run") -> TrainConfig:
    """A TrainConfig from a saved config; runs saved before --precision computed in fp32. A config whose terms are
    not registered here (trained with a plugin that is not loaded) is a one-line error naming the plugin."""
    missing_plugins(values, plugins, where)
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{"precision": "fp32", **{k: v for k, v in values.items() if k in known}})


def load_run(path: str | Path) -> RunDir:
    """Rebuild a trained run from RUN_DIR; a directory without head.pt is a one-line error."""
    path = Path(path)
    head_file = path / HEAD_FILE
    if not head_file.is_file():
        hint = " (a sweep keeps its runs' heads only with tt-sweep --save-heads)" if (path / "results.jsonl").exists() \
            or path.parent.name == "runs" else ""
        raise TwinTurboError(f"{path}: no {HEAD_FILE}, not a trained run directory{hint}")
    try:
        checkpoint = torch.load(head_file, map_location="cpu", weights_only=True)
        dims, recorded = checkpoint["dims"], checkpoint["config"]
    except Exception as err:  # a damaged or foreign file: which file, and what was wrong
        raise TwinTurboError(f"{head_file}: not a twinturbo head ({type(err).__name__}: {err})".splitlines()[0]) \
            from None
    config = config_from_dict(recorded, checkpoint.get(PLUGINS_KEY), str(path))
    try:
        head = build_head(TokenShape.of(dims), config)
        head.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # weights that are not the recorded head's
        raise TwinTurboError(f"{head_file}: not a {config.head} head of its recorded widths ({type(err).__name__}: "
                             f"{err})".splitlines()[0]) from None
    metrics_file = path / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return RunDir(path, head.eval(), config, metrics, dims)


def train_from_store(features: str | Path, config: TrainConfig, device: torch.device, out_dir: Path | None = None,
                     progress: bool = True, memory_limit: int | None = None,
                     log: tuple[str, ...] = ()) -> tuple[TrainResult, Path]:
    """What `tt-train` does: open and check the store, hold both splits (in memory, or the train split streamed
    when they exceed `memory_limit` bytes: memory.load_splits), train, write RUN_DIR (its config.json records the
    precision the run computed in, `auto` resolved). `log` names the trackers that follow the run as it trains
    (train/trackers/; their local files go under RUN_DIR, the run is named after it)."""
    config = replace(config.validate(), precision=resolve_precision(config.precision, device))
    trackers = Trackers([])
    try:
        with open_store(features) as store:
            store.require_complete()
            for line in recorded_warnings(store.attrs):
                print(line, file=sys.stderr)
            for split in ("train", "test"):
                if split not in store.splits:
                    raise TwinTurboError(f"{store.path} has no '{split}' split (it has: {', '.join(store.splits)})")
            check_views(store, [config])
            train_split, test_split = load_splits(store, device, memory_limit, progress,
                                                  views=bool(views_needed(config)))
            num_classes = num_classes_of(store, train_split.labels)
            identity = store.identity()
            dataset = store.attrs.get("dataset") or store.path.name
            if out_dir is None:
                out_dir = Path("runs") / str(dataset).replace(":", "_").replace("/", "_") / config.run_name()
            trackers = open_trackers(Tracking.for_run(log, out_dir))
            trackers.start_run(out_dir.name, config.to_dict())
            result = train(config, train_split, test_split, num_classes, device, progress,
                           on_epoch=trackers.epoch_logger([out_dir.name]))
        save_run(result, config, out_dir, identity, run_dims(train_split, num_classes, config))
        trackers.end_run(out_dir.name, result.metrics)
    except BaseException as err:
        trackers.close(err)  # the run ends KILLED after Ctrl-C, else FAILED
        raise
    trackers.close()
    return result, out_dir


def run_dims(train_split, num_classes: int, config: TrainConfig) -> dict:
    """The widths head.pt records: the store's token shapes, the class count and the head's widths."""
    return {"cls_dim": train_split.cls_dim, "patch_dim": train_split.patch_dim,
            "num_patches": train_split.num_patches, "num_classes": num_classes,
            "proj_dim": config.proj_dim, "pred_dim": config.pred_dim, "disc_dim": config.disc_dim}
