"""A linear probe: logits from [CLS ; mean patch token] by one Linear layer, as DINOv2's linear evaluation and our
report's LinearProbe baseline (scikit-learn) read the same features, but trained by the terms of Eq. 22.

Its z is the probe's input, [CLS ; mean patch token] itself: nothing before the Linear is trained, so the latent term
(Eq. 21), which moves z, is refused with it; the critic and the pseudo-label terms read the predictions and work.
No dropout (ours: a probe as the evaluations train it); the run's keep-mask is drawn all the same, so every head sees
the same random streams.
"""
from __future__ import annotations

import torch
from torch import nn

from twinturbo.train.heads import Head


class LinearProbe(nn.Module):
    """[CLS ; mean patch token] -> Linear -> logits; z = the input."""

    def __init__(self, cls_dim: int, patch_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(cls_dim + patch_dim, num_classes)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, dropout_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([cls, patches.mean(dim=1)], dim=-1)
        logits = self.linear(features)
        if rows is not None:
            features, logits = features[rows], logits[rows]
        return features, logits


HEAD = Head(
    "linear", "a linear probe: one Linear layer on [CLS ; mean patch token], no dropout; z = its input",
    lambda shape, config: LinearProbe(shape.cls_dim, shape.patch_dim, shape.num_classes),
    latent=False, no_latent="its z is its input, [CLS ; mean patch token], which nothing trains",
    shared="linear.weight", order=30)
