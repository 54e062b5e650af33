"""Benchmark: tt-extract's images/s against the bare backbone on the same pre-resized tensors (the limit).

Both run in this process on the same built backbone. The bare loop only calls `forward_features` (the exact forward
tt-extract uses: inference_mode, bf16 autocast on CUDA, float16 outputs) batch after batch on images resized once
up front; tt-extract (`run_extraction`, the function behind the CLI) also reads the dataset, resizes, copies the
tokens to the host and writes the store. Each is timed `--repeats` times, alternating, and the best of each kept.

    overhead ratio = bare_images_per_s / extract_images_per_s        (goal <= 1.10)

With `--views weak:2,strong:4` tt-extract also augments and forwards each image's views: images/s then counts
images (each 1 + V forwards), the bare loop forwards the same 1 + V batches per batch (augmented once up front), and
the overhead is what augmenting, copying and writing the views adds. Both are also given as the backbone's achieved
GFLOP/s (FLOPs of one forward counted by torch.utils.flop_counter) and as a fraction of this machine's fp32 matmul
peak, measured in the same run (bench/limit.py's peak_gflops).

CPU default:  .venv/bin/python bench/extract.py
GPU:          .venv/bin/python bench/extract.py --backbone timm:vit_base_patch16_224 --resolution 224 \
                  --batch-size 256 --device cuda --random-weights --limit 5120
(`--random-weights`: a timm model with random weights, saved to a temporary file and loaded through --weights; the
cost of a forward does not depend on the weights' values.) Writes bench/extract.json next to this file.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from twinturbo.common.device import resolve_device
from twinturbo.extract.backbones import BackboneOptions, build_backbone
from twinturbo.extract.datasets import DatasetSplit, read_dataset_split
from twinturbo.extract.config import ExtractConfig, batch_grid
from twinturbo.extract.extract import forward_features, prepare_images, run_extraction
from twinturbo.extract.views import ViewMaker, parse_views

from limit import peak_gflops  # bench/limit.py, beside this script


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None, help="samples (default: the whole split)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--format", default="zarr", choices=("zarr", "hdf5"))
    parser.add_argument("--dtype", default="float16", choices=("float16", "int8"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--random-weights", action="store_true", help="timm:<model> with random weights (timing only)")
    parser.add_argument("--views", default=None, help="augmented views per train image, e.g. weak:2,strong:4")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the matmul that measures the peak")
    parser.add_argument("--precision", action="store_true",
                        help="also time the bare forward in the other precision (fp32 vs bf16 autocast) and compare "
                             "the tokens: why tt-extract uses bf16 on CUDA only")
    parser.add_argument("--out", type=Path, default=None, help="where the store goes (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    return parser.parse_args()


def build(args: argparse.Namespace, workdir: Path):
    options = BackboneOptions(resolution=args.resolution)
    if args.random_weights:
        import timm

        if not args.backbone.startswith("timm:"):
            sys.exit("--random-weights applies to timm:<model> backbones only")
        model = timm.create_model(args.backbone[len("timm:"):], pretrained=False, num_classes=0,
                                  img_size=args.resolution)
        options.weights = workdir / "random_weights.pth"
        torch.save(model.state_dict(), options.weights)
    return build_backbone(args.backbone, options)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(backbone, batches: list[torch.Tensor], device: torch.device,
              bf16: bool | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds for the backbone alone over the pre-resized batches (already on the device); `bf16` as
    forward_features' (None: what tt-extract uses on this device)."""
    synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for x in batches:
        forward_features(backbone, x, bf16=bf16)
    synchronize(device)
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    out = args.out or workdir / "features"
    backbone = build(args, workdir).to(device).eval()
    data = read_dataset_split(args.dataset, args.split)
    n = args.limit or len(data)
    batch_size, chunk_size, _ = batch_grid(args.batch_size, args.chunk_size)

    # --limit past the split's size (digits: 1257) repeats its images, so a GPU gets enough batches to time.
    if n > len(data):
        index = np.arange(n) % len(data)
        data = DatasetSplit(dataset=data.dataset, split=data.split, labels=data.labels[index],
                            class_names=data.class_names, source_files=data.source_files,
                            images=data.read(0, len(data))[index])
    spec = parse_views(args.views, args.dataset)
    forwards = 1 + (spec.count if spec else 0)  # per image
    batches = []
    for lo in range(0, n, batch_size):
        images = data.read(lo, min(lo + batch_size, n))
        views = ViewMaker(spec, 0)(images, lo) if spec else []
        batches += [prepare_images(x, backbone.resolution, device) for x in [images, *views]]
    config = ExtractConfig(dataset=args.dataset, out=out, backbone=args.backbone, batch_size=batch_size,
                           chunk_size=chunk_size, format=args.format, dtype=args.dtype, splits=(args.split,),
                           device=args.device, limit=n, overwrite=True, progress=False, views=args.views,
                           command="bench/extract.py " + " ".join(sys.argv[1:]))
    flops_per_image = forward_flops(backbone, batches[0])
    peak = peak_gflops(args.peak_size, torch.float32, 5, device)

    bare_loop(backbone, batches[:2], device)  # warm-up: kernels, allocator, autotuning
    # CPU seconds (all threads of this process) are the steadier figure on a machine shared with other jobs.
    bare_times, loop_times, call_times, bare_cpu, extract_cpu = [], [], [], [], []
    for _ in range(args.repeats):
        wall, cpu = bare_loop(backbone, batches, device)
        bare_times.append(wall)
        bare_cpu.append(cpu)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_extraction(config, backbone=backbone, data={args.split: data})
        call_times.append(time.perf_counter() - started)
        extract_cpu.append(time.process_time() - cpu_started)
        loop_times.append(result.splits[0].seconds)
    bare = n / min(bare_times)  # images/s, each `forwards` forwards
    extract = n / min(loop_times)
    end_to_end = n / min(call_times)
    store_bytes = sum(p.stat().st_size for p in result.path.rglob("*") if p.is_file()) if result.path.is_dir() \
        else result.path.stat().st_size
    report = {
        "backbone": backbone.name, "resolution": backbone.resolution, "dataset": args.dataset, "split": args.split,
        "samples": n, "batch_size": batch_size, "chunk_size": chunk_size, "format": args.format, "dtype": args.dtype,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "bare_seconds": bare_times, "extract_loop_seconds": loop_times,
        "extract_call_seconds": call_times, "bare_images_per_s": bare, "extract_images_per_s": extract,
        "extract_end_to_end_images_per_s": end_to_end, "store_bytes": store_bytes,
        "bare_cpu_seconds": bare_cpu, "extract_call_cpu_seconds": extract_cpu,
        "cpu_time_ratio": min(extract_cpu) / min(bare_cpu),
        "overhead_ratio": bare / extract, "overhead_ratio_end_to_end": bare / end_to_end, "goal": 1.10,
        "views": args.views, "forwards_per_image": forwards, "flops_per_forward": flops_per_image,
        "peak_fp32_gflops": peak, "bare_gflops": bare * forwards * flops_per_image / 1e9,
        "extract_gflops": extract * forwards * flops_per_image / 1e9,
        "bare_fraction_of_peak": bare * forwards * flops_per_image / 1e9 / peak,
        "extract_fraction_of_peak": extract * forwards * flops_per_image / 1e9 / peak,
        "command": "bench/extract.py " + " ".join(sys.argv[1:]),
    }
    if args.precision:
        report["precision"] = compare_precisions(backbone, batches, device, args.repeats)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{backbone.name} @ {backbone.resolution}px, {n} x {args.dataset}/{args.split}, batch {batch_size}, "
          f"{device}, {args.format}/{args.dtype}, best of {args.repeats}")
    print(f"store: {store_bytes / 1e6:.1f} MB")
    print(f"bare backbone images/s        = {bare:.1f}")
    print(f"tt-extract images/s (loop)    = {extract:.1f}")
    print(f"tt-extract images/s (call)    = {end_to_end:.1f}   (incl. dataset load, store creation)")
    print(f"CPU-time ratio (end to end)   = {min(extract_cpu) / min(bare_cpu):.3f}   (CPU seconds, all threads)")
    print(f"overhead ratio (end to end)   = {bare / end_to_end:.3f}")
    print(f"overhead ratio = bare_images_per_s / extract_images_per_s = {bare / extract:.3f}   (goal <= 1.10)")
    print(f"backbone: {flops_per_image / 1e9:.3f} GFLOP a forward, {forwards} forwards an image; fp32 peak "
          f"{peak:.0f} GFLOP/s ({args.peak_size}^3 matmul): bare {report['bare_gflops']:.1f} GFLOP/s "
          f"({100 * report['bare_fraction_of_peak']:.1f}% of peak), tt-extract {report['extract_gflops']:.1f} "
          f"({100 * report['extract_fraction_of_peak']:.1f}%)")
    if args.precision:
        p = report["precision"]
        print(f"bare forward fp32 {p['fp32_images_per_s']:.1f} img/s, bf16 autocast {p['bf16_images_per_s']:.1f} img/s: "
              f"bf16 {p['bf16_speedup']:.2f}x; tokens: largest |bf16 - fp32| / std = {p['cls_max_rel_error']:.3f} "
              f"(cls), {p['patches_max_rel_error']:.3f} (patches)")


