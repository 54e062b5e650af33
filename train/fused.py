"""K runs of `loop.train` in one pass: the heads' parameters stacked along a leading run axis (section 4.4's sweep,
the way DINOv2's linear evaluation trains many heads on one pass over the features).

Runs that share the features, the label budget, the seed and the training flags (`sweep.RunSpec.fusion_key`) draw the
same labelled subset, batches, x* partners, prior one-hots and dropout masks (loop.py draws every one of them every
step, whatever the loss weights) and start from the same initial head. Only the task loss, the rescaling and the
weights of Eq. 22 differ. So each step here reads one batch and one mask, runs all K heads on it with grouped
batched matmuls (`torch.baddbmm` over the run axis), computes each run's own Eq. 22 in its own terms, and takes two
AdamW steps on the stacked parameters. AdamW is elementwise and nothing couples the runs (no gradient clipping, the
runs' losses are summed and each depends only on its own slice), so the result equals K separate `loop.train` runs
up to float rounding of the matmuls (tested in tests/test_fused.py).

The stacked forward is written out here rather than `vmap(functional_call(head, ...))` because vmap has no batching
rule for the CPU attention kernel and would fall back to a per-run loop; folding the run axis into the attention's
batch axis does the same maths in one call. It mirrors `model.TwinTurboHead` block by block.
"""
from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn.functional as F
from torch.func import stack_module_state
from tqdm import tqdm

from twinturbo.train.config import TrainConfig, derived_seed
from twinturbo.train.data import SplitTensors
from twinturbo.train.loop import LOSS_NAMES, SYNC_EVERY, active_terms, autocast, lr_factor
from twinturbo.train.losses import critic, critic_nonsaturating, get_task_loss, latent_infonce, log_rescale
from twinturbo.train.model import TwinTurboHead, build_head, draw_dropout_mask
from twinturbo.train.sampling import draw_partners, draw_prior_onehot, epoch_plan, start_run_draws

# Fields that may differ between fused runs; all other TrainConfig fields must be equal (they shape the data stream,
# the schedule or the parameter shapes).
PER_RUN_FIELDS = ("loss", "rescale", "critic_weight", "latent_weight", "temperature", "critic_form")


def check_fusable(configs: list[TrainConfig]) -> None:
    """Raise ValueError unless the configs differ only in PER_RUN_FIELDS (a programming error in the caller)."""
    if not configs:
        raise ValueError("no runs to fuse")
    shared = [{k: v for k, v in c.to_dict().items() if k not in PER_RUN_FIELDS} for c in configs]
    for other in shared[1:]:
        if other != shared[0]:
            diff = sorted(k for k in other if other[k] != shared[0][k])
            raise ValueError(f"runs differ in {diff}: they do not see the same batches and cannot be fused")


# ---------------------------------------------------------------------------------------------------------------------
# The stacked head: a dict of [K, ...] parameters named as in TwinTurboHead
# ---------------------------------------------------------------------------------------------------------------------

