"""Task loss cat_twin_unlabelled: Eq. 18 with the unlabelled batch in the denominator (ours).

The paper's Eq. 10 writes the denominator as an expectation over x' ~ p(x), the marginal of the images, which the
unlabelled batch samples; its section 4.3 says that the task losses "use only the labelled data", which cat_twin.py
follows. This is the other reading:

    L = -1/N sum_i log[ sigma_{y_i}(f(x_i)) / (1/M sum_j sigma_{y_i}(f(x'_j))) ],   x_i labelled, x'_j unlabelled

computed in log space like cat_twin (logsumexp over the M unlabelled rows, one per class).
"""
import math

import torch

from twinturbo.train.losses import log_rescale
from twinturbo.train.terms import StepView, Term


def cat_twin_unlabelled(logits: torch.Tensor, labels: torch.Tensor, unlabelled_logits: torch.Tensor,
                        rescale: str = "softmax") -> torch.Tensor:
    """The loss above from the labelled logits [N, C], their labels [N] and the unlabelled logits [M, C]."""
    labels = labels.long()
    log_numerator = log_rescale(logits, rescale).gather(1, labels.unsqueeze(1)).squeeze(1)
    log_unlabelled = log_rescale(unlabelled_logits, rescale)  # [M, C]
    log_batch_mean = torch.logsumexp(log_unlabelled, dim=0) - math.log(log_unlabelled.shape[0])  # [C]
    return -(log_numerator - log_batch_mean[labels]).mean()


def loss(view: StepView):
    return cat_twin_unlabelled(view.logits["labelled"], view.labels, view.logits["unlabelled"], view.config.rescale)


TERM = Term("cat_twin_unlabelled", "categorical twin-entropy, denominator over the unlabelled batch (Eq. 18, x' ~ "
            "p(x); ours)", frozenset({"labelled", "unlabelled"}), loss, order=4)
