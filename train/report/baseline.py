"""The baselines a user tries first, and the ones the frozen-feature literature uses, on the same labelled subsets as
the runs (tt-report shows them beside the setups):

- LogisticRegression on the CLS vectors of the labelled subset (supervised: it sees only the labelled samples);
- LinearProbe: the same on exactly the features the head sees, CLS concatenated with the mean of the patch tokens,
  its regularisation C chosen on the validation split: what "more features" alone is worth, told apart from what
  unlabelled data adds;
- SelfTraining: scikit-learn's SelfTrainingClassifier around the same LogisticRegression (self-training, or
  pseudo-labelling: Yarowsky 1995), over the labelled subset plus every other train CLS vector as unlabelled; its
  confidence threshold is chosen on the run's validation split (`--val-labels`), like λ;
- LabelSpreading (Zhou et al. 2004, scikit-learn, kNN graph) over the labelled subset plus every other train CLS
  vector as unlabelled (semi-supervised, transductive on the train split), predicting the test CLS vectors;
- SemiGMM: PCA of the train CLS vectors to d dimensions (d chosen on the validation split), then a Gaussian mixture
  with one component per class fitted by EM over the labelled and unlabelled vectors together, the labelled
  vectors' responsibilities fixed to their class (the density model behind the strongest frozen-feature results at
  a few labels per class, e.g. SemiOccam, arXiv:2506.03582).

Each is fitted on exactly the labelled subset a run with the same seed and label budget draws (the first draw of
`train()`'s data stream, see train/run/loop.py), so a TwinTURBO run and its baselines see the same labels; a hyperparameter
is chosen on the run's validation split, never on the test set, and what each seed chose is recorded (`chosen`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from twinturbo.common.store import open_store
from twinturbo.train.config import TrainConfig
from twinturbo.train.run.sampling import start_run_draws, validation_subset

# LabelSpreading's kNN graph over 60k x 1280-d vectors takes minutes; over 64 PCA components, seconds.
Baselines = dict[str, dict[int, dict[int, float]]]  # method -> label budget -> seed -> test accuracy %
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


def read_cls_vectors(features: str, pooled_patches: bool = False) -> ClsVectors:
    """The CLS vectors of both splits; with `pooled_patches`, each concatenated with the mean of its patch tokens
    (the vector the head's projector reads, before the token mixer: LinearProbe's features)."""
    def vectors(split) -> np.ndarray:
        cls = split.read_cls(0, split.n).astype(np.float32)
        if not pooled_patches:
            return cls
        pooled = np.empty((split.n, split.patch_dim), dtype=np.float32)
        for start, stop in split.iter_chunks(max(1, 4096 // split.chunk_size)):
            pooled[start:stop] = split.read_patches(start, stop).astype(np.float32).mean(axis=1)
        return np.concatenate([cls, pooled], axis=1)

    with open_store(features) as store:
        store.require_complete()
        train, test = store.split("train"), store.split("test")
        x_train, y_train = vectors(train), train.labels()
        x_test, y_test = vectors(test), test.labels()
        num_classes = len(store.class_names) or int(y_train.max()) + 1
    known = y_test >= 0
    return ClsVectors(x_train, y_train, x_test[known], y_test[known], num_classes)


def seed_split(data: ClsVectors, budget: int, seed: int, val_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled subset, validation split) of a run with this seed, label budget and --val-labels."""
    subset = run_labelled_subset(data.y_train, budget, data.num_classes, seed)
    val = validation_subset(torch.as_tensor(data.y_train), val_labels, data.num_classes, torch.as_tensor(subset),
                            seed).numpy()
    return subset, val


@dataclass
class CandidateFit:
    """One candidate of a baseline that chooses a hyperparameter (VALIDATED), fitted on one seed's labelled subset:
    its name as tables show it ('threshold 0.9', 'C 0.1', 'd 32'), its test accuracy and which of the seed's
    validation samples it classifies right, in the split's order. The first n of a split of N are the split of n
    (sampling.validation_subset), so one fit says what any validation size up to N chooses (`choose`)."""

    name: str
    test: float
    val_correct: np.ndarray  # bool [N]
    default: bool = False  # the one used without validation labels


