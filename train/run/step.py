"""One training step of K >= 1 runs that share their batches: batch -> forward -> terms -> backward -> steps.

    1. batch      (step_inputs) from the data generator: x* partners of the labelled indices (draw_partners), then
                  |U| prior one-hots (real y), drawn every step whatever the weights, so runs of one seed see the same
                  data; a view group (e.g. unlabelled:strong) draws one stored view per row and its own dropout mask
                  from its own streams; StepBatch.gather reads each distinct sample (and view) of the step once; one
                  dropout keep-mask [3B, P] from the dropout generator: rows [0,B) labelled, [B,2B) x*, [2B,3B)
                  unlabelled
    2. forward    (train_step) every run's head on the row groups some run's terms read (forward_rows)
    3. terms      per run, Eq. 22: total = task + sum of lambda_t * term_t over its active terms (train/terms/, a term
                  of weight 0 is not computed), in the terms' summation order
    4. backward   model optimiser: zero_grad; the sum of the runs' totals .backward(); step   (D is read, not updated)
    5. critic     when a run has a term that needs the discriminator: fake = sigma(f_U).detach() from step 2's forward
                  (pre-update model); D's loss = -Eq. 20 = -critic(D(real), D(fake)) per run; zero_grad; backward; step
    6. schedules  both LambdaLR schedules step (linear warm-up, Appendix B)

The step also records train/run/diagnostics.py's figures (D's accuracy on real and fake, the entropy and marginal of the
unlabelled predictions; when asked, each term's gradient norm at the projector).

Two AdamW optimisers (model = mixer + projector + predictor; discriminator), same schedule, no gradient clipping. The
paper gives the learning rate, batch and warm-up (Appendix B); the optimiser, AdamW with weight decay on every
parameter, is ours.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from twinturbo.train.config import TrainConfig
from twinturbo.train.run.data import Split
from twinturbo.train.run.diagnostics import critic_figures, term_gradient_norms
from twinturbo.train.run.fused import RunHeads
from twinturbo.train.losses import critic
from twinturbo.train.heads.blocks import draw_dropout_mask
from twinturbo.train.run.sampling import RunDraws, draw_partners, draw_prior_onehot, draw_views
from twinturbo.train.terms import (DISPLAY_ORDER, ROW_SOURCES, TASK_LOSSES, RowGroup, StepView, active_terms,
                                   group_order, rows_needed)

# The losses a step records per run, [K, len(LOSS_NAMES)]: the task loss, each additive term, Eq. 22's total, D's loss.
LOSS_NAMES = ("task", *(term.name for term in DISPLAY_ORDER), "total", "disc")


@dataclass
class StepBatch:
    """The inputs of one step on the training device: each distinct sample's tokens once (float32 `cls`, `patches`;
    a sample seen through one of its stored views is another distinct sample), and per row group (terms.RowGroup)
    the rows that read them, `rows[group]`; `labels` are the labelled rows'. `real` holds the critic's one-hot draws
    from p(y); `indices[group]` which train samples each group's rows are; `view_masks[group]` the dropout
    keep-mask of each view group (the clean groups' come from the step's [3B, P] mask).

    With 100 labels and batch 512 the labelled rows repeat each labelled sample ~5 times and x* is drawn from the
    same samples, so a step of 1536 rows (every clean group) has at most 612 distinct samples.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    labels: torch.Tensor
    rows: dict[str, torch.Tensor]
    real: torch.Tensor | None = None
    indices: dict[str, torch.Tensor] = field(default_factory=dict)
    view_masks: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def gather(cls, split: Split, device: torch.device, indices: dict[str, torch.Tensor],
               real: torch.Tensor | None = None, views: dict[str, torch.Tensor] | None = None,
               view_masks: dict[str, torch.Tensor] | None = None) -> "StepBatch":
        """Read the distinct (sample, view) pairs of a step's index lists (by row group; `labelled` required; a
        view group's `views[group]` are stored view indices, one per row) once each."""
        groups, views = group_order(indices), views or {}
        stride = 1 + split_view_count(split)  # (sample, view) -> sample * stride + view + 1; clean: view + 1 = 0
        keys = torch.cat([indices[g] * stride + (views[g] + 1 if g in views else 0) for g in groups])
        distinct, rows = torch.unique(keys, return_inverse=True)
        samples, sample_views = distinct // stride, distinct % stride - 1
        tokens_cls, tokens_patches, labels = split.batch(samples, device, sample_views if views else None)
        rows = dict(zip(groups, rows.to(device).split([len(indices[g]) for g in groups])))
        return cls(tokens_cls, tokens_patches, labels[rows["labelled"]], rows, real, dict(indices),
                   dict(view_masks or {}))


