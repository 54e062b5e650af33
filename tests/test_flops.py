"""The analytic FLOP count behind every fraction-of-peak figure: a hand count, and PyTorch's own flop counter."""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from twinturbo.train.run.flops import HeadShape, StepRows, head_forward_flops, train_step_flops
from conftest import make_head

TINY = HeadShape(num_patches=2, patch_dim=4, cls_dim=3, num_classes=2, proj_dim=5, pred_dim=3, disc_dim=2)


def test_a_step_of_a_tiny_head_counted_by_hand():
    # mixer, per sample: qkv 2 tokens x 4 x 12 x 2 = 192, attention output 2 x 4 x 4 x 2 = 64, fc1 2 x 4 x 8 x 2 = 128,
    # fc2 64, scores 2 x 2 x 4 x 2 = 32, weighted sum 32: 512. Projector (3 + 4) x 5 x 2 = 70.
    # Predictor per row 5 x 3 x 2 + 3 x 2 x 2 = 42. Discriminator per row (2 x 2 + 2 x 2 + 2) x 2 = 20.
    assert (TINY.mixer(), TINY.projector(), TINY.predictor(), TINY.discriminator()) == (512, 70, 42, 20)
    # 3 distinct samples, 2 labelled + 2 x* + 2 unlabelled rows: forward 3 x 582 + 6 x 42 = 1998, latent similarity
    # 2 x 2 x 2 x 5 = 40, D on 2 real + 2 fake rows 80; x3 for forward + backward, plus the discriminator's own step.
    assert train_step_flops(TINY, StepRows(distinct=3, labelled=2, star=2, unlabelled=2)) == 3 * (1998 + 40 + 80) + 3 * 80
    # setup 1: labelled rows only
    assert train_step_flops(TINY, StepRows(distinct=2, labelled=2)) == 3 * (2 * 582 + 2 * 42)


def test_the_forward_count_equals_pytorchs_flop_counter():
    shape = HeadShape(num_patches=4, patch_dim=16, cls_dim=24, num_classes=10, proj_dim=64, pred_dim=32, disc_dim=8)
    head = make_head(shape.cls_dim, shape.patch_dim, shape.num_classes, shape.proj_dim, shape.pred_dim,
                      shape.disc_dim, init_seed=0)
    distinct, rows = 7, torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 6])
    cls, patches = torch.randn(distinct, shape.cls_dim), torch.randn(distinct, shape.num_patches, shape.patch_dim)
    # the math backend computes attention as two batched matmuls the counter sees (it skips the CPU flash kernel)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        head(cls, patches, torch.ones(len(rows), shape.proj_dim), rows=rows)
    assert counter.get_total_flops() == head_forward_flops(shape, distinct, len(rows))
