"""Out-of-sample predicted probabilities for labeled examples, and the record of where each one came from.

cleanlab is only as good as these: a model that trained on an example cannot say its label looks wrong. So every
probability here is out-of-sample, from one of two sources:

- ``cv``: K-fold cross-validation of fast classifiers on frozen base-encoder embeddings (each example is scored by
  models that never saw it): logistic regression, optionally averaged with a cosine k-nearest-neighbour vote;
- ``production``: the probabilities the production model logged for the example, usable only when that model never
  trained on it (the caller decides, and says so with a mask).

scikit-learn is imported inside the functions (nothing heavy at import).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

SOURCE_CV = "cv"
SOURCE_CV_PRODUCTION = "cv+production"


@dataclass(frozen=True)
class OOSConfig:
    """How out-of-sample probabilities are computed (defaults measured in bench/label_noise.py).

    ``folds``: K of the K-fold cross-validation; ``C``: inverse regularization of the logistic regression (the
    embeddings are unit-norm, so cleanlab wants a fairly weak penalty); ``knn_k``: neighbours of the kNN vote,
    0 to switch it off; ``knn_weight``: its weight in the average with the logistic regression;
    ``production_weight``: the weight of a usable logged production probability against the CV one.
    """

    folds: int = 5
    C: float = 3.0
    knn_k: int = 10
    knn_weight: float = 0.5
    production_weight: float = 0.5
    seed: int = 0
    max_iter: int = 300
    #: BLAS threads while fitting. One is fastest here: a (D=384, K<=150) fit is too small to split, and on a
    #: shared 2-core machine more threads oversubscribe (10x slower measured under load).
    threads: int = 1


@dataclass(frozen=True)
class OOSProbabilities:
    """``probs``: ``(N, K)`` rows summing to 1; ``sources``: ``(N,)`` str, which source(s) scored each row."""

    probs: np.ndarray
    sources: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def _normalize(probs: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    probs = np.clip(probs, 0.0, None) + eps
    return probs / probs.sum(axis=1, keepdims=True)


def _fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per example: stratified where every class allows it, plain shuffled K-fold otherwise."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(labels)
    folds = max(2, min(folds, n))
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    splitter: KFold | StratifiedKFold
    if counts.max() >= folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    out = np.zeros(n, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has only 1 member": expected with live feedback
        for k, (_, test) in enumerate(splitter.split(np.zeros(n), labels)):
            out[test] = k
    return out


def _logreg_probs(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, config: OOSConfig
) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((len(x_test), n_classes))
    classes = np.unique(y_train)
    if len(classes) == 1:
        out[:, classes[0]] = 1.0
        return out
    clf = LogisticRegression(C=config.C, max_iter=config.max_iter, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few more lbfgs steps change nothing we use
        clf.fit(x_train, y_train)
    out[:, clf.classes_] = clf.predict_proba(x_test)
    return out


def _knn_probs(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int, k: int) -> np.ndarray:
    """Similarity-weighted vote of the ``k`` nearest training examples (cosine on unit-norm embeddings)."""
    k = min(k, len(x_train))
    out = np.zeros((len(x_test), n_classes))
    for start in range(0, len(x_test), 2048):
        sims = x_test[start : start + 2048] @ x_train.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = np.take_along_axis(sims, nn, axis=1).clip(min=0.0) + 1e-3
        rows = np.repeat(np.arange(len(nn)), k)
        np.add.at(out[start : start + 2048], (rows, y_train[nn].ravel()), w.ravel())
    return out / out.sum(axis=1, keepdims=True)


def cross_val_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, *, config: OOSConfig | None = None
) -> tuple[np.ndarray, dict[str, float]]:
    """``(N, K)`` out-of-sample probabilities by K-fold cross-validation on ``embeddings`` ``(N, D)``.

    Each fold's models train on the other folds only. Returns the probabilities and the seconds spent per model.
    """
    from threadpoolctl import threadpool_limits

    config = config or OOSConfig()
    with threadpool_limits(limits=config.threads):
        return _cross_val_probabilities(embeddings, labels, n_classes, config)


def _cross_val_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, n_classes: int, config: OOSConfig
) -> tuple[np.ndarray, dict[str, float]]:
    import time

    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"embeddings must be (N, D) with N={len(y)}, got {x.shape}")
    if len(y) < 2:
        raise ValueError("cross-validation needs at least two labeled examples")
    fold = _fold_ids(y, config.folds, config.seed)
    lr = np.zeros((len(y), n_classes))
    knn = np.zeros((len(y), n_classes))
    timings = {"logreg": 0.0, "knn": 0.0}
    for k in np.unique(fold):
        test = fold == k
        t0 = time.perf_counter()
        lr[test] = _logreg_probs(x[~test], y[~test], x[test], n_classes, config)
        t1 = time.perf_counter()
        if config.knn_k > 0 and config.knn_weight > 0:
            knn[test] = _knn_probs(x[~test], y[~test], x[test], n_classes, config.knn_k)
        timings["logreg"] += t1 - t0
        timings["knn"] += time.perf_counter() - t1
    use_knn = config.knn_k > 0 and config.knn_weight > 0
    probs = (1 - config.knn_weight) * lr + config.knn_weight * knn if use_knn else lr
    return _normalize(probs), timings


def out_of_sample_probabilities(
    embeddings: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    production_probs: np.ndarray | None = None,
    production_usable: np.ndarray | None = None,
    config: OOSConfig | None = None,
) -> OOSProbabilities:
    """Cross-validated probabilities, averaged with logged production ones where those are out-of-sample.

    ``production_probs``: ``(N, K)`` (rows of zeros where none was logged); ``production_usable``: ``(N,)`` bool,
    True only where the logging model never trained on that example. ``sources`` says which rows used which.
    """
    config = config or OOSConfig()
    probs, timings = cross_val_probabilities(embeddings, labels, n_classes, config=config)
    sources = np.full(len(probs), SOURCE_CV, dtype=object)
    if production_probs is not None and production_usable is not None:
        prod = np.asarray(production_probs, dtype=np.float64)
        use = np.asarray(production_usable, dtype=bool) & (prod.sum(axis=1) > 0)
        if prod.shape != probs.shape:
            raise ValueError(f"production_probs must have shape {probs.shape}, got {prod.shape}")
        if use.any():
            w = config.production_weight
            probs[use] = _normalize((1 - w) * probs[use] + w * _normalize(prod[use]))
            sources[use] = SOURCE_CV_PRODUCTION
    return OOSProbabilities(probs=probs, sources=sources, timings=timings)
