"""Command lines of stage 2: `tt-train`, `tt-sweep`, `tt-report`. Options are parsed here; the work is elsewhere."""
from __future__ import annotations

import click

from twinturbo.common.errors import TwinTurboError, exit_on_user_error

# ---- tt-train (owner: train loop) ------------------------------------------------------------------------------------

@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--features", required=True, type=click.Path(), help="Feature store from tt-extract (zarr dir or .h5).")
@click.option("--loss", default="cat_cross", show_default=True, help="Task loss: cat_cross (Eq. 17), cat_twin "
              "(Eq. 18) or bin_cross (Eq. 19).")
@click.option("--rescale", default="softmax", show_default=True, help="sigma of the losses: softmax or sigmoid.")
@click.option("--critic", "critic_weight", default=0.0, show_default=True, type=float,
              help="lambda_C of Eq. 22 (0 = no discriminator).")
@click.option("--latent", "latent_weight", default=0.0, show_default=True, type=float,
              help="lambda_L of Eq. 22 (0 = no latent alignment).")
@click.option("--labels", default=100, show_default=True, type=int, help="Size K of the class-balanced labelled subset.")
@click.option("--seed", default=42, show_default=True, type=int, help="Decides init, data order, subset and dropout.")
@click.option("--epochs", default=5, show_default=True, type=int, help="Passes over the unlabelled train split.")
@click.option("--batch-size", default=512, show_default=True, type=int, help="Unlabelled and labelled batch size.")
@click.option("--lr", default=5e-5, show_default=True, type=float, help="AdamW learning rate (both optimisers).")
@click.option("--warmup", default=150, show_default=True, type=int, help="Linear warm-up steps from factor 0.001.")
@click.option("--proj-dim", default=8000, show_default=True, type=int, help="Projector width (latent z).")
@click.option("--pred-dim", default=1024, show_default=True, type=int, help="Predictor hidden width.")
@click.option("--disc-dim", default=500, show_default=True, type=int, help="Discriminator width.")
@click.option("--prior", default="uniform", show_default=True,
              help="Class prior of the critic's real one-hots: uniform or labelled (subset frequencies).")
@click.option("--critic-form", default="minimax", show_default=True,
              help="Model side of the critic: minimax (Eq. 20, the paper) or nonsaturating (-log D).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu or cuda[:N].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="RUN_DIR [runs/<dataset>/<loss>_<rescale>_c<critic>_l<latent>_n<labels>_s<seed>].")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines; only the final accuracy.")
@exit_on_user_error
def train_main(features: str, device: str, out_dir: str | None, quiet: bool, warmup: int, **options) -> None:
    """tt-train: train one TwinTURBO head on cached features (Eq. 22) and report its test accuracy."""
    from pathlib import Path

    from twinturbo.common.device import resolve_device
    from twinturbo.train.config import TrainConfig
    from twinturbo.train.loop import train_from_store

    config = TrainConfig(warmup_steps=warmup, **options).validate()
    result, run_dir = train_from_store(features, config, resolve_device(device),
                                       Path(out_dir) if out_dir else None, progress=not quiet)
    click.echo(f"test accuracy {result.metrics['test_accuracy']:.4f} ({result.metrics['steps']} steps, "
               f"{result.metrics['wall_time_s']:.1f} s); run written to {run_dir}")


# ---- tt-sweep and tt-report (owner: sweep/report) --------------------------------------------------------------------

_SWEEP_LISTS = {  # option -> (grid key, element type)
    "setups": ("setups", int), "labels": ("labels", int), "seeds": ("seeds", int),
    "critic_grid": ("critic_grid", float), "latent_grid": ("latent_grid", float),
}
_SWEEP_TRAINING = ("epochs", "batch_size", "lr", "warmup", "proj_dim", "pred_dim", "disc_dim", "prior")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--features", required=True, type=click.Path(), help="Feature store from tt-extract (zarr dir or .h5).")
@click.option("--out", "sweep_dir", required=True, type=click.Path(file_okay=False),
              help="SWEEP_DIR: sweep.json, results.jsonl (one row per finished run), submitit logs.")
@click.option("--setups", default="1-7", show_default=True, help="Setups of DESIGN.md to run, e.g. 1-7 or 1,2,5.")
@click.option("--labels", default="100,1000", show_default=True, help="Label budgets.")
@click.option("--seeds", default="42,1337,3435", show_default=True, help="Seeds.")
@click.option("--critic-grid", default="0.01,0.1,1", show_default=True, help="lambda_C values (setups 2-7).")
@click.option("--latent-grid", default="0.01,0.1,1", show_default=True, help="lambda_L values (setups 5-7).")
@click.option("--grid", "grid_file", type=click.Path(dir_okay=False),
              help="TOML/YAML grid file (keys: setups, labels, seeds, critic_grid, latent_grid, setup_grids, "
                   "training); options given on the command line override it.")
@click.option("--epochs", type=int, help="tt-train --epochs for every run [tt-train default: 5].")
@click.option("--batch-size", type=int, help="tt-train --batch-size [512].")
@click.option("--lr", type=float, help="tt-train --lr [5e-5].")
@click.option("--warmup", type=int, help="tt-train --warmup, linear warm-up steps [150].")
@click.option("--proj-dim", type=int, help="Projector width [8000].")
@click.option("--pred-dim", type=int, help="Predictor hidden width [1024].")
@click.option("--disc-dim", type=int, help="Discriminator width [500].")
@click.option("--prior", type=click.Choice(["uniform", "labelled"]), help="Critic's class prior [uniform].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N] (not part of the grid).")
@click.option("--fuse", type=int,
              help="At most this many runs (same labels and seed) train in one fused pass; 1 = one at a time "
                   "[8 on CUDA, 1 on CPU, where fusing measured slower].")
