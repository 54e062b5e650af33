"""One training step (train/run/step.py): Eq. 22's terms from the registry, the distinct-sample gather, the schedule."""
from __future__ import annotations

import pytest
import torch

from twinturbo.train.config import TrainConfig
from twinturbo.train.losses import bin_cross, critic, latent_infonce
from conftest import make_head
from twinturbo.train.heads.blocks import draw_dropout_mask
from twinturbo.train.run.step import StepBatch, lr_factor

CLASSES = 10  # of the synthetic store (conftest.py)
SMALL = dict(proj_dim=64, pred_dim=32, disc_dim=16)


def separate_batch(split, groups: dict[str, torch.Tensor], real=None) -> StepBatch:
    """Every row of every group its own sample (no distinct-sample gather): the plain step to compare with."""
    names = [g for g in ("labelled", "star", "unlabelled") if g in groups]
    index = torch.cat([groups[g] for g in names])
    cls, patches, labels = split.batch(index, torch.device("cpu"))
    offsets = torch.tensor([0] + [len(groups[g]) for g in names]).cumsum(0)
    rows = {g: torch.arange(int(offsets[i]), int(offsets[i + 1])) for i, g in enumerate(names)}
    return StepBatch(cls, patches, labels[rows["labelled"]], rows, real)


def test_zero_weight_terms_are_not_computed(synthetic_splits, monkeypatch, quick_config, head_terms):
    import twinturbo.train.terms.critic as critic_term
    import twinturbo.train.terms.latent as latent_term

    train_split, _ = synthetic_splits

    def fail(*args, **kwargs):
        raise AssertionError("a weight-0 term was computed")

    monkeypatch.setattr(latent_term, "latent_infonce", fail)
    monkeypatch.setattr(critic_term, "critic", fail)
    head = make_head(24, 16, CLASSES, **SMALL)
    index = torch.arange(8)
    batch = StepBatch.gather(train_split, torch.device("cpu"), {"labelled": index, "unlabelled": index + 8})
    mask = draw_dropout_mask((24, 64), 0.3, torch.Generator().manual_seed(0))
    values, _ = head_terms(head, batch, mask, quick_config())
    assert set(values) == {"task", "total"}
    assert torch.equal(values["total"], values["task"])


def test_terms_follow_eq22(synthetic_splits, quick_config, head_terms):
    """total = task + lambda_C critic + lambda_L latent, each term equal to the loss function on a separate forward."""
    train_split, _ = synthetic_splits
    head = make_head(24, 16, CLASSES, **SMALL, init_seed=3)
    device = torch.device("cpu")
    cls, patches, labels = train_split.batch(torch.arange(8), device)
    star_cls, star_patches, _ = train_split.batch(torch.arange(8, 16), device)
    un_cls, un_patches, _ = train_split.batch(torch.arange(16, 24), device)
    real = torch.eye(CLASSES)[torch.arange(8) % CLASSES]
    mask = draw_dropout_mask((24, 64), 0.3, torch.Generator().manual_seed(1))
    config = quick_config(loss="bin_cross", rescale="sigmoid", critic_weight=0.3, latent_weight=0.7)
    batch = StepBatch.gather(train_split, device, {"labelled": torch.arange(8), "star": torch.arange(8, 16),
                                                   "unlabelled": torch.arange(16, 24)}, real)
    values, view = head_terms(head, batch, mask, config)
    z, logits = head(cls, patches, mask[:8])
    z_star, _ = head(star_cls, star_patches, mask[8:16])
    _, un_logits = head(un_cls, un_patches, mask[16:])
    expect_task = bin_cross(logits, labels, "sigmoid")
    expect_latent = latent_infonce(z, z_star)
    expect_critic = critic(head.discriminator(real), head.discriminator(torch.sigmoid(un_logits)))
    torch.testing.assert_close(values["task"], expect_task, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values["latent"], expect_latent, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values["critic"], expect_critic, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values["total"], expect_task + 0.3 * expect_critic + 0.7 * expect_latent,
                               rtol=1e-5, atol=1e-6)
    # what the discriminator's step reads: sigma(f) of the unlabelled rows, shared with the critic term
    torch.testing.assert_close(view.probabilities("unlabelled"), torch.sigmoid(un_logits), rtol=1e-5, atol=1e-6)


def test_warmup_schedule_is_linear_from_0_001():
    config = TrainConfig(warmup_steps=150)
    assert lr_factor(0, config) == pytest.approx(0.001)
    assert lr_factor(75, config) == pytest.approx(0.001 + 0.999 / 2)
    assert lr_factor(150, config) == 1.0 and lr_factor(10_000, config) == 1.0


@pytest.mark.parametrize("setup", [dict(), dict(critic_weight=0.5), dict(critic_weight=0.5, latent_weight=0.5,
                                                                          loss="bin_cross", rescale="sigmoid")])
def test_each_distinct_sample_is_mixed_once_and_the_step_is_unchanged(synthetic_splits, setup, quick_config, head_terms):
    """A step whose labelled rows repeat 10 samples and whose x* come from the same 10 (as with 100 labels at batch
    512) gives the plain step's losses and gradients, while the head sees each distinct sample once."""
    train_split, _ = synthetic_splits
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(3)
    groups = {"labelled": torch.arange(10).repeat(5)[torch.randperm(50, generator=generator)],
              "star": torch.arange(10).repeat(5)[torch.randperm(50, generator=generator)],
              "unlabelled": torch.randperm(len(train_split), generator=generator)[:50]}
    real = torch.eye(CLASSES)[torch.randint(0, CLASSES, (50,), generator=generator)]
    mask = draw_dropout_mask((150, 64), 0.3, generator)
    config = quick_config(**setup)

    def step(batch: StepBatch) -> tuple[dict, dict]:
        head = make_head(24, 16, CLASSES, **SMALL, init_seed=5)
        values, _ = head_terms(head, batch, mask, config)
        values["total"].backward()
        return values, {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}

    plain = separate_batch(train_split, groups, real)
    distinct = StepBatch.gather(train_split, device, groups, real)
    expected_distinct = len(torch.unique(torch.cat(list(groups.values()))))
    assert len(distinct.cls) == expected_distinct < 150 and len(plain.cls) == 150
    assert torch.equal(distinct.labels, plain.labels)
    (plain_values, plain_grads), (values, grads) = step(plain), step(distinct)
    assert values.keys() == plain_values.keys()
    for name in values:
        torch.testing.assert_close(values[name], plain_values[name], rtol=1e-5, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
