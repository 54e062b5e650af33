"""What FixMatch (fixmatch.py) and FlexMatch (flexmatch.py) share: the masked pseudo-label loss on a weak and a strong
stored view of each unlabelled image, and the shape of their TERM (its row groups, weight and threshold option).
No TERM here: the registry skips this module.

    L_U = 1/|U| sum_i 1[max_c p_ic >= T(yhat_i)] * -log q_i,yhat_i,    yhat_i = argmax_c p_ic

with p_i the prediction on the weak view (a constant: no gradient flows through the pseudo-label), q_i the prediction
on the strong view, T one threshold (FixMatch) or one per class (FlexMatch), and the mean over the whole unlabelled
batch, not over the confident rows, as FixMatch defines it. FixMatch's predictions are softmax; here p and q are the
run's sigma (Eq. 8 or 9) normalised to sum 1, which is softmax for the softmax setups and the same normalisation
entropy.py uses for sigmoid ones (ours). Computed in log space.
"""
from __future__ import annotations

from typing import Callable

import torch

from twinturbo.train.losses import normalised_log_rescale
from twinturbo.train.terms import Option, StepView, Term, Weight

VIEWS = frozenset({"unlabelled:weak", "unlabelled:strong"})  # the row groups both read


def pseudo_label_consistency(weak_logits: torch.Tensor, strong_logits: torch.Tensor, thresholds: torch.Tensor | float,
                             rescale: str = "softmax") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, confidence, pseudo-label): the mean over the batch of 1[confidence_i >= threshold of its pseudo-label]
    times the cross-entropy of the strong view's prediction against the weak view's argmax. `thresholds` is one
    number (FixMatch) or one per class [C] (FlexMatch)."""
    with torch.no_grad():
        confidence, pseudo = normalised_log_rescale(weak_logits.detach(), rescale).exp().max(dim=1)
        limit = thresholds[pseudo] if isinstance(thresholds, torch.Tensor) else thresholds
        keep = (confidence >= limit).float()
    log_q = normalised_log_rescale(strong_logits, rescale)
    cross_entropy = -log_q.gather(1, pseudo[:, None]).squeeze(1)
    return (keep * cross_entropy).mean(), confidence, pseudo


def consistency_term(name: str, summary: str, loss: Callable[[StepView], torch.Tensor], symbol: str, who: str,
                     threshold_help: str, order: int, extra: tuple[Option, ...] = ()) -> Term:
    """The TERM of a pseudo-label consistency method `name` (`--<name>` its weight λ_U with the grid 0.3, 1, 3, and
    `--<name>-threshold` its τ, 0.95 by default, swept like a weight)."""
    return Term(name, summary, VIEWS, loss,
                weight=Weight(f"--{name}", f"λ_{symbol}", f"Weight lambda_U of {who}'s unlabelled term (0 = off; "
                              "reads the store's weak and strong views).", (0.3, 1.0, 3.0)),
                options=(Option(f"{name}_threshold", f"--{name}-threshold", 0.95, threshold_help, grid=True,
                                symbol=f"τ_{symbol}", bounds=(0.0, 1.0)), *extra),
                order=order)
