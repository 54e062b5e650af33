"""Training diagnostics: D's accuracies, the unlabelled predictions' entropy and marginal, per-term gradient norms."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twinturbo.train.run.diagnostics import DIAGNOSTIC_NAMES, critic_figures, epoch_means, term_gradient_norms
from twinturbo.train.run.loop import train
from conftest import make_head
from twinturbo.train.heads.blocks import draw_dropout_mask
from twinturbo.train.run.step import StepBatch

CLASSES = 10  # of the synthetic store (conftest.py)
SMALL = dict(proj_dim=64, pred_dim=32, disc_dim=16)


def test_critic_figures_match_a_numpy_computation():
    generator = torch.Generator().manual_seed(0)
    real_logits, fake_logits = torch.randn(20, generator=generator), torch.randn(20, generator=generator)
    fake = torch.rand(20, 4, generator=generator)  # sigmoid-like: rows need not sum to 1
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    got = critic_figures(real_logits, fake_logits, fake, prior).numpy()
    p = fake.numpy() / fake.numpy().sum(axis=1, keepdims=True)
    expected = [np.mean(real_logits.numpy() > 0), np.mean(fake_logits.numpy() < 0),
                np.mean(-(p * np.log(p)).sum(axis=1)), 0.5 * np.abs(p.mean(axis=0) - prior.numpy()).sum()]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_gradient_norms_equal_separate_backward_passes(synthetic_splits, quick_config, head_terms):
    train_split, _ = synthetic_splits
    index = torch.arange(16)
    real = torch.eye(CLASSES)[torch.arange(16) % CLASSES]
    mask = draw_dropout_mask((48, 64), 0.3, torch.Generator().manual_seed(1))
    config = quick_config(critic_weight=0.3, latent_weight=0.7)
    batch = StepBatch.gather(train_split, torch.device("cpu"), {"labelled": index, "star": index,
                                                                "unlabelled": index.flip(0)}, real)
    head = make_head(24, 16, CLASSES, **SMALL, init_seed=2)
    values, _ = head_terms(head, batch, mask, config)
    names = DIAGNOSTIC_NAMES[4:]  # grad_task, grad_critic, grad_latent, then the other terms' (off here)
    norms = dict(zip(names, term_gradient_norms(values, config, head.projector.fc.weight)))
    for name, weight in (("task", 1.0), ("critic", 0.3), ("latent", 0.7)):
        head.zero_grad()
        (weight * values[name]).backward(retain_graph=True)
        assert math.isclose(float(norms[f"grad_{name}"]), float(head.projector.fc.weight.grad.norm()), rel_tol=1e-5)
    assert all(math.isnan(float(norms[n])) for n in names if n not in ("grad_task", "grad_critic", "grad_latent"))
    setup1 = term_gradient_norms(values, quick_config(), head.projector.fc.weight)
    assert not math.isnan(float(setup1[0])) and torch.isnan(setup1[1:]).all()


def test_epoch_means_skip_unmeasured_steps():
    unmeasured = [math.nan] * (len(DIAGNOSTIC_NAMES) - 5)
    rows = [torch.tensor([1.0, 0.5, 2.0, 0.1, 3.0] + unmeasured),
            torch.tensor([0.0, 0.5, 1.0, 0.3, math.nan] + unmeasured)]
    means = epoch_means(rows)
    assert means == pytest.approx({"d_real_acc": 0.5, "d_fake_acc": 0.5, "unlabelled_entropy": 1.5,
                                   "marginal_tv": 0.2, "grad_task": 3.0})


def test_a_run_records_diagnostics_per_epoch_without_changing_its_result(synthetic_splits, monkeypatch, quick_config):
    train_split, test_split = synthetic_splits
    config = quick_config(epochs=2, critic_weight=0.5)
    metrics = train(config, train_split, test_split, CLASSES, torch.device("cpu"), progress=False).metrics
    diagnostics = metrics["epochs"][-1]["diagnostics"]
    assert set(diagnostics) == {n for n in DIAGNOSTIC_NAMES if not n.startswith("grad_")} | {"grad_task", "grad_critic"}
    assert 0 <= diagnostics["d_real_acc"] <= 1 and 0 <= diagnostics["unlabelled_entropy"] <= math.log(CLASSES)
    assert diagnostics["grad_critic"] > 0
    import twinturbo.train.run.loop as loop

    monkeypatch.setattr(loop, "GRADIENT_EVERY", 10**9)  # no gradient measurement at all: the same run
    again = train(config, train_split, test_split, CLASSES, torch.device("cpu"), progress=False).metrics
    assert again["test_accuracy"] == metrics["test_accuracy"]
    assert [e["mean_losses"] for e in again["epochs"]] == [e["mean_losses"] for e in metrics["epochs"]]
