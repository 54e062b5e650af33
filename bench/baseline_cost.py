"""What a LogisticRegression fit costs on a full split's CLS vectors, and what the cheap variants cost in accuracy:
the measurement behind tt-report's `--baselines` (SelfTraining refits this classifier on every pseudo-labelled vector).

    .venv/bin/python bench/baseline_cost.py --features features/fashion-mnist
    .venv/bin/python bench/baseline_cost.py --features features/fashion-mnist --self-training-pool 59900

Prints, per representation (raw, standardised, PCA-64, whitened PCA-64 and -256), the L-BFGS iterations and CPU
seconds of one fit on N random train vectors, and the 100-label test accuracy on the study's three labelled subsets.
With --self-training-pool N it times instead one self-training fit (seed 42's 100 labels plus N other train vectors,
threshold 0.75) with every round's LogisticRegression started from zero and from the previous round's weights
(train/report/baseline.py's SELF_TRAINING_WARM_START), in one thread, and prints each one's L-BFGS iterations per round, its
test accuracy and how many test predictions the two share.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import SelfTrainingClassifier
from threadpoolctl import threadpool_limits

from twinturbo.train.report.baseline import read_cls_vectors, run_labelled_subset

SEEDS = (42, 1337, 3435)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True)
    parser.add_argument("--samples", type=int, nargs=2, default=(10000, 30000),
                        help="fit sizes: for the raw and standardised vectors, for the PCA ones")
    parser.add_argument("--self-training-pool", type=int, default=0, metavar="N",
                        help="time self-training cold against warm-started on a pool of N unlabelled vectors instead")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    data = read_cls_vectors(args.features)
    if args.self_training_pool:
        if not 0 < args.self_training_pool <= len(data.y_train) - 100:
            parser.error(f"--self-training-pool {args.self_training_pool}: expected 1 to {len(data.y_train) - 100} "
                         f"(the train split's vectors outside the 100 labels)")
        return self_training_starts(data, args.self_training_pool)
    mean, std = data.x_train.mean(0), data.x_train.std(0) + 1e-6
    variants = {"raw": (lambda x: x, args.samples[0]), "standardised": (lambda x: (x - mean) / std, args.samples[0])}
    for dims, whiten in ((64, False), (64, True), (256, True)):
        pca = PCA(n_components=dims, whiten=whiten, random_state=0).fit(data.x_train)
        variants[f"{'whitened ' if whiten else ''}PCA-{dims}"] = (pca.transform, args.samples[1])
    pick = np.random.default_rng(0).choice(len(data.y_train), max(args.samples), replace=False)
    for name, (transform, n) in variants.items():
        x_train, x_test = transform(data.x_train), transform(data.x_test)
        started = time.process_time()
        model = LogisticRegression(max_iter=5000).fit(x_train[pick[:n]], data.y_train[pick[:n]])
        seconds = time.process_time() - started
        accuracies = []
        for seed in SEEDS:
            subset = run_labelled_subset(data.y_train, 100, data.num_classes, seed)
            fit = LogisticRegression(max_iter=5000).fit(x_train[subset], data.y_train[subset])
            accuracies.append(100 * float(np.mean(fit.predict(x_test) == data.y_test)))
        print(f"{name:>20}: fit on {n} vectors {int(model.n_iter_[0])} iterations, {seconds:.1f} CPU s; "
              f"100 labels: {' / '.join(f'{a:.1f}' for a in accuracies)}", flush=True)


class CountedLogisticRegression(LogisticRegression):
    """LogisticRegression that records (samples, L-BFGS iterations) of every fit in `rounds`."""

    rounds: list[tuple[int, int]] = []

    def fit(self, x, y, sample_weight=None):
        super().fit(x, y, sample_weight)
        self.rounds.append((len(y), int(self.n_iter_[0])))
        return self


def self_training_starts(data, pool_size: int, threshold: float = 0.75) -> None:
    subset = run_labelled_subset(data.y_train, 100, data.num_classes, SEEDS[0])
    others = np.setdiff1d(np.arange(len(data.y_train)), subset)
    pool = np.concatenate([subset, np.random.default_rng(0).choice(others, pool_size, replace=False)])
    partial = np.full(len(pool), -1)
    partial[:len(subset)] = data.y_train[subset]
    predictions = {}
    with threadpool_limits(1):
        for warm in (False, True):
            CountedLogisticRegression.rounds = []
            started = time.perf_counter()
            model = SelfTrainingClassifier(CountedLogisticRegression(max_iter=5000, warm_start=warm),
                                           threshold=threshold).fit(data.x_train[pool], partial)
            seconds = time.perf_counter() - started
            predictions[warm] = model.predict(data.x_test)
            accuracy = 100 * float(np.mean(predictions[warm] == data.y_test))
            print(f"{'warm' if warm else 'cold'} start: {seconds:.1f} s, test accuracy {accuracy:.2f}%, "
                  f"(samples, iterations) per round {CountedLogisticRegression.rounds}", flush=True)
    print(f"test predictions equal: {100 * float(np.mean(predictions[False] == predictions[True])):.1f}%")


if __name__ == "__main__":
    main()
