"""cat_twin with the unlabelled batch in Eq. 18's denominator (train/terms/cat_twin_unlabelled.py) against a float64
reference, and as a task loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from twinturbo.train.losses import cat_twin
from twinturbo.train.terms import TASK_LOSSES, rows_needed
from twinturbo.train.terms.cat_twin_unlabelled import cat_twin_unlabelled


def reference(logits: np.ndarray, labels: np.ndarray, unlabelled: np.ndarray, rescale: str) -> float:
    """-1/N sum_i log[ sigma_{y_i}(f_i) / (1/M sum_j sigma_{y_i}(f'_j)) ], probabilities formed explicitly."""
    def sigma(row):
        row = row.astype(np.float64)
        if rescale == "softmax":
            e = np.exp(row - row.max())
            return e / e.sum()
        return 1 / (1 + np.exp(-row))

    total = 0.0
    for row, label in zip(logits, labels):
        denominator = np.mean([sigma(other)[label] for other in unlabelled])
        total -= np.log(sigma(row)[label] / denominator)
    return total / len(logits)


@pytest.mark.parametrize("rescale", ["softmax", "sigmoid"])
def test_matches_a_float64_reference(rescale):
    generator = torch.Generator().manual_seed(1)
    logits, unlabelled = torch.randn(9, 5, generator=generator) * 2, torch.randn(23, 5, generator=generator) * 2
    labels = torch.randint(0, 5, (9,), generator=generator)
    got = cat_twin_unlabelled(logits, labels, unlabelled, rescale)
    assert float(got) == pytest.approx(reference(logits.numpy(), labels.numpy(), unlabelled.numpy(), rescale),
                                       rel=1e-5)


def test_with_the_labelled_batch_as_denominator_it_is_cat_twin():
    logits, labels = torch.randn(12, 4), torch.randint(0, 4, (12,))
    torch.testing.assert_close(cat_twin_unlabelled(logits, labels, logits, "sigmoid"), cat_twin(logits, labels, "sigmoid"))


def test_it_is_a_task_loss_reading_both_batches(quick_config):
    assert TASK_LOSSES["cat_twin_unlabelled"].weight is None
    assert rows_needed(quick_config(loss="cat_twin_unlabelled")) == {"labelled", "unlabelled"}


def test_a_run_with_it_trains(synthetic_splits, quick_config):
    from twinturbo.train.run.loop import train

    train_split, test_split = synthetic_splits
    metrics = train(quick_config(epochs=2, loss="cat_twin_unlabelled", rescale="sigmoid"), train_split, test_split,
                    10, torch.device("cpu"), progress=False).metrics
    assert metrics["nonfinite_step"] is None and metrics["test_accuracy"] > 0.5  # separable tokens; chance 0.1
