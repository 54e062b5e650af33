"""`tt-extract`: parse options, then call the extraction loop (`extract.py`) or the store check (`verify.py`).

Every extraction option is built from ExtractConfig's fields (extract/config.py holds each default and help text).
"""
from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path
from typing import Callable

import click

from twinturbo.common import liveness
from twinturbo.common.command import Command
from twinturbo.common.errors import TwinTurboError
from twinturbo.common.slurm import options_of, slurm_options
from twinturbo.common.store import open_store
from twinturbo.extract.config import ExtractConfig
from twinturbo.extract.extract import run_extraction
from twinturbo.extract.ranks import detect_ranks
from twinturbo.extract.verify import repair_store, verify_store

# where a backbone's weights (and code) come from
BACKBONE_SOURCES = ("weights", "radio_checkpoint", "hub_dir", "trust_remote_code")


def _click_option(spec) -> Callable:
    meta = spec.metadata
    shown = "[required]" if meta["shown"] == "required" else f"[default: {meta['shown']}]"
    help_text = f"{meta['help']}  {shown}" if meta["kind"] is not bool else meta["help"]
    if meta["kind"] is bool:
        return click.option(meta["flag"], spec.name, is_flag=True, default=False, help=help_text)
    kind = click.Path(path_type=Path) if meta["kind"] is Path else meta["kind"]
    return click.option(meta["flag"], spec.name, type=kind, default=None, help=help_text)


def extraction_options(names: tuple[str, ...] | None = None) -> Callable:
    """click options for ExtractConfig's fields (or only `names`), in field order; unset = the field's default."""
    def decorate(command: Callable) -> Callable:
        for spec in reversed(fields(ExtractConfig)):
            if "flag" in spec.metadata and (names is None or spec.name in names):
                command = _click_option(spec)(command)
        return command
    return decorate


backbone_options = extraction_options(BACKBONE_SOURCES)  # tt-predict --images builds the store's backbone too


def config_from_options(options: dict, argv: list[str]) -> ExtractConfig:
    """An ExtractConfig from the parsed options: unset ones keep the field's default, flags that negate a field
    (--no-progress) switch it off, list options are parsed by the field's own rule."""
    values = {}
    for spec in fields(ExtractConfig):
        meta = spec.metadata
        if spec.name not in options or options[spec.name] is None:
            continue
        value = options[spec.name]
        if meta.get("negate"):
            if value:
                values[spec.name] = False
            continue
        if meta["kind"] is bool and not value:
            continue
        values[spec.name] = meta["parse"](value) if "parse" in meta else value
    return ExtractConfig(**values, command=shlex.join(argv))


class ExtractCommand(Command):
    interrupt_hint = "interrupted; rerun the same command to resume from the first chunk not done"


@click.command(cls=ExtractCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@extraction_options()
@slurm_options
@click.option("--verify", "verify_path", type=click.Path(path_type=Path), default=None,
              help="Check the store at PATH instead of extracting (complete, shapes, dtypes, labels, every chunk "
                   "against its checksum, no NaN/Inf, how many vectors are constant); each damaged chunk is named, "
                   "exit code 2.")
@click.option("--repair", is_flag=True,
              help="With --verify: mark the damaged chunks not done, so that the store's tt-extract command "
                   "recomputes only them.")
def extract_command(verify_path: Path | None, repair: bool, **options) -> None:
    """Run a frozen backbone once over a dataset and store its CLS and patch tokens (stage 1)."""
    if verify_path is not None:
        summary = verify_store(verify_path, progress=not options.get("progress"))
        for line in summary.lines():
            click.echo(line)
        for line in summary.warnings():
            click.echo(line, err=True)
        for damage in summary.damaged:
            click.echo(f"damaged: {damage}", err=True)
        if summary.damaged and repair:
            marked = repair_store(verify_path, summary.damaged)
            click.echo(f"repair: {marked} chunk(s) marked not done; rerun the tt-extract command that made "
                       f"{summary.path} to recompute only them")
        elif summary.damaged:
            raise TwinTurboError(f"{summary.path}: {len(summary.damaged)} damaged chunk(s), listed above; tt-extract "
                                 f"--verify {verify_path} --repair marks them for re-extraction")
        return
    if repair:
        raise TwinTurboError("--repair goes with --verify PATH (the store to check and repair)")
    slurm = options_of(options)
    config = config_from_options(options, click.get_current_context().obj["argv"])
    config.slurm = slurm
    result = run_extraction(config)
    if detect_ranks().rank != 0:
        return
    with open_store(result.path, writable=True) as store:  # what it stored: constant (dead) features counted once
        liveness.record(store, progress=config.progress)
    summary = verify_store(result.path, progress=False, scan_values=False)
    for line in summary.lines():
        click.echo(line)
    for line in summary.warnings():
        click.echo(line, err=True)
    for split in result.splits:
        if split.computed:
            click.echo(f"  {split.split}: computed {split.computed} images in {split.seconds:.1f} s "
                       f"({split.images_per_s:.1f} img/s)")
        else:
            click.echo(f"  {split.split}: already complete")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`tt-extract`); user errors become one `error: ...` line and exit code 2."""
    extract_command.main(args=argv, prog_name="tt-extract")


if __name__ == "__main__":
    main()
