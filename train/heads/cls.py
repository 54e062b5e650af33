"""The paper's head without the patch tokens: the projector and predictor on the CLS token alone (the ablation that
asks whether the patch tokens help at all). The store's patch tokens are read but not used."""
from __future__ import annotations

import torch
from twinturbo.train.heads import Head
from twinturbo.train.heads.blocks import PooledHead


class ClsHead(PooledHead):
    """CLS -> projector (z, with dropout) -> predictor."""

    def __init__(self, cls_dim: int, num_classes: int, proj_dim: int, pred_dim: int):
        super().__init__()
        self.add_projection(cls_dim, proj_dim, pred_dim, num_classes)

    def pool(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return cls


HEAD = Head(
    "cls", "the paper's head on the CLS token alone: projector, predictor (no patch tokens)",
    lambda shape, config: ClsHead(shape.cls_dim, shape.num_classes, config.proj_dim, config.pred_dim),
    order=20)
