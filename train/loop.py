"""The training loop: Eq. 22 on cached tokens for K >= 1 runs that share their batches, the discriminator's step
after the model's. `tt-train` is K = 1; a fused sweep group is K runs (train/heads.py stacks their parameters).

Order of one step t (all draws are made every step, whatever the weights, so runs of one seed see the same data):

    1. batch      unlabelled indices U_t and labelled indices L_t from the epoch plan (the split's epoch_plan: a
                  permutation in memory, a shuffle buffer over chunk order when streamed, sampling.py);
                  from the data generator: x* partners of L_t (draw_partners), then |U_t| prior one-hots (real y);
                  StepBatch.gather reads each distinct sample of the step once
    2. masks      one dropout keep-mask [3B, P] from the dropout generator: rows [0,B) labelled, [B,2B) x*, [2B,3B)
                  unlabelled (B = |L_t| = |U_t|)
    3. model      every run's head on the active rows (forward_rows), then each run's terms (step_losses):
                  total = task + lambda_C * critic + lambda_L * latent   (a term with weight 0 is not computed)
                  model_opt.zero_grad; sum of the runs' totals .backward(); model_opt.step()   (D is read, not updated)
    4. critic     when some run has lambda_C > 0: fake = sigma(f_U).detach() from step 3's forward (pre-update model)
                  d_loss = -Eq.20 = -critic(D(real), D(fake)) per run;  disc_opt.zero_grad; backward; step
    5. schedule   both LambdaLR schedulers step (linear warm-up, Appendix B)

Every step also records train/diagnostics.py's figures (D's accuracy on real and fake, the entropy and marginal of
the unlabelled predictions; every GRADIENT_EVERY steps each term's gradient norm at the projector), averaged per
epoch into the metrics: they say whether a semi-supervised term still has anything to say.

A run whose loss stops being finite is recorded with the first such step (`nonfinite_step`) and never stops the
others; training ends early only when every run has diverged, and `train` (one run, tt-train) raises then.

Randomness: three generators seeded from `derived_seed(seed, stream)`: `init` (the head's construction, on the CPU),
`data` (CPU: labelled subset, per-epoch permutations, partners, prior draws, in the order of sampling.py) and
`dropout` (on the training device). Nothing reads the global RNG. Two AdamW optimisers (model = mixer + projector +
predictor; discriminator), same schedule, no gradient clipping. On the CPU a run is a function of its config, the
torch thread count and its unlabelled pass (in memory or streamed, recorded as `unlabelled_pass`), in any process and
under any load; on CUDA, one of config, card and software versions (`deterministic_algorithms`). Across CPUs of
another kind it may differ in the last bits.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from twinturbo.common.device import Acceleration, resolve_precision
from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig, derived_seed
from twinturbo.train.data import Split
from twinturbo.train.diagnostics import GRADIENT_EVERY, critic_figures, epoch_means, term_gradient_norms
from twinturbo.train.heads import RunHeads
from twinturbo.train.losses import critic, critic_nonsaturating, get_task_loss, latent_infonce, log_rescale
from twinturbo.train.model import TwinTurboHead, draw_dropout_mask
from twinturbo.train.sampling import (RunDraws, draw_partners, draw_prior_onehot, start_run_draws,
                                      validation_subset)

LOSS_NAMES = ("task", "critic", "latent", "total", "disc")
SYNC_EVERY = 10  # steps between host syncs: the NaN check and the progress bar read losses this often
# Fields in which runs trained together may differ; all others shape the data stream, the schedule or the widths.
PER_RUN_FIELDS = ("loss", "rescale", "critic_weight", "latent_weight", "temperature", "critic_form")

@dataclass
class StepBatch:
    """The inputs of one step on the training device: each distinct sample's tokens once (float32 `cls`, `patches`),
    and per part of the step the rows that read them (`labelled_rows` with `labels`, `unlabelled_rows`, `star_rows`
    for x*; the last two None when their term is off). `real` holds the critic's one-hot draws from p(y).

    With 100 labels and batch 512 the labelled rows repeat each labelled sample ~5 times and x* is drawn from the
    same samples, so a setup-7 step of 1536 rows has at most 612 distinct samples.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    labels: torch.Tensor
    labelled_rows: torch.Tensor
    unlabelled_rows: torch.Tensor | None = None
    star_rows: torch.Tensor | None = None
    real: torch.Tensor | None = None

    @classmethod
    def gather(cls, split: Split, device: torch.device, labelled_index: torch.Tensor,
               unlabelled_index: torch.Tensor | None = None, star_index: torch.Tensor | None = None,
               real: torch.Tensor | None = None) -> "StepBatch":
        """Read the distinct samples of a step's index lists from `split` once each."""
        parts = [index for index in (labelled_index, unlabelled_index, star_index) if index is not None]
        distinct, rows = torch.unique(torch.cat(parts), return_inverse=True)
        tokens_cls, tokens_patches, labels = split.batch(distinct, device)
        rows = rows.to(device).split([len(index) for index in parts])
        labelled_rows, rows = rows[0], list(rows[1:])
        return cls(tokens_cls, tokens_patches, labels[labelled_rows], labelled_rows,
                   rows.pop(0) if unlabelled_index is not None else None,
                   rows.pop(0) if star_index is not None else None, real)

    @classmethod
    def from_tensors(cls, labelled_cls: torch.Tensor, labelled_patches: torch.Tensor, labels: torch.Tensor,
                     unlabelled_cls: torch.Tensor, unlabelled_patches: torch.Tensor,
                     star_cls: torch.Tensor | None = None, star_patches: torch.Tensor | None = None,
                     real: torch.Tensor | None = None) -> "StepBatch":
        """A batch from one tensor per part (every row its own sample; x* may be None)."""
        token_cls = [labelled_cls, unlabelled_cls] + ([star_cls] if star_cls is not None else [])
        token_patches = [labelled_patches, unlabelled_patches] + ([star_patches] if star_patches is not None else [])
        starts = torch.cumsum(torch.tensor([0] + [len(t) for t in token_cls]), 0).tolist()
        rows = [torch.arange(a, b, device=labels.device) for a, b in zip(starts[:-1], starts[1:])]
        return cls(torch.cat(token_cls), torch.cat(token_patches), labels, rows[0], rows[1],
                   rows[2] if star_cls is not None else None, real)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast of the head when the run's precision is bf16 (its losses are computed in float32 regardless)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def forward_rows(forward: Callable, batch: StepBatch, dropout_mask: torch.Tensor, with_star: bool,
                 with_unlabelled: bool, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, logits) in float32 of the step's rows: labelled [0, B), then x* [B, 2B) when `with_star`, then the
    unlabelled rows when `with_unlabelled`; `forward` is a head's (or K stacked heads') forward.

    `dropout_mask` is [3B, P] (labelled, x*, unlabelled rows). The token mixer and projector Linear run once per
    distinct sample (TwinTurboHead.encode): every op of the head acts per sample, so this equals separate forwards
    up to float summation order.
    """
    size = len(batch.labels)
    parts_rows, parts_mask = [batch.labelled_rows], [dropout_mask[:size]]
    if with_star:
        parts_rows.append(batch.star_rows)
        parts_mask.append(dropout_mask[size:2 * size])
    if with_unlabelled:
        parts_rows.append(batch.unlabelled_rows)
        parts_mask.append(dropout_mask[2 * size:2 * size + len(batch.unlabelled_rows)])
    with autocast(batch.labels.device, bf16):
        z, logits = forward(batch.cls, batch.patches, torch.cat(parts_mask), rows=torch.cat(parts_rows))
    return z.float(), logits.float()


def step_losses(z: torch.Tensor, logits: torch.Tensor, batch: StepBatch, config: TrainConfig,
                discriminator: Callable) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One run's terms of Eq. 22 from its rows of `forward_rows`, and the detached sigma(f) of the unlabelled batch
    (None without critic). Returns ({task, critic, latent, total}, fake); a term with weight 0 is not computed and
    reads 0."""
    size = len(batch.labels)
    zero = torch.zeros((), device=logits.device)
    losses = {"task": get_task_loss(config.loss)(logits[:size], batch.labels, config.rescale),
              "critic": zero, "latent": zero}
    total = losses["task"]
    fake = None
    if config.latent_weight > 0:
        losses["latent"] = latent_infonce(z[:size], z[size:2 * size], config.temperature)
        total = total + config.latent_weight * losses["latent"]
    if config.critic_weight > 0:
        fake = log_rescale(logits[-len(batch.unlabelled_rows):], config.rescale).exp()
        fake_logits = discriminator(fake)
        if config.critic_form == "nonsaturating":
            losses["critic"] = critic_nonsaturating(fake_logits)
        else:
            losses["critic"] = critic(discriminator(batch.real), fake_logits)
        total = total + config.critic_weight * losses["critic"]
        fake = fake.detach()
    losses["total"] = total
    return losses, fake


