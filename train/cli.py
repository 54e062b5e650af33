"""Command lines of stage 2: `tt-train`, `tt-sweep`, `tt-report`. Options are parsed here; the work is elsewhere.

Every training option is built from TrainConfig's fields (train/config.py holds each default and help text), so
tt-train and tt-sweep cannot disagree: tt-train takes all of them, tt-sweep the ones its runs share (unset = the
TrainConfig default) and has list options for the grid axes instead.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Callable

import click

from twinturbo.common.command import Command, plugins_option
from twinturbo.common.device import resolve_device, resolve_precision
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.sizes import parse_size
from twinturbo.common.slurm import options_of, slurm_options
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import DEFAULT_HEAD, HEADS
from twinturbo.train.report.baseline import BASELINES
from twinturbo.train.report.make import make_report
from twinturbo.train.run.memory import MEMORY_HEADROOM
from twinturbo.train.run.rundir import train_from_store
from twinturbo.train.sweep.grid import DEFAULT_LABELS, DEFAULT_SEEDS, format_list, grid_key, grid_option, parse_list
from twinturbo.train.sweep.gridfile import LIST_KINDS, build_grid
from twinturbo.train.sweep.jobs import sweep_status
from twinturbo.train.sweep.launch import DEFAULT_FUSE, run_sweep
from twinturbo.train.terms import DISPLAY_ORDER, GRID_OPTIONS
from twinturbo.train.trackers import TRACKERS, Tracking, describe_tracking, parse_log

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def _with_default(text: str, default: object) -> str:
    return f"{text}  [default: {default}]"


def training_options(shared_only: bool) -> Callable:
    """click options for TrainConfig's fields, in field order; with `shared_only` (tt-sweep) only the fields a sweep's
    runs share, unset by default so that the TrainConfig default applies."""
    def decorate(command: Callable) -> Callable:
        for spec in reversed(fields(TrainConfig)):
            if shared_only and spec.metadata["per_run"]:
                continue
            command = click.option(spec.metadata["flag"], spec.name, type=spec.metadata["kind"],
                                   default=None if shared_only else spec.default,
                                   help=_with_default(spec.metadata["help"], spec.metadata["shown"]))(command)
        return command
    return decorate


def grid_options(command: Callable) -> Callable:
    """--<term>-grid for every additive term of Eq. 22 (train/terms/): the weights a sweep tries for it; and
    --<option>-grid for each option a sweep sweeps like a weight (FixMatch's threshold)."""
    for term, option in reversed(GRID_OPTIONS):
        command = click.option(grid_option(option.name), grid_key(option.name),
                               help=_with_default(f"{option.symbol} values of the setups with {term.name}: "
                                                  f"{option.help}", format_list((float(option.default),))))(command)
    for term in reversed(DISPLAY_ORDER):
        default = format_list(term.weight.grid) if term.weight.grid else "none: give it when a setup uses the term"
        command = click.option(grid_option(term.name), grid_key(term.name),
                               help=_with_default(f"{term.weight.symbol} values of the setups with {term.name} "
                                                  f"({term.summary}).", default))(command)
    return command


features_option = click.option("--features", required=True, type=click.Path(),
                               help="Feature store from tt-extract (zarr directory or .h5 file).")
device_option = click.option("--device", default="auto", help=_with_default(
    "auto (CUDA when present), cpu or cuda[:N]; not part of a run's config.", "auto"))
memory_limit_option = click.option(
    "--memory-limit", help="Memory for the splits, e.g. 8G or 512M; a train split that does not fit (with the test "
    "split) is streamed from the store through a shuffle buffer (another batch order, recorded in the metrics); "
    f"tt-sweep's workers share it  [default: {MEMORY_HEADROOM:.0%} of the free memory]")
log_option = click.option(
    "--log", help="Follow each run in these trackers as it trains, comma-separated, any of " + ", ".join(TRACKERS)
    + " (pip install twinturbo[<name>]): each epoch's losses, accuracies and diagnostics, the config as "
    "hyperparameters; not part of a run's config. TensorBoard: RUN_DIR/tensorboard/ (tt-sweep: "
    "SWEEP_DIR/tensorboard/<run id>/). MLflow: $MLFLOW_TRACKING_URI, else sqlite RUN_DIR/mlflow.db (SWEEP_DIR/"
    "mlflow.db); experiment twinturbo (tt-sweep: SWEEP_DIR's name). W&B: project $WANDB_PROJECT or twinturbo "
    "(tt-sweep: group SWEEP_DIR's name), files in RUN_DIR/wandb/ (SWEEP_DIR/wandb/; $WANDB_DIR/wandb/ if set), "
    "mode $WANDB_MODE, else offline unless an API key is found  [default: none]")


# ---- tt-train ----------------------------------------------------------------------------------------------------

@click.command(cls=Command, context_settings=CONTEXT)
@plugins_option
@features_option
@training_options(shared_only=False)
@device_option
@memory_limit_option
@log_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="RUN_DIR [runs/<dataset>/<loss>_<rescale>_c<critic>_l<latent>_n<labels>_s<seed>].")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines; only the final accuracy.")
def train_main(features: str, device: str, memory_limit: str | None, log: str | None, out_dir: str | None,
               quiet: bool, **options) -> None:
    """tt-train: train one TwinTURBO head on cached features (Eq. 22) and report its test accuracy."""
    trackers = parse_log(log)
    torch_device = resolve_device(device)
    config = TrainConfig(**options).validate()
    context = click.get_current_context()
    config.check_given({name for name in options if context.get_parameter_source(name) is not
                        click.core.ParameterSource.DEFAULT})
    config.precision = resolve_precision(config.precision, torch_device)  # the run records what it computed in
    limit = parse_size(memory_limit) if memory_limit is not None else None
    result, run_dir = train_from_store(features, config, torch_device, Path(out_dir) if out_dir else None,
                                       progress=not quiet, memory_limit=limit, log=trackers)
    click.echo(f"test accuracy {result.metrics['test_accuracy']:.4f} ({result.metrics['steps']} steps, "
               f"{result.metrics['wall_time_s']:.1f} s); run written to {run_dir}")
    if trackers:
        click.echo(describe_tracking(Tracking.for_run(trackers, run_dir)))


