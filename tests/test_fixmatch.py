"""The consistency terms on stored views, fixmatch.py and flexmatch.py, each against an independent float64
computation of its formula (numpy, written from Sohn et al. 2020 and Zhang et al. 2021 / the USB reference code)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from twinturbo.train.config import TrainConfig
from twinturbo.train.terms import TERMS, StepView, rows_needed, views_needed


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def normalised(x: np.ndarray, rescale: str) -> np.ndarray:
    if rescale == "softmax":
        return softmax(x)
    s = 1 / (1 + np.exp(-x))
    return s / s.sum(axis=1, keepdims=True)


def fixmatch_by_hand(weak: np.ndarray, strong: np.ndarray, tau, rescale: str = "softmax") -> float:
    """1/|U| sum_i 1[max p_i >= tau(argmax p_i)] (-log q_i[argmax p_i]), in float64."""
    p, q = normalised(weak, rescale), normalised(strong, rescale)
    pseudo = p.argmax(axis=1)
    limit = tau[pseudo] if isinstance(tau, np.ndarray) else tau
    mask = p.max(axis=1) >= limit
    return float(np.mean(mask * -np.log(q[np.arange(len(q)), pseudo])))


def view(config: TrainConfig, weak, strong, index=None, state=None, num_samples=0) -> StepView:
    index = torch.arange(len(weak)) if index is None else index
    return StepView(config, torch.empty(0, dtype=torch.int64), {},
                    {"unlabelled:weak": weak, "unlabelled:strong": strong},
                    indices={"unlabelled:weak": index, "unlabelled:strong": index},
                    state={} if state is None else state, num_samples=num_samples)


def logits(seed: int, n: int = 64, classes: int = 5, sharpness: float = 4.0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, classes)) * sharpness).float()


@pytest.mark.parametrize("rescale", ["softmax", "sigmoid"])
@pytest.mark.parametrize("tau", [0.5, 0.95])
def test_fixmatch_equals_its_formula_and_no_gradient_reaches_the_weak_view(rescale, tau):
    weak, strong = logits(0, sharpness=8.0).requires_grad_(), logits(1).requires_grad_()
    config = TrainConfig(fixmatch_weight=1.0, fixmatch_threshold=tau, rescale=rescale)
    value = TERMS["fixmatch"].loss(view(config, weak, strong))
    expected = fixmatch_by_hand(weak.detach().double().numpy(), strong.detach().double().numpy(), tau, rescale)
    assert 0 < expected and value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert weak.grad is None or not weak.grad.any()  # the pseudo-label is a constant
    assert strong.grad.abs().sum() > 0


def test_fixmatch_reads_the_weak_and_strong_views_of_the_unlabelled_batch_and_is_off_at_zero():
    assert TERMS["fixmatch"].rows == {"unlabelled:weak", "unlabelled:strong"}
    assert views_needed(TrainConfig(fixmatch_weight=1.0)) == {"weak", "strong"}
    assert rows_needed(TrainConfig()) == {"labelled"} and not views_needed(TrainConfig())
    assert "fixmatch_threshold" not in TrainConfig().identity()  # a run without it keeps its id
    assert TrainConfig(fixmatch_weight=1.0).identity()["fixmatch_threshold"] == 0.95


def usb_flexmatch(weak_steps, indices, num_samples: int, classes: int, tau: float, warmup: bool):
    """FlexMatch as USB's FlexMatchThresholdingHook computes it, in float64: per step the classwise 'accuracy' of the
    record so far, the mask with the convex mapping, then the record updated with the step's confident
    predictions."""
    selected = np.full(num_samples, -1)
    classwise = np.zeros(classes)
    masks = []
    for weak, index in zip(weak_steps, indices):
        p = softmax(weak)
        conf, pseudo = p.max(axis=1), p.argmax(axis=1)
        masks.append(conf >= tau * (classwise[pseudo] / (2.0 - classwise[pseudo])))
        chosen = conf >= tau
        selected[index[chosen]] = pseudo[chosen]
        counter = Counter(selected.tolist())
        if max(counter.values()) < num_samples:  # not all -1
            if warmup:
                classwise = np.array([counter[c] / max(counter.values()) for c in range(classes)])
            else:
                without = {k: v for k, v in counter.items() if k != -1}
                classwise = np.array([counter[c] / max(without.values()) for c in range(classes)])
    return masks, selected


@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_equals_the_reference_algorithm_step_by_step(warmup):
    classes, num_samples, tau, steps = 5, 60, 0.7, 8
    rng = np.random.default_rng(3)
    weak_steps = [rng.normal(size=(40, classes)) * 3 for _ in range(steps)]
    strong_steps = [rng.normal(size=(40, classes)) * 3 for _ in range(steps)]
    indices = [rng.choice(num_samples, 40, replace=False) for _ in range(steps)]
    masks, selected = usb_flexmatch(weak_steps, indices, num_samples, classes, tau, warmup)
    config = TrainConfig(flexmatch_weight=1.0, flexmatch_threshold=tau, flexmatch_warmup=warmup)
    state: dict = {}
    for weak, strong, index, mask in zip(weak_steps, strong_steps, indices, masks):
        value = TERMS["flexmatch"].loss(view(config, torch.from_numpy(weak).float(), torch.from_numpy(strong).float(),
                                             torch.from_numpy(index), state, num_samples))
        q = softmax(strong)
        expected = float(np.mean(mask * -np.log(q[np.arange(len(q)), softmax(weak).argmax(axis=1)])))
        assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert np.array_equal(state["flexmatch_selected"].numpy(), selected)
    # the first step has no record: every threshold is 0 and every prediction is a pseudo-label
    assert masks[0].all() and not masks[-1].all()


def test_flexmatch_thresholds_warm_up_from_zero_to_tau():
    from twinturbo.train.terms.flexmatch import class_thresholds

    none_yet = torch.full((10,), -1)
    assert torch.equal(class_thresholds(none_yet, 3, 0.95, True), torch.zeros(3))
    half = torch.tensor([0, 0, 1, -1, -1, -1, -1, -1, -1, -1])  # 7 unused outnumber every class
    beta = torch.tensor([2 / 7, 1 / 7, 0.0])
    assert torch.allclose(class_thresholds(half, 3, 0.95, True), 0.95 * beta / (2 - beta))
    beta = torch.tensor([1.0, 0.5, 0.0])  # without the warm-up the best-learnt class is at tau at once
    assert torch.allclose(class_thresholds(half, 3, 0.95, False), 0.95 * beta / (2 - beta))
