"""K heads and their optimisers, stepped by the product's own `step.train_step`, for the benchmarks that time head
steps (bench/train.py, bench/distinct.py, bench/limit.py, bench/gpu_check.py through them)."""
from __future__ import annotations

import torch
import torch._functorch.config

from twinturbo.common.device import Acceleration
from twinturbo.train.config import TrainConfig
from twinturbo.train.run.fused import RunHeads
from twinturbo.train.heads import TokenShape
from twinturbo.train.heads.blocks import draw_dropout_mask
from twinturbo.train.run.step import Optimisers, StepBatch, StepRecord, mask_dtype_for, train_step


class HeadStep:
    """`step(batch, measure_gradients) -> StepRecord`: forward, Eq. 22's terms, both optimiser steps, as tt-train
    takes them for `configs` (runs fused when K > 1), with dropout masks from a generator of its own. `compiled`
    wraps the heads' forward in torch.compile (a candidate bench/limit.py measures)."""

    def __init__(self, configs: list[TrainConfig], shape: TokenShape, device: torch.device,
                 acceleration: Acceleration | None = None, compiled: bool = False):
        first = configs[0]
        acceleration = acceleration or Acceleration.for_run(device, first.precision)
        self.configs, self.device, self.bf16 = configs, device, first.precision == "bf16"
        self.heads = RunHeads.build(len(configs), shape, first, 0, device, batched=acceleration.batched_runs)
        if compiled:
            torch._functorch.config.donated_buffer = False  # the gradient diagnostics backward with retain_graph
            self.heads._forward_one = torch.compile(self.heads._forward_one, dynamic=True)
        self.optimisers = Optimisers.build(self.heads, first, fused=acceleration.fused_adamw)
        self.dropout = torch.Generator(device=device).manual_seed(0)
        self.prior = torch.full((shape.num_classes,), 1.0 / shape.num_classes, dtype=torch.float64)

    def mask(self, batch: StepBatch) -> torch.Tensor:
        first = self.configs[0]
        return draw_dropout_mask((3 * len(batch.labels), first.proj_dim), first.dropout, self.dropout, self.device,
                                 mask_dtype_for(self.bf16))

    def __call__(self, batch: StepBatch, measure_gradients: bool = False,
                 mask: torch.Tensor | None = None) -> StepRecord:
        return train_step(self.heads, self.configs, batch, self.mask(batch) if mask is None else mask,
                          self.optimisers, self.prior, self.bf16, measure_gradients)