def choose(candidates: list[CandidateFit], val_labels: int) -> CandidateFit:
    """The candidate best on the first `val_labels` validation samples (ties: the first, in the order they were
    tried); the default one where there are none."""
    if val_labels == 0:
        return next(c for c in candidates if c.default)
    if any(len(c.val_correct) < val_labels for c in candidates):
        raise ValueError(f"candidates scored on fewer than {val_labels} validation samples")
    best = None
    for candidate in candidates:
        score = float(candidate.val_correct[:val_labels].mean())
        if best is None or score > best[0]:
            best = (score, candidate)
    return best[1]


def candidate_fits(values: list, default, name: str, fit, predict, val: np.ndarray,
                   data: "ClsVectors") -> list[CandidateFit]:
    """Each of `values` fitted (`fit(value)`) and scored, in order (only `default` where `val` is empty): its test
    accuracy and which of the train vectors `val` it classifies right; `predict(model, rows)` predicts the train
    vectors `rows` (None: the test vectors); `name` formats a value ('C {:g}')."""
    fitted = []
    for value in values if len(val) else [default]:
        model = fit(value)
        test = float((predict(model, None) == data.y_test).mean())
        fitted.append(CandidateFit(name.format(value), test, predict(model, val) == data.y_train[val],
                                   value == default))
    return fitted


def chosen_accuracy(fitted: list[CandidateFit], val_labels: int, seed: int, chosen: dict | None) -> float:
    """The test accuracy of the candidate `choose` picks; `chosen` receives its name under `seed`."""
    pick = choose(fitted, val_labels)
    if chosen is not None:
        chosen[seed] = pick.name
    return pick.test


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


def self_training_candidates(data: ClsVectors, budget: int, seed: int, val_labels: int) -> list[CandidateFit]:
    """Self-training with each threshold of SELF_TRAINING_THRESHOLDS, the higher first (ties: the fewer
    pseudo-labels), on one seed's labelled subset; the validation labels are hidden from the fit like every other
    unlabelled sample."""
    subset, val = seed_split(data, budget, seed, val_labels)
    partial = np.full(len(data.y_train), -1, dtype=np.int64)
    partial[subset] = data.y_train[subset]
    return candidate_fits(sorted(SELF_TRAINING_THRESHOLDS, reverse=True), SELF_TRAINING_DEFAULT, "threshold {:g}",
                          lambda t: self_training_fit(data.x_train, partial, t),
                          lambda m, rows: m.predict(data.x_test if rows is None else data.x_train[rows]), val, data)


def self_training_baseline(features: str, budget: int, seeds: list[int], vectors: ClsVectors | None = None,
                           val_labels: int | None = None, chosen: dict | None = None) -> dict[int, float]:
    """seed -> test accuracy of self-training with the threshold of SELF_TRAINING_THRESHOLDS that is best on that
    seed's validation split of `val_labels` samples (default: as many as `budget`, as tt-train's --val-labels);
    the validation labels are hidden from the fit like every other unlabelled sample. `chosen` receives each
    seed's threshold."""
    data = vectors or read_cls_vectors(features)
    val_labels = budget if val_labels is None else val_labels
    return {seed: chosen_accuracy(self_training_candidates(data, budget, seed, val_labels), val_labels, seed, chosen)
            for seed in seeds}


PROBE_C = (0.1, 1.0, 10.0)  # LinearProbe's regularisation candidates (scikit-learn's C: 1 is its default)


