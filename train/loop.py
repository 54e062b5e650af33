"""The training loop of one run: Eq. 22 on cached tokens, with the discriminator's step after the model's.

Order of one step t (the fused sweep replays exactly this; all draws are made every step, whatever the weights):

    1. batch      unlabelled indices U_t and labelled indices L_t from the epoch plan (sampling.epoch_plan);
                  from the data generator: x* partners of L_t (draw_partners), then |U_t| prior one-hots (real y)
    2. masks      one dropout keep-mask [3B, P] from the dropout generator: rows [0,B) labelled, [B,2B) x*, [2B,3B)
                  unlabelled (B = |L_t| = |U_t|)
    3. model      losses = model_losses(head, batch, masks)      one forward over the concatenated active inputs
                  total = task + lambda_C * critic + lambda_L * latent   (a term with weight 0 is not computed)
                  model_opt.zero_grad; total.backward(); model_opt.step()      (D is read but not updated here)
    4. critic     only when lambda_C > 0: fake = sigma(f_U).detach() from step 3's forward (pre-update model)
                  d_loss = discriminator_loss(D, real, fake) = -Eq.20;  disc_opt.zero_grad; d_loss.backward(); step
    5. schedule   both LambdaLR schedulers step (linear warm-up, Appendix B)

Every step also records train/diagnostics.py's figures (D's accuracy on real and fake, the entropy and marginal of
the unlabelled predictions; every GRADIENT_EVERY steps each term's gradient norm at the projector), averaged per
epoch into the metrics: they say whether a semi-supervised term still has anything to say.

Randomness: three generators seeded from `derived_seed(seed, stream)`: `init` (the head's construction, on the CPU),
`data` (CPU: labelled subset, per-epoch permutations, partners, prior draws, in the order of sampling.py) and
`dropout` (on the training device). Nothing reads the global RNG. Two AdamW optimisers (model = mixer + projector +
predictor; discriminator), same schedule, no gradient clipping.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig, derived_seed
from twinturbo.common.store import open_store
from twinturbo.train.data import SplitTensors, load_split, num_classes_of
from twinturbo.train.diagnostics import GRADIENT_EVERY, critic_figures, epoch_means, term_gradient_norms
from twinturbo.train.losses import critic, critic_nonsaturating, get_task_loss, latent_infonce, log_rescale
from twinturbo.train.model import TwinTurboHead, build_head, draw_dropout_mask
from twinturbo.train.sampling import draw_partners, draw_prior_onehot, epoch_plan, start_run_draws

LOSS_NAMES = ("task", "critic", "latent", "total", "disc")
SYNC_EVERY = 10  # steps between host syncs: the NaN check and the progress bar read losses this often


@dataclass
class StepBatch:
    """The inputs of one step on the training device: each distinct sample's tokens once (float32 `cls`, `patches`),
    and per part of the step the rows that read them (`labelled_rows` with `labels`, `unlabelled_rows`, `star_rows`
    for x*; the last two None when their term is off). `real` holds the critic's one-hot draws from p(y).

    With 100 labels and batch 512 the labelled rows repeat each labelled sample ~5 times and x* is drawn from the
    same samples, so a setup-7 step of 1536 rows has at most 612 distinct samples.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    labels: torch.Tensor
    labelled_rows: torch.Tensor
    unlabelled_rows: torch.Tensor | None = None
    star_rows: torch.Tensor | None = None
    real: torch.Tensor | None = None

    @classmethod
    def gather(cls, split: SplitTensors, device: torch.device, labelled_index: torch.Tensor,
               unlabelled_index: torch.Tensor | None = None, star_index: torch.Tensor | None = None,
               real: torch.Tensor | None = None) -> "StepBatch":
        """Read the distinct samples of a step's index lists from `split` once each."""
        parts = [index for index in (labelled_index, unlabelled_index, star_index) if index is not None]
        distinct, rows = torch.unique(torch.cat(parts), return_inverse=True)
        tokens_cls, tokens_patches, labels = split.batch(distinct, device)
        rows = rows.to(device).split([len(index) for index in parts])
        labelled_rows, rows = rows[0], list(rows[1:])
        return cls(tokens_cls, tokens_patches, labels[labelled_rows], labelled_rows,
                   rows.pop(0) if unlabelled_index is not None else None,
                   rows.pop(0) if star_index is not None else None, real)

    @classmethod
    def from_tensors(cls, labelled_cls: torch.Tensor, labelled_patches: torch.Tensor, labels: torch.Tensor,
                     unlabelled_cls: torch.Tensor, unlabelled_patches: torch.Tensor,
                     star_cls: torch.Tensor | None = None, star_patches: torch.Tensor | None = None,
                     real: torch.Tensor | None = None) -> "StepBatch":
        """A batch from one tensor per part (every row its own sample; x* may be None)."""
        token_cls = [labelled_cls, unlabelled_cls] + ([star_cls] if star_cls is not None else [])
        token_patches = [labelled_patches, unlabelled_patches] + ([star_patches] if star_patches is not None else [])
        starts = torch.cumsum(torch.tensor([0] + [len(t) for t in token_cls]), 0).tolist()
        rows = [torch.arange(a, b, device=labels.device) for a, b in zip(starts[:-1], starts[1:])]
        return cls(torch.cat(token_cls), torch.cat(token_patches), labels, rows[0], rows[1],
                   rows[2] if star_cls is not None else None, real)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; float32 on the CPU, where bf16 is several times slower (DESIGN.md)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def model_losses(head: TwinTurboHead, batch: StepBatch, dropout_mask: torch.Tensor,
                 config: TrainConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The model's terms of Eq. 22 for one step, and the detached sigma(f) of the unlabelled batch (None without
    critic). Returns ({task, critic, latent, total}, fake); a term with weight 0 is not computed and reads 0.

    `dropout_mask` is [3B, P] (labelled, x*, unlabelled rows). The active rows go through the head in one forward,
    the token mixer and projector Linear once per distinct sample (TwinTurboHead.encode): every op of the head acts
    per sample, so this equals separate forwards up to float summation order.
    Pure in the parameters: it touches the head only through module calls, for torch.func.functional_call.
    """
    size = len(batch.labels)
    use_critic, use_latent = config.critic_weight > 0, config.latent_weight > 0
    parts_rows, parts_mask = [batch.labelled_rows], [dropout_mask[:size]]
    if use_latent:
        parts_rows.append(batch.star_rows)
        parts_mask.append(dropout_mask[size:2 * size])
    if use_critic:
        parts_rows.append(batch.unlabelled_rows)
        parts_mask.append(dropout_mask[2 * size:2 * size + len(batch.unlabelled_rows)])
    with autocast(batch.labels.device):
        z, logits = head(batch.cls, batch.patches, torch.cat(parts_mask), rows=torch.cat(parts_rows))
    z, logits = z.float(), logits.float()

    zero = torch.zeros((), device=logits.device)
    losses = {"task": get_task_loss(config.loss)(logits[:size], batch.labels, config.rescale),
              "critic": zero, "latent": zero}
    total = losses["task"]
    fake = None
    if use_latent:
        losses["latent"] = latent_infonce(z[:size], z[size:2 * size], config.temperature)
        total = total + config.latent_weight * losses["latent"]
    if use_critic:
        fake = log_rescale(logits[-len(batch.unlabelled_rows):], config.rescale).exp()
        fake_logits = head.discriminator(fake)
        if config.critic_form == "nonsaturating":
            losses["critic"] = critic_nonsaturating(fake_logits)
        else:
            losses["critic"] = critic(head.discriminator(batch.real), fake_logits)
        total = total + config.critic_weight * losses["critic"]
        fake = fake.detach()
    losses["total"] = total
    return losses, fake


def discriminator_loss(discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-Eq. 20: the discriminator maximises the critic value, so it minimises its negative."""
    return -critic(discriminator(real), discriminator(fake))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up from `warmup_start_factor` to 1 over `warmup_steps` optimiser steps, then constant (App. B)."""
    if step >= config.warmup_steps:
        return 1.0
    return config.warmup_start_factor + (1.0 - config.warmup_start_factor) * step / config.warmup_steps


def make_optimisers(head: TwinTurboHead, config: TrainConfig, device: torch.device):
    """Two AdamW (model, discriminator) with the same warm-up schedule; fused kernels on CUDA."""
    fused = device.type == "cuda"
    model_opt = torch.optim.AdamW(head.model_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=fused)
    disc_opt = torch.optim.AdamW(head.discriminator.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 fused=fused)
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, config))
                 for opt in (model_opt, disc_opt)]
    return model_opt, disc_opt, schedules


@torch.inference_mode()
def evaluate(head: TwinTurboHead, split: SplitTensors, device: torch.device, batch_size: int = 1024) -> float:
    """Test accuracy: argmax of the logits without dropout, over the samples that have a label."""
    correct = total = 0
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        cls, patches, labels = split.batch(index, device)
        with autocast(device):
            _, logits = head(cls, patches)
        known = labels >= 0
        correct += int((logits.argmax(dim=1) == labels)[known].sum())
        total += int(known.sum())
    return correct / max(total, 1)


@dataclass
class TrainResult:
    head: TwinTurboHead
    metrics: dict = field(default_factory=dict)


def _first_nonfinite(window: list[torch.Tensor], first_step: int) -> None:
    """Read the buffered per-step losses; raise with the step number of the first non-finite one."""
    values = torch.stack(window).cpu()
    bad = ~torch.isfinite(values).all(dim=1)
    if bad.any():
        offset = int(torch.nonzero(bad)[0, 0])
        row = values[offset]
        names = ", ".join(f"{n}={float(v):.4g}" for n, v in zip(LOSS_NAMES, row))
        raise TwinTurboError(
            f"loss is not finite at step {first_step + offset} ({names}); lower --lr or check the features"
        )


def train(config: TrainConfig, train_split: SplitTensors, test_split: SplitTensors, num_classes: int,
          device: torch.device, progress: bool = True) -> TrainResult:
    """Train one head on in-memory splits (Eq. 22, the step order of this module's docstring); evaluate each epoch."""
    config.validate()
    if device.type == "cuda":
        # Same seed, same device -> same accuracy: deterministic cuBLAS and kernels.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    head = build_head(train_split.cls.shape[1], train_split.patches.shape[2], num_classes, config.proj_dim,
                      config.pred_dim, config.disc_dim, init_seed=derived_seed(config.seed, "init")).to(device)
    model_opt, disc_opt, schedules = make_optimisers(head, config, device)

    draws = start_run_draws(config, train_split.labels, num_classes, device)
    data_gen, dropout_gen, subset, partners, prior = draws.data, draws.dropout, draws.subset, draws.partners, draws.prior
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    history, step = [], 0
    term_weights = {"task": 1.0, "critic": config.critic_weight, "latent": config.latent_weight}
    nan_figures, nan_gradients = torch.full((4,), math.nan, device=device), torch.full((3,), math.nan, device=device)
    start_time = time.perf_counter()
    bar = tqdm(total=total_steps, desc="tt-train", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(config.epochs):
        plan = epoch_plan(len(train_split), subset, config.batch_size, data_gen)
        window, window_start, epoch_sums = [], step + 1, torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
        diagnostics: list[torch.Tensor] = []
        for unlabelled_index, labelled_index in zip(plan.unlabelled, plan.labelled):
            step += 1
            # 1. batch
            star_index = draw_partners(partners, labelled_index, data_gen)
            real = draw_prior_onehot(prior, len(unlabelled_index), data_gen).to(device)
            batch = StepBatch.gather(train_split, device, labelled_index,
                                     unlabelled_index if config.critic_weight > 0 else None,
                                     star_index if config.latent_weight > 0 else None, real)
            # 2. dropout masks
            mask = draw_dropout_mask((3 * len(batch.labels), config.proj_dim), config.dropout, dropout_gen, device)
            # 3. model step: Eq. 22
            losses, fake = model_losses(head, batch, mask, config)
            gradient_norms = nan_gradients
            if step % GRADIENT_EVERY == 0:
                gradient_norms = term_gradient_norms(losses, term_weights, head.projector.fc.weight)
            model_opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            model_opt.step()
            # 4. critic step: D ascends Eq. 20 on the same real draws and the pre-update model's predictions
            disc_value, figures = torch.zeros((), device=device), nan_figures
            if fake is not None:
                disc_opt.zero_grad(set_to_none=True)  # drops what the model's backward left on D
                real_logits, fake_logits = head.discriminator(real), head.discriminator(fake)
                disc_value = -critic(real_logits, fake_logits)  # = discriminator_loss(D, real, fake)
                disc_value.backward()
                disc_opt.step()
                figures = critic_figures(real_logits.detach(), fake_logits.detach(), fake, prior)
            diagnostics.append(torch.cat([figures, gradient_norms]))
            # 5. schedule (the discriminator's only advances when it trains, i.e. for every step or never)
            schedules[0].step()
            if fake is not None:
                schedules[1].step()
            # log
            window.append(torch.stack([losses[n].detach().float() for n in LOSS_NAMES[:4]] + [disc_value.detach()]))
            if len(window) == SYNC_EVERY or step == window_start + len(plan) - 1:
                _first_nonfinite(window, step - len(window) + 1)
                values = torch.stack(window).cpu().double()
                epoch_sums += values.sum(dim=0)
                last = values[-1]
                bar.set_postfix({n: f"{float(v):.3f}" for n, v in zip(LOSS_NAMES, last)
                                 if n in active_terms(config)}, refresh=False)
                bar.update(len(window))
                window = []
        accuracy = evaluate(head, test_split, device, config.eval_batch_size)
        means = epoch_sums / len(plan)
        history.append({"epoch": epoch + 1, "test_accuracy": accuracy,
                        "mean_losses": {n: float(v) for n, v in zip(LOSS_NAMES, means) if n in active_terms(config)},
                        "diagnostics": epoch_means(diagnostics)})
        if progress:
            bar.write(f"epoch {epoch + 1}/{config.epochs}: test accuracy {accuracy:.4f}  "
                      + "  ".join(f"{n} {v:.4f}" for n, v in history[-1]["mean_losses"].items()))
    bar.close()
    wall = time.perf_counter() - start_time
    metrics = {"test_accuracy": history[-1]["test_accuracy"], "epochs": history, "steps": step,
               "wall_time_s": wall, "device": str(device), "num_classes": num_classes,
               "train_samples": len(train_split), "test_samples": len(test_split),
               "labelled_indices": subset.tolist()}
    return TrainResult(head, metrics)


def active_terms(config: TrainConfig) -> tuple[str, ...]:
    """Names of the loss values a run computes (and logs): weight-0 terms are absent."""
    names = ["task"]
    if config.critic_weight > 0:
        names.append("critic")
    if config.latent_weight > 0:
        names.append("latent")
    names.append("total")
    if config.critic_weight > 0:
        names.append("disc")
    return tuple(names)


def save_run(result: TrainResult, config: TrainConfig, out_dir: Path, store_identity: dict,
             dims: dict) -> None:
    """RUN_DIR/config.json, metrics.json and head.pt (state_dict + config + widths, enough to rebuild the head)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metrics = dict(result.metrics, store=store_identity)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    state = {k: v.detach().cpu() for k, v in result.head.state_dict().items()}
    torch.save({"state_dict": state, "config": config.to_dict(), "dims": dims}, out_dir / "head.pt")


def load_head(path: str | Path) -> TwinTurboHead:
    """Rebuild a trained head from RUN_DIR/head.pt."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    dims = checkpoint["dims"]
    head = TwinTurboHead(dims["cls_dim"], dims["patch_dim"], dims["num_classes"], dims["proj_dim"],
                         dims["pred_dim"], dims["disc_dim"])
    head.load_state_dict(checkpoint["state_dict"])
    return head


def train_from_store(features: str | Path, config: TrainConfig, device: torch.device, out_dir: Path | None = None,
                     progress: bool = True) -> tuple[TrainResult, Path]:
    """What `tt-train` does: open and check the store, load both splits once, train, write RUN_DIR."""
    config.validate()
    with open_store(features) as store:
        store.require_complete()
        for split in ("train", "test"):
            if split not in store.splits:
                raise TwinTurboError(f"{store.path} has no '{split}' split (it has: {', '.join(store.splits)})")
        train_split = load_split(store, "train", device, progress)
        test_split = load_split(store, "test", device, progress)
        num_classes = num_classes_of(store, train_split.labels)
        identity = store.identity()
        dataset = store.attrs.get("dataset") or store.path.name
    if out_dir is None:
        out_dir = Path("runs") / str(dataset).replace(":", "_").replace("/", "_") / config.run_name()
    result = train(config, train_split, test_split, num_classes, device, progress)
    dims = {"cls_dim": train_split.cls.shape[1], "patch_dim": train_split.patches.shape[2],
            "num_patches": train_split.patches.shape[1], "num_classes": num_classes,
            "proj_dim": config.proj_dim, "pred_dim": config.pred_dim, "disc_dim": config.disc_dim}
    save_run(result, config, out_dir, identity, dims)
    return result, out_dir
