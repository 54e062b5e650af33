"""The training loop: it learns separable tokens, a seed decides everything, and NaN stops it with the step number."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import open_store
from twinturbo.train.run.loop import evaluate_runs, train

CLASSES = 10  # of the synthetic store (conftest.py)


def head_accuracy(head, split) -> float:
    """One trained head's accuracy on a split, by the loop's own evaluation."""
    return evaluate_runs(lambda cls, patches: tuple(t.unsqueeze(0) for t in head(cls, patches)), split,
                         torch.device("cpu"))[0]


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
    assert head_accuracy(result.head, test_split) == result.metrics["test_accuracy"]
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


def test_nan_stops_the_run_with_the_first_bad_step(synthetic_splits, monkeypatch, quick_config):
    """The step is exact even when it falls inside a later window between host syncs."""
    import twinturbo.train.run.step as step

    train_split, test_split = synthetic_splits
    calls = {"n": 0}
    original = step.run_terms

    def nan_at_step_13(*args, **kwargs):
        calls["n"] += 1
        values = original(*args, **kwargs)
        if calls["n"] >= 13:
            values["total"] = values["total"] * float("nan")
        return values

    monkeypatch.setattr(step, "run_terms", nan_at_step_13)
    with pytest.raises(TwinTurboError, match=r"not finite at step 13 "):
        train(quick_config(), train_split, test_split, CLASSES, torch.device("cpu"), progress=False)


def test_a_validation_split_changes_no_weight_and_scores_its_own_samples(synthetic_splits, quick_config):
    """--val-labels: bit-identical weights, losses and test accuracies with and without it; its accuracy is the
    trained head's on exactly the drawn samples, and the per-sample bits agree with it."""
    import numpy as np

    from twinturbo.train.run.sampling import validation_subset

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
    assert with_val.metrics["val_accuracy"] == head_accuracy(with_val.head, train_split.subset(index))
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(with_val.metrics["epochs"][-1]["val_correct"]), np.uint8),
                         bitorder="little")[:30]
    assert bits.mean() == with_val.metrics["val_accuracy"]


def test_the_term_options_reach_the_loop(synthetic_splits, quick_config):
    """--critic-form, --temperature and --prior change a critic/latent run, each as the term defines it."""
    train_split, test_split = synthetic_splits

    def run(**options):
        config = quick_config(epochs=1, labels=13, critic_weight=0.5, latent_weight=0.5, warmup=0, **options)
        return train(config, train_split, test_split, CLASSES, torch.device("cpu"), progress=False)

    base = run()
    # minimax (Eq. 20) is a sum of two log-probabilities (< 0); the non-saturating -log D(fake) is > 0
    assert base.metrics["epochs"][0]["mean_losses"]["critic"] < 0 < \
        run(critic_form="nonsaturating").metrics["epochs"][0]["mean_losses"]["critic"]
    # a sharper InfoNCE: another latent value from the very first step on
    assert run(temperature=0.1).metrics["epochs"][0]["mean_losses"]["latent"] != \
        base.metrics["epochs"][0]["mean_losses"]["latent"]
    # 13 labels over 10 classes: the labelled prior (3 classes at 2/13) is not the uniform one, so the real
    # one-hots differ, and with them D's view of the fakes
    labelled = run(prior="labelled")
    assert labelled.metrics["epochs"][0]["mean_losses"]["disc"] != base.metrics["epochs"][0]["mean_losses"]["disc"]
    # ... and through D the model. Not by its epoch-mean task loss: Adam's first steps move each weight by about
    # lr * sign(gradient), which the other prior rarely flips, so that mean differed by 4e-7 (2 ulp of float32) and
    # was equal on an Intel Xeon's kernels. After the epoch's 7 steps the predictor's weights differ by ~1e-4, ten
    # thousand times the float32 spacing at their size (~0.05): no CPU's rounding makes that up or takes it away.
    moved = max(float((a - b).abs().max()) for a, b in zip(labelled.head.predictor.parameters(),
                                                           base.head.predictor.parameters()))
    assert moved > 1e-5, moved
