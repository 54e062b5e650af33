"""The baselines a user tries first, on the same labelled subsets as the runs (tt-report shows all three):

- LogisticRegression on the CLS vectors of the labelled subset (supervised: it sees only the labelled samples);
- SelfTraining: scikit-learn's SelfTrainingClassifier around the same LogisticRegression (self-training, or
  pseudo-labelling: Yarowsky 1995), over the labelled subset plus every other train CLS vector as unlabelled; its
  confidence threshold is chosen on the run's validation split (`--val-labels`), like λ;
- LabelSpreading (Zhou et al. 2004, scikit-learn, kNN graph) over the labelled subset plus every other train CLS
  vector as unlabelled (semi-supervised, transductive on the train split), predicting the test CLS vectors.

Each is fitted on exactly the labelled subset a run with the same seed and label budget draws (the first draw of
`train()`'s data stream, see train/loop.py), so a TwinTURBO run and its baselines see the same labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.sampling import start_run_draws, validation_subset

# LabelSpreading's kNN graph over 60k x 1280-d vectors takes minutes; over 64 PCA components, seconds.
SPREADING_PCA_DIMS = 64
SPREADING_NEIGHBOURS = 7  # scikit-learn's default for kernel="knn"
# Zhou et al.'s clamping factor and enough iterations to converge. scikit-learn's defaults (alpha 0.2, 30
# iterations) stop once the spread mass changes by < 1e-3, which on Fashion-MNIST (100 labels, 60k vectors) leaves
# most of the graph without any label mass: their test vectors get NaN probabilities and are all predicted class 0.
SPREADING_ALPHA = 0.99
SPREADING_MAX_ITER = 1000


@dataclass
class ClsVectors:
    """The CLS vectors and labels of a store's train and test splits (test restricted to labelled samples)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def read_cls_vectors(features: str) -> ClsVectors:
    with open_store(features) as store:
        store.require_complete()
        train, test = store.split("train"), store.split("test")
        x_train, y_train = train.read_cls(0, train.n).astype(np.float32), train.labels()
        x_test, y_test = test.read_cls(0, test.n).astype(np.float32), test.labels()
        num_classes = len(store.class_names) or int(y_train.max()) + 1
    known = y_test >= 0
    return ClsVectors(x_train, y_train, x_test[known], y_test[known], num_classes)


