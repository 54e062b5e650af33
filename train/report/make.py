"""`tt-report`: a sweep's results.jsonl as summary.md (what ran, the protocol, the finding with its uncertainty, then
the tables), the figures of train/report/figures.py, and results.csv.

The default protocol chooses λ on the validation split (`--select val`, train/report/selection.py) wherever the rows have
one, reads each run at its last epoch (`--epoch last`, as the paper does), and quotes seed means with 95% t
intervals and paired differences to setup 1 on the same seeds (train/report/stats.py). The paper's protocol (λ and seed
chosen on the test set) is reported beside it, so that its optimism is one number per setup.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from twinturbo.common.atomic import atomic_open, write_text_atomic
from twinturbo.common.errors import TwinTurboError
from twinturbo.train.heads import DEFAULT_HEAD, missing_plugins
from twinturbo.train.report.baseline import BASELINES
from twinturbo.train.report.budgets import plot_budgets
from twinturbo.train.report.figures import PROTOCOL_TEXT, plot_all, plot_diagnostics, plot_selected
from twinturbo.train.report.fits import baselines_of
from twinturbo.train.report.heads import heads_of, plot_heads
from twinturbo.train.report.selection import (EPOCH_RULES, PROTOCOLS, combinations, grid_point, row_group, rows_in_grid,
                                              split_head)
from twinturbo.train.report.summary import summary_markdown
from twinturbo.train.sweep.gridfile import LIST_KINDS, build_grid
from twinturbo.train.sweep.results import RESULTS_FILE, cut_lines_note, read_rows


CSV_COLUMNS = ("run_id", "dataset", "backbone", "head", "store_fingerprint", "setup", "loss", "rescale", "critic_weight",
               "latent_weight", "labels", "seed", "test_accuracy", "val_accuracy", "precision", "wall_time_s",
               "fused_runs", "device")


def write_csv(rows: list[dict], path: Path) -> None:
    """All rows: the columns above, then every other training flag, then the per-epoch accuracies."""
    flags = sorted({k for row in rows for k in row["config"]} - set(CSV_COLUMNS))
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(CSV_COLUMNS) + flags + ["epoch_accuracies", "epoch_val_accuracies"])
        for row in rows:
            dataset, label = row_group(row)
            backbone, head = split_head(label)
            config = row["config"]
            base = {"run_id": row["run_id"], "dataset": dataset, "backbone": backbone, "head": head,
                    "store_fingerprint": (row.get("store") or {}).get("fingerprint"), "setup": row["setup"],
                    "test_accuracy": row["test_accuracy"], "val_accuracy": row.get("val_accuracy"),
                    "wall_time_s": row.get("wall_time_s"), "fused_runs": row.get("fused_runs"),
                    "device": row.get("device"), **config, "precision": row.get("precision") or config.get("precision")}
            curves = [";".join(f"{a:.6g}" for a in row.get(key) or []) for key in ("epoch_accuracies",
                                                                                  "epoch_val_accuracies")]
            writer.writerow([base.get(c) for c in CSV_COLUMNS] + [config.get(f) for f in flags] + curves)


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def read_sweeps(directories: list[Path]) -> list[dict]:
    """Every finished run of the sweeps, first occurrence per run id."""
    rows, seen = [], set()
    for directory in directories:
        results = directory / RESULTS_FILE
        if not results.exists():
            raise TwinTurboError(f"{results} does not exist: is {directory} a tt-sweep --out directory?")
        note = cut_lines_note(results)
        if note:
            print(note, file=sys.stderr)
        for row in read_rows(results):
            missing_plugins(row.get("config") or {}, row.get("plugins"), f"{results}: run {row.get('run_id')}")
            if row.get("run_id") not in seen:
                seen.add(row.get("run_id"))
                rows.append(row)
    if not rows:
        files = " and ".join(str(d / RESULTS_FILE) for d in directories)
        raise TwinTurboError(f"{files} {'holds' if len(directories) == 1 else 'hold'} no finished run yet")
    return rows


def make_report(sweep_dirs: str | Path | list[str | Path], out_dir: str | Path | None = None, baseline: bool = True,
                features: str | None = None, protocol: str = "val", epoch_rule: str = "last",
                val_size: int | None = None, methods: tuple[str, ...] = tuple(BASELINES),
                grid: str | None = None, grid_labels: str | None = None) -> list[Path]:
    """Write figure_<dataset>.png, all_<dataset>.png, diagnostics_<dataset>.png (when the rows hold training
    diagnostics), budgets_<dataset>.png (with two or more label budgets), summary.md and results.csv from one or more
    sweeps' rows (e.g. a 100-label and a 1000-label sweep of one store); return their paths. `protocol`,
    `epoch_rule`, `val_size`, `methods`, `grid` and `grid_labels` as tt-report's --select, --epoch, --val-size,
    --baselines, --grid and --labels; with `baseline`, those baselines are fitted on the sweep's store (cached in baselines.json)."""
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise TwinTurboError(f"--baselines {','.join(methods)}: unknown {unknown[0]!r}; expected a comma-separated "
                             f"list of {', '.join(BASELINES)}")
    if protocol not in PROTOCOLS:
        raise TwinTurboError(f"--select {protocol}: expected one of {', '.join(PROTOCOLS)}")
    if epoch_rule not in EPOCH_RULES:
        raise TwinTurboError(f"--epoch {epoch_rule}: expected one of {', '.join(EPOCH_RULES)}")
    if val_size is not None and val_size < 1:
        raise TwinTurboError(f"--val-size {val_size}: expected a positive number of validation labels")
    directories = [Path(d) for d in (sweep_dirs if isinstance(sweep_dirs, (list, tuple)) else [sweep_dirs])]
    if out_dir is None and len(directories) > 1:
        raise TwinTurboError("tt-report of several sweeps needs --out (where to write the joint report)")
    if grid_labels is not None and grid is None:
        raise TwinTurboError("--labels chooses the label budgets of a --grid file: give --grid too")
    rows = read_sweeps(directories)
    if grid is not None:
        lists = {key: grid_labels if key == "labels" else None for key in LIST_KINDS}
        points = {grid_point(run.setup.key, run.config()) for run in build_grid(grid, lists, {}).expand()}
        rows = rows_in_grid(rows, points)
        if not rows:
            raise TwinTurboError(f"--grid {grid}: none of the sweeps' runs is in this grid")
    try:
        by_group = combinations(rows)
    except (KeyError, TypeError, ValueError) as err:
        raise TwinTurboError(f"{directories[0] / RESULTS_FILE}: a row lacks {err} (not written by tt-sweep?)") from None
    out = Path(out_dir) if out_dir is not None else directories[0]
    out.mkdir(parents=True, exist_ok=True)
    baselines, library_warnings, chosen_by_baselines = (
        baselines_of(rows, features, out / "baselines.json", methods, val_size) if baseline and methods else ({}, [], {}))
    text, drawn = summary_markdown(rows, by_group, baselines, protocol, epoch_rule, val_size, chosen_by_baselines)
    if library_warnings:
        text += "\nWarnings of the libraries while fitting the baselines:\n\n" + "\n".join(
            f"- {line}" for line in library_warnings) + "\n"
    written = []
    several_backbones = len({(d, split_head(b)[0]) for d, b in by_group}) > len({dataset for dataset, _ in by_group})

    def file_stem(dataset: str, label: str) -> str:  # figure_<dataset>[_<backbone>][_<head>]
        backbone, head = split_head(label)
        return _file_name((f"{dataset}_{backbone}" if several_backbones else dataset)
                          + (f"_{head}" if head != DEFAULT_HEAD else ""))

    for (dataset, backbone), combos in sorted(by_group.items()):
        stem = file_stem(dataset, backbone)
        chosen, edges, used, rule = drawn[(dataset, backbone)]
        found = baselines.get((dataset, backbone))
        figure, everything = out / f"figure_{stem}.png", out / f"all_{stem}.png"
        plot_selected(combos, chosen, found if isinstance(found, dict) else None, dataset, backbone, figure, used,
                      epoch_rule, edges)
        plot_all(combos, chosen, dataset, backbone, everything, used, epoch_rule)
        written += [figure, everything]
        if len({n for _, n in chosen}) > 1:
            curve = out / f"budgets_{stem}.png"
            plot_budgets(chosen, found if isinstance(found, dict) else None, dataset, backbone, curve,
                         f"λ chosen per budget on {rule.split(' (')[0].split(': ')[0]}" if used == "val"
                         else PROTOCOL_TEXT[used],
                         epoch_rule)
            written.append(curve)
        diagnostics = out / f"diagnostics_{stem}.png"
        if plot_diagnostics([r for r in rows if row_group(r) == (dataset, backbone)], chosen, dataset, backbone,
                            diagnostics):
            written.append(diagnostics)
    for (dataset, backbone), heads in heads_of(drawn).items():
        figure = out / f"heads_{file_stem(dataset, backbone)}.png"
        protocols = {drawn_used for (d, label), (_, _, drawn_used, _) in drawn.items() if d == dataset}
        plot_heads(heads, dataset, backbone, figure, PROTOCOL_TEXT[protocols.pop()] if len(protocols) == 1
                   else "λ chosen per head as in each section", epoch_rule)
        written.append(figure)
    summary = out / "summary.md"
    write_text_atomic(summary, text)
    csv_path = out / "results.csv"
    write_csv(rows, csv_path)
    return written + [summary, csv_path]
