"""One training step of a single head as twinturbo.train.loop takes it (model step, then discriminator step), for
the benchmarks that time head steps (bench/train.py, bench/distinct.py)."""
from __future__ import annotations

import torch

from twinturbo.common.device import Acceleration
from twinturbo.train.config import TrainConfig
from twinturbo.train.loop import StepBatch, discriminator_loss, make_optimisers, model_losses
from twinturbo.train.model import TwinTurboHead, draw_dropout_mask


def make_step(head: TwinTurboHead, config: TrainConfig, device: torch.device, dropout_gen: torch.Generator | None = None):
    """`step(batch) -> total loss`: Eq. 22's model step and the discriminator's, with the head's own optimisers."""
    model_opt, disc_opt, _ = make_optimisers(head.model_parameters(), head.discriminator.parameters(), config,
                                             fused=Acceleration.for_device(device).fused_adamw)
    dropout_gen = dropout_gen or torch.Generator(device=device).manual_seed(0)

    def step(batch: StepBatch) -> torch.Tensor:
        mask = draw_dropout_mask((3 * len(batch.labels), config.proj_dim), config.dropout, dropout_gen, device)
        losses, fake = model_losses(head, batch, mask, config)
        model_opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        model_opt.step()
        if fake is not None:
            disc_opt.zero_grad(set_to_none=True)
            discriminator_loss(head.discriminator, batch.real, fake).backward()
            disc_opt.step()
        return losses["total"]

    return step
