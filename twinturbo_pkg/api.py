"""The Python API: the commands as functions, for notebooks and scripts (`import twinturbo as tt`).

A thin facade over what tt-extract, tt-train, tt-sweep, tt-report and tt-predict call, with the same options (by
their field names: `tt.train(features, critic_weight=0.1, labels=100)`), the same checks, and the same messages:
a mistake raises `TwinTurboError` with the line the command would print, instead of exiting. Nothing heavy is
imported until a function is called, so `tt.use_plugins(...)` can come first.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinturbo.common.callable_module import serve_calls
from twinturbo.common.errors import TwinTurboError


def _config(config_class, options: dict, what: str):
    """A config dataclass from keyword options, an unknown one as the command would name it."""
    from dataclasses import fields

    known = {f.name: f for f in fields(config_class)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TwinTurboError(f"{what}: unknown option {unknown[0]!r} (expected some of {', '.join(known)})")
    return config_class(**options)


def extract(dataset: str, out: str | Path, **options: Any) -> Path:
    """tt-extract: the frozen backbone once over `dataset` into a store under `out`; returns the store's path.
    Options are ExtractConfig's fields (backbone, resolution, views, limit, format, dtype, ...)."""
    from twinturbo.extract.config import ExtractConfig
    from twinturbo.extract.extract import run_extraction

    command = "twinturbo.extract(" + ", ".join([repr(dataset), repr(str(out))] +
                                               [f"{k}={v!r}" for k, v in sorted(options.items())]) + ")"
    config = _config(ExtractConfig, dict(options, dataset=dataset, out=Path(out), command=command), "extract")
    if isinstance(config.splits, str):
        config.splits = tuple(s.strip() for s in config.splits.split(",") if s.strip())
    return run_extraction(config).path


@dataclass
class Run:
    """A trained run: where it was written, its metrics (its metrics.json, the record) and config; `predict` applies
    its head."""

    path: Path
    metrics: dict
    config: Any  # TrainConfig
    _loaded: Any = field(default=None, repr=False)

    @property
    def test_accuracy(self) -> float:
        return float(self.metrics["test_accuracy"])

    @property
    def head(self):
        """The trained head (its --head's module, read from RUN_DIR/head.pt on first use)."""
        return self._rundir().head

    def _rundir(self):
        if self._loaded is None:
            from twinturbo.train.run.rundir import load_run

            self._loaded = load_run(self.path)
        return self._loaded

    def predict(self, features: str | Path | None = None, split: str = "test", images: str | Path | None = None,
                device: str = "auto"):
        """tt-predict: the head on a store's split (default: the run's own store, its test split) or on a folder of
        images through the store's backbone; returns its Predictions (labels, predicted, probabilities, names)."""
        from twinturbo.common.device import resolve_device
        from twinturbo.predict import predict_images, predict_split, run_store

        run, torch_device = self._rundir(), resolve_device(device)
        if images is not None:
            return predict_images(run, Path(images), features, torch_device)
        return predict_split(run, run_store(run, features), split, torch_device)


def _trackers(log: str | list[str] | None) -> tuple[str, ...]:
    """`log` as tt-train's --log: a comma-separated string or a list of tracker names."""
    from twinturbo.train.trackers import parse_log

    return parse_log(log if log is None or isinstance(log, str) else ",".join(log))


def train(features: str | Path, out: str | Path | None = None, device: str = "auto",
          memory_limit: str | int | None = None, progress: bool = True, log: str | list[str] | None = None,
          **options: Any) -> Run:
    """tt-train: one head on the store `features`; options are TrainConfig's fields (loss, rescale, critic_weight,
    labels, seed, epochs, ...), `log` the trackers of --log. Returns the Run (written to `out`, default
    runs/<dataset>/<run name>)."""
    from twinturbo.common.device import resolve_device, resolve_precision
    from twinturbo.common.sizes import parse_size
    from twinturbo.train.config import TrainConfig
    from twinturbo.train.run.rundir import METRICS_FILE, train_from_store

    trackers = _trackers(log)
    torch_device = resolve_device(device)
    config = _config(TrainConfig, options, "train").validate()
    config.check_given(set(options))
    config.precision = resolve_precision(config.precision, torch_device)
    limit = parse_size(memory_limit) if isinstance(memory_limit, str) else memory_limit
    _, run_dir = train_from_store(features, config, torch_device, Path(out) if out is not None else None,
                                  progress=progress, memory_limit=limit, log=trackers)
    return Run(Path(run_dir), json.loads((Path(run_dir) / METRICS_FILE).read_text()), config)