BATCHED_ON_CPU = False  # tests switch the GPU's batched path on to check it on the CPU


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-run Linear: x [K, ..., in], weight [K, out, in], bias [K, out] -> [K, ..., out].

    On a GPU one batched matmul (`baddbmm`) for all runs: that is where fusing pays, by filling the device with K
    small problems at once. On the CPU the matmuls are compute-bound already and oneDNN's batched kernels (and their
    backward) are slower than K plain Linear calls, so the runs' Linears run one after another there.
    """
    k, out_dim = weight.shape[0], weight.shape[1]
    if x.device.type == "cpu" and not BATCHED_ON_CPU:
        return torch.stack([F.linear(x[i], weight[i], bias[i]) for i in range(k)])
    flat = x.reshape(k, -1, x.shape[-1])
    y = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return y.reshape(*x.shape[:-1], out_dim)


class StackedHead:
    """K `TwinTurboHead`s of equal widths as stacked leaf tensors, with a forward equal to each head's own."""

    def __init__(self, heads: list[TwinTurboHead]):
        self.template = heads[0]
        params, _ = stack_module_state(heads)
        self.params: dict[str, torch.Tensor] = params
        self.k = len(heads)
        self.eps_norm1 = self.template.mixer.norm1.eps
        self.eps_norm2 = self.template.mixer.norm2.eps

    def model_parameters(self) -> list[torch.Tensor]:
        return [p for name, p in self.params.items() if not name.startswith("discriminator.")]

    def discriminator_parameters(self) -> list[torch.Tensor]:
        return [p for name, p in self.params.items() if name.startswith("discriminator.")]

    def _p(self, name: str) -> torch.Tensor:
        return self.params[name]

    def _lin(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return _linear(x, self._p(prefix + ".weight"), self._p(prefix + ".bias"))

    def _norm(self, x: torch.Tensor, prefix: str, eps: float) -> torch.Tensor:
        """LayerNorm of x [K, M, T, D] with run k's own affine."""
        weight, bias = self._p(prefix + ".weight"), self._p(prefix + ".bias")
        view = (self.k, 1, 1, weight.shape[-1])
        return F.layer_norm(x, x.shape[-1:], eps=eps) * weight.view(view) + bias.view(view)

    def mixer(self, patches: torch.Tensor) -> torch.Tensor:
        """TokenMixer (Table 2) on shared patches [M, T, D] -> [K, M, T, D]."""
        k, (m, t, d) = self.k, patches.shape
        x = patches.unsqueeze(0).expand(k, m, t, d)
        q, key, v = self._lin(self._norm(x, "mixer.norm1", self.eps_norm1), "mixer.qkv").chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q.reshape(k * m, t, d), key.reshape(k * m, t, d),
                                                  v.reshape(k * m, t, d)).reshape(k, m, t, d)
        x = x + self._lin(attended, "mixer.attn_out")
        gate, value = self._lin(self._norm(x, "mixer.norm2", self.eps_norm2), "mixer.fc1").chunk(2, dim=-1)
        return x + self._lin(F.silu(gate) * value, "mixer.fc2")

    def forward(self, cls: torch.Tensor, patches: torch.Tensor,
                dropout_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [K, M, P], logits [K, M, C]) for shared inputs cls [M, Dc], patches [M, T, Dp]; one shared mask [M, P]."""
        pooled = self.mixer(patches).mean(dim=2)
        features = torch.cat([cls.unsqueeze(0).expand(self.k, *cls.shape), pooled], dim=-1)
        z = F.leaky_relu(self._lin(features, "projector.fc"), negative_slope=0.01)
        if dropout_mask is not None:
            z = z * dropout_mask.to(z.dtype)
        hidden = F.leaky_relu(self._lin(z, "predictor.fc1"), negative_slope=0.01)
        return z, self._lin(hidden, "predictor.fc2")

    def discriminator(self, probs: torch.Tensor) -> torch.Tensor:
        """Discriminator (Table 5) on probs [K, N, C] (or shared [N, C]) -> raw logits [K, N]."""
        if probs.dim() == 2:
            probs = probs.unsqueeze(0).expand(self.k, *probs.shape)
        h = F.relu(self._lin(probs, "discriminator.net.0"))
        h = F.relu(self._lin(h, "discriminator.net.2"))
        return self._lin(h, "discriminator.net.4").squeeze(-1)

    def unstack(self) -> list[TwinTurboHead]:
        """K ordinary heads holding the current parameters (for checkpoints and the equivalence test)."""
        heads = []
        for k in range(self.k):
            head = copy.deepcopy(self.template)
            head.load_state_dict({n: p[k].detach() for n, p in self.params.items()})
            heads.append(head)
        return heads


# ---------------------------------------------------------------------------------------------------------------------
# One step of Eq. 22 for every run
# ---------------------------------------------------------------------------------------------------------------------

def fused_model_losses(stack: StackedHead, configs: list[TrainConfig], cls: torch.Tensor, patches: torch.Tensor,
                       mask: torch.Tensor, labels: torch.Tensor, size: int, has_star: bool, real: torch.Tensor,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Every run's Eq. 22 terms, as loop.model_losses computes them. Returns (values [K, 4] of task, critic, latent,
    total, detached; the sum of the K totals, to backpropagate; the stacked sigma(f) of the unlabelled rows
    [K, B, C], detached, or None when no run has a critic).

    Inputs are the concatenated rows: labelled [0, B), then x* [B, 2B) when `has_star`, then the unlabelled rows.
    """
    with autocast(device):
        z, logits = stack.forward(cls, patches, mask)
    z, logits = z.float(), logits.float()
    any_critic = any(c.critic_weight > 0 for c in configs)
    unlabelled = slice((2 if has_star else 1) * size, None)
    zero = torch.zeros((), device=logits.device)
    fakes = []
    for k, config in enumerate(configs):
        # Every run's sigma(f_U) is formed (a run without critic gets a value its loss never uses) so that one
        # stacked discriminator call serves all runs.
        fakes.append(log_rescale(logits[k, unlabelled], config.rescale).exp() if any_critic else None)
    fake_logits = stack.discriminator(torch.stack(fakes)) if any_critic else None
    real_logits = stack.discriminator(real) if any_critic else None

    rows, totals = [], []
    for k, config in enumerate(configs):
        task = get_task_loss(config.loss)(logits[k, :size], labels, config.rescale)
        total, critic_value, latent_value = task, zero, zero
        if config.latent_weight > 0:
            latent_value = latent_infonce(z[k, :size], z[k, size:2 * size], config.temperature)
            total = total + config.latent_weight * latent_value
        if config.critic_weight > 0:
            if config.critic_form == "nonsaturating":
                critic_value = critic_nonsaturating(fake_logits[k])
            else:
                critic_value = critic(real_logits[k], fake_logits[k])
            total = total + config.critic_weight * critic_value
        totals.append(total)
        rows.append(torch.stack([task, critic_value, latent_value, total]).detach())
    total_sum = torch.stack(totals).sum()
    fake = torch.stack(fakes).detach() if any_critic else None
    return torch.stack(rows), total_sum, fake


