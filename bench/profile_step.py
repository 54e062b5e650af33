"""Where a head step's time goes: torch.profiler over `--steps` steps of one setup, head and precision (the step of
bench/limit.py: the product's sampling, gather and `train_step`), the top ops by self CPU time with their share.

    .venv/bin/python bench/profile_step.py --setup 1 --precision bf16            # random tokens of the study's shape
    .venv/bin/python bench/profile_step.py --setup fixcritic --precision bf16 --top 15

One thread unless --threads. Prints the step's median time, then one line per op: share of self CPU time, ms per step,
calls per step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's own CUDA probe logs an ERROR line on a CPU machine
import torch
from torch.profiler import ProfilerActivity, profile

import limit  # bench/limit.py, next to this script
from twinturbo.common.device import Acceleration, host_description
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import DEFAULT_HEAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="1", help="the paper's 1-7, fix, fixcritic (bench/limit.py's SETUPS)")
    parser.add_argument("--head", default=DEFAULT_HEAD)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--tokens", default="4,320,1280", help="T,Dp,Dc of random tokens")
    parser.add_argument("--samples", type=int, default=20480)
    parser.add_argument("--widths", default="1024,256,128", help="proj,pred,disc (the study's)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = int(args.setup) if args.setup.isdigit() else args.setup
    if setup not in limit.SETUPS:
        parser.exit(2, f"error: --setup {args.setup}: expected one of {', '.join(map(str, limit.SETUPS))}\n")
    proj, pred, disc = (int(w) for w in args.widths.split(","))
    base = TrainConfig(labels=args.labels, batch_size=args.batch_size, proj_dim=proj, pred_dim=pred, disc_dim=disc)
    config = limit.setup_config(setup, base, args.precision, {"critic": 1.0, "latent": 0.1, "fixmatch": 1.0},
                                args.head)
    split = limit.load_tokens(None, args.samples, tuple(int(t) for t in args.tokens.split(",")), 10,
                              limit.reads_views([config]))
    timer = limit.StepTimer([config], split, 10, Acceleration.for_run(limit.DEVICE, args.precision))
    for _ in range(args.warmup):
        timer.step()
    times = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            start = time.perf_counter()
            timer.step()
            times.append(time.perf_counter() - start)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    host = host_description(limit.DEVICE)
    print(f"{host['cpu']} ({host['bf16_units'] or 'no bf16 units'}), torch {host['torch']}; setup {args.setup}, "
          f"head {args.head}, {args.precision}, {args.threads} thread(s): {1e3 * statistics.median(times):.1f} ms/step "
          f"under the profiler, {total / 1e3 / args.steps:.1f} ms self CPU per step")
    for event in events[:args.top]:
        print(f"  {100 * event.self_cpu_time_total / total:5.1f}%  {event.self_cpu_time_total / 1e3 / args.steps:6.2f} "
              f"ms  {event.count / args.steps:6.1f}x  {event.key}")


if __name__ == "__main__":
    main()
