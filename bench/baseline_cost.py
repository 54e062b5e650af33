"""What a LogisticRegression fit costs on a full split's CLS vectors, and what the cheap variants cost in accuracy:
the measurement behind tt-report's `--baselines` (SelfTraining refits this classifier on every pseudo-labelled vector).

    .venv/bin/python bench/baseline_cost.py --features features/fashion-mnist

Prints, per representation (raw, standardised, PCA-64, whitened PCA-64 and -256), the L-BFGS iterations and CPU
seconds of one fit on N random train vectors, and the 100-label test accuracy on the study's three labelled subsets.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from twinturbo.train.baseline import read_cls_vectors, run_labelled_subset

SEEDS = (42, 1337, 3435)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True)
    parser.add_argument("--samples", type=int, nargs=2, default=(10000, 30000),
                        help="fit sizes: for the raw and standardised vectors, for the PCA ones")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    data = read_cls_vectors(args.features)
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


if __name__ == "__main__":
    main()
