"""The training loop: it learns separable tokens, a seed decides everything, and NaN stops it with the step number."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.loop import StepBatch, discriminator_loss, evaluate, lr_factor, model_losses, train
from twinturbo.train.model import build_head, draw_dropout_mask

CLASSES = 10  # of the synthetic store (conftest.py)
SMALL = dict(proj_dim=64, pred_dim=32, disc_dim=16)


def test_load_split_matches_the_store(synthetic_store, synthetic_splits):
    train_split, _ = synthetic_splits
    with open_store(synthetic_store) as store:
        cls, patches = store.split("train").read(0, 400)
        labels = store.split("train").labels()
    assert torch.equal(train_split.cls, torch.from_numpy(cls))
    assert torch.equal(train_split.patches, torch.from_numpy(patches))
    assert torch.equal(train_split.labels, torch.from_numpy(labels))


def test_training_on_separable_tokens_beats_chance_by_far(synthetic_splits, quick_config):
    train_split, test_split = synthetic_splits
    result = train(quick_config(critic_weight=0.1, latent_weight=0.1), train_split, test_split, CLASSES,
                   torch.device("cpu"), progress=False)
    assert result.metrics["test_accuracy"] > 0.8  # chance is 0.1
    assert result.metrics["steps"] == 4 * 7  # ceil(400 / 64) steps per epoch
    assert evaluate(result.head, test_split, torch.device("cpu")) == result.metrics["test_accuracy"]
    epoch = result.metrics["epochs"][-1]
    assert set(epoch["mean_losses"]) == {"task", "critic", "latent", "total", "disc"}


def test_same_seed_same_run_other_seed_other_run(synthetic_splits, quick_config):
    train_split, test_split = synthetic_splits
    runs = [train(quick_config(seed=s, epochs=1, critic_weight=0.5, latent_weight=0.5), train_split, test_split,
                  CLASSES, torch.device("cpu"), progress=False) for s in (7, 7, 8)]
    strip = lambda m: {k: v for k, v in m.items() if k != "wall_time_s"}  # noqa: E731
    assert strip(runs[0].metrics) == strip(runs[1].metrics)
    for a, b in zip(runs[0].head.state_dict().values(), runs[1].head.state_dict().values()):
        assert torch.equal(a, b)
    assert strip(runs[0].metrics) != strip(runs[2].metrics)
    assert runs[0].metrics["labelled_indices"] != runs[2].metrics["labelled_indices"]


def test_weights_do_not_change_the_data_or_init(synthetic_splits, quick_config):
    """Same seed and budget, different weights: same labelled subset, and with all weights 0 the same model as a
    run whose weights are 0 too but whose other settings (critic prior) differ: unused terms draw nothing extra."""
    train_split, test_split = synthetic_splits
    a = train(quick_config(epochs=1), train_split, test_split, CLASSES, torch.device("cpu"), progress=False)
    b = train(quick_config(epochs=1, prior="labelled"), train_split, test_split, CLASSES, torch.device("cpu"),
              progress=False)
    c = train(quick_config(epochs=1, critic_weight=1.0), train_split, test_split, CLASSES, torch.device("cpu"),
              progress=False)
    assert a.metrics["labelled_indices"] == c.metrics["labelled_indices"]
    assert a.metrics["epochs"] == b.metrics["epochs"]
    assert a.metrics["epochs"] != c.metrics["epochs"]


def test_zero_weight_terms_are_not_computed(synthetic_splits, monkeypatch, quick_config):
    train_split, _ = synthetic_splits
    import twinturbo.train.loop as loop

    def fail(*args, **kwargs):
        raise AssertionError("a weight-0 term was computed")

    monkeypatch.setattr(loop, "latent_infonce", fail)
    monkeypatch.setattr(loop, "critic", fail)
    head = build_head(24, 16, CLASSES, **SMALL)
    index = torch.arange(8)
    cls, patches, labels = train_split.batch(index, torch.device("cpu"))
    batch = StepBatch.from_tensors(cls, patches, labels, cls, patches)
    mask = draw_dropout_mask((24, 64), 0.3, torch.Generator().manual_seed(0))
    losses, fake = model_losses(head, batch, mask, quick_config())
    assert fake is None and float(losses["critic"]) == 0 and float(losses["latent"]) == 0
    assert torch.equal(losses["total"], losses["task"])


def test_model_losses_follow_eq22(synthetic_splits, quick_config):
    """total = task + lambda_C critic + lambda_L latent, each term equal to the loss function on a separate forward."""
    from twinturbo.train.losses import bin_cross, critic, latent_infonce

    train_split, _ = synthetic_splits
    head = build_head(24, 16, CLASSES, **SMALL, init_seed=3)
    device = torch.device("cpu")
    cls, patches, labels = train_split.batch(torch.arange(8), device)
    star_cls, star_patches, _ = train_split.batch(torch.arange(8, 16), device)
    un_cls, un_patches, _ = train_split.batch(torch.arange(16, 24), device)
    real = torch.eye(CLASSES)[torch.arange(8) % CLASSES]
    mask = draw_dropout_mask((24, 64), 0.3, torch.Generator().manual_seed(1))
    config = quick_config(loss="bin_cross", rescale="sigmoid", critic_weight=0.3, latent_weight=0.7)
    losses, fake = model_losses(head, StepBatch.from_tensors(cls, patches, labels, un_cls, un_patches, star_cls,
                                                             star_patches, real), mask, config)
    z, logits = head(cls, patches, mask[:8])
    z_star, _ = head(star_cls, star_patches, mask[8:16])
    _, un_logits = head(un_cls, un_patches, mask[16:])
    expect_task = bin_cross(logits, labels, "sigmoid")
    expect_latent = latent_infonce(z, z_star)
    expect_critic = critic(head.discriminator(real), head.discriminator(torch.sigmoid(un_logits)))
    torch.testing.assert_close(losses["task"], expect_task, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["latent"], expect_latent, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["critic"], expect_critic, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["total"], expect_task + 0.3 * expect_critic + 0.7 * expect_latent,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fake, torch.sigmoid(un_logits).detach(), rtol=1e-5, atol=1e-6)
    d_loss = discriminator_loss(head.discriminator, real, fake)
    torch.testing.assert_close(d_loss, -expect_critic, rtol=1e-5, atol=1e-6)


def test_warmup_schedule_is_linear_from_0_001():
    config = TrainConfig(warmup_steps=150)
    assert lr_factor(0, config) == pytest.approx(0.001)
    assert lr_factor(75, config) == pytest.approx(0.001 + 0.999 / 2)
    assert lr_factor(150, config) == 1.0 and lr_factor(10_000, config) == 1.0


def test_nan_stops_the_run_with_the_first_bad_step(synthetic_splits, monkeypatch, quick_config):
    """The step is exact even when it falls inside a later window between host syncs."""
    import twinturbo.train.loop as loop

    train_split, test_split = synthetic_splits
    calls = {"n": 0}
    original = loop.step_losses

    def nan_at_step_13(*args, **kwargs):
        calls["n"] += 1
        losses, fake = original(*args, **kwargs)
        if calls["n"] >= 13:
            losses["total"] = losses["total"] * float("nan")
        return losses, fake

    monkeypatch.setattr(loop, "step_losses", nan_at_step_13)
    with pytest.raises(TwinTurboError, match=r"not finite at step 13 "):
        train(quick_config(), train_split, test_split, CLASSES, torch.device("cpu"), progress=False)


@pytest.mark.parametrize("setup", [dict(), dict(critic_weight=0.5), dict(critic_weight=0.5, latent_weight=0.5,
                                                                          loss="bin_cross", rescale="sigmoid")])
def test_each_distinct_sample_is_mixed_once_and_the_step_is_unchanged(synthetic_splits, setup, quick_config):
    """A step whose labelled rows repeat 10 samples and whose x* come from the same 10 (as with 100 labels at batch
    512) gives the plain step's losses and gradients, while the head sees each distinct sample once."""
    train_split, _ = synthetic_splits
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(3)
    labelled_index = torch.arange(10).repeat(5)[torch.randperm(50, generator=generator)]
    star_index = torch.arange(10).repeat(5)[torch.randperm(50, generator=generator)]
    unlabelled_index = torch.randperm(len(train_split), generator=generator)[:50]
    real = torch.eye(CLASSES)[torch.randint(0, CLASSES, (50,), generator=generator)]
    mask = draw_dropout_mask((150, 64), 0.3, generator)
    config = quick_config(**setup)

    def step(batch: StepBatch) -> tuple[dict, dict]:
        head = build_head(24, 16, CLASSES, **SMALL, init_seed=5)
        losses, _ = model_losses(head, batch, mask, config)
        losses["total"].backward()
        return losses, {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}

    parts = [train_split.batch(index, device) for index in (labelled_index, unlabelled_index, star_index)]
    plain = StepBatch.from_tensors(parts[0][0], parts[0][1], parts[0][2], parts[1][0], parts[1][1], parts[2][0],
                                   parts[2][1], real)
    distinct = StepBatch.gather(train_split, device, labelled_index, unlabelled_index, star_index, real)
    expected_distinct = len(torch.unique(torch.cat([labelled_index, unlabelled_index, star_index])))
    assert len(distinct.cls) == expected_distinct < 150 and len(plain.cls) == 150
    assert torch.equal(distinct.labels, parts[0][2])
    (plain_losses, plain_grads), (losses, grads) = step(plain), step(distinct)
    for name in ("task", "critic", "latent", "total"):
        torch.testing.assert_close(losses[name], plain_losses[name], rtol=1e-5, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_validation_split_changes_no_weight_and_scores_its_own_samples(synthetic_splits, quick_config):
    """--val-labels: bit-identical weights, losses and test accuracies with and without it; its accuracy is the
    trained head's on exactly the drawn samples, and the per-sample bits agree with it."""
    import numpy as np

    from twinturbo.train.sampling import validation_subset

    train_split, test_split = synthetic_splits
    config = quick_config(epochs=2, critic_weight=0.5, latent_weight=0.5)
    without = train(replace(config, val_labels=0), train_split, test_split, CLASSES, torch.device("cpu"), progress=False)
    with_val = train(replace(config, val_labels=30), train_split, test_split, CLASSES, torch.device("cpu"),
                     progress=False)
    for a, b in zip(without.head.state_dict().values(), with_val.head.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(without.metrics["epochs"], with_val.metrics["epochs"]):
        assert a["test_accuracy"] == b["test_accuracy"] and a["mean_losses"] == b["mean_losses"]
        assert "val_accuracy" not in a
    index = validation_subset(train_split.labels, 30, CLASSES, torch.tensor(with_val.metrics["labelled_indices"]),
                              config.seed)
    assert with_val.metrics["val_samples"] == 30
    assert with_val.metrics["val_accuracy"] == evaluate(with_val.head, train_split.subset(index), torch.device("cpu"))
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(with_val.metrics["epochs"][-1]["val_correct"]), np.uint8),
                         bitorder="little")[:30]
    assert bits.mean() == with_val.metrics["val_accuracy"]