def split_view_count(split: Split) -> int:
    """How many views per sample a split holds (0: clean tokens only)."""
    return sum(count for _, count in split.view_kinds.values())


def step_inputs(configs: list[TrainConfig], draws: RunDraws, split: Split, unlabelled_index: torch.Tensor,
                labelled_index: torch.Tensor, device: torch.device,
                mask_dtype: torch.dtype = torch.float32) -> tuple[StepBatch, torch.Tensor]:
    """Step 1: the partners and prior draws from the data stream, the batch of the row groups some run reads, the
    dropout keep-mask of the clean groups from the dropout stream; each view group draws its views and its mask
    from its own two streams (sampling.RunDraws.view_streams), so a run's draws do not depend on its fused partners.
    The masks are in `mask_dtype`, the head's compute dtype (mask_dtype_for)."""
    first, needed = configs[0], frozenset().union(*(rows_needed(c) for c in configs))
    star_index = draw_partners(draws.partners, labelled_index, draws.data)
    real = draw_prior_onehot(draws.prior, len(unlabelled_index), draws.data).to(device)
    sources = {"labelled": labelled_index, "star": star_index, "unlabelled": unlabelled_index}
    indices, views, view_masks = {}, {}, {}
    for name in group_order(needed | {"labelled"}):
        group = RowGroup.parse(name)
        indices[name] = sources[group.source]
        if group.view is not None:
            choices, dropout = draws.view_streams(name, device)
            views[name] = draw_views(split.view_kinds, group.view, len(indices[name]), choices)
            view_masks[name] = draw_dropout_mask((len(indices[name]), first.proj_dim), first.dropout, dropout, device,
                                                 mask_dtype)
    batch = StepBatch.gather(split, device, indices, real, views, view_masks)
    split.consumed(unlabelled_index)  # a streamed split refills its shuffle buffer
    mask = draw_dropout_mask((3 * len(batch.labels), first.proj_dim), first.dropout, draws.dropout, device, mask_dtype)
    return batch, mask


def mask_dtype_for(bf16: bool) -> torch.dtype:
    """The dtype of the dropout masks: the projector's output dtype (bf16 under bf16 autocast, else float32)."""
    return torch.bfloat16 if bf16 else torch.float32


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast of the head when the run's precision is bf16 (its losses are computed in float32 regardless)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def forward_rows(forward: Callable, batch: StepBatch, dropout_mask: torch.Tensor,
                 bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, slice]]:
    """(z, logits, where) in float32 of the step's rows, its groups in terms.group_order (`where[group]` slices them
    out of the row axis); `forward` is a head's or K stacked heads' forward.

    `dropout_mask` is [3B, P] (labelled, x*, unlabelled rows); view groups bring their own (`batch.view_masks`).
    The token mixer and projector Linear run once per distinct sample (TwinTurboHead.encode): every op of the head
    acts per sample, so this equals separate forwards up to float summation order.
    """
    size = len(batch.labels)
    where, masks, start = {}, [], 0
    for name in group_order(batch.rows):
        group, rows = RowGroup.parse(name), len(batch.rows[name])
        where[name] = slice(start, start + rows)
        start += rows
        if group.view is None:
            offset = ROW_SOURCES.index(group.source) * size
            masks.append(dropout_mask[offset:offset + rows])
        else:
            masks.append(batch.view_masks[name])
    with autocast(batch.labels.device, bf16):
        z, logits = forward(batch.cls, batch.patches, torch.cat(masks),
                            rows=torch.cat([batch.rows[g] for g in where]))
    return z.float(), logits.float(), where


def step_views(configs: list[TrainConfig], batch: StepBatch, z: torch.Tensor, logits: torch.Tensor,
               where: dict[str, slice], discriminator: Callable[[int, torch.Tensor], torch.Tensor],
               states: list[dict] | None = None, num_samples: int = 0) -> list[StepView]:
    """Per run, its outputs by row group (forward_rows' [K, R, ...] split by `where`) as its terms read them;
    `discriminator(run, probs)` is run k's D, `states[k]` what run k's terms keep from step to step."""
    states = states if states is not None else [{} for _ in configs]
    return [StepView(config, batch.labels, {g: z[run, s] for g, s in where.items()},
                     {g: logits[run, s] for g, s in where.items()}, batch.real, partial(discriminator, run),
                     batch.indices, states[run], num_samples)
            for run, config in enumerate(configs)]


