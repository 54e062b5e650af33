"""The LogisticRegression baseline of tt-report: same labelled subset as the runs, accuracy of a plain sklearn fit."""
from __future__ import annotations

import json

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from twinturbo.common.store import open_store
from twinturbo.train.baseline import logistic_baseline, run_labelled_subset, spreading_baseline
from twinturbo.train.data import load_split
from twinturbo.train.loop import train
from twinturbo.train.report import make_report


def test_baseline_uses_the_runs_labelled_subset_and_matches_sklearn(tmp_path, quick_config, write_synthetic_store):
    path = write_synthetic_store(tmp_path / "synthetic", n_train=300, n_test=120, scale=0.4)
    with open_store(path) as store:
        train_split = load_split(store, "train", torch.device("cpu"))
        test_split = load_split(store, "test", torch.device("cpu"))
        identity = store.identity()
    run = train(quick_config(labels=30, epochs=1, seed=1337), train_split, test_split, 10, torch.device("cpu"),
                progress=False)
    subset = run_labelled_subset(train_split.labels.numpy(), 30, 10, 1337)
    assert sorted(subset.tolist()) == sorted(run.metrics["labelled_indices"])

    x_train, y_train = train_split.cls.float().numpy(), train_split.labels.numpy()
    x_test, y_test = test_split.cls.float().numpy(), test_split.labels.numpy()
    independent = LogisticRegression(max_iter=5000).fit(x_train[run.metrics["labelled_indices"]],
                                                         y_train[run.metrics["labelled_indices"]])
    expected = float(np.mean(independent.predict(x_test) == y_test))
    assert logistic_baseline(str(path), 30, [1337]) == {1337: expected}

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    row = {"run_id": "r1", "setup": 1, "test_accuracy": 0.5, "store": identity, "epoch_accuracies": [0.5],
           "config": {"loss": "cat_cross", "rescale": "softmax", "critic_weight": 0.0, "latent_weight": 0.0,
                      "labels": 30, "seed": 1337, "val_labels": 30}}
    (sweep / "results.jsonl").write_text(json.dumps(row) + "\n")
    make_report(sweep)
    summary = (sweep / "summary.md").read_text()
    spreading = spreading_baseline(str(path), 30, [1337])[1337]
    assert "LabelSpreading: scikit-learn LabelSpreading" in summary
    # the main table pairs each baseline with setup 1 (50% on seed 1337) on the same seed
    assert f"| LogisticRegression | 30 | - | - | {100 * expected:.2f} (n=1) | {100 * expected - 50:+.2f} (n=1) | " \
           f"{int(100 * expected > 50)}/1 |" in summary
    assert f"| LabelSpreading | 30 | - | - | {100 * spreading:.2f} (n=1) |" in summary
    assert "| SelfTraining | 30 |" in summary
    cached = json.loads((sweep / "baselines.json").read_text())
    assert len(cached) == 3 and any(v == 100 * expected for k, v in cached.items() if "LogisticRegression" in k)
    make_report(sweep)  # from the cache: the same summary
    assert (sweep / "summary.md").read_text() == summary


def test_self_training_matches_an_independent_sklearn_fit_with_the_threshold_best_on_validation(
        tmp_path, write_synthetic_store):
    from sklearn.semi_supervised import SelfTrainingClassifier

    from twinturbo.train.baseline import SELF_TRAINING_THRESHOLDS, self_training_baseline
    from twinturbo.train.sampling import validation_subset

    # 8-d CLS vectors: classes overlap, so the thresholds give different validation accuracies, and a cold start of
    # every round would end at another accuracy (78.3% instead of 75.8% at threshold 0.75)
    path = write_synthetic_store(tmp_path / "synthetic", n_train=300, n_test=120, scale=1.0, cls_dim=8)
    with open_store(path) as store:
        x_train = store.split("train").read_cls(0, 300).astype(np.float32)
        y_train = store.split("train").labels()
        x_test = store.split("test").read_cls(0, 120).astype(np.float32)
        y_test = store.split("test").labels()
    seed = 42
    subset = run_labelled_subset(y_train, 20, 10, seed)
    val = validation_subset(torch.as_tensor(y_train), 40, 10, torch.as_tensor(subset), seed).numpy()
    partial = np.full(300, -1)
    partial[subset] = y_train[subset]  # the validation labels stay hidden, like every other unlabelled vector
    scores = {}
    for threshold in SELF_TRAINING_THRESHOLDS:
        classifier = LogisticRegression(max_iter=5000, warm_start=True)  # each round starts at the last one's weights
        model = SelfTrainingClassifier(classifier, threshold=threshold).fit(x_train, partial)
        scores[threshold] = (float(np.mean(model.predict(x_train[val]) == y_train[val])), threshold,
                             float(np.mean(model.predict(x_test) == y_test)))
    assert len({score for score, _, _ in scores.values()}) > 1  # the choice matters on this data
    expected = max(scores.values())[2]  # best validation accuracy, ties to the higher threshold
    assert self_training_baseline(str(path), 20, [seed], val_labels=40) == {seed: expected}