def sweep(features: str | Path, out: str | Path, grid: str | Path | dict | None = None, setups: str | None = None,
          labels: str | list | None = None, seeds: str | list | None = None, heads: str | list | None = None,
          device: str = "auto",
          workers: int = 1, fuse: int | None = None, extend: bool = False, save_heads: bool = False,
          memory_limit: str | int | None = None, grids: dict | None = None, log: str | list[str] | None = None,
          **training: Any):
    """tt-sweep: the setups x grids x heads x label budgets x seeds on `features` into SWEEP_DIR `out` (resumable: only
    runs not in its results.jsonl train). `grid` is a grid file, or the mapping one holds (setups, [[setup]] tables as a
    "setup" list, training, ...); `grids` maps an axis to its values ({"critic": [0.1, 1],
    "fixmatch_threshold": [0.8, 0.95]}); `log` the trackers of --log; `training` are the shared TrainConfig fields.
    Returns load_results(out)."""
    from twinturbo.common.sizes import parse_size
    from twinturbo.train.sweep.launch import run_sweep
    from twinturbo.train.sweep.grid import format_list, grid_key
    from twinturbo.train.sweep.gridfile import LIST_KINDS, build_grid

    def listed(value) -> str | None:
        return None if value is None else value if isinstance(value, str) else format_list(value)

    lists = {key: None for key in LIST_KINDS}
    lists.update(setups=listed(setups), labels=listed(labels), seeds=listed(seeds), heads=listed(heads))
    for axis, values in (grids or {}).items():
        if grid_key(axis) not in lists:
            raise TwinTurboError(f"sweep: unknown grid axis {axis!r} (expected some of "
                                 f"{', '.join(k.removesuffix('_grid') for k in LIST_KINDS if k.endswith('_grid'))})")
        lists[grid_key(axis)] = listed(values)
    spec = build_grid(grid if isinstance(grid, dict) or grid is None else str(grid), lists, training)
    limit = parse_size(memory_limit) if isinstance(memory_limit, str) else memory_limit
    trackers = _trackers(log)
    run_sweep(str(features), str(out), spec, device, fuse, workers, False, extend, "local", None,
              echo=lambda line: print(line, file=sys.stderr), memory_limit=limit, save_heads=save_heads,
              log=trackers)
    return load_results(out)


def report(*sweep_dirs: str | Path, out: str | Path | None = None, select: str = "val", epoch: str = "last",
           val_size: int | None = None, baselines: bool | list[str] = True, features: str | Path | None = None
           ) -> list[Path]:
    """tt-report: summary.md, the figures and results.csv of one or more sweeps; returns the files written.
    `baselines` is True (all), False (none) or a list of their names."""
    from twinturbo.train.report.baseline import BASELINES
    from twinturbo.train.report.make import make_report

    methods = tuple(BASELINES) if baselines is True else tuple(baselines or ())
    return make_report(list(sweep_dirs), out, bool(methods), str(features) if features else None, select, epoch,
                       val_size, methods)


def load_results(sweep_dir: str | Path):
    """A sweep's finished runs (SWEEP_DIR/results.jsonl) as a pandas DataFrame: one row per run, its config's fields
    as columns beside run_id, setup, test_accuracy, val_accuracy, the per-epoch lists and the host."""
    import pandas as pd

    from twinturbo.train.sweep.results import RESULTS_FILE, cut_lines_note, read_rows

    path = Path(sweep_dir) / RESULTS_FILE
    if not path.exists():
        raise TwinTurboError(f"{path} does not exist: is {sweep_dir} a tt-sweep --out directory?")
    note = cut_lines_note(path)
    if note:
        print(note, file=sys.stderr)
    records = []
    for row in read_rows(path):
        record = {key: value for key, value in row.items() if key != "config"}
        record.update(row.get("config") or {})
        records.append(record)
    return pd.DataFrame.from_records(records)


serve_calls(sys.modules[__name__])  # twinturbo.extract(...) and twinturbo.train(...) call this module's functions
