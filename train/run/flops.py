"""FLOPs of the head, counted analytically from the widths, the tokens and the rows of a step: the numerator of the
fraction of peak that bench/limit.py (CPU) and bench/gpu_check.py (GPU, MFU) report.

Multiply-adds count 2 FLOPs (a Linear of M rows, K inputs, N outputs is 2MKN). Only matrix products are counted
(the Linears, the attention's two batched products, the latent term's similarity matrix): the elementwise work is
what a fraction of peak below 1 pays for. A training step is 3x its forward (backward = 2x forward, the usual
convention of MFU figures). `head_forward_flops` is checked against torch.utils.flop_counter on a real forward in
tests/test_flops.py.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadShape:
    """What the head's cost depends on: the store's token widths and the run's head widths (Tables 2-5)."""

    num_patches: int  # T
    patch_dim: int  # Dp
    cls_dim: int  # Dc
    num_classes: int  # C
    proj_dim: int  # P
    pred_dim: int  # H
    disc_dim: int  # D_alpha

    def mixer(self) -> int:
        """One sample through the token mixer: qkv (3 Dp), attention output, SwiGLU's fc1 (2 Dp) and fc2 Linears on
        T tokens, plus the attention's scores and weighted sum (2 x 2 T^2 Dp)."""
        t, d = self.num_patches, self.patch_dim
        return 2 * t * d * (3 * d + d + 2 * d + d) + 2 * 2 * t * t * d

    def projector(self) -> int:
        """One sample through the projector's Linear (Dc + Dp -> P)."""
        return 2 * (self.cls_dim + self.patch_dim) * self.proj_dim

    def predictor(self) -> int:
        """One row through the predictor (P -> H -> C)."""
        return 2 * self.proj_dim * self.pred_dim + 2 * self.pred_dim * self.num_classes

    def discriminator(self) -> int:
        """One row through the discriminator (C -> D -> D -> 1)."""
        return 2 * (self.num_classes * self.disc_dim + self.disc_dim * self.disc_dim + self.disc_dim)


def head_forward_flops(shape: HeadShape, distinct: int, rows: int) -> int:
    """The head's forward (mixer and projector once per distinct sample, predictor per row; TwinTurboHead.encode)."""
    return distinct * (shape.mixer() + shape.projector()) + rows * shape.predictor()


@dataclass(frozen=True)
class StepRows:
    """The rows of one training step (loop.StepBatch): distinct samples, then per part how many rows read them."""

    distinct: int
    labelled: int
    star: int = 0  # x* rows (latent term on)
    unlabelled: int = 0  # unlabelled rows (critic on)


def train_step_flops(shape: HeadShape, rows: StepRows) -> int:
    """One training step of one run (loop.train_step): the model step's forward over all its rows, the latent
    similarity matrix, the discriminator on the prior's one-hots and on sigma(f) in the model step and again in the
    discriminator's step; each forward counted 3x for forward + backward."""
    model = head_forward_flops(shape, rows.distinct, rows.labelled + rows.star + rows.unlabelled)
    model += 2 * rows.labelled * rows.star * shape.proj_dim  # cos(z_i, z*_j) for every pair (Eq. 21)
    critic = 2 * rows.unlabelled * shape.discriminator()  # D(real) and D(sigma(f)), |real| = |unlabelled|
    return 3 * (model + critic) + 3 * critic
