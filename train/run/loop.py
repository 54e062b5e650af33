"""The training loop: K >= 1 runs that share their batches, epoch after epoch, in the manner of nanoGPT's train.py:

    for each epoch:   plan (the split's epoch_plan: a permutation in memory, a shuffle buffer over chunk order when
                      streamed, sampling.py)
        for each step:   batch = step_inputs(...)          the step's samples, partners, prior draws, dropout mask
                         record = train_step(...)           forward -> terms -> backward -> steps (train/run/step.py)
                         log every SYNC_EVERY steps          losses, NaN check, progress bar
        evaluate:        test accuracy and, with --val-labels, validation accuracy (and which samples were right)
        record:          each run's epoch record (metrics.json's `epochs`), then a copy of it to `on_epoch`
                         (the --log trackers, train/trackers/)

`tt-train` is K = 1; a fused sweep group is K runs (train/run/fused.py stacks their parameters). Every step records
train/run/diagnostics.py's figures, averaged per epoch into the metrics: they say whether a semi-supervised term still
has anything to say.

A run whose loss stops being finite is recorded with the first such step (`nonfinite_step`) and never stops the
others; training ends early only when every run has diverged, and `train` (one run, tt-train) raises then.

Randomness: generators seeded from `derived_seed(seed, stream)`: `init` (the head's construction, on the CPU), `data`
(CPU: labelled subset, per-epoch permutations, partners, prior draws, in the order of sampling.py), `dropout` (on
the training device) and `validation` (the validation split). Nothing reads the global RNG. On the CPU a run is a
function of its config (precision included), the torch thread count and its unlabelled pass (in memory or
streamed, recorded as `unlabelled_pass`), in any process and under any load; on CUDA, one of config, card and
software versions (`deterministic_algorithms`). Across CPUs of another kind it may differ in the last bits.
"""
from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from twinturbo.common.device import Acceleration, resolve_precision
from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig, derived_seed
from twinturbo.train.heads import TokenShape
from twinturbo.train.run.data import Split
from twinturbo.train.run.diagnostics import GRADIENT_EVERY, epoch_means
from twinturbo.train.run.fused import RunHeads
from twinturbo.train.run.sampling import start_run_draws, validation_subset
from twinturbo.train.run.step import LOSS_NAMES, Optimisers, autocast, mask_dtype_for, step_inputs, train_step
from twinturbo.train.terms import (TASK_LOSSES, TERMS, WEIGHT_FIELDS, RowGroup, active_terms, needs_discriminator,
                                   rows_needed)

SYNC_EVERY = 10  # steps between host syncs: the NaN check and the progress bar read losses this often
# Fields in which runs trained together may differ: the task loss, its rescaling, the terms' weights and the options
# of a term that do not change the data stream. All others shape the data stream, the schedule or the widths.
FUSED_RUN_FIELDS = ("loss", "rescale", *WEIGHT_FIELDS,
                    *(o.name for t in (*TASK_LOSSES.values(), *TERMS.values()) for o in t.options if not o.shared))


def logged_losses(config: TrainConfig) -> tuple[str, ...]:
    """The LOSS_NAMES a run computes and logs: its task loss, its active terms, the total, and D's loss with a
    discriminator."""
    active = {term.name for term in active_terms(config)}
    return tuple(n for n in LOSS_NAMES if n in ("task", "total") or n in active
                 or (n == "disc" and needs_discriminator(config)))

@torch.inference_mode()
def predict_runs(forward: Callable, split: Split, device: torch.device, batch_size: int = 1024,
                 bf16: bool = False) -> torch.Tensor:
    """Each run's predicted class for every sample of `split`: argmax of its logits without dropout, [K, N] on the
    CPU. `forward(cls, patches)` returns (z, logits) with a leading run axis [K, B, ...]."""
    predictions = []
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        cls, patches, _ = split.batch(index, device)
        with autocast(device, bf16):
            _, logits = forward(cls, patches)
        predictions.append(logits.argmax(dim=2).cpu())
    return torch.cat(predictions, dim=1)


