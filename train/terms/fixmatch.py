"""FixMatch's consistency term (Sohn et al. 2020, the paper's ref. [12]) on stored views, as a term of Eq. 22:

    L_U = 1/|U| sum_i 1[max_c p_ic >= tau] * -log q_i,yhat_i,    yhat_i = argmax_c p_ic

with p_i the prediction on a weak view of unlabelled image i (a constant: no gradient flows through the pseudo-label),
q_i the prediction on a strong view of the same image, and the mean over the whole unlabelled batch (not over the
confident rows), as FixMatch defines it. Each step reads one stored view of each kind per image
(extract/views.py, step.step_inputs). FixMatch's predictions are softmax; here p and q are the run's sigma (Eq. 8 or
9) normalised to sum 1, which is softmax for the softmax setups and the same normalisation entropy.py uses for
sigmoid ones (ours). Computed in log space.
"""
from __future__ import annotations

import torch

from twinturbo.train.losses import log_rescale
from twinturbo.train.terms import Option, StepView, Term, Weight


def normalised_log_probabilities(logits: torch.Tensor, rescale: str) -> torch.Tensor:
    """log of sigma(f) normalised to sum 1 over the classes, [N, C] float32."""
    log_scores = log_rescale(logits, rescale)
    return log_scores - torch.logsumexp(log_scores, dim=1, keepdim=True)


def pseudo_label_consistency(weak_logits: torch.Tensor, strong_logits: torch.Tensor, thresholds: torch.Tensor | float,
                             rescale: str = "softmax") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, confidence, pseudo-label): the mean over the batch of 1[confidence_i >= threshold of its pseudo-label]
    times the cross-entropy of the strong view's prediction against the weak view's argmax. `thresholds` is one
    number (FixMatch) or one per class [C] (FlexMatch)."""
    with torch.no_grad():
        confidence, pseudo = normalised_log_probabilities(weak_logits.detach(), rescale).exp().max(dim=1)
        limit = thresholds[pseudo] if isinstance(thresholds, torch.Tensor) else thresholds
        keep = (confidence >= limit).float()
    log_q = normalised_log_probabilities(strong_logits, rescale)
    cross_entropy = -log_q.gather(1, pseudo[:, None]).squeeze(1)
    return (keep * cross_entropy).mean(), confidence, pseudo


def loss(view: StepView) -> torch.Tensor:
    value, _, _ = pseudo_label_consistency(view.logits["unlabelled:weak"], view.logits["unlabelled:strong"],
                                           view.config.fixmatch_threshold, view.config.rescale)
    return value


TERM = Term("fixmatch", "FixMatch: weak-view pseudo-labels above a threshold, cross-entropy of the strong view "
            "(Sohn et al. 2020)", frozenset({"unlabelled:weak", "unlabelled:strong"}), loss,
            weight=Weight("--fixmatch", "λ_Fix", "Weight lambda_U of FixMatch's unlabelled term (0 = off; reads the "
                          "store's weak and strong views).", (0.3, 1.0, 3.0)),
            options=(Option("fixmatch_threshold", "--fixmatch-threshold", 0.95, "FixMatch's confidence threshold tau "
                            "of a pseudo-label.", grid=True, symbol="τ_Fix", bounds=(0.0, 1.0)),),
            order=4)
