"""The blocks of the TwinTURBO head (section 4.2, Appendix B, Tables 2-5), shared by the heads of this package:

    patches [B, T, Dp] --TokenMixer--> mean over T --concat CLS [B, Dc]--> Projector -> z [B, P] --Predictor--> f [B, C]
    sigma(f) [B, C] --Discriminator--> critic logit [B, 1]

Four small blocks with the paper's widths as defaults; twinturbo.py composes them as the paper does, the other heads
leave some out or put another block in front (train/heads/). Dropout is not an `nn.Dropout`: the projector takes an
explicit keep-mask so that every random draw of a run comes from generators seeded by the run (the fused sweep
replays the same masks; `draw_dropout_mask`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention (heads, if any, on a leading axis of q, k, v).

    Our choice: on the CPU the attention itself runs in float32 even under bf16 autocast. PyTorch's CPU
    flash-attention kernel took 36 ms for a bf16 forward + backward of 612 samples x 4 tokens x 320, 7 ms in float32
    (bench/README.md), and it is ~3% of the step's FLOPs. In float32 this changes nothing."""
    if q.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    return F.scaled_dot_product_attention(q, k, v)


class TokenMixer(nn.Module):
    """One transformer block on the patch tokens: single-head self-attention, then a SwiGLU network (Table 2 names
    these two and the width 768). The layout is ours, the paper does not give it: pre-norm LayerNorms, a residual
    around each part, a bias on the q/k/v projection, SwiGLU's hidden width equal to the token width.

    The CLS token does not pass through it (footnote 5).
    """

    def __init__(self, dim: int = 768):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)  # SwiGLU: one Linear, gate and value as its two halves
        self.fc2 = nn.Linear(dim, dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.attn_out(attention(q, k, v))

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches + self.attention(self.norm1(patches))
        return x + self.swiglu(self.norm2(x))


class Projector(nn.Module):
    """Linear(Dc + Dp, 8000), LeakyReLU(0.01), Dropout(0.3) -> latent z (Table 3).

    `dropout_mask` is the already scaled keep-mask (0 or 1/(1-p), see `draw_dropout_mask`); None means no dropout
    (evaluation). `rows` (optional) picks the output rows from the inputs before dropout: input i is projected
    once however many rows repeat it, and each row gets its own mask.
    """

    def __init__(self, in_dim: int = 2304 + 768, proj_dim: int = 8000):
        super().__init__()
        self.fc = nn.Linear(in_dim, proj_dim)

    def forward(self, x: torch.Tensor, dropout_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        z = F.leaky_relu(self.fc(x), negative_slope=0.01)
        if rows is not None:
            z = z[rows]  # the backward of indexing sums the gradients of a sample's copies
        return z if dropout_mask is None else z * dropout_mask.to(z.dtype)


class Predictor(nn.Module):
    """Linear(8000, 1024), LeakyReLU(0.01), Linear(1024, C) -> logits f (Table 4)."""

    def __init__(self, proj_dim: int = 8000, pred_dim: int = 1024, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(proj_dim, pred_dim)
        self.fc2 = nn.Linear(pred_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.leaky_relu(self.fc1(z), negative_slope=0.01))


class PooledHead(nn.Module):
    """A head that pools a sample's tokens into one vector (`pool`, each head's own), projects it to the latent z with
    dropout (Projector) and predicts from z (Predictor): every head of this package but the linear probe. A subclass
    makes its pooling blocks, then calls `add_projection` (construction order decides the initial weights)."""

    def add_projection(self, in_dim: int, proj_dim: int, pred_dim: int, num_classes: int) -> None:
        self.projector = Projector(in_dim, proj_dim)
        self.predictor = Predictor(proj_dim, pred_dim, num_classes)

    def pool(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, cls: torch.Tensor, patches: torch.Tensor, dropout_mask: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """z for a batch of cached tokens. With `rows` [R], cls/patches hold distinct samples and row r of z is sample
        rows[r] with mask row r: the pooling and the projector's Linear (most of a head's FLOPs) run once per
        distinct sample, not once per row."""
        return self.projector(self.pool(cls, patches), dropout_mask, rows)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, dropout_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, logits f)."""
        z = self.encode(cls, patches, dropout_mask, rows)
        return z, self.predictor(z)


class Discriminator(nn.Module):
    """Linear(C, 500), ReLU, Linear(500, 500), ReLU, Linear(500, 1) on sigma(f) or one-hot y (Table 5).

    Returns the raw logit of D; D = sigmoid(logit), kept in log space by the critic loss (Eq. 20).
    """

    def __init__(self, num_classes: int = 10, disc_dim: int = 500):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_classes, disc_dim), nn.ReLU(),
            nn.Linear(disc_dim, disc_dim), nn.ReLU(),
            nn.Linear(disc_dim, 1),
        )

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.net(probs).squeeze(-1)


def draw_dropout_mask(shape: tuple[int, ...], p: float, generator: torch.Generator,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverted-dropout keep-mask: 1/(1-p) with probability 1-p, else 0 (what nn.Dropout multiplies by), in `dtype`
    (the head's compute dtype: bf16 under bf16 autocast, so that the projector does not cast it every step).

    The numbers are those of `(rand >= p).float() / (1 - p)` cast to `dtype`: the same uniform draws, the kept value
    computed once in float32 the same way; the comparison and the scaling run in place on the draws' own tensor
    (ours, for speed: three [3B, P] temporaries and a cast less per step)."""
    if p == 0:
        return torch.ones(shape, device=device, dtype=dtype)
    kept = torch.ones(1, device=device).div_(1.0 - p)  # 1/(1-p) as the float32 division gives it
    mask = torch.rand(shape, generator=generator, device=device).ge_(p).mul_(kept)
    return mask if dtype == torch.float32 else mask.to(dtype)
