"""The LogisticRegression baseline of tt-report: same labelled subset as the runs, accuracy of a plain sklearn fit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from twinturbo.common.store import open_store
from twinturbo.train.report.baseline import logistic_baseline, run_labelled_subset, spreading_baseline
from twinturbo.train.run.data import load_split
from twinturbo.train.run.loop import train
from twinturbo.train.report.make import make_report


def fits(sweep) -> dict[str, float]:
    """The accuracy entries of a report's baselines.json (beside them: what a fit warned, what it chose, and the
    candidates a validated baseline chose from)."""
    cached = json.loads((sweep / "baselines.json").read_text())
    return {key: value for key, value in cached.items()
            if not key.endswith(("/warnings", "/chosen")) and "/candidates/" not in key}



def one_run_sweep(tmp_path: Path, identity: dict, labels: int, seed: int, val_labels: int) -> Path:
    """A sweep directory holding one setup-1 row on the store of `identity`: what tt-report fits baselines for."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    row = {"run_id": f"r{seed}", "setup": 1, "test_accuracy": 0.5, "store": identity, "epoch_accuracies": [0.5],
           "config": {"loss": "cat_cross", "rescale": "softmax", "labels": labels, "seed": seed,
                      "val_labels": val_labels}}
    (sweep / "results.jsonl").write_text(json.dumps(row) + "\n")
    return sweep

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
    cached = fits(sweep)
    assert len(cached) == 5 and any(v == 100 * expected for k, v in cached.items() if "LogisticRegression" in k)
    make_report(sweep)  # from the cache: the same summary
    assert (sweep / "summary.md").read_text() == summary


def test_self_training_matches_an_independent_sklearn_fit_with_the_threshold_best_on_validation(
        tmp_path, write_synthetic_store):
    from sklearn.semi_supervised import SelfTrainingClassifier

    from twinturbo.train.report.baseline import SELF_TRAINING_THRESHOLDS, self_training_baseline
    from twinturbo.train.run.sampling import validation_subset

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
    sweep = one_run_sweep(tmp_path, identity, labels=20, seed=42, val_labels=20)
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
    from twinturbo.train.report import baseline
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
    cached = fits(sweep)
    assert sorted(k.split("/")[1].split("-")[0] for k in cached) == (["LinearProbe"] * 2 + ["LogisticRegression"] * 2
                                                                     + ["SelfTraining"] * 2)

    def refitted(*args, **kwargs):
        raise AssertionError("a cached fit was fitted again")

    for method in ("LogisticRegression", "LinearProbe", "SelfTraining"):
        monkeypatch.setitem(baseline.BASELINES, method, refitted)
    monkeypatch.setitem(baseline.BASELINES, "LabelSpreading", spreading_baseline)
    make_report(sweep)  # resumes: only LabelSpreading is fitted
    assert len(fits(sweep)) == 10  # and SemiGMM, after it

    result = CliRunner().invoke(report_main, [str(sweep), "--baselines", "LogisticRegression,LabelSpreading"])
    assert result.exit_code == 0, result.output
    summary = (sweep / "summary.md").read_text()
    assert "| LogisticRegression | 20 |" in summary and "| LabelSpreading | 20 |" in summary
    assert "SelfTraining" not in summary
    result = CliRunner().invoke(report_main, [str(sweep), "--baselines", "LogisticRegression,FixMatch"])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [
        "error: --baselines LogisticRegression,FixMatch: unknown 'FixMatch'; expected a comma-separated list of "
        "LogisticRegression, LinearProbe, SelfTraining, LabelSpreading, SemiGMM"], result.output
    with pytest.raises(TwinTurboError):
        make_report(sweep, methods=("nothing",))


def test_self_training_threshold_is_chosen_on_the_validation_labels_that_choose_lambda(tmp_path,
                                                                                        write_synthetic_store):
    from twinturbo.train.report.baseline import self_training_baseline

    path = write_synthetic_store(tmp_path / "synthetic", n_train=300, n_test=120, scale=1.0, cls_dim=8)
    with open_store(path) as store:
        identity = store.identity()
    sweep = one_run_sweep(tmp_path, identity, labels=20, seed=42, val_labels=100)
    for val_size, used in ((None, 20), (40, 40), (500, 100)):  # default: as many as the labels; capped at the recorded
        (sweep / "baselines.json").unlink(missing_ok=True)
        make_report(sweep, val_size=val_size, methods=("SelfTraining",))
        cached = fits(sweep)
        assert [key.split("/")[3] for key in cached] == [f"val{used}"]
        expected = 100 * self_training_baseline(str(path), 20, [42], val_labels=used)[42]
        assert list(cached.values()) == [expected]
        assert f"| SelfTraining | 20 | - | - | {expected:.2f} (n=1) |" in (sweep / "summary.md").read_text()