def test_label_spreading_matches_an_independent_sklearn_fit_on_the_same_subset(tmp_path, write_synthetic_store):
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    path = write_synthetic_store(tmp_path / "synthetic", n_train=300, n_test=120, scale=0.8, cls_dim=80)
    with open_store(path) as store:
        x_train = store.split("train").read_cls(0, 300).astype(np.float32)
        y_train = store.split("train").labels()
        x_test = store.split("test").read_cls(0, 120).astype(np.float32)
        y_test = store.split("test").labels()
    expected = {}
    for seed in (42, 1337):
        subset = run_labelled_subset(y_train, 20, 10, seed)
        partial = np.full(300, -1)
        partial[subset] = y_train[subset]  # every other train vector is unlabelled, as in the paper's setting
        pca = PCA(n_components=64, random_state=0).fit(x_train)
        model = LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.99, max_iter=1000)
        model.fit(pca.transform(x_train), partial)
        expected[seed] = float(np.mean(model.predict(pca.transform(x_test)) == y_test))
    assert spreading_baseline(str(path), 20, [42, 1337]) == expected
    assert all(0.3 < accuracy <= 1.0 for accuracy in expected.values())  # well above chance on separable tokens


def test_report_finds_a_moved_store_by_fingerprint_and_names_a_changed_one(tmp_path, write_synthetic_store):
    path = write_synthetic_store(tmp_path / "here", n_train=200, n_test=60, scale=0.5)
    other = write_synthetic_store(tmp_path / "other", n_train=200, n_test=60, scale=0.6, cls_dim=20)
    with open_store(path) as store:  # the sweep recorded `path`'s extraction, at a place now holding another one
        identity = dict(store.identity(), path=str(other))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    row = {"run_id": "r1", "setup": 1, "test_accuracy": 0.5, "store": identity, "epoch_accuracies": [0.5],
           "config": {"loss": "cat_cross", "rescale": "softmax", "labels": 20, "seed": 42, "val_labels": 20}}
    (sweep / "results.jsonl").write_text(json.dumps(row) + "\n")
    make_report(sweep, features=str(path))  # the same extraction elsewhere: baselines computed
    expected = logistic_baseline(str(path), 20, [42])[42]
    assert f"| LogisticRegression | 20 | - | - | {100 * expected:.2f} (n=1) |" in (sweep / "summary.md").read_text()
    (sweep / "baselines.json").unlink()
    make_report(sweep)  # the recorded place holds another extraction: not silently used
    summary = (sweep / "summary.md").read_text()
    assert f"Baselines not computed: the store at {other} changed since the sweep" in summary
    assert "LogisticRegression |" not in summary


