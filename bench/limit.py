"""How far the head step is from what this machine can do: its peak matmul throughput, then the training step's
achieved FLOP/s for each setup and precision as a fraction of that peak, then the speed choices that could close
the gap (Acceleration), each timed against the default in the same run.

1. peak: square GEMMs (`--peak-size`) in fp32 and bf16, on 1 thread and on all (on CUDA: the card), best of
   `--peak-repeats`;
2. the step: `loop.train_step` exactly as tt-train runs it (the real sampling, distinct-sample gather, both
   optimisers, diagnostics every 10 steps) for each setup, precision and head (`--heads`), rounds interleaved, median
   step time; FLOPs counted by train/run/flops.py from each step's actual distinct samples and rows (the paper's
   head), or by torch's FLOP counter on one step (another head);
3. the choices, setup 2 in bf16 unless `--choices-setup`: K = `--fuse` runs fused (one after another, and as one
   vmap) against K separate passes; `torch.compile` of the head's forward against eager; two processes of 1 thread
   against one of 2 threads (total steps/s).

    .venv/bin/python bench/limit.py --features features/fashion-mnist            # the study's shape
    .venv/bin/python bench/limit.py --smoke                                       # tiny, run by the test suite
    .venv/bin/python bench/limit.py --setups 1,2 --heads twinturbo,mlp,cls,linear,attentive --no-choices  # per head
    .venv/bin/python bench/limit.py --setups 1,2,fix,fixcritic --no-choices      # the studies' setups (views read)
    .venv/bin/python bench/limit.py --device cuda --tokens 196,768,2304 --widths 8000,1024,500 --precisions bf16 \
        --setups 2,7 --fuse 8 --samples 8192                                      # the paper's RADIO shape (GPU)

Prints one line per figure, the fractions of peak last, and writes bench/limit.json (or --json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from twinturbo.common.device import Acceleration, host_description, native_bf16
from twinturbo.train.config import TrainConfig
from twinturbo.train.heads import DEFAULT_HEAD, HEADS, TokenShape
from twinturbo.train.run.data import SplitTensors
from twinturbo.train.run.diagnostics import GRADIENT_EVERY
from twinturbo.train.run.flops import HeadShape, StepRows, train_step_flops
from twinturbo.train.run.sampling import start_run_draws
from twinturbo.train.sweep.setups import PAPER_SETUPS, Setup, setup_key
from twinturbo.train.run.step import mask_dtype_for, step_inputs
from twinturbo.train.terms import TERMS, RowGroup, rows_needed

from head_step import HeadStep  # bench/head_step.py, next to this script

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


DEVICE = torch.device("cpu")  # --device


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def peak_gflops(size: int, dtype: torch.dtype, repeats: int, device: torch.device | None = None) -> float:
    """Best GFLOP/s of a size x size x size matmul on `device` (default: --device; on CUDA: 10 back to back per
    timing). bench/extract.py measures its peak with it too."""
    global DEVICE
    DEVICE = device or DEVICE
    a, b = torch.randn(size, size, device=DEVICE).to(dtype), torch.randn(size, size, device=DEVICE).to(dtype)
    count = 10 if DEVICE.type == "cuda" else 1
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        for _ in range(count):
            a @ b
        synchronize()
        best = min(best, (time.perf_counter() - start) / count)
    return 2 * size ** 3 / best / 1e9


# The views of random tokens (FixMatch's setups read them): the SSL study's `--views weak:2,strong:4`
RANDOM_VIEWS = {"weak": (0, 2), "strong": (2, 4)}


def load_tokens(features: str | None, samples: int, tokens: tuple[int, int, int], num_classes: int,
                views: bool = False) -> SplitTensors:
    """The train split of `features` (first `samples`, its stored views with `views`), or random fp16 tokens of
    shape `tokens` (T, Dp, Dc), with RANDOM_VIEWS of the same shape when `views`."""
    if features:
        from twinturbo.common.store import open_store
        from twinturbo.train.run.data import load_split

        with open_store(features) as store:
            split = load_split(store, "train", DEVICE, progress=False, views=views)
        n = min(samples, len(split))
        first = {name: None if getattr(split, name) is None else getattr(split, name)[:n]
                 for name in ("patch_scales", "views_cls", "views_patches", "views_patch_scales")}
        return SplitTensors(split.cls[:n], split.patches[:n], split.labels[:n], **first,
                            view_kinds=split.view_kinds if views else {})
    generator = torch.Generator().manual_seed(0)
    t, dp, dc = tokens
    count = sum(n for _, n in RANDOM_VIEWS.values()) if views else 0
    return SplitTensors(torch.randn(samples, dc, generator=generator).half(),
                        torch.randn(samples, t, dp, generator=generator).half(),
                        torch.arange(samples) % num_classes,
                        views_cls=torch.randn(samples, count, dc, generator=generator).half() if views else None,
                        views_patches=torch.randn(samples, count, t, dp, generator=generator).half() if views else None,
                        view_kinds=dict(RANDOM_VIEWS) if views else {})


def reads_views(configs: list[TrainConfig]) -> bool:
    """Whether some run's terms read a stored view (FixMatch's setups): its split must hold views."""
    return any(RowGroup.parse(g).view is not None for c in configs for g in rows_needed(c))


class StepTimer:
    """K runs of one fused pass on `split` (bench/head_step.py: the product's train_step), stepped over the batches
    of the real sampling code (step.step_inputs: epoch plan, partners, prior draws, the distinct-sample gather)."""

    def __init__(self, configs: list[TrainConfig], split: SplitTensors, num_classes: int,
                 acceleration: Acceleration, compiled: bool = False):
        first, device = configs[0], DEVICE
        self.configs, self.split = configs, split
        self.step_fn = HeadStep(configs, TokenShape(split.cls_dim, split.patch_dim, split.num_patches, num_classes),
                                device, acceleration, compiled)
        self.draws = start_run_draws(first, split.labels, num_classes, device)
        self.shape = HeadShape(split.num_patches, split.patch_dim, split.cls_dim, num_classes, first.proj_dim,
                               first.pred_dim, first.disc_dim)
        self.steps, self.plan = 0, None
        # train/run/flops.py counts the paper's head on clean rows; another head's step, or one that reads views
        # (FixMatch), is counted once by torch's FLOP counter (matrix products of forward and backward, as flops.py
        # counts them) on its first step, a warm-up step
        views = reads_views(configs)
        self.counted = None if first.head != DEFAULT_HEAD or views else 0

    def step(self) -> tuple[float, int]:
        """One step: (seconds, FLOPs of all K runs)."""
        if not self.plan:
            plan = self.split.epoch_plan(self.draws.subset, self.configs[0].batch_size, self.draws.data)
            self.plan = list(zip(plan.unlabelled, plan.labelled))
        unlabelled, labelled = self.plan.pop(0)
        synchronize()
        start = time.perf_counter()
        batch, mask = step_inputs(self.configs, self.draws, self.split, unlabelled, labelled, DEVICE,
                                  mask_dtype_for(self.step_fn.bf16))
        self.steps += 1
        if self.counted is None:
            with FlopCounterMode(display=False) as counter:
                self.step_fn(batch, self.steps % GRADIENT_EVERY == 0, mask)
            self.counted = counter.get_total_flops()
        else:
            self.step_fn(batch, self.steps % GRADIENT_EVERY == 0, mask)
        synchronize()
        seconds = time.perf_counter() - start
        if self.counted:
            return seconds, self.counted
        flops = 0
        for config in self.configs:
            needed = rows_needed(config)
            flops += train_step_flops(self.shape, StepRows(
                len(batch.cls), len(batch.rows["labelled"]),
                len(batch.rows["star"]) if "star" in needed else 0,
                len(batch.rows["unlabelled"]) if "unlabelled" in needed else 0))
        return seconds, flops


# The paper's seven and the SSL study's FixMatch setups (docs/results/fashion-mnist-ssl/study-n100.toml)
SETUPS: dict[int | str, Setup] = {**PAPER_SETUPS, "fix": Setup("fix", "cat_cross", "softmax", ("fixmatch",)),
                                  "fixcritic": Setup("fixcritic", "cat_cross", "softmax", ("critic", "fixmatch"))}


def setup_config(setup: int | str, base: TrainConfig, precision: str, weights: dict[str, float],
                 head: str = DEFAULT_HEAD) -> TrainConfig:
    """`base` as setup `setup` trains it: its loss and rescaling, each of its terms at `weights[term]`."""
    spec = SETUPS[setup]
    return replace(base, loss=spec.loss, rescale=spec.rescale, precision=precision, head=head,
                   **{TERMS[name].weight_field: weights[name] if name in spec.terms else 0.0 for name in weights})


def time_steps(timer: StepTimer, steps: int, warmup: int) -> tuple[float, float]:
    """(median seconds per step, FLOP/s over the timed steps) after `warmup` untimed steps."""
    for _ in range(warmup):
        timer.step()
    times, flops = zip(*(timer.step() for _ in range(steps)))
    return statistics.median(times), sum(flops) / sum(times)


def _process_throughput(args: tuple) -> float:
    """A worker of the processes-vs-threads figure: steps/s of `steps` steps on `threads` threads."""
    config, features, samples, tokens, num_classes, threads, steps, warmup = args
    torch.set_num_threads(threads)
    split = load_tokens(features, samples, tokens, num_classes)
    timer = StepTimer([config], split, num_classes, Acceleration.for_run(DEVICE, config.precision))
    for _ in range(warmup):
        timer.step()
    start = time.perf_counter()
    for _ in range(steps):
        timer.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--features", help="a store (its train split); default: random tokens of --tokens")
    parser.add_argument("--tokens", default="4,320,1280", help="T,Dp,Dc of random tokens (effnet-lite0:320 at 64 px)")
    parser.add_argument("--samples", type=int, default=20480, help="train samples held")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--widths", default="1024,256,128", help="proj,pred,disc (the study's)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--setups", default="1,2,4,7", help="the paper's 1-7, fix (FixMatch), fixcritic (+ critic)")
    parser.add_argument("--heads", default=DEFAULT_HEAD, help="heads of the step figures (train/heads/); a setup "
                        "with the latent term is skipped on a head without a trained latent")
    parser.add_argument("--critic", type=float, default=1.0)
    parser.add_argument("--latent", type=float, default=0.1)
    parser.add_argument("--fixmatch", type=float, default=1.0)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=1, help="threads of the step figures")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--peak-repeats", type=int, default=10)
    parser.add_argument("--choices-setup", type=int, default=2)
    parser.add_argument("--fuse", type=int, default=4)
    parser.add_argument("--no-choices", action="store_true", help="skip part 3")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile candidate")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.samples, args.widths, args.batch_size, args.labels = "2,8,12", 128, "16,8,4", 16, 10
        args.steps, args.warmup, args.rounds, args.peak_size, args.peak_repeats, args.fuse = 2, 1, 1, 64, 1, 2

    global DEVICE
    DEVICE = torch.device(args.device)
    cpus = torch.get_num_threads() if DEVICE.type == "cpu" else 1
    result: dict = {"host": host_description(DEVICE), "native_bf16": native_bf16(DEVICE), "device": str(DEVICE),
                    "cpu_threads": cpus, "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}

    # 1. the machine's peak
    peak: dict[str, dict[int, float]] = {}
    for threads in sorted({1, cpus}):
        torch.set_num_threads(threads)
        for name, dtype in DTYPES.items():
            peak.setdefault(name, {})[threads] = peak_gflops(args.peak_size, dtype, args.peak_repeats)
            print(f"peak {name} {threads} thread(s): {peak[name][threads]:.0f} GFLOP/s "
                  f"({args.peak_size}^3 matmul)", flush=True)
    result["peak_gflops"] = peak

    # 2. the step, per setup and precision
    torch.set_num_threads(args.threads)
    tokens = tuple(int(x) for x in args.tokens.split(","))
    widths = [int(x) for x in args.widths.split(",")]
    setups = [setup_key(s) for s in args.setups.split(",")]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        parser.error(f"--setups: {unknown[0]!r}, expected some of {', '.join(map(str, SETUPS))}")
    weights = {"critic": args.critic, "latent": args.latent, "fixmatch": args.fixmatch}
    views = any("fixmatch" in SETUPS[s].terms for s in setups)
    split = load_tokens(args.features, args.samples, tokens, args.num_classes, views)
    if DEVICE.type == "cuda" and split.cls.device.type != "cuda":  # held on the card, as tt-train holds a split
        split = SplitTensors(split.cls.to(DEVICE), split.patches.to(DEVICE), split.labels.to(DEVICE),
                             None if split.patch_scales is None else split.patch_scales.to(DEVICE))
    base = TrainConfig(labels=args.labels, batch_size=args.batch_size, proj_dim=widths[0], pred_dim=widths[1],
                       disc_dim=widths[2], val_labels=0)
    precisions = args.precisions.split(",")
    heads = args.heads.split(",")
    samples: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
    timers = {(s, p, h): StepTimer([setup_config(s, base, p, weights, h)], split, args.num_classes,
                                   Acceleration.for_run(DEVICE, p))
              for s in setups for p in precisions for h in heads
              if HEADS[h].latent or "latent" not in SETUPS[s].terms}
    for _ in range(args.rounds):
        for key, timer in timers.items():
            samples.setdefault(key, []).append(time_steps(timer, args.steps, args.warmup))
    steps = []
    for (setup, precision, head), values in samples.items():
        seconds = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values) / 1e9
        fraction = rate / peak[precision][min(args.threads, max(peak[precision]))]
        steps.append({"setup": setup, "precision": precision, "head": head, "ms_per_step": 1e3 * seconds,
                      "gflops": rate, "fraction_of_peak": fraction})
    result["steps"] = steps
    result["step_settings"] = {"threads": args.threads, "tokens": tokens, "widths": widths,
                               "batch_size": args.batch_size, "labels": args.labels, "weights": weights,
                               "heads": heads,
                               "features": args.features, "samples": len(split)}

    # 3. the choices
    if not args.no_choices:
        precision = "bf16" if "bf16" in precisions else precisions[0]
        config = setup_config(args.choices_setup, base, precision, weights)
        group = [replace(config, critic_weight=config.critic_weight * (1 + i)) for i in range(args.fuse)]
        default = Acceleration.for_run(DEVICE, precision)
        choices: dict[str, float] = {}
        fractions: dict[str, float] = {}
        peak_here = peak[precision][min(args.threads, max(peak[precision]))] * 1e9
        one_after_another = replace(default, batched_runs=False)
        candidates = {
            "separate": lambda: [StepTimer([c], split, args.num_classes, one_after_another) for c in group],
            "fused": lambda: [StepTimer(group, split, args.num_classes, one_after_another)],
            "fused_vmap": lambda: [StepTimer(group, split, args.num_classes, replace(default, batched_runs=True))],
            "eager": lambda: [StepTimer([config], split, args.num_classes, default)],
            "compiled": lambda: [StepTimer([config], split, args.num_classes, default, compiled=True)],
        }
        if args.no_compile:
            del candidates["compiled"]
        built = {name: make() for name, make in candidates.items()}
        for _ in range(args.rounds):  # interleaved; seconds per run-step (a fused pass's step covers K runs)
            for name, timers_of in built.items():
                per_run = len(group) if name not in ("eager", "compiled") else 1
                timed_here = [time_steps(t, args.steps, args.warmup) for t in timers_of]
                seconds = sum(median for median, _ in timed_here)
                if seconds / per_run < choices.get(name, float("inf")):
                    choices[name] = seconds / per_run
                    fractions[name] = sum(median * rate for median, rate in timed_here) / seconds / peak_here
        result["choices_ms_per_run_step"] = {k: 1e3 * v for k, v in choices.items()}
        result["choices_fraction_of_peak"] = fractions
        print(f"fused x{args.fuse} one after another vs separate: {choices['separate'] / choices['fused']:.2f}x; "
              f"fused x{args.fuse} as one vmap vs separate: {choices['separate'] / choices['fused_vmap']:.2f}x")
        if "compiled" in choices:
            print(f"torch.compile of the head's forward vs eager: {choices['eager'] / choices['compiled']:.2f}x")
        print("fraction of the " + precision + " peak: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in fractions.items()))
        if cpus >= 2:
            total_steps = 3 * args.steps
            work = (config, args.features, args.samples, tokens, args.num_classes)
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                two = sum(pool.map(_process_throughput, [work + (1, total_steps, args.warmup)] * 2))
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                one = pool.map(_process_throughput, [work + (2, total_steps, args.warmup)])[0]
            result["processes_vs_threads"] = {"two_processes_1_thread_steps_per_s": two,
                                              "one_process_2_threads_steps_per_s": one}
            print(f"2 processes x 1 thread vs 1 process x 2 threads: {two:.2f} vs {one:.2f} steps/s = {two / one:.2f}x")

    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    for row in steps:
        head = "" if row["head"] == DEFAULT_HEAD else f" ({row['head']} head)"
        print(f"setup {row['setup']}{head} {row['precision']}: {row['ms_per_step']:.1f} ms/step, {row['gflops']:.0f} "
              f"GFLOP/s = {100 * row['fraction_of_peak']:.0f}% of the {row['precision']} peak on {args.threads} "
              "thread(s)")


if __name__ == "__main__":
    main()