def test_another_validation_size_chooses_from_the_cached_candidates_without_fitting_again(
        tmp_path, write_synthetic_store, monkeypatch):
    """Issue 37's two rules from one set of fits: a report at the default size (20) fits each validated baseline's
    candidates once, scored on all 100 recorded validation labels; reports at 40, 100 and 7 then fit nothing and give
    what a fit on that many validation labels gives (accuracy and choice)."""
    from twinturbo.train.report import fits as fits_module
    from twinturbo.train.report.baseline import (CANDIDATES, probe_baseline, self_training_baseline,
                                                 semi_gmm_baseline)

    path = write_synthetic_store(tmp_path / "synthetic", n_train=300, n_test=120, scale=1.0, cls_dim=8)
    with open_store(path) as store:
        fingerprint = store.identity()["fingerprint"]
        sweep = one_run_sweep(tmp_path, store.identity(), labels=20, seed=42, val_labels=100)
    methods = ("LinearProbe", "SelfTraining", "SemiGMM")
    make_report(sweep, methods=methods)
    for name in CANDIDATES:
        monkeypatch.setitem(fits_module.CANDIDATES, name, lambda *args: pytest.fail("fitted again"))
    direct = {"LinearProbe": probe_baseline, "SelfTraining": self_training_baseline, "SemiGMM": semi_gmm_baseline}
    for val_size in (40, 100, 7):
        make_report(sweep, val_size=val_size, methods=methods)
        cached = json.loads((sweep / "baselines.json").read_text())
        for method in methods:
            chosen: dict = {}
            expected = 100 * direct[method](str(path), 20, [42], val_labels=val_size, chosen=chosen)[42]
            (key,) = [k for k in fits(sweep) if k.startswith(f"{fingerprint}/{method}-") and f"/val{val_size}/" in k]
            assert (cached[key], cached[key + "/chosen"]) == (expected, chosen[42]), (method, val_size)


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
    sweep = one_run_sweep(tmp_path, identity, labels=4, seed=1, val_labels=4)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        make_report(sweep, methods=("LabelSpreading",))
    assert not leaked, [str(w.message) for w in leaked]
    summary = (sweep / "summary.md").read_text()
    assert "Warnings of the libraries while fitting the baselines:" in summary
    assert "- RuntimeWarning: invalid value encountered in divide (LabelSpreading at 4 labels, seed 1)" in summary


def test_semi_gmm_is_em_as_scikit_learn_computes_it_when_the_labels_agree_with_their_clusters():
    """Well separated clusters, one labelled vector each: clamping a labelled vector changes its responsibility only
    by what the E-step would give anyway (< 1e-100), so the fit is scikit-learn's GaussianMixture from the same start
    (labelled means, the data's covariance for every class, uniform weights, the same ridge)."""
    from sklearn.mixture import GaussianMixture

    from twinturbo.train.report.baseline import SEMI_GMM_REG, semi_gmm_fit

    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [12.0, 0.0, 0.0], [0.0, 12.0, 3.0]])
    x = np.concatenate([c + rng.normal(size=(200, 3)) @ rng.normal(size=(3, 3)) * 0.5 for c in centres])
    labels = np.full(len(x), -1)
    labels[[0, 200, 400]] = [0, 1, 2]
    mixture, iterations = semi_gmm_fit(x, labels, 3, tol=1e-8, dtype=np.float64)
    ridge = SEMI_GMM_REG * np.trace(np.cov(x, rowvar=False)) / 3
    start = np.cov(x, rowvar=False) + ridge * np.eye(3)
    reference = GaussianMixture(3, covariance_type="full", reg_covar=ridge, tol=1e-8, max_iter=200,
                                weights_init=np.full(3, 1 / 3), means_init=x[[0, 200, 400]],
                                precisions_init=np.repeat(np.linalg.inv(start)[None], 3, axis=0)).fit(x)
    assert 1 < iterations < 200
    np.testing.assert_allclose(mixture.means, reference.means_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixture.covariances, reference.covariances_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixture.weights, reference.weights_, rtol=1e-6)
    assert np.array_equal(mixture.predict(x), reference.predict(x))
    fast, _ = semi_gmm_fit(x, labels, 3, tol=1e-8)  # the default: the N x d x d products in float32
    np.testing.assert_allclose(fast.means, mixture.means, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast.covariances, mixture.covariances, rtol=1e-3, atol=1e-4)


