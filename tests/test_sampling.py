"""Semi-supervised sampling of section 4.1: balanced subset, epoch plan, x* partners, prior draws."""
from __future__ import annotations

import pytest
import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.run.sampling import (PartnerTable, class_prior, draw_partners, draw_prior_onehot, epoch_plan,
                                      labelled_subset, validation_subset)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LABELS = torch.arange(1000) % 10  # 100 per class


def test_subset_is_class_balanced_with_the_remainder_on_the_first_classes():
    subset = labelled_subset(LABELS, 103, 10, gen())
    assert len(subset) == 103 and len(set(subset.tolist())) == 103
    counts = torch.bincount(LABELS[subset], minlength=10).tolist()
    assert counts == [11, 11, 11] + [10] * 7
    assert torch.equal(subset, labelled_subset(LABELS, 103, 10, gen()))
    assert not torch.equal(subset, labelled_subset(LABELS, 103, 10, gen(1)))


def test_subset_skips_unlabelled_samples():
    labels = LABELS.clone()
    labels[:500] = -1
    subset = labelled_subset(labels, 50, 10, gen())
    assert (labels[subset] >= 0).all()


@pytest.mark.parametrize("budget, message", [(9, "--labels 9: need at least one label per class"),
                                             (1001, "--labels 1001: the train split has only 1000")])
def test_subset_size_errors_name_the_flag(budget, message):
    with pytest.raises(TwinTurboError, match=message):
        labelled_subset(LABELS, budget, 10, gen())


def test_subset_error_when_a_class_is_too_small():
    labels = torch.cat([torch.zeros(50, dtype=torch.long), torch.ones(2, dtype=torch.long)])
    with pytest.raises(TwinTurboError, match="--labels 10: class 1 has only 2 samples"):
        labelled_subset(labels, 10, 2, gen())


def test_validation_split_is_balanced_disjoint_and_nested():
    """--val-labels N: class balanced like the labelled subset, outside it, a function of the seed alone, and the first
    n of a larger draw are the draw of n (one run scores every smaller validation size)."""
    labelled = labelled_subset(LABELS, 100, 10, gen())
    large = validation_subset(LABELS, 503, 10, labelled, seed=42)
    assert len(large) == len(set(large.tolist())) == 503
    assert not set(large.tolist()) & set(labelled.tolist())
    assert torch.bincount(LABELS[large], minlength=10).tolist() == [51, 51, 51] + [50] * 7
    assert torch.equal(large, validation_subset(LABELS, 503, 10, labelled, seed=42))
    assert not torch.equal(large, validation_subset(LABELS, 503, 10, labelled, seed=43))
    for n in (10, 100, 250):
        small = validation_subset(LABELS, n, 10, labelled, seed=42)
        assert torch.equal(small, large[:n])
        assert torch.bincount(LABELS[small], minlength=10).tolist() == [n // 10 + (c < n % 10) for c in range(10)]
    assert len(validation_subset(LABELS, 0, 10, labelled, seed=42)) == 0


def test_validation_split_error_names_the_flag_and_the_class():
    labels = torch.cat([torch.zeros(50, dtype=torch.long), torch.ones(6, dtype=torch.long)])
    labelled = labelled_subset(labels, 10, 2, gen())  # 5 of class 1: one left outside
    with pytest.raises(TwinTurboError, match="--val-labels 4: class 1 has only 1 train samples outside the labelled"):
        validation_subset(labels, 4, 2, labelled, seed=0)


def test_epoch_plan_covers_the_split_once_and_repeats_the_subset():
    subset = labelled_subset(LABELS, 30, 10, gen())
    plan = epoch_plan(1000, subset, 128, gen())
    assert len(plan) == 8
    assert [len(b) for b in plan.unlabelled] == [len(b) for b in plan.labelled] == [128] * 7 + [104]
    assert sorted(torch.cat(plan.unlabelled).tolist()) == list(range(1000))  # one pass, no repeats
    labelled = torch.cat(plan.labelled)
    assert set(labelled.tolist()) == set(subset.tolist())
    uses = torch.bincount(labelled, minlength=1000)[subset]
    assert uses.max() - uses.min() <= 1  # 1000 / 30: each labelled sample 33 or 34 times
    again = epoch_plan(1000, subset, 128, gen())
    assert all(torch.equal(a, b) for a, b in zip(plan.unlabelled, again.unlabelled))


def test_partners_share_the_class_and_differ_in_index():
    labels = LABELS.clone()
    subset = torch.cat([labelled_subset(labels[:900], 45, 9, gen()), torch.tensor([9])])  # class 9: one sample
    table = PartnerTable(subset, labels)
    batch = subset[torch.randint(len(subset), (5000,), generator=gen(1))]
    partners = draw_partners(table, batch, gen(2))
    assert torch.equal(labels[partners], labels[batch])
    alone = batch == 9
    assert (partners[~alone] != batch[~alone]).all()
    assert (partners[alone] == 9).all()
    assert set(partners.tolist()) <= set(subset.tolist())
    # Uniform over the other 4 members of the class.
    first = subset[0]
    counts = torch.bincount(draw_partners(table, first.repeat(4000), gen(3)), minlength=1000)
    others = counts[counts > 0]
    assert len(others) == 4 and others.min() > 850


def test_prior_draws_are_one_hot_with_the_prior_frequencies():
    uniform = class_prior("uniform", torch.tensor([0, 0, 1]), 4)
    assert torch.allclose(uniform, torch.full((4,), 0.25, dtype=torch.float64))
    labelled = class_prior("labelled", torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(labelled, torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    draws = draw_prior_onehot(labelled, 20000, gen())
    assert draws.shape == (20000, 3) and draws.dtype == torch.float32
    assert torch.equal(draws.sum(1), torch.ones(20000))
    freq = draws.mean(0)
    assert abs(float(freq[0]) - 0.75) < 0.02 and float(freq[2]) == 0.0
