"""What the semi-supervised terms of Eq. 22 are doing, measured during training and kept per epoch in the metrics.

The critic (Eq. 20) can only push the predictions on unlabelled images towards one-hot vectors and their batch
marginal towards the prior p(y); once the head's predictions are confident and balanced, D cannot tell them from
the prior's one-hots and the term sits at -2 log 2 with no gradient to give. These figures tell which is happening:

    d_real_acc, d_fake_acc   D's accuracy on the prior's one-hots (logit > 0) and on sigma(f_U) (logit < 0); both
                             ~0.5 means D is at chance, whatever the value of the critic term
    unlabelled_entropy       mean entropy (nats) of sigma(f_U) normalised to sum 1: what D sees; log C = uniform,
                             0 = one-hot
    marginal_tv              total variation between the batch mean of normalised sigma(f_U) and p(y)
    grad_task, grad_<term>   norm of each weighted term's gradient (lambda x dL/dW) at the projector's weight, the
                             layer all terms share, measured every GRADIENT_EVERY steps, for the task loss and every
                             term of train/terms/ (grad_critic, grad_latent, ...)
"""
from __future__ import annotations

import math

import torch

from twinturbo.train.terms import DISPLAY_ORDER

DIAGNOSTIC_NAMES = ("d_real_acc", "d_fake_acc", "unlabelled_entropy", "marginal_tv", "grad_task",
                    *(f"grad_{term.name}" for term in DISPLAY_ORDER))
GRADIENT_EVERY = 10  # steps between gradient-norm measurements (three extra partial backward passes each)


def critic_figures(real_logits: torch.Tensor, fake_logits: torch.Tensor, fake: torch.Tensor,
                   prior: torch.Tensor) -> torch.Tensor:
    """[d_real_acc, d_fake_acc, unlabelled_entropy, marginal_tv] of one step, float32 on the logits' device."""
    probs = fake / fake.sum(dim=1, keepdim=True).clamp_min(1e-12)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1).mean()
    marginal_tv = 0.5 * (probs.mean(dim=0) - prior.to(probs)).abs().sum()
    return torch.stack([(real_logits > 0).float().mean(), (fake_logits < 0).float().mean(), entropy, marginal_tv])


def term_gradient_norms(values: dict[str, torch.Tensor], config, shared: torch.Tensor) -> torch.Tensor:
    """[grad_task, grad_<term> for each term of DISPLAY_ORDER]: ||weight x d term / d shared|| for the task loss
    (weight 1) and each active term of the run (`values`, step.run_terms), NaN for the others.

    Uses `torch.autograd.grad` with the graph retained, so the training step's own backward is unaffected.
    """
    norms = []
    weights = {"task": 1.0, **{term.name: getattr(config, term.weight_field) for term in DISPLAY_ORDER}}
    for name in ("task", *(term.name for term in DISPLAY_ORDER)):
        weight = weights[name]
        if weight == 0 or name not in values or not values[name].requires_grad:
            norms.append(torch.tensor(math.nan, device=shared.device))
            continue
        (grad,) = torch.autograd.grad(values[name], shared, retain_graph=True, allow_unused=True)
        norms.append(torch.zeros((), device=shared.device) if grad is None else weight * grad.float().norm())
    return torch.stack(norms)


def epoch_means(rows: list[torch.Tensor]) -> dict[str, float]:
    """Per-epoch means of the diagnostic rows [len(DIAGNOSTIC_NAMES)] (NaN entries, not measured that step, are
    skipped)."""
    if not rows:
        return {}
    values = torch.stack(rows).double().cpu()
    measured = ~torch.isnan(values)
    sums = torch.where(measured, values, torch.zeros_like(values)).sum(dim=0)
    counts = measured.sum(dim=0)
    return {name: float(sums[i] / counts[i]) for i, name in enumerate(DIAGNOSTIC_NAMES) if counts[i] > 0}