@click.option("--workers", default=1, show_default=True, type=int,
              help="Local launcher: train this many fused groups at once, in separate processes sharing the CPU "
                   "threads equally (on a 2-core CPU, 2 workers of 1 thread beat 1 of 2).")
@click.option("--dry-run", is_flag=True, help="Print the run table and count (done/pending), train nothing.")
@click.option("--extend", is_flag=True,
              help="Accept a grid or store different from SWEEP_DIR/sweep.json: add its runs.")
@click.option("--launcher", type=click.Choice(["local", "submitit"]), default="local", show_default=True,
              help="local: in this process; submitit: one job per fused group (SLURM job array).")
@click.option("--slurm-partition", help="SLURM partition.")
@click.option("--slurm-time", default=60, show_default=True, type=int, help="Time limit per job, minutes.")
@click.option("--slurm-gpus-per-node", default=1, show_default=True, type=int, help="GPUs per job.")
@click.option("--slurm-cpus-per-task", default=8, show_default=True, type=int, help="CPUs per job.")
@click.option("--slurm-mem", default=32, show_default=True, type=int, help="Memory per job, GB.")
@click.option("--slurm-array-parallelism", default=16, show_default=True, type=int,
              help="At most this many jobs of the array run at once.")
@click.option("--submitit-cluster", type=click.Choice(["auto", "slurm", "local", "debug"]), default="auto",
              show_default=True, help="submitit executor: auto = SLURM when available, else local processes.")
@click.pass_context
@exit_on_user_error
def sweep_main(ctx: click.Context, features: str, sweep_dir: str, grid_file: str | None, device: str,
               fuse: int | None, workers: int, dry_run: bool, extend: bool, launcher: str, slurm_partition: str | None, slurm_time: int,
               slurm_gpus_per_node: int, slurm_cpus_per_task: int, slurm_mem: int, slurm_array_parallelism: int,
               submitit_cluster: str, **options) -> None:
    """tt-sweep: the ablation of section 4.4 (7 setups x lambda grids x label budgets x seeds), fused and resumable.

    Rerun the same command after a kill: finished runs are skipped, interrupted ones retrained.
    """
    from pathlib import Path

    from click.core import ParameterSource

    from twinturbo.common.store import open_store
    from twinturbo.train import launch
    from twinturbo.train.sweep import (SweepGrid, finished_run_ids, fusion_groups, load_grid_file, parse_list,
                                       pending_runs, prepare_sweep_dir, run_table)

    if fuse is None:
        from twinturbo.common.device import resolve_device

        fuse = launch.DEFAULT_FUSE.get(resolve_device(device).type, 1)
    if fuse < 1:
        raise TwinTurboError(f"--fuse {fuse}: expected a number of runs >= 1")
    data = load_grid_file(grid_file) if grid_file else {}
    training = dict(data.pop("training", {}) or {})
    from_command_line = lambda name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE  # noqa: E731
    for name, (key, kind) in _SWEEP_LISTS.items():
        if key not in data or from_command_line(name):
            data[key] = parse_list(options[name], kind, "--" + name.replace("_", "-"))
    for name in _SWEEP_TRAINING:
        if options[name] is not None:
            training[name] = options[name]
    data["training"] = training
    grid = SweepGrid.from_dict(data, source=f"--grid {grid_file}" if grid_file else "options")

    with open_store(features) as store:
        store.require_complete()
        identity = store.identity()
    runs = grid.expand(identity["fingerprint"])
    if dry_run:
        finished = finished_run_ids(sweep_dir) if (Path(sweep_dir) / "results.jsonl").exists() else set()
        click.echo(run_table(runs, finished))
        return
    prepare_sweep_dir(sweep_dir, grid, identity, extend)
    todo = pending_runs(runs, finished_run_ids(sweep_dir))
    click.echo(f"tt-sweep: {len(runs)} runs in the grid, {len(runs) - len(todo)} already done, {len(todo)} to train "
               f"(fused by up to {fuse})")
    groups = list(fusion_groups(todo, fuse))
    if launcher == "local":
        launch.launch_local(features, sweep_dir, groups, device, workers)
    else:
        slurm = launch.SlurmOptions(slurm_partition, slurm_time, slurm_gpus_per_node, slurm_cpus_per_task,
                                    slurm_mem, slurm_array_parallelism, submitit_cluster)
        launch.launch_submitit(features, sweep_dir, groups, device, slurm)
    click.echo(f"tt-sweep: results in {Path(sweep_dir) / 'results.jsonl'}; figures: tt-report {sweep_dir}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("sweep_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where to write the report [SWEEP_DIR; required for several sweeps].")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Fit LogisticRegression and LabelSpreading on each seed's labelled subset of the sweep's store and "
                   "show them.")
@click.option("--features", type=click.Path(),
              help="The sweep's store when it is no longer where the sweep recorded it (checked by fingerprint).")
@exit_on_user_error
def report_main(sweep_dirs: tuple[str, ...], out_dir: str | None, baseline: bool, features: str | None) -> None:
    """tt-report: figure_<dataset>.png (Figures 2-4), all_<dataset>.png (Appendix C), summary.md, results.csv, from
    one or more SWEEP_DIRs (e.g. the 100- and the 1000-label sweeps of one store)."""
    from twinturbo.train.report import make_report

    written = make_report(list(sweep_dirs), out_dir, baseline, features)
    click.echo(next(p for p in written if p.name == "summary.md").read_text())
    for path in written:
        click.echo(f"wrote {path}")
