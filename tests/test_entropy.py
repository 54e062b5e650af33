"""The entropy-minimisation term (train/terms/entropy.py) against a float64 reference, and as a term of Eq. 22."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twinturbo.train.terms import TERMS, rows_needed
from twinturbo.train.terms.entropy import prediction_entropy


def reference(logits: np.ndarray, rescale: str) -> float:
    """-1/M sum_j sum_c p_jc log p_jc with p_j = sigma(f_j) / sum_c sigma(f_j)_c, in float64 loops."""
    total = 0.0
    for row in logits.astype(np.float64):
        scores = np.exp(row - row.max()) if rescale == "softmax" else 1 / (1 + np.exp(-row))
        p = scores / scores.sum()
        total -= sum(pc * np.log(pc) for pc in p)
    return total / len(logits)


@pytest.mark.parametrize("rescale", ["softmax", "sigmoid"])
def test_entropy_matches_a_float64_reference(rescale):
    logits = torch.randn(37, 6, generator=torch.Generator().manual_seed(0)) * 3
    got = prediction_entropy(logits, rescale)
    assert float(got) == pytest.approx(reference(logits.numpy(), rescale), rel=1e-5)
    uniform = prediction_entropy(torch.zeros(4, 6), rescale)
    assert float(uniform) == pytest.approx(np.log(6), rel=1e-6)  # uniform predictions: log C


def test_entropy_stays_finite_on_confident_predictions_and_pushes_towards_one_hot():
    logits = torch.tensor([[1e4, 0.0, -1e4], [3.0, 1.0, 0.5]], requires_grad=True)
    value = prediction_entropy(logits, "softmax")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    assert logits.grad[1, 0] < 0  # minimising raises the top logit of the unsure row


def test_entropy_is_a_weighted_term_on_the_unlabelled_rows(quick_config):
    term = TERMS["entropy"]
    assert term.weight.flag == "--entropy" and term.rows == frozenset({"unlabelled"}) and not term.discriminator
    assert rows_needed(quick_config(entropy_weight=0.5)) == {"labelled", "unlabelled"}
    assert quick_config().entropy_weight == 0.0  # off unless asked for


def test_a_run_with_entropy_trains_and_logs_it(synthetic_splits, quick_config):
    from twinturbo.train.run.loop import train

    train_split, test_split = synthetic_splits
    with_entropy = train(quick_config(epochs=2, entropy_weight=0.5), train_split, test_split, 10,
                         torch.device("cpu"), progress=False).metrics
    plain = train(quick_config(epochs=2), train_split, test_split, 10, torch.device("cpu"), progress=False).metrics
    losses = with_entropy["epochs"][-1]["mean_losses"]
    assert set(losses) == {"task", "entropy", "total"} and 0 < losses["entropy"] <= np.log(10)
    assert with_entropy["epochs"][-1]["diagnostics"]["grad_entropy"] > 0  # measured at step 10, in epoch 2
    assert losses["task"] != plain["epochs"][-1]["mean_losses"]["task"]