def model_losses(head: TwinTurboHead, batch: StepBatch, dropout_mask: torch.Tensor,
                 config: TrainConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Eq. 22's model terms of one head on one step (forward_rows, then step_losses)."""
    z, logits = forward_rows(head, batch, dropout_mask, config.latent_weight > 0, config.critic_weight > 0)
    return step_losses(z, logits, batch, config, head.discriminator)


def discriminator_loss(discriminator: Callable, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-Eq. 20: the discriminator maximises the critic value, so it minimises its negative."""
    return -critic(discriminator(real), discriminator(fake))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up from `warmup_start_factor` to 1 over `warmup_steps` optimiser steps, then constant (App. B)."""
    if step >= config.warmup_steps:
        return 1.0
    return config.warmup_start_factor + (1.0 - config.warmup_start_factor) * step / config.warmup_steps


def make_optimisers(model_parameters: list[torch.Tensor], discriminator_parameters: list[torch.Tensor],
                    config: TrainConfig, fused: bool = False):
    """Two AdamW (model, discriminator) with the same warm-up schedule; `fused` picks AdamW's fused kernel."""
    model_opt = torch.optim.AdamW(model_parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    disc_opt = torch.optim.AdamW(discriminator_parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, config))
                 for opt in (model_opt, disc_opt)]
    return model_opt, disc_opt, schedules


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


def evaluate(head: TwinTurboHead, split: Split, device: torch.device, batch_size: int = 1024) -> float:
    """One head's test accuracy (see evaluate_runs)."""
    def forward(cls: torch.Tensor, patches: torch.Tensor):
        z, logits = head(cls, patches)
        return z.unsqueeze(0), logits.unsqueeze(0)

    return evaluate_runs(forward, split, device, batch_size)[0]


@dataclass
class TrainResult:
    head: TwinTurboHead
    metrics: dict = field(default_factory=dict)


def check_fusable(configs: list[TrainConfig]) -> None:
    """Raise ValueError unless the configs differ only in PER_RUN_FIELDS (a programming error in the caller)."""
    if not configs:
        raise ValueError("no runs to train")
    shared = [{k: v for k, v in c.to_dict().items() if k not in PER_RUN_FIELDS} for c in configs]
    for other in shared[1:]:
        if other != shared[0]:
            diff = sorted(k for k in other if other[k] != shared[0][k])
            raise ValueError(f"runs differ in {diff}: they do not see the same batches and cannot be fused")


def _nonfinite_message(step: int, values: torch.Tensor) -> str:
    names = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(LOSS_NAMES, values))
    return f"loss is not finite at step {step} ({names}); lower --lr or check the features"


