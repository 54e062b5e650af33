"""K heads trained together: one head definition (train/heads/), K runs' parameters stacked along a leading axis.

This is how a sweep trains K runs in one pass over the features (DINOv2's many linear heads on one pass): runs that
share features, label budget, seed and schedule (`sweep.RunSpec.fusion_key`) see the same batches and dropout masks
and start from the same initial head, so one step reads one batch and runs K heads on it. Training a single run is
the K = 1 case of the same code.

The parameters are `torch.func.stack_module_state` of K heads; run k's forward is the one `nn.Module` of its head's
module called through `torch.func.functional_call` with run k's slice, so the head's layers, activations and names
exist only in train/heads/. Every head fuses: the runs of one pass share the head and its options (fusion_key). With `batched` the K forwards are one `torch.vmap` over the run axis (one batched matmul per layer:
what fills a GPU with K small problems); without it they run one after another, which measured faster on the CPU,
where the matmuls are compute-bound already (bench/sweep.py). Nothing couples the runs (the runs' losses are summed,
each depends only on its own slice, AdamW is elementwise, no gradient clipping), so a fused run equals the same run
trained alone up to float rounding (tests/test_fused.py).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from twinturbo.train.heads import DISCRIMINATOR, HEADS, TokenShape, build_head

D_PREFIX = DISCRIMINATOR + "."  # the names of the common discriminator's parameters


class RunHeads:
    """K heads of one kind and equal widths as stacked leaf tensors [K, ...], named as in the head's module; `shared`
    names the parameter every term reaches (Head.shared)."""

    def __init__(self, heads: list[nn.Module], batched: bool = False, shared: str = HEADS["twinturbo"].shared):
        params, buffers = stack_module_state(heads)
        if buffers:
            raise ValueError("a head with buffers cannot be stacked (build_head refuses one)")
        self.params: dict[str, torch.Tensor] = params
        self.k = len(heads)
        self.batched = batched
        self.shared = shared
        self.template = copy.deepcopy(heads[0]).to("meta")  # structure only: its own tensors are never read

    @classmethod
    def build(cls, k: int, shape: TokenShape, config, init_seed: int, device: torch.device,
              batched: bool = False) -> "RunHeads":
        """K copies of the head `heads.build_head` makes of `config` from `init_seed` (each run owns its copy)."""
        heads = [build_head(shape, config, init_seed).to(device) for _ in range(k)]
        return cls(heads, batched, HEADS[config.head].shared)

    def model_parameters(self) -> list[torch.Tensor]:
        """What the model optimiser trains: every run's head but its discriminator (the paper's: mixer, projector,
        predictor)."""
        return [p for name, p in self.params.items() if not name.startswith(D_PREFIX)]

    def discriminator_parameters(self) -> list[torch.Tensor]:
        return [p for name, p in self.params.items() if name.startswith(D_PREFIX)]

    def run_params(self, prefix: str = "") -> list[dict[str, torch.Tensor]]:
        """Per run, its parameters whose names start with `prefix` (named without it): views of the stacked tensors,
        taken anew for each forward, by one `unbind` per tensor (K = 1: `squeeze`). Ours, for speed: the gradient of
        `unbind` is one `stack` of the K runs' gradients, that of `squeeze` a view of the run's; views `p[k]` taken
        once and kept, as before, had each backward zero-fill a [K, ...] tensor per run and parameter and copy the
        run's slice into it (the projector's [1, 1024, 1600]: 3.7 ms of a 36 ms bf16 step of setup 1,
        bench/README.md). The gradients are the same numbers."""
        names = [name for name in self.params if name.startswith(prefix)]
        if self.k == 1:
            return [{name[len(prefix):]: self.params[name].squeeze(0) for name in names}]
        runs = zip(*(self.params[name].unbind(0) for name in names))
        return [{name[len(prefix):]: p for name, p in zip(names, run)} for run in runs]

    def _forward_one(self, params: dict[str, torch.Tensor], cls: torch.Tensor, patches: torch.Tensor,
                     dropout_mask: torch.Tensor | None, rows: torch.Tensor | None):
        return functional_call(self.template, params, (cls, patches, dropout_mask), {"rows": rows})

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, dropout_mask: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [K, R, P], logits [K, R, C]): every run's head forward on the same inputs and mask."""
        if self.batched:
            return vmap(self._forward_one, in_dims=(0, None, None, None, None))(self.params, cls, patches,
                                                                               dropout_mask, rows)
        outputs = [self._forward_one(params, cls, patches, dropout_mask, rows) for params in self.run_params()]
        return torch.stack([z for z, _ in outputs]), torch.stack([logits for _, logits in outputs])

    def discriminator(self, k: int, probs: torch.Tensor) -> torch.Tensor:
        """Run k's discriminator (Table 5) on probs [N, C] -> raw logits [N]."""
        return functional_call(self.template.discriminator, self.run_params(D_PREFIX)[k], (probs,))

    def shared_weight(self) -> torch.Tensor:
        """The weight every term of Eq. 22 reaches [K, ...] (train/run/diagnostics.py): the projector's, the linear
        probe's layer."""
        return self.params[self.shared]

    def head(self, k: int) -> nn.Module:
        """Run k as an ordinary head on the CPU holding its current parameters (checkpoints, evaluation)."""
        head = copy.deepcopy(self.template).to_empty(device="cpu")
        head.load_state_dict({name: p[k].detach().cpu() for name, p in self.params.items()})
        return head
