"""FlexMatch's consistency term (Zhang et al. 2021, the paper's ref. [13]): FixMatch's term (fixmatch.py) with one
threshold per class, scaled by how far that class has been learnt ("curriculum pseudo-labelling"):

    sigma_t(c) = #{n : the latest confident prediction on unlabelled image n is c}   (confident: max p >= tau)
    beta_t(c)  = sigma_t(c) / max(max_c' sigma_t(c'), N - sum_c' sigma_t(c'))         (with the threshold warm-up)
               = sigma_t(c) / max_c' sigma_t(c')                                       (without it)
    T_t(c)     = M(beta_t(c)) * tau,   M(x) = x / (2 - x)                              (the convex mapping)

and the mask 1[max_c p_ic >= T_t(argmax p_i)]. The warm-up counts the images never yet predicted confidently as one
more 'class', so early on every threshold is low and rises as the unlabelled set gets labels. As in the authors'
code (TorchSSL, USB), each step masks with the thresholds of the record so far, then records its own confident
predictions (per image, the latest one counts); the record is the run's (StepView.state), over the N train images.
"""
from __future__ import annotations

import torch

from twinturbo.train.terms import Option, StepView
from twinturbo.train.terms.pseudo_labels import consistency_term, pseudo_label_consistency

STATE_KEY = "flexmatch_selected"  # per train image: the class of its latest confident prediction, -1 before one


def class_thresholds(selected: torch.Tensor, num_classes: int, threshold: float, warmup: bool) -> torch.Tensor:
    """T_t(c) of the module docstring, [C] float32, from the record `selected` [N] (-1 = not yet)."""
    counts = torch.bincount(selected[selected >= 0], minlength=num_classes).float()
    unused = (selected < 0).sum().float()
    denominator = torch.maximum(counts.max(), unused) if warmup else counts.max()
    learnt = counts / denominator.clamp_min(1.0)  # nothing recorded yet: every beta is 0
    return threshold * learnt / (2.0 - learnt)


def loss(view: StepView) -> torch.Tensor:
    weak, strong = view.logits["unlabelled:weak"], view.logits["unlabelled:strong"]
    config = view.config
    selected = view.state.get(STATE_KEY)
    if selected is None:
        selected = view.state[STATE_KEY] = torch.full((view.num_samples,), -1, dtype=torch.int64,
                                                      device=weak.device)
    thresholds = class_thresholds(selected, weak.shape[1], config.flexmatch_threshold, config.flexmatch_warmup)
    value, confidence, pseudo = pseudo_label_consistency(weak, strong, thresholds, config.rescale)
    confident = confidence >= config.flexmatch_threshold
    index = view.indices["unlabelled:weak"].to(weak.device)
    selected[index[confident]] = pseudo[confident]
    return value


TERM = consistency_term("flexmatch", "FlexMatch: FixMatch with class-wise thresholds from each class's learning status "
                        "(Zhang et al. 2021)", loss, "Flex", "FlexMatch",
                        "FlexMatch's upper threshold tau (each class's is M(beta) * tau).", order=5,
                        extra=(Option("flexmatch_warmup", "--flexmatch-warmup", True, "FlexMatch's threshold warm-up "
                                      "(images not yet confidently predicted count as one more class)."),))