def probe_candidates(data: ClsVectors, budget: int, seed: int, val_labels: int) -> list[CandidateFit]:
    """LogisticRegression(max_iter=5000, C) for each C of PROBE_C (ties: the smaller C, the stronger
    regularisation) on one seed's labelled vectors (`data` read with pooled_patches)."""
    from sklearn.linear_model import LogisticRegression

    subset, val = seed_split(data, budget, seed, val_labels)
    return candidate_fits(list(PROBE_C), 1.0, "C {:g}",
                          lambda c: LogisticRegression(max_iter=5000, C=c).fit(data.x_train[subset],
                                                                               data.y_train[subset]),
                          lambda m, rows: m.predict(data.x_test if rows is None else data.x_train[rows]), val, data)


def probe_baseline(features: str, budget: int, seeds: list[int], vectors: ClsVectors | None = None,
                   val_labels: int | None = None, chosen: dict | None = None) -> dict[int, float]:
    """seed -> test accuracy of LogisticRegression(max_iter=5000, C) on that seed's labelled [CLS, mean patch token]
    vectors, C of PROBE_C best on its validation split (ties: the smaller C, the stronger regularisation)."""
    data = vectors or read_cls_vectors(features, pooled_patches=True)
    val_labels = budget if val_labels is None else val_labels
    return {seed: chosen_accuracy(probe_candidates(data, budget, seed, val_labels), val_labels, seed, chosen)
            for seed in seeds}


SEMI_GMM_DIMS = (16, 32, 64, 128)  # PCA dimensions d, chosen on the validation split (ties: the smaller)
SEMI_GMM_MAX_ITER = 200
SEMI_GMM_TOL = 1e-5  # stop when the mean log-likelihood per vector changes by less
# Ours: each class's covariance gets this share of the data's mean variance on its diagonal, so that a class whose
# unlabelled mass collapses keeps a proper density (scikit-learn's reg_covar, relative to the data's scale).
SEMI_GMM_REG = 1e-3