def forward_flops(backbone, batch: torch.Tensor) -> float:
    """FLOPs of one image's forward (torch.utils.flop_counter over one batch, divided by its size)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward_features(backbone, batch)
    return counter.get_total_flops() / len(batch)


def compare_precisions(backbone, batches: list[torch.Tensor], device: torch.device, repeats: int) -> dict:
    """The bare forward in fp32 and under bf16 autocast, alternating, best of `repeats` each; and how far the
    bf16 tokens of the first batch are from the fp32 ones, in units of each array's standard deviation."""
    n = sum(len(x) for x in batches)
    times = {False: [], True: []}
    for _ in range(repeats):
        for bf16 in (False, True):
            times[bf16].append(bare_loop(backbone, batches, device, bf16=bf16)[0])
    (cls32, patches32), (cls16, patches16) = (forward_features(backbone, batches[0], bf16=b) for b in (False, True))

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.float(), b.float()
        return float((a - b).abs().max() / a.std())

    return {"fp32_images_per_s": n / min(times[False]), "bf16_images_per_s": n / min(times[True]),
            "bf16_speedup": min(times[False]) / min(times[True]), "fp32_seconds": times[False],
            "bf16_seconds": times[True], "cls_max_rel_error": relative(cls32, cls16),
            "patches_max_rel_error": relative(patches32, patches16)}


if __name__ == "__main__":
    main()
