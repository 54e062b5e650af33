"""The baseline a user tries first: scikit-learn's LogisticRegression on the CLS vectors of the labelled subset.

Fitted on exactly the labelled subset a run with the same seed and label budget draws (the first draw of
`train()`'s data stream, see train/loop.py), so a TwinTURBO run and its baseline see the same labels.
"""
from __future__ import annotations

import numpy as np
import torch

from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.sampling import start_run_draws


def run_labelled_subset(train_labels: np.ndarray, budget: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of the labelled subset a run with this seed and label budget trains on."""
    draws = start_run_draws(TrainConfig(labels=budget, seed=seed), torch.as_tensor(train_labels), num_classes,
                            torch.device("cpu"))
    return draws.subset.numpy()


def logistic_baseline(features: str, budget: int, seeds: list[int]) -> dict[int, float]:
    """seed -> test accuracy of LogisticRegression(max_iter=5000) on that seed's labelled CLS vectors."""
    from sklearn.linear_model import LogisticRegression

    with open_store(features) as store:
        store.require_complete()
        train, test = store.split("train"), store.split("test")
        x_train, y_train = train.read_cls(0, train.n).astype(np.float32), train.labels()
        x_test, y_test = test.read_cls(0, test.n).astype(np.float32), test.labels()
        num_classes = len(store.class_names) or int(y_train.max()) + 1
    known = y_test >= 0
    accuracies = {}
    for seed in seeds:
        subset = run_labelled_subset(y_train, budget, num_classes, seed)
        model = LogisticRegression(max_iter=5000).fit(x_train[subset], y_train[subset])
        accuracies[seed] = float((model.predict(x_test[known]) == y_test[known]).mean())
    return accuracies
