"""The TwinTURBO head on cached backbone tokens (section 4.2, Appendix B, Tables 2-5).

    patches [B, T, Dp] --TokenMixer--> mean over T --concat CLS [B, Dc]--> Projector -> z [B, P] --Predictor--> f [B, C]
    sigma(f) [B, C] --Discriminator--> critic logit [B, 1]

Four small blocks with the paper's widths as defaults, composed by `TwinTurboHead`. Dropout is not an `nn.Dropout`:
the projector takes an explicit keep-mask so that every random draw of a run comes from generators seeded by the run
(the fused sweep replays the same masks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
        if x.device.type == "cpu":
            # Our choice: on the CPU the attention itself runs in float32 even under bf16 autocast. PyTorch's CPU
            # flash-attention kernel took 36 ms for a bf16 forward + backward of 612 samples x 4 tokens x 320, 7 ms in
            # float32 (bench/README.md), and it is ~3% of the step's FLOPs. In float32 this changes nothing.
            with torch.autocast("cpu", enabled=False):
                mixed = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        else:
            mixed = F.scaled_dot_product_attention(q, k, v)
        return self.attn_out(mixed)

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


class TwinTurboHead(nn.Module):
    """Token mixer + projector (the trainable part of f_phi), predictor h_psi and discriminator D_alpha.

    Construction order (mixer, projector, predictor, discriminator) fixes which random numbers each block's default
    PyTorch initialisation takes, so a head built right after seeding is a function of the seed alone.
    """

    def __init__(self, cls_dim: int = 2304, patch_dim: int = 768, num_classes: int = 10, proj_dim: int = 8000,
                 pred_dim: int = 1024, disc_dim: int = 500):
        super().__init__()
        self.mixer = TokenMixer(patch_dim)
        self.projector = Projector(cls_dim + patch_dim, proj_dim)
        self.predictor = Predictor(proj_dim, pred_dim, num_classes)
        self.discriminator = Discriminator(num_classes, disc_dim)

    def encode(self, cls: torch.Tensor, patches: torch.Tensor, dropout_mask: torch.Tensor | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """z = f_phi(x): mixed patches mean-pooled, concatenated with CLS, projected.

        With `rows` [R], cls/patches hold distinct samples and row r of z is sample rows[r] with mask row r: the token
        mixer and the projector's Linear (most of the head's FLOPs) run once per distinct sample, not once per row.
        """
        pooled = self.mixer(patches).mean(dim=1)
        return self.projector(torch.cat([cls, pooled], dim=-1), dropout_mask, rows)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, dropout_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, logits f) for a batch of cached tokens (for `rows`, see `encode`)."""
        z = self.encode(cls, patches, dropout_mask, rows)
        return z, self.predictor(z)


def build_head(cls_dim: int, patch_dim: int, num_classes: int, proj_dim: int = 8000, pred_dim: int = 1024,
               disc_dim: int = 500, init_seed: int = 0) -> TwinTurboHead:
    """A head initialised from `init_seed` alone, on the CPU, without touching the caller's global RNG state.

    Built on the CPU and moved afterwards, the initial weights are the same whatever the training device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return TwinTurboHead(cls_dim, patch_dim, num_classes, proj_dim, pred_dim, disc_dim)


def draw_dropout_mask(shape: tuple[int, ...], p: float, generator: torch.Generator,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverted-dropout keep-mask: 1/(1-p) with probability 1-p, else 0 (what nn.Dropout multiplies by)."""
    if p == 0:
        return torch.ones(shape, device=device)
    keep = torch.rand(shape, generator=generator, device=device) >= p
    return keep.float() / (1.0 - p)
