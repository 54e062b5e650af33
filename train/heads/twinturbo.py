"""The paper's head (section 4.2, Appendix B): a token mixer over the patch tokens, mean-pooled, concatenated with the
CLS token, projected to the latent z, and a predictor (Tables 2-4). The default head."""
from __future__ import annotations

import torch
from twinturbo.train.heads import Head
from twinturbo.train.heads.blocks import PooledHead, TokenMixer


class TwinTurboHead(PooledHead):
    """Token mixer + projector (the trainable part of f_phi) and predictor h_psi; build_head adds the discriminator
    D_alpha last.

    Construction order (mixer, projector, predictor, then the discriminator) fixes which random numbers each block's
    default PyTorch initialisation takes, so a head built right after seeding is a function of the seed alone.
    """

    def __init__(self, cls_dim: int = 2304, patch_dim: int = 768, num_classes: int = 10, proj_dim: int = 8000,
                 pred_dim: int = 1024):
        super().__init__()
        self.mixer = TokenMixer(patch_dim)
        self.add_projection(cls_dim + patch_dim, proj_dim, pred_dim, num_classes)

    def pool(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Mixed patches mean-pooled, concatenated with CLS (the CLS token does not pass the mixer: footnote 5)."""
        return torch.cat([cls, self.mixer(patches).mean(dim=1)], dim=-1)


HEAD = Head(
    "twinturbo", "the paper's: token mixer on the patch tokens, mean-pooled, with CLS, projector, predictor",
    lambda shape, config: TwinTurboHead(shape.cls_dim, shape.patch_dim, shape.num_classes, config.proj_dim,
                                        config.pred_dim),
    order=0)