# ---- tt-sweep ----------------------------------------------------------------------------------------------------

class SweepCommand(Command):
    interrupt_hint = "interrupted; rerun the same command: finished runs are kept, the others are trained"


@click.command(cls=SweepCommand, context_settings=CONTEXT)
@plugins_option
@click.option("--features", type=click.Path(), help="Feature store from tt-extract (zarr directory or .h5 file); "
              "required unless --status.")
@click.option("--out", "sweep_dir", required=True, type=click.Path(file_okay=False),
              help="SWEEP_DIR: sweep.json, results.jsonl (one row per finished run), claims/, submitit logs.")
@click.option("--status", is_flag=True, help="Say what SWEEP_DIR's runs are: done, running (claimed by a live "
              "process or job), pending, failed (their job ended without them); train nothing.")
@click.option("--setups", help=_with_default("Setups to run: the 7 bars of the paper's Figures 2-4 (listed in the "
                                             "README) and any a --grid file defines, e.g. 1-7 or 1,2,5.", "1-7"))
@click.option("--heads", help=_with_default("Heads each setup trains (a setup of a --grid file may name its own): "
                                            + ", ".join(HEADS) + " (tt-train --help: --head says what each is).",
                                            DEFAULT_HEAD))
@click.option("--labels", help=_with_default("Label budgets: sizes K of the class-balanced labelled subset.",
                                             format_list(DEFAULT_LABELS)))
@click.option("--seeds", help=_with_default("Seeds.", format_list(DEFAULT_SEEDS)))
@grid_options
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False),
              help="TOML/YAML grid file (keys: setups, labels, seeds, <term>_grid, setup_grids, training, and [[setup]] "
                   "tables that add setups, or replace the paper's with replace_setups = true); options given on the "
                   "command line override it.")
@training_options(shared_only=True)
@device_option
@memory_limit_option
@log_option
@click.option("--fuse", type=int,
              help="At most this many runs (same labels and seed) train in one fused pass; 1 = one at a time "
                   f"[{DEFAULT_FUSE['cuda']} on CUDA, {DEFAULT_FUSE['cpu']} on CPU, where fusing measured slower].")
@click.option("--workers", default=1, type=int,
              help=_with_default("Local launcher: train this many fused groups at once, in separate processes sharing "
                                 "the CPU threads equally (on a 2-core CPU, 2 workers of 1 thread beat 1 of 2).", 1))
@click.option("--dry-run", is_flag=True, help="Print the run table and count (done/pending), train nothing.")
@click.option("--save-heads", is_flag=True,
              help="Keep every run's head in SWEEP_DIR/runs/<run id>/ (head.pt, config.json, metrics.json) for "
                   "tt-predict.")
@click.option("--extend", is_flag=True,
              help="Accept a grid or store different from SWEEP_DIR/sweep.json: add its runs.")