def accuracies_of(predictions: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each run's accuracy [K] over the samples that have a label (label -1 = none)."""
    known = labels.cpu() >= 0
    hits = (predictions == labels.cpu()) & known
    return [int(h) / max(int(known.sum()), 1) for h in hits.sum(dim=1)]


def evaluate_runs(forward: Callable, split: Split, device: torch.device, batch_size: int = 1024,
                  bf16: bool = False) -> list[float]:
    """Each run's accuracy on `split` (predict_runs, then accuracies_of)."""
    return accuracies_of(predict_runs(forward, split, device, batch_size, bf16), split.labels)


def correct_bits(predictions: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Per run, which samples it classified correctly as a hex string (bit i of byte i // 8, least significant
    first): a validation split's per-sample record, from which the accuracy of any prefix can be recomputed."""
    hits = (predictions == labels.cpu()).numpy()
    return [np.packbits(row, bitorder="little").tobytes().hex() for row in hits]


@dataclass
class TrainResult:
    head: nn.Module
    metrics: dict = field(default_factory=dict)


def check_fusable(configs: list[TrainConfig]) -> None:
    """Raise ValueError unless the configs differ only in FUSED_RUN_FIELDS (a programming error in the caller)."""
    if not configs:
        raise ValueError("no runs to train")
    shared = [{k: v for k, v in c.to_dict().items() if k not in FUSED_RUN_FIELDS} for c in configs]
    for other in shared[1:]:
        if other != shared[0]:
            diff = sorted(k for k in other if other[k] != shared[0][k])
            raise ValueError(f"runs differ in {diff}: they do not see the same batches and cannot be fused")


def _nonfinite_message(step: int, values: torch.Tensor) -> str:
    names = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(LOSS_NAMES, values))
    return f"loss is not finite at step {step} ({names}); lower --lr or check the features"


def train_runs(configs: list[TrainConfig], train_split: Split, test_split: Split, num_classes: int,
               device: torch.device, progress: bool = True, acceleration: Acceleration | None = None,
               on_epoch: Callable[[int, dict], None] | None = None) -> list[TrainResult]:
    """Train K runs that differ only in FUSED_RUN_FIELDS in one pass on in-memory splits (Eq. 22, the step order of
    this module's docstring); evaluate each epoch. One TrainResult per run, in the order of `configs`.

    `on_epoch(run, record)` is called as each epoch ends, for each run (its index in `configs`), with a copy of the
    record its metrics keep: whatever it does, the run's weights and metrics stay what they would be without it."""
    for config in configs:
        config.validate()
    check_fusable(configs)
    precision = resolve_precision(configs[0].precision, device)
    accel = acceleration or Acceleration.for_run(device, precision)
    with deterministic_algorithms(device):
        return _train_runs(configs, train_split, test_split, num_classes, device, progress, accel, precision,
                           on_epoch)


@contextmanager
def deterministic_algorithms(device: torch.device):
    """Same config, device and thread count -> the same run. PyTorch's default kernels for some ops are not
    deterministic, on the CPU too: the backward of the distinct-sample gather (index_put_ with accumulate) sums a
    sample's copies in thread-timing order, and 2-thread runs of one config differed in the last bits from one
    process to the next (2 of 4). Its deterministic kernels are switched on for the run and restored after."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _train_runs(configs: list[TrainConfig], train_split: Split, test_split: Split, num_classes: int,
                device: torch.device, progress: bool, accel: Acceleration, precision: str,
                on_epoch: Callable[[int, dict], None] | None) -> list[TrainResult]:
    first, k = configs[0], len(configs)
    bf16 = precision == "bf16"
    shape = TokenShape(train_split.cls_dim, train_split.patch_dim, train_split.num_patches, num_classes)
    heads = RunHeads.build(k, shape, first, derived_seed(first.seed, "init"), device, batched=accel.batched_runs)
    optimisers = Optimisers.build(heads, first, fused=accel.fused_adamw)
    draws = start_run_draws(first, train_split.labels, num_classes, device)
    subset = draws.subset
    val_index = validation_subset(train_split.labels, first.val_labels, num_classes, subset, first.seed)
    val_split = train_split.subset(val_index) if len(val_index) else None
    steps_per_epoch = -(-len(train_split) // first.batch_size)
    read_unlabelled = any(RowGroup.parse(g).source == "unlabelled" for c in configs for g in rows_needed(c))
    states: list[dict] = [{} for _ in configs]  # what each run's terms keep from step to step

    histories: list[list[dict]] = [[] for _ in configs]
    nonfinite: list[tuple[int, torch.Tensor] | None] = [None] * k
    step = 0
    start_time = time.perf_counter()
    bar = tqdm(total=steps_per_epoch * first.epochs, desc="tt-train" if k == 1 else f"fused x{k}", unit="step",
               disable=not progress, dynamic_ncols=True, leave=k == 1)
    for epoch in range(first.epochs):
        plan = train_split.epoch_plan(subset, first.batch_size, draws.data, read_unlabelled=read_unlabelled)
        window, diagnostics, epoch_sums = [], [], torch.zeros(k, len(LOSS_NAMES), dtype=torch.float64)
        for index, (unlabelled_index, labelled_index) in enumerate(zip(plan.unlabelled, plan.labelled)):
            step += 1
            batch, mask = step_inputs(configs, draws, train_split, unlabelled_index, labelled_index, device,
                                      mask_dtype_for(bf16))
            record = train_step(heads, configs, batch, mask, optimisers, draws.prior, bf16,
                                measure_gradients=step % GRADIENT_EVERY == 0, states=states,
                                num_samples=len(train_split))
            # log: losses and NaN checks every SYNC_EVERY steps (one host sync)
            window.append(record.losses)
            diagnostics.append(record.diagnostics)
            if len(window) == SYNC_EVERY or index == len(plan) - 1:
                block = torch.stack(window).cpu().double()  # [steps, K, 5]
                for run in range(k):
                    bad = ~torch.isfinite(block[:, run]).all(dim=1)
                    if nonfinite[run] is None and bad.any():
                        offset = int(torch.nonzero(bad)[0, 0])
                        nonfinite[run] = (step - len(window) + 1 + offset, block[offset, run])
                epoch_sums += block.sum(dim=0)
                if k == 1:
                    bar.set_postfix({n: f"{float(v):.3f}" for n, v in zip(LOSS_NAMES, block[-1, 0])
                                     if n in logged_losses(first)}, refresh=False)
                bar.update(len(window))
                window = []
                if all(entry is not None for entry in nonfinite):
                    break  # every run has diverged: nothing left to train
        accuracies = evaluate_runs(heads.forward, test_split, device, first.eval_batch_size, bf16)
        if val_split is not None:
            val_predictions = predict_runs(heads.forward, val_split, device, first.eval_batch_size, bf16)
            val_accuracies = accuracies_of(val_predictions, val_split.labels)
            val_correct = correct_bits(val_predictions, val_split.labels)
        means = epoch_sums / len(plan)
        per_step = torch.stack(diagnostics)  # [steps, K, 7]
        for run, config in enumerate(configs):
            record = {"epoch": epoch + 1, "test_accuracy": accuracies[run]}
            if val_split is not None:
                record.update(val_accuracy=val_accuracies[run], val_correct=val_correct[run])
            record.update(mean_losses={n: float(v) for n, v in zip(LOSS_NAMES, means[run])
                                       if n in logged_losses(config)},
                          diagnostics=epoch_means(list(per_step[:, run])))
            histories[run].append(record)
            if on_epoch is not None:
                on_epoch(run, copy.deepcopy(record))
        if progress and k == 1:
            bar.write(f"epoch {epoch + 1}/{first.epochs}: test accuracy {accuracies[0]:.4f}  "
                      + (f"validation accuracy {val_accuracies[0]:.4f}  " if val_split is not None else "")
                      + "  ".join(f"{n} {v:.4f}" for n, v in histories[0][-1]["mean_losses"].items()))
        if all(entry is not None for entry in nonfinite):
            break
    bar.close()
    train_split.close()
    wall = time.perf_counter() - start_time
    results = []
    for run, history in enumerate(histories):
        metrics = {"test_accuracy": history[-1]["test_accuracy"], "epochs": history, "steps": step,
                   "wall_time_s": wall, "device": str(device), "threads": torch.get_num_threads(),
                   "precision": precision, "num_classes": num_classes, "fused_runs": k,
                   "train_samples": len(train_split), "test_samples": len(test_split),
                   "labelled_indices": subset.tolist(), "val_samples": len(val_index),
                   "unlabelled_pass": train_split.unlabelled_pass(first.batch_size),
                   "nonfinite_step": nonfinite[run][0] if nonfinite[run] else None,
                   "nonfinite_message": _nonfinite_message(*nonfinite[run]) if nonfinite[run] else None}
        if val_split is not None:
            metrics["val_accuracy"] = history[-1]["val_accuracy"]
        results.append(TrainResult(heads.head(run), metrics))
    return results


def train(config: TrainConfig, train_split: Split, test_split: Split, num_classes: int,
          device: torch.device, progress: bool = True, acceleration: Acceleration | None = None,
          on_epoch: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train one head (train_runs with K = 1); a loss that stops being finite is a user error naming the step."""
    (result,) = train_runs([config], train_split, test_split, num_classes, device, progress, acceleration, on_epoch)
    if result.metrics["nonfinite_step"] is not None:
        raise TwinTurboError(result.metrics["nonfinite_message"])
    return result