def test_semi_gmm_holds_labelled_vectors_to_their_class():
    """Every vector labelled: EM has nothing to infer, and one iteration gives each class's own frequency, mean and
    covariance (plus the ridge), by hand; a labelled vector deep in another class's cluster still counts for its own."""
    from twinturbo.train.report.baseline import SEMI_GMM_REG, semi_gmm_fit

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(30, 2)), rng.normal(size=(50, 2)) + 6])
    labels = np.array([0] * 30 + [1] * 50)
    labels[5] = 1  # in cluster 0, labelled 1
    mixture, _ = semi_gmm_fit(x, labels, 2, dtype=np.float64)
    ridge = SEMI_GMM_REG * np.trace(np.cov(x, rowvar=False)) / 2 * np.eye(2)
    for c in (0, 1):
        members = x[labels == c]
        centred = members - members.mean(axis=0)
        np.testing.assert_allclose(mixture.means[c], members.mean(axis=0), rtol=1e-9)
        np.testing.assert_allclose(mixture.covariances[c], centred.T @ centred / len(members) + ridge, rtol=1e-9)
        assert mixture.weights[c] == pytest.approx(len(members) / len(x))


def test_probe_and_semi_gmm_choose_on_validation_and_equal_independent_fits(tmp_path, write_synthetic_store):
    from sklearn.decomposition import PCA

    from twinturbo.train.report.baseline import (PROBE_C, SEMI_GMM_DIMS, probe_baseline, seed_split, semi_gmm_baseline,
                                          semi_gmm_fit, read_cls_vectors)

    path = write_synthetic_store(tmp_path / "synthetic", n_train=400, n_test=120, scale=3.0, cls_dim=40)
    with open_store(path) as store:
        train_split, test_split = store.split("train"), store.split("test")
        cls, patches = train_split.read(0, 400)
        test_cls, test_patches = test_split.read(0, 120)
        y, y_test = train_split.labels(), test_split.labels()
    x = np.concatenate([cls, patches.astype(np.float32).mean(axis=1)], axis=1).astype(np.float32)
    x_test = np.concatenate([test_cls, test_patches.astype(np.float32).mean(axis=1)], axis=1).astype(np.float32)
    subset, val = seed_split(read_cls_vectors(str(path)), 30, 7, 50)
    scores = {c: LogisticRegression(max_iter=5000, C=c).fit(x[subset], y[subset]) for c in PROBE_C}
    best = max(PROBE_C, key=lambda c: ((scores[c].predict(x[val]) == y[val]).mean(), -c))
    chosen: dict = {}
    assert probe_baseline(str(path), 30, [7], val_labels=50, chosen=chosen) == {
        7: float((scores[best].predict(x_test) == y_test).mean())}
    assert chosen == {7: f"C {best:g}"}

    features = cls.astype(np.float32)
    pca = PCA(n_components=32, random_state=0).fit(features)  # 40-d CLS: the dimensions up to 32 are candidates
    reduced, reduced_test = pca.transform(features), pca.transform(test_cls.astype(np.float32))
    partial = np.full(400, -1)
    partial[subset] = y[subset]
    fitted = {d: semi_gmm_fit(reduced[:, :d], partial, 10)[0] for d in (16, 32)}
    best_d = max((16, 32), key=lambda d: ((fitted[d].predict(reduced[val][:, :d]) == y[val]).mean(), -d))
    chosen = {}
    assert [d for d in SEMI_GMM_DIMS if d <= 40] == [16, 32]
    assert semi_gmm_baseline(str(path), 30, [7], val_labels=50, chosen=chosen) == {
        7: float((fitted[best_d].predict(reduced_test[:, :best_d]) == y_test).mean())}
    assert chosen == {7: f"d {best_d}"}