@click.option("--launcher", type=click.Choice(["local", "submitit"]), default="local", show_default=True,
              help="local: in this process; submitit: one job per fused group (SLURM job array).")
@click.option("--no-wait", is_flag=True, help="submitit: submit the jobs and return (follow them with --status).")
@slurm_options
def sweep_main(features: str | None, sweep_dir: str, status: bool, grid_file: str | None, device: str,
               memory_limit: str | None, log: str | None, fuse: int | None, workers: int, dry_run: bool,
               save_heads: bool, extend: bool, launcher: str, no_wait: bool, **options) -> None:
    """tt-sweep: the ablation of section 4.4 (setups x lambda grids x label budgets x seeds), fused and resumable.

    Rerun the same command after a kill: finished runs are skipped, interrupted ones retrained.
    """
    if status:
        click.echo(sweep_status(sweep_dir))
        return
    if not features:
        raise TwinTurboError("--features is required (the store the sweep trains on), unless --status")
    trackers = parse_log(log)

    slurm = options_of(options)
    lists = {key: options.pop(key) for key in LIST_KINDS}  # the grid's lists; the rest are shared training flags
    grid = build_grid(grid_file, lists, options)
    run_sweep(features, sweep_dir, grid, device, fuse, workers, dry_run, extend, launcher, slurm, echo=click.echo,
              memory_limit=parse_size(memory_limit) if memory_limit is not None else None, save_heads=save_heads,
              wait_for_jobs=not no_wait, log=trackers)


# ---- tt-report ---------------------------------------------------------------------------------------------------

@click.command(cls=Command, context_settings=CONTEXT)
@plugins_option
@click.argument("sweep_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where to write the report [SWEEP_DIR; required for several sweeps].")
@click.option("--select", "protocol", type=click.Choice(["val", "test", "paper"]), default="val", show_default=True,
              help="How λ is chosen per setup: val = best seed-mean validation accuracy (rows without a validation "
                   "split fall back to test); test = best seed-mean test accuracy; paper = best single seed on test "
                   "(the paper's Figures 2-4). The paper's protocol is always reported beside it.")
@click.option("--epoch", "epoch_rule", type=click.Choice(["last", "best-val"]), default="last", show_default=True,
              help="Read each run at its last epoch (the paper) or at its epoch of best validation accuracy.")
@click.option("--val-size", type=int,
              help="Choose on the first N validation labels of each run (a prefix is itself a class-balanced "
                   "validation split)  [default: as many as the run's --labels, or all it recorded]")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Fit the --baselines on each seed's labelled subset of the sweep's store and show them (each fit "
                   "cached in OUT/baselines.json as it ends: an interrupted report resumes).")
@click.option("--baselines", "methods", default=",".join(BASELINES), show_default=True,
              help="Which baselines, comma-separated. SelfTraining refits LogisticRegression on every pseudo-"
                   "labelled CLS vector, up to 10 rounds for each of 3 thresholds and each seed: on one CPU core and "
                   "60k 1280-d vectors 1.5-2.5 minutes per seed (bench/README.md, 'Baselines').")
@click.option("--features", type=click.Path(),
              help="The sweep's store when it is no longer where the sweep recorded it (checked by fingerprint).")
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False),
              help="Report only the runs of this grid file (tt-sweep's --grid: setups, λ grids, label budgets, "
                   "seeds), matched by setup, head, λ values, budget and seed: e.g. one study's runs out of larger "
                   "sweeps.")
@click.option("--labels", "grid_labels", help="With --grid: these label budgets instead of the grid file's, e.g. "
              "40,100,250,1000 to take another sweep's budget of the same grid into the report.")
def report_main(sweep_dirs: tuple[str, ...], out_dir: str | None, protocol: str, epoch_rule: str,
                val_size: int | None, baseline: bool, methods: str, features: str | None,
                grid_file: str | None, grid_labels: str | None) -> None:
    """tt-report: summary.md (what ran, the protocol, the finding with its 95% intervals, the tables),
    figure_<dataset>.png (Figures 2-4 with validation-chosen λ), all_<dataset>.png (Appendix C),
    diagnostics_<dataset>.png (the critic over training), budgets_<dataset>.png (accuracy against labels, with two or
    more label budgets) and results.csv, from one or more SWEEP_DIRs (e.g. the 100-
    and the 1000-label sweeps of one store)."""
    written = make_report(list(sweep_dirs), out_dir, baseline, features, protocol, epoch_rule, val_size,
                          parse_list(methods, str, "--baselines"), grid_file, grid_labels)
    click.echo(next(p for p in written if p.name == "summary.md").read_text())
    for path in written:
        click.echo(f"wrote {path}")