def test_each_baseline_fit_is_cached_as_it_ends_and_baselines_picks_the_methods(tmp_path, write_synthetic_store,
                                                                                monkeypatch):
    import pytest
    from click.testing import CliRunner

    from twinturbo.common.errors import TwinTurboError
    from twinturbo.train import baseline
    from twinturbo.train.cli import report_main

    path = write_synthetic_store(tmp_path / "synthetic", n_train=200, n_test=60, scale=0.5)
    with open_store(path) as store:
        identity = store.identity()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    rows = [{"run_id": f"r{seed}", "setup": 1, "test_accuracy": 0.5, "store": identity, "epoch_accuracies": [0.5],
             "config": {"loss": "cat_cross", "rescale": "softmax", "labels": 20, "seed": seed, "val_labels": 20}}
            for seed in (42, 1337)]
    (sweep / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a report killed during its first LabelSpreading fit

    monkeypatch.setitem(baseline.BASELINES, "LabelSpreading", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_report(sweep)
    cached = json.loads((sweep / "baselines.json").read_text())
    assert sorted(k.split("/")[1].split("-")[0] for k in cached) == ["LogisticRegression"] * 2 + ["SelfTraining"] * 2

    def refitted(*args, **kwargs):
        raise AssertionError("a cached fit was fitted again")

    monkeypatch.setitem(baseline.BASELINES, "LogisticRegression", refitted)
    monkeypatch.setitem(baseline.BASELINES, "SelfTraining", refitted)
    monkeypatch.setitem(baseline.BASELINES, "LabelSpreading", spreading_baseline)
    make_report(sweep)  # resumes: only LabelSpreading is fitted
    assert len(json.loads((sweep / "baselines.json").read_text())) == 6

    result = CliRunner().invoke(report_main, [str(sweep), "--baselines", "LogisticRegression,LabelSpreading"])
    assert result.exit_code == 0, result.output
    summary = (sweep / "summary.md").read_text()
    assert "| LogisticRegression | 20 |" in summary and "| LabelSpreading | 20 |" in summary
    assert "SelfTraining" not in summary
    result = CliRunner().invoke(report_main, [str(sweep), "--baselines", "LogisticRegression,FixMatch"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: --baselines LogisticRegression,FixMatch: unknown 'FixMatch'; expected a comma-separated list of "
        "LogisticRegression, SelfTraining, LabelSpreading"], result.output
    with pytest.raises(TwinTurboError):
        make_report(sweep, methods=("nothing",))


def test_self_training_threshold_is_chosen_on_the_validation_labels_that_choose_lambda(tmp_path,
                                                                                        write_synthetic_store):
    from twinturbo.train.baseline import self_training_baseline

    path = write_synthetic_store(tmp_path / "synthetic", n_train=300, n_test=120, scale=1.0, cls_dim=8)
    with open_store(path) as store:
        identity = store.identity()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    row = {"run_id": "r42", "setup": 1, "test_accuracy": 0.5, "store": identity, "epoch_accuracies": [0.5],
           "config": {"loss": "cat_cross", "rescale": "softmax", "labels": 20, "seed": 42, "val_labels": 100}}
    (sweep / "results.jsonl").write_text(json.dumps(row) + "\n")
    for val_size, used in ((None, 20), (40, 40), (500, 100)):  # default: as many as the labels; capped at the recorded
        (sweep / "baselines.json").unlink(missing_ok=True)
        make_report(sweep, val_size=val_size, methods=("SelfTraining",))
        cached = json.loads((sweep / "baselines.json").read_text())
        assert [key.split("/")[3] for key in cached] == [f"val{used}"]
        expected = 100 * self_training_baseline(str(path), 20, [42], val_labels=used)[42]
        assert list(cached.values()) == [expected]
        assert f"| SelfTraining | 20 | - | - | {expected:.2f} (n=1) |" in (sweep / "summary.md").read_text()


def test_a_library_warning_during_a_baseline_fit_goes_to_the_summary_not_the_terminal(tmp_path, write_tiny_store):
    """LabelSpreading on a train split holding a cluster that no labelled vector reaches in the kNN graph: the test
    vectors beside it get no label mass, and scikit-learn warns 'invalid value encountered in divide' from
    predict_proba. tt-report says so in summary.md and lets no warning through to the terminal."""
    import warnings

    from twinturbo.common.store import SplitLayout, create_store

    rng = np.random.default_rng(0)
    n_train, n_test, dim = 64, 24, 6
    attrs = {"dataset": "islands", "backbone": "synthetic", "weights_id": "none", "resolution": 8,
             "class_names": ["a", "b"]}
    layouts = {"train": SplitLayout(n_train, dim, 1, 4), "test": SplitLayout(n_test, dim, 1, 4)}
    with create_store(tmp_path / "islands", attrs, layouts, chunk_size=8) as store:
        for split, n in (("train", n_train), ("test", n_test)):
            labels = np.arange(n) % 2
            cls = rng.normal(size=(n, dim)) + 3 * labels[:, None]
            island = slice(n - 16, n)  # 16 vectors far from the rest, unlabelled in train
            cls[island] += 1000
            if split == "train":
                labels[island] = -1
            for c in range(n // 8):
                rows = slice(8 * c, 8 * (c + 1))
                store.write_chunk(split, c, cls[rows], rng.normal(size=(8, 1, 4)), labels[rows])
        identity = store.identity()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    row = {"run_id": "r1", "setup": 1, "test_accuracy": 0.5, "store": identity, "epoch_accuracies": [0.5],
           "config": {"loss": "cat_cross", "rescale": "softmax", "labels": 4, "seed": 1, "val_labels": 4}}
    (sweep / "results.jsonl").write_text(json.dumps(row) + "\n")
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        make_report(sweep, methods=("LabelSpreading",))
    assert not leaked, [str(w.message) for w in leaked]
    summary = (sweep / "summary.md").read_text()
    assert "Warnings of the libraries while fitting the baselines:" in summary
    assert "- RuntimeWarning: invalid value encountered in divide (LabelSpreading at 4 labels, seed 1)" in summary