def fused_discriminator_loss(stack: StackedHead, configs: list[TrainConfig], real: torch.Tensor,
                             fake: torch.Tensor) -> torch.Tensor:
    """Per-run -Eq. 20 ([K], 0 for runs without critic) as loop.discriminator_loss computes it."""
    real_logits, fake_logits = stack.discriminator(real), stack.discriminator(fake)
    values = [-critic(real_logits[k], fake_logits[k]) if c.critic_weight > 0 else real_logits.new_zeros(())
              for k, c in enumerate(configs)]
    return torch.stack(values)


@torch.inference_mode()
def evaluate_fused(stack: StackedHead, split: SplitTensors, device: torch.device, batch_size: int) -> list[float]:
    """Each run's test accuracy (argmax without dropout, over the labelled test samples), as loop.evaluate."""
    correct = torch.zeros(stack.k, dtype=torch.int64)
    total = 0
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        cls, patches, labels = split.batch(index, device)
        with autocast(device):
            _, logits = stack.forward(cls, patches)
        known = labels >= 0
        correct += ((logits.argmax(dim=2) == labels) & known).sum(dim=1).cpu()
        total += int(known.sum())
    return [int(c) / max(total, 1) for c in correct]


def train_fused(configs: list[TrainConfig], train_split: SplitTensors, test_split: SplitTensors, num_classes: int,
                device: torch.device, progress: bool = True, return_heads: bool = False):
    """Train K runs that differ only in PER_RUN_FIELDS in one pass; return one metrics dict per run, shaped as
    loop.train's (`test_accuracy`, `epochs` [{epoch, test_accuracy, mean_losses}], `steps`, `wall_time_s`, ...), plus
    `nonfinite_step` (the first step whose loss was not finite, else None: one diverging run does not stop the
    others). With `return_heads`, returns (metrics, heads)."""
    for config in configs:
        config.validate()
    check_fusable(configs)
    first = configs[0]
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    k = len(configs)
    # Same seed and widths: K copies of the one initial head loop.train builds (each run still owns its copy).
    heads = [build_head(train_split.cls.shape[1], train_split.patches.shape[2], num_classes, first.proj_dim,
                        first.pred_dim, first.disc_dim, init_seed=derived_seed(first.seed, "init")).to(device)
             for _ in range(k)]
    stack = StackedHead(heads)
    del heads
    fused_kernels = device.type == "cuda"
    model_opt = torch.optim.AdamW(stack.model_parameters(), lr=first.lr, weight_decay=first.weight_decay,
                                  fused=fused_kernels)
    disc_opt = torch.optim.AdamW(stack.discriminator_parameters(), lr=first.lr, weight_decay=first.weight_decay,
                                 fused=fused_kernels)

    draws = start_run_draws(first, train_split.labels, num_classes, device)
    data_gen, dropout_gen, subset, partners, prior = draws.data, draws.dropout, draws.subset, draws.partners, draws.prior
    steps_per_epoch = -(-len(train_split) // first.batch_size)
    any_critic, any_latent = any(c.critic_weight > 0 for c in configs), any(c.latent_weight > 0 for c in configs)
    # The discriminator's schedule only exists where it steps (loop.train's never-stepped one changes nothing).
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, first))
                 for opt in ((model_opt, disc_opt) if any_critic else (model_opt,))]

    histories: list[list[dict]] = [[] for _ in configs]
    nonfinite: list[int | None] = [None] * k
    step = 0
    start_time = time.perf_counter()
    bar = tqdm(total=steps_per_epoch * first.epochs, desc=f"fused x{k}", unit="step", disable=not progress,
               leave=False, dynamic_ncols=True)
    for epoch in range(first.epochs):
        plan = epoch_plan(len(train_split), subset, first.batch_size, data_gen)
        window, epoch_sums = [], torch.zeros(k, len(LOSS_NAMES), dtype=torch.float64)
        for index, (unlabelled_index, labelled_index) in enumerate(zip(plan.unlabelled, plan.labelled)):
            step += 1
            # 1. batch: the same draws, in the same order, as loop.train
            star_index = draw_partners(partners, labelled_index, data_gen)
            real = draw_prior_onehot(prior, len(unlabelled_index), data_gen).to(device)
            labelled_cls, labelled_patches, labels = train_split.batch(labelled_index, device)
            parts_cls, parts_patches = [labelled_cls], [labelled_patches]
            size = len(labels)
            mask = draw_dropout_mask((3 * size, first.proj_dim), first.dropout, dropout_gen, device)
            parts_mask = [mask[:size]]
            if any_latent:
                star_cls, star_patches, _ = train_split.batch(star_index, device)
                parts_cls.append(star_cls)
                parts_patches.append(star_patches)
                parts_mask.append(mask[size:2 * size])
            if any_critic:
                unlabelled_cls, unlabelled_patches, _ = train_split.batch(unlabelled_index, device)
                parts_cls.append(unlabelled_cls)
                parts_patches.append(unlabelled_patches)
                parts_mask.append(mask[2 * size:2 * size + len(unlabelled_index)])
            # 3. every run's model step
            values, total, fake = fused_model_losses(
                stack, configs, torch.cat(parts_cls), torch.cat(parts_patches), torch.cat(parts_mask), labels, size,
                any_latent, real, device)
            model_opt.zero_grad(set_to_none=True)
            total.backward()
            model_opt.step()
            # 4. the critic runs' discriminator step (the others' D is never read, as in loop.train)
            disc_values = torch.zeros(k, device=device)
            if any_critic:
                disc_opt.zero_grad(set_to_none=True)
                disc_values = fused_discriminator_loss(stack, configs, real, fake)
                disc_values.sum().backward()
                disc_opt.step()
            for schedule in schedules:
                schedule.step()
            window.append(torch.cat([values, disc_values.detach().unsqueeze(1)], dim=1))
            if len(window) == SYNC_EVERY or index == len(plan) - 1:
                block = torch.stack(window).cpu().double()  # [steps, K, 5]
                for run in range(k):
                    bad = ~torch.isfinite(block[:, run]).all(dim=1)
                    if nonfinite[run] is None and bad.any():
                        nonfinite[run] = step - len(window) + 1 + int(torch.nonzero(bad)[0, 0])
                epoch_sums += block.sum(dim=0)
                bar.update(len(window))
                window = []
        accuracies = evaluate_fused(stack, test_split, device, first.eval_batch_size)
        means = epoch_sums / len(plan)
        for run, config in enumerate(configs):
            histories[run].append({
                "epoch": epoch + 1, "test_accuracy": accuracies[run],
                "mean_losses": {n: float(v) for n, v in zip(LOSS_NAMES, means[run]) if n in active_terms(config)}})
    bar.close()
    wall = time.perf_counter() - start_time
    metrics = [{"test_accuracy": history[-1]["test_accuracy"], "epochs": history, "steps": step,
                "wall_time_s": wall, "device": str(device), "num_classes": num_classes, "fused_runs": k,
                "train_samples": len(train_split), "test_samples": len(test_split),
                "nonfinite_step": nonfinite[run]}
               for run, history in enumerate(histories)]
    if return_heads:
        return metrics, stack.unstack()
    return metrics