def train_runs(configs: list[TrainConfig], train_split: Split, test_split: Split, num_classes: int,
               device: torch.device, progress: bool = True,
               acceleration: Acceleration | None = None) -> list[TrainResult]:
    """Train K runs that differ only in PER_RUN_FIELDS in one pass on in-memory splits (Eq. 22, the step order of
    this module's docstring); evaluate each epoch. One TrainResult per run, in the order of `configs`."""
    for config in configs:
        config.validate()
    check_fusable(configs)
    precision = resolve_precision(configs[0].precision, device)
    accel = acceleration or Acceleration.for_run(device, precision)
    with deterministic_algorithms(device):
        return _train_runs(configs, train_split, test_split, num_classes, device, progress, accel, precision)


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


@dataclass
class Optimisers:
    """The two AdamW of a pass (model: every run's mixer, projector, predictor; discriminator) and their schedules."""

    model: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer
    schedules: list


@dataclass
class StepRecord:
    """What one step leaves for the log: per run the LOSS_NAMES values [K, 5] and the diagnostics [K, 7]
    (train/diagnostics.py; NaN where not measured this step)."""

    losses: torch.Tensor
    diagnostics: torch.Tensor


def step_inputs(configs: list[TrainConfig], draws: RunDraws, split: Split, unlabelled_index: torch.Tensor,
                labelled_index: torch.Tensor, device: torch.device) -> tuple[StepBatch, torch.Tensor]:
    """Steps 1-2 of the module docstring: from the data stream the x* partners, then the prior's one-hots; each
    distinct sample of the step read once; then the dropout keep-mask from the dropout stream."""
    first = configs[0]
    any_critic = any(c.critic_weight > 0 for c in configs)
    any_latent = any(c.latent_weight > 0 for c in configs)
    star_index = draw_partners(draws.partners, labelled_index, draws.data)
    real = draw_prior_onehot(draws.prior, len(unlabelled_index), draws.data).to(device)
    batch = StepBatch.gather(split, device, labelled_index, unlabelled_index if any_critic else None,
                             star_index if any_latent else None, real)
    split.consumed(unlabelled_index)  # a streamed split refills its shuffle buffer
    mask = draw_dropout_mask((3 * len(batch.labels), first.proj_dim), first.dropout, draws.dropout, device)
    return batch, mask


