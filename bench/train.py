"""Head-training steps/s on cached tokens against the same step with the backbone forward inside the loop.

What the two-stage design saves: without the store, every training step runs the frozen backbone on all the images
the step needs (labelled x, partners x*, unlabelled x: 3 x batch for setups 5-7). Both variants run the identical
head step of twinturbo.train.run.loop (model step, then discriminator step) in the same process on the same batch size.
The cached variant gathers its batches from tokens resident in memory (on the GPU when there is one), as tt-train does.

Also reports the head step's achieved TFLOP/s, counted by train/run/flops.py from the widths and the step's rows (every
row its own sample here), against --peak-tflops (the card's dense bf16 peak; on CPU bench/limit.py measures the peak).

    .venv/bin/python bench/train.py                                   # CPU, effnet-lite0 @64, small widths
    .venv/bin/python bench/train.py --device cuda --backbone timm:vit_base_patch16_224 --random-weights \
        --resolution 224 --paper-widths --batch-size 512 --peak-tflops 989   # H100 SXM dense bf16

Prints the ratio as its last lines and writes bench/train.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from twinturbo.common.device import resolve_device, resolve_precision
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import TokenShape
from twinturbo.train.run.data import SplitTensors
from twinturbo.train.run.flops import HeadShape, StepRows, train_step_flops
from twinturbo.train.run.step import StepBatch, autocast

from head_step import HeadStep  # bench/head_step.py, next to this script


def build_backbone(spec: str, resolution: int, random_weights: bool):
    """The extraction backbone; `--random-weights` builds a timm model without weights (timing only, offline)."""
    if random_weights and spec.startswith("timm:"):
        import timm

        model = timm.create_model(spec[5:], pretrained=False, num_classes=0, img_size=resolution).eval()
        prefix = getattr(model, "num_prefix_tokens", 1)

        class RandomTimm(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, images):
                tokens = self.model.forward_features(images)
                return tokens[:, 0], tokens[:, prefix:]

        backbone = RandomTimm()
        for p in backbone.parameters():
            p.requires_grad_(False)
        return backbone
    from twinturbo.extract.backbones import BackboneOptions, build_backbone as build

    return build(spec, BackboneOptions(resolution=resolution))


def timed(step_fn, steps: int, warmup: int, device: torch.device) -> float:
    """Steps per second of `step_fn(i)` after `warmup` untimed steps."""
    for i in range(warmup):
        step_fn(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step_fn(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="effnet-lite0")
    parser.add_argument("--random-weights", action="store_true", help="timm backbones: no weights (timing only)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=1024, help="resident cached split size")
    parser.add_argument("--steps", type=int, default=20, help="timed cached steps")
    parser.add_argument("--backbone-steps", type=int, default=3, help="timed steps with the backbone inside")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--proj-dim", type=int, default=512)
    parser.add_argument("--pred-dim", type=int, default=256)
    parser.add_argument("--disc-dim", type=int, default=128)
    parser.add_argument("--paper-widths", action="store_true", help="8000 / 1024 / 500 (overrides the three above)")
    parser.add_argument("--critic", type=float, default=0.1, help="lambda_C (setup 7 by default: every term on)")
    parser.add_argument("--latent", type=float, default=0.1)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for the utilisation figure")
    parser.add_argument("--compile", action="store_true", help="torch.compile the head (GPU)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    device = resolve_device(args.device)
    widths = (8000, 1024, 500) if args.paper_widths else (args.proj_dim, args.pred_dim, args.disc_dim)
    config = TrainConfig(loss="bin_cross", rescale="sigmoid", critic_weight=args.critic, latent_weight=args.latent,
                         batch_size=args.batch_size, proj_dim=widths[0], pred_dim=widths[1], disc_dim=widths[2],
                         precision=resolve_precision("auto", device))
    bf16 = config.precision == "bf16"
    backbone = build_backbone(args.backbone, args.resolution, args.random_weights).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.samples, 3, args.resolution, args.resolution, generator=generator)
    labels = torch.arange(args.samples) % args.num_classes

    def tokens_of(image_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), autocast(device, bf16):
            cls, patches = backbone(image_batch.to(device, non_blocking=True))
        return cls.float(), patches.float()

    # The store's content, resident: fp16 tokens of every sample (what tt-train's load_split holds).
    cls_parts, patch_parts = [], []
    for start in range(0, args.samples, args.batch_size):
        cls, patches = tokens_of(images[start:start + args.batch_size])
        cls_parts.append(cls.half())
        patch_parts.append(patches.half())
    resident = SplitTensors(torch.cat(cls_parts), torch.cat(patch_parts), labels.to(device))
    cls_dim, (num_patches, patch_dim) = resident.cls.shape[1], resident.patches.shape[1:]

    step = HeadStep([config], TokenShape(cls_dim, patch_dim, num_patches, args.num_classes), device,
                    compiled=args.compile)
    real = torch.eye(args.num_classes, device=device)[torch.arange(args.batch_size) % args.num_classes]

    def batch_of(parts: dict[str, tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor) -> StepBatch:
        """Every row its own sample: groups laid end to end, labelled first."""
        groups = [g for g in ("labelled", "star", "unlabelled") if g in parts]
        starts = torch.cumsum(torch.tensor([0] + [len(parts[g][0]) for g in groups]), 0).tolist()
        rows = {g: torch.arange(a, b, device=device) for g, a, b in zip(groups, starts[:-1], starts[1:])}
        return StepBatch(torch.cat([parts[g][0] for g in groups]), torch.cat([parts[g][1] for g in groups]), labels,
                         rows, real)

    def index_of(i: int, part: int) -> torch.Tensor:
        start = ((3 * i + part) * args.batch_size) % (args.samples - args.batch_size + 1)
        return torch.arange(start, start + args.batch_size)

    groups = {"labelled": 0, **({"star": 1} if config.latent_weight > 0 else {}),
              **({"unlabelled": 2} if config.critic_weight > 0 else {})}

    def cached_step(i: int) -> None:
        parts = {g: resident.batch(index_of(i, part), device) for g, part in groups.items()}
        step(batch_of({g: p[:2] for g, p in parts.items()}, parts["labelled"][2]))

    def backbone_step(i: int) -> None:
        parts = {g: tokens_of(images[index_of(i, part)]) for g, part in groups.items()}
        step(batch_of(parts, labels[index_of(i, 0)].to(device)))

    cached = timed(cached_step, args.steps, args.warmup_steps, device)
    with_backbone = timed(backbone_step, args.backbone_steps, min(args.warmup_steps, 1), device)
    rows = StepRows(args.batch_size * len(groups), args.batch_size, args.batch_size if "star" in groups else 0,
                    args.batch_size if "unlabelled" in groups else 0)
    flops = train_step_flops(HeadShape(num_patches, patch_dim, cls_dim, args.num_classes, *widths), rows)
    tflops = flops * cached / 1e12
    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "backbone": args.backbone, "resolution": args.resolution,
        "batch_size": args.batch_size, "tokens": {"cls_dim": cls_dim, "num_patches": num_patches,
                                                   "patch_dim": patch_dim},
        "widths": dict(zip(("proj_dim", "pred_dim", "disc_dim"), widths)),
        "loss_terms": {"critic": args.critic, "latent": args.latent}, "compile": args.compile,
        "precision": config.precision,
        "cached_steps_per_s": cached, "backbone_in_loop_steps_per_s": with_backbone,
        "speedup_cached_vs_backbone": cached / with_backbone,
        "head_step_gflop": flops / 1e9, "achieved_tflops": tflops, "peak_tflops": args.peak_tflops,
        "utilisation": tflops / args.peak_tflops if args.peak_tflops > 0 else None,
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"head step: {flops / 1e9:.1f} GFLOP, {tflops:.3f} TFLOP/s achieved"
          + (f" = {100 * result['utilisation']:.1f}% of {args.peak_tflops:g} peak" if args.peak_tflops > 0 else ""))
    print(f"cached tokens:      {cached:8.2f} steps/s")
    print(f"backbone in loop:   {with_backbone:8.2f} steps/s")
    print(f"speedup cached / backbone-in-loop: {cached / with_backbone:.1f}x  (wrote {args.json})")


if __name__ == "__main__":
    main()