def run_terms(view: StepView) -> dict[str, torch.Tensor]:
    """One run's terms of Eq. 22 on its rows: {"task", <each active term>, "total"}."""
    config = view.config
    values = {"task": TASK_LOSSES[config.loss].loss(view)}
    total = values["task"]
    for term in active_terms(config):
        values[term.name] = term.loss(view)
        total = total + getattr(config, term.weight_field) * values[term.name]
    values["total"] = total
    return values


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up from `warmup_start_factor` to 1 over `warmup_steps` optimiser steps, then constant (App. B)."""
    if step >= config.warmup_steps:
        return 1.0
    return config.warmup_start_factor + (1.0 - config.warmup_start_factor) * step / config.warmup_steps


@dataclass
class Optimisers:
    """The two AdamW of a pass (model: every run's mixer, projector, predictor; discriminator) and their schedules."""

    model: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer
    schedules: list

    @classmethod
    def build(cls, heads: RunHeads, config: TrainConfig, fused: bool = False) -> "Optimisers":
        """Two AdamW with the same warm-up schedule; `fused` picks AdamW's fused kernel."""
        model = torch.optim.AdamW(heads.model_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=fused)
        discriminator = torch.optim.AdamW(heads.discriminator_parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay, fused=fused)
        schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, config))
                     for opt in (model, discriminator)]
        return cls(model, discriminator, schedules)


@dataclass
class StepRecord:
    """What one step leaves for the log: per run the LOSS_NAMES values [K, len(LOSS_NAMES)] (0 for an inactive
    term) and the diagnostics [K, len(diagnostics.DIAGNOSTIC_NAMES)] (NaN where not measured this step)."""

    losses: torch.Tensor
    diagnostics: torch.Tensor


def train_step(heads: RunHeads, configs: list[TrainConfig], batch: StepBatch, dropout_mask: torch.Tensor,
               optimisers: Optimisers, prior: torch.Tensor, bf16: bool, measure_gradients: bool,
               states: list[dict] | None = None, num_samples: int = 0) -> StepRecord:
    """Steps 2-6 of the module docstring for K runs on one batch (`states`, `num_samples`: see step_views)."""
    k, device = len(configs), dropout_mask.device
    # forward
    z, logits, where = forward_rows(heads.forward, batch, dropout_mask, bf16)
    # terms
    views = step_views(configs, batch, z, logits, where, heads.discriminator, states, num_samples)
    values = [run_terms(view) for view in views]
    gradients = [term_gradient_norms(v, c, heads.shared_weight()) if measure_gradients else None
                 for v, c in zip(values, configs)]
    # backward and the model's step
    optimisers.model.zero_grad(set_to_none=True)
    torch.stack([v["total"] for v in values]).sum().backward()
    optimisers.model.step()
    # the critic's step: D ascends Eq. 20 on the same real draws and the pre-update model's predictions
    critics = [run for run, c in enumerate(configs) if any(t.discriminator for t in active_terms(c))]
    disc_values = [torch.zeros((), device=device)] * k
    figures = [torch.full((4,), math.nan, device=device)] * k
    if critics:
        optimisers.discriminator.zero_grad(set_to_none=True)  # drops what the model's backward left on D
        for run in critics:
            fake = views[run].probabilities("unlabelled").detach()
            real_logits, fake_logits = heads.discriminator(run, batch.real), heads.discriminator(run, fake)
            disc_values[run] = -critic(real_logits, fake_logits)  # D minimises -Eq. 20
            figures[run] = critic_figures(real_logits.detach(), fake_logits.detach(), fake, prior)
        torch.stack(disc_values).sum().backward()
        optimisers.discriminator.step()
    # schedules (the discriminator's only advances when it trains, i.e. for every step or never)
    optimisers.schedules[0].step()
    if critics:
        optimisers.schedules[1].step()
    zero = torch.zeros((), device=device)
    losses = torch.stack([torch.stack([v.get(n, zero).detach().float() for n in LOSS_NAMES[:-1]] + [d.detach()])
                          for v, d in zip(values, disc_values)])
    nan_gradients = torch.full((1 + len(DISPLAY_ORDER),), math.nan, device=device)
    return StepRecord(losses, torch.stack([torch.cat([f, nan_gradients if g is None else g])
                                           for f, g in zip(figures, gradients)]))
