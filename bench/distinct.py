"""Head step time per setup: the token mixer once per distinct sample (what tt-train does) against once per row.

With 100 labels and batch 512 the labelled rows repeat each labelled sample ~5 times and the x* partners come from the
same 100 samples, so a step has far fewer distinct samples than rows (setup 1: 100 of 512; setup 7: <= 612 of 1536).
`StepBatch.gather` reads each distinct sample once and the head runs its token mixer and projector Linear once per
distinct sample (TwinTurboHead.encode); the plain step (`plain_batch` below) gives every row its own copy. Both run
the same step of twinturbo.train.run.step, interleaved, on batches drawn by the real sampling code (a class-balanced
labelled subset of a 60k split, the epoch plan, the partners).

Tokens are random (timing does not depend on their values) in the shape of a store: --tokens T,Dp,Dc.

    .venv/bin/python bench/distinct.py --tokens 4,320,1280 --widths 1024,256,128    # effnet-lite0:320 @64 px
    .venv/bin/python bench/distinct.py --tokens 4,1280,1280 --widths 1024,256,128   # effnet-lite0 @64 px
    .venv/bin/python bench/distinct.py --device cuda --tokens 196,768,2304 --widths 8000,1024,500  # RADIO, paper

Prints one line per setup (ms per step plain / distinct, the ratio, a 5-epoch run's projected minutes) and writes
bench/distinct.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from twinturbo.common.device import resolve_device
from twinturbo.train.heads import TokenShape
from twinturbo.train.run.data import SplitTensors
from twinturbo.train.run.sampling import draw_partners, draw_prior_onehot, epoch_plan, start_run_draws
from twinturbo.train.sweep.setups import PAPER_SETUPS
from twinturbo.train.run.step import StepBatch
from twinturbo.train.sweep.grid import RunSpec

from head_step import HeadStep  # bench/head_step.py, next to this script


def plain_batch(split: SplitTensors, device: torch.device, indices: dict[str, torch.Tensor],
                real: torch.Tensor) -> StepBatch:
    """The step without the distinct-sample gather: every row of every group its own copy of its sample's tokens."""
    groups = [g for g in ("labelled", "star", "unlabelled") if g in indices]
    parts = [split.batch(indices[g], device) for g in groups]
    starts = torch.cumsum(torch.tensor([0] + [len(indices[g]) for g in groups]), 0).tolist()
    rows = {g: torch.arange(a, b, device=device) for g, a, b in zip(groups, starts[:-1], starts[1:])}
    return StepBatch(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), parts[0][2], rows, real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", default="4,320,1280", help="T,Dp,Dc of the store")
    parser.add_argument("--widths", default="1024,256,128", help="proj,pred,disc widths")
    parser.add_argument("--samples", type=int, default=60000, help="train split size (Fashion-MNIST: 60000)")
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--setups", default="1,2,5,7")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    num_patches, patch_dim, cls_dim = (int(x) for x in args.tokens.split(","))
    proj, pred, disc = (int(x) for x in args.widths.split(","))
    classes = 10
    generator = torch.Generator().manual_seed(0)
    # A resident split as tt-train holds it: fp16 tokens, int64 labels (every class 1/10 of the split).
    split = SplitTensors(torch.randn(args.samples, cls_dim, generator=generator).half(),
                         torch.randn(args.samples, num_patches, patch_dim, generator=generator).half(),
                         torch.arange(args.samples) % classes)
    steps_per_run = 5 * -(-args.samples // args.batch_size)
    results = {}
    for setup in (int(s) for s in args.setups.split(",")):
        spec = PAPER_SETUPS[setup]
        run = RunSpec(spec, tuple((term, 0.1) for term in spec.terms), args.labels, 42,
                      tuple(sorted(dict(batch_size=args.batch_size, proj_dim=proj, pred_dim=pred,
                                        disc_dim=disc).items())))
        config = run.train_config()
        draws = start_run_draws(config, split.labels, classes, device)
        plan = epoch_plan(len(split), draws.subset, args.batch_size, draws.data)
        batches = []
        for i in range(args.steps):
            labelled, unlabelled = plan.labelled[i], plan.unlabelled[i]
            star = draw_partners(draws.partners, labelled, draws.data)
            real = draw_prior_onehot(draws.prior, len(unlabelled), draws.data).to(device)
            batches.append((labelled, unlabelled if "critic" in spec.terms else None,
                            star if "latent" in spec.terms else None, real))
        step = HeadStep([config], TokenShape(cls_dim, patch_dim, num_patches, classes), device)

        def indices(labelled, unlabelled, star) -> dict[str, torch.Tensor]:
            found = {"labelled": labelled, "unlabelled": unlabelled, "star": star}
            return {g: i for g, i in found.items() if i is not None}

        def plain(labelled, unlabelled, star, real) -> StepBatch:
            return plain_batch(split, device, indices(labelled, unlabelled, star), real)

        def distinct(labelled, unlabelled, star, real) -> StepBatch:
            return StepBatch.gather(split, device, indices(labelled, unlabelled, star), real)

        def timed(make) -> float:
            step(make(*batches[0]))  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch in batches:
                step(make(*batch))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / len(batches)

        rounds = [(timed(plain), timed(distinct)) for _ in range(args.rounds)]
        plain_s = sorted(r[0] for r in rounds)[len(rounds) // 2]
        distinct_s = sorted(r[1] for r in rounds)[len(rounds) // 2]
        rows = sum(len(b[0]) + (len(b[1]) if b[1] is not None else 0) + (len(b[2]) if b[2] is not None else 0)
                   for b in batches) / len(batches)
        unique = sum(len(torch.unique(torch.cat([x for x in b[:3] if x is not None]))) for b in batches) / len(batches)
        results[setup] = {"setup": spec.name, "rows_per_step": rows, "distinct_per_step": unique,
                          "plain_ms": 1e3 * plain_s, "distinct_ms": 1e3 * distinct_s, "speedup": plain_s / distinct_s,
                          "run_minutes_distinct": steps_per_run * distinct_s / 60,
                          "run_minutes_plain": steps_per_run * plain_s / 60}
        r = results[setup]
        print(f"setup {setup} {spec.name:<36} rows {rows:6.0f} distinct {unique:6.0f}  plain {r['plain_ms']:8.1f} ms"
              f"  distinct {r['distinct_ms']:8.1f} ms  {r['speedup']:.2f}x  run {r['run_minutes_distinct']:.1f} min"
              f" (plain {r['run_minutes_plain']:.1f})", flush=True)
    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "tokens": {"num_patches": num_patches, "patch_dim": patch_dim,
                                                     "cls_dim": cls_dim},
              "widths": {"proj_dim": proj, "pred_dim": pred, "disc_dim": disc}, "labels": args.labels,
              "batch_size": args.batch_size, "steps_per_run": steps_per_run, "setups": results,
              "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