@dataclass
class GaussianMixture:
    """One full-covariance Gaussian per class: weights [C], means [C, d], covariances [C, d, d] (float64)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def log_joint(self, x: np.ndarray) -> np.ndarray:
        """log pi_c + log N(x | mu_c, Sigma_c), [N, C] float64, through each Cholesky factor's inverse (one matmul a
        class, in x's dtype: float32 matmuls are ~4x faster on the CPU, and the distances' relative error, ~1e-6, moves
        a log-density by ~1e-4 at d = 128)."""
        n, d = x.shape
        out = np.empty((n, len(self.weights)))
        for c, (mean, cov) in enumerate(zip(self.means, self.covariances)):
            factor = np.linalg.cholesky(cov)
            whitened = (x - mean.astype(x.dtype)) @ np.linalg.inv(factor).T.astype(x.dtype)
            out[:, c] = (np.log(self.weights[c]) - 0.5 * np.einsum("ij,ij->i", whitened, whitened).astype(np.float64)
                         - np.log(np.diag(factor)).sum() - 0.5 * d * np.log(2 * np.pi))
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.log_joint(x).argmax(axis=1)


def semi_gmm_fit(x: np.ndarray, labels: np.ndarray, num_classes: int, reg: float = SEMI_GMM_REG,
                 max_iter: int = SEMI_GMM_MAX_ITER, tol: float = SEMI_GMM_TOL,
                 dtype=np.float32) -> tuple[GaussianMixture, int]:
    """EM for a C-component full-covariance mixture on x [N, d], where labels[i] >= 0 fixes vector i's
    responsibilities to its class and -1 leaves them to the E-step. Starts from the labelled class means, the data's
    covariance for every class and uniform weights. The N x d x d products run in `dtype` (float32 by default, see
    GaussianMixture.log_joint), the parameters and likelihoods in float64. Returns the mixture and the iterations."""
    data = np.asarray(x, dtype=dtype)
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    labelled = labels >= 0
    clamped = np.zeros((n, num_classes))
    clamped[np.flatnonzero(labelled), labels[labelled]] = 1.0
    ridge = reg * np.trace(np.cov(x, rowvar=False)) / d * np.eye(d)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(num_classes)])
    mixture = GaussianMixture(np.full(num_classes, 1.0 / num_classes), means,
                              np.repeat((np.cov(x, rowvar=False) + ridge)[None], num_classes, axis=0))
    previous, iterations = -np.inf, 0
    for iterations in range(1, max_iter + 1):
        log_joint = mixture.log_joint(data)  # E-step
        top = log_joint.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_joint - top).sum(axis=1))
        responsibilities = np.where(labelled[:, None], clamped, np.exp(log_joint - log_norm[:, None]))
        mass = responsibilities.sum(axis=0) + 1e-12  # M-step
        means = responsibilities.T @ x / mass[:, None]
        covariances = np.empty((num_classes, d, d))
        for c in range(num_classes):
            weighted = (data - means[c].astype(dtype)) * np.sqrt(responsibilities[:, c, None]).astype(dtype)
            covariances[c] = (weighted.T @ weighted).astype(np.float64) / mass[c] + ridge
        mixture = GaussianMixture(mass / mass.sum(), means, covariances)
        likelihood = float(log_norm.mean())
        if abs(likelihood - previous) < tol:
            break
        previous = likelihood
    return mixture, iterations


def semi_gmm_candidates(data: ClsVectors, budget: int, seed: int, val_labels: int) -> list[CandidateFit]:
    """SemiGMM (module docstring) for each d of SEMI_GMM_DIMS (ties: the smaller): PCA fitted on the train CLS
    vectors (unsupervised), then semi_gmm_fit with the seed's labelled subset clamped; the validation labels stay
    hidden from the fit."""
    from sklearn.decomposition import PCA

    dims = [d for d in SEMI_GMM_DIMS if d <= min(data.x_train.shape)] or [min(data.x_train.shape)]
    pca = PCA(n_components=max(dims), random_state=0).fit(data.x_train)
    # PCA to d is the first d of these components (sorted by variance; up to the randomised solver's precision)
    x_train, x_test = pca.transform(data.x_train), pca.transform(data.x_test)
    subset, val = seed_split(data, budget, seed, val_labels)
    partial = np.full(len(data.y_train), -1, dtype=np.int64)
    partial[subset] = data.y_train[subset]
    return candidate_fits(dims, dims[-1], "d {}", lambda d: semi_gmm_fit(x_train[:, :d], partial, data.num_classes)[0],
                          lambda m, rows: m.predict((x_test if rows is None else x_train[rows])[:, :m.means.shape[1]]),
                          val, data)


def semi_gmm_baseline(features: str, budget: int, seeds: list[int], vectors: ClsVectors | None = None,
                      val_labels: int | None = None, chosen: dict | None = None) -> dict[int, float]:
    """seed -> test accuracy of SemiGMM (module docstring), d of SEMI_GMM_DIMS best on its validation split (whose
    labels stay hidden from the fit)."""
    data = vectors or read_cls_vectors(features)
    val_labels = budget if val_labels is None else val_labels
    return {seed: chosen_accuracy(semi_gmm_candidates(data, budget, seed, val_labels), val_labels, seed, chosen)
            for seed in seeds}


BASELINES = {"LogisticRegression": logistic_baseline, "LinearProbe": probe_baseline,
             "SelfTraining": self_training_baseline, "LabelSpreading": spreading_baseline,
             "SemiGMM": semi_gmm_baseline}
# The baselines that choose a hyperparameter on the validation split (what they report depends on its size; their
# candidates' fits do not) and the function that fits one seed's candidates; which vectors each reads: CLS alone, or
# with the mean patch token.
CANDIDATES = {"LinearProbe": probe_candidates, "SelfTraining": self_training_candidates,
              "SemiGMM": semi_gmm_candidates}
VALIDATED = tuple(CANDIDATES)
POOLED_PATCHES = ("LinearProbe",)