def train_step(heads: RunHeads, configs: list[TrainConfig], batch: StepBatch, dropout_mask: torch.Tensor,
               optimisers: Optimisers, prior: torch.Tensor, bf16: bool, measure_gradients: bool) -> StepRecord:
    """One step of K runs on one batch (steps 3-5 of the module docstring): forward, Eq. 22's terms, the model's
    backward and step, the discriminator's step on the pre-update predictions, the schedules."""
    k, device = len(configs), dropout_mask.device
    any_critic = any(c.critic_weight > 0 for c in configs)
    any_latent = any(c.latent_weight > 0 for c in configs)
    # forward: every run's head on the rows its terms read
    z, logits = forward_rows(heads.forward, batch, dropout_mask, any_latent, any_critic, bf16)
    # terms: Eq. 22 per run
    run_losses = [step_losses(z[run], logits[run], batch, config, partial(heads.discriminator, run))
                  for run, config in enumerate(configs)]
    gradient_norms = [torch.full((3,), math.nan, device=device)] * k
    if measure_gradients:
        gradient_norms = [term_gradient_norms(losses, {"task": 1.0, "critic": c.critic_weight,
                                                       "latent": c.latent_weight}, heads.shared_weight())
                          for (losses, _), c in zip(run_losses, configs)]
    # backward and the model's step (D is read, not updated)
    optimisers.model.zero_grad(set_to_none=True)
    torch.stack([losses["total"] for losses, _ in run_losses]).sum().backward()
    optimisers.model.step()
    # the critic's step: D ascends Eq. 20 on the same real draws and the pre-update model's predictions
    disc_values, figures = [torch.zeros((), device=device)] * k, [torch.full((4,), math.nan, device=device)] * k
    if any_critic:
        optimisers.discriminator.zero_grad(set_to_none=True)  # drops what the model's backward left on D
        for run, (_, fake) in enumerate(run_losses):
            if fake is not None:
                real_logits, fake_logits = heads.discriminator(run, batch.real), heads.discriminator(run, fake)
                disc_values[run] = -critic(real_logits, fake_logits)  # = discriminator_loss(D, real, fake)
                figures[run] = critic_figures(real_logits.detach(), fake_logits.detach(), fake, prior)
        torch.stack(disc_values).sum().backward()
        optimisers.discriminator.step()
    # schedules (the discriminator's only advances when it trains, i.e. for every step or never)
    optimisers.schedules[0].step()
    if any_critic:
        optimisers.schedules[1].step()
    losses = torch.stack([torch.stack([losses[n].detach().float() for n in LOSS_NAMES[:4]] + [disc.detach()])
                          for (losses, _), disc in zip(run_losses, disc_values)])
    return StepRecord(losses, torch.stack([torch.cat([f, g]) for f, g in zip(figures, gradient_norms)]))


