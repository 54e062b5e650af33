"""FixMatch's consistency term (Sohn et al. 2020, the paper's ref. [12]) on stored views, as a term of Eq. 22: the
masked pseudo-label loss of pseudo_labels.py with one threshold tau for every class. Each step reads one stored view
of each kind per image (extract/views.py, step.step_inputs).
"""
from __future__ import annotations

import torch

from twinturbo.train.terms import StepView
from twinturbo.train.terms.pseudo_labels import consistency_term, pseudo_label_consistency


def loss(view: StepView) -> torch.Tensor:
    value, _, _ = pseudo_label_consistency(view.logits["unlabelled:weak"], view.logits["unlabelled:strong"],
                                           view.config.fixmatch_threshold, view.config.rescale)
    return value


TERM = consistency_term("fixmatch", "FixMatch: weak-view pseudo-labels above a threshold, cross-entropy of the strong "
                        "view (Sohn et al. 2020)", loss, "Fix", "FixMatch",
                        "FixMatch's confidence threshold tau of a pseudo-label.", order=4)
