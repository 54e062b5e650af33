"""`tt-extract`: parse options, then call the extraction loop (`extract.py`) or the store check (`verify.py`)."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from twinturbo.common.command import Command
from twinturbo.common.errors import TwinTurboError

BACKBONE_HELP = "effnet-lite0 | effnet-lite0:320 | timm:<model> | radio (RADIOv2.5-B via torch.hub)"


def backbone_options(command):
    """--weights, --radio-checkpoint, --hub-dir: where a backbone's weights come from (tt-extract, tt-predict)."""
    for option in reversed((
            click.option("--weights", type=click.Path(path_type=Path), default=None,
                         help="Local weights file for timm:<model>."),
            click.option("--radio-checkpoint", type=click.Path(path_type=Path), default=None,
                         help="Local RADIO checkpoint (.pth.tar)."),
            click.option("--hub-dir", type=click.Path(path_type=Path), default=None,
                         help="Local copy of the NVlabs/RADIO hub repo."))):
        command = option(command)
    return command


class ExtractCommand(Command):
    interrupt_hint = "interrupted; rerun the same command to resume from the first chunk not done"


@click.command(cls=ExtractCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--dataset", help="mnist | fashion-mnist | cifar10 | svhn | digits | folder:PATH")
@click.option("--out", type=click.Path(path_type=Path), help="Directory receiving the store <out>/<dataset>[.h5].")
@click.option("--backbone", default="radio", show_default=True, help=BACKBONE_HELP)
@click.option("--resolution", type=int, default=None, help="Input side in pixels [default: the backbone's].")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward (a multiple of --chunk-size).")
@click.option("--chunk-size", type=int, default=64, show_default=True, help="Samples per store chunk (resume unit).")
@click.option("--format", "store_format", default="zarr", show_default=True, help="zarr | hdf5")
@click.option("--dtype", default="float16", show_default=True, help="Patch tokens on disk: float16 | int8 (+ a scale per token).")
@click.option("--splits", default="train,test", show_default=True, help="Comma-separated splits to extract.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--limit", type=int, default=None, help="Only the first N samples of each split.")
@click.option("--data-root", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Where the raw dataset files are.")
@click.option("--download", is_flag=True, help="Fetch missing MNIST/Fashion-MNIST/CIFAR-10/SVHN files (checksum-verified).")
@backbone_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store that holds a different extraction.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--verify", "verify_path", type=click.Path(path_type=Path), default=None,
              help="Check the store at PATH instead of extracting (complete, shapes, dtypes, labels, no NaN/Inf).")
def extract_command(dataset, out, backbone, resolution, batch_size, chunk_size, store_format, dtype, splits, device,
                    limit, data_root, download, weights, radio_checkpoint, hub_dir, overwrite, no_progress,
                    verify_path) -> None:
    """Run a frozen backbone once over a dataset and store its CLS and patch tokens (stage 1)."""
    if verify_path is not None:
        from twinturbo.extract.verify import verify_store

        for line in verify_store(verify_path, progress=not no_progress).lines():
            click.echo(line)
        return
    if not dataset or out is None:
        raise TwinTurboError("--dataset and --out are required (or --verify PATH to check a store)")

    from twinturbo.extract.extract import ExtractConfig, run_extraction

    config = ExtractConfig(
        dataset=dataset, out=out, backbone=backbone, resolution=resolution, batch_size=batch_size,
        chunk_size=chunk_size, format=store_format, dtype=dtype,
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()), device=device, limit=limit,
        data_root=data_root, download=download, weights=weights, radio_checkpoint=radio_checkpoint, hub_dir=hub_dir,
        overwrite=overwrite, progress=not no_progress, command=shlex.join(click.get_current_context().obj["argv"]),
    )
    result = run_extraction(config)
    from twinturbo.extract.extract import detect_ranks

    if detect_ranks().rank != 0:
        return
    from twinturbo.extract.verify import verify_store

    summary = verify_store(result.path, progress=False, scan_values=False)
    for line in summary.lines():
        click.echo(line)
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