def _train_runs(configs: list[TrainConfig], train_split: Split, test_split: Split, num_classes: int,
                device: torch.device, progress: bool, accel: Acceleration, precision: str) -> list[TrainResult]:
    first, k = configs[0], len(configs)
    bf16 = precision == "bf16"
    heads = RunHeads.build(k, train_split.cls_dim, train_split.patch_dim, num_classes, first.proj_dim,
                           first.pred_dim, first.disc_dim, derived_seed(first.seed, "init"), device,
                           batched=accel.batched_runs)
    optimisers = Optimisers(*make_optimisers(heads.model_parameters(), heads.discriminator_parameters(), first,
                                             fused=accel.fused_adamw))
    draws = start_run_draws(first, train_split.labels, num_classes, device)
    subset = draws.subset
    val_index = validation_subset(train_split.labels, first.val_labels, num_classes, subset, first.seed)
    val_split = train_split.subset(val_index) if len(val_index) else None
    steps_per_epoch = -(-len(train_split) // first.batch_size)
    any_critic = any(c.critic_weight > 0 for c in configs)

    histories: list[list[dict]] = [[] for _ in configs]
    nonfinite: list[tuple[int, torch.Tensor] | None] = [None] * k
    step = 0
    start_time = time.perf_counter()
    bar = tqdm(total=steps_per_epoch * first.epochs, desc="tt-train" if k == 1 else f"fused x{k}", unit="step",
               disable=not progress, dynamic_ncols=True, leave=k == 1)
    for epoch in range(first.epochs):
        plan = train_split.epoch_plan(subset, first.batch_size, draws.data, read_unlabelled=any_critic)
        window, diagnostics, epoch_sums = [], [], torch.zeros(k, len(LOSS_NAMES), dtype=torch.float64)
        for index, (unlabelled_index, labelled_index) in enumerate(zip(plan.unlabelled, plan.labelled)):
            step += 1
            batch, mask = step_inputs(configs, draws, train_split, unlabelled_index, labelled_index, device)
            record = train_step(heads, configs, batch, mask, optimisers, draws.prior, bf16,
                                measure_gradients=step % GRADIENT_EVERY == 0)
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
                                     if n in active_terms(first)}, refresh=False)
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
            record.update(mean_losses={n: float(v) for n, v in zip(LOSS_NAMES, means[run]) if n in active_terms(config)},
                          diagnostics=epoch_means(list(per_step[:, run])))
            histories[run].append(record)
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
          device: torch.device, progress: bool = True, acceleration: Acceleration | None = None) -> TrainResult:
    """Train one head (train_runs with K = 1); a loss that stops being finite is a user error naming the step."""
    (result,) = train_runs([config], train_split, test_split, num_classes, device, progress, acceleration)
    if result.metrics["nonfinite_step"] is not None:
        raise TwinTurboError(result.metrics["nonfinite_message"])
    return result


def active_terms(config: TrainConfig) -> tuple[str, ...]:
    """Names of the loss values a run computes (and logs): weight-0 terms are absent."""
    names = ["task"]
    if config.critic_weight > 0:
        names.append("critic")
    if config.latent_weight > 0:
        names.append("latent")
    names.append("total")
    if config.critic_weight > 0:
        names.append("disc")
    return tuple(names)