def run_labelled_subset(train_labels: np.ndarray, budget: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of the labelled subset a run with this seed and label budget trains on."""
    draws = start_run_draws(TrainConfig(labels=budget, seed=seed), torch.as_tensor(train_labels), num_classes,
                            torch.device("cpu"))
    return draws.subset.numpy()


def logistic_baseline(features: str, budget: int, seeds: list[int],
                      vectors: ClsVectors | None = None) -> dict[int, float]:
    """seed -> test accuracy of LogisticRegression(max_iter=5000) on that seed's labelled CLS vectors."""
    from sklearn.linear_model import LogisticRegression

    data = vectors or read_cls_vectors(features)
    accuracies = {}
    for seed in seeds:
        subset = run_labelled_subset(data.y_train, budget, data.num_classes, seed)
        model = LogisticRegression(max_iter=5000).fit(data.x_train[subset], data.y_train[subset])
        accuracies[seed] = float((model.predict(data.x_test) == data.y_test).mean())
    return accuracies


def spreading_baseline(features: str, budget: int, seeds: list[int],
                       vectors: ClsVectors | None = None) -> dict[int, float]:
    """seed -> test accuracy of LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.99, max_iter=1000) on all train
    CLS vectors, labelled only on that seed's subset, after PCA to 64 components fitted on the train split
    (unsupervised); test vectors are classified by the kNN vote over the spread train labels (`predict`)."""
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    data = vectors or read_cls_vectors(features)
    pca = PCA(n_components=min(SPREADING_PCA_DIMS, *data.x_train.shape), random_state=0).fit(data.x_train)
    x_train, x_test = pca.transform(data.x_train), pca.transform(data.x_test)
    accuracies = {}
    for seed in seeds:
        subset = run_labelled_subset(data.y_train, budget, data.num_classes, seed)
        partial = np.full(len(data.y_train), -1, dtype=np.int64)
        partial[subset] = data.y_train[subset]
        model = LabelSpreading(kernel="knn", n_neighbors=SPREADING_NEIGHBOURS, alpha=SPREADING_ALPHA,
                               max_iter=SPREADING_MAX_ITER).fit(x_train, partial)
        accuracies[seed] = float((model.predict(x_test) == data.y_test).mean())
    return accuracies


# Candidate confidence thresholds of self-training, chosen on the validation split (ties: the higher, i.e. the fewer
# pseudo-labels). Without a validation split, scikit-learn's default 0.75 is used.
SELF_TRAINING_THRESHOLDS = (0.75, 0.9, 0.99)
SELF_TRAINING_DEFAULT = 0.75
# Ours: each round of pseudo-labelling refits the LogisticRegression starting from the previous round's weights
# (scikit-learn's warm_start) instead of from zero. The objective of every round is the same convex one, so only the
# path to its optimum changes: on Fashion-MNIST (100 labels, the other 59900 train vectors, threshold 0.75) the fit
# took 60 s instead of 454 s, at 65.87% instead of 65.96% test accuracy with 95.4% of the test predictions equal
# (`bench/baseline_cost.py --self-training-pool 59900`); each round stops at L-BFGS's tolerance, so the rounds'
# pseudo-labels, and with them the final fits, drift apart a little either way.
SELF_TRAINING_WARM_START = True


def self_training_fit(x_train: np.ndarray, partial_labels: np.ndarray, threshold: float):
    """SelfTrainingClassifier(LogisticRegression(max_iter=5000, warm_start=SELF_TRAINING_WARM_START), threshold) on
    train vectors whose unknown labels are -1 (scikit-learn's other defaults: at most 10 rounds of pseudo-labelling).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier

    classifier = LogisticRegression(max_iter=5000, warm_start=SELF_TRAINING_WARM_START)
    return SelfTrainingClassifier(classifier, threshold=threshold).fit(x_train, partial_labels)


def self_training_baseline(features: str, budget: int, seeds: list[int], vectors: ClsVectors | None = None,
                           val_labels: int | None = None) -> dict[int, float]:
    """seed -> test accuracy of self-training with the threshold of SELF_TRAINING_THRESHOLDS that is best on that
    seed's validation split of `val_labels` samples (default: as many as `budget`, as tt-train's --val-labels);
    the validation labels are hidden from the fit like every other unlabelled sample."""
    data = vectors or read_cls_vectors(features)
    val_labels = budget if val_labels is None else val_labels
    accuracies = {}
    for seed in seeds:
        subset = run_labelled_subset(data.y_train, budget, data.num_classes, seed)
        partial = np.full(len(data.y_train), -1, dtype=np.int64)
        partial[subset] = data.y_train[subset]
        val = validation_subset(torch.as_tensor(data.y_train), val_labels, data.num_classes, torch.as_tensor(subset),
                                seed).numpy()
        best = None
        for threshold in sorted(SELF_TRAINING_THRESHOLDS) if len(val) else (SELF_TRAINING_DEFAULT,):
            model = self_training_fit(data.x_train, partial, threshold)
            score = float((model.predict(data.x_train[val]) == data.y_train[val]).mean()) if len(val) else 0.0
            if best is None or score >= best[0]:  # ties: the higher threshold, met later
                best = (score, model)
        accuracies[seed] = float((best[1].predict(data.x_test) == data.y_test).mean())
    return accuracies


BASELINES = {"LogisticRegression": logistic_baseline, "SelfTraining": self_training_baseline,
             "LabelSpreading": spreading_baseline}
