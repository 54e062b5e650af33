"""The paper's head without its token mixer: the patch tokens mean-pooled as they are, concatenated with the CLS token,
projector and predictor (ours: the ablation that asks whether the mixer matters)."""
from __future__ import annotations

import torch
from twinturbo.train.heads import Head
from twinturbo.train.heads.blocks import PooledHead


class MeanPoolHead(PooledHead):
    """[CLS ; mean patch token] -> projector (z, with dropout) -> predictor."""

    def __init__(self, cls_dim: int, patch_dim: int, num_classes: int, proj_dim: int, pred_dim: int):
        super().__init__()
        self.add_projection(cls_dim + patch_dim, proj_dim, pred_dim, num_classes)

    def pool(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)


HEAD = Head(
    "mlp", "the paper's head without the token mixer: [CLS ; mean patch token], projector, predictor (ours)",
    lambda shape, config: MeanPoolHead(shape.cls_dim, shape.patch_dim, shape.num_classes, config.proj_dim,
                                       config.pred_dim),
    order=10)
