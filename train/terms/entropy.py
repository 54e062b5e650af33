"""Entropy minimisation on the unlabelled predictions (Grandvalet & Bengio, 2005; ours as a term of Eq. 22):

    L_E = -1/M sum_j sum_c p_jc log p_jc,   p_j = sigma(f(x'_j)) / sum_c sigma(f(x'_j))_c   over the unlabelled batch

It pushes each prediction towards a one-hot vector without asking their marginal to match the prior p(y): of the
critic's two effects (confident predictions, the prior's marginal) it has only the first, so setup 1 + entropy
against setup 2 separates them. Computed in log space: log p = log sigma - logsumexp_c log sigma.
"""
import torch

from twinturbo.train.losses import normalised_log_rescale
from twinturbo.train.terms import StepView, Term, Weight


def prediction_entropy(logits: torch.Tensor, rescale: str = "softmax") -> torch.Tensor:
    """Mean entropy (nats) of the normalised sigma(f) of logits [M, C]."""
    log_p = normalised_log_rescale(logits, rescale)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def loss(view: StepView):
    return prediction_entropy(view.logits["unlabelled"], view.config.rescale)


TERM = Term("entropy", "entropy minimisation on the unlabelled predictions (Grandvalet & Bengio 2005; ours)",
            frozenset({"unlabelled"}), loss,
            weight=Weight("--entropy", "λ_E", "Weight of the entropy of the unlabelled predictions (0 = off).",
                          (0.01, 0.1, 1.0)),
            order=3)
