"""An attentive probe, as AIM (El-Nouby et al. 2024) and V-JEPA (Bardes et al. 2024) evaluate frozen backbones with:
learned query tokens cross-attend over the patch tokens in one block (multi-head cross-attention, then an MLP, each
pre-norm with a residual), the queries' outputs are averaged, concatenated with the CLS token, projected to z and
predicted from, as in the paper's head.

Ours, where those papers differ or say nothing: the CLS token is not a key (its width is not the patch tokens', e.g.
1280 against 320 for effnet-lite0:320) but joins after the pooling, as in the paper's head; several queries are
averaged (V-JEPA uses one, AIM one per class token); the MLP is 4x wide with GELU (V-JEPA's); the queries start from
a normal draw of std 0.02. Options: `--attentive-queries`, `--attentive-heads`, `--attentive-width`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.heads import Head
from twinturbo.train.heads.blocks import PooledHead, attention
from twinturbo.train.terms import Option


class AttentivePooler(nn.Module):
    """`queries` learned tokens of width `width` cross-attending over the patch tokens with `heads` heads -> [N, width]."""

    def __init__(self, patch_dim: int, width: int, heads: int, queries: int):
        super().__init__()
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.norm = nn.LayerNorm(patch_dim)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(patch_dim, 2 * width)
        self.attn_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        n, t, _ = patches.shape
        q_len, width = self.queries.shape
        split = (self.heads, width // self.heads)
        k, v = self.kv(self.norm(patches)).chunk(2, dim=-1)  # [N, T, W] each
        k, v = (x.reshape(n, t, *split).transpose(1, 2) for x in (k, v))  # [N, h, T, W/h]
        q = self.q(self.queries).reshape(q_len, *split).transpose(0, 1).expand(n, -1, -1, -1)  # [N, h, Q, W/h]
        attended = attention(q, k, v).transpose(1, 2).reshape(n, q_len, width)
        x = self.queries + self.attn_out(attended)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x.mean(dim=1)


class AttentiveHead(PooledHead):
    """Attentive pooling of the patch tokens, concatenated with CLS, projector (z, with dropout), predictor."""

    def __init__(self, cls_dim: int, patch_dim: int, num_classes: int, proj_dim: int, pred_dim: int, width: int,
                 heads: int, queries: int):
        super().__init__()
        self.pooler = AttentivePooler(patch_dim, width, heads, queries)
        self.add_projection(cls_dim + width, proj_dim, pred_dim, num_classes)

    def pool(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([cls, self.pooler(patches)], dim=-1)


def check(config) -> None:
    if config.attentive_width % config.attentive_heads:
        raise TwinTurboError(f"--attentive-heads {config.attentive_heads}: expected a divisor of --attentive-width "
                             f"{config.attentive_width}")


HEAD = Head(
    "attentive", "an attentive probe (AIM, V-JEPA): learned queries cross-attend over the patch tokens, with CLS, "
    "projector, predictor",
    lambda shape, config: AttentiveHead(shape.cls_dim, shape.patch_dim, shape.num_classes, config.proj_dim,
                                        config.pred_dim, config.attentive_width, config.attentive_heads,
                                        config.attentive_queries),
    options=(Option("attentive_queries", "--attentive-queries", 1, "Attentive head: learned query tokens (their "
                    "outputs averaged).", bounds=(0, 64)),
             Option("attentive_heads", "--attentive-heads", 4, "Attentive head: attention heads (a divisor of "
                    "--attentive-width).", bounds=(0, 64)),
             Option("attentive_width", "--attentive-width", 256, "Attentive head: width of the queries and of the "
                    "attention.", bounds=(0, 16384))),
    check=check, order=40)
